"""How often a saved model's out-of-distribution flag fires, on its own test images and on another modality's.

Fits one model per shared data set with `fit --save` (logreg, --selection val: the index does not depend on the probe),
then sends every test image of every data set to every model's index (`medprobe.probes.index`) and prints the flag
rate: near FLAG_PERCENTILE's nominal 1 % on the diagonal (in distribution), >= 95 % off it (issue 25's target).
The table in docs/serving.md is this script's output.

    .venv/bin/python benchmarks/serve_ood.py                      # default encoder, full test splits
    .venv/bin/python benchmarks/serve_ood.py --encoder efficientnet_lite0 --limit 200
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medprobe.data.datasets import DataSpec
from medprobe.embedding.embed import embed
from medprobe.embedding.options import DEFAULT_ENCODER, EmbedOptions
from medprobe.encoders import create_encoder
from medprobe.probes.index import FLAG_PERCENTILE, TrainingIndex
from medprobe.probes.spec import ProbeSpec
from medprobe.workflows.run import EvalOptions, run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "HAM10000": DataSpec(str(SHARED / "ham10000_melnv")),
    "RetinaMNIST": DataSpec(str(SHARED / "medmnist" / "retinamnist.npz")),
    "PneumoniaMNIST": DataSpec(str(SHARED / "medmnist" / "pneumoniamnist_balanced.npz")),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--limit", type=int, help="at most this many test images per data set (seeded sample)")
    parser.add_argument("--cache-dir", help="embedding cache (default the user cache)")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    options = EmbedOptions(args.encoder, cache_dir=args.cache_dir, progress=False)
    encoder, transform = create_encoder(args.encoder)
    started = time.perf_counter()
    indexes, tests = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in DATASETS.items():
            run(spec, options, ProbeSpec("logreg", selection="val"), EvalOptions(n_boot=200), save=Path(tmp) / name)
            meta = json.loads((Path(tmp) / name / "model.json").read_text())
            indexes[name] = TrainingIndex.read(Path(tmp) / name, meta["index"])
            data, _ = spec.load()
            test = data.indices("test")
            if args.limit and len(test) > args.limit:
                test = np.sort(np.random.default_rng(0).choice(test, args.limit, replace=False))
            tests[name] = embed(data.subset(test, check=False), encoder, transform, options).vectors
    rows = {}
    for model, index in indexes.items():
        rows[model] = {}
        for source, vectors in tests.items():
            ood = index.out_of_distribution(index.similarities(vectors))
            rows[model][source] = {"n": len(ood), "flagged": sum(o["flagged"] for o in ood),
                                   "median_percentile": float(np.median([o["percentile"] for o in ood]))}
    print(f"encoder {args.encoder}; flag above the {FLAG_PERCENTILE:g}th percentile of the training images' own "
          f"K-th neighbour distance (K={next(iter(indexes.values())).k}); {time.perf_counter() - started:.0f} s\n")
    print("| model (training images) | images sent | n | flagged | rate | median percentile |")
    print("|---|---|---:|---:|---:|---:|")
    for model, by_source in rows.items():
        for source, r in by_source.items():
            kind = "in distribution" if source == model else "other modality"
            print(f"| {model} ({len(indexes[model].ids)}) | {source} test ({kind}) | {r['n']} | {r['flagged']} | "
                  f"{100 * r['flagged'] / r['n']:.1f} % | {r['median_percentile']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"encoder": args.encoder, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
