"""Operating points, calibration and subgroups, each checked against an independent reference (scikit-learn, scipy)."""

import json

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.calibration import _sigmoid_calibration
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import (
    brier_score_loss,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from medprobe.evaluation.calibration import (
    CalibrationError,
    Calibrator,
    brier_score,
    calibration_report,
    ece_resampled,
    reliability,
    resolve_method,
)
from medprobe.evaluation.metrics import bootstrap_weights
from medprobe.evaluation.operating_points import (
    OperatingPointError,
    Rule,
    choose_threshold,
    choose_thresholds,
    decide,
    point_metrics,
)
from medprobe.evaluation.study import (
    Decisions,
    StudyOptions,
    fit_decisions,
    score_decisions,
)
from medprobe.evaluation.subgroups import (
    SubgroupError,
    SubgroupOptions,
    age_band,
    band_labels,
    subgroup_table,
)


def binary_scores(n, seed, shift=1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    margin = rng.normal(size=n) + shift * y
    p = 1 / (1 + np.exp(-margin))
    return y, np.stack([1 - p, p], axis=1)


def multiclass_scores(n, k, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


# --- operating points -------------------------------------------------------------------------------


def test_rules_parse_and_refuse_clearly():
    assert Rule.parse("youden") == Rule("youden")
    assert Rule.parse("sensitivity=0.9").name == "sensitivity>=0.9" == Rule.parse("sens>=0.9").name
    assert Rule.parse("Specificity = 0.95").name == "specificity>=0.95"
    for bad in ("youdn", "sensitivity=1.5", "specificity=0", "sensitivity=abc"):
        with pytest.raises(OperatingPointError, match="operating point"):
            Rule.parse(bad)


def test_youden_and_targets_match_roc_curve_on_val():
    y, s = binary_scores(300, 0)
    fpr, tpr, _ = roc_curve(y, s[:, 1], drop_intermediate=False)
    youden = choose_threshold(y, s[:, 1], Rule("youden"))
    best = np.max(tpr - fpr)
    # The chosen point is on val's ROC curve with the largest J, and the threshold reproduces it exactly.
    predicted = s[:, 1] >= youden["threshold"]
    sens, spec = predicted[y == 1].mean(), 1 - predicted[y == 0].mean()
    assert sens + spec - 1 == pytest.approx(best) and youden["val"] == {"sensitivity": pytest.approx(sens), "specificity": pytest.approx(spec)}
    assert youden["reached"] and youden["note"] is None
    # It sits strictly between two val scores, not on a val image.
    assert not np.any(s[:, 1] == youden["threshold"])

    target = choose_threshold(y, s[:, 1], Rule("sensitivity", 0.9))
    predicted = s[:, 1] >= target["threshold"]
    assert predicted[y == 1].mean() >= 0.9
    # No higher threshold keeps 90 % sensitivity: the best specificity at that sensitivity.
    feasible = [(f, t) for f, t in zip(fpr, tpr) if t >= 0.9]
    assert 1 - predicted[y == 0].mean() == pytest.approx(1 - min(f for f, _ in feasible))

    target = choose_threshold(y, s[:, 1], Rule("specificity", 0.95))
    predicted = s[:, 1] >= target["threshold"]
    assert 1 - predicted[y == 0].mean() >= 0.95
    assert predicted[y == 1].mean() == pytest.approx(max(t for f, t in zip(fpr, tpr) if f <= 0.05))


def test_unreachable_and_unscorable_val_are_said_not_hidden():
    y = np.array([0, 0, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.5, 0.7, 0.9])  # the top val score is a negative: 100 % specificity only by calling none positive
    point = choose_threshold(y, s, Rule("specificity", 1.0))
    assert not point["reached"] and "only by calling every image negative" in point["note"]
    assert point["threshold"] > 0.9 and point["val"] == {"sensitivity": 0.0, "specificity": 1.0}
    single = choose_threshold(np.zeros(4, int), np.array([0.1, 0.2, 0.3, 0.4]), Rule("youden"))
    assert single["threshold"] is None and "no positive image" in single["note"]


def test_test_metrics_match_sklearn_and_bootstrap_matches_repeated_rows():
    y, s = binary_scores(400, 1)
    weights = bootstrap_weights(len(y), 200, 0)
    record = point_metrics(y, s[:, 1], 0.55, weights)
    predicted = (s[:, 1] >= 0.55).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, average="binary")
    assert record["counts"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert record["sensitivity"] == pytest.approx(recall) and record["ppv"] == pytest.approx(precision) and record["f1"] == pytest.approx(f1)
    assert record["specificity"] == pytest.approx(tn / (tn + fp)) and record["npv"] == pytest.approx(tn / (tn + fn))
    # Each resample's value equals sklearn's on the rows repeated that many times; the CI is their percentiles.
    rows = np.repeat(np.arange(len(y)), weights[7].astype(int))
    _, recall7, f17, _ = precision_recall_fscore_support(y[rows], predicted[rows], average="binary")
    values = []
    for w in weights:
        r = np.repeat(np.arange(len(y)), w.astype(int))
        values.append(precision_recall_fscore_support(y[r], predicted[r], average="binary", zero_division=np.nan)[2])
    assert record["f1_ci"] == pytest.approx(np.percentile(values, [2.5, 97.5]).tolist())
    assert f17 == pytest.approx(values[7]) and recall7 <= 1


def test_multiclass_thresholds_are_one_vs_rest_and_decide_applies_them():
    y, s = multiclass_scores(300, 3, 2)
    chosen = choose_thresholds(y, s, "multi-class", ["a", "b", "c"], [Rule("youden")])["youden"]
    for k, name in enumerate("abc"):
        assert chosen[name]["threshold"] == choose_threshold((y == k).astype(int), s[:, k], Rule("youden"))["threshold"]
    thresholds = {n: c["threshold"] for n, c in chosen.items()}
    decided = decide(s, "multi-class", ["a", "b", "c"], thresholds)
    assert decided[0] == ";".join(n for k, n in enumerate("abc") if s[0, k] >= thresholds[n])
    assert decide(np.array([[0.3, 0.7], [0.8, 0.2]]), "binary", ["nv", "mel"], {"mel": 0.5}) == ["mel", "nv"]


# --- calibration ------------------------------------------------------------------------------------


def test_ece_and_brier_against_sklearn_and_repeated_rows():
    from sklearn.calibration import calibration_curve

    y, s = binary_scores(300, 3)
    mean_conf, observed, count, ece = reliability(y, s, "binary")
    sk_observed, sk_mean = calibration_curve(y, s[:, 1], n_bins=10, strategy="uniform")
    np.testing.assert_allclose(observed[count > 0], sk_observed)
    np.testing.assert_allclose(mean_conf[count > 0], sk_mean)
    assert ece == pytest.approx(np.sum(count / count.sum() * np.abs(sk_observed - sk_mean)[np.cumsum(count > 0)[count > 0] - 1]))
    assert brier_score(y, s, "binary") == pytest.approx(brier_score_loss(y, s[:, 1]))
    weights = bootstrap_weights(len(y), 5, 1)
    for w, resampled in zip(weights, ece_resampled(y, s, "binary", weights)):
        rows = np.repeat(np.arange(len(y)), w.astype(int))
        assert resampled == pytest.approx(reliability(y[rows], s[rows], "binary")[3])
    y3, s3 = multiclass_scores(200, 4, 4)
    onehot = np.eye(4)[y3]
    assert brier_score(y3, s3, "multi-class") == pytest.approx(np.mean(((s3 - onehot) ** 2).sum(axis=1)))
    assert brier_score(y3, s3, "multi-class") == pytest.approx(brier_score_loss(y3, s3, labels=range(4)))
    assert reliability(y3, s3, "multi-class")[3] == pytest.approx(
        np.sum([abs(((s3.argmax(1) == y3)[m]).mean() - s3.max(1)[m].mean()) * m.mean()
                for m in [(s3.max(1) > lo) & (s3.max(1) <= lo + 0.1) for lo in np.arange(10) / 10] if m.any()]))


def test_platt_matches_sklearns_sigmoid_calibration_and_keeps_the_auc():
    y, s = binary_scores(300, 5, shift=0.8)
    s = np.stack([1 - s[:, 1] ** 3, s[:, 1] ** 3], axis=1)  # badly calibrated, same ranking
    platt = Calibrator.fit("platt", y, s, "binary")
    logit = np.log(s[:, 1] / (1 - s[:, 1]))
    a, b = _sigmoid_calibration(logit, y)  # sklearn: p = 1 / (1 + exp(a f + b))
    assert platt.params["a"] == pytest.approx(-a, rel=1e-3) and platt.params["b"] == pytest.approx(-b, rel=1e-3, abs=1e-4)
    y_test, s_test = binary_scores(500, 6, shift=0.8)
    s_test = np.stack([1 - s_test[:, 1] ** 3, s_test[:, 1] ** 3], axis=1)
    after = platt.apply(s_test)
    assert roc_auc_score(y_test, after[:, 1]) == roc_auc_score(y_test, s_test[:, 1])
    report = calibration_report(y_test, s_test, "binary", platt, n_boot=100)
    assert report["after"]["ece"] < report["before"]["ece"] and report["after"]["auc"] == report["before"]["auc"]
    assert report["after"]["ece_ci"][0] <= report["after"]["ece"] <= report["after"]["ece_ci"][1]


def test_isotonic_is_sklearns_and_may_tie():
    y, s = binary_scores(200, 7)
    iso = Calibrator.fit("isotonic", y, s, "binary")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s[:, 1], y)
    y_test, s_test = binary_scores(300, 8)
    np.testing.assert_allclose(iso.apply(s_test)[:, 1], reference.predict(s_test[:, 1]))
    report = calibration_report(y_test, s_test, "binary", iso, n_boot=50)
    assert any("isotonic" in note and "ties" in note for note in report["notes"])


def test_temperature_minimises_val_nll_keeps_argmax_and_binary_auc():
    y, s = multiclass_scores(400, 5, 9)
    sharp = np.exp(3 * np.log(s))
    sharp /= sharp.sum(axis=1, keepdims=True)  # over-confident
    temp = Calibrator.fit("temperature", y, sharp, "multi-class")
    t = temp.params["temperature"]

    def nll(value):
        return -log_softmax(np.log(sharp) / value, axis=1)[np.arange(len(y)), y].mean()

    grid = np.linspace(0.5, 6.0, 5501)  # an independent search: the grid point with the lowest val NLL
    assert t > 1 and t == pytest.approx(grid[np.argmin([nll(g) for g in grid])], abs=2e-3)
    assert nll(t) <= min(nll(t * 1.02), nll(t / 1.02), nll(1.0))
    assert (temp.apply(sharp).argmax(axis=1) == sharp.argmax(axis=1)).all()
    yb, sb = binary_scores(300, 10)
    tb = Calibrator.fit("temperature", yb, sb, "binary")
    assert roc_auc_score(yb, tb.apply(sb)[:, 1]) == roc_auc_score(yb, sb[:, 1])


def test_calibrators_refuse_what_does_not_apply():
    assert resolve_method("auto", "binary") == "platt" and resolve_method("auto", "ordinal") == "temperature"
    assert resolve_method("auto", "multi-label") == "none"
    with pytest.raises(CalibrationError, match="binary"):
        resolve_method("isotonic", "multi-class")
    with pytest.raises(CalibrationError, match="not one of"):
        resolve_method("plat", "binary")
    with pytest.raises(CalibrationError, match="non-decreasing"):
        Calibrator.restore("isotonic", {}, {"x": np.array([0.2, 0.1]), "y": np.array([0.0, 1.0])}, "binary")
    with pytest.raises(CalibrationError, match="positive"):
        Calibrator.restore("temperature", {"temperature": -1.0}, {}, "multi-class")


# --- subgroups --------------------------------------------------------------------------------------


def test_age_bands_default_custom_and_missing():
    assert band_labels((0, 40, 60, 80)) == ["0-39", "40-59", "60-79", "80+"]
    values = ["45", "45.0", "39.9", "80", "", "unknown", "7"]
    assert age_band(values, (0, 40, 60, 80)).tolist() == ["40-59", "40-59", "0-39", "80+", "missing", "unknown", "0-39"]
    assert age_band(["5", "25"], (10, 20)).tolist() == ["under 10", "20+"]
    assert SubgroupOptions(age_bands="0,50").age_bands == (0.0, 50.0)
    with pytest.raises(SubgroupError, match="increasing"):
        SubgroupOptions(age_bands="50,10")


def test_subgroup_table_flags_small_groups_and_reports_the_gap():
    y, s = binary_scores(600, 11)
    groups = np.array(["female"] * 280 + ["male"] * 300 + ["unknown"] * 20)
    s[280:580, 1] = np.clip(s[280:580, 1] + np.random.default_rng(0).normal(0, 0.3, 300), 0, 1)  # noisier scores for males
    chosen = choose_thresholds(y, s, "binary", ["neg", "pos"], [Rule("youden")])
    table = subgroup_table(y, s, "binary", ["neg", "pos"], groups, chosen, n_boot=200)
    by_name = {g["group"]: g for g in table["groups"]}
    assert list(by_name) == ["female", "male", "unknown"]
    for name, rows in (("female", slice(0, 280)), ("male", slice(280, 580))):
        assert by_name[name]["auc"] == pytest.approx(roc_auc_score(y[rows], s[rows, 1]))
        assert by_name[name]["per_class"]["pos"] == y[rows].sum() and by_name[name]["flag"] is None
        at = by_name[name]["operating_points"]["youden"]["pos"]
        predicted = s[rows, 1] >= chosen["youden"]["pos"]["threshold"]
        assert at["sensitivity"] == pytest.approx(predicted[y[rows] == 1].mean())
    assert by_name["unknown"]["flag"] and "auc" not in by_name["unknown"]  # 20 images: counted, not scored
    gap = table["largest_auc_gap"]
    assert (gap["high"], gap["low"]) == ("female", "male")
    assert gap["gap"] == pytest.approx(by_name["female"]["auc"] - by_name["male"]["auc"]) and gap["gap_ci"][0] < gap["gap"] < gap["gap_ci"][1]


# --- decisions: fitted on val, scored on test, saved and restored -------------------------------------


def test_decisions_round_trip_through_json_and_arrays():
    y, s = binary_scores(300, 12)
    options = StudyOptions(("youden", "sensitivity=0.9"), calibrate="isotonic")
    decisions = fit_decisions(y, s, "binary", ["neg", "pos"], options)
    record, arrays = decisions.to_saved()
    restored = Decisions.from_saved(json.loads(json.dumps(record)), arrays, "binary", ["neg", "pos"])
    np.testing.assert_array_equal(restored.apply(s), decisions.apply(s))
    assert restored.thresholds == json.loads(json.dumps(decisions.thresholds))
    yt, st = binary_scores(300, 13)
    scored = score_decisions(yt, st, "binary", ["neg", "pos"], restored, options=options, n_boot=50)
    assert set(scored) == {"operating_points", "calibration"} and scored["calibration"]["method"] == "isotonic"
    assert scored["operating_points"]["on"] == "isotonic-calibrated probabilities"
    with pytest.raises(CalibrationError, match="not among"):
        Decisions.from_saved({"thresholds": {"youden": {"cat": {"threshold": 0.5}}}}, {}, "binary", ["neg", "pos"])


def test_a_val_split_with_one_class_calibrates_nothing_and_says_so():
    decisions = fit_decisions(np.zeros(10, int), np.full((10, 2), 0.5), "binary", ["neg", "pos"], StudyOptions(calibrate="platt"))
    assert decisions.calibrator is None and "single class" in decisions.notes[0]
    assert decisions.thresholds["youden"]["pos"]["threshold"] is None


def test_study_cis_use_the_very_resamples_of_the_auc_ci():
    from medprobe.evaluation.metrics import bootstrap_ci
    from medprobe.evaluation.subgroups import resampled_auc

    y, s = binary_scores(11_000, 14)  # 11 million counts: drawn in two blocks, as bootstrap_ci draws them
    weights = bootstrap_weights(len(y), 1000, 3)
    tail = np.percentile(resampled_auc(y, s, "binary", weights), [2.5, 97.5])
    assert bootstrap_ci(y, s, "binary", 1000, 3)["auc_ci"] == pytest.approx(tail.tolist(), abs=1e-6)
