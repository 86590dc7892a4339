"""One experiment end to end: dataset -> embeddings -> probe -> metrics -> results folder."""

import time
from datetime import datetime, timezone
from pathlib import Path

from medprobe import __version__
from medprobe.cache import atomic_write_bytes
from medprobe.costs import cpu_seconds, embedding_cost
from medprobe.datasets import load_dataset
from medprobe.encoders import get_config
from medprobe.fusion import embed_spec, split_spec
from medprobe.metrics import N_BOOTSTRAP, evaluate
from medprobe.probes import fit_probe, make_probe
from medprobe.scan import scan_images
from medprobe.results import (
    PREDICTIONS,
    PROJECTION,
    RESULTS,
    SUMMARY,
    package_versions,
    summary_markdown,
    write_json,
    write_predictions,
    write_projection,
)
from medprobe.zeroshot import fit_zeroshot, read_prompts


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
    device="cpu",
    runtime=None,
    seed=0,
    n_boot=N_BOOTSTRAP,
    progress=True,
    projection="pca",
    prompts=None,
    on_error="fail",
    save=None,
):
    """Run one (dataset, encoder, probe) experiment and, if `out` is given, write its results folder.

    >>> results = run("retinamnist", "efficientnet_lite0", "logreg", out="runs/retina", data_dir="../shared/data/medmnist")
    >>> results["metrics"]["test"]["auc"]

    `encoder` may fuse several ('efficientnet_lite0+efficientnet_lite2'); `probe="zeroshot"` classifies
    with the CLIP text prompts in the YAML/JSON file `prompts` instead of fitting anything.
    """
    timings = {}
    started, started_cpu = time.perf_counter(), cpu_seconds()
    # Names are checked before any work, so a typo never costs an embedding pass.
    for name in split_spec(encoder):
        get_config(name)
    if probe == "zeroshot":
        read_prompts(prompts)
    else:
        make_probe(probe)
    if save is not None and (probe == "zeroshot" or len(split_spec(encoder)) != 1):
        from medprobe.errors import ModelError

        raise ModelError(f"--save supports one encoder and a fitted probe (logreg, svm, knn); got {encoder!r} with {probe!r}")
    data = load_dataset(dataset, data_dir=data_dir, size=size)
    # Every image is decoded once before any work: bad files are listed together (fail) or recorded (skip).
    data, scanned = scan_images(data, on_error)
    timings["scan_s"] = scanned.seconds
    timings["load_s"] = time.perf_counter() - started
    timings["load_cpu_s"] = cpu_seconds() - started_cpu

    tick_cpu = cpu_seconds()
    encoded = embed_spec(
        data, encoder, weights=weights, device=device, runtime=runtime,
        cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size, progress=progress,
    )
    embedded = encoded.embeddings
    timings["embed_s"] = embedded.seconds
    timings["embed_cpu_s"] = cpu_seconds() - tick_cpu
    # What computing the embeddings cost, also when this run hit the cache: the bench's compute ratio uses it.
    cost = embedding_cost(embedded, embedded.seconds, timings["embed_cpu_s"])
    timings.update(embed_cost_s=cost["wall_s"], embed_cost_cpu_s=cost["cpu_s"], embed_cost_source=cost["measured_in"])

    X = embedded.vectors
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    tick, tick_cpu = time.perf_counter(), cpu_seconds()
    if probe == "zeroshot":
        fitted = fit_zeroshot(encoded.encoders, prompts, data.label_names, data.task, X[train], data.labels[train])
    else:
        fitted = fit_probe(probe, X[train], data.labels[train], X[val], data.labels[val], data.task, class_weight, seed)
    timings["fit_s"] = time.perf_counter() - tick
    timings["fit_cpu_s"] = cpu_seconds() - tick_cpu

    tick, tick_cpu = time.perf_counter(), cpu_seconds()
    metrics = {
        split: evaluate(data.labels[rows], fitted.predict_scores(X[rows]), data.task, data.label_names, n_boot, seed)
        for split, rows in (("val", val), ("test", test))
    }
    timings["evaluate_s"] = time.perf_counter() - tick
    timings["evaluate_cpu_s"] = cpu_seconds() - tick_cpu
    timings["total_s"] = time.perf_counter() - started
    timings["total_cpu_s"] = cpu_seconds() - started_cpu

    results = {
        "medprobe": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": data.describe(),
        "images": scanned.describe(),
        # what actually ran (ONNX Runtime or eager, the exactness guard's cosine), beside the keyed `runtime`
        "encoder": {**encoded.record, "backends": [e.runtime_info() for e in encoded.encoders if hasattr(e, "runtime_info")]},
        "preprocessing": encoded.preprocessing,
        "probe": {
            "name": probe,
            "params": fitted.params,
            "selection": fitted.selection,
            "config": {k: repr(v) for k, v in fitted.estimator.get_params(deep=True).items() if "__" in k},
            **({"prompts": fitted.prompts} if probe == "zeroshot" else {}),
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
        write_projection(out / PROJECTION, data.ids[test], data.labels[test], X[test], data.label_names, data.task, projection, seed)
        write_json(out / RESULTS, results)
        atomic_write_bytes(out / SUMMARY, summary_markdown(results).encode())
    if save is not None:
        from medprobe.saved_model import save_model

        save_model(save, fitted, data, encoded.encoders[0], encoded.transforms[0], encoder, weights, metrics, seed)
    return results
