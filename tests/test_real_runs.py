"""The issue's promises on real data with real pretrained weights. Slow, and run in CI on purpose."""

import json

import numpy as np
import pytest

from medprobe.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def _run(real_store):
    def run(tmp_path, dataset, *extra):
        out = tmp_path / "out"
        # MedMNIST's selection rule: seconds per fit, and the numbers medprobe has always reported
        assert main(["run", "--dataset", str(dataset), "--encoder", "efficientnet_lite0", "--probe", "logreg", "--out", str(out),
                     "--quiet", "--cache-dir", str(real_store), "--selection", "val", *extra]) == 0
        return json.loads((out / "results.json").read_text())

    return run


def test_retinamnist_reaches_the_benchmark_auc_and_then_hits_the_cache(tmp_path, shared_data, _run):
    first = _run(tmp_path, "retinamnist", "--data-dir", str(shared_data / "medmnist"))
    test = first["metrics"]["test"]
    assert test["auc"] >= 0.72, test  # ResNet-18 (28) trained 100 epochs: 0.717
    # --selection val reproduces the figure quoted before cv selection and recipes existed (docs/history.md: 0.725 [0.685, 0.763])
    assert round(test["auc"], 3) == 0.725 and first["probe"]["params"]["C"] == 1e-4
    assert first["probe"]["selection"]["protocol"] == "val" and first["probe"]["selection"]["fit_on"] == "train"
    assert test["auc_ci"][0] < test["auc"] < test["auc_ci"][1]
    assert first["dataset"]["task"] == "ordinal" and first["dataset"]["n"] == {"train": 1080, "val": 120, "test": 400}
    second = _run(tmp_path, "retinamnist", "--data-dir", str(shared_data / "medmnist"))
    assert second["cache"]["hit"] and second["cache"]["key"] == first["cache"]["key"]
    assert second["metrics"]["test"]["auc"] == test["auc"]


def test_real_dermoscopy_folder(tmp_path, shared_data, _run):
    result = _run(tmp_path, shared_data / "ham10000_melnv")
    assert result["dataset"]["label_names"] == ["mel", "nv"]
    assert result["metrics"]["test"]["auc"] > 0.75


def test_real_npz_with_1d_labels(tmp_path, shared_data, _run):
    # Every third train image (809) and every other test image (234): the real images and labels, a third of the embedding cost.
    source = np.load(shared_data / "medmnist" / "pneumoniamnist_balanced.npz")
    step = {"train": 3, "val": 1, "test": 2}
    flat = {k: (source[k].reshape(-1) if k.endswith("_labels") else source[k])[:: step[k.split("_")[0]]] for k in source.files}
    np.savez(tmp_path / "pneumonia_1d.npz", **flat)
    result = _run(tmp_path, tmp_path / "pneumonia_1d.npz")
    assert result["dataset"]["task"] == "binary"
    assert result["metrics"]["test"]["auc"] > 0.85
