"""Repeated runs (`medprobe run --seeds N`): the random parts redone with seeds s..s+N-1, and their spread.

What a seed moves: the splits medprobe draws (missing val/test splits, or all three with
`--resplit`), the probe's seed (the svm's internal folds, CV folds when there is no usable val
split), and the bootstrap's draws. The dataset's own splits never move, and logreg and knn are
deterministic given their data. So which variance the spread measures depends on the run, and
the record says which: sampling variance (the test set itself was drawn anew), method variance
on a fixed test set, or none at all.

Embeddings are computed once: every seed after the first reads the embedding store.
"""

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from medprobe.core.errors import MedprobeError
from medprobe.core.files import atomic_write_text
from medprobe.probes.spec import ProbeSpec
from medprobe.reporting.results import RESULTS, SUMMARY, write_json
from medprobe.workflows.run import run

log = logging.getLogger(__name__)

SPREAD_METRICS = ("auc", "acc", "balanced_accuracy", "macro_f1")


def run_seeds(data_spec, options=None, probe_spec=None, evaluation=None, out=None, n_seeds=5):
    """Run the experiment with seeds probe_spec.seed + 0..n_seeds-1; the first seed's run is the result (and the folder),
    with `repeats` added.

    >>> result = run_seeds(DataSpec("retinamnist", data_dir="../shared/data/medmnist"), EmbedOptions(), ProbeSpec("svm"),
    ...                    out="runs/retina_svm", n_seeds=5)
    >>> result.repeats["test"]["auc"]          # {'mean': ..., 'sd': ..., 'min': ..., 'max': ...}
    >>> result.repeats["spread_is"]            # 'method variance' here: RetinaMNIST's splits are its own
    """
    if n_seeds < 2:
        raise MedprobeError(f"--seeds must be at least 2 to measure a spread, got {n_seeds}")
    probe_spec = probe_spec or ProbeSpec()
    first = probe_spec.seed
    seeds = list(range(first, first + n_seeds))
    if options is not None and not options.use_cache:
        log.warning("--no-cache with --seeds: the embeddings are computed again for each of the %d seeds", n_seeds)
    results = []
    for seed in seeds:
        # Only the first seed writes the folder: it is an ordinary run folder at every moment, even if the loop is interrupted.
        results.append(run(replace(data_spec, split_seed=seed), options, replace(probe_spec, seed=seed), evaluation, out=out if seed == first else None))
        log.info("seed %d: test AUC %s", seed, results[-1].metrics["test"]["auc"])
    main = results[0]
    main.repeats = summarize(seeds, results)
    if out is not None:
        write_json(Path(out) / RESULTS, main.to_json())
        atomic_write_text(Path(out) / SUMMARY, main.summary_markdown())
    return main


def summarize(seeds, results):
    """The `repeats` record: per metric mean, SD, min and max over seeds, each seed's values, and what the spread measures."""
    made = [r.dataset.get("made_splits", {}) for r in results]
    distinct = {f"{split}_sets": len({m.get(split, {}).get("ids_sha256", "given") for m in made}) for split in ("test", "val")}
    distinct["probe_params"] = len({repr(sorted(r.probe["params"].items())) for r in results})
    per_seed = [{"seed": seed, "test": {m: r.metrics["test"][m] for m in SPREAD_METRICS}, "val_auc": r.metrics["val"]["auc"],
                 "params": r.probe["params"], "made_splits": {s: v.get("ids_sha256") for s, v in r.dataset.get("made_splits", {}).items()}}
                for seed, r in zip(seeds, results)]
    test = {m: _spread([r.metrics["test"][m] for r in results]) for m in SPREAD_METRICS}
    spread_is, explanation = _what_varied(distinct, test["auc"])
    return {
        "seeds": seeds,
        "n": len(seeds),
        "spread_is": spread_is,
        "explanation": explanation,
        "distinct": distinct,
        "test": test,
        "val": {"auc": _spread([r.metrics["val"]["auc"] for r in results])},
        "per_seed": per_seed,
    }


def _spread(values):
    values = np.array([v for v in values if v is not None], dtype=float)
    if not len(values):
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
            "min": float(values.min()), "max": float(values.max()), "n": len(values)}


def _what_varied(distinct, auc):
    if distinct["test_sets"] > 1:
        return "sampling and method variance", (
            f"each seed drew its own splits, test included ({distinct['test_sets']} different test sets): the spread is sampling "
            "variance (which images are tested and trained on) plus the method's own variance")
    if distinct["val_sets"] > 1:
        return "method variance (train/val drawn anew)", (
            f"each seed drew its own val split from train ({distinct['val_sets']} different ones) on the same test images: the spread is "
            "the method's variance, including which images it is fitted and tuned on; the test set's sampling variance is the "
            "bootstrap CI, not this")
    if auc["max"] is not None and auc["max"] > auc["min"]:
        return "method variance", (
            "the splits are fixed (the dataset's own): the spread is the method's own variance (the probe's seed: the svm's "
            "internal folds, CV folds when there is no val split); the test set's sampling variance is the bootstrap CI, not this")
    return "none", (
        "no spread: the splits are fixed (the dataset's own) and nothing the seed moves changed the result (it moves splits "
        "medprobe draws, the svm's internal folds, and CV folds when there is no val split; logreg and knn do not use it); the "
        "test set's sampling variance is the bootstrap CI")
