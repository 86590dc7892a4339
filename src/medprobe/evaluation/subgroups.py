"""Subgroups: AUC and operating-point metrics per value of a metadata column (sex, age band, site, scanner).

Each subgroup's numbers come from its own test rows, with CIs over bootstrap resamples of those
rows (seeded like every other CI). The operating points are at the thresholds chosen on the whole
val split, not per subgroup: the question is how one decision rule treats each group.

A subgroup is flagged, and its AUC and rates are left out rather than printed, when it has
fewer than MIN_IMAGES images or fewer than MIN_PER_CLASS images of some class: an AUC on three
melanomas, or a CI from resamples that mostly lack a class, means nothing. Counts are always given.
The largest AUC gap is between unflagged subgroups, with a CI from resampling each group on its own
(the groups are disjoint, so their resamples are independent).

Age (the column named `age_column`, default 'age') is banded: `age_bands` are the lower edges,
e.g. (0, 40, 60, 80) gives 0-39, 40-59, 60-79, 80+ (the default). Values that are empty, 'unknown'
or not numbers form their own group, named as they are ('missing' for empty).
"""

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from medprobe.core.errors import MedprobeError
from medprobe.evaluation.metrics import (
    BOOTSTRAP_SEED,
    N_BOOTSTRAP,
    binary_columns,
    bootstrap_weights,
    medmnist_auc,
    percentile_ci,
    scorable,
    weighted_auc,
)
from medprobe.evaluation.operating_points import (
    score_thresholds,
)

MIN_IMAGES = 30
MIN_PER_CLASS = 10
DEFAULT_AGE_BANDS = (0, 40, 60, 80)
MISSING = "missing"


class SubgroupError(MedprobeError):
    """A subgroup column that is not there, or age bands that cannot be read."""


@dataclass(frozen=True)
class SubgroupOptions:
    """Which metadata columns to split test by, and how the age column is banded."""

    columns: tuple = ()
    age_bands: tuple = DEFAULT_AGE_BANDS
    age_column: str = "age"

    def __post_init__(self):
        object.__setattr__(self, "columns", tuple(self.columns))
        bands = parse_age_bands(self.age_bands) if isinstance(self.age_bands, str) else tuple(float(b) for b in self.age_bands)
        if len(bands) < 1 or any(b >= c for b, c in pairwise(bands)):
            raise SubgroupError(f"age bands must be increasing lower edges such as 0,40,60,80; got {self.age_bands!r}")
        object.__setattr__(self, "age_bands", bands)


def parse_age_bands(text):
    """'0,40,60,80' -> (0.0, 40.0, 60.0, 80.0)."""
    try:
        return tuple(float(part) for part in str(text).split(","))
    except ValueError as e:
        raise SubgroupError(f"age bands {text!r}: give increasing lower edges separated by commas, e.g. 0,40,60,80") from e


def band_labels(edges):
    """'0-39', '40-59', ..., '80+' for integer edges (as ages are); the upper bound is inclusive of the edge below the next."""
    def num(v):
        return f"{v:g}"
    labels = [f"{num(lo)}-{num(hi - 1) if float(lo).is_integer() and float(hi).is_integer() else '<' + num(hi)}"
              for lo, hi in pairwise(edges)]
    return labels + [f"{num(edges[-1])}+"]


def age_band(values, edges):
    """Each value's band label; empty, non-numeric and below-the-first-edge values are kept as what they are."""
    labels = band_labels(edges)
    out = []
    for value in values:
        text = str(value).strip()
        try:
            age = float(text)
        except ValueError:
            out.append(text or MISSING)
            continue
        if not np.isfinite(age):
            out.append(MISSING)
        elif age < edges[0]:
            out.append(f"under {edges[0]:g}")
        else:
            out.append(labels[int(np.searchsorted(edges, age, side="right")) - 1])
    return np.array(out, dtype=object)


def group_values(columns, column, options, where="the dataset"):
    """The per-row group of `column` (banded when it is the age column); an unknown column is refused by name."""
    if column not in columns:
        known = sorted(columns)
        raise SubgroupError(f"{where}: no metadata column {column!r} for subgroups; "
                            + (f"columns are {known}" if known else "add --metadata FILE.csv (joined on the image file name) "
                               "or put the column in the CSV manifest"))
    values = np.asarray(columns[column], dtype=object)
    if column == options.age_column:
        return age_band(values, options.age_bands)
    return np.array([str(v).strip() or MISSING for v in values], dtype=object)


def _order(names):
    """Bands in age order, then other values alphabetically, missing/unknown last."""
    def key(name):
        head = name.split("-")[0].rstrip("+")
        try:
            return (0, float(head), name)
        except ValueError:
            return (2 if name in (MISSING, "unknown") else 1, 0.0, name)
    return sorted(names, key=key)


def class_counts(y, task, label_names):
    if task == "multi-label":
        return {name: int(c) for name, c in zip(label_names, np.asarray(y).sum(axis=0))}
    return {name: int(c) for name, c in zip(label_names, np.bincount(y, minlength=len(label_names)))}


def _too_small(y, task, label_names):
    """Why these rows say nothing (None when they are enough)."""
    if len(y) < MIN_IMAGES:
        return f"{len(y)} images (under {MIN_IMAGES})"
    if task == "multi-label":
        positives = np.asarray(y).sum(axis=0)
        rare = {n: int(min(p, len(y) - p)) for n, p in zip(label_names, positives) if min(p, len(y) - p) < MIN_PER_CLASS}
    else:
        rare = {n: c for n, c in class_counts(y, task, label_names).items() if c < MIN_PER_CLASS}
    if rare:
        return ", ".join(f"{n!r} has {c}" for n, c in rare.items()) + f" (under {MIN_PER_CLASS} of a class)"
    return None


def resampled_auc(y, scores, task, weights):
    """The MedMNIST AUC under each row of `weights` (nan where a resample lacks a class)."""
    columns = [(t, s) for t, s in binary_columns(y, scores, task) if scorable(t)]
    return np.mean([weighted_auc(t, s, weights) for t, s in columns], axis=0) if columns else np.full(len(weights), np.nan)


def subgroup_table(y, scores, task, label_names, groups, thresholds, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """{'groups': [...], 'largest_auc_gap': {...} | None, 'flag_rule': str} for one column's groups of the test rows.

    `thresholds` are the operating points chosen on the held-out scores ({rule: {column: choice}}), applied unchanged in every group.
    """
    y, scores, groups = np.asarray(y), np.asarray(scores, dtype=np.float64), np.asarray(groups, dtype=object)
    rows, resampled = [], {}
    for name in _order(set(groups.tolist())):
        idx = np.flatnonzero(groups == name)
        yg, sg = y[idx], scores[idx]
        entry = {"group": name, "n": len(idx), "per_class": class_counts(yg, task, label_names)}
        why = _too_small(yg, task, label_names)
        entry["flag"] = why
        if why is None:
            weights = bootstrap_weights(len(idx), n_boot, seed)
            aucs = resampled_auc(yg, sg, task, weights)
            columns = [(t, s) for t, s in binary_columns(yg, sg, task) if scorable(t)]
            entry["auc"] = medmnist_auc(yg, sg, task)
            entry["auc_ci"] = percentile_ci(aucs)
            entry["auc_over"] = len(columns)
            entry["operating_points"] = _points(score_thresholds(yg, sg, task, label_names, thresholds, weights=weights))
            resampled[name] = aucs
        rows.append(entry)
    return {"groups": rows, "largest_auc_gap": _largest_gap(rows, resampled),
            "flag_rule": f"left out when under {MIN_IMAGES} images or under {MIN_PER_CLASS} images of some class"}


def _points(scored):
    """Only the test metrics of each point (the thresholds are the overall ones, listed once)."""
    return {rule: {name: entry["test"] for name, entry in per_column.items()} for rule, per_column in scored.items()}


def _largest_gap(rows, resampled):
    scored = [r for r in rows if r.get("auc") is not None]
    if len(scored) < 2:
        return None
    high = max(scored, key=lambda r: r["auc"])
    low = min(scored, key=lambda r: r["auc"])
    return {"high": high["group"], "low": low["group"], "gap": high["auc"] - low["auc"],
            "gap_ci": percentile_ci(resampled[high["group"]] - resampled[low["group"]])}


def subgroup_report(y, scores, task, label_names, columns, options, thresholds, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED, where="the dataset"):
    """{column: subgroup_table(...)} for every column in `options.columns` (band edges recorded for the age column)."""
    out = {}
    for column in options.columns:
        table = subgroup_table(y, scores, task, label_names, group_values(columns, column, options, where), thresholds, n_boot, seed)
        if column == options.age_column:
            table["age_bands"] = band_labels(options.age_bands)
        out[column] = table
    return out

