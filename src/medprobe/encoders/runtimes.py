"""Fast CPU backends for a frozen PyTorch encoder: ONNX Runtime (fp32, opt-in int8), OpenVINO (fp32, opt-in bf16;
optional package), and the exactness guard.

Measured on a 2-core Zen 4 (EfficientNet-Lite0, 224 px, real MedMNIST / HAM10000 images):
ONNX Runtime fp32 is 3-5x PyTorch eager with embeddings equal to ~1e-6, so it is the default.
bf16 (autocast, channels-last) is ~2x faster again on AVX512-BF16 but its per-image cosine to
fp32 is only 0.988-0.995 on these images, below the 0.999 guard, so it is opt-in, as is int8.
OpenVINO's bf16 (openvino-bf16) is ~1.9x ONNX Runtime fp32 on pre-decoded pixels at a mean per-image
cosine of 0.994-0.998, and kept every test AUC inside the fp32 CI on three data sets; opt-in all the
same (docs/speed.md says why). `fast` is openvino-int8 on images upsampled by OpenCV: 2.70x the default end to end
on 512 HAM10000 JPEGs, every test AUC inside the fp32 CI, opt-in (docs/speed.md says why it is not the default).
The exported .onnx files live in the cache folder (`_onnx/`), keyed by the encoder config and
a fingerprint of the weights, so they are built once per machine and never committed.
"""

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.core.caught import caught_warnings
from medprobe.core.cores import usable_cores
from medprobe.core.errors import EncoderError
from medprobe.core.files import atomic_target

log = logging.getLogger(__name__)

# see medprobe.encoders.torch_encoder for what each runs
RUNTIMES = ("auto", "torch", "onnx", "openvino", "openvino-bf16", "bf16", "int8", "openvino-int8", "fast")
APPROXIMATE = ("bf16", "int8", "openvino-bf16", "openvino-int8", "fast")
INT8 = ("int8", "openvino-int8", "fast")  # the same calibrated int8 QDQ graph, run by ONNX Runtime or by OpenVINO
OPENVINO = ("openvino", "openvino-bf16", "openvino-int8", "fast")  # need the optional `openvino` package (pip install 'medprobe[openvino]')
# openvino-int8: the graph's int8 parts run in int8 whatever the hint; f32 keeps the rest (pooling, ...) out of bf16
OPENVINO_PRECISION = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32", "fast": "f32"}
# `fast` is openvino-int8 on images upsampled by OpenCV instead of Pillow (transforms.Transform); the resize library
# is part of the preprocessing policy, so `fast` and openvino-int8 never share a store entry. Needs `pip install 'medprobe[fast]'`.
RESIZE_LIBRARY = {"fast": "opencv"}
# Every fast mode must give each image an embedding with cosine >= MIN_COSINE to fp32 PyTorch eager.
MIN_COSINE = 0.999
GUARD_IMAGES = 8
OPSET = 17
# int8 activation ranges come from a sample of the job's own images chosen by content, not by position: the
# CALIBRATION_IMAGES distinct images with the smallest SHA-256. The same data set always gives the same sample,
# hence the same graph and the same store key, whatever order it is listed in and whatever is already stored.
CALIBRATION_IMAGES = 256
CALIBRATION_METHOD = "minmax"


def check_installed(runtime):
    """An OpenVINO runtime is asked for by name, so a missing package is an error before any work, not a silent fallback."""
    if runtime in OPENVINO and importlib.util.find_spec("openvino") is None:
        extra = "fast" if runtime == "fast" else "openvino"
        raise EncoderError(f"--runtime {runtime} needs OpenVINO, which is not installed: pip install 'medprobe[{extra}]' "
                           "(or pip install openvino); --runtime auto needs nothing extra")
    if runtime in RESIZE_LIBRARY and importlib.util.find_spec("cv2") is None:
        raise EncoderError(f"--runtime {runtime} resizes with OpenCV, which is not installed: pip install 'medprobe[fast]' "
                           "(or pip install opencv-python-headless); --runtime openvino-int8 is the same without it")


def resize_library(runtime):
    """Which library the transform of `runtime` resizes with ("pillow" unless the runtime says otherwise)."""
    return RESIZE_LIBRARY.get(runtime or "auto", "pillow")


def min_cosine(a, b):
    """Smallest per-row cosine similarity between two (N, D) arrays, computed in float64.

    >>> min_cosine(np.eye(2), np.eye(2))
    1.0
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two all-zero rows are the same embedding; one zero row against a non-zero one is not.
    cos = np.where(norms > 0, dot / np.maximum(norms, 1e-300), np.where(np.abs(a).sum(1) + np.abs(b).sum(1) == 0, 1.0, 0.0))
    return float(cos.min())


def weights_fingerprint(module):
    """SHA-256 of every parameter and buffer, so a different --weights file never reuses an exported graph."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # raw bytes: works for bf16 too, which numpy lacks
    return digest.hexdigest()


def onnx_file(folder, config, fingerprint, precision="fp32", extra=""):
    """Where the exported graph of (config, weights, torch version, precision) is cached."""
    import torch

    recipe = json.dumps([config.to_dict(), fingerprint, torch.__version__, OPSET, precision, extra], sort_keys=True, default=str)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:20]
    return Path(folder) / f"{config.name.replace('/', '_').replace('@', '-')}-{precision}-{key}.onnx"


def export_onnx(module, config, path):
    """Export `module` (pixels -> (B, D)) with a dynamic batch axis; written atomically, so racing exporters are safe."""
    import torch

    example = torch.zeros(1, config.channels, config.input_size, config.input_size)
    # the TorchScript exporter is chatty about deprecations and constant folding
    with atomic_target(path) as partial, caught_warnings("ignore"), plain_attention():
        torch.onnx.export(
            module,
            (example,),
            str(partial),
            input_names=["pixels"],
            output_names=["embedding"],
            dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter is several times quicker to export than dynamo here
        )
    return path


@contextlib.contextmanager
def plain_attention():
    """nn.MultiheadAttention's fused inference kernel (`_native_multi_head_attention`) has no ONNX export, so every
    CLIP ViT fell back to PyTorch eager; traced without it, the graph is plain linear/softmax/matmul ops."""
    import torch

    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def ort_session(path, threads=None):
    """An ONNX Runtime CPU session with one intra-op thread per usable core.

    Spinning is off: a decode thread runs beside inference, and spinning workers would take its core.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers are noise to a user
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def openvino_model(path, precision, threads=None):
    """The ONNX graph at `path` compiled by OpenVINO for the CPU at `precision` ("f32" or "bf16").

    The precision is always set: OpenVINO's CPU default is bf16 on CPUs with AMX, which must never reach
    an fp32 store. The THROUGHPUT hint runs one stream per core on sub-batches in flight together:
    ~20 % faster than LATENCY for bf16 here (2 cores, load ~5). No pinning, so the decode pool and
    other processes keep their cores.
    """
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": threads or usable_cores(),
        "ENABLE_CPU_PINNING": False,
    })


def calibration_sample(digests, size=None):
    """The `size` distinct content digests that sort first: a sample fixed by the data set's content alone.

    >>> calibration_sample(["c", "a", "b", "a"], size=2)
    ['a', 'b']
    """
    return sorted(set(digests))[: size or CALIBRATION_IMAGES]


@dataclass(frozen=True)
class Calibration:
    """The images an int8 graph's activation ranges are measured on; chosen before the store key is taken.

    `record` says which (hashed into the store key and the int8 graph's file name, written to results.json);
    `images()` gives their resized uint8 (N, H, W, C) pixels, read only when a graph must be quantised or a
    model saved. A `fixed` one (saved with a model) is never replaced by one drawn from a job's images, so a
    saved model gives an image the same answer whatever else the job holds.
    """

    record: dict
    digests: tuple  # the sample's content digests, in the order record["sample_sha256"] hashes them
    images: Callable[[], np.ndarray]
    fixed: bool = False

    def pixels(self, normalise):
        """float32 (N, C, H, W): each image through `normalise` (the transform's), as the job's batches are."""
        images = self.images()
        out = np.empty((len(images), images.shape[3], *images.shape[1:3]), np.float32)
        for image, row in zip(images, out):
            normalise(image, row)
        return out


def draw_calibration(digests, load, runtime):
    """A job's calibration: the images `calibration_sample` picks from `digests` (one per dataset row), loaded by
    `load(rows) -> uint8 (N, H, W, C)` only when needed; rows in digest order, so the dataset's order never matters."""
    sample = calibration_sample(digests)
    first_row = {}
    for row, digest in enumerate(digests):
        first_row.setdefault(digest, row)
    rows = [first_row[digest] for digest in sample]
    return Calibration(calibration_record(sample, runtime=runtime), tuple(sample), lambda: load(rows))


def calibration_record(sample, method=None, chosen="smallest SHA-256 of the job's images", runtime=None):
    """What identifies an int8 calibration: hashed into the store key (and the int8 graph's file), written to results.json.

    The `fast` runtime calibrates on OpenCV-resized pixels, so its graph is its own; the other records are unchanged.
    """
    record = {"method": method or CALIBRATION_METHOD, "images": len(sample), "chosen": chosen,
              "sample_sha256": hashlib.sha256("\n".join(sample).encode()).hexdigest()}
    if resize_library(runtime) != "pillow":
        record["pixels_resized_by"] = resize_library(runtime)
    return record


def quantize_int8(fp32_path, calibration, path, method):
    """Static int8 quantisation (QDQ, per-channel weights, uint8 activations) calibrated on `calibration` pixels.

    Uses the CPU's VNNI int8 dot products; about 2x fp32 here, but approximate (its AUC effect: docs/history.md).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """Batches of 16 images; quantize_static collects one batch per call (stride 1 below), so the
        activations of only 16 images are held at a time, whatever the sample size and method."""

        def __init__(self):
            self.batches = [{"pixels": calibration[i : i + 16]} for i in range(0, len(calibration), 16)]
            self.set_range(0, len(self.batches))

        def __len__(self):
            return len(self.batches)

        def set_range(self, start_index, end_index):
            self.pending = iter(self.batches[start_index:end_index])

        def get_next(self):
            return next(self.pending, None)

    path = Path(path)
    prepared = path.with_name(f".{path.stem}.{os.getpid()}.pre.onnx")
    try:
        with atomic_target(path) as partial:
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(
                str(prepared),
                str(partial),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                  "entropy": CalibrationMethod.Entropy}[method],
                extra_options={"CalibStridedMinMax": 1},  # despite the name, any method: ranges/histograms merged per batch
            )
    finally:
        prepared.unlink(missing_ok=True)
    return path
