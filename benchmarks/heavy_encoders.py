"""The paper's heavy encoders on a CPU: real architectures with random weights, through medprobe's real runtimes.

    python benchmarks/heavy_encoders.py                     # ResNet-50, CLIP ViT-B/32 and B/16, DINOv2 ViT-S/14; 64 images
    python benchmarks/heavy_encoders.py --models resnet50 --runtimes auto --images 32

Throughput does not depend on the weights' values, so each model is the full-size architecture with
random weights, saved in the format its real checkpoint is published in (a torchvision state dict,
open_clip's Hugging Face layout, a transformers folder; as tests/tiny_models.py does for the tiny
ones) and loaded back through `create_encoder(name, weights=folder)`, offline. For the CLIP models
the image tower is the real ViT; the text tower, which embedding never runs, is shrunk to save disk.

Each (model, runtime) runs in its own subprocess (its own peak RSS) on the same real images (HAM10000
JPEGs): pure inference on pre-decoded pixels and `embed()` end to end, alternated, best of two each.
FLOPs per image: `torch.utils.flop_counter.FlopCounterMode` on one image (2 per multiply-add). The
fraction of peak divides achieved GFLOP/s by the best of three 4096^2 fp32 matmuls measured in the same run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import embed_throughput as bench  # the images and the peak measurement are shared

MODELS = ("resnet50", "clip_vit_b32", "clip_vit_b16", "dinov2_vits14")
RUNTIMES = ("auto", "openvino-bf16")
OFFLINE = {"MEDPROBE_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_weights(model, folder):
    """The full-size architecture of `model` with random weights, in its published on-disk format; returns --weights."""
    import torch

    from medprobe.encoders import get_config
    from tiny_models import (
        CLIP_TEXT,
        OPENAI_MEAN,
        OPENAI_STD,
        write_open_clip,
        write_state_dict,
    )

    config = get_config(model)
    folder = Path(folder) / model
    torch.manual_seed(0)
    if config.family == "torchvision":
        import torchvision

        return write_state_dict(folder / config.weights.rsplit("/", 1)[-1], getattr(torchvision.models, config.arch)(weights=None))
    if config.family == "open_clip":
        import open_clip

        real = open_clip.get_model_config(config.arch)
        cfg = {**real, "text_cfg": CLIP_TEXT}  # the real image tower; embedding never runs the text tower
        return write_open_clip(folder, cfg, {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"})
    if config.family == "transformers":
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        # facebook/dinov2-small's config.json and preprocessor_config.json
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                                 image_size=518, layerscale_value=1.0)).save_pretrained(folder)
        BitImageProcessor(do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True, crop_size={"height": 224, "width": 224},
                          do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                          image_std=[0.229, 0.224, 0.225], do_convert_rgb=True).save_pretrained(folder)
        return folder
    raise ValueError(f"no heavy model for family {config.family}")


def worker(args):
    """One (model, runtime): pure inference and end to end, alternated; writes vectors and figures to args.out."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medprobe.embedding.embed import embed
    from medprobe.embedding.options import EmbedOptions
    from medprobe.encoders import create_encoder

    tick = time.perf_counter()
    encoder, transform = create_encoder(args.model, weights=args.weights, runtime=args.runtime)
    # Planned as a real job (10,000 images), so `auto` picks what it picks for one, not eager for a short benchmark.
    encoder.prepare(n_images=10_000, artifacts=Path(os.environ["MEDPROBE_CACHE"]))
    data = bench.dataset("ham", args.images)
    pixels = np.stack([transform(data.images.load(i)) for i in range(args.images)])
    encoder.embed_batch(pixels[: args.batch_size])  # export, compile and the guard, before the clock starts
    setup = time.perf_counter() - tick
    flops = None
    if args.flops:
        from medprobe.encoders.runtimes import plain_attention

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), plain_attention():  # the fused attention kernel is invisible to the counter
            encoder.module(torch.from_numpy(pixels[:1]))
        flops = counter.get_total_flops()
    pure, end_to_end, vectors = 0.0, 0.0, None
    options = EmbedOptions(args.model, use_cache=False, batch_size=args.batch_size, progress=False)
    for _ in range(2):
        tick = time.perf_counter()
        for start in range(0, args.images, args.batch_size):
            encoder.embed_batch(pixels[start : start + args.batch_size])
        pure = max(pure, args.images / (time.perf_counter() - tick))
        tick = time.perf_counter()
        vectors = embed(bench.dataset("ham", args.images), encoder, transform, options).vectors
        end_to_end = max(end_to_end, args.images / (time.perf_counter() - tick))
    np.save(args.out + ".npy", vectors)
    Path(args.out + ".json").write_text(json.dumps({
        "pure": pure, "end_to_end": end_to_end, "setup": setup, "flops": flops, "info": encoder.runtime_info(),
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }, default=str))


def run_all(models, runtimes, images, batch_size, folder, peak32, peak16, printer=print):
    """Every (model, runtime) side by side; returns the rows. The first runtime is the reference for cosines."""
    rows = {}
    printer(f"\nheavy encoders (random weights, real architectures), {images} HAM10000 JPEGs each, batch {batch_size}:")
    printer(f"{'model':<15}{'runtime':<15}{'GFLOP/img':>10}{'pure':>8}{'e2e':>8}{'e2e/pure':>9}{'of fp32 peak':>13}"
            f"{'min cos':>9}{'peak RSS':>10}{'min/10k':>9}  backend")
    for model in models:
        weights = write_weights(model, folder / "weights")
        reference, flops = None, None
        for runtime in runtimes:
            out = str(folder / f"{model}-{runtime}")
            env = dict(os.environ, MEDPROBE_CACHE=str(folder / "cache"), **OFFLINE)
            command = [sys.executable, __file__, "--worker", "--model", model, "--runtime", runtime, "--weights", str(weights),
                       "--images", str(images), "--batch-size", str(batch_size), "--out", out] + (["--flops"] if flops is None else [])
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                printer(f"{model:<15}{runtime:<15} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
                continue
            stats = json.loads(Path(out + ".json").read_text())
            vectors = np.load(out + ".npy")
            flops = flops or stats["flops"]
            reference = vectors if reference is None else reference
            cosine = bench.cosines(vectors, reference)
            gflops = stats["end_to_end"] * flops / 1e9
            peak = peak16 if stats["info"].get("precision") == "bf16" else peak32
            row = {"gflop_per_image": flops / 1e9, "pure_img_per_s": stats["pure"], "img_per_s": stats["end_to_end"],
                   "end_to_end_over_pure": stats["end_to_end"] / stats["pure"], "gflops": gflops,
                   "fraction_of_fp32_peak": gflops / peak32, "fraction_of_own_peak": gflops / peak,
                   "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()), "peak_rss_mb": stats["rss"] / 2**20,
                   "minutes_per_10k": 10_000 / stats["end_to_end"] / 60, "setup_s": stats["setup"], "info": stats["info"]}
            rows[f"{model}/{runtime}"] = row
            printer(f"{model:<15}{runtime:<15}{row['gflop_per_image']:>10.2f}{row['pure_img_per_s']:>8.1f}{row['img_per_s']:>8.1f}"
                    f"{row['end_to_end_over_pure']:>9.2f}{row['fraction_of_fp32_peak']:>13.1%}{row['min_cosine']:>9.4f}"
                    f"{row['peak_rss_mb']:>8.0f}MB{row['minutes_per_10k']:>9.1f}  {stats['info'].get('backend')}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="the first is the reference for the cosines")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    peak32, peak16 = bench.measured_peak("float32"), bench.measured_peak("bfloat16")
    print(f"measured peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s (best of 3 4096^2 matmuls)")
    with tempfile.TemporaryDirectory(prefix="medprobe-heavy-") as tmp:
        rows = run_all(args.models.split(","), args.runtimes.split(","), args.images, args.batch_size, Path(tmp), peak32, peak16)
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_fp32_gflops": peak32, "peak_bf16_gflops": peak16, "models": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
