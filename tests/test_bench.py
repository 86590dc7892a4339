"""The bench grid: one run folder per cell, resumable, table next to reference rows and a trained baseline.

Uses the real EfficientNet-Lite0 weights on tiny synthetic data: this tests the plumbing, not any AUC claim.
"""

import csv
import json

import pytest

from conftest import write_image_folder, write_npz
from medprobe.cli import main
from medprobe.core.errors import BenchConfigError
from medprobe.data.datasets import DataSpec
from medprobe.embedding.options import EmbedOptions
from medprobe.reporting.tables import build_table, reference_citation, reference_rows
from medprobe.workflows.bench import load_config, resolve_config, run_bench

CONFIG = """
name: tiny_grid
datasets:
  - dataset: tiny.npz
    name: tiny_retina
    reference: retinamnist
    comparable: false
    note: synthetic stand-in
  - dataset: folder
encoders: [efficientnet_lite0]
probes: [logreg, knn]
seeds: [0]
selections: [val]
n_boot: 50
curve:
  shots: [1, 2, all]
  seeds: [0, 1]
  selection: val
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One real grid (2 datasets x 1 encoder x 2 probes) run once for the module, with a 1-epoch baseline."""
    from medprobe.workflows.baseline import TrainingConfig, train_baseline

    root = tmp_path_factory.mktemp("bench")
    write_npz(root / "tiny.npz", n_train=12, n_val=6, n_test=9, classes=3)
    write_image_folder(root / "folder", per_class=8)
    (root / "grid.yaml").write_text(CONFIG)
    cache = root / "cache"
    out = root / "out"
    train_baseline(DataSpec(str(root / "tiny.npz")), TrainingConfig(epochs=1), out=out / "baselines" / "tiny", n_boot=50, progress=False)
    options = EmbedOptions(cache_dir=str(cache), progress=False)
    scanned, scan = [], DataSpec.scan
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DataSpec, "scan", lambda spec, *a, **k: scanned.append(spec.dataset) or scan(spec, *a, **k))
        manifest = run_bench(load_config(root / "grid.yaml"), out, options=options)
    return {"root": root, "out": out, "cache": cache, "options": options, "manifest": manifest, "scanned": scanned}


def test_every_cell_is_a_run_folder_with_the_run_schema(bench):
    manifest = bench["manifest"]
    assert manifest["counts"] == {"ran": 4, "skipped": 0, "failed": 0}
    # each dataset's images are decoded once for its two cells; the curves, which run after the cells, scan on their own
    assert bench["scanned"][:2] == [str(bench["root"] / "tiny.npz"), str(bench["root"] / "folder")], bench["scanned"]
    for cell in manifest["cells"]:
        folder = bench["out"] / cell["path"]
        results = json.loads((folder / "results.json").read_text())
        assert {"dataset", "encoder", "probe", "metrics", "cache", "timings", "seed", "versions"} <= set(results)
        assert results["probe"]["name"] == cell["probe"]
        assert {"embed_cpu_s", "fit_cpu_s", "embed_cost_cpu_s", "embed_s", "fit_s"} <= set(results["timings"])
        for name in ("predictions.csv", "embedding_2d.csv", "summary.md", "cell.json"):
            assert (folder / name).is_file(), name
    # The second probe on a dataset read the store, yet carries the cost of computing the embeddings.
    knn = json.loads((bench["out"] / "cells/tiny_retina/efficientnet_lite0/knn/seed-0/results.json").read_text())
    assert knn["cache"]["hit"] and knn["timings"]["embed_cost_source"] == "the store (measured when computed)"
    assert knn["timings"]["embedded_now"] == 0 and knn["timings"]["embedded_from_store"] == 27
    assert knn["timings"]["embed_cost_cpu_s"] > knn["timings"]["embed_cpu_s"]


def _stamps(folder):
    """mtime of every file under `folder` (cells, curves, cache entries): what a rerun would have rewritten."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_second_invocation_skips_done_cells_and_force_reruns(bench, monkeypatch):
    config = load_config(bench["root"] / "grid.yaml")
    out, options = bench["out"], bench["options"]
    cells, curves, cache = _stamps(out / "cells"), _stamps(out / "curves"), _stamps(bench["cache"])
    assert any(p.name == "results.json" for p in cells) and any(p.name == "curve.json" for p in curves)
    report_before = (out / "report.html").stat().st_mtime_ns
    import medprobe.workflows.bench as bench_module

    def refuse(*args, **kwargs):
        raise AssertionError("a done cell was run again")

    with monkeypatch.context() as patched:
        patched.setattr(bench_module, "run", refuse)  # a rerun of any cell would now fail (and be counted as failed)
        manifest = run_bench(config, out, options=options)
    assert manifest["counts"] == {"ran": 0, "skipped": 4, "failed": 0}
    assert {c["status"] for c in manifest["cells"]} == {"done"}
    # Nothing was recomputed or rewritten: no cell file, no curve file, no cache entry, not the report.
    assert _stamps(out / "cells") == cells and _stamps(out / "curves") == curves and _stamps(bench["cache"]) == cache
    assert (out / "report.html").stat().st_mtime_ns == report_before  # nothing new: the report is kept

    config["n_boot"] = 40  # a changed spec makes the cells stale
    assert run_bench(config, out, options=options, report=False)["counts"]["ran"] == 4
    forced = run_bench(config, out, options=options, report=False, force=True)
    assert forced["counts"]["ran"] == 4


def test_table_has_reference_rows_deltas_baseline_and_compute_ratio(bench):
    out = bench["out"]
    rows = build_table(out)
    tiny = [r for r in rows if r["dataset"] == "tiny_retina"]
    assert {r["kind"] for r in tiny} == {"probe", "baseline", "reference"}
    refs = [r for r in tiny if r["kind"] == "reference"]
    assert len(refs) == 7 and any(r["method"] == "MedMNIST v2 ResNet-18 (28)" and r["auc"] == 0.717 for r in refs)
    probe = next(r for r in tiny if r["kind"] == "probe")
    assert probe["delta_auc_resnet_18_28"] == pytest.approx(probe["auc"] - 0.717)
    assert probe["compute_ratio"] > 0 and "CAPPED" in probe["baseline"]
    assert not any(r["kind"] == "baseline" for r in rows if r["dataset"] == "folder")  # baselines match by dataset

    markdown = (out / "table.md").read_text()
    assert "NOT COMPARABLE" in markdown and "compute ratio" in markdown and "CAPPED" in markdown
    assert "projection, not a measurement" in markdown  # a capped baseline's 100-epoch cost is projected, labelled
    assert "No MedMNIST v2 reference exists for this dataset" in markdown and "Scientific Data 10, 41 (2023)" in markdown
    with open(out / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {"auc", "auc_lo", "auc_hi", "acc", "acc_lo", "acc_hi", "compute_ratio", "delta_auc_google_automl_vision"} <= set(table[0])


def test_bench_writes_report_and_curves(bench):
    out = bench["out"]
    assert (out / "report.html").is_file()
    assert len(bench["manifest"]["curves"]) == 2
    curve = json.loads((out / "curves/tiny_retina/efficientnet_lite0/curve.json").read_text())
    assert [p["shots"] for p in curve["points"]] == ["1", "2", "all"]


def test_cli_bench_runs_and_prints_the_table(bench, capsys):
    assert main(["bench", str(bench["root"] / "grid.yaml"), "--out", str(bench["out"]), "--cache-dir", str(bench["cache"]),
                 "--quiet", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "# Bench: tiny_grid" in printed and "skipped" in printed


def test_reference_table_ships_with_its_citation():
    rows = reference_rows()
    assert len(rows) == 49 and {r["dataset"] for r in rows} >= {"retinamnist", "pneumoniamnist", "chestmnist"}
    retina = {r["method"]: (r["auc"], r["acc"]) for r in rows if r["dataset"] == "retinamnist"}
    assert retina["Google AutoML Vision"] == (0.750, 0.531)
    assert "MedMNIST v2" in reference_citation() and "Yang" in reference_citation()


def test_toml_config_and_relative_paths(tmp_path):
    (tmp_path / "grid.toml").write_text('encoders = ["efficientnet_lite0"]\nprobes = ["svm"]\n'
                                        '[[datasets]]\ndataset = "data/x.npz"\n')
    config = load_config(tmp_path / "grid.toml")
    assert config["datasets"][0]["dataset"] == str((tmp_path / "data/x.npz").resolve())
    assert config["datasets"][0]["name"] == "x" and config["datasets"][0]["reference"] is None
    assert config["seeds"] == [0] and config["name"] == "grid"


def test_medmnist_names_get_their_reference_by_default(tmp_path):
    config = resolve_config({"datasets": ["RetinaMNIST"], "encoders": ["efficientnet_lite0"], "probes": ["logreg"]})
    assert config["datasets"][0]["reference"] == "retinamnist" and config["datasets"][0]["comparable"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"datasets": ["retinamnist"], "encoders": ["efficientnet_lite0"], "probes": ["logreg"], "seed": [1]}, "did you mean 'seeds'"),
        ({"datasets": ["retinamnist"], "encoders": ["efficientnet_lite0"], "probes": ["logrg"]}, "did you mean 'logreg'"),
        ({"datasets": [], "encoders": ["efficientnet_lite0"], "probes": ["logreg"]}, "'datasets' must list"),
        ({"datasets": [{"dataset": "a.npz", "reference": "retina"}], "encoders": ["e"], "probes": ["knn"]}, "retinamnist"),
    ],
)
def test_config_mistakes_are_explained(raw, message):
    with pytest.raises(BenchConfigError, match=message):
        resolve_config(raw)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(BenchConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("datasets: [unclosed\n")
    with pytest.raises(BenchConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_paper_grid_config_resolves():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[1] / "benchmarks" / "paper_grid.yaml")
    names = [d["name"] for d in config["datasets"]]
    assert names == ["retinamnist", "pneumoniamnist_balanced", "ham10000_melnv", "ham10000_melnv_by_lesion"]
    ham, by_lesion = config["datasets"][2:]
    assert ham["data_options"]["group"] == "lesion_id" and by_lesion["data_options"]["resplit"] is True
    assert Path(by_lesion["data_options"]["metadata"]).is_file()
    pneumonia = config["datasets"][1]
    assert pneumonia["reference"] == "pneumoniamnist" and pneumonia["comparable"] is False
    assert config["encoders"] == ["efficientnet_lite0", "efficientnet_lite2"] and config["probes"] == ["logreg", "svm", "knn"]
