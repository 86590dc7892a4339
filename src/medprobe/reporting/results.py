"""Results are data: typed run, baseline and curve results, and the files of a results folder.

`RunResult`, `BaselineResult` and `CurveResult` are the one place each JSON layout lives;
`write_run_folder` is the one function that writes a run (or baseline) folder, and the report
and the bench read folders back through `read_result` and `read_curve`.
"""

import csv
import hashlib
import io
import json
import platform
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import numpy as np

from medprobe import __version__
from medprobe.core.errors import MedprobeError
from medprobe.core.files import atomic_write_text, file_digest
from medprobe.reporting.repeats import repeats_lines

RESULTS = "results.json"
PREDICTIONS = "predictions.csv"
SUMMARY = "summary.md"
PROJECTION = "embedding_2d.csv"  # the test embeddings in 2-D, so a report can draw the map without the vectors
PROJECTIONS = ("pca", "tsne", "umap")
CURVE_JSON, CURVE_CSV = "curve.json", "curve.csv"


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions():
    versions = {"python": platform.python_version()}
    for package in ("medprobe", "numpy", "scikit-learn", "torch", "pyarrow", "pillow", "efficientnet-lite-pytorch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_json(path, data, indent=2):
    atomic_write_text(path, json.dumps(data, indent=indent, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return str(value)


# The layout of results.json and curve.json. 1: files written before it was recorded (they have no schema_version);
# 2: the same layout, versioned. A reader accepts READABLE_SCHEMAS and names them when it meets another.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


class _Result:
    """to_json / from_json for the result dataclasses: the JSON is the fields plus `kind` and `schema_version`."""

    kind: ClassVar[str]

    def to_json(self):
        return {"kind": self.kind, "schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RunResult(_Result):
    """What `medprobe run` produced: results.json of a run folder."""

    dataset: dict
    images: dict
    encoder: dict
    preprocessing: dict
    probe: dict
    metrics: dict  # {"val": {...}, "test": {...}} as `evaluate` returns them
    cache: dict
    timings: dict
    seed: int = 0
    near_duplicates: dict = field(default_factory=dict)  # test images nearly identical to a train image (embedding cosine)
    external: dict = field(default_factory=dict)  # `medprobe evaluate`: the saved model evaluated here, on which rows
    repeats: dict = field(default_factory=dict)  # `run --seeds N`: the spread over seeds and what it measures (repeats_lines)
    files: dict = field(default_factory=dict)  # SHA-256 of the folder's other files, written with this result
    versions: dict = field(default_factory=lambda: package_versions())
    medprobe: str = __version__
    created: str = field(default_factory=_now)
    kind: ClassVar[str] = "run"

    @property
    def title(self):
        return f"{self.dataset['name']} · {self.encoder['name']} · {self.probe['name']} · seed {self.seed}"

    @property
    def cpu_seconds(self):
        """(embedding CPU s as measured when computed, probe-fit CPU s); None where unknown."""
        return self.timings.get("embed_cost_cpu_s"), self.timings.get("fit_cpu_s")

    def summary_markdown(self):
        return summary_markdown(self)


@dataclass
class BaselineResult(_Result):
    """What `medprobe baseline` produced: a ResNet-18 trained from scratch, with its cost."""

    dataset: dict
    method: dict
    training: dict
    metrics: dict
    timings: dict
    seed: int = 0
    files: dict = field(default_factory=dict)  # SHA-256 of the folder's other files, written with this result
    versions: dict = field(default_factory=lambda: package_versions())
    medprobe: str = __version__
    created: str = field(default_factory=_now)
    kind: ClassVar[str] = "baseline"

    @property
    def title(self):
        return f"{self.dataset['name']} · {self.method['description']}"

    @property
    def label(self):
        """'ResNet-18 (28 px) trained here, 100 epochs', with 'CAPPED' when it stopped before the protocol's epochs."""
        training = self.training
        label = f"ResNet-18 ({training['size']} px) trained here, {training['epochs_done']} epochs"
        if training["capped"]:
            label += f" (CAPPED: {training['capped_reason']})"
        return label

    def summary_markdown(self):
        return baseline_summary_markdown(self)


@dataclass
class CurveResult(_Result):
    """What `medprobe curve` produced: test AUC against labelled training images per class."""

    spec: dict
    dataset: dict
    encoder: str
    probe: str
    cache: dict
    points: list
    runs: list
    timings: dict
    medprobe: str = __version__
    kind: ClassVar[str] = "curve"


def read_result(folder):
    """The RunResult or BaselineResult saved in `folder`/results.json."""
    path = Path(folder) / RESULTS
    data = _read_json(path)
    return (BaselineResult if data.get("kind") == "baseline" else RunResult).from_json(data)


def read_curve(folder):
    return CurveResult.from_json(_read_json(Path(folder) / CURVE_JSON))


def _read_json(path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MedprobeError(f"{path}: cannot read saved results ({e})") from e
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if version not in READABLE_SCHEMAS:
        raise MedprobeError(f"{path}: results of schema_version {version!r}; this medprobe {__version__} reads versions "
                            f"{', '.join(map(str, READABLE_SCHEMAS))}; read it with the medprobe that wrote it, or run it again")
    return data


def write_run_folder(out, result, ids, labels, scores, projection=None):
    """Write a run or baseline folder: predictions.csv, embedding_2d.csv (when `projection` is given), summary.md, results.json.

    `projection` is (xy, method) for the test embeddings. Each file is replaced atomically and
    results.json comes last, holding the SHA-256 of every other file: a folder whose files come
    from two runs (a kill, a full disk) is recognised by `check_run_folder` and refused by the report.
    """
    out = Path(out)
    names, task = result.dataset["label_names"], result.dataset["task"]
    written = {PREDICTIONS: write_predictions(out / PREDICTIONS, ids, labels, scores, names, task)}
    if projection is not None:
        xy, method = projection
        written[PROJECTION] = write_projection(out / PROJECTION, ids, labels, xy, names, task, method)
    result.files = {name: _text_digest(text) for name, text in written.items()}
    atomic_write_text(out / SUMMARY, result.summary_markdown())
    write_json(out / RESULTS, result.to_json())
    return out


def _text_digest(text):
    return hashlib.sha256(text.encode("utf-8", errors="backslashreplace")).hexdigest()


def check_run_folder(folder, result):
    """Refuse a folder whose predictions (or 2-D map) are not the ones its results.json was written with."""
    for name, digest in result.files.items():
        path = Path(folder) / name
        actual = file_digest(path) if path.is_file() else "missing"
        if actual != digest:
            if actual == "missing":
                raise MedprobeError(f"{path} does not belong to {Path(folder) / RESULTS} (missing): the folder mixes two runs, e.g. one "
                                    "killed while writing; rerun it into this folder or a new one")
            raise MedprobeError(
                f"{path} does not belong to {Path(folder) / RESULTS}: it was changed after that run (its checksum differs from the one "
                "recorded there), by hand, or by a second run into this folder killed before its results.json (the folder mixes two "
                "runs); restore it, or rerun into this folder or a new one"
            )


def write_curve(out, curve):
    out = Path(out)
    write_json(out / CURVE_JSON, curve.to_json(), indent=1)
    atomic_write_text(out / CURVE_CSV, curve_csv(curve))
    return out


def curve_csv(curve):
    out = io.StringIO()
    columns = ["shots", "n_seeds", "n_train_mean", "auc_mean", "auc_std", "auc_min", "auc_max", "acc_mean", "acc_std"]
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for point in curve.points:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in point.items()})
    return out.getvalue()


def read_predictions(path, label_names, task):
    """(ids, labels, scores) from predictions.csv; labels are class indices, or a 0/1 matrix for multi-label.

    Every cell is checked, so a hand-edited file (a NaN or 'abc' score, a short row, a renamed column, a label out of
    range) is refused in one line naming the line and column, not met later as NaN AUCs or an IndexError.

    >>> ids, labels, scores = read_predictions("runs/derma/predictions.csv", ["mel", "nv"], "binary")
    """
    label_columns = [f"label_{n}" for n in label_names] if task == "multi-label" else ["label"]
    expected = ["id", *label_columns, *(f"score_{n}" for n in label_names)]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MedprobeError(f"{path}: cannot be read as CSV ({e}); rerun the run that wrote it") from e
    if not rows or rows[0] != expected:
        got = repr(",".join(rows[0])) if rows else "an empty file"  # quoted as a cell is: it may hold a line break (\x85)
        raise MedprobeError(f"{path}: the header must be {','.join(expected)} (the run's label names), got {got}; "
                            "the file was edited after the run: restore it or rerun")
    ids, labels, scores = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(expected):
            raise MedprobeError(f"{path}, line {line}: {len(row)} field(s), the header has {len(expected)}; "
                                "the file was edited after the run: restore it or rerun")
        cells = dict(zip(expected, row))
        ids.append(cells["id"])
        labels.append([_cell(path, line, column, cells[column], "label", len(label_names)) for column in label_columns])
        scores.append([_cell(path, line, f"score_{n}", cells[f"score_{n}"], "score") for n in label_names])
    labels = np.array(labels, dtype=np.int64).reshape(len(ids), len(label_columns))
    return ids, labels if task == "multi-label" else labels[:, 0], np.array(scores, dtype=np.float64).reshape(len(ids), len(label_names))


def _cell(path, line, column, text, kind, n_classes=2):
    """One score (a probability) or label (a class index, or 0/1 for a multi-label column) of predictions.csv."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if kind == "score":
        if -1e-6 <= value <= 1 + 1e-6:  # False for NaN too; the margin: a float32 softmax can end an ulp past 1
            return value
        wanted = "a probability (a number from 0 to 1)"
    else:
        classes = 2 if column != "label" else n_classes
        if value in range(classes):
            return int(value)
        wanted = f"a class index from 0 to {classes - 1}"
    raise MedprobeError(f"{path}, line {line}, column {column}: {text!r} is not {wanted}; the file was edited after the run: "
                        "restore it or rerun")


def read_projection(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_predictions(path, ids, labels, scores, label_names, task):
    """One row per test image: id, true label(s), and a score column per class or label, each score exact."""
    out = io.StringIO()
    writer = csv.writer(out)
    score_columns = [f"score_{name}" for name in label_names]
    label_columns = [f"label_{name}" for name in label_names] if task == "multi-label" else ["label"]
    writer.writerow(["id", *label_columns, *score_columns])
    for row_id, label, score in zip(ids, labels, scores):
        truth = list(label) if task == "multi-label" else [label]
        # Shortest text that reads back as the same float: paired comparisons recompute AUCs from this file, and rounding
        # to 6 digits turned an overfitted baseline's 0.9999997 and 0.9999999 into tied 1s (AUC 0.957 against 0.961).
        writer.writerow([row_id, *truth, *(repr(float(s)) for s in score)])
    atomic_write_text(path, out.getvalue())
    return out.getvalue()


def project_2d(vectors, method="pca", seed=0):
    """(N, 2) coordinates of `vectors`: PCA, t-SNE (scikit-learn) or UMAP (needs umap-learn)."""
    from threadpoolctl import threadpool_limits

    if method not in PROJECTIONS:
        raise MedprobeError(f"projection must be one of {', '.join(PROJECTIONS)}, got {method!r}")
    if len(vectors) <= 2:
        return np.zeros((len(vectors), 2))
    # One BLAS thread, as for the probe sweep: PCA of RetinaMNIST's 400 test vectors took 0.29 s with OpenBLAS's
    # threads and 0.07 s with one on a quiet 2-core machine, and ~0.8 s vs 0.07 s with the other core busy.
    with threadpool_limits(limits=1, user_api="blas"):
        if method == "pca":
            from sklearn.decomposition import PCA

            return PCA(2, random_state=seed).fit_transform(vectors)
        if method == "tsne":
            from sklearn.manifold import TSNE

            return TSNE(2, init="pca", perplexity=min(30.0, max(2.0, (len(vectors) - 1) / 3)), random_state=seed).fit_transform(vectors)
        try:
            import umap
        except ImportError as e:
            raise MedprobeError("projection 'umap' needs umap-learn (pip install umap-learn); or use pca or tsne") from e
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)


def write_projection(path, ids, labels, xy, label_names, task, method="pca"):
    """id, label, x, y for each test image, and the method in a column, so the report never needs the vectors."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "label", "x", "y", "method"])
    for row_id, label, (x, y) in zip(ids, labels, xy):
        if task == "multi-label":
            name = "+".join(n for n, on in zip(label_names, label) if on) or "none"
        else:
            name = label_names[label]
        writer.writerow([row_id, name, f"{x:.5g}", f"{y:.5g}", method])
    atomic_write_text(path, out.getvalue())
    return out.getvalue()


def split_lines(dataset):
    """How the splits were made and what leakage was found, one line each, from results.json's dataset record."""
    made = dataset.get("made_splits", {})
    parts = []
    for split in ("train", "val", "test"):
        how = made.get(split)
        parts.append(f"{split} {dataset['n'][split]}" + (f" (made: {how['method']})" if isinstance(how, dict) else ""))
    lines = ["splits: " + " · ".join(parts)]
    if dataset.get("resplit"):
        lines.append(f"the dataset's own splits were ignored; all three drawn by {dataset['resplit']['by']}")
    duplicates = dataset.get("duplicates") or {}
    if duplicates.get("identical_groups"):
        lines.append(f"identical images: {duplicates['identical_groups']} (across splits {duplicates['across_splits']}, with different "
                     f"labels {duplicates['conflicting_labels']}); {duplicates['policy']}: {duplicates['dropped']} rows dropped")
    groups = dataset.get("groups")
    if groups:
        lines.append(f"groups ({groups['column']}): {groups['groups']}, {groups['straddling_groups']} in more than one split; "
                     f"{groups['test_images_with_group_in_train']} of {groups['test_images']} test images share a group with train")
    return lines


def ci_text(ci, between=", ", brackets=True):
    """'[0.685, 0.763]', or 'no CI' when no bootstrap resample could score (never 'nan')."""
    if ci is None:
        return "no CI"
    text = f"{ci[0]:.3f}{between}{ci[1]:.3f}"
    return f"[{text}]" if brackets else text


def format_table(metrics):
    """The small terminal table: metric, value, 95 % CI, then every note that qualifies the numbers."""
    rows = [
        ("AUC", metrics["auc"], ci_text(metrics["auc_ci"])),
        ("ACC", metrics["acc"], ci_text(metrics["acc_ci"])),
        ("balanced ACC", metrics["balanced_accuracy"], ""),
        ("macro F1", metrics["macro_f1"], ""),
    ]
    lines = [f"{'metric':<14}{'value':>8}   95% CI"]
    for name, value, interval in rows:
        lines.append(f"{name:<14}{value:>8.3f}   {interval}")
    lines += [f"! {note}" for note in metrics.get("notes", [])]
    return "\n".join(lines)


def summary_markdown(result):
    test = result.metrics["test"]
    dataset, encoder, probe, timings = result.dataset, result.encoder, result.probe, result.timings
    lines = [
        f"# {dataset['name']} · {encoder['name']} · {probe['name']}",
        "",
        f"Task: {dataset['task']}, {dataset['n']['train']}/{dataset['n']['val']}/{dataset['n']['test']} train/val/test images.",
        f"Probe parameters: {probe['params']} (chosen by {probe['selection']['criterion']}).",
        "",
        "| metric | value | 95 % CI |",
        "|---|---|---|",
        f"| AUC (MedMNIST) | {test['auc']:.3f} | {ci_text(test['auc_ci'], '–', False)} |",
        f"| ACC (MedMNIST) | {test['acc']:.3f} | {ci_text(test['acc_ci'], '–', False)} |",
        f"| balanced ACC | {test['balanced_accuracy']:.3f} | |",
        f"| macro F1 | {test['macro_f1']:.3f} | |",
        "",
        f"Embedding: {timings['embed_s']:.1f} s ({'cache hit' if result.cache['hit'] else 'computed'}), "
        f"probe fit {timings['fit_s']:.1f} s. Cache key `{result.cache['key'][:16]}`.",
        "",
    ]
    points, calibration = test.get("operating_points"), test.get("calibration") or {}
    if points:  # where the decisions were fitted is part of the protocol: val, or out-of-fold scores (selection cv)
        calibrator = f" and the {calibration['method']} calibrator" if calibration.get("fitted_on") else ""
        lines += [f"Operating-point thresholds{calibrator} fitted on {points['chosen_on']}: "
                  f"{', '.join(points['points'])} (test sensitivity and specificity in results.json and report.html).", ""]
    if result.repeats:  # `run --seeds N`: the same lines the terminal shows
        lines += ["```", *repeats_lines(result.repeats), "```", ""]
    return "\n".join(lines)


def baseline_summary_markdown(result):
    test, training, timings = result.metrics["test"], result.training, result.timings
    capped = f" **CAPPED**: {training['capped_reason']}." if training["capped"] else ""
    return "\n".join([
        f"# {result.title}",
        "",
        f"{training['epochs_done']} of {training['epochs']} epochs, best val AUC {training['best_val_auc']:.3f} at epoch "
        f"{training['best_epoch']}.{capped}",
        "",
        "| metric | value | 95 % CI |",
        "|---|---|---|",
        f"| AUC (MedMNIST) | {test['auc']:.3f} | {ci_text(test['auc_ci'], '–', False)} |",
        f"| ACC (MedMNIST) | {test['acc']:.3f} | {ci_text(test['acc_ci'], '–', False)} |",
        "",
        f"Training: {timings['train_s']:.0f} s wall, {timings['train_cpu_s']:.0f} CPU s "
        f"({timings['train_images_per_s']:.0f} img/s, {training['threads']} threads).",
        "",
    ])
