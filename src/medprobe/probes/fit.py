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


def make_probe(name, task="multi-class", class_weight=None, seed=0, **params):
    """An unfitted probe pipeline.

    >>> make_probe("logreg", C=0.1).fit(X, y).predict_proba(X)
    """
    if name not in GRIDS:
        raise UnknownNameError("probe", name, GRIDS)
    if name == "logreg":
        head = LogisticRegression(C=params.get("C", 1.0), class_weight=class_weight, max_iter=3000, random_state=seed)
        steps = [("scale", StandardScaler()), ("clf", head)]
    elif name == "svm":
        svm = LinearSVC(C=params.get("C", 1e-2), class_weight=class_weight, max_iter=10000, random_state=seed)
        # Platt scaling on internal folds turns margins into probabilities that AUC, ACC@0.5 and calibration can use.
        steps = [("scale", StandardScaler()), ("clf", CalibratedClassifierCV(svm, method="sigmoid", cv=3))]
    else:
        if class_weight:
            raise ProbeError("the knn probe has no class_weight; use logreg or svm for class_weight='balanced'")
        # Unit-length embeddings make Euclidean neighbours cosine neighbours.
        head = KNeighborsClassifier(n_neighbors=params.get("n_neighbors", 10), weights="distance")
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


def fit_probe(name, X_train, y_train, X_val=None, y_val=None, task="multi-class", class_weight=None, seed=0):
    """Choose the probe's hyper-parameter on val (or CV), then fit on train.

    >>> fitted = fit_probe("logreg", X_tr, y_tr, X_va, y_va, task="binary")
    >>> fitted.params
    {'C': 0.01}
    """
    if name not in GRIDS:
        raise UnknownNameError("probe", name, GRIDS)
    (param, values), = GRIDS[name].items()
    if param == "n_neighbors":
        values = [k for k in values if k < len(X_train)] or [max(1, len(X_train) - 1)]
    have_val = X_val is not None and len(X_val) > 0 and _scorable(y_val, task)
    scores, fitted = {}, {}
    # One BLAS thread: these problems are small, and OpenBLAS's spinning threads made the sweep ~15x
    # slower whenever the other core was busy (measured: 14.8 s vs 0.9 s for RetinaMNIST's six fits).
    with threadpool_limits(limits=1, user_api="blas"):
        for value in values:
            probe = make_probe(name, task, class_weight, seed, **{param: value})
            if have_val:
                fitted[value] = probe.fit(X_train, y_train)
                scores[value] = selection_auc(y_val, probe.predict_proba(X_val), task)
            else:
                scores[value] = _cv_auc(probe, X_train, y_train, task, seed)
        best = max(values, key=lambda v: (scores[v], -values.index(v)))
        # With a val split the winner was already fitted on train alone; with CV it is refitted on all of train.
        estimator = fitted.get(best) or make_probe(name, task, class_weight, seed, **{param: best}).fit(X_train, y_train)
    selection = {"criterion": "val AUC" if have_val else "5-fold CV AUC on train", "scores": {str(v): s for v, s in scores.items()}}
    return FittedProbe(estimator, name, {param: best, "class_weight": class_weight}, selection)


def selection_auc(y_true, scores, task):
    """MedMNIST AUC over the classes present in a (small) val split or fold, for choosing hyper-parameters."""
    aucs = [roc_auc_score(t, s) for t, s in binary_columns(y_true, scores, task) if 0 < t.sum() < len(t)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _scorable(y, task):
    if task == "multi-label":
        return bool(((y.min(axis=0) == 0) & (y.max(axis=0) == 1)).all())
    return len(np.unique(y)) >= 2


def _cv_auc(probe, X, y, task, seed):
    folds = KFold(5, shuffle=True, random_state=seed) if task == "multi-label" else StratifiedKFold(5, shuffle=True, random_state=seed)
    aucs = []
    for train, held in folds.split(X, y if task != "multi-label" else None):
        if not _scorable(y[held], task):
            continue
        fitted = clone(probe).fit(X[train], y[train])
        aucs.append(selection_auc(y[held], fitted.predict_proba(X[held]), task))
    return float(np.mean(aucs)) if aucs else float("nan")
