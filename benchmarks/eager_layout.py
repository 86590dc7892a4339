"""PyTorch eager on the CPU with the module and pixels in the default layout (NCHW) against channels-last, side by side.

    python benchmarks/eager_layout.py                      # efficientnet_lite0, 64 real images, batches of 8 and 32, 1 thread
    python benchmarks/eager_layout.py --threads 2 --repeats 10

medprobe's encoders run channels-last on the CPU (TorchEncoder.module): the exactness guard's fp32 reference, jobs below
AUTO_ONNX_MIN_IMAGES and `--runtime torch`. In one process, the two layouts of the same network take turns on the same
real images (RetinaMNIST's test set, upsampled as a run does); each line gives the median CPU seconds per image of each,
their ratio, and the largest difference between their vectors.
"""

import argparse
import copy
import resource
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "retinamnist.npz"


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", default="8,32", help="batch sizes (8: the guard's reference)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from medprobe.core.memory import reuse_freed_memory
    from medprobe.encoders import create_encoder

    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    encoder, transform = create_encoder(args.encoder, runtime="torch")
    layouts = {"channels-last": encoder.module, "nchw": copy.deepcopy(encoder.module).to(memory_format=torch.contiguous_format)}
    pixels = torch.from_numpy(np.stack([transform(Image.fromarray(a)) for a in np.load(DATA)["test_images"][: args.images]]))
    inputs = {"channels-last": pixels.contiguous(memory_format=torch.channels_last), "nchw": pixels}
    print(f"{args.encoder}, {args.images} images, {args.threads} thread(s), median of {args.repeats} repeats")
    print(f"{'batch':>5}  {'nchw CPU s/img':>14}  {'channels-last':>13}  {'ratio':>5}  max |difference|")
    for batch in map(int, args.batches.split(",")):
        seconds = {name: [] for name in layouts}
        vectors = {}
        with torch.inference_mode():
            for name in layouts:  # warm-up: kernels chosen, the heap grown
                layouts[name](inputs[name][:batch])
            for _ in range(args.repeats):
                for name, module in layouts.items():
                    start = cpu_seconds()
                    vectors[name] = torch.cat([module(inputs[name][i : i + batch]) for i in range(0, args.images, batch)])
                    seconds[name].append((cpu_seconds() - start) / args.images)
        nchw, last = np.median(seconds["nchw"]), np.median(seconds["channels-last"])
        difference = (vectors["nchw"] - vectors["channels-last"]).abs().max().item()
        print(f"{batch:>5}  {nchw:>14.4f}  {last:>13.4f}  {last / nchw:>5.2f}  {difference:.1e}")


if __name__ == "__main__":
    main()
