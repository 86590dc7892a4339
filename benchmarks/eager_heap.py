"""PyTorch eager on the CPU with glibc's default heap against medprobe's (core.memory.reuse_freed_memory), side by side.

    python benchmarks/eager_heap.py                      # efficientnet_lite0, 128 images, batches of 32, 1 and 2 threads
    python benchmarks/eager_heap.py --images 256 --threads 2 --repeats 3

Each measurement is a fresh process (a heap setting lasts for the process), the two settings alternated: it builds the
encoder, embeds one warm-up batch, then embeds the job, and reports the job's wall time, user and system CPU seconds and
minor page faults. The images are real (RetinaMNIST's test set, upsampled as a run does).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "retinamnist.npz"


def child(heap, encoder_name, images, threads, batch):
    import torch
    from PIL import Image

    from medprobe.encoders import create_encoder, torch_encoder

    torch.set_num_threads(threads)
    if heap == "default":
        torch_encoder.reuse_freed_memory = lambda: False  # glibc as it comes
    encoder, transform = create_encoder(encoder_name, runtime="torch")
    pixels = np.stack([transform(Image.fromarray(a)) for a in np.load(DATA)["test_images"][:images]])
    encoder.embed_batch(pixels[:batch])  # the network built, the heap set, the kernels warm
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for first in range(0, len(pixels), batch):
        encoder.embed_batch(pixels[first : first + batch])
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": wall, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
                      "faults": after.ru_minflt - before.ru_minflt}))


def measure(heap, args, threads):
    command = [sys.executable, __file__, "--child", heap, "--encoder", args.encoder, "--images", str(args.images),
               "--threads", str(threads), "--batch", str(args.batch)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["default", "reused"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.encoder, args.images, int(args.threads), args.batch)
    print(f"{args.encoder}, {args.images} images in batches of {args.batch}, PyTorch eager fp32; per job, median of {args.repeats}")
    print(f"{'threads':>7s} {'heap':>8s} {'wall s':>7s} {'user s':>7s} {'sys s':>7s} {'faults':>9s}")
    for threads in map(int, args.threads.split(",")):
        runs = {"default": [], "reused": []}
        for _ in range(args.repeats):
            for heap in runs:
                runs[heap].append(measure(heap, args, threads))
        median = {heap: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for heap, rs in runs.items()}
        for heap, m in median.items():
            print(f"{threads:7d} {heap:>8s} {m['wall_s']:7.2f} {m['user_s']:7.2f} {m['sys_s']:7.2f} {m['faults']:9.0f}")
        cpu = {heap: m["user_s"] + m["sys_s"] for heap, m in median.items()}
        print(f"{threads:7d} {'ratio':>8s} {median['reused']['wall_s'] / median['default']['wall_s']:7.2f}   "
              f"CPU (user+sys) reused/default {cpu['reused'] / cpu['default']:.2f}")


if __name__ == "__main__":
    main()
