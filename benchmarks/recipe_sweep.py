"""Embed the shared datasets with EfficientNet recipes once (into the embedding store) and save the matrices.

    python benchmarks/recipe_sweep.py --out /tmp/sweep [--recipes all,all+tta,...] [--encoder efficientnet_lite0]

"all" is a measurement-only recipe: pooled outputs of all 7 stages then the head (2064-d for Lite0), so any
subset of stages can be scored from one embedding pass (the head's 1280 columns are the plain embedding).
Writes OUT/<dataset>/<recipe>.npz (X, y, split, cost) for recipe_select.py.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from medprobe.data.datasets import DataSpec
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import efficientnet_lite
from medprobe.encoders.registry import get_config
from medprobe.encoders.transforms import make_transform

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATASETS = {
    "retinamnist": dict(dataset="retinamnist", data_dir=str(SHARED / "medmnist")),
    "pneumoniamnist_balanced": dict(dataset=str(SHARED / "medmnist" / "pneumoniamnist_balanced.npz")),
    "ham10000_by_lesion": dict(dataset=str(SHARED / "ham10000_melnv"), metadata=str(SHARED / "ham10000_melnv" / "metadata.csv"),
                               group="lesion_id", resplit=True),
}


def all_stages_config(encoder, extra_recipes):
    """The @stages config with every stage pooled (measurement only; its own name and cache entry)."""
    suffix = ",".join(["stages", *extra_recipes])
    config = get_config(f"{encoder}@{suffix}")
    stages = list(range(1, 8))
    dim = efficientnet_lite.HEAD_DIM + sum(efficientnet_lite.STAGE_CHANNELS[encoder])
    return replace(config, name=config.name.replace("stages", "stages1-7"), embed_dim=dim, extra={**config.extra, "stages": stages})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--recipes", default="all,all+tta,all+pad,all+tta8")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args()
    for name in args.datasets.split(","):
        data, _ = DataSpec(**DATASETS[name]).load()
        for recipe in args.recipes.split(","):
            extra = [r for r in recipe.split("+")[1:]]
            config = all_stages_config(args.encoder, extra)
            encoder = efficientnet_lite.load(config, runtime="onnx")
            embedded = embed(data, encoder, make_transform(config), EmbedOptions(args.encoder, runtime="onnx", progress=False))
            split = np.array([""] * len(data.labels), dtype=object)
            for s in ("train", "val", "test"):
                split[data.indices(s)] = s
            folder = Path(args.out) / name
            folder.mkdir(parents=True, exist_ok=True)
            cost = embedded.cost
            np.savez(folder / f"{args.encoder}_{recipe}.npz", X=embedded.vectors, y=data.labels, split=split.astype(str),
                     task=data.task, wall_s=cost["wall_s"], cpu_s=cost["cpu_s"], n=len(data.labels))
            print(name, recipe, embedded.vectors.shape, f"{len(data.labels) / cost['wall_s']:.1f} img/s (store-recorded wall)",
                  f"computed now {cost.get('computed_now')}", flush=True)


if __name__ == "__main__":
    main()
