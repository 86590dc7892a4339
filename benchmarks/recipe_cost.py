"""Embedding cost of each feature recipe, side by side: same pre-decoded images, same runtime, rounds interleaved.

    python benchmarks/recipe_cost.py --images 64 --rounds 3 [--runtime onnx]

Prints img/s per recipe (encoder time only; decoding and resizing are the same for every recipe but @pad) and its
ratio to the plain encoder. Interleaving the rounds spreads load from other work evenly over the recipes.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from medprobe.encoders import create_encoder

RECIPES = ["efficientnet_lite0", "efficientnet_lite0@stages", "efficientnet_lite0@stages,pad", "efficientnet_lite0@stages,tta",
           "efficientnet_lite0@stages,ms", "efficientnet_lite0@stages,tta8", "efficientnet_lite2@stages"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", default="onnx")
    parser.add_argument("--recipes", default=";".join(RECIPES), help="encoder names joined by ;")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    encoders = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.recipes.split(";"):
            encoder, _ = create_encoder(name, runtime=args.runtime)
            encoder.prepare(args.images, Path(folder))
            size = encoder.config.input_size
            pixels = rng.normal(size=(args.images, 3, size, size)).astype(np.float32)
            encoder.embed_batch(pixels[:8])  # export, guard and warm-up outside the timing
            encoders[name] = (encoder, pixels)
        seconds = dict.fromkeys(encoders, 0.0)
        for _ in range(args.rounds):
            for name, (encoder, pixels) in encoders.items():
                tick = time.perf_counter()
                for i in range(0, len(pixels), 32):
                    encoder.embed_batch(pixels[i : i + 32])
                seconds[name] += time.perf_counter() - tick
    plain = next(iter(seconds.values()))
    print(f"| recipe | dim | backend | img/s | time vs {next(iter(seconds))} |")
    print("|---|---|---|---|---|")
    for name, (encoder, _) in encoders.items():
        rate = args.images * args.rounds / seconds[name]
        print(f"| {name} | {encoder.config.embed_dim} | {encoder.backend.split(' (')[0]} | {rate:.1f} | {seconds[name] / plain:.2f}x |")


if __name__ == "__main__":
    main()
