"""One experiment end to end: dataset -> embeddings -> probe -> metrics -> results folder."""

import time
from datetime import datetime, timezone
from pathlib import Path

from medprobe import __version__
from medprobe.cache import atomic_write_bytes
from medprobe.datasets import load_dataset
from medprobe.embed import embed
from medprobe.encoders import create_encoder
from medprobe.metrics import N_BOOTSTRAP, evaluate
from medprobe.probes import fit_probe
from medprobe.results import (
    PREDICTIONS,
    RESULTS,
    SUMMARY,
    package_versions,
    summary_markdown,
    write_json,
    write_predictions,
)


def run(
    dataset,
    encoder="efficientnet_lite0",
    probe="logreg",
    out=None,
    data_dir=None,
    size=28,
    weights=None,
    class_weight=None,
    cache_dir=None,
    use_cache=True,
    batch_size=64,
    seed=0,
    n_boot=N_BOOTSTRAP,
    progress=True,
):
    """Run one (dataset, encoder, probe) experiment and, if `out` is given, write its results folder.

    >>> results = run("retinamnist", "efficientnet_lite0", "logreg", out="runs/retina", data_dir="../shared/data/medmnist")
    >>> results["metrics"]["test"]["auc"]
    """
    timings = {}
    started = time.perf_counter()
    data = load_dataset(dataset, data_dir=data_dir, size=size)
    timings["load_s"] = time.perf_counter() - started

    model, transform = create_encoder(encoder, weights=weights)
    embedded = embed(data, model, transform, cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size, progress=progress)
    timings["embed_s"] = embedded.seconds

    X = embedded.vectors
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    tick = time.perf_counter()
    fitted = fit_probe(probe, X[train], data.labels[train], X[val], data.labels[val], data.task, class_weight, seed)
    timings["fit_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    metrics = {
        split: evaluate(data.labels[rows], fitted.predict_scores(X[rows]), data.task, data.label_names, n_boot, seed)
        for split, rows in (("val", val), ("test", test))
    }
    timings["evaluate_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started

    results = {
        "medprobe": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": data.describe(),
        "encoder": {"name": encoder, "config": model.config.to_dict(), "runtime": getattr(model, "runtime", {})},
        "preprocessing": transform.policy,
        "probe": {
            "name": probe,
            "params": fitted.params,
            "selection": fitted.selection,
            "config": {k: repr(v) for k, v in fitted.estimator.get_params(deep=True).items() if "__" in k},
        },
        "metrics": metrics,
        "cache": {"key": embedded.key, "path": embedded.path, "hit": embedded.from_cache},
        "timings": timings,
        "seed": seed,
        "versions": package_versions(),
    }
    if out is not None:
        out = Path(out)
        write_predictions(out / PREDICTIONS, data.ids[test], data.labels[test], fitted.predict_scores(X[test]), data.label_names, data.task)
        write_json(out / RESULTS, results)
        atomic_write_bytes(out / SUMMARY, summary_markdown(results).encode())
    return results
