"""Embedding throughput: a plain PyTorch loop against medprobe's default path and each runtime, side by side.

    python benchmarks/embed_throughput.py                      # everything below, in one run (see docs/speed.md)
    python benchmarks/embed_throughput.py --images 256 --no-rss --no-cold-run --no-auc --no-heavy   # a quick look

Sections: (1) the variants below on the same images, each with its pure-inference rate measured in the
same subprocess; (2) test AUC with 95 % CI of each `--auc-runtimes` on RetinaMNIST, PneumoniaMNIST
(balanced) and HAM10000 mel/nv (`medprobe run`, logreg); (3) the heavy encoders (benchmarks/heavy_encoders.py);
(4) peak RSS at two sizes; (5) a cold `medprobe run`.

Every variant embeds the same real images with the same encoder (the library's default,
EfficientNet-Lite0@stages,up,max: real weights, 260 px) in its own subprocess, one after another, so each has its own peak RSS and none inherits
another's threads or caches. On a shared machine timings are noisy, which is why the ratios to (a),
measured in the same run, are the figures to quote; `--repeats 2` alternates the variants twice and
keeps each one's best.

(a) `plain`: the method as usually coded: torchvision Resize/CenterCrop/ToTensor/Normalize, PIL
    decoding in the loop, batches of 64, `torch.no_grad()`, fp32 eager, torch's default threads.
(b) `default`: `medprobe.embedding.embed.embed()` as `medprobe run` calls it (runtime "auto"), hashing included.
    `run`: the same after the pre-scan (`scan_images`), as `medprobe run` does it: the scan decodes each
    file once and embedding reuses the pixels (decode once); its time is included.
(c) each runtime forced through the same `embed()`: torch (fp32 eager), onnx, openvino (fp32), openvino-bf16,
    bf16 (torch autocast), int8 (ONNX Runtime), openvino-int8 (the same int8 graph on OpenVINO), fast (openvino-int8
    on images upsampled by OpenCV).

`pure` is the same encoder object's `embed_batch` on pixels decoded beforehand (the inference limit of that
runtime), alternated with the end-to-end pass in the same subprocess, best of two each; `e2e/pure` is
the figure issue 15 asks to be >= 0.85.

One-time costs (loading weights, exporting to ONNX, quantising) are reported as `setup s` and left out
of img/s; the cold `medprobe run` at the end pays all of them.

Fraction of peak: achieved GFLOP/s = (FLOPs per image) x (img/s), divided by the machine's fp32 peak.
FLOPs per image are counted by `torch.utils.flop_counter.FlopCounterMode` on one image at the encoder's input size
(convolutions and matrix products, 2 FLOPs per multiply-add; elementwise ops are not counted). The peak
is *measured*, not taken from a datasheet: the best of three 4096x4096 fp32 `torch.matmul`s on all
cores, the fastest dense kernel this machine has (bf16 is measured too and shown for reference).
EfficientNet's depthwise convolutions are memory-bound, so even a perfect runtime stays well under it.
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

from medprobe.embedding.options import (
    DEFAULT_ENCODER as ENCODER,  # every variant embeds with the library's default encoder
)
from medprobe.encoders import get_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDPROBE_SHARED_DATA", ROOT.parent / "shared" / "data"))
VARIANTS = ("plain", "default", "run", "torch", "onnx", "openvino", "openvino-bf16", "bf16", "int8", "openvino-int8", "fast")
AUC_DATASETS = {  # name -> `medprobe run` arguments
    "retinamnist": ["--dataset", "retinamnist", "--data-dir", str(SHARED / "medmnist")],
    "pneumoniamnist_balanced": ["--dataset", str(SHARED / "medmnist" / "pneumoniamnist_balanced.npz")],
    "ham10000_melnv": ["--dataset", str(SHARED / "ham10000_melnv")],
}


# --- the images ----------------------------------------------------------------------------------


def image_source(data, n):
    """(paths or arrays, kind) for the first n images of a real data set, repeating it when n is larger."""
    if data == "ham":
        paths = sorted((SHARED / "ham10000_melnv").rglob("*.jpg"))
        if not paths:
            sys.exit(f"no HAM10000 JPEGs under {SHARED / 'ham10000_melnv'}")
        return [paths[i % len(paths)] for i in range(n)], "files"
    npz = np.load(SHARED / "medmnist" / f"{data}.npz")
    arrays = np.concatenate([npz[f"{split}_images"] for split in ("train", "val", "test")])
    return arrays[np.arange(n) % len(arrays)], "arrays"


def dataset(data, n):
    """A medprobe Dataset over those images (files stay on disk, so memory is what embedding itself uses)."""
    from medprobe.data.datasets import Dataset
    from medprobe.data.sources import ArrayImages, FileImages

    source, kind = image_source(data, n)
    images = FileImages(source) if kind == "files" else ArrayImages([source])
    ids = np.array([f"{i}" for i in range(n)])
    return Dataset(data, "binary", ["a", "b"], ids, np.full(n, "train"), np.zeros(n, int), images)


def pil_images(data, n):
    """The images as the plain loop sees them: one PIL image at a time, decoded on demand."""
    from PIL import Image

    source, kind = image_source(data, n)
    for item in source:
        if kind == "files":
            with Image.open(item) as image:
                yield image.convert("RGB")
        else:
            yield Image.fromarray(item).convert("RGB")


# --- the variants (each runs in its own subprocess) ------------------------------------------------


def run_plain(data, n, batch_size):
    """(a) The loop from a typical notebook: torchvision transforms, batches of 64, eager fp32."""
    import torch
    from torchvision import transforms

    from medprobe.encoders import create_encoder

    tick = time.perf_counter()
    encoder, _ = create_encoder(ENCODER)
    model, config = encoder.module, encoder.config
    preprocess = transforms.Compose(
        [
            transforms.Resize(config.input_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(config.input_size),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )
    setup = time.perf_counter() - tick
    tick = time.perf_counter()
    out, batch = [], []
    with torch.no_grad():
        for image in pil_images(data, n):
            batch.append(preprocess(image))
            if len(batch) == batch_size:
                out.append(model(torch.stack(batch)).numpy())
                batch = []
        if batch:
            out.append(model(torch.stack(batch)).numpy())
    return np.concatenate(out), setup, time.perf_counter() - tick, {"backend": f"torch {torch.__version__} eager fp32"}


def run_medprobe(data, n, batch_size, runtime, scan=False):
    """(b) and (c): embed() exactly as the CLI calls it, with the runtime chosen (None: the default),
    alternated with pure inference of the same encoder on pre-decoded pixels; best of two each."""
    from medprobe.data.scan import scan_images
    from medprobe.embedding.embed import embed, resized_rows
    from medprobe.embedding.options import EmbedOptions
    from medprobe.encoders import create_encoder

    tick = time.perf_counter()
    encoder, transform = create_encoder(ENCODER, runtime=runtime or "auto")
    # Pay the one-time costs (weights, ONNX export, quantisation, guard) before the clock starts.
    encoder.prepare(n_images=n, artifacts=Path(os.environ["MEDPROBE_CACHE"]))
    warm = dataset(data, min(n, 256))
    pixels = np.stack([transform(warm.images.load(i)) for i in range(len(warm))])  # the pure pass cycles through these
    job = dataset(data, n)
    encoder.calibrate_on(job.content_digests(), lambda rows: resized_rows(job.images, transform, rows))  # int8: embed()'s calibration
    encoder.embed_batch(pixels[:batch_size])
    setup = time.perf_counter() - tick
    options = EmbedOptions(ENCODER, use_cache=False, batch_size=batch_size, progress=False)
    pure = end_to_end = float("inf")
    for _ in range(2):
        tick = time.perf_counter()
        for start in range(0, n, batch_size):
            encoder.embed_batch(pixels[np.arange(start, min(start + batch_size, n)) % len(pixels)])
        pure = min(pure, time.perf_counter() - tick)
        tick = time.perf_counter()
        images = dataset(data, n)
        if scan:
            images, _ = scan_images(images, check=False)
        vectors = embed(images, encoder, transform, options).vectors
        end_to_end = min(end_to_end, time.perf_counter() - tick)
    return vectors, setup, end_to_end, {**encoder.runtime_info(), "pure_s": pure}


def worker(args):
    """Run one variant and write its embeddings and figures to args.out."""
    if args.worker == "plain":
        vectors, setup, seconds, info = run_plain(args.data, args.images, args.batch_size)
    else:
        runtime = None if args.worker in ("default", "run") else args.worker
        vectors, setup, seconds, info = run_medprobe(args.data, args.images, args.batch_size, runtime, scan=args.worker == "run")
    np.save(args.out + ".npy", vectors)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.out + ".json").write_text(json.dumps({"setup": setup, "seconds": seconds, "rss": peak, "info": info}, default=str))


def spawn(variant, args, folder, tag):
    out = str(folder / f"{variant}-{tag}")
    env = dict(os.environ, MEDPROBE_CACHE=str(folder / "cache"))
    command = [sys.executable, __file__, "--worker", variant, "--out", out, "--data", args.data, "--images", str(args.images), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return np.load(out + ".npy"), json.loads(Path(out + ".json").read_text())


# --- machine peak and model FLOPs ------------------------------------------------------------------


def measured_peak(dtype_name, n=4096):
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(3))
    return 2 * n**3 / best / 1e9


def _timed(fn):
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def flops_per_image():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medprobe.encoders import create_encoder

    encoder, _ = create_encoder(ENCODER)
    size = encoder.config.input_size
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder.module(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


# --- memory at two dataset sizes, and a cold `medprobe run` -----------------------------------------


def rss_worker(args):
    """Embed args.images images with the default path, cache on, and report this process's peak RSS."""
    from medprobe.embedding.embed import embed
    from medprobe.embedding.options import EmbedOptions
    from medprobe.encoders import create_encoder

    encoder, transform = create_encoder(ENCODER)
    tick = time.perf_counter()
    result = embed(dataset(args.data, args.images), encoder, transform, EmbedOptions(ENCODER, batch_size=args.batch_size, progress=False))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rss": peak, "seconds": time.perf_counter() - tick, "shape": list(result.vectors.shape), "backend": encoder.backend}))


def measure_rss(n, args, folder):
    env = dict(os.environ, MEDPROBE_CACHE=str(folder / f"rss-{n}"))
    command = [sys.executable, __file__, "--rss-worker", "--data", args.data, "--images", str(n), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"RSS run at {n} images failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_run(folder):
    """`medprobe run` on RetinaMNIST with an empty cache (no embeddings, no exported graph), end to end."""
    cache, out = folder / "cold-cache", folder / "cold-run"
    command = [sys.executable, "-m", "medprobe.cli", "run", "--dataset", "retinamnist", "--data-dir", str(SHARED / "medmnist"),
               "--cache-dir", str(cache), "--out", str(out), "--quiet"]
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, MEDPROBE_CACHE=str(cache)))
    seconds = time.perf_counter() - tick
    if done.returncode:
        sys.exit(f"cold run failed:\n{done.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return seconds, results


# --- the report ------------------------------------------------------------------------------------


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def auc_runs(runtimes, folder, printer=print):
    """Test AUC with 95 % CI of each runtime on the three real data sets (`medprobe run`, logreg), one cache per runtime."""
    rows = {}
    printer(f"\ntest AUC [95 % CI] by runtime (medprobe run, {ENCODER} with the default probe and selection); * = outside the first runtime's CI:")
    printer(f"{'runtime':<15}" + "".join(f"{name:>30}" for name in AUC_DATASETS) + f"{'embed img/s':>13}")
    for runtime in runtimes:
        cells, rates = {}, []
        for name, spec in AUC_DATASETS.items():
            out, cache = folder / f"auc-{name}-{runtime}", folder / f"auc-cache-{runtime}"
            command = [sys.executable, "-m", "medprobe.cli", "run", *spec, "--runtime", runtime, "--cache-dir", str(cache), "--out", str(out), "--quiet"]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, MEDPROBE_CACHE=str(cache)), check=False)
            if done.returncode:
                sys.exit(f"medprobe run {name} --runtime {runtime} failed:\n{done.stderr[-3000:]}")
            result = json.loads((out / "results.json").read_text())
            test = result["metrics"]["test"]
            cells[name] = {"auc": test["auc"], "auc_ci": test["auc_ci"], "n_test": result["dataset"]["n"]["test"],
                           "embed_s": result["timings"]["embed_s"], "backend": result.get("encoder", {}).get("runtime", {})}
            rates.append(sum(result["dataset"]["n"].values()) / result["timings"]["embed_s"])
        rows[runtime] = cells
        reference = rows[runtimes[0]]
        line = f"{runtime:<15}"
        for name, cell in cells.items():
            low, high = reference[name]["auc_ci"]
            flag = "" if low <= cell["auc"] <= high else "*"
            line += f"{cell['auc']:>13.3f}{flag:1}[{cell['auc_ci'][0]:.3f}, {cell['auc_ci'][1]:.3f}]"
        printer(line + f"{np.mean(rates):>13.1f}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images per variant (default 512)")
    parser.add_argument("--data", default="ham", help="ham (HAM10000 JPEGs), retinamnist or pneumoniamnist_balanced")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=1, help="alternate all variants this many times; keep each one's best")
    parser.add_argument("--rss-sizes", default="1000,10000", help="image counts for the peak-RSS comparison")
    parser.add_argument("--auc-runtimes", default="auto,openvino-bf16,fast", help="runtimes whose test AUCs are compared (first: the reference)")
    parser.add_argument("--heavy-images", type=int, default=64, help="images per heavy encoder and runtime")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--no-cold-run", action="store_true")
    parser.add_argument("--no-auc", action="store_true")
    parser.add_argument("--no-heavy", action="store_true")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rss-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.rss_worker:
        return rss_worker(args)

    started = time.perf_counter()
    variants = [v for v in args.variants.split(",") if v]
    for needed in ("default", "plain"):
        if needed not in variants:
            variants.insert(0, needed)
    report = {"images": args.images, "data": args.data, "batch_size": args.batch_size, "cores": len(os.sched_getaffinity(0)),
              "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="medprobe-bench-") as tmp:
        folder = Path(tmp)
        peak32, peak16 = measured_peak("float32"), measured_peak("bfloat16")
        flops = flops_per_image()
        report.update(peak_fp32_gflops=peak32, peak_bf16_gflops=peak16, gflop_per_image=flops / 1e9)
        print(f"{args.images} {args.data} images, {ENCODER} at {get_config(ENCODER).input_size} px, batch {args.batch_size}, {report['cores']} cores, "
              f"load average {report['load_average_at_start'][0]:.1f}")
        print(f"measured peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s (best of 3 4096^2 matmuls); "
              f"{flops / 1e9:.3f} GFLOP per image (FlopCounterMode: conv + matmul)\n")

        results = {}
        for repeat in range(args.repeats):
            for variant in variants:
                vectors, stats = spawn(variant, args, folder, repeat)
                best = results.get(variant)
                if best is None or stats["seconds"] < best[1]["seconds"]:
                    results[variant] = (vectors, stats)

        reference = results["plain"][0]
        base = args.images / results["plain"][1]["seconds"]
        default = args.images / results["default"][1]["seconds"]
        print(f"{'variant':<18}{'img/s':>7}{'pure':>7}{'e2e/pure':>9}{'x (a)':>7}{'x (b)':>7}{'min cos':>9}{'mean cos':>9}"
              f"{'peak RSS':>10}{'GFLOP/s':>8}{'of peak':>8}{'setup s':>8}  backend")
        rows = {}
        for variant in variants:
            vectors, stats = results[variant]
            speed = args.images / stats["seconds"]
            info = stats["info"]
            pure = args.images / info["pure_s"] if "pure_s" in info else None
            gflops = speed * flops / 1e9
            cos = cosines(vectors, reference)
            backend = info.get("backend", "")
            if info.get("guard"):
                backend += f"; guard min cos {info['guard']['min_cosine']}"
            label = {"plain": "(a) plain", "default": "(b) default", "run": "(b) run (scan+embed)"}.get(variant, f"(c) {variant}")
            pure_text = f"{pure:>7.1f}{speed / pure:>9.3f}" if pure else f"{'':>7}{'':>9}"
            print(f"{label:<18}{speed:>7.1f}{pure_text}{speed / base:>7.2f}{speed / default:>7.2f}{cos.min():>9.5f}{cos.mean():>9.5f}"
                  f"{stats['rss'] / 2**20:>8.0f}MB{gflops:>8.1f}{gflops / peak32:>8.1%}{stats['setup']:>8.1f}  {backend}")
            rows[variant] = {"img_per_s": speed, "pure_img_per_s": pure, "end_to_end_over_pure": speed / pure if pure else None,
                             "ratio": speed / base, "ratio_to_default": speed / default, "min_cosine": float(cos.min()),
                             "mean_cosine": float(cos.mean()), "peak_rss_mb": stats["rss"] / 2**20, "gflops": gflops,
                             "fraction_of_fp32_peak": gflops / peak32, "setup_s": stats["setup"], "info": info}
        report["variants"] = rows

        if not args.no_auc:
            report["auc"] = auc_runs(args.auc_runtimes.split(","), folder)

        if not args.no_heavy:
            import heavy_encoders

            report["heavy"] = heavy_encoders.run_all(heavy_encoders.MODELS, heavy_encoders.RUNTIMES, args.heavy_images, 32, folder,
                                                     peak32, peak16)

        if not args.no_rss:
            sizes = [int(s) for s in args.rss_sizes.split(",")]
            print(f"\npeak RSS of the default path (cache on, {args.data} images repeated), one subprocess each:")
            report["rss"] = {}
            for n in sizes:
                got = measure_rss(n, args, folder)
                report["rss"][n] = got
                print(f"  {n:>6} images: {got['rss'] / 2**20:7.0f} MB  ({n / got['seconds']:.1f} img/s, {got['backend']})")
            low, high = report["rss"][sizes[0]]["rss"], report["rss"][sizes[-1]]["rss"]
            print(f"  ratio {sizes[-1]} / {sizes[0]}: {high / low:.3f} (target <= 1.2)")

        if not args.no_cold_run:
            seconds, results_json = cold_run(folder)
            timings = results_json["timings"]
            report["cold_run"] = {"seconds": seconds, "timings": timings, "test_auc": results_json["metrics"]["test"]["auc"]}
            parts = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in timings.items() if k in ("load_s", "embed_s", "fit_s", "evaluate_s"))
            print(f"\ncold `medprobe run --dataset retinamnist` (empty cache, ONNX export included): {seconds:.1f} s wall "
                  f"(seconds: {parts}; the rest is start-up and writing results), test AUC {report['cold_run']['test_auc']:.3f}; target <= 45 s")
    report["benchmark_s"] = time.perf_counter() - started
    report["load_average_at_end"] = os.getloadavg()
    print(f"\nwhole benchmark: {report['benchmark_s'] / 60:.1f} min; load average at the end {report['load_average_at_end'][0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
