"""Where `--runtime auto` should start exporting: PyTorch eager against a cold ONNX Runtime (export included), by job size.

    python benchmarks/auto_threshold.py                       # the three Lite encoders, jobs of 8 to 256 images
    python benchmarks/auto_threshold.py --encoders efficientnet_lite0 efficientnet_lite2 --sizes 16,64

For each encoder and job size, in one process and alternated: `eager` builds a fresh encoder and embeds the job with fp32
PyTorch; `onnx cold` builds a fresh encoder with an empty artifacts folder and embeds the same job with ONNX Runtime,
paying the export, the session start and the exactness guard's eager images. Both load the weights. `auto` runs eager
below AUTO_ONNX_MIN_IMAGES and exports at or above it, so the size where `onnx cold / eager` falls under 1 is where the
threshold belongs. The images are real (RetinaMNIST's test set, upsampled as a run does).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medprobe.encoders import create_encoder
from medprobe.encoders.torch_encoder import AUTO_ONNX_MIN_IMAGES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "retinamnist.npz"


def job_seconds(name, runtime, pixels, batch):
    start = time.perf_counter()
    encoder, _ = create_encoder(name, runtime=runtime)
    with tempfile.TemporaryDirectory() as artifacts:
        encoder.prepare(n_images=len(pixels), artifacts=Path(artifacts))
        for _ in encoder.embed_batches((i, pixels[i : i + batch]) for i in range(0, len(pixels), batch)):
            pass
    return time.perf_counter() - start, encoder.backend


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "efficientnet_lite0@stages,up,max", "efficientnet_lite2"],
                        help="encoder names, space-separated (a recipe's own commas stay in its name)")
    parser.add_argument("--sizes", default="8,16,32,64,128,256")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    images = np.load(DATA)["test_images"]
    print(f"AUTO_ONNX_MIN_IMAGES = {AUTO_ONNX_MIN_IMAGES}")
    print(f"{'encoder':34s} {'images':>6s} {'eager s':>8s} {'onnx cold s':>11s} {'onnx/eager':>10s}")
    for name in args.encoders:
        _, transform = create_encoder(name, runtime="torch")
        for size in map(int, args.sizes.split(",")):
            pixels = np.stack([transform(Image.fromarray(a)) for a in images[:size]])
            eager, _ = job_seconds(name, "torch", pixels, args.batch)
            onnx, backend = job_seconds(name, "onnx", pixels, args.batch)
            print(f"{name:34s} {size:6d} {eager:8.2f} {onnx:11.2f} {onnx / eager:10.2f}   ({backend})", flush=True)


if __name__ == "__main__":
    main()
