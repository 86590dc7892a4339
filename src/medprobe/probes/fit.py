"""Probes are plain scikit-learn pipelines, so they drop into cross_val_score, GridSearchCV and Pipeline.

Hyper-parameters are chosen by MedMNIST AUC on the val split (or by stratified 5-fold CV on
train when there is no val split), then the probe is refitted on train alone.
"""

from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from medprobe.core.errors import ProbeError, UnknownNameError
from medprobe.evaluation.metrics import binary_columns

# The grid each probe searches; the parameter names are Pipeline step parameters.
GRIDS = {
    "logreg": {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]},
    "svm": {"C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
    "knn": {"n_neighbors": [5, 10, 20, 50]},
}
PROBES = tuple(GRIDS)
DESCRIPTIONS = {
    "logreg": "standardised logistic regression (L2); C chosen by val AUC",
    "svm": "standardised linear SVM, Platt-calibrated on 3 internal folds; C chosen by val AUC",
    "knn": "cosine k-nearest neighbours, distance-weighted; k chosen by val AUC",
}


# What each probe uses when nothing can be selected (no usable val split and too few images to cross-validate).
DEFAULTS = {"logreg": 1.0, "svm": 1e-2, "knn": 10}
CV_FOLDS, CALIBRATION_FOLDS = 5, 3


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
class FittedProbe:
    estimator: Pipeline
    name: str
    params: dict
    selection: dict = field(default_factory=dict)  # each grid point's score and how it was measured

    def predict_scores(self, X):
        """Per-class (or per-label) probabilities; columns follow the encoded classes 0..K-1."""
        return self.estimator.predict_proba(X)


def fit_probe(name, X_train, y_train, X_val=None, y_val=None, task="multi-class", class_weight=None, seed=0, label_names=None):
    """Choose the probe's hyper-parameter on val (or CV on train), then fit on train.

    Folds adapt to the smallest class: CV uses min(5, its size) folds and the svm's calibration
    min(3, its size). When val cannot score (absent, or one class) and the smallest class is too
    small to cross-validate, the probe's default is used and `selection` says so.

    >>> fitted = fit_probe("logreg", X_tr, y_tr, X_va, y_va, task="binary")
    >>> fitted.params
    {'C': 0.01}
    """
    if name not in GRIDS:
        raise UnknownNameError("probe", name, GRIDS)
    (param, values), = GRIDS[name].items()
    if param == "n_neighbors":
        values = [k for k in values if k < len(X_train)] or [max(1, len(X_train) - 1)]
    smallest, which = smallest_class(y_train, task, label_names)
    if name == "svm" and smallest < 2:
        raise ProbeError(
            f"{which} has {smallest} training image(s); the svm probe calibrates its scores by cross-validation and needs at "
            f"least 2 of each class (3 for its usual 3 folds); add training images of {which}, or use --probe logreg or knn"
        )
    calibration = min(CALIBRATION_FOLDS, smallest)
    have_val = X_val is not None and len(X_val) > 0 and _scorable(y_val, task)
    folds = min(CV_FOLDS, smallest)
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
                scores[value] = _cv_auc(probe, X_train, y_train, task, seed, folds)
        usable = [v for v in values if np.isfinite(scores.get(v, np.nan))]
        if usable:
            best = max(usable, key=lambda v: (scores[v], -values.index(v)))
            criterion = "val AUC" if have_val else f"{folds}-fold CV AUC on train"
        else:
            best = DEFAULTS[name] if DEFAULTS[name] in values else values[len(values) // 2]
            why = "the val split cannot score AUC (absent, or a single class)" if not have_val or not scores else "no grid point gave a finite AUC"
            criterion = (f"none: {why}, and {which} has {smallest} training image(s), too few to cross-validate; "
                         f"used the default {param}={best}")
        # With a val split the winner was already fitted on train alone; otherwise it is fitted on all of train now.
        estimator = fitted.get(best) or make_probe(name, task, class_weight, seed, calibration, **{param: best}).fit(X_train, y_train)
    selection = {"criterion": criterion, "scores": {str(v): (s if np.isfinite(s) else None) for v, s in scores.items()}}
    if name == "svm" and calibration < CALIBRATION_FOLDS:
        selection["calibration_folds"] = calibration
    return FittedProbe(estimator, name, {param: best, "class_weight": class_weight}, selection)


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
    return int(counts[k]), f"class {names[classes[k]] if names else classes[k]!r}"


def selection_auc(y_true, scores, task):
    """MedMNIST AUC over the classes present in a (small) val split or fold, for choosing hyper-parameters."""
    aucs = [roc_auc_score(t, s) for t, s in binary_columns(y_true, scores, task) if 0 < t.sum() < len(t)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _scorable(y, task):
    if task == "multi-label":
        return bool(((y.min(axis=0) == 0) & (y.max(axis=0) == 1)).all())
    return len(np.unique(y)) >= 2


def _cv_auc(probe, X, y, task, seed, n_folds):
    folds = KFold(n_folds, shuffle=True, random_state=seed) if task == "multi-label" else StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    aucs = []
    for train, held in folds.split(X, y if task != "multi-label" else None):
        if not _scorable(y[held], task):
            continue
        fitted = clone(probe).fit(X[train], y[train])
        aucs.append(selection_auc(y[held], fitted.predict_proba(X[held]), task))
    return float(np.mean(aucs)) if aucs else float("nan")
