import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from medprobe.evaluation.metrics import bootstrap_ci, evaluate, medmnist_acc, medmnist_auc, weighted_auc


def test_binary_matches_sklearn_on_positive_column():
    y = np.array([0, 0, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])
    scores = np.stack([1 - p1, p1], axis=1)
    assert medmnist_auc(y, scores, "binary") == pytest.approx(roc_auc_score(y, p1))
    assert medmnist_acc(y, scores, "binary") == pytest.approx(accuracy_score(y, p1 > 0.5))
    assert medmnist_acc(y, scores, "binary") == pytest.approx(4 / 6)  # by hand: 0.6 and 0.4 are the two misses


def test_binary_threshold_is_strictly_above_half():
    # MedMNIST predicts positive only for score > 0.5.
    assert medmnist_acc(np.array([0, 1]), np.array([[0.5, 0.5], [0.4, 0.6]]), "binary") == 1.0


def test_multiclass_is_unweighted_mean_of_one_vs_rest():
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 2])
    scores = rng.dirichlet(np.ones(3), size=len(y))
    expected = np.mean([roc_auc_score(y == k, scores[:, k]) for k in range(3)])
    assert medmnist_auc(y, scores, "multi-class") == pytest.approx(expected)
    assert medmnist_auc(y, scores, "ordinal") == pytest.approx(expected)
    # sklearn's own macro OvR agrees.
    assert expected == pytest.approx(roc_auc_score(y, scores, multi_class="ovr", average="macro"))
    assert medmnist_acc(y, scores, "multi-class") == pytest.approx(accuracy_score(y, scores.argmax(1)))


def test_multilabel_means_per_label_auc_and_accuracy():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.1], [0.4, 0.6]])
    auc = np.mean([roc_auc_score(y[:, j], scores[:, j]) for j in range(2)])
    acc = np.mean([accuracy_score(y[:, j], scores[:, j] > 0.5) for j in range(2)])
    assert medmnist_auc(y, scores, "multi-label") == pytest.approx(auc)
    assert medmnist_acc(y, scores, "multi-label") == pytest.approx(acc)
    assert acc == pytest.approx((4 / 5 + 3 / 5) / 2)  # by hand: label 0 misses row 4; label 1 misses rows 2 and 4
    assert roc_auc_score(y, scores, average="macro") == pytest.approx(auc)


def test_weighted_auc_equals_sklearn_on_repeated_rows_with_ties():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 40)
    score = rng.integers(0, 5, 40) / 4  # many ties
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=5).astype(float)
    got = weighted_auc(truth, score, counts)
    for row, value in zip(counts.astype(int), got):
        repeated = np.repeat(np.arange(40), row)
        assert value == pytest.approx(roc_auc_score(truth[repeated], score[repeated]))


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    scores = rng.dirichlet(np.ones(3), size=300)
    scores[np.arange(300), y] += 0.5
    scores /= scores.sum(1, keepdims=True)
    first, second = bootstrap_ci(y, scores, "multi-class", seed=7), bootstrap_ci(y, scores, "multi-class", seed=7)
    assert first == second
    assert bootstrap_ci(y, scores, "multi-class", seed=8)["auc_ci"] != first["auc_ci"]
    lo, hi = first["auc_ci"]
    assert lo < medmnist_auc(y, scores, "multi-class") < hi
    lo, hi = first["acc_ci"]
    assert lo < medmnist_acc(y, scores, "multi-class") < hi
    assert 0.02 < hi - lo < 0.2  # a real spread for n=300, not a degenerate one


def test_evaluate_reports_everything_and_per_class_names():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    scores = np.eye(3)[[0, 1, 2, 0, 2, 2, 1, 1, 2]] * 0.8 + 0.2 / 3
    result = evaluate(y, scores, "multi-class", label_names=["a", "b", "c"], n_boot=200)
    assert set(result.to_json()) >= {"auc", "acc", "auc_ci", "acc_ci", "balanced_accuracy", "macro_f1", "per_class_auc", "n"}
    assert list(result.per_class_auc) == ["a", "b", "c"]
    assert result.acc == pytest.approx(7 / 9)
