"""Paired comparison of two saved results folders (runs or baselines) on their shared test images.

The per-image test scores come from each folder's predictions.csv (checked against its results.json);
rows are matched by image id, and anything that makes the pairing meaningless is refused by name:
different tasks or label names, test sets that differ, or one image with two labels.
"""

from pathlib import Path

import numpy as np

from medprobe.core.errors import ComparisonError
from medprobe.evaluation.metrics import BOOTSTRAP_SEED, N_BOOTSTRAP
from medprobe.evaluation.paired import paired_comparison
from medprobe.reporting.results import (
    PREDICTIONS,
    check_run_folder,
    ci_text,
    read_predictions,
    read_result,
)

EXAMPLES = 5


def read_scores(folder, result=None):
    """(result, ids, labels, scores) of a results folder, its predictions checked against its results.json."""
    folder = Path(folder)
    result = result or read_result(folder)
    if not (folder / PREDICTIONS).is_file():
        raise ComparisonError(f"{folder}: no {PREDICTIONS} (the per-image test scores a paired comparison needs); "
                              "rerun it with this medprobe version")
    check_run_folder(folder, result)
    ids, labels, scores = read_predictions(folder / PREDICTIONS, result.dataset["label_names"], result.dataset["task"])
    return result, np.asarray(ids, dtype=object), labels, scores


def align(a, b, names=("A", "B")):
    """B's rows in A's order, after checking both hold the same test images with the same labels; `a`, `b` are read_scores tuples."""
    (result_a, ids_a, labels_a, _), (result_b, ids_b, labels_b, _) = a, b
    name_a, name_b = names
    for field in ("task", "label_names"):
        if result_a.dataset[field] != result_b.dataset[field]:
            raise ComparisonError(f"{name_a} and {name_b} have different {field.replace('_', ' ')} ({result_a.dataset[field]!r} vs "
                                  f"{result_b.dataset[field]!r}); a paired comparison needs one task scored the same way")
    for name, ids in ((name_a, ids_a), (name_b, ids_b)):
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ComparisonError(f"{name}: {int((counts > 1).sum())} test image id(s) appear more than once in {PREDICTIONS} "
                                  f"(e.g. {_examples(unique[counts > 1])}); images cannot be matched by id")
    only_a, only_b = np.setdiff1d(ids_a, ids_b), np.setdiff1d(ids_b, ids_a)
    if len(only_a) or len(only_b):
        raise ComparisonError(
            f"the test sets differ: {len(only_a)} of {name_a}'s {len(ids_a)} test images are not in {name_b}"
            + (f" (e.g. {_examples(only_a)})" if len(only_a) else "")
            + f", and {len(only_b)} of {name_b}'s {len(ids_b)} are not in {name_a}" + (f" (e.g. {_examples(only_b)})" if len(only_b) else "")
            + "; a paired comparison needs the same test images: run both on the same dataset and splits"
        )
    where = {image_id: row for row, image_id in enumerate(ids_b)}
    order = np.array([where[image_id] for image_id in ids_a], dtype=np.int64)
    differ = np.flatnonzero((labels_a != labels_b[order]).reshape(len(ids_a), -1).any(axis=1))
    if len(differ):
        label_names = result_a.dataset["label_names"]
        shown = ", ".join(f"{ids_a[i]}: {_label(labels_a[i], label_names)} vs {_label(labels_b[order][i], label_names)}"
                          for i in differ[:EXAMPLES])
        raise ComparisonError(f"{len(differ)} of {len(ids_a)} test images have different labels in {name_a} and {name_b} (e.g. {shown}); "
                              "the two runs read different label files, so their AUCs are not on the same test set")
    return order


def compare_folders(folder_a, folder_b, n_boot=N_BOOTSTRAP, seed=BOOTSTRAP_SEED):
    """Paired comparison of two results folders: AUC of each with CIs, A - B with a paired bootstrap CI, DeLong's z and p.

    >>> c = compare_folders("runs/lite0", "runs/lite2")
    >>> c["difference"], c["difference_ci"], c["delong"]["p"]
    """
    a, b = read_scores(folder_a), read_scores(folder_b)
    order = align(a, b, (str(folder_a), str(folder_b)))
    (result_a, _, labels, scores_a), (result_b, _, _, scores_b) = a, b
    comparison = paired_comparison(labels, scores_a, scores_b[order], result_a.dataset["task"], result_a.dataset["label_names"],
                                   n_boot, seed)
    return {
        "a": _describe(folder_a, result_a),
        "b": _describe(folder_b, result_b),
        "dataset": result_a.dataset["name"],
        **comparison,
    }


def _describe(folder, result):
    return {"path": str(folder), "title": result.title, "dataset": result.dataset["name"],
            "reported_auc": result.metrics["test"]["auc"], "reported_auc_ci": result.metrics["test"]["auc_ci"]}


def _examples(values):
    return ", ".join(str(v) for v in list(values)[:EXAMPLES])


def _label(label, names):
    if np.ndim(label):
        return "+".join(n for n, on in zip(names, label) if on) or "none"
    return repr(names[int(label)])


def comparison_lines(c):
    """The terminal table of a comparison: each AUC with its CI, the paired difference, DeLong's z and p, n and the method."""
    delong = c["delong"]
    test = "DeLong: no variance to test (both rank the images alike, or a class has a single test image)" if delong["p"] is None else \
        f"DeLong z = {delong['z']:+.2f}, p = {_p(delong['p'])} (two-sided)"
    return [
        f"{c['dataset']} ({c['task']}, n = {c['n']} test images matched by id)",
        f"A  {c['a']['title']}",
        f"B  {c['b']['title']}",
        f"{'AUC A':<10}{c['auc_a']:>8.3f}   {ci_text(c['auc_a_ci'])}",
        f"{'AUC B':<10}{c['auc_b']:>8.3f}   {ci_text(c['auc_b_ci'])}",
        f"{'A - B':<10}{c['difference']:>+8.3f}   {ci_text(c['difference_ci'])} paired bootstrap",
        test,
        f"method: {c['method']}",
    ]


def _p(p):
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
