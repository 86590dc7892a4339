import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score

from medprobe.core.errors import ProbeError, UnknownNameError
from medprobe.evaluation.metrics import medmnist_auc
from medprobe.probes.fit import fit_probe, make_probe


def _blobs(n=120, classes=3, dim=16, seed=0, shift=2.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, dim)) + shift * np.eye(classes, dim)[y]
    return X.astype(np.float32), y


@pytest.mark.parametrize("name", ["logreg", "svm", "knn", "pca_logreg", "lda", "ridge"])
def test_each_probe_learns_and_scores_columns_in_class_order(name):
    X, y = _blobs()
    Xv, yv = _blobs(seed=1)
    fitted = fit_probe(name, X, y, Xv, yv, task="multi-class", selection="val")
    scores = fitted.predict_scores(Xv)
    assert scores.shape == (120, 3) and np.allclose(scores.sum(1), 1)
    assert list(fitted.estimator.classes_) == [0, 1, 2]
    assert medmnist_auc(yv, scores, "multi-class") > 0.9
    assert fitted.selection.criterion == "val AUC"
    assert fitted.selection.protocol == "val" and fitted.selection.fit_on == "train"


def test_without_val_the_parameter_is_chosen_by_cv():
    X, y = _blobs(classes=2)
    fitted = fit_probe("logreg", X, y, task="binary", selection="val")
    assert fitted.selection.criterion.startswith("5-fold CV")
    assert len(fitted.selection.scores) == 6


def test_balanced_class_weight_is_passed_through_and_knn_refuses_it():
    X, y = _blobs(classes=2)
    fitted = fit_probe("logreg", X, y, *_blobs(classes=2, seed=2), task="binary", class_weight="balanced", selection="val")
    assert fitted.estimator.named_steps["clf"].class_weight == "balanced"
    with pytest.raises(ProbeError, match="knn probe has no class_weight"):
        make_probe("knn", class_weight="balanced")


def test_multilabel_probe_gives_one_column_per_label():
    X, y = _blobs(classes=2)
    labels = np.stack([y, 1 - y, (X[:, 2] > 0).astype(int)], axis=1)
    fitted = fit_probe("logreg", X, labels, X, labels, task="multi-label", selection="val")
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


# --- selection protocols -------------------------------------------------------------------------


def test_cv_selection_pools_train_and_val_and_applies_the_one_standard_error_rule():
    X, y = _blobs(n=150, shift=0.6)
    Xv, yv = _blobs(n=60, seed=1, shift=0.6)
    fitted = fit_probe("logreg", X, y, Xv, yv, task="multi-class", selection="cv")
    sel = fitted.selection
    assert sel.protocol == "cv" and sel.fit_on == "train+val" and sel.folds == 5 and sel.repeats == 3
    assert fitted.estimator.named_steps["scale"].n_samples_seen_ == 210  # the final fit saw train and val
    chosen, best = fitted.params["C"], sel.best
    scores = {float(k): v for k, v in sel.scores.items()}
    assert chosen <= best and scores[chosen] >= sel.best_auc - sel.best_se  # simplest within one SE of the best
    assert max(scores.values()) == sel.best_auc == scores[best]


def test_cv_scores_are_an_independent_repeated_cv():
    """The recorded score of one grid point equals scikit-learn's own repeated stratified CV of the same probe
    (computed the plain way, fast=False; the row-space path is pinned to it below)."""
    from sklearn.metrics import make_scorer, roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    X, y = _blobs(n=100, classes=2, shift=0.5)
    fitted = fit_probe("logreg", X, y, task="binary", selection="cv", fast=False)
    C = float(next(iter(fitted.selection.scores)))
    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=0)
    # probabilities, as medprobe scores them (at small C they tie where decision values do not)
    scorer = make_scorer(roc_auc_score, response_method="predict_proba")
    expected = cross_val_score(make_probe("logreg", C=C), X, y, cv=folds, scoring=scorer).mean()
    assert fitted.selection.scores[str(C)] == pytest.approx(expected, abs=1e-12)


def _twins(n_groups=60, per_group=3, dim=40, seed=0):
    """Images that come in groups (a patient's or a lesion's) with a label per group and no signal beyond the group."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = np.repeat(np.arange(n_groups) % 2, per_group)
    X = rng.normal(size=(n_groups, dim))[groups] + 0.1 * rng.normal(size=(len(groups), dim))
    return X.astype(np.float32), y, groups


def test_grouped_cv_keeps_each_group_in_one_fold_and_stops_rewarding_memorised_twins():
    X, y, groups = _twins()
    tr, va = slice(0, 150), slice(150, None)
    plain = fit_probe("logreg", X[tr], y[tr], X[va], y[va], task="binary", selection="cv")
    grouped = fit_probe("logreg", X[tr], y[tr], X[va], y[va], task="binary", selection="cv", groups=(groups[tr], groups[va]))
    # a fold that holds out one image of a group but trains on its twins scores the memory of them, not a finding
    assert plain.selection.best_auc > 0.9
    assert grouped.selection.best_auc < 0.75
    assert grouped.selection.folds_keep_groups_whole and not plain.selection.folds_keep_groups_whole
    assert "keeping each group whole" in grouped.selection.criterion


def test_grouped_cv_scores_are_scikit_learns_stratified_group_kfold():
    from sklearn.metrics import make_scorer, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    X, y, groups = _twins(n_groups=40)
    X = X + 0.8 * y[:, None]  # some signal, so the grid has a best value
    fitted = fit_probe("logreg", X, y, task="binary", selection="cv", groups=(groups, None), fast=False)
    C = float(next(iter(fitted.selection.scores)))
    scorer = make_scorer(roc_auc_score, response_method="predict_proba")
    folds = [split for repeat in range(3) for split in StratifiedGroupKFold(5, shuffle=True, random_state=repeat).split(X, y, groups)]
    for train, held in folds:
        assert not set(groups[train]) & set(groups[held])
    expected = cross_val_score(make_probe("logreg", C=C), X, y, cv=folds, scoring=scorer).mean()
    assert fitted.selection.scores[str(C)] == pytest.approx(expected, abs=1e-12)


def test_grouped_cv_for_multi_label_keeps_groups_whole_too():
    X, y, groups = _twins()
    labels = np.stack([y, 1 - y], axis=1)
    fitted = fit_probe("logreg", X, labels, task="multi-label", selection="cv", groups=(groups, None))
    assert fitted.selection.folds_keep_groups_whole and fitted.selection.best_auc < 0.75


def test_a_class_from_a_single_group_cannot_be_cross_validated_and_says_so():
    X, y, groups = _twins(n_groups=12, per_group=5)
    groups[y == 1] = -1  # every positive image from one patient
    fitted = fit_probe("logreg", X, y, task="binary", selection="cv", groups=(groups, None))
    assert "all come from one group" in fitted.selection.criterion and fitted.params["C"] == 1.0


def test_grouped_folds_are_no_more_than_the_groups():
    X, y, groups = _twins(n_groups=6, per_group=10)  # three groups of each class: a fold needs one of each
    fitted = fit_probe("logreg", X, y, task="binary", selection="cv", groups=(groups, None))
    assert fitted.selection.folds == 3


def test_cv_grid_widens_past_an_edge_within_bounds():
    from medprobe.probes.fit import _widen

    assert _widen([1e-4, 1e-3, 1e-2], 1e-4, "logreg", 100) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    assert _widen([1e-4, 1e-3, 1e-2], 1e-3, "logreg", 100) == [1e-4, 1e-3, 1e-2]  # inside: unchanged
    assert _widen([0.3, 0.6, 0.9], 0.9, "lda", 100) == [0.3, 0.6, 0.9]  # a shrinkage cannot pass 1
    assert _widen([10, 20, 50], 50, "knn", 80) == [10, 20, 50]  # k = 125 would exceed the training folds
    assert _widen([10, 20, 50], 10, "knn", 80) == [2, 5, 10, 20, 50]  # halving twice, rounded


def test_flat_cv_curve_does_not_widen():
    X, y = _blobs(n=120, classes=2, shift=6.0)  # separable: every C scores AUC 1
    fitted = fit_probe("logreg", X, y, *_blobs(n=40, classes=2, seed=1, shift=6.0), task="binary", selection="cv")
    assert not fitted.selection.grid_widened and fitted.params["C"] == 1e-4


def test_unknown_selection_is_refused():
    with pytest.raises(ProbeError, match="unknown selection 'test'"):
        fit_probe("logreg", *_blobs(classes=2), selection="test")


def test_cli_cv_selection_is_recorded_and_never_looks_at_test(tmp_path, medprobe):
    """Permuting the test labels (and so the test AUC) changes nothing the selection recorded or chose."""
    from conftest import write_npz

    npz = write_npz(tmp_path / "t.npz", n_train=40, n_val=15, n_test=20, classes=2)
    arrays = dict(np.load(npz))
    arrays["test_labels"] = arrays["test_labels"][::-1].copy()
    np.savez(tmp_path / "permuted.npz", **arrays)
    results = []
    for name in ("t.npz", "permuted.npz"):
        out = tmp_path / f"out-{name}"
        done = medprobe("run", "--dataset", tmp_path / name, "--selection", "cv", "--out", out, "--quiet")
        assert done.returncode == 0, done.stderr
        results.append(json.loads((out / "results.json").read_text()))
    first, second = results
    assert first["probe"]["selection"]["protocol"] == "cv" and first["probe"]["selection"]["fit_on"] == "train+val"
    assert first["probe"]["selection"] == second["probe"]["selection"] and first["probe"]["params"] == second["probe"]["params"]
    assert first["metrics"]["test"]["auc"] != second["metrics"]["test"]["auc"]


def test_cli_refuses_an_unknown_selection_and_saving_a_probe_it_cannot_save(tmp_path, medprobe):
    from conftest import write_npz

    npz = write_npz(tmp_path / "t.npz")
    done = medprobe("run", "--dataset", npz, "--selection", "test", "--out", tmp_path / "o")
    assert done.returncode != 0 and "--selection" in done.stderr and "Traceback" not in done.stderr
    done = medprobe("fit", "--dataset", npz, "--probe", "ridge", "--save", tmp_path / "m", "--out", tmp_path / "o2")
    assert done.returncode != 0 and "ridge" in done.stderr and "Traceback" not in done.stderr


def test_cv_selection_keeps_out_of_fold_scores_because_val_is_inside_the_fit():
    """kNN scores its own training images perfectly; thresholds chosen on those would be chosen on memorised rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8))
    y = (X[:, 0] + rng.normal(scale=1.5, size=120) > 0).astype(int)
    fitted = fit_probe("knn", X[:80], y[:80], X[80:], y[80:], task="binary", selection="cv")
    assert fitted.selection.fit_on == "train+val" and fitted.out_of_fold.shape == (120, 2)
    in_sample = roc_auc_score(y[80:], fitted.predict_scores(X[80:])[:, 1])
    held_out = roc_auc_score(y[80:], fitted.out_of_fold[80:, 1])
    assert in_sample == 1.0 and held_out < 0.95
    assert fit_probe("knn", X[:80], y[:80], X[80:], y[80:], task="binary", selection="val").out_of_fold is None


def test_the_folds_and_blas_use_the_cores_the_process_may_use(monkeypatch):
    """One cap for every pool: the CV's threads and the large fit's BLAS threads follow $MEDPROBE_THREADS and the CPU
    affinity (a container's cores), as the encoders' runtimes do; os.cpu_count() would take the whole machine."""
    from medprobe.probes import fit as fit_module

    limits = []
    original = fit_module.threadpool_limits
    monkeypatch.setattr(fit_module, "threadpool_limits", lambda **kw: limits.append(kw["limits"]) or original(**kw))
    monkeypatch.setenv("MEDPROBE_THREADS", "1")
    assert fit_module._parallel(None).n_jobs == 1
    X, y = _blobs(n=200, classes=2)
    fit_probe("logreg", X[:150], y[:150], X[150:], y[150:], task="binary", selection="cv")
    assert limits and set(limits) == {1}
    monkeypatch.delenv("MEDPROBE_THREADS")
    assert fit_module._parallel(None).n_jobs == min(fit_module.CV_FOLDS * fit_module.CV_REPEATS, len(os.sched_getaffinity(0)))
