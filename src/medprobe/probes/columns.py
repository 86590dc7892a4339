"""Subsets of one embedding's column groups, for the selection to choose among (`--column-groups choose`).

The default recipe's one pass holds several feature sets: the head's average (plain Lite0's features), every stage's
average, and the maxima of both. A subset costs no embedding, only one more selection, so CV can choose per dataset,
as it chooses C. A linear probe fitted on a subset is saved at full width with zero weight on the other columns: its
scores are the same, and `predict`, `serve` and the saved format need nothing new.

>>> columns_of([("avg_stage1", 16), ("avg_head", 1280), ("max_stage1", 16), ("max_head", 1280)], "heads")[[0, -1]]
array([  16, 2591])
"""

import numpy as np

# name -> which groups it keeps, by the group's name without its scale prefix ("x1.5_avg_head" -> "avg_head")
CANDIDATES = {
    "all": lambda group: True,
    "avg": lambda group: group.startswith("avg_"),
    "max": lambda group: group.startswith("max_"),
    "heads": lambda group: group.endswith("_head"),
    "avg_head": lambda group: group == "avg_head",
}
COLUMN_CHOICES = ("all", "choose")  # --column-groups
LINEAR_PROBES = ("logreg",)  # where zero weights on the other columns give the subset's probe exactly


def columns_of(groups, candidate):
    """Column indices of the groups ((name, width) in column order) that `candidate` keeps."""
    keep, columns, start = CANDIDATES[candidate], [], 0
    for name, width in groups:
        if keep(name.split("_", 1)[1] if name.startswith("x") and "_" in name else name):
            columns.append(np.arange(start, start + width))
        start += width
    return np.concatenate(columns) if columns else np.zeros(0, np.int64)


def candidates_for(groups):
    """{candidate: columns} worth trying for an embedding's groups: each non-empty subset that differs from the others."""
    found = {}
    for candidate in CANDIDATES:
        columns = columns_of(groups, candidate)
        if len(columns) and not any(np.array_equal(columns, seen) for seen in found.values()):
            found[candidate] = columns
    return found


def widened(estimator, columns, width):
    """The logreg pipeline fitted on X[:, columns] as one on all `width` columns: zero weight elsewhere (same scores)."""
    scaler, clf = estimator.named_steps["scale"], estimator.named_steps["clf"]
    mean, var, scale = np.zeros(width), np.ones(width), np.ones(width)
    mean[columns], var[columns], scale[columns] = scaler.mean_, scaler.var_, scaler.scale_
    coef = np.zeros((clf.coef_.shape[0], width))
    coef[:, columns] = clf.coef_
    scaler.mean_, scaler.var_, scaler.scale_, scaler.n_features_in_ = mean, var, scale, width
    clf.coef_, clf.n_features_in_ = coef, width
    return estimator


def choose_columns(fit, groups, width):
    """`fit(columns) -> FittedProbe` on each candidate set of columns; the one its own selection scores best (ties: the
    earlier candidate, "all" first), widened to all `width` columns, with the choice recorded in its selection."""
    candidates = candidates_for(groups)
    fits = {name: fit(columns) for name, columns in candidates.items()}
    best = max(fits, key=lambda name: fits[name].selection.score())
    chosen = fits[best]
    widened(chosen.estimator, candidates[best], width)
    chosen.selection.column_choice = {"chosen": best, "columns": len(candidates[best]), "of": width, "by": chosen.selection.criterion,
                                      "scores": {name: f.selection.score() for name, f in fits.items()}}
    return chosen
