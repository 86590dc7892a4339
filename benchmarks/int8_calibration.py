"""int8 calibrations of EfficientNet-Lite0 against fp32 on the three real data sets: per-image cosines and test AUCs.

    python benchmarks/int8_calibration.py --calibrations minmax:256,percentile:256 --folder /tmp/int8-cal

For each calibration (ONNX Runtime method : sample size) and data set, `medprobe run --runtime int8` (logreg)
with that calibration, then every image's cosine to the fp32 (`--runtime auto`) embedding of the same image
and the test AUC against the fp32 run's 95 % CI. One in-process run; embeddings land in `--folder`'s cache,
so a second call only reads them. The end-to-end speed of int8 is `embed_throughput.py --variants default,int8`.
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from medprobe.cli import main as medprobe
from medprobe.data.datasets import load_dataset
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import create_encoder, runtimes

sys.path.insert(0, str(Path(__file__).parent))
from embed_throughput import AUC_DATASETS


@contextlib.contextmanager
def calibration(method, images):
    saved = runtimes.CALIBRATION_METHOD, runtimes.CALIBRATION_IMAGES
    runtimes.CALIBRATION_METHOD, runtimes.CALIBRATION_IMAGES = method, images
    try:
        yield
    finally:
        runtimes.CALIBRATION_METHOD, runtimes.CALIBRATION_IMAGES = saved


def run(spec, runtime, cache, out):
    started = time.perf_counter()
    if medprobe(["run", *spec, "--runtime", runtime, "--cache-dir", str(cache), "--out", str(out), "--quiet"]):
        sys.exit(f"medprobe run {' '.join(spec)} --runtime {runtime} failed")
    result = json.loads((out / "results.json").read_text())
    return result, time.perf_counter() - started


def vectors(spec_args, runtime, cache):
    """The run's embeddings, read back from its store (nothing is computed again)."""
    args = dict(zip(spec_args[::2], spec_args[1::2]))
    data = load_dataset(args["--dataset"], data_dir=args.get("--data-dir"))
    encoder, transform = create_encoder("efficientnet_lite0", runtime=runtime)
    embedded = embed(data, encoder, transform, EmbedOptions("efficientnet_lite0", cache_dir=str(cache), progress=False))
    assert embedded.from_cache, "the run's store should hold every image"
    return embedded.vectors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrations", default="minmax:256,percentile:256")
    parser.add_argument("--datasets", default=",".join(AUC_DATASETS))
    parser.add_argument("--folder", type=Path, default=Path("/tmp/medprobe-int8-calibration"))
    parser.add_argument("--runtime", default="int8", choices=runtimes.INT8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cache, report = args.folder / "cache", {}
    for name in args.datasets.split(","):
        spec = AUC_DATASETS[name]
        reference, seconds = run(spec, "auto", cache, args.folder / f"{name}-fp32")
        fp32 = vectors(spec, "auto", cache)
        low, high = reference["metrics"]["test"]["auc_ci"]
        rows = {"fp32": {"auc": reference["metrics"]["test"]["auc"], "auc_ci": [low, high], "seconds": seconds}}
        print(f"{name}: fp32 test AUC {rows['fp32']['auc']:.3f} [{low:.3f}, {high:.3f}]", flush=True)
        for item in args.calibrations.split(","):
            method, images = item.split(":")
            with calibration(method, int(images)):
                result, seconds = run(spec, args.runtime, cache, args.folder / f"{name}-{args.runtime}-{method}-{images}")
            auc = result["metrics"]["test"]["auc"]
            int8 = vectors_cos(spec, args.runtime, method, int(images), cache, fp32)
            rows[item] = {"auc": auc, "inside_fp32_ci": low <= auc <= high, "min_cosine": float(int8.min()), "mean_cosine": float(int8.mean()),
                          "embed_cpu_s": result["timings"].get("embed_cpu_s"), "seconds": seconds,
                          "calibration": result["encoder"]["runtime"]["calibration"]}
            print(f"  {args.runtime} {item:<16} AUC {auc:.3f} {'inside' if rows[item]['inside_fp32_ci'] else 'OUTSIDE'}  "
                  f"cosine min {int8.min():.4f} mean {int8.mean():.4f}  ({seconds:.0f} s)", flush=True)
        report[name] = rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def vectors_cos(spec, runtime, method, images, cache, fp32):
    with calibration(method, images):
        a = vectors(spec, runtime, cache)
    a, b = np.asarray(a, np.float64), np.asarray(fp32, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


if __name__ == "__main__":
    main()
