"""Score stage subsets, recipes and probes on the matrices recipe_sweep.py saved: val AUC (what chooses) beside test AUC.

    python benchmarks/recipe_select.py /tmp/sweep --probes logreg --selection val

Stage subsets are column slices of the all-stages embedding (stages 1-7 pooled, then the head).
"""

import argparse
import time
from pathlib import Path

import numpy as np

from medprobe.encoders.efficientnet_lite import HEAD_DIM, STAGE_CHANNELS
from medprobe.evaluation.metrics import evaluate
from medprobe.probes.fit import fit_probe

SUBSETS = {"head": (), "7": (7,), "6-7": (6, 7), "5-7": (5, 6, 7), "4-7": (4, 5, 6, 7), "3-7": (3, 4, 5, 6, 7), "1-7": tuple(range(1, 8))}


def columns(stages):
    starts = np.cumsum((0,) + STAGE_CHANNELS["efficientnet_lite0"])  # the sweep embeds with Lite0
    cols = [np.arange(starts[s - 1], starts[s]) for s in stages]
    return np.concatenate(cols + [np.arange(starts[-1], starts[-1] + HEAD_DIM)])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--probes", default="logreg")
    parser.add_argument("--selection", default="val")
    parser.add_argument("--subsets", default=",".join(SUBSETS))
    parser.add_argument("--files", default="*.npz")
    args = parser.parse_args()
    print("| dataset | recipe | stages | probe | selection | val AUC (chooses) | test AUC [95% CI] | param | fit s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(Path(args.folder).glob(f"*/{args.files}")):
        d = np.load(path)
        X, y, split, task = d["X"], d["y"], d["split"], str(d["task"])
        y = y.ravel() if task != "multi-label" else y
        tr, va, te = (split == s for s in ("train", "val", "test"))
        for subset in args.subsets.split(","):
            cols = columns(SUBSETS[subset])
            for probe in args.probes.split(","):
                for selection in args.selection.split(","):
                    tick = time.perf_counter()
                    fitted = fit_probe(probe, X[tr][:, cols], y[tr], X[va][:, cols], y[va], task, selection=selection)
                    seconds = time.perf_counter() - tick
                    chooses = fitted.selection.score()  # cv: the best mean CV AUC; val: the best val AUC
                    m = evaluate(y[te], fitted.predict_scores(X[te][:, cols]), task, n_boot=1000, seed=0)
                    lo, hi = m.auc_ci
                    print(f"| {path.parent.name} | {path.stem} | {subset} | {probe} | {selection} | {chooses:.4f} | {m.auc:.3f} [{lo:.3f}, {hi:.3f}] "
                          f"| {fitted.params} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
