import numpy as np
import pytest
from sklearn.model_selection import cross_val_score

from medprobe.core.errors import ProbeError, UnknownNameError
from medprobe.evaluation.metrics import medmnist_auc
from medprobe.probes.fit import fit_probe, make_probe


def _blobs(n=120, classes=3, dim=16, seed=0, shift=2.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, dim)) + shift * np.eye(classes, dim)[y]
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", ["logreg", "svm", "knn"])
def test_each_probe_learns_and_scores_columns_in_class_order(name):
    X, y = _blobs()
    Xv, yv = _blobs(seed=1)
    fitted = fit_probe(name, X, y, Xv, yv, task="multi-class")
    scores = fitted.predict_scores(Xv)
    assert scores.shape == (120, 3) and np.allclose(scores.sum(1), 1)
    assert list(fitted.estimator.classes_) == [0, 1, 2]
    assert medmnist_auc(yv, scores, "multi-class") > 0.9
    assert fitted.selection["criterion"] == "val AUC"


def test_without_val_the_parameter_is_chosen_by_cv():
    X, y = _blobs(classes=2)
    fitted = fit_probe("logreg", X, y, task="binary")
    assert fitted.selection["criterion"].startswith("5-fold CV")
    assert len(fitted.selection["scores"]) == 6


def test_balanced_class_weight_is_passed_through_and_knn_refuses_it():
    X, y = _blobs(classes=2)
    fitted = fit_probe("logreg", X, y, *_blobs(classes=2, seed=2), task="binary", class_weight="balanced")
    assert fitted.estimator.named_steps["clf"].class_weight == "balanced"
    with pytest.raises(ProbeError, match="knn probe has no class_weight"):
        make_probe("knn", class_weight="balanced")


def test_multilabel_probe_gives_one_column_per_label():
    X, y = _blobs(classes=2)
    labels = np.stack([y, 1 - y, (X[:, 2] > 0).astype(int)], axis=1)
    fitted = fit_probe("logreg", X, labels, X, labels, task="multi-label")
    assert fitted.predict_scores(X).shape == (120, 3)


def test_probes_are_plain_sklearn_estimators():
    X, y = _blobs()
    scores = cross_val_score(make_probe("logreg", C=0.1), X, y, cv=3, scoring="roc_auc_ovr")
    assert scores.mean() > 0.9


def test_unknown_probe_suggests():
    with pytest.raises(UnknownNameError, match="^unknown probe 'logreg2'; did you mean 'logreg'") as error:
        make_probe("logreg2")
    assert error.value.kind == "probe" and not isinstance(error.value, ProbeError)
    with pytest.raises(UnknownNameError, match="unknown probe 'logreg2'"):
        fit_probe("logreg2", *_blobs(classes=2))
