"""The one encoder class every PyTorch family returns: a frozen module that maps pixels to pooled features.

It also picks how the module runs (its *runtime*):

| runtime | precision | what runs |
|---|---|---|
| `auto` (default) | fp32 | ONNX Runtime for jobs of AUTO_ONNX_MIN_IMAGES or more (once exported), else PyTorch eager |
| `torch` | fp32 | PyTorch eager: the reference every other runtime is checked against |
| `onnx` | fp32 | ONNX Runtime, CPU |
| `openvino` | fp32 | OpenVINO, CPU (optional package `openvino`) |
| `openvino-bf16` | bf16 | OpenVINO with its bf16 inference precision, CPU (opt-in: approximate) |
| `bf16` | bf16 | PyTorch autocast, channels-last (opt-in: approximate) |
| `int8` | int8 | ONNX Runtime, static int8 quantisation calibrated on a content-chosen sample of the job's images, or the one saved with a model (opt-in: approximate) |
| `openvino-int8` | int8 | OpenVINO running the same int8 graph as `int8` (opt-in: approximate; optional package `openvino`) |
| `fast` | int8 | `openvino-int8` on images upsampled by OpenCV, not Pillow (opt-in: approximate; optional extra `fast`) |

fp32 runtimes agree to ~1e-6 and share cache entries; bf16, openvino-bf16, int8, openvino-int8 and fast each get their
own (see `runtime`; `fast` differs from openvino-int8 by its preprocessing policy and calibration).

Each runtime is one entry of RUNTIME_SPECS: its store key and the backend (medprobe.encoders.backends) that runs it,
checked by the exactness guard (backends.Guarded) on the job's first images.
"""

import hashlib
import importlib.util
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medprobe.core.errors import EncoderError
from medprobe.core.locations import artifacts_root
from medprobe.core.memory import reuse_freed_memory
from medprobe.encoders import backends, runtimes
from medprobe.encoders.transforms import make_transform
from medprobe.encoders.weights import weights_fingerprint

log = logging.getLogger(__name__)

# Below this many images, exporting to ONNX costs more than it saves, unless already exported. The TorchScript export takes
# 0.3-0.6 s for the Lite encoders, and a cold ONNX Runtime job (export, session, guard) of 32 images already takes 0.43-0.55x
# of eager's time, at 16 images 0.83-1.09x (benchmarks/auto_threshold.py).
AUTO_ONNX_MIN_IMAGES = 32
FP32 = {"precision": "fp32"}


@dataclass(frozen=True)
class Runtime:
    """What one --runtime name means: what keys its store, and the backend that runs it."""

    key: dict  # what changes the numbers beyond fp32 rounding; the int8 runtimes add their calibration's record
    backend: Callable | None = None  # (encoder, first batch) -> backends.Backend; None: PyTorch eager fp32
    library: str = ""  # "onnxruntime" or "openvino": when it cannot run the module, eager fp32 runs instead, with a notice


def _onnxruntime(precision):
    return lambda encoder, batch: backends.OnnxRuntime(encoder.graph(precision, batch), precision)


def _openvino(precision):
    # the hint is always set (runtimes.openvino_model); openvino-int8's graph runs its int8 parts in int8 whatever the hint
    return lambda encoder, batch: backends.OpenVino(encoder.graph(precision, batch), runtimes.OPENVINO_PRECISION[encoder.mode],
                                                    int8=precision == "int8")


def _int8(backend):
    return {"precision": "int8", "backend": backend, "quantization": "static QDQ, per-channel int8 weights, uint8 activations"}


# Every name of runtimes.RUNTIMES (which the CLI lists without importing torch); the table above says what each runs.
RUNTIME_SPECS = {
    "auto": Runtime(FP32, _onnxruntime("fp32"), "onnxruntime"),  # ... for jobs large enough (see _fast_backend)
    "torch": Runtime(FP32),
    "onnx": Runtime(FP32, _onnxruntime("fp32"), "onnxruntime"),
    "openvino": Runtime(FP32, _openvino("fp32"), "openvino"),
    "openvino-bf16": Runtime({"precision": "bf16", "backend": "openvino", "inference_precision_hint": "bf16"}, _openvino("fp32"), "openvino"),
    "bf16": Runtime({"precision": "bf16", "backend": "torch.autocast", "memory_format": "channels_last"},
                    lambda encoder, batch: backends.Bf16Autocast(encoder.module, encoder.device)),
    "int8": Runtime(_int8("onnxruntime"), _onnxruntime("int8"), "onnxruntime"),
    "openvino-int8": Runtime(_int8("openvino"), _openvino("int8"), "openvino"),
    "fast": Runtime(_int8("openvino"), _openvino("int8"), "openvino"),
}
LIBRARY_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


class TorchEncoder:
    """Runs `module(pixels) -> (B, D)` without gradients and returns float32 numpy.

    `build` is a zero-argument callable that loads the network. It runs on first use, so a
    run whose embeddings are all cached never imports torch or reads the weights.

    >>> encoder = TorchEncoder(config, build, runtime="onnx")
    >>> encoder.embed_batch(pixels).shape
    (64, 1280)
    """

    def __init__(self, config, build, device="cpu", runtime="auto", weights=None):
        self.config = config
        self.device = str(device)
        self._build = build
        self._module = None
        self.mode = check_runtime(runtime or "auto", self.device)
        self.weights_id = weights_fingerprint(weights) if weights else "default"
        self.artifacts = None  # folder for exported graphs; prepare() points it at the cache folder
        self.planned_images = None  # how many images the coming job embeds; decides `auto`
        self.int8_calibration = None  # int8: a runtimes.Calibration, drawn by `calibrate_on` or fixed by `calibrate_with`
        self._graphs = backends.Graphs(config, lambda: self.module)
        self._backend = None  # what runs, chosen (and guarded) on the first batch

    @property
    def runtime(self):
        """What changes the numbers beyond fp32 rounding; hashed into the cache key by `describe_job`.

        All fp32 backends share one entry (ONNX Runtime equals eager to ~1e-6), so a fallback never
        changes the key; bf16 and int8 embeddings never share an entry with fp32 or each other.
        """
        key = dict(RUNTIME_SPECS[self.mode].key)
        return {**key, "calibration": self.calibration} if self.mode in runtimes.INT8 else key

    @property
    def backend(self):
        """What actually runs, once the first batch has been embedded (None before)."""
        return self._backend.description if self._backend else None

    @property
    def guard(self):
        """{"images": n, "min_cosine": c} of the fast backend against fp32 eager; None for eager itself."""
        return self._backend.guard if isinstance(self._backend, backends.Guarded) else None

    def runtime_info(self):
        """The runtime, the backend that actually ran and the guard's verdict, for results files."""
        return {**self.runtime, "mode": self.mode, "backend": self.backend, "guard": self.guard}

    def prepare(self, n_images=None, artifacts=None):
        """Tell the encoder how big the coming job is and where exported graphs may be cached."""
        self.planned_images = n_images
        if artifacts is not None:
            self.artifacts = artifacts

    @property
    def calibration(self):
        """int8: the record of the calibration in use (part of `runtime`, so of the store key); else None."""
        return self.int8_calibration.record if self.int8_calibration else None

    def calibrate_on(self, digests, load):
        """int8 only: calibrate on the images of `digests` (one per row of the job) chosen by runtimes.calibration_sample.

        Call before the store key is taken: the sample's record is part of `runtime`. `load(rows)` returns the
        resized uint8 (N, H, W, C) pixels of those dataset rows; it is called only when the quantised graph is not
        cached yet (or the model is saved). A calibration fixed by `calibrate_with` is kept.
        """
        if self.mode in runtimes.INT8 and not (self.int8_calibration and self.int8_calibration.fixed):
            self._use(runtimes.draw_calibration(digests, load, self.mode))

    def calibrate_with(self, calibration):
        """int8 only: quantise with this fixed calibration (a saved model's) whatever images the coming jobs hold."""
        if self.mode in runtimes.INT8:
            self._use(calibration)

    def _use(self, calibration):
        if calibration.record != self.calibration:
            self._backend = None  # a graph calibrated on other images: quantise again
        self.int8_calibration = calibration

    @property
    def module(self):
        if self._module is None:
            import torch

            reuse_freed_memory()  # PyTorch eager on the CPU: each layer's output would otherwise be faulted in page by page
            module = self._build().eval().to(torch.device(self.device))
            if self.device == "cpu":
                # PyTorch's CPU convolutions take a fifth less time channels-last (benchmarks/eager_layout.py); the
                # values are the same to fp32 rounding, and an exported graph does not depend on the layout.
                module = module.to(memory_format=torch.channels_last)
            for param in module.parameters():
                param.requires_grad_(False)
            self._module = module
        return self._module

    def embed_batch(self, pixels):
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self._backend is None:
            self._start(pixels)
        return self._backend.embed_batch(pixels)

    def embed_batches(self, batches):
        """Yield `(tag, vectors)` for each `(tag, pixels)` of `batches`, in order; the vectors are embed_batch's.

        With an OpenVINO backend the next batch is pulled from `batches` (decoded, by the caller's generator) while
        the requests of the previous ones are still running; otherwise each batch is embedded in turn.
        """
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return
        if self._backend is None:
            self._start(np.ascontiguousarray(first[1], dtype=np.float32))  # picks the backend, once; its guard checks this batch
        yield from self._backend.embed_batches((tag, np.ascontiguousarray(pixels, dtype=np.float32)) for tag, pixels in itertools.chain([first], batches))

    def reference_batch(self, pixels):
        """fp32 PyTorch eager: the reference every fast runtime is checked against."""
        return backends.Eager(self.module, self.device).embed_batch(pixels)

    def graph(self, precision, batch):
        """The ONNX graph the backends run: fp32 (exported once) or int8 (quantised once per calibration).

        int8 outside a planned job (embed_batch called directly, no calibration drawn) calibrates on `batch`.
        """
        folder = self._artifact_folder()
        if precision == "fp32":
            return self._graphs.fp32(folder)
        calibration = self.int8_calibration
        if calibration is None:
            digests = [hashlib.sha256(p.tobytes()).hexdigest() for p in batch]
            record = runtimes.calibration_record(digests, chosen="the first batch", runtime=self.mode)
            self.int8_calibration = runtimes.Calibration(record, tuple(digests), images=None)  # no job: nothing to save
            return self._graphs.int8(folder, record, lambda: batch)
        return self._graphs.int8(folder, calibration.record, lambda: calibration.pixels(make_transform(self.config).normalise))

    # --- choosing and checking the backend ------------------------------------------------------------

    def _start(self, pixels):
        reference = backends.Eager(self.module, self.device)
        fast = self._fast_backend(pixels)
        self._backend = reference if fast is None else backends.Guarded(fast, reference, self.mode)

    def _fast_backend(self, pixels):
        """The runtime's own backend, or None where PyTorch eager fp32 runs instead."""
        spec = RUNTIME_SPECS[self.mode]
        if spec.backend is None or (self.mode == "auto" and self.device != "cpu"):
            return None
        if spec.library == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
            log.warning("onnxruntime is not installed; embedding with PyTorch eager fp32 instead (3-5x slower): pip install onnxruntime")
            return None
        if self.mode == "auto" and not self._worth_exporting():
            return None
        if not spec.library:
            return spec.backend(self, pixels)
        try:
            return spec.backend(self, pixels)
        except Exception as e:  # noqa: BLE001 -- an exporter, runtime or compiler gap for this architecture: eager still gives the right answer
            log.warning("%s cannot run %s (%s: %s); embedding with PyTorch eager fp32 instead", LIBRARY_NAMES[spec.library], self.config.name,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None

    def _worth_exporting(self):
        if self.planned_images is not None and self.planned_images >= AUTO_ONNX_MIN_IMAGES:
            return True
        return self._graphs.fp32(self._artifact_folder(), export=False).is_file()  # exported by an earlier, larger job: free to reuse

    def _artifact_folder(self):
        return (self.artifacts if self.artifacts is not None else artifacts_root()) / "_onnx"


def check_runtime(runtime, device):
    """Validate a runtime name against the device; a CUDA request without a usable GPU is an error, not a slow run."""
    if runtime not in runtimes.RUNTIMES:
        raise EncoderError(f"unknown runtime {runtime!r}; choose one of {', '.join(runtimes.RUNTIMES)}")
    runtimes.check_installed(runtime)
    if device == "cpu":
        return runtime
    if not device.startswith("cuda"):
        raise EncoderError(f"unknown device {device!r}: use 'cpu' or 'cuda' (or 'cuda:N')")
    if runtime in ("onnx", "int8", *runtimes.OPENVINO):
        raise EncoderError(f"--runtime {runtime} runs on the CPU only; with --device {device} use --runtime auto, torch or bf16")
    import torch

    if not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU or driver is visible"
        raise EncoderError(f"--device {device} was asked for, but {why} (torch {torch.__version__}); use --device cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise EncoderError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return runtime

