"""The bench's paired comparisons (each cell against its dataset's best cell and the trained baseline) and its spread
across seeds, in table.md, table.csv and the HTML report (rendered in headless Chromium)."""

import csv
import json
import subprocess

import numpy as np
import pytest

from conftest import write_npz
from medprobe.data.datasets import DataSpec
from medprobe.embedding.options import EmbedOptions
from medprobe.reporting.compare import compare_folders
from medprobe.reporting.tables import build_table, load_bench, seed_spread_rows
from medprobe.workflows.bench import load_config, run_bench
from test_report import CHROMIUM_FLAGS, _chromium

CONFIG = """
name: paired_grid
datasets:
  - dataset: noisy.npz
encoders: [efficientnet_lite0]
probes: [logreg, knn]
seeds: 2
selections: [val]
n_boot: 200
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """2 probes x 2 seeds on a tiny noisy npz (AUCs below 1), with a 1-epoch baseline."""
    from medprobe.workflows.baseline import TrainingConfig, train_baseline

    root = tmp_path_factory.mktemp("bench_paired")
    write_npz(root / "noisy.npz", n_train=30, n_val=9, n_test=24, classes=3)
    arrays, rng = dict(np.load(root / "noisy.npz")), np.random.default_rng(0)
    for split in ("train", "val", "test"):
        labels = arrays[f"{split}_labels"].reshape(-1, 1, 1, 1).astype(int)
        arrays[f"{split}_images"] = np.clip(labels * 30 + rng.integers(0, 180, arrays[f"{split}_images"].shape), 0, 255).astype(np.uint8)
    np.savez(root / "noisy.npz", **arrays)
    (root / "grid.yaml").write_text(CONFIG)
    out = root / "out"
    train_baseline(DataSpec(str(root / "noisy.npz")), TrainingConfig(epochs=1), out=out / "baselines" / "noisy", n_boot=50, progress=False)
    manifest = run_bench(load_config(root / "grid.yaml"), out, options=EmbedOptions(cache_dir=str(root / "cache"), progress=False))
    return out, manifest


def test_each_cell_is_paired_with_the_best_cell_and_the_baseline(bench):
    out, manifest = bench
    assert [c["seed"] for c in manifest["cells"]] == [0, 1, 0, 1]  # `seeds: 2` is seeds 0 and 1
    assert json.loads((out / "cells/noisy/efficientnet_lite0/knn/seed-1/cell.json").read_text())["split_seed"] == 1
    rows = [r for r in build_table(out) if r["kind"] == "probe" and r["seed"] == 0]
    best = max(rows, key=lambda r: r["auc"])
    other = next(r for r in rows if r is not best)
    assert best["delta_auc_best"] == 0 and other["best_method"] == best["method"]
    expected = compare_folders(out / other["path"], out / best["path"], n_boot=200)
    assert other["delta_auc_best"] == pytest.approx(expected["difference"]) and other["p_best"] == pytest.approx(expected["delong"]["p"])
    assert [other["delta_auc_best_lo"], other["delta_auc_best_hi"]] == pytest.approx(expected["difference_ci"])
    to_baseline = compare_folders(out / other["path"], out / "baselines" / "noisy", n_boot=200)
    assert other["p_baseline"] == pytest.approx(to_baseline["delong"]["p"])
    assert other["delta_auc_baseline"] == pytest.approx(to_baseline["difference"])

    markdown = (out / "table.md").read_text()
    assert "ΔAUC vs best [paired CI], DeLong p" in markdown and "| best |" in markdown
    assert f"{other['delta_auc_best']:+.3f} [{other['delta_auc_best_lo']:+.3f}, {other['delta_auc_best_hi']:+.3f}] p=" in markdown
    with open(out / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {"delta_auc_best", "delta_auc_best_lo", "p_best", "p_baseline", "auc_sd", "spread_is"} <= set(table[0])


def test_the_spread_across_seeds_is_summarised_and_labelled(bench):
    out, _ = bench
    spread = [r for r in build_table(out) if r["kind"] == "seeds"]
    assert [r["method"] for r in spread] == ["efficientnet_lite0 + logreg", "efficientnet_lite0 + knn"]
    cells = [r for r in build_table(out) if r["kind"] == "probe" and r["probe"] == "logreg"]
    assert spread[0]["auc"] == pytest.approx(np.mean([r["auc"] for r in cells]))
    # The npz has its own splits and these probes do not use the seed: no spread, and the table says so.
    assert spread[0]["spread_is"] == "none" and spread[0]["auc_sd"] == 0
    assert "Across seeds" in (out / "table.md").read_text()


def test_two_selections_of_one_cell_are_two_methods_not_two_seeds(bench):
    # A grid with `selections: [val, cv]` and one seed has two cells per (encoder, probe): they must not be summarised
    # as a spread across seeds.
    out, _ = bench
    _, cells, _ = load_bench(out)
    logreg = [c for c in cells if c["probe"] == "logreg"]
    as_cv = [{**c, "selection": "cv"} for c in logreg if c["seed"] == 0]
    one_seed_each = [c for c in logreg if c["seed"] == 0] + as_cv
    assert seed_spread_rows(one_seed_each, {}) == []
    rows = seed_spread_rows(logreg + [{**c, "selection": "cv"} for c in logreg], {})
    assert [(r["selection"], r["n_seeds"]) for r in rows] == [("val", 2), ("cv", 2)]
    assert rows[1]["method"] == "efficientnet_lite0 + logreg (cv selection)"


def test_report_shows_the_comparisons_in_a_browser(bench, tmp_path):
    out, manifest = bench
    report = out / "report.html"
    assert manifest["report"] == str(report)
    dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.resolve().as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert "<h2>Paired comparisons</h2>" in dom and "ΔAUC vs best [paired 95 % CI]" in dom and "DeLong p" in dom
    assert "ΔAUC vs trained here [paired 95 % CI]" in dom and "the spread is" in dom
