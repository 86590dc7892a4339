"""Each option reaches the code that uses it, and is checked before any work: the bugs the redesign fixed.

Every test here failed before the redesign (options copied by hand through four layers, CLI code
inside library modules, two threshold rules, two slug rules).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import QUICK, write_image_folder, write_npz
from medprobe import __version__
from medprobe.cli import main
from medprobe.data.datasets import load_dataset
from medprobe.embedding.fusion import embed_spec
from medprobe.embedding.options import EmbedOptions
from medprobe.evaluation.metrics import medmnist_acc
from medprobe.workflows.predict import predicted_labels


def run_main(*args):
    return main([str(a) for a in args])


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medprobe.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def tiny(tmp_path):
    return write_npz(tmp_path / "tiny.npz", n_train=24, n_val=8, n_test=12, classes=2)


def test_fit_uses_runtime_and_device(tmp_path, tiny, capsys, medprobe):
    # Before: `fit` parsed --runtime/--device and dropped them (it always ran `auto` on the CPU).
    assert run_main("fit", "--dataset", tiny, "--runtime", "torch", "--save", tmp_path / "m", "--out", tmp_path / "o", "--quiet",
                    "--n-boot", "50", *QUICK) == 0
    backends = json.loads((tmp_path / "o" / "results.json").read_text())["encoder"]["backends"]
    assert [b["mode"] for b in backends] == ["torch"] and backends[0]["backend"].startswith("torch eager fp32")
    done = medprobe("fit", "--dataset", tiny, "--device", "cuda:0", "--save", tmp_path / "m2", "--quiet")
    assert done.returncode == 2 and "--device cuda:0 was asked for" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m2").exists()


@pytest.mark.ray
def test_ray_path_keys_the_cache_by_the_runtime(tmp_path, tiny):
    # Before: `embed --ray` dropped --runtime, so a bf16 job on Ray looked up (and wrote) the fp32 entry.
    data = load_dataset(tiny)
    options = EmbedOptions("efficientnet_lite0", runtime="bf16", cache_dir=str(tmp_path / "cache"), progress=False)
    local = embed_spec(data, options).embeddings
    import ray

    from medprobe.embedding.ray import embed_on_ray

    # Every image is in the bf16 store: the workers hash each file, find it there and embed nothing. No Ray runs here (conftest
    # keeps one only for tests that ask for `local_ray`), so embed_on_ray starts its own and shuts it down.
    assert not ray.is_initialized()
    on_ray = embed_on_ray(data, options, address="local")
    assert not ray.is_initialized()
    assert on_ray.from_cache and on_ray.key == local.key
    np.testing.assert_array_equal(on_ray.vectors, local.vectors)
    assert embed_spec(data, EmbedOptions("efficientnet_lite0", cache_dir=str(tmp_path / "cache"), progress=False)).embeddings.key != local.key


def test_curve_takes_the_embedding_flags_and_scans_images(tmp_path, capsys, medprobe):
    # Before: `curve` had no --on-error/--device/--runtime/--batch-size and never pre-scanned the images.
    folder = write_image_folder(tmp_path / "imgs", per_class=12)
    (folder / "a" / "a_3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = ["curve", "--dataset", folder, "--shots", "2,all", "--seeds", "0", "--out", tmp_path / "c", "--quiet", "--batch-size", "8", *QUICK]
    done = medprobe(*args)
    assert done.returncode == 2 and "a_3.png" in done.stderr and "--on-error skip" in done.stderr
    assert run_main(*args, "--on-error", "skip", "--runtime", "torch", "--device", "cpu") == 0
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert curve["dataset"]["n"]["train"] + curve["dataset"]["n"]["val"] + curve["dataset"]["n"]["test"] == 23
    assert curve["spec"]["runtime"] == "torch"


def test_bench_curves_use_the_configs_runtime(tmp_path, tiny):
    # Before: bench cells ran with the config's runtime but its curves with the default one (another cache entry).
    (tmp_path / "grid.yaml").write_text(
        "datasets: [tiny.npz]\nencoders: [efficientnet_lite0]\nprobes: [logreg]\nruntime: bf16\nselections: [val]\nn_boot: 50\n"
        "curve: {shots: [2, all], seeds: [0], selection: val}\n"
    )
    assert run_main("bench", tmp_path / "grid.yaml", "--out", tmp_path / "b", "--quiet", "--no-report") == 0
    cell = json.loads(next((tmp_path / "b" / "cells").rglob("results.json")).read_text())
    curve = json.loads(next((tmp_path / "b" / "curves").rglob("curve.json")).read_text())
    assert cell["encoder"]["runtime"]["precision"] == "bf16"
    assert curve["cache"]["key"] == cell["cache"]["key"] and curve["cache"]["hit"]


def test_probe_and_class_weight_are_checked_before_any_embedding(tmp_path, tiny, medprobe):
    # Before: knn + class_weight failed only after the whole embedding pass.
    done = medprobe("run", "--dataset", tiny, "--probe", "knn", "--class-weight", "balanced", "--out", tmp_path / "o", "--quiet",
               "--cache-dir", tmp_path / "cache")
    assert done.returncode == 2 and "knn probe has no class_weight" in done.stderr
    assert not (tmp_path / "cache").exists()


def test_unknown_probe_points_at_a_command_that_exists(tmp_path, tiny, medprobe):
    done = medprobe("run", "--dataset", tiny, "--probe", "lgreg", "--out", tmp_path / "o")
    assert done.returncode == 2 and "did you mean 'logreg'" in done.stderr and "(run `medprobe probes` to list them)" in done.stderr
    listing = medprobe("probes")
    assert listing.returncode == 0 and all(name in listing.stdout for name in ("logreg", "svm", "knn", "zeroshot"))


@pytest.mark.parametrize("command, where", [("predict", "output CSV"), ("embed", "terminal")])
def test_help_says_where_skipped_files_are_recorded(command, where, medprobe):
    # Before: both said results.json, which neither writes.
    text = " ".join(medprobe(command, "--help").stdout.split())
    assert "results.json" not in text and where in text


def test_version():
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"medprobe {__version__}"


def test_an_npz_dataset_can_be_subset(tmp_path, tiny):
    # Before: ArrayImages had no `subset`, so Dataset.subset raised AttributeError on every npz dataset.
    data = load_dataset(tiny)
    rows = [3, 0, 17, 40]
    part = data.subset(rows, check=False)
    assert list(part.ids) == [data.ids[r] for r in rows]
    for i, row in enumerate(rows):
        assert np.array_equal(np.asarray(part.images.load(i)), np.asarray(data.images.load(row)))
        assert part.images.content(i) == data.images.content(row)
    assert part.subset([2], check=False).images.describe(0) == data.images.describe(17)


def test_run_and_predict_agree_on_a_score_of_exactly_one_half():
    # MedMNIST's evaluator: positive when the score is strictly above 0.5. Before: `predict` said >= 0.5.
    scores = np.array([[0.5, 0.5], [0.25, 0.75], [0.75, 0.25]])
    assert predicted_labels(scores, "binary", ["benign", "malignant"]) == ["benign", "malignant", "benign"]
    assert medmnist_acc(np.array([0, 1, 0]), scores, "binary") == 1.0
    assert predicted_labels(np.array([[0.5, 0.9]]), "multi-label", ["a", "b"]) == ["b"]


def test_report_orders_bench_runs_as_the_config_does(tmp_path):
    # Before: bench named the folder 'b_(v2)' and the report looked for 'b__v2', so the config's order was lost.
    for name in ("zeta", "beta"):
        write_npz(tmp_path / f"{name}.npz", n_train=20, n_val=6, n_test=10, classes=2, seed=len(name))
    (tmp_path / "grid.yaml").write_text(
        "datasets:\n  - {dataset: zeta.npz, name: 'zeta (v2)'}\n  - {dataset: beta.npz, name: beta}\n"
        "encoders: [efficientnet_lite0]\nprobes: [logreg, knn]\nselections: [val]\nn_boot: 50\n"
    )
    assert run_main("bench", tmp_path / "grid.yaml", "--out", tmp_path / "b", "--quiet") == 0
    assert sorted(p.name for p in (tmp_path / "b" / "cells").iterdir()) == ["beta", "zeta_v2"]
    page = (tmp_path / "b" / "report.html").read_text()
    figures = page.index("Per-class ROC")
    assert figures < page.index("<h3>zeta ·", figures) < page.index("<h3>beta ·", figures)
