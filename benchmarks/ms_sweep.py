"""Which second scale, and concatenate or average? Scores the @ms variants from one embedding pass per scale.

    python benchmarks/ms_sweep.py [--datasets retinamnist,...] [--selection val|cv] [--second 1.5,1.1607]

Embeds each dataset (through the embedding store, so a second call embeds nothing) with
`efficientnet_lite0@stages,ms` (224 and 336 px) and with measurement-only configs that run the same network at one
other scale only (260/224 = Lite2's native 260 px), then fits logistic regression
on: each scale alone, the 224 px features concatenated with each larger scale's, and their average. Prints the
selection score (val AUC for 'val', best mean CV AUC over train+val for 'cv'), which is what chooses, beside test AUC.
"""

import argparse
import itertools
from dataclasses import replace

import numpy as np
from recipe_sweep import DATASETS

from medprobe.data.datasets import DataSpec
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import efficientnet_lite
from medprobe.encoders.recipes import MS_SCALE
from medprobe.encoders.registry import get_config
from medprobe.encoders.transforms import make_transform
from medprobe.evaluation.metrics import evaluate
from medprobe.probes.fit import fit_probe

BASE = "efficientnet_lite0@stages"


def one_scale_config(scale):
    """BASE run only at `scale` times its input size (measurement only: its own name, so its own store entry)."""
    config = get_config(BASE)
    return replace(config, name=f"{BASE},x{scale:g}only", extra={**config.extra, "scales": [scale]})


def embedded(data, config):
    encoder = efficientnet_lite.load(config, runtime="onnx")
    return embed(data, encoder, make_transform(config), EmbedOptions(BASE, runtime="onnx", progress=False)).vectors


def normalised(X, how):
    """Feature normalisations that may suit a linear probe on pooled CNN features, applied before its standardisation.

    'sqrt': signed square root (damps the heavy tails of pooled activations); 'stage-l2': each stage's (and the
    head's) block of columns scaled to unit L2 norm per image, so no block dominates by its scale.
    """
    if how == "none":
        return X
    if how == "sqrt":
        return np.sign(X) * np.sqrt(np.abs(X))
    widths = list(efficientnet_lite.STAGE_CHANNELS["efficientnet_lite0"]) + [efficientnet_lite.HEAD_DIM]
    widths = widths * (X.shape[1] // sum(widths))  # one block per stage and scale
    blocks = np.split(X, np.cumsum(widths)[:-1], axis=1)
    return np.hstack([b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12) for b in blocks])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--selection", default="val")
    parser.add_argument("--second", default="1.5,1.1607", help="second scales to try, as multiples of 224 px")
    parser.add_argument("--norm", default="none", help="none, sqrt or stage-l2, joined by ','")
    parser.add_argument("--combos", default="", help="only these feature sets (names as printed, e.g. '224|336' or '224 sqrt'), joined by ','")
    args = parser.parse_args()
    print("| dataset | features | dim | selection | score (chooses) | test AUC [95% CI] | C |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        data, _ = DataSpec(**DATASETS[name]).load()
        # the @ms recipe itself (so the bench finds it in the store): 224 px columns, then 336 px ones
        both = embedded(data, get_config(f"{BASE},ms"))
        base = both[:, : both.shape[1] // 2]
        sets = {"224": base}
        for scale in (float(s) for s in args.second.split(",")):
            size = round(224 * scale)
            other = both[:, both.shape[1] // 2 :] if scale == MS_SCALE else embedded(data, one_scale_config(scale))
            sets[f"{size}"] = other
            sets[f"224|{size}"] = np.hstack([base, other])
            sets[f"mean(224,{size})"] = (base + other) / 2
        for (label, raw), norm in itertools.product(sets.items(), args.norm.split(",")):
            label = label if norm == "none" else f"{label} {norm}"
            if args.combos and label not in args.combos.split(","):
                continue
            print(scored_row(name, label, normalised(raw, norm), data, args.selection), flush=True)


def scored_row(name, label, X, data, selection):
    """A table row: logistic regression on X chosen by `selection` (CV folds keep groups whole), its selection score
    (best mean CV AUC, or val AUC) beside the test AUC it then reaches, which only reports."""
    task = data.task
    y = data.labels.ravel() if task != "multi-label" else data.labels
    tr, va, te = (data.indices(s) for s in ("train", "val", "test"))
    fitted = fit_probe("logreg", X[tr], y[tr], X[va], y[va], task, selection=selection, groups=data.groups_of(tr, va))
    chooses = fitted.selection.score()  # cv: the best mean CV AUC; val: the best val AUC
    se = f" ± {fitted.selection.best_se:.4f}" if selection == "cv" else ""
    m = evaluate(y[te], fitted.predict_scores(X[te]), task, n_boot=1000, seed=0)
    lo, hi = m.auc_ci
    return f"| {name} | {label} | {X.shape[1]} | {selection} | {chooses:.5f}{se} | {m.auc:.4f} [{lo:.3f}, {hi:.3f}] | {fitted.params} |"


if __name__ == "__main__":
    main()
