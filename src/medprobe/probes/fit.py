"""Probes are plain scikit-learn pipelines, so they drop into cross_val_score, GridSearchCV and Pipeline.

Two selection protocols (`selection`), both recorded in `FittedProbe.selection`:

- "val" (MedMNIST's rule): the hyper-parameter is chosen by MedMNIST AUC on the val split (or by
  stratified 5-fold CV on train when there is no val split), then the probe is fitted on train alone.
- "cv": repeated stratified 5-fold CV (3 repeats) over train+val on the probe's grid, widened while
  the best value sits at its edge and refined to half steps around it; the simplest value within
  one standard error of the best is taken (the one-standard-error rule) and the probe is fitted on
  train+val. It never sees test.

Given `groups` (images of one patient or lesion, or identical copies), every fold keeps each group whole, as
the splits do: otherwise a fold is scored on images whose twins it trained on, and CV rewards memorising them.
"""

import logging
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    RepeatedKFold,
    RepeatedStratifiedKFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_predict,
    train_test_split,
)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from medprobe.core import defaults
from medprobe.core.cores import usable_cores
from medprobe.core.errors import ProbeError, UnknownNameError
from medprobe.evaluation.metrics import binary_columns
from medprobe.evaluation.study import decisions_fitted_on
from medprobe.probes import rowspace
from medprobe.probes.selection import Selection

log = logging.getLogger(__name__)

# The grid each probe searches; the parameter names are Pipeline step parameters.
GRIDS = {
    "logreg": {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]},
    "svm": {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
    "knn": {"n_neighbors": [5, 10, 20, 50]},
    "pca_logreg": {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]},
    "lda": {"shrinkage": [0.01, 0.03, 0.1, 0.3, 0.6, 0.9]},
    "ridge": {"alpha": [1.0, 10.0, 1e2, 1e3, 1e4, 1e5]},
}
PROBES = tuple(GRIDS)
SAVABLE = ("logreg", "svm", "knn")  # the probes `fit --save` can write without pickle (medprobe.probes.saved)
DESCRIPTIONS = {
    "logreg": "standardised logistic regression (L2); C chosen by val AUC",
    "svm": "standardised linear SVM, Platt-calibrated on 3 internal folds; C chosen by val AUC",
    "knn": "cosine k-nearest neighbours, distance-weighted; k chosen by val AUC",
    "pca_logreg": "standardised, PCA-whitened (components to 99% of the variance) logistic regression; C chosen by val AUC",
    "lda": "standardised shrinkage linear discriminant analysis; shrinkage chosen by val AUC",
    "ridge": "standardised ridge classifier, Platt-calibrated on 3 internal folds; alpha chosen by val AUC",
}


# What each probe uses when nothing can be selected (no usable val split and too few images to cross-validate).
DEFAULTS = {"logreg": 1.0, "svm": 1e-2, "knn": 10, "pca_logreg": 1.0, "lda": 0.1, "ridge": 10.0}
CV_FOLDS, CALIBRATION_FOLDS = 5, 3
SELECTIONS = ("val", "cv")
CV_REPEATS = 3  # 5 folds x 3 repeats: each grid point's AUC is a mean of 15, and its standard error is usable
MAX_WIDENINGS = 3  # how often the cv grid may grow past an edge (by two steps each time)
# The simpler (more regularised) end of each grid, for the one-standard-error rule.
SIMPLER = {"logreg": min, "svm": min, "pca_logreg": min, "knn": max, "lda": max, "ridge": max}
# Values a widened grid may not cross (k below 1, a shrinkage outside [0, 1]).
BOUNDS = {"knn": (1, np.inf), "lda": (1e-4, 1.0)}
PCA_VARIANCE = 0.99
SELECT_ROWS = 3000  # above this many rows, the cv grid is walked on a subsample, and the chosen value fitted on all


def make_probe(name, task="multi-class", class_weight=None, seed=0, calibration_folds=CALIBRATION_FOLDS, **params):
    """An unfitted probe pipeline; `calibration_folds` is the svm's Platt-scaling cross-validation.

    >>> make_probe("logreg", C=0.1).fit(X, y).predict_proba(X)
    """
    if name not in GRIDS:
        raise UnknownNameError("probe", name, GRIDS)
    if name == "logreg":
        head = LogisticRegression(C=params.get("C", DEFAULTS["logreg"]), class_weight=class_weight, max_iter=3000, random_state=seed)
        steps = [("scale", StandardScaler()), ("clf", head)]
    elif name == "svm":
        svm = LinearSVC(C=params.get("C", DEFAULTS["svm"]), class_weight=class_weight, max_iter=10000, random_state=seed)
        # Platt scaling on internal folds turns margins into probabilities that AUC, ACC@0.5 and calibration can use.
        steps = [("scale", StandardScaler()), ("clf", CalibratedClassifierCV(svm, method="sigmoid", cv=calibration_folds))]
    elif name == "pca_logreg":
        head = LogisticRegression(C=params.get("C", DEFAULTS["pca_logreg"]), class_weight=class_weight, max_iter=3000, random_state=seed)
        # Whitening puts the many correlated columns of concatenated features (@stages, fusion) on one footing
        steps = [("scale", StandardScaler()), ("pca", PCA(PCA_VARIANCE, whiten=True, random_state=seed)), ("clf", head)]
    elif name == "ridge":
        ridge = RidgeClassifier(alpha=params.get("alpha", DEFAULTS["ridge"]), class_weight=class_weight)
        steps = [("scale", StandardScaler()), ("clf", CalibratedClassifierCV(ridge, method="sigmoid", cv=calibration_folds))]
    elif name == "lda":
        if class_weight:
            raise ProbeError("the lda probe has no class_weight (its priors are the class frequencies); use logreg or svm")
        head = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=params.get("shrinkage", DEFAULTS["lda"]))
        steps = [("scale", StandardScaler()), ("clf", head)]
    else:
        if class_weight:
            raise ProbeError("the knn probe has no class_weight; use logreg or svm for class_weight='balanced'")
        # Unit-length embeddings make Euclidean neighbours cosine neighbours.
        head = KNeighborsClassifier(n_neighbors=params.get("n_neighbors", DEFAULTS["knn"]), weights="distance")
        steps = [("norm", Normalizer()), ("clf", head)]
    if task == "multi-label":
        steps[-1] = ("clf", OneVsRestClassifier(steps[-1][1]))
    return Pipeline(steps)


@dataclass
class HeldOut:
    """Scores of rows the probe did not fit, what thresholds and calibrators are decided on, and where they come from."""

    rows: np.ndarray  # dataset rows, aligned with `scores`
    scores: np.ndarray
    where: str  # one of evaluation.study.FITTED_ON: val, or out-of-fold scores over train (+val)


@dataclass
class FittedProbe:
    estimator: Pipeline
    name: str
    params: dict
    selection: Selection  # each grid point's score and how it was measured
    # Selection "cv" fits on train+val, so val no longer scores a probe that has not seen it. These are the chosen
    # probe's out-of-fold scores over the rows it was fitted on (train, then val): what thresholds and calibrators
    # are decided on instead. None when the probe was fitted on train alone (val is then held out).
    out_of_fold: np.ndarray | None = None

    def predict_scores(self, X):
        """Per-class (or per-label) probabilities; columns follow the encoded classes 0..K-1."""
        return self.estimator.predict_proba(X)

    def held_out(self, X, train, val):
        """The scores of rows this probe did not fit, for thresholds and calibrators: val's own, when the probe was
        fitted on train alone; else the out-of-fold scores over the rows it was fitted on (train, then val).

        >>> held = fitted.held_out(X, train, val)
        >>> held.where, held.scores.shape
        ('out-of-fold scores over train+val', (1200, 5))
        """
        if self.out_of_fold is None:
            return HeldOut(val, self.predict_scores(X[val]), decisions_fitted_on(self.selection.fit_on, None))
        rows = np.concatenate([train, val]) if self.selection.fitted_on_val else train
        return HeldOut(rows, self.out_of_fold, decisions_fitted_on(self.selection.fit_on, self.out_of_fold))

    def val_scores(self, X, train, val):
        """Val's held-out scores: its out-of-fold ones when the probe has seen val (selection cv), else the probe's own."""
        return self.out_of_fold[len(train):] if self.selection.fitted_on_val else self.predict_scores(X[val])


def fit_probe(name, X_train, y_train, X_val=None, y_val=None, task="multi-class", class_weight=None, seed=defaults.SEED,
              label_names=None, selection=defaults.SELECTION, groups=None, parallel=None, fast=True):
    """Choose the probe's hyper-parameter and fit it, by one of two protocols (`selection`).

    "val" (MedMNIST's rule, the one to use beside MedMNIST rows): chosen by val AUC (or CV on train
    when val cannot score), fitted on train. "cv": repeated stratified CV over train+val with the
    one-standard-error rule on a grid that widens at its edges, fitted on train+val. Either way
    `selection` records the protocol, every grid point's score and what the probe was fitted on.

    Folds adapt to the smallest class: CV uses min(5, its size) folds and the svm's calibration
    min(3, its size). `groups` ((train ids, val ids), one id per row, or None: `Dataset.groups_of`) keeps each
    group in one fold, and then there are at most as many folds as the rarest class has groups. When val cannot
    score (absent, or one class) and the smallest class is too small to cross-validate, the probe's default is
    used and `selection` says so.

    Selection "cv" fits logreg in each fold's row space, warm-started along C (`medprobe.probes.rowspace`); above
    SELECT_ROWS rows it selects on a subsample and fits once on all rows. `parallel`: None runs the fold x grid fits
    on threads here; "ray" runs them as tasks on the running Ray cluster, another joblib backend name through joblib,
    with the same result.
    `fast=False` computes the same protocol the plain way (a new scikit-learn pipeline per fold and value): the
    reference benchmarks/probe_scale.py and the tests compare against.

    >>> fitted = fit_probe("logreg", X_tr, y_tr, X_va, y_va, task="binary", selection="cv")
    >>> fitted.params, fitted.selection.fit_on
    ({'C': 0.01, 'class_weight': None}, 'train+val')
    """
    if name not in GRIDS:
        raise UnknownNameError("probe", name, GRIDS)
    if selection not in SELECTIONS:
        raise ProbeError(f"unknown selection {selection!r}: use 'val' (MedMNIST's rule: choose on val, fit on train) or "
                         f"'cv' (repeated CV over train+val, one-standard-error rule, fit on train+val)")
    (param, values), = GRIDS[name].items()
    if param == "n_neighbors":
        values = [k for k in values if k < len(X_train)] or [max(1, len(X_train) - 1)]
    smallest, which = smallest_class(y_train, task, label_names)
    if name == "svm" and smallest < 2:
        raise ProbeError(
            f"{which} has {smallest} training image(s); the svm probe calibrates its scores by cross-validation and needs at "
            f"least 2 of each class (3 for its usual 3 folds); add training images of {which}, or use --probe logreg or knn"
        )
    have_val = X_val is not None and len(X_val) > 0 and _scorable(y_val, task)
    groups_train, groups_val = groups if groups is not None else (None, None)
    if selection == "cv":
        X_pool, y_pool = (np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])) if have_val else (X_train, y_train)
        groups_pool = None if groups is None else (np.concatenate([groups_train, groups_val]) if have_val else groups_train)
        pooled_smallest = smallest_class(y_pool, task)[0]
        if min(CV_FOLDS, pooled_smallest, _group_count(groups_pool, y_pool, task)) >= 2:
            with threadpool_limits(limits=1, user_api="blas"):
                return _fit_by_cv(name, param, values, X_pool, y_pool, task, class_weight, seed, pooled_smallest,
                                  "train+val" if have_val else "train", groups_pool, parallel, fast)
    calibration = min(CALIBRATION_FOLDS, smallest)
    folds = min(CV_FOLDS, smallest, _group_count(groups_train, y_train, task))
    if param == "n_neighbors" and not have_val and folds >= 2:  # chosen by CV on train: k must fit in every fold's rows
        fold_rows = min(len(train) for train, _ in _folds(X_train, y_train, task, folds, seed, groups_train))
        values = [k for k in values if k <= fold_rows] or [max(1, fold_rows)]
    scores, fitted = {}, {}
    # One BLAS thread: these problems are small, and OpenBLAS's spinning threads made the sweep ~15x
    # slower whenever the other core was busy (measured: 14.8 s vs 0.9 s for RetinaMNIST's six fits).
    with threadpool_limits(limits=1, user_api="blas"):
        for value in values:
            probe = make_probe(name, task, class_weight, seed, calibration, **{param: value})
            if have_val:
                fitted[value] = probe.fit(X_train, y_train)
                scores[value] = selection_auc(y_val, probe.predict_proba(X_val), task)
            elif folds >= 2:
                scores[value] = _cv_auc(probe, X_train, y_train, task, seed, folds, groups_train)
        usable = [v for v in values if np.isfinite(scores.get(v, np.nan))]
        if usable:
            best = max(usable, key=lambda v: (scores[v], -values.index(v)))
            criterion = "val AUC" if have_val else f"{folds}-fold CV AUC on train{_grouped(groups_train)}"
        else:
            best = DEFAULTS[name] if DEFAULTS[name] in values else values[len(values) // 2]
            why = "the val split cannot score AUC (absent, or a single class)" if not have_val or not scores else "no grid point gave a finite AUC"
            few = (f"{which} has {smallest} training image(s), too few to cross-validate" if smallest < 2 or groups_train is None
                   else "a class's training images all come from one group, and CV cannot hold out part of a group")
            criterion = f"none: {why}, and {few}; used the default {param}={best}"
        # With a val split the winner was already fitted on train alone; otherwise it is fitted on all of train now.
        estimator = fitted.get(best) or make_probe(name, task, class_weight, seed, calibration, **{param: best}).fit(X_train, y_train)
    selection = Selection(criterion, selection, "train", {str(v): (s if np.isfinite(s) else None) for v, s in scores.items()},
                          calibration if name in ("svm", "ridge") and calibration < CALIBRATION_FOLDS else None)
    return FittedProbe(estimator, name, {param: best, "class_weight": class_weight}, selection)


def _tidy(value, name):
    return round(value) if name == "knn" else float(f"{value:.3g}")


def _widen(grid, best, name, n_train):
    """Two more steps past the edge the best value sits at (the grid unchanged when it is inside or at a bound)."""
    low, high = BOUNDS.get(name, (0.0, np.inf))
    high = min(high, n_train - 1) if name == "knn" else high
    if len(grid) < 2:
        return grid
    if best == grid[0]:
        ratio = grid[0] / grid[1]
        extra = [grid[0] * ratio, grid[0] * ratio**2]
    elif best == grid[-1]:
        ratio = grid[-1] / grid[-2]
        extra = [grid[-1] * ratio, grid[-1] * ratio**2]
    else:
        return grid
    extra = {_tidy(v, name) for v in extra if low <= v <= high}
    return sorted(set(grid) | extra)


def _fit_by_cv(name, param, values, X, y, task, class_weight, seed, smallest, fit_on, groups=None, parallel=None, fast=True):
    """Repeated CV over a grid walked from its simple end, widened at its edges and refined to half steps around the
    best value; then the one-standard-error rule, and one fit on all of X.

    Above SELECT_ROWS rows the grid is walked on a stratified (or group-respecting) subsample and the chosen value
    fitted once on everything. `fast=False` is the plain computation the fast one is measured and tested against:
    every fold and value a new scikit-learn pipeline, and the out-of-fold scores from a second CV pass.
    """
    rows = np.arange(len(X))
    if fast and len(X) > SELECT_ROWS:
        rows = _subsample(y, task, groups, SELECT_ROWS, seed)
        log.warning("selection on a %s subsample of %d of %d rows (then one fit on all %d)",
                    "group-respecting" if groups is not None else "stratified", len(rows), len(X), len(X))
    X_sel, y_sel, g_sel = (X, y, groups) if len(rows) == len(X) else (X[rows], y[rows], None if groups is None else groups[rows])
    folds = min(CV_FOLDS, smallest_class(y_sel, task)[0], _group_count(g_sel, y_sel, task))
    calibration = min(CALIBRATION_FOLDS, smallest)
    splits, first = _cv_splits(X_sel, y_sel, g_sel, task, folds, seed, fit_on)
    n_train = min(len(train) for train, _ in splits)
    # logreg's folds: in their row space where that pays, else on the columns in place; both warm-started along C.
    # Its final fit of a large X is solved in place too (no standardised copy).
    path_logreg = fast and name == "logreg" and task != "multi-label"
    rowspace_logreg = path_logreg and rowspace.pays(n_train, X.shape[1])
    in_place = path_logreg and len(rows) < len(X)
    # One pool for the whole walk: its threads (or a joblib backend's workers) start once, not once per grid value
    with _parallel(parallel) as run:
        if path_logreg:
            score_folds = (rowspace.FoldPath if rowspace_logreg else rowspace.InPlacePath)(X_sel, y_sel, splits, class_weight, run)
        else:
            score_folds = _pipeline_folds(lambda value: make_probe(name, task, class_weight, seed, calibration, **{param: value}),
                                          X_sel, y_sel, splits, run)
        cv = _CrossValidated(score_folds, y_sel, splits, task)
        del score_folds  # cv holds it until the walk is done
        _walk_grid(cv, sorted(_tidy(v, name) for v in values if name != "knn" or v < n_train) or [max(1, n_train - 1)], name, n_train)
    cv.score_folds = None  # a FoldPath's factorised folds are not needed past here: freed before the final fit of a large X
    best, chosen, ses = _one_standard_error(cv, name)
    if rowspace_logreg or in_place:
        estimator = _fit_logreg(X, y, task, chosen, class_weight, seed, rows if in_place else None)
    else:
        estimator = make_probe(name, task, class_weight, seed, calibration, **{param: chosen}).fit(X, y)
    oof_folds = _folds(X, y, task, folds, seed, groups)
    if fast and len(rows) == len(X) and len(first) == folds and all(np.array_equal(held, splits[i][1]) for i, (_, held) in zip(first, oof_folds)):
        out_of_fold = np.empty((len(X), cv.held_scores[chosen][0].shape[1]))  # the first repeat's held-out scores: no second pass
        for i in first:
            out_of_fold[splits[i][1]] = cv.held_scores[chosen][i]
    elif in_place:
        out_of_fold = _logreg_out_of_fold(X, y, oof_folds, estimator, class_weight)
    else:
        out_of_fold = cross_val_predict(make_probe(name, task, class_weight, seed, calibration, **{param: chosen}), X, y,
                                        cv=oof_folds, method="predict_proba")
    evaluated = sorted(cv.means)
    subsample = f", on a subsample of {len(rows)} of {len(X)} rows" if len(rows) < len(X) else ""
    selection = Selection(
        criterion=f"{folds}-fold CV AUC on {fit_on} ({CV_REPEATS} repeats){_grouped(groups)}, one-standard-error rule{subsample}",
        protocol="cv",
        fit_on=fit_on,
        scores={str(v): (cv.means[v] if np.isfinite(cv.means[v]) else None) for v in evaluated},
        calibration_folds=calibration if name in ("svm", "ridge") and calibration < CALIBRATION_FOLDS else None,
        folds=folds,
        repeats=CV_REPEATS,
        folds_keep_groups_whole=groups is not None,
        best=best,
        best_auc=cv.means[best] if np.isfinite(cv.means[best]) else None,
        best_se=ses[best],
        grid_widened=evaluated[0] < min(values) or evaluated[-1] > max(values),
        solver=("row space, warm-started along C" if rowspace_logreg else "in place on the columns, warm-started along C"
                if path_logreg else "scikit-learn per fold")
               + ("" if parallel is None else f", {parallel} tasks"),
        selected_on_rows=len(rows),
        fitted_on_rows=len(X),
    )
    return FittedProbe(estimator, name, {param: chosen, "class_weight": class_weight}, selection, out_of_fold)


def _cv_splits(X, y, groups, task, folds, seed, fit_on):
    """The repeated CV splits whose held-out folds can be scored, and which of them make up the first repeat.

    The first repeat is the partition the out-of-fold scores come from (as _folds draws it), when every fold of it scores.
    """
    if groups is None:
        repeated = RepeatedKFold if task == "multi-label" else RepeatedStratifiedKFold
        splits = list(repeated(n_splits=folds, n_repeats=CV_REPEATS, random_state=seed).split(X, y))
    else:  # scikit-learn has no repeated grouped splitter: one shuffled partition per repeat
        splits = [split for repeat in range(CV_REPEATS) for split in _folds(X, y, task, folds, seed + repeat, groups)]
    first = [i for i, (_, held) in enumerate(splits[:folds]) if _scorable(y[held], task)]
    splits = [(train, held) for train, held in splits if _scorable(y[held], task)]
    if not splits:
        raise ProbeError(f"no {folds}-fold split of the {fit_on} images keeping each group whole holds every class in a fold; "
                         f"add images of more groups, or use --selection val")
    return splits, first


def _pipeline_folds(probe_for, X, y, splits, run):
    """value -> each split's held-out scores, from a new scikit-learn pipeline per fold (every probe but fast logreg)."""
    def held_scores(value):
        probe = probe_for(value)

        def fold_scores(train, held):
            return clone(probe).fit(X[train], y[train]).predict_proba(X[held])

        # The folds run on threads, one BLAS thread each (set by the caller): scikit-learn's solvers release the GIL
        # in their BLAS calls, and RetinaMNIST's 15 folds took 4.9 s against 7.7 s one after another on 2 cores.
        return run(delayed(fold_scores)(*split) for split in splits)

    return held_scores


class _CrossValidated:
    """Each grid value's held-out scores, fold AUCs and mean AUC, computed on first use."""

    def __init__(self, score_folds, y, splits, task):
        self.score_folds, self._y, self._splits, self._task = score_folds, y, splits, task
        self.held_scores, self.fold_aucs, self.means = {}, {}, {}

    def __call__(self, value):
        """The mean CV AUC of `value` (-inf when no fold scores: never the best)."""
        if value not in self.means:
            self.held_scores[value] = self.score_folds(value)
            aucs = np.array([selection_auc(self._y[held], p, self._task) for (_, held), p in zip(self._splits, self.held_scores[value])])
            finite = aucs[np.isfinite(aucs)]
            self.fold_aucs[value], self.means[value] = aucs, float(finite.mean()) if len(finite) else float("-inf")
        return self.means[value]

    def best(self):
        return max(sorted(self.means), key=self.means.get)


def _walk_grid(cv, grid, name, n_train):
    """Score `grid` from its simple end, widen it past an edge where the best value sits, then refine around the best."""
    # Stop once two values in a row score below the best: past the optimum the AUC only falls, and the complex end
    # (large C) is where the solver is slowest (measured: 3x less time on RetinaMNIST).
    falling = 0
    for value in grid if SIMPLER[name] is min else grid[::-1]:
        falling = falling + 1 if cv(value) < max(cv.means.values()) else 0
        if falling == 2:
            break
    for _ in range(MAX_WIDENINGS):
        evaluated, best = sorted(cv.means), cv.best()
        if len(evaluated) > 1 and cv.means[best] == min(cv.means.values()):
            break  # a flat curve (every value ties, e.g. separable data): nothing to find past the edge
        wider = _widen(evaluated, best, name, n_train)
        if wider == evaluated:
            break
        for value in wider:
            cv(value)
    evaluated, best = sorted(cv.means), cv.best()
    i = evaluated.index(best)
    for neighbour in evaluated[max(0, i - 1) : i] + evaluated[i + 1 : i + 2]:
        cv(_tidy(np.sqrt(best * neighbour), name))  # half a step towards each neighbour


def _one_standard_error(cv, name):
    """(best, chosen, standard errors): the chosen value is the simplest whose CV AUC is within one SE of the best one's;
    it trades a statistically invisible loss for a probe less tuned to these particular folds."""
    best = cv.best()
    ses = {v: float(np.nanstd(a, ddof=1) / np.sqrt(np.isfinite(a).sum())) if np.isfinite(a).sum() > 1 else 0.0
           for v, a in cv.fold_aucs.items()}
    chosen = SIMPLER[name]([v for v in sorted(cv.means) if cv.means[v] >= cv.means[best] - ses[best]] or [best])
    return best, chosen, ses


def _parallel(backend):
    """What the CV's fold x grid fits run on, called as a joblib Parallel is: threads here (None), or tasks on the Ray
    cluster of `run --ray` ("ray"), or another joblib backend by name."""
    if backend is None:
        return Parallel(n_jobs=min(CV_FOLDS * CV_REPEATS, usable_cores()), prefer="threads")
    if backend == "ray":
        return _RayTasks()
    return Parallel(n_jobs=-1, backend=backend)


class _RayTasks:
    """Each joblib-delayed call a Ray task, on the worker processes the cluster keeps.

    joblib's own Ray backend starts a pool of new actor processes, one per CPU of the whole cluster, for every probe it
    fits: on the 2-CPU test cluster that was 2 processes and about 9 CPU-s of start-up per fit, for a few seconds of
    fits; on a large cluster, hundreds. Tasks start nothing once Ray's workers are up.
    """

    def __enter__(self):
        import ray  # Ray is optional: imported only where asked for

        self.ray, self.call = ray, ray.remote(_call_delayed)
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, calls):
        return self.ray.get([self.call.remote(function, args, kwargs) for function, args, kwargs in calls])


def _call_delayed(function, args, kwargs):
    """A joblib-delayed call `(function, args, kwargs)`, made (in a Ray task)."""
    return function(*args, **kwargs)


def _subsample(y, task, groups, size, seed):
    """About `size` row indices, sorted: stratified by class, or whole groups drawn at random when groups are given."""
    rows = np.arange(len(y))
    if groups is not None:
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.random.default_rng(seed).permutation(inverse.max() + 1)
        counts = np.bincount(inverse)[order]
        taken = order[: int(np.searchsorted(np.cumsum(counts), size)) + 1]
        return rows[np.isin(inverse, taken)]
    stratify = None if task == "multi-label" else y
    return np.sort(train_test_split(rows, train_size=size, stratify=stratify, random_state=seed)[0])


def _fit_logreg(X, y, task, C, class_weight, seed, start_rows=None):
    """The logreg probe's pipeline fitted on all of X by the row-space solver (tests pin it to scikit-learn's own fit)."""
    # Every usable core's BLAS thread for one large fit; the CV's many small ones ran on one each
    with threadpool_limits(limits=usable_cores(), user_api="blas"):
        mean, scale, var, coef, intercept, n_iter = rowspace.fit(X, y, C, class_weight, start_rows)
    probe = make_probe("logreg", task, class_weight, seed, C=C)
    scaler, clf = probe.named_steps["scale"], probe.named_steps["clf"]
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_samples_seen_, scaler.n_features_in_ = len(X), X.shape[1]
    clf.classes_, clf.coef_, clf.intercept_ = np.unique(y), coef, intercept
    clf.n_features_in_, clf.n_iter_ = X.shape[1], np.array([n_iter])
    return probe


def _logreg_out_of_fold(X, y, folds, estimator, class_weight):
    """Out-of-fold scores of a large logreg: each fold solved in place (its rows weighted 0), from the full fit."""
    scaler, clf = estimator.named_steps["scale"], estimator.named_steps["clf"]
    start, stats = np.vstack([clf.coef_.T, clf.intercept_]), (scaler.mean_, scaler.scale_, scaler.var_)
    out = np.empty((len(X), len(clf.classes_)))
    with threadpool_limits(limits=usable_cores(), user_api="blas"):
        for train, held in folds:
            _, out[held] = rowspace.solve_in_place(X, y, train, held, stats, class_weight, clf.C, start, clf.classes_)
    return out


def smallest_class(y, task, label_names=None):
    """(count, "class 'x'") of the rarest class in `y` (for multi-label: the rarer side of any label)."""
    names = list(label_names) if label_names is not None else None
    if task == "multi-label":
        positives = y.sum(axis=0)
        counts = np.minimum(positives, len(y) - positives)
        j = int(np.argmin(counts))
        return int(counts[j]), f"label {names[j] if names else j!r}"
    classes, counts = np.unique(y, return_counts=True)
    k = int(np.argmin(counts))
    return int(counts[k]), f"class {names[classes[k]] if names else classes[k].item()!r}"


def selection_auc(y_true, scores, task):
    """MedMNIST AUC over the classes present in a (small) val split or fold, for choosing hyper-parameters."""
    aucs = [_rank_auc(t, s) for t, s in binary_columns(y_true, scores, task) if 0 < t.sum() < len(t)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _rank_auc(t, s):
    """roc_auc_score's value (ties counted half) from the ranks: it is called for every fold, value and class, and
    roc_auc_score's input checks cost ~13 % of RetinaMNIST's whole selection (measured), scipy's rankdata another 15 %."""
    positive = np.asarray(t).astype(bool)
    n_pos = positive.sum()
    return float((_midranks(np.asarray(s))[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(positive) - n_pos)))


def _midranks(s):
    """scipy.stats.rankdata(s) (1-based, ties get their mean rank) in a few NumPy calls."""
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # where each run of equal values starts
    last = np.r_[first[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((first + last + 1) / 2.0, last - first)
    return ranks


def _scorable(y, task):
    if task == "multi-label":
        return bool(((y.min(axis=0) == 0) & (y.max(axis=0) == 1)).all())
    return len(np.unique(y)) >= 2


def _folds(X, y, task, n_folds, seed, groups=None):
    """One shuffled k-fold partition of the rows: stratified by class unless multi-label, and groups kept whole if given."""
    if groups is None:
        folds = KFold(n_folds, shuffle=True, random_state=seed) if task == "multi-label" else StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        return list(folds.split(X, y if task != "multi-label" else None))
    if task == "multi-label":  # no stratification by several labels at once: whole groups, shuffled
        return list(GroupKFold(n_folds, shuffle=True, random_state=seed).split(X, groups=groups))
    return list(StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(X, y, groups))


def _group_count(groups, y, task):
    """How many folds the groups allow: each held-out fold needs a group of every class (for multi-label, any group)."""
    if groups is None:
        return CV_FOLDS
    if task == "multi-label":
        return len(np.unique(groups))
    return min(len(np.unique(groups[y == c])) for c in np.unique(y))


def _grouped(groups):
    return "" if groups is None else ", folds keeping each group whole"


def _cv_auc(probe, X, y, task, seed, n_folds, groups=None):
    aucs = []
    for train, held in _folds(X, y, task, n_folds, seed, groups):
        if not _scorable(y[held], task):
            continue
        fitted = clone(probe).fit(X[train], y[train])
        aucs.append(selection_auc(y[held], fitted.predict_proba(X[held]), task))
    return float(np.mean(aucs)) if aucs else float("nan")
