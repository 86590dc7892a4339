"""Results are data: results.json, predictions.csv and summary.md, each written atomically."""

import csv
import io
import json
import platform
from importlib import metadata

from medprobe.cache import atomic_write_bytes

RESULTS = "results.json"
PREDICTIONS = "predictions.csv"
SUMMARY = "summary.md"


def package_versions():
    versions = {"python": platform.python_version()}
    for package in ("medprobe", "numpy", "scikit-learn", "torch", "pyarrow", "pillow", "efficientnet-lite-pytorch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_json(path, data):
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode())


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_predictions(path, ids, labels, scores, label_names, task):
    """One row per test image: id, true label(s), and a score column per class or label."""
    out = io.StringIO()
    writer = csv.writer(out)
    score_columns = [f"score_{name}" for name in label_names]
    label_columns = [f"label_{name}" for name in label_names] if task == "multi-label" else ["label"]
    writer.writerow(["id", *label_columns, *score_columns])
    for row_id, label, score in zip(ids, labels, scores):
        truth = list(label) if task == "multi-label" else [label]
        writer.writerow([row_id, *truth, *(f"{s:.6g}" for s in score)])
    atomic_write_bytes(path, out.getvalue().encode())


def format_table(metrics):
    """The small terminal table: metric, value, 95 % CI."""
    rows = [
        ("AUC", metrics["auc"], metrics.get("auc_ci")),
        ("ACC", metrics["acc"], metrics.get("acc_ci")),
        ("balanced ACC", metrics["balanced_accuracy"], None),
        ("macro F1", metrics["macro_f1"], None),
    ]
    lines = [f"{'metric':<14}{'value':>8}   95% CI"]
    for name, value, ci in rows:
        interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"{name:<14}{value:>8.3f}   {interval}")
    return "\n".join(lines)


def summary_markdown(results):
    test = results["metrics"]["test"]
    dataset, encoder, probe = results["dataset"], results["encoder"], results["probe"]
    lines = [
        f"# {dataset['name']} · {encoder['name']} · {probe['name']}",
        "",
        f"Task: {dataset['task']}, {dataset['n']['train']}/{dataset['n']['val']}/{dataset['n']['test']} train/val/test images.",
        f"Probe parameters: {probe['params']} (chosen by {probe['selection']['criterion']}).",
        "",
        "| metric | value | 95 % CI |",
        "|---|---|---|",
        f"| AUC (MedMNIST) | {test['auc']:.3f} | {test['auc_ci'][0]:.3f}–{test['auc_ci'][1]:.3f} |",
        f"| ACC (MedMNIST) | {test['acc']:.3f} | {test['acc_ci'][0]:.3f}–{test['acc_ci'][1]:.3f} |",
        f"| balanced ACC | {test['balanced_accuracy']:.3f} | |",
        f"| macro F1 | {test['macro_f1']:.3f} | |",
        "",
        f"Embedding: {results['timings']['embed_s']:.1f} s ({'cache hit' if results['cache']['hit'] else 'computed'}), "
        f"probe fit {results['timings']['fit_s']:.1f} s. Cache key `{results['cache']['key'][:16]}`.",
        "",
    ]
    return "\n".join(lines)
