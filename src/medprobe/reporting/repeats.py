"""Repeated runs, summarised: per metric mean, SD and min-max across seeds, and which variance that spread measures.

Pure functions of saved RunResults, so `medprobe run --seeds N` (workflows/repeats.py) and the bench table's
across-seeds rows say the same thing in the same words.
"""

import numpy as np

SPREAD_METRICS = ("auc", "acc", "balanced_accuracy", "macro_f1")


def summarize(seeds, results):
    """The `repeats` record: per metric mean, SD, min and max over seeds, each seed's values, and what the spread measures."""
    made = [r.dataset.get("made_splits", {}) for r in results]
    distinct = {f"{split}_sets": len({m.get(split, {}).get("ids_sha256", "given") for m in made}) for split in ("test", "val")}
    distinct["probe_params"] = len({repr(sorted(r.probe["params"].items())) for r in results})
    per_seed = [{"seed": seed, "test": {m: r.metrics["test"][m] for m in SPREAD_METRICS}, "val_auc": r.metrics["val"]["auc"],
                 "params": r.probe["params"], "made_splits": {s: v.get("ids_sha256") for s, v in r.dataset.get("made_splits", {}).items()}}
                for seed, r in zip(seeds, results)]
    test = {m: spread([r.metrics["test"][m] for r in results]) for m in SPREAD_METRICS}
    spread_is, explanation = what_varied(distinct, test["auc"])
    return {
        "seeds": seeds,
        "n": len(seeds),
        "spread_is": spread_is,
        "explanation": explanation,
        "distinct": distinct,
        "test": test,
        "val": {"auc": spread([r.metrics["val"]["auc"] for r in results])},
        "per_seed": per_seed,
    }


def spread(values):
    values = np.array([v for v in values if v is not None], dtype=float)
    if not len(values):
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
            "min": float(values.min()), "max": float(values.max()), "n": len(values)}


def what_varied(distinct, auc):
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
            "the splits are fixed (the dataset's own): the spread is the method's own variance (the probe's seed: CV folds when "
            "there is no usable val split, the svm's random_state); the test set's sampling variance is the bootstrap CI, not this")
    return "none", (
        "no spread: the splits are fixed (the dataset's own) and nothing the seed moves changed the result (it moves splits "
        "medprobe draws, CV folds when there is no usable val split, and the svm's random_state, which rarely changes its "
        "optimum; logreg and knn do not use it); the test set's sampling variance is the bootstrap CI")


def repeats_lines(repeats):
    """The spread over `--seeds` runs, one line per metric, then what the spread measures; [] for a single run."""
    if not repeats:
        return []
    seeds = repeats["seeds"]
    lines = [f"repeated with {repeats['n']} seeds ({seeds[0]}-{seeds[-1]}): spread over seeds is {repeats['spread_is']}"]
    for name, label in (("auc", "AUC"), ("acc", "ACC"), ("balanced_accuracy", "balanced ACC"), ("macro_f1", "macro F1")):
        s = repeats["test"][name]
        if s["mean"] is not None:
            lines.append(f"  test {label:<13} mean {s['mean']:.3f}  SD {s['sd']:.3f}  min-max {s['min']:.3f}-{s['max']:.3f}")
    lines.append(f"  {repeats['explanation']}")
    return lines
