"""Fusion `a+b`: per-part cache entries, concatenated vectors, the combination recorded; through `run` and `embed`."""

import json
import shutil

import numpy as np
import pytest

from conftest import write_npz
from medprobe.core.errors import EncoderError, UnknownNameError
from medprobe.embedding.fusion import embed_spec, split_spec
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import get_config
from tiny_models import go_offline, write_tiny

FUSED = "clip_vit_b32+dinov2_vits14"


@pytest.fixture(autouse=True)
def offline_models(tmp_path, monkeypatch):
    """Tiny CLIP and DINOv2 in the medprobe models folder; offline, with every cache in tmp_path."""
    go_offline(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion-models")
    for name in split_spec(FUSED):
        write_tiny(get_config(name), root / name)
    return root


@pytest.fixture
def npz(tmp_path, models):
    shutil.copytree(models, tmp_path / "models")
    return write_npz(tmp_path / "tiny.npz", n_train=24, n_val=8, n_test=12, classes=2)


def test_split_spec():
    assert split_spec("a+b") == ["a", "b"] and split_spec("a") == ["a"]
    with pytest.raises(EncoderError, match="empty part"):
        split_spec("a+")
    with pytest.raises(EncoderError, match="twice"):
        split_spec("a+a")


def test_fusion_concatenates_parts_each_from_its_own_cache_entry(npz, tmp_path):
    from medprobe.data.datasets import load_dataset

    data = load_dataset(npz)
    fused = embed_spec(data, EmbedOptions(FUSED, progress=False))
    alone = [embed_spec(data, EmbedOptions(name, progress=False)) for name in split_spec(FUSED)]
    assert all(part.embeddings.from_cache for part in alone)  # the fusion already filled both part entries
    np.testing.assert_array_equal(fused.embeddings.vectors, np.concatenate([a.embeddings.vectors for a in alone], axis=1))
    stores = sorted(p.parent.parent.name for p in (tmp_path / "cache").glob("*/*/_recipe.json"))
    assert stores == sorted(split_spec(FUSED))  # one store per part, none for the fusion
    assert fused.embeddings.path == ", ".join(a.embeddings.path for a in alone)
    # The fused cost is both parts' cost, and reading them alone from the stores gives the same figures.
    assert fused.embeddings.cost["cpu_s"] == pytest.approx(sum(a.embeddings.cost["cpu_s"] for a in alone))
    record = fused.record
    assert record["fusion"]["order"] == split_spec(FUSED) and record["fusion"]["embed_dim"] == fused.embeddings.vectors.shape[1]
    assert [p["cache"]["key"] for p in record["parts"]] == [a.embeddings.key for a in alone]
    assert set(fused.preprocessing) == set(split_spec(FUSED))
    again = embed_spec(data, EmbedOptions(FUSED, progress=False))
    assert again.embeddings.from_cache and again.embeddings.key == fused.embeddings.key


def test_fusion_refuses_one_weights_path(npz):
    from medprobe.data.datasets import load_dataset

    with pytest.raises(EncoderError, match="fusion"):
        embed_spec(load_dataset(npz), EmbedOptions(FUSED, weights="somewhere", progress=False))


def test_run_and_embed_commands_with_a_fusion(npz, tmp_path, capsys):
    from medprobe.cli import main

    assert main(["embed", "--dataset", str(npz), "--encoder", FUSED, "--quiet"]) == 0
    assert "-> 48-d" in capsys.readouterr().out  # 16-d tiny CLIP + 32-d tiny DINOv2
    out = tmp_path / "run"
    assert main(["run", "--dataset", str(npz), "--encoder", FUSED, "--out", str(out), "--quiet", "--n-boot", "50", "--selection", "val"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["encoder"]["name"] == FUSED
    assert [p["name"] for p in results["encoder"]["parts"]] == split_spec(FUSED)
    assert results["encoder"]["fusion"]["dims"] == [16, 32]
    assert 0.0 <= results["metrics"]["test"]["auc"] <= 1.0 and results["cache"]["hit"]


def test_unknown_part_is_reported_before_any_work(npz, tmp_path):
    from medprobe.data.datasets import DataSpec
    from medprobe.workflows.run import run

    with pytest.raises(UnknownNameError, match="unknown encoder 'dinov2_vits41'; did you mean 'dinov2_vits14'"):
        run(DataSpec(str(npz)), EmbedOptions("clip_vit_b32+dinov2_vits41", progress=False))
    assert not (tmp_path / "cache").exists()  # refused before any image was embedded
