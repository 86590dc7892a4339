"""Other ways of pooling the same feature maps: does max, standard deviation or a 2x2 grid beat the global average?

    python benchmarks/pool_sweep.py [--datasets retinamnist,...] [--selection cv] [--combos avg,avg+max,...]
        [--encoders "efficientnet_lite0@stages,up;efficientnet_lite2@stages"] [--interpolation bilinear]

One embedding pass per dataset (through the embedding store) runs the default recipe's network
(`efficientnet_lite0@stages,up`: 260 px, stages 1-7 and the head) and pools every tapped feature map four ways:
the global average (these columns are exactly the default's), the global max, the per-channel standard
deviation, and the head's 2x2 grid of averages (quadrants overlap by a row when the map's side is odd, as
adaptive pooling does). Logistic regression is then fitted on column blocks of it; prints the selection score
(best mean CV AUC over train+val, or val AUC) beside test AUC, which only reports.
"""

import argparse
from dataclasses import replace

import numpy as np
from ms_sweep import scored_row
from recipe_sweep import DATASETS

from medprobe.data.datasets import DataSpec
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import efficientnet_lite
from medprobe.encoders.registry import get_config
from medprobe.encoders.torch_encoder import TorchEncoder
from medprobe.encoders.transforms import make_transform

BASE = "efficientnet_lite0@stages,up"


def blocks(base):
    """{pooling: (first column, end)} of the four-way vector of encoder `base` (an EfficientNet-Lite @stages)."""
    tapped = sum(efficientnet_lite.STAGE_CHANNELS[base.split("@")[0]]) + efficientnet_lite.HEAD_DIM
    return {"avg": (0, tapped), "max": (tapped, 2 * tapped), "std": (2 * tapped, 3 * tapped),
            "grid": (3 * tapped, 3 * tapped + 4 * efficientnet_lite.HEAD_DIM)}


def pooled_four_ways(network, taps):
    import torch

    class FourPools(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            maps = efficientnet_lite.tapped_maps(self.net, pixels, taps)
            head = maps[-1]
            side = head.shape[2]
            half = (side + 1) // 2
            grid = [head[:, :, r:r + half, c:c + half].mean(dim=(2, 3)) for r in (0, side - half) for c in (0, side - half)]
            return torch.cat(efficientnet_lite.pooled_maps(maps, ("max", "std")) + grid, dim=1)

    return FourPools(network)


def encoder(base, interpolation):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    config = get_config(base)
    # its own store entry; "pools4s" since the std columns are the recipe's centred ones (the old "pools4" stores held
    # E[x²] - E[x]²), so no store of the old computation is read back under this name
    name = f"{base},pools4s" + ("" if interpolation == config.interpolation else f",{interpolation}")
    config = replace(config, name=name, embed_dim=blocks(base)["grid"][1], interpolation=interpolation)

    def build():
        network = EfficientNet.from_name(config.arch, image_size=config.input_size)
        network.load_state_dict(torch.load(efficientnet_lite._packaged_weights(config), map_location="cpu", weights_only=True))
        return pooled_four_ways(network, set(efficientnet_lite.stage_ends(network)))

    return config, TorchEncoder(config, build, "cpu", "onnx")


def columns(parts, combo):
    """The combo's pooling blocks of each encoder's four-way vector, side by side (a fusion when there are several)."""
    return np.hstack([X[:, slice(*blocks(base)[b])] for base, X in parts for b in combo.split("+")])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--selection", default="cv")
    parser.add_argument("--combos", default="avg,avg+max,avg+std,avg+grid,avg+max+std")
    parser.add_argument("--interpolation", default="bicubic", help="how the transform resizes the images (Pillow's filter name)")
    parser.add_argument("--encoders", default=BASE, help="EfficientNet-Lite @stages encoders joined by ';' (fused)")
    args = parser.parse_args()
    encoders = [(base, *encoder(base, args.interpolation)) for base in args.encoders.split(";")]
    print("| dataset | pooling | dim | selection | score (chooses) | test AUC [95% CI] | C |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        data, _ = DataSpec(**DATASETS[name]).load()
        parts = [(base, embed(data, enc, make_transform(config), EmbedOptions(base, runtime="onnx", progress=False)).vectors)
                 for base, config, enc in encoders]
        for combo in args.combos.split(","):
            print(scored_row(name, combo, columns(parts, combo), data, args.selection), flush=True)


if __name__ == "__main__":
    main()
