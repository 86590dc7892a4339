"""Where a run's thresholds and calibrator were fitted is recorded and shown truthfully, under both selections.

`--selection val` fits the probe on train and decides on val's scores; `--selection cv` fits it on train+val, so its
decisions come from the out-of-fold scores over train+val. results.json, the terminal, summary.md, the HTML views and a
saved model's decisions must all say which.
"""

import json

import pytest

from conftest import write_npz
from medprobe.evaluation.study import (
    ON_TRAIN_OUT_OF_FOLD,
    ON_TRAIN_VAL_OUT_OF_FOLD,
    ON_VAL,
    Decisions,
    decisions_fitted_on,
)
from medprobe.probes.saved import MODEL_JSON, load_model
from medprobe.reporting.study import calibration_html, operating_points_html

EXPECTED = {"val": ON_VAL, "cv": ON_TRAIN_VAL_OUT_OF_FOLD}


@pytest.fixture(scope="module")
def binary_npz(tmp_path_factory):
    """A tiny binary npz, and one embedding store its runs share (the images are embedded once for the module)."""
    root = tmp_path_factory.mktemp("provenance")
    return write_npz(root / "tiny.npz", n_train=40, n_val=16, n_test=20, classes=2), root / "cache"


@pytest.mark.parametrize("selection", ["val", "cv"])
def test_thresholds_and_calibrator_say_where_they_were_fitted(tmp_path, medprobe, binary_npz, selection):
    (npz, cache), out, model = binary_npz, tmp_path / "run", tmp_path / "model"
    done = medprobe("fit", "--dataset", npz, "--cache-dir", cache, "--encoder", "efficientnet_lite0", "--selection", selection, "--n-boot", "200",
                    "--calibrate", "platt", "--operating-point", "youden", "--save", model, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    where = EXPECTED[selection]
    results = json.loads((out / "results.json").read_text())
    assert results["probe"]["selection"]["fit_on"] == ("train" if selection == "val" else "train+val")
    test = results["metrics"]["test"]
    assert test["operating_points"]["chosen_on"] == where
    assert test["calibration"]["fitted_on"] == where
    assert f"threshold chosen on {where}," in done.stdout and f"platt fitted on {where}" in done.stdout
    if selection == "cv":
        assert "chosen on val" not in done.stdout and "fitted on val" not in done.stdout
    summary = (out / "summary.md").read_text()
    assert f"the platt calibrator fitted on {where}:" in summary
    for view in (operating_points_html(test), calibration_html(test)):
        assert f"on {where}" in view
    assert json.loads((model / MODEL_JSON).read_text())["decisions"]["fitted_on"] == where
    assert load_model(model).decisions.fitted_on == where


def test_an_external_evaluation_keeps_the_saved_provenance(tmp_path, medprobe, binary_npz):
    (npz, cache), model = binary_npz, tmp_path / "model"
    assert medprobe("fit", "--dataset", npz, "--cache-dir", cache, "--encoder", "efficientnet_lite0", "--n-boot", "200", "--save", model,
                    "--quiet").returncode == 0  # the default selection: cv
    done = medprobe("evaluate", model, "--dataset", npz, "--cache-dir", cache, "--rows", "test", "--n-boot", "200", "--out", tmp_path / "ext", "--quiet")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "ext" / "results.json").read_text())
    assert results["metrics"]["test"]["operating_points"]["chosen_on"] == ON_TRAIN_VAL_OUT_OF_FOLD
    assert ON_TRAIN_VAL_OUT_OF_FOLD in results["external"]["thresholds"]


def test_which_scores_the_decisions_come_from():
    assert decisions_fitted_on("train", None) == ON_VAL
    assert decisions_fitted_on("train+val", object()) == ON_TRAIN_VAL_OUT_OF_FOLD
    assert decisions_fitted_on("train", object()) == ON_TRAIN_OUT_OF_FOLD  # cv without a val split to pool


def test_a_model_saved_before_provenance_was_recorded_does_not_claim_val():
    record, arrays = Decisions(fitted_on=ON_TRAIN_VAL_OUT_OF_FOLD).to_saved()
    del record["fitted_on"]
    restored = Decisions.from_saved(record, arrays, "binary", ["a", "b"])
    assert restored.fitted_on.startswith("not recorded")
    assert restored.fitted_on != ON_VAL
