"""Where OpenVINO spends an encoder's time: per-layer counters (PERF_COUNT) summed by layer type and kernel.

    python benchmarks/openvino_profile.py                                   # the default encoder, openvino-int8
    python benchmarks/openvino_profile.py --encoder efficientnet_lite0@stages,ms --runtime openvino

This found that upsampling inside the graph (what `@up` did until its fourth round, and `@ms` still does for its
second scale) took 15 % of the int8 network's time (docs/speed.md). The graph is built through the library itself
(export, and for int8 quantisation calibrated on the batch of random pixels used here), then compiled with one
thread and one request, so the shares do not depend on how busy the machine is; the rates do.
"""

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from medprobe.embedding.options import DEFAULT_ENCODER
from medprobe.encoders import create_encoder, runtimes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--runtime", default="openvino-int8", choices=[r for r in runtimes.OPENVINO if r != "fast"])
    parser.add_argument("--batch", type=int, default=16, help="images per request")
    parser.add_argument("--top", type=int, default=8, help="layer types shown")
    args = parser.parse_args()

    import openvino as ov

    with tempfile.TemporaryDirectory() as folder:
        encoder, _ = create_encoder(args.encoder, runtime=args.runtime)
        encoder.prepare(args.batch, Path(folder))
        size = encoder.config.input_size
        pixels = np.random.default_rng(0).normal(size=(args.batch, encoder.config.channels, size, size)).astype(np.float32)
        encoder.embed_batch(pixels)  # exports (and quantises) the graph the runtime runs
        precision = "int8" if args.runtime in runtimes.INT8 else "fp32"
        graph = next(Path(folder, "_onnx").glob(f"*-{precision}-*.onnx"))
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(graph)), "CPU", {
            "INFERENCE_PRECISION_HINT": runtimes.OPENVINO_PRECISION[args.runtime], "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        for _ in range(2):
            request.infer({0: pixels})
        rounds, started = 3, time.perf_counter()
        for _ in range(rounds):
            request.infer({0: pixels})
        per_image = (time.perf_counter() - started) / (rounds * args.batch) * 1000
        spent = Counter()
        for layer in request.get_profiling_info():  # the last request's counters
            spent[(layer.node_type, layer.exec_type)] += layer.real_time.total_seconds()
    total = sum(spent.values())
    print(f"{args.encoder}, {args.runtime}, {size} px, {args.batch} images a request, 1 thread: {per_image:.2f} ms an image")
    for (kind, kernel), seconds in spent.most_common(args.top):
        print(f"{100 * seconds / total:5.1f} %  {kind:<18} {kernel}")


if __name__ == "__main__":
    main()
