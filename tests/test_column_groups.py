"""`--column-groups choose`: the selection chooses among the recipe's column groups, and the probe on the chosen subset
is saved at full width (zero weight elsewhere), so the run, the saved model and `predict` give the same scores."""

import csv
import json

import numpy as np
import pytest

from conftest import copy_ham
from medprobe.cli import main
from medprobe.core.errors import ProbeError
from medprobe.probes.columns import candidates_for, choose_columns, columns_of, widened
from medprobe.probes.fit import fit_probe, make_probe
from medprobe.probes.spec import ProbeSpec

GROUPS = [("avg_stage1", 3), ("avg_head", 5), ("max_stage1", 3), ("max_head", 5)]


def test_candidates_name_the_groups_they_keep():
    assert list(columns_of(GROUPS, "avg")) == list(range(8)) and list(columns_of(GROUPS, "max")) == list(range(8, 16))
    assert list(columns_of(GROUPS, "heads")) == [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]
    assert list(columns_of(GROUPS, "avg_head")) == [3, 4, 5, 6, 7]
    multi_scale = [("x1_avg_head", 2), ("x1.5_avg_head", 2), ("x1_max_head", 2), ("x1.5_max_head", 2)]
    assert list(columns_of(multi_scale, "avg")) == [0, 1, 2, 3]
    assert list(candidates_for([("embedding", 10)])) == ["all"]  # one group: nothing to choose


def test_a_widened_probe_scores_full_rows_as_the_subset_probe_scores_its_columns():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 16)), rng.integers(0, 3, 80)
    columns = columns_of(GROUPS, "heads")
    subset = make_probe("logreg", "multi-class", C=0.3).fit(X[:, columns], y)
    expected = subset.predict_proba(X[:, columns])
    full = widened(subset, columns, 16)
    np.testing.assert_allclose(full.predict_proba(X), expected, rtol=0, atol=1e-12)
    assert full.named_steps["clf"].coef_.shape == (3, 16) and not full.named_steps["clf"].coef_[:, [0, 1, 2, 8, 9, 10]].any()


def test_the_choice_is_the_best_selection_score_and_is_recorded():
    """The label lives in the max_head columns only: CV must pick a set holding them, and the record lists every score."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 16))
    y = (X[:, 11] + X[:, 12] + 0.5 * rng.normal(size=300) > 0).astype(int)

    def fit(columns):
        return fit_probe("logreg", X[:200][:, columns], y[:200], X[200:][:, columns], y[200:], "binary", selection="cv")

    chosen = choose_columns(fit, GROUPS, 16)
    choice = chosen.selection.column_choice
    assert set(choice["scores"]) == {"all", "avg", "max", "heads", "avg_head"} and choice["of"] == 16
    assert choice["chosen"] == max(choice["scores"], key=choice["scores"].get) and choice["chosen"] in ("max", "heads")
    assert choice["scores"]["avg"] < 0.6 < choice["scores"][choice["chosen"]]
    assert chosen.predict_scores(X).shape == (300, 2)


def test_choose_is_refused_for_a_probe_that_is_not_linear():
    with pytest.raises(ProbeError, match="needs a linear probe"):
        ProbeSpec("knn", column_groups="choose").check()
    with pytest.raises(ProbeError, match="unknown --column-groups"):
        ProbeSpec(column_groups="some").check()


@pytest.mark.slow
def test_run_and_saved_model_agree_under_column_choice(tmp_path, medprobe):
    """Real HAM10000 JPEGs, a two-group recipe (stages at 224 px): the run records the choice, and the model saved by
    `fit` with the same flags predicts the run's test probabilities."""
    data = tmp_path / "ham"
    copy_ham(data / "train", "train", per_class=12)
    copy_ham(data / "val", "train", per_class=6, skip=12)
    copy_ham(data / "test", "test", per_class=6)
    flags = ["--encoder", "efficientnet_lite0@stages,max", "--selection", "val", "--column-groups", "choose", "--cache-dir", tmp_path / "cache",
             "--n-boot", "200", "--quiet"]
    done = medprobe("run", "--dataset", data, "--out", tmp_path / "run", *flags)
    assert done.returncode == 0, done.stderr
    assert "column groups: " in done.stdout and "chosen by the same score" in done.stdout
    choice = json.loads((tmp_path / "run" / "results.json").read_text())["probe"]["selection"]["column_choice"]
    assert set(choice["scores"]) == {"all", "avg", "max", "heads", "avg_head"} and choice["of"] == 2 * (1280 + 16 + 24 + 40 + 80 + 112 + 192 + 320)
    assert medprobe("fit", "--dataset", data, "--save", tmp_path / "model", *flags).returncode == 0
    assert main(["predict", str(tmp_path / "model"), str(data / "test"), "--out", str(tmp_path / "p.csv"), "--cache-dir", str(tmp_path / "cache"),
                 "--quiet"]) == 0
    with open(tmp_path / "run" / "predictions.csv", newline="") as f:
        run_rows = {r["id"]: r for r in csv.DictReader(f)}  # the test split's rows
    with open(tmp_path / "p.csv", newline="") as f:
        predicted = list(csv.DictReader(f))
    assert len(predicted) == len(run_rows) == 12
    for row in predicted:
        mine = next(r for i, r in run_rows.items() if row["path"].endswith(i))
        assert abs(float(row["p_mel"]) - float(mine["score_mel"])) < 1e-6
