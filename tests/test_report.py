"""The HTML report: drawn from saved files only, self-contained, and visibly full of plots in a real browser."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import write_npz
from medprobe.cli import main
from medprobe.core.errors import MedprobeError
from medprobe.data.datasets import DataSpec
from medprobe.embedding.options import EmbedOptions
from medprobe.reporting.figures import N_BINS, confusion_figure, reliability, reliability_figure, roc_figure
from medprobe.reporting.html import write_report
from medprobe.reporting.results import read_predictions

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real `medprobe run` folder (EfficientNet-Lite0 on a tiny npz) with a curve, plus a 1-epoch baseline folder."""
    from medprobe.probes.spec import ProbeSpec
    from medprobe.workflows.baseline import TrainingConfig, train_baseline
    from medprobe.workflows.curve import run_curve
    from medprobe.workflows.run import EvalOptions, run

    root = tmp_path_factory.mktemp("report")
    write_npz(root / "tiny.npz", n_train=24, n_val=9, n_test=15, classes=3)
    data = DataSpec(str(root / "tiny.npz"))
    options = EmbedOptions("efficientnet_lite0", cache_dir=str(root / "cache"), progress=False)
    run(data, options, ProbeSpec("logreg", selection="val"), EvalOptions(n_boot=50), out=root / "run")
    run_curve(data, options, shots="1,2,all", seeds=[0, 1], out=root / "run", selection="val")
    train_baseline(data, TrainingConfig(epochs=1), out=root / "baseline", n_boot=50, progress=False)
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

    for module, name in (("medprobe.embedding.embed", "embed"), ("medprobe.probes.fit", "fit_probe"), ("medprobe.encoders", "create_encoder")):
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


def test_predictions_keep_every_digit(tmp_path):
    # An overfitted model's scores crowd next to 1: written to 6 digits they tied, and a paired comparison that reads
    # the file scored AUC 0.957 where the run itself had 0.961. Every score must read back as the same float.
    from sklearn.metrics import roc_auc_score

    from medprobe.reporting.results import write_predictions

    positive = np.array([1 - 3e-7, 1 - 1e-7, 1 - 2e-8, 0.25, np.float32(1 / 3)], dtype=np.float64)
    scores = np.column_stack([1 - positive, positive])
    labels = np.array([0, 1, 1, 0, 0])
    write_predictions(tmp_path / "p.csv", [f"img{i}" for i in range(5)], labels, scores, ["a", "b"], "binary")
    _, read_labels, read_scores = read_predictions(tmp_path / "p.csv", ["a", "b"], "binary")
    assert np.array_equal(read_scores, scores) and read_labels.tolist() == labels.tolist()
    assert roc_auc_score(read_labels, read_scores[:, 1]) == roc_auc_score(labels, positive) == 1.0


def test_reliability_bins_and_ece():
    # Uniform bins closed on the right, as scikit-learn's calibration_curve draws them: (0, 0.1], (0.1, 0.2], ...,
    # so a score on an edge (0.1, 0.3, 0.9 below) belongs to the bin below it, as 0.5 belongs with the negatives.
    from sklearn.calibration import calibration_curve

    labels = np.array([1, 1, 0, 0])
    scores = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.7, 0.3]])
    mean_conf, observed, count, ece = reliability(labels, scores, "binary")
    assert count.tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 2, 0]
    assert observed[8] == 1.0 and observed[0] == 0.0 and observed[2] == 0.0
    assert np.isnan(observed[[1, 3, 4, 5, 6, 7, 9]]).all() and np.isnan(mean_conf[[1, 3, 4, 5, 6, 7, 9]]).all()
    assert mean_conf[[0, 2, 8]].tolist() == pytest.approx([0.1, 0.3, 0.9])
    sk_observed, sk_mean = calibration_curve(labels, scores[:, 1], n_bins=N_BINS, strategy="uniform")
    assert observed[count > 0].tolist() == pytest.approx(sk_observed.tolist()) and mean_conf[count > 0].tolist() == pytest.approx(sk_mean.tolist())
    assert ece == pytest.approx((2 * 0.1 + 0.1 + 0.3) / 4)
    # Multi-class: top-class probability against whether the argmax was right (0.8 right, 0.5 wrong).
    _, observed, count, ece = reliability(np.array([0, 2]), np.array([[0.8, 0.1, 0.1], [0.5, 0.2, 0.3]]), "multi-class")
    assert count.tolist() == [0, 0, 0, 0, 1, 0, 0, 1, 0, 0]
    assert observed[7] == 1.0 and observed[4] == 0.0 and ece == pytest.approx((0.2 + 0.5) / 2)


def _task_data(task, n=40):
    rng = np.random.default_rng(0)
    k = 2 if task == "binary" else 3
    if task == "multi-label":
        labels = (rng.random((n, k)) > 0.5).astype(int)
        scores = rng.random((n, k))
    else:
        labels = np.arange(n) % k
        scores = rng.dirichlet(np.ones(k), n)
    return labels, scores, [f"c{i}" for i in range(k)]


def _shown_counts(ax):
    """The integers written in the confusion matrix's cells, as a (rows, columns) array."""
    image = ax.get_images()[0].get_array()
    counts = np.zeros(image.shape, int)
    for text in ax.texts:
        x, y = text.get_position()
        counts[int(round(y)), int(round(x))] = int(text.get_text())
    return counts, len(ax.texts)


@pytest.mark.parametrize("task", ["binary", "multi-class", "multi-label"])
def test_figures_draw_for_every_task(task):
    from sklearn.metrics import roc_curve

    labels, scores, names = _task_data(task)
    n, k = len(labels), len(names)

    # ROC: one curve per class (only the positive class for binary) plus the chance diagonal, each the real curve.
    ax = roc_figure(labels, scores, task, names, {"c1": 0.5}, "t").axes[0]
    drawn = names[-1:] if task == "binary" else names
    curves, diagonal = ax.lines[:-1], ax.lines[-1]
    assert len(curves) == len(drawn) and diagonal.get_xdata().tolist() == [0, 1] == diagonal.get_ydata().tolist()
    for j, (line, name) in enumerate(zip(curves, drawn)):
        column = k - 1 if task == "binary" else j
        truth = labels[:, column] if task == "multi-label" else (labels == column).astype(int)
        fpr, tpr, _ = roc_curve(truth, scores[:, column])
        np.testing.assert_allclose(line.get_xdata(), fpr)
        np.testing.assert_allclose(line.get_ydata(), tpr)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"{name} (AUC 0.500)" if name == "c1" else name for name in drawn]

    # Confusion: one count per cell; each row holds every image of its true class (or label state), whatever was predicted.
    ax = confusion_figure(labels, scores, task, names, "t").axes[0]
    counts, n_texts = _shown_counts(ax)
    if task == "multi-label":  # per label: TN, FP, FN, TP
        assert counts.shape == (k, 4) and n_texts == 4 * k
        assert (counts[:, 0] + counts[:, 1]).tolist() == (labels == 0).sum(axis=0).tolist()
        assert (counts[:, 2] + counts[:, 3]).tolist() == labels.sum(axis=0).tolist()
    else:
        assert counts.shape == (k, k) and n_texts == k * k
        assert counts.sum(axis=1).tolist() == np.bincount(labels, minlength=k).tolist()
    assert [t.get_text() for t in ax.get_yticklabels()] == names

    # Reliability: N_BINS bars of observed frequency on top, N_BINS bars of counts below that add up to every score.
    top, bottom = reliability_figure(labels, scores, task, "t").axes
    assert len(top.patches) == N_BINS and len(bottom.patches) == N_BINS
    per_score = n * k if task == "multi-label" else n
    assert sum(p.get_height() for p in bottom.patches) == per_score
    assert all(0 <= p.get_height() <= 1 for p in top.patches) and "ECE" in top.get_title()


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
