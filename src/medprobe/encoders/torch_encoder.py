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
| `int8` | int8 | ONNX Runtime, static int8 quantisation calibrated on a content-chosen sample of the job's images (opt-in: approximate) |
| `openvino-int8` | int8 | OpenVINO running the same int8 graph as `int8` (opt-in: approximate; optional package `openvino`) |
| `fast` | int8 | `openvino-int8` on images upsampled by OpenCV, not Pillow (opt-in: approximate; optional extra `fast`) |

fp32 runtimes agree to ~1e-6 and share cache entries; bf16, openvino-bf16, int8, openvino-int8 and fast each get their
own (see `runtime`; `fast` differs from openvino-int8 by its preprocessing policy and calibration).

The OpenVINO runtimes keep their requests in flight across batches (`embed_batches`), so the caller decodes the
next batch while the current one is inferred: OpenVINO's THROUGHPUT streams are single-threaded and have no
barrier that a decode thread could stall, unlike ONNX Runtime's intra-op threads (see embedding.embed).
"""

import itertools
import logging
from collections import deque

import numpy as np

from medprobe.core.errors import EncoderError
from medprobe.core.locations import cache_root
from medprobe.encoders import runtimes
from medprobe.encoders.transforms import make_transform
from medprobe.encoders.weights import weights_fingerprint

log = logging.getLogger(__name__)

# Below this many images, exporting to ONNX (a few seconds) costs more than it saves, unless already exported.
AUTO_ONNX_MIN_IMAGES = 256
ORT_CHUNK = 16  # images per ONNX Runtime call; measured as fast as 64 on a 2-core CPU
OV_CHUNK = 16  # images per OpenVINO request; requests run in parallel, one per stream
# Requests in flight per stream: with 2, each stream has the next request queued while the caller decodes a batch.
OV_REQUESTS_PER_STREAM = 2


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
        self.backend = None  # what actually runs, once the first batch has been embedded
        self.guard = None  # {"images": n, "min_cosine": c} of the fast backend against fp32 eager
        self.int8_calibration = None  # int8: a runtimes.Calibration, drawn by `calibrate_on` or fixed by `calibrate_with`
        self._run = None
        self._stream = None  # OpenVINO: batches -> vectors with requests in flight across batches (see embed_batches)
        self._fingerprint = None

    @property
    def runtime(self):
        """What changes the numbers beyond fp32 rounding; hashed into the cache key by `describe_job`.

        All fp32 backends share one entry (ONNX Runtime equals eager to ~1e-6), so a fallback never
        changes the key; bf16 and int8 embeddings never share an entry with fp32 or each other.
        """
        if self.mode == "bf16":
            return {"precision": "bf16", "backend": "torch.autocast", "memory_format": "channels_last"}
        if self.mode in runtimes.INT8:
            return {"precision": "int8", "backend": "onnxruntime" if self.mode == "int8" else "openvino",
                    "quantization": "static QDQ, per-channel int8 weights, uint8 activations", "calibration": self.calibration}
        if self.mode == "openvino-bf16":
            return {"precision": "bf16", "backend": "openvino", "inference_precision_hint": "bf16"}
        return {"precision": "fp32"}

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
        if calibration.record != self.calibration and self._run is not None:
            self._run = self._stream = self.backend = self.guard = None  # a graph calibrated on other images: quantise again
        self.int8_calibration = calibration

    @property
    def module(self):
        if self._module is None:
            import torch

            module = self._build().eval().to(torch.device(self.device))
            for param in module.parameters():
                param.requires_grad_(False)
            self._module = module
        return self._module

    def embed_batch(self, pixels):
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self._run is None:
            self._start(pixels)
        return self._run(pixels)

    def embed_batches(self, batches):
        """Yield `(tag, vectors)` for each `(tag, pixels)` of `batches`, in order; the vectors are embed_batch's.

        With an OpenVINO backend the next batch is pulled from `batches` (decoded, by the caller's generator) while
        the requests of the previous ones are still running; otherwise each batch is embedded in turn.
        """
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return
        if self._run is None:
            self._start(np.ascontiguousarray(first[1], dtype=np.float32))  # picks the backend and runs the guard, once
        if self._stream is None:
            for tag, pixels in itertools.chain([first], batches):
                yield tag, self.embed_batch(pixels)
            return
        yield from self._stream((tag, np.ascontiguousarray(pixels, dtype=np.float32)) for tag, pixels in itertools.chain([first], batches))

    def reference_batch(self, pixels):
        """fp32 PyTorch eager: the reference every fast runtime is checked against."""
        import torch

        module = self.module
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            return module(batch).float().cpu().numpy()

    # --- choosing and checking the backend ------------------------------------------------------------

    def _start(self, pixels):
        run, backend = self._fast_backend(pixels)
        if run is None:
            self._run, self.backend = self.reference_batch, f"torch eager fp32 ({self.device})"
            return
        self._run, self.backend = run, backend
        self._check(pixels[: runtimes.GUARD_IMAGES])

    def _fast_backend(self, pixels):
        """(run, description) for the chosen fast mode, or (None, None) for plain eager."""
        if self.mode == "torch" or (self.mode == "auto" and self.device != "cpu"):
            return None, None
        if self.mode == "bf16":
            return self._bf16_backend()
        if self.mode in runtimes.OPENVINO:
            try:
                return self._openvino_backend(pixels)
            except Exception as e:  # noqa: BLE001 -- an exporter or compiler gap for this architecture: eager still gives the right answer
                log.warning("OpenVINO cannot run %s (%s: %s); embedding with PyTorch eager fp32 instead", self.config.name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                return None, None
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            log.warning("onnxruntime is not installed; embedding with PyTorch eager fp32 instead (3-5x slower): pip install onnxruntime")
            return None, None
        if self.mode == "auto" and not self._worth_exporting():
            return None, None
        try:
            return self._onnx_backend(pixels)
        except Exception as e:  # an exporter or runtime gap for this architecture: eager still gives the right answer
            log.warning("ONNX Runtime cannot run %s (%s: %s); embedding with PyTorch eager fp32 instead", self.config.name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None, None

    def _worth_exporting(self):
        if self.planned_images is not None and self.planned_images >= AUTO_ONNX_MIN_IMAGES:
            return True
        return self._onnx_path().is_file()  # exported by an earlier, larger job: free to reuse

    def _onnx_path(self):
        if self._fingerprint is None:
            self._fingerprint = runtimes.weights_fingerprint(self.module)
        return runtimes.onnx_file(self._artifact_folder(), self.config, self._fingerprint)

    def _onnx_backend(self, pixels):
        folder = self._artifact_folder()
        path = self._onnx_path()
        if not path.is_file():
            log.info("exporting %s to ONNX (once; cached in %s)", self.config.name, folder)
            runtimes.export_onnx(self.module, self.config, path)
        if self.mode == "int8":
            path = self._int8_graph(path, pixels)
        session = runtimes.ort_session(path)
        name = session.get_inputs()[0].name

        def run(batch):
            # Sub-batches keep ONNX Runtime's activation arena ~4x smaller (~0.4 GB less at 224 px) at the same speed.
            parts = [session.run(None, {name: batch[i : i + ORT_CHUNK]})[0] for i in range(0, len(batch), ORT_CHUNK)]
            return np.concatenate(parts).astype(np.float32, copy=False)

        import onnxruntime

        precision = "int8" if self.mode == "int8" else "fp32"
        return run, f"onnxruntime {onnxruntime.__version__} {precision} (cpu, {runtimes.usable_cores()} threads)"

    def _int8_graph(self, fp32_path, pixels):
        """The int8 QDQ graph for this job's calibration, quantised once and cached beside the fp32 graph."""
        if self.int8_calibration is None:  # embed_batch called directly, outside a planned job (no store): calibrate on this batch
            import hashlib

            digests = [hashlib.sha256(p.tobytes()).hexdigest() for p in pixels]
            record = runtimes.calibration_record(digests, chosen="the first batch", runtime=self.mode)
            self.int8_calibration = runtimes.Calibration(record, tuple(digests), images=None)
            load = lambda: pixels
        else:
            load = lambda: self.int8_calibration.pixels(make_transform(self.config).normalise)
        path = runtimes.onnx_file(self._artifact_folder(), self.config, self._fingerprint, "int8", self.calibration)
        if not path.is_file():
            calibration = load()
            log.info("quantising %s to int8 on %d calibration images (%s)", self.config.name, len(calibration), self.calibration["method"])
            runtimes.quantize_int8(fp32_path, calibration, path, self.calibration["method"])
        return path

    def _openvino_backend(self, pixels):
        """OpenVINO on the same exported ONNX graph as ONNX Runtime; requests of OV_CHUNK images run in parallel."""
        import openvino as ov

        path = self._onnx_path()
        if not path.is_file():
            log.info("exporting %s to ONNX (once; cached in %s)", self.config.name, self._artifact_folder())
            runtimes.export_onnx(self.module, self.config, path)
        if self.mode in runtimes.INT8:
            path = self._int8_graph(path, pixels)
        compiled = runtimes.openvino_model(path, runtimes.OPENVINO_PRECISION[self.mode])
        streams = compiled.get_property("NUM_STREAMS")
        requests = OV_REQUESTS_PER_STREAM * compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        idle = deque(compiled.create_infer_request() for _ in range(requests))

        def stream(batches):
            """Each batch cut into requests of OV_CHUNK images (the same cut whatever comes before or after it, so the
            vectors are those of a lone batch); a batch is yielded once its last request is done."""
            running, waiting = deque(), deque()  # (request, batch entry) oldest first; [tag, outputs, requests left] in order

            def finish_oldest():
                request, entry = running.popleft()
                try:
                    request.wait()
                    entry[1].append(request.get_output_tensor(0).data.copy())
                    entry[2] -= 1
                finally:
                    idle.append(request)

            try:
                for tag, batch in batches:
                    entry = [tag, [], 0]
                    waiting.append(entry)
                    for at in range(0, len(batch), OV_CHUNK):
                        if not idle:
                            finish_oldest()
                        request = idle.popleft()
                        request.start_async({0: batch[at : at + OV_CHUNK]})
                        running.append((request, entry))
                        entry[2] += 1
                    while waiting and waiting[0][2] == 0:
                        yield waiting[0][0], np.concatenate(waiting.popleft()[1]).astype(np.float32, copy=False)
                while running:
                    finish_oldest()
                while waiting:
                    yield waiting[0][0], np.concatenate(waiting.popleft()[1]).astype(np.float32, copy=False)
            finally:  # an abandoned stream (an error while decoding) still hands every request back
                while running:
                    request, _ = running.popleft()
                    request.wait()
                    idle.append(request)

        def run(batch):
            return next(stream([(None, batch)]))[1]

        self._stream = stream
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what the CPU runs, not what was asked
        precision = f"int8 + {precision}" if self.mode in runtimes.INT8 else precision
        return run, f"openvino {ov.__version__.split('-')[0]} {precision} (cpu, {runtimes.usable_cores()} threads, {streams} streams)"

    def _bf16_backend(self):
        import copy

        import torch

        # A copy: .to(memory_format=...) works in place, and the guard's reference must stay the untouched module.
        module = copy.deepcopy(self.module).to(memory_format=torch.channels_last)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"

        def run(batch):
            with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16):
                tensor = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
                return module(tensor).float().cpu().numpy()

        return run, f"torch {torch.__version__} bf16 autocast, channels-last ({self.device})"

    def _artifact_folder(self):
        return (self.artifacts if self.artifacts is not None else cache_root()) / "_onnx"

    def _check(self, pixels):
        """The exactness guard: the fast backend against fp32 eager on the first images of the job."""
        cosine = runtimes.min_cosine(self._run(pixels), self.reference_batch(pixels))
        self.guard = {"images": len(pixels), "min_cosine": round(cosine, 6)}
        if cosine >= runtimes.MIN_COSINE:
            return
        if self.mode in runtimes.APPROXIMATE:
            log.warning("%s embeddings differ from fp32 (min cosine %.4f < %.3f on the first %d images); AUCs may shift slightly", self.mode, cosine, runtimes.MIN_COSINE, len(pixels))
            return
        log.warning("%s disagrees with PyTorch fp32 (min cosine %.4f < %.3f); embedding with PyTorch eager fp32 instead", self.backend, cosine, runtimes.MIN_COSINE)
        self._run, self._stream, self.backend = self.reference_batch, None, f"torch eager fp32 ({self.device}; fast path failed the guard)"


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

