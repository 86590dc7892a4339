"""The HTML report: drawn from saved files only, self-contained, and visibly full of plots in a real browser."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import write_npz
from PIL import Image

from medprobe.cli import main
from medprobe.core.errors import MedprobeError
from medprobe.reporting.html import (
    confusion_figure,
    read_predictions,
    reliability,
    reliability_figure,
    roc_figure,
    write_report,
)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real `medprobe run` folder (EfficientNet-Lite0 on a tiny npz) with a curve, plus a 1-epoch baseline folder."""
    from medprobe.workflows.baseline import train_baseline
    from medprobe.workflows.curve import run_curve
    from medprobe.workflows.run import run

    root = tmp_path_factory.mktemp("report")
    write_npz(root / "tiny.npz", n_train=24, n_val=9, n_test=15, classes=3)
    cache = root / "cache"
    run(root / "tiny.npz", "efficientnet_lite0", "logreg", out=root / "run", cache_dir=cache, n_boot=50, progress=False)
    run_curve(root / "tiny.npz", shots="1,2,all", seeds=[0, 1], out=root / "run", cache_dir=cache, progress=False)
    train_baseline(root / "tiny.npz", out=root / "baseline", epochs=1, n_boot=50, progress=False)
    return root


@pytest.fixture(scope="module")
def report(run_folder):
    return write_report(run_folder / "run", baselines=[run_folder / "baseline"])


def test_report_is_self_contained_html_with_every_figure(report):
    text = report.read_text()
    images = re.findall(r"<img [^>]*src=\"([^\"]+)\"", text)
    # ROC, confusion, reliability, embedding map for the run; ROC, confusion, reliability for the baseline; curve; compute.
    assert len(images) == 9
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", text) and "<script" not in text and "<link" not in text
    for needle in ("Summary", "ROC", "Confusion", "Reliability", "Embedding map", "Data efficiency", "Compute", "CAPPED", "fewer CPU seconds"):
        assert needle in text, needle


def test_confusion_and_reliability_are_also_png_files_for_papers(report):
    files = sorted(p.name for p in (report.parent / "figures").glob("*.png"))
    assert len(files) == 4 and sum("confusion" in f for f in files) == 2 and sum("reliability" in f for f in files) == 2
    with Image.open(report.parent / "figures" / files[0]) as image:
        assert image.width >= 900  # 200 dpi


def test_report_never_recomputes(run_folder, tmp_path, monkeypatch):
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError("the report must not embed or fit")

    for module, name in (("medprobe.embed", "embed"), ("medprobe.probes", "fit_probe"), ("medprobe.encoders", "create_encoder")):
        monkeypatch.setattr(importlib.import_module(module), name, refuse)
    assert write_report(run_folder / "run", out=tmp_path / "r.html").is_file()


def test_report_on_a_baseline_folder_alone(run_folder, tmp_path):
    text = write_report(run_folder / "baseline", out=tmp_path / "b.html").read_text()
    assert "ResNet-18 trained from scratch" in text and text.count("<img ") == 4  # ROC, confusion, reliability, compute


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MedprobeError, match="no results.json"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_cli_report(run_folder, tmp_path, capsys):
    assert main(["report", str(run_folder / "run"), "--out", str(tmp_path / "page.html")]) == 0
    assert "page.html" in capsys.readouterr().out and (tmp_path / "figures").is_dir()


def test_predictions_round_trip(run_folder):
    ids, labels, scores = read_predictions(run_folder / "run" / "predictions.csv", ["0", "1", "2"], "multi-class")
    assert len(ids) == 15 and labels.tolist() == [i % 3 for i in range(15)]
    assert np.allclose(scores.sum(axis=1), 1, atol=1e-4)


def test_reliability_bins_and_ece():
    labels = np.array([1, 1, 0, 0])
    scores = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.7, 0.3]])
    mean_conf, observed, count, ece = reliability(labels, scores, "binary")
    assert count.tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 0, 2]
    assert observed[9] == 1.0 and observed[1] == 0.0 and observed[3] == 0.0
    assert ece == pytest.approx((2 * 0.1 + 0.1 + 0.3) / 4)
    _, observed, _, ece = reliability(np.array([0, 2]), np.array([[0.8, 0.1, 0.1], [0.5, 0.2, 0.3]]), "multi-class")
    assert observed[8] == 1.0 and observed[5] == 0.0 and ece == pytest.approx((0.2 + 0.5) / 2)


@pytest.mark.parametrize("task", ["binary", "multi-class", "multi-label"])
def test_figures_draw_for_every_task(task):
    rng = np.random.default_rng(0)
    n, k = 40, 2 if task == "binary" else 3
    if task == "multi-label":
        labels = (rng.random((n, k)) > 0.5).astype(int)
        scores = rng.random((n, k))
    else:
        labels = np.arange(n) % k
        scores = rng.dirichlet(np.ones(k), n)
    names = [f"c{i}" for i in range(k)]
    for fig in (roc_figure(labels, scores, task, names, {}, "t"), confusion_figure(labels, scores, task, names, "t"),
                reliability_figure(labels, scores, task, "t")):
        assert fig.axes


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed to test the report: apt-get update && apt-get install -y chromium")


def test_report_renders_in_headless_chromium_with_visible_plots(report, tmp_path):
    shot = tmp_path / "shot.png"
    command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1200,3000", report.resolve().as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (3000, 1200)
    # The page is not blank, and plots (not just text) fill it: most 200-px bands hold many non-white pixels with
    # strong variation, which text alone on white does not give.
    bands = [pixels[y:y + 200] for y in range(0, 3000, 200)]
    busy = [b for b in bands if (b < 250).mean() > 0.08 and b.std() > 30]
    assert len(busy) >= 6, [round(float((b < 250).mean()), 3) for b in bands]
    # Filled areas of plots (confusion cells, bars) are dark; a text-only page has few such pixels.
    assert (pixels < 120).mean() > 0.01
