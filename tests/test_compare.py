"""`medprobe compare`: two saved runs on the same test images, matched by id; refusals when they are not."""

import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import write_npz
from medprobe.core.errors import ComparisonError
from medprobe.data.datasets import DataSpec
from medprobe.embedding.options import EmbedOptions
from medprobe.evaluation.paired import paired_comparison
from medprobe.probes.spec import ProbeSpec
from medprobe.reporting.compare import compare_folders, read_scores
from medprobe.reporting.results import read_result, write_run_folder
from medprobe.workflows.run import EvalOptions, run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """logreg and knn on one tiny, noisy npz (EfficientNet-Lite0, one embedding pass for both): AUCs below 1, so DeLong has work."""
    root = tmp_path_factory.mktemp("compare")
    write_npz(root / "tiny.npz", n_train=30, n_val=9, n_test=24, classes=3)
    arrays = dict(np.load(root / "tiny.npz"))
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        labels = arrays[f"{split}_labels"].reshape(-1, 1, 1, 1).astype(int)
        arrays[f"{split}_images"] = np.clip(labels * 30 + rng.integers(0, 180, arrays[f"{split}_images"].shape), 0, 255).astype(np.uint8)
    np.savez(root / "tiny.npz", **arrays)
    data, options = DataSpec(str(root / "tiny.npz")), EmbedOptions("efficientnet_lite0", cache_dir=str(root / "cache"), progress=False)
    for probe in ("logreg", "knn"):
        run(data, options, ProbeSpec(probe, selection="val"), EvalOptions(n_boot=200), out=root / probe)
    return root


def rewrite(source, target, ids=None, labels=None, scores=None, **dataset):
    """A copy of a run folder with some of its test rows or dataset record changed, written as a run writes it."""
    result, old_ids, old_labels, old_scores = read_scores(source)
    result = replace(result, dataset={**result.dataset, **dataset})
    write_run_folder(target, result, old_ids if ids is None else ids, old_labels if labels is None else labels,
                     old_scores if scores is None else scores)
    return target


def test_cli_compare_prints_both_aucs_the_paired_difference_and_delong(two_runs, medprobe, tmp_path):
    done = medprobe("compare", two_runs / "logreg", two_runs / "knn", "--out", tmp_path / "c.json")
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "c.json").read_text())
    for line in ("AUC A", "AUC B", "A - B", "paired bootstrap", "DeLong", "method:", "n = 24 test images"):
        assert line in done.stdout
    # The numbers are those of the statistics module on the saved predictions, rows in the same order.
    _, _, labels, a = read_scores(two_runs / "logreg")
    _, _, _, b = read_scores(two_runs / "knn")
    expected = paired_comparison(labels, a, b, "multi-class")
    assert saved["difference"] == pytest.approx(expected["difference"]) and saved["delong"]["p"] == pytest.approx(expected["delong"]["p"])
    assert 0.5 < saved["auc_b"] < 1 and saved["delong"]["p"] is not None
    assert saved["auc_a"] == pytest.approx(read_result(two_runs / "logreg").metrics["test"]["auc"], abs=1e-4)
    assert f"{saved['auc_a']:.3f}" in done.stdout
    as_json = medprobe("compare", two_runs / "logreg", two_runs / "knn", "--json")
    assert json.loads(as_json.stdout)["difference"] == saved["difference"]


def test_rows_are_matched_by_id_not_by_position(two_runs, tmp_path):
    _, ids, labels, scores = read_scores(two_runs / "knn")
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = rewrite(two_runs / "knn", tmp_path / "shuffled", ids[order], labels[order], scores[order])
    together, apart = compare_folders(two_runs / "logreg", two_runs / "knn"), compare_folders(two_runs / "logreg", shuffled)
    for key in ("auc_a", "auc_b", "difference", "difference_ci"):
        assert apart[key] == pytest.approx(together[key]), key
    assert apart["delong"]["z"] == pytest.approx(together["delong"]["z"])


@pytest.mark.parametrize("change, message", [
    ("fewer", r"the test sets differ: 4 of .*logreg's 24 test images are not in .*other \(e\.g\. test/20, test/21"),
    ("renamed", r"1 of .*other's 24 are not in .*logreg \(e\.g\. elsewhere/0\)"),
    ("relabelled", r"2 of 24 test images have different labels .*test/0: '0' vs '1'"),
    ("task", r"different task \('multi-class' vs 'multi-label'\)"),
    ("names", r"different label names"),
    ("repeated", r"id\(s\) appear more than once .*test/1"),
])
def test_refuses_clearly_when_the_test_sets_are_not_the_same(two_runs, tmp_path, medprobe, change, message):
    _, ids, labels, scores = read_scores(two_runs / "knn")
    other = tmp_path / "other"
    if change == "fewer":
        rewrite(two_runs / "knn", other, ids[:20], labels[:20], scores[:20])
    elif change == "renamed":
        rewrite(two_runs / "knn", other, np.array([*ids[1:], "elsewhere/0"], dtype=object))
    elif change == "relabelled":
        changed = labels.copy()
        changed[:2] = (changed[:2] + 1) % 3
        rewrite(two_runs / "knn", other, labels=changed)
    elif change == "task":
        rewrite(two_runs / "knn", other, labels=np.eye(3, dtype=int)[labels], task="multi-label")
    elif change == "names":
        rewrite(two_runs / "knn", other, label_names=["x", "y", "z"])
    else:
        rewrite(two_runs / "knn", other, np.array([ids[1], *ids[1:]], dtype=object))
    with pytest.raises(ComparisonError, match=message):
        compare_folders(two_runs / "logreg", other)
    done = medprobe("compare", two_runs / "logreg", other)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_a_folder_without_predictions_or_results_is_refused(two_runs, tmp_path, medprobe):
    done = medprobe("compare", two_runs / "logreg", tmp_path)
    assert done.returncode == 2 and "cannot read saved results" in done.stderr
    folder = rewrite(two_runs / "knn", tmp_path / "no_predictions")
    (folder / "predictions.csv").unlink()
    done = medprobe("compare", two_runs / "logreg", folder)
    assert done.returncode == 2 and "no predictions.csv" in done.stderr


def test_report_over_two_runs_pairs_them_as_compare_does(two_runs, tmp_path):
    from medprobe.reporting.html import write_report

    page = write_report(two_runs, out=tmp_path / "report.html").read_text()
    logreg, knn = (read_result(two_runs / name).metrics["test"]["auc"] for name in ("logreg", "knn"))
    worse, best = ("logreg", "knn") if logreg < knn else ("knn", "logreg")
    expected = compare_folders(two_runs / worse, two_runs / best)
    section = page.split("<h2>Paired comparisons</h2>")[1]
    assert f"{expected['difference']:+.3f} [{expected['difference_ci'][0]:.3f}, {expected['difference_ci'][1]:.3f}]" in section
    assert f"{expected['delong']['p']:.3g}" in section
