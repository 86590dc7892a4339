"""Data-efficiency curves: k labelled images per class, several seeds, from cached embeddings."""

import json

import numpy as np
import pytest

from conftest import QUICK, write_npz
from medprobe.cli import main
from medprobe.core.errors import MedprobeError
from medprobe.data.datasets import DataSpec
from medprobe.embedding.options import EmbedOptions
from medprobe.workflows.curve import parse_shots, run_curve, sample_per_class


def test_parse_shots():
    assert parse_shots("1,2, 5,all") == [1, 2, 5, "all"]
    assert parse_shots([1, "ALL"]) == [1, "all"]
    for bad in ("0", "two", "1,-3"):
        with pytest.raises(MedprobeError, match="positive integers or 'all'"):
            parse_shots(bad)


def test_sample_per_class_takes_k_of_each_class_or_all_of_a_small_one():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    rows = np.arange(20)
    picked = sample_per_class(labels, rows, 5, np.random.default_rng(0))
    assert np.bincount(labels[picked]).tolist() == [5, 3, 5]
    again = sample_per_class(labels, rows, 5, np.random.default_rng(0))
    other = sample_per_class(labels, rows, 5, np.random.default_rng(1))
    assert picked.tolist() == again.tolist() and picked.tolist() != other.tolist()


def test_multilabel_sampling_pools_rows_with_each_label():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [1, 0]])
    picked = sample_per_class(labels, np.arange(5), 1, np.random.default_rng(0))
    assert labels[picked].sum(axis=0).min() >= 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny npz and one embedding cache for the module, so the encoder runs once."""
    root = tmp_path_factory.mktemp("curve")
    write_npz(root / "tiny.npz", n_train=30, n_val=9, n_test=12, classes=3)
    return {"npz": root / "tiny.npz", "cache": str(root / "cache")}


def test_curve_from_cached_embeddings_costs_only_probe_fits(tmp_path, tiny, monkeypatch):
    data, options = DataSpec(tiny["npz"]), EmbedOptions("efficientnet_lite0", cache_dir=tiny["cache"], progress=False)
    first = run_curve(data, options, shots="1,2,5,all", seeds=[0, 1, 2], out=tmp_path / "c", selection="val")
    assert [p["shots"] for p in first.points] == ["1", "2", "5", "all"]
    one, every = first.points[0], first.points[-1]
    assert one["n_seeds"] == 3 and one["n_train_mean"] == 3 and every["n_seeds"] == 1 and every["n_train_mean"] == 30
    assert one["auc_min"] <= one["auc_mean"] <= one["auc_max"] and one["auc_std"] >= 0
    assert (tmp_path / "c" / "curve.csv").read_text().startswith("shots,n_seeds,n_train_mean,auc_mean")

    # Same spec again: read back, nothing embedded or fitted, nothing rewritten.
    import medprobe.workflows.curve as curve_module

    def refuse(*args, **kwargs):
        raise AssertionError("a curve already in the folder must be read back, not recomputed")

    written = (tmp_path / "c" / "curve.json").stat().st_mtime_ns
    with monkeypatch.context() as patched:
        for name in ("embed", "fit_probe", "create_encoder"):
            patched.setattr(curve_module, name, refuse)
        assert run_curve(data, options, shots="1,2,5,all", seeds=[0, 1, 2], out=tmp_path / "c", selection="val") == first
    assert (tmp_path / "c" / "curve.json").stat().st_mtime_ns == written
    # A new spec: embeddings come from the cache.
    second = run_curve(data, options, shots="1,all", seeds=[4], out=tmp_path / "c", selection="val")
    assert second.cache["hit"] and json.loads((tmp_path / "c" / "curve.json").read_text())["spec"]["seeds"] == [4]


def test_points_a_probe_cannot_fit_are_skipped_not_fatal(tiny):
    curve = run_curve(DataSpec(tiny["npz"]), EmbedOptions("efficientnet_lite0", cache_dir=tiny["cache"], progress=False), probe="svm", shots="1,all",
                      seeds=[0], selection="val")
    assert any("error" in r for r in curve.runs if r["shots"] == "1")  # 3-fold calibration needs 3 per class
    assert [p["shots"] for p in curve.points] == ["all"]


def test_cli_curve(tmp_path, tiny, capsys):
    assert main(["curve", "--dataset", str(tiny["npz"]), "--shots", "1,all", "--seeds", "0,1", "--quiet",
                 "--cache-dir", tiny["cache"], "--out", str(tmp_path / "c"), *QUICK]) == 0
    assert "AUC mean" in capsys.readouterr().out
    assert main(["curve", "--dataset", str(tiny["npz"]), "--seeds", "a", "--out", str(tmp_path / "c")]) == 2
