"""`medprobe run --seeds N`: the random parts redone per seed, embeddings computed once, and the spread labelled."""

import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import QUICK, store_vectors, write_npz
from medprobe.data.datasets import DataSpec
from medprobe.embedding.options import EmbedOptions
from medprobe.probes.spec import ProbeSpec
from medprobe.reporting.repeats import SPREAD_METRICS
from medprobe.workflows.run import EvalOptions, run


@pytest.fixture(scope="module")
def retina_without_val(tmp_path_factory, shared_data):
    """Real RetinaMNIST images, a third of train and a quarter of test, and no val split: medprobe draws val per seed."""
    root = tmp_path_factory.mktemp("repeats")
    source = np.load(shared_data / "medmnist" / "retinamnist.npz")
    arrays = {f"{split}_{kind}": source[f"{split}_{kind}"][::step] for split, step in (("train", 3), ("test", 4))
              for kind in ("images", "labels")}
    np.savez(root / "retina_small.npz", **arrays)
    return root


def test_seeds_redraw_the_made_val_split_and_embed_once(retina_without_val, medprobe, tmp_path):
    root = retina_without_val
    cache = root / "cache"
    done = medprobe("run", "--dataset", root / "retina_small.npz", "--seeds", "3", "--out", tmp_path / "out", "--cache-dir", cache,
                    "--quiet", "--n-boot", "100", *QUICK)
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    repeats = saved["repeats"]
    assert repeats["seeds"] == [0, 1, 2] and repeats["distinct"]["val_sets"] == 3 and repeats["distinct"]["test_sets"] == 1
    assert repeats["spread_is"] == "method variance (train/val drawn anew)"
    assert "repeated with 3 seeds (0-2)" in done.stdout and "test AUC" in done.stdout and repeats["explanation"] in done.stdout
    # The spread is the plain statistics of the per-seed values.
    for metric in SPREAD_METRICS:
        values = [s["test"][metric] for s in repeats["per_seed"]]
        assert repeats["test"][metric]["mean"] == pytest.approx(np.mean(values))
        assert repeats["test"][metric]["sd"] == pytest.approx(np.std(values, ddof=1))
        assert (repeats["test"][metric]["min"], repeats["test"][metric]["max"]) == (min(values), max(values))
    assert repeats["test"]["auc"]["sd"] > 0
    # The folder is the first seed's run; each other seed is exactly a run with that split seed and probe seed.
    assert saved["metrics"]["test"]["auc"] == repeats["per_seed"][0]["test"]["auc"] and saved["seed"] == 0
    spec, options = DataSpec(str(root / "retina_small.npz")), EmbedOptions("efficientnet_lite0", cache_dir=str(cache), progress=False)
    second = run(replace(spec, split_seed=1), options, ProbeSpec(seed=1, selection="val"), EvalOptions(n_boot=100))
    assert second.metrics["test"]["auc"] == repeats["per_seed"][1]["test"]["auc"] and second.cache["hit"]
    # 460 images (360 train + 100 test), each embedded once over the three seeds and the extra run.
    assert len(store_vectors(cache)) == 460


def test_given_splits_and_logreg_have_no_spread_and_say_so(tmp_path, medprobe):
    write_npz(tmp_path / "tiny.npz", n_train=30, n_val=9, n_test=12, classes=3)
    done = medprobe("run", "--dataset", tmp_path / "tiny.npz", "--seeds", "2", "--out", tmp_path / "out", "--quiet", "--n-boot", "50", *QUICK)
    assert done.returncode == 0, done.stderr
    repeats = json.loads((tmp_path / "out" / "results.json").read_text())["repeats"]
    assert repeats["spread_is"] == "none" and repeats["test"]["auc"]["sd"] == 0
    assert "no spread" in (tmp_path / "out" / "summary.md").read_text()


def test_one_seed_is_refused(tmp_path, medprobe):
    write_npz(tmp_path / "tiny.npz")
    done = medprobe("run", "--dataset", tmp_path / "tiny.npz", "--seeds", "1", "--out", tmp_path / "out")
    assert done.returncode == 2 and "--seeds must be at least 2" in done.stderr


def test_report_shows_the_repeats_in_a_browser(tmp_path, medprobe):
    import subprocess

    from test_report import CHROMIUM_FLAGS, _chromium

    write_npz(tmp_path / "tiny.npz", n_train=30, n_val=9, n_test=12, classes=3)
    assert medprobe("run", "--dataset", tmp_path / "tiny.npz", "--probe", "svm", "--seeds", "2", "--out", tmp_path / "out", "--quiet",
                    "--n-boot", "50", *QUICK).returncode == 0
    assert medprobe("report", tmp_path / "out").returncode == 0
    dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (tmp_path / "out" / "report.html").resolve().as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    assert "<h2>Repeated runs</h2>" in dom and "Seeds 0, 1: the spread is" in dom and "test auc" in dom
