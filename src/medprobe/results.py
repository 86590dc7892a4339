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
PROJECTION = "embedding_2d.csv"  # the test embeddings in 2-D, so a report can draw the map without the vectors
PROJECTIONS = ("pca", "tsne", "umap")


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


def project_2d(vectors, method="pca", seed=0):
    """(N, 2) coordinates of `vectors`: PCA, t-SNE (scikit-learn) or UMAP (needs umap-learn)."""
    from medprobe.errors import MedprobeError

    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, init="pca", perplexity=min(30.0, max(2.0, (len(vectors) - 1) / 3)), random_state=seed).fit_transform(vectors)
    if method == "umap":
        try:
            import umap
        except ImportError as e:
            raise MedprobeError("projection 'umap' needs umap-learn (pip install umap-learn); or use pca or tsne") from e
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)
    raise MedprobeError(f"projection must be one of {', '.join(PROJECTIONS)}, got {method!r}")


def write_projection(path, ids, labels, vectors, label_names, task, method="pca", seed=0):
    """id, label, x, y for each test image, and the method in a column, so the report never needs the vectors."""
    xy = project_2d(vectors, method, seed) if len(vectors) > 2 else [[0.0, 0.0]] * len(vectors)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "label", "x", "y", "method"])
    for row_id, label, (x, y) in zip(ids, labels, xy):
        if task == "multi-label":
            name = "+".join(n for n, on in zip(label_names, label) if on) or "none"
        else:
            name = label_names[label]
        writer.writerow([row_id, name, f"{x:.5g}", f"{y:.5g}", method])
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
