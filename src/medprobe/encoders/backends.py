"""One backend per way of running a frozen module (PyTorch eager, bf16 autocast, ONNX Runtime, OpenVINO), the ONNX
graphs they run, and the exactness guard as a wrapper around any of them. TorchEncoder picks one per job from its runtime.

The OpenVINO backend keeps its requests in flight across batches (`embed_batches`), so the caller decodes the
next batch while the current one is inferred: OpenVINO's THROUGHPUT streams are single-threaded and have no
barrier that a decode thread could stall, unlike ONNX Runtime's intra-op threads (see embedding.embed).
"""

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from medprobe.core.cores import usable_cores
from medprobe.encoders import runtimes

log = logging.getLogger(__name__)

ORT_CHUNK = 16  # images per ONNX Runtime call; measured as fast as 64 on a 2-core CPU
OV_CHUNK = 16  # images per OpenVINO request; requests run in parallel, one per stream
# Requests in flight per stream: with 2, each stream has the next request queued while the caller decodes a batch.
OV_REQUESTS_PER_STREAM = 2


class Backend(Protocol):
    """What runs a module: float32 (B, C, H, W) pixels in, float32 (B, D) vectors out.

    >>> backend = Eager(module, "cpu")
    >>> backend.embed_batch(pixels).shape
    (64, 1280)
    """

    description: str  # what runs, for results files: "onnxruntime 1.20.1 fp32 (cpu, 2 threads)"

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (B, C, H, W) -> float32 (B, D)."""

    def embed_batches(self, batches: Iterable) -> Iterator:
        """`(tag, vectors)` for each `(tag, pixels)`, in order; each batch in turn unless the backend can overlap them."""
        for tag, pixels in batches:
            yield tag, self.embed_batch(pixels)


class Eager(Backend):
    """fp32 PyTorch eager: the reference every other backend is checked against."""

    def __init__(self, module, device):
        self.module, self.device = module, device
        self.description = f"torch eager fp32 ({device})"

    def embed_batch(self, pixels):
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            if batch.dim() == 4 and self.device == "cpu":  # the layout of an encoder's module on the CPU (TorchEncoder.module)
                batch = batch.contiguous(memory_format=torch.channels_last)
            return self.module(batch).float().cpu().numpy()


class Bf16Autocast(Backend):
    """PyTorch autocast to bf16 on a channels-last copy of the module."""

    def __init__(self, module, device):
        import copy

        import torch

        # A copy: .to(memory_format=...) works in place, and the guard's reference must stay the untouched module.
        self.module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        self.device = device
        self.description = f"torch {torch.__version__} bf16 autocast, channels-last ({device})"

    def embed_batch(self, pixels):
        import torch

        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16):
            tensor = torch.from_numpy(pixels).to(self.device).contiguous(memory_format=torch.channels_last)
            return self.module(tensor).float().cpu().numpy()


class OnnxRuntime(Backend):
    """An exported graph (fp32, or the int8 QDQ one) on ONNX Runtime's CPU provider."""

    def __init__(self, path, precision):
        import onnxruntime

        self.session = runtimes.ort_session(path)
        self.input = self.session.get_inputs()[0].name
        self.description = f"onnxruntime {onnxruntime.__version__} {precision} (cpu, {usable_cores()} threads)"

    def embed_batch(self, pixels):
        # Sub-batches keep ONNX Runtime's activation arena ~4x smaller (~0.4 GB less at 224 px) at the same speed.
        parts = [self.session.run(None, {self.input: pixels[i : i + ORT_CHUNK]})[0] for i in range(0, len(pixels), ORT_CHUNK)]
        return np.concatenate(parts).astype(np.float32, copy=False)


class OpenVino(Backend):
    """An exported graph compiled by OpenVINO at `hint` precision; requests of OV_CHUNK images run in parallel, and
    stay in flight across batches in `embed_batches`."""

    def __init__(self, path, hint, int8=False):
        import openvino as ov

        compiled = runtimes.openvino_model(path, hint)
        streams = compiled.get_property("NUM_STREAMS")
        requests = OV_REQUESTS_PER_STREAM * compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.idle = deque(compiled.create_infer_request() for _ in range(requests))
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what the CPU runs, not what was asked
        precision = f"int8 + {precision}" if int8 else precision
        self.description = f"openvino {ov.__version__.split('-')[0]} {precision} (cpu, {usable_cores()} threads, {streams} streams)"

    def embed_batch(self, pixels):
        return next(self.embed_batches([(None, pixels)]))[1]

    def embed_batches(self, batches):
        """Each batch cut into requests of OV_CHUNK images (the same cut whatever comes before or after it, so the
        vectors are those of a lone batch); a batch is yielded once its last request is done."""
        idle = self.idle
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


class Guarded(Backend):
    """The exactness guard around a fast backend: its first vectors are checked against fp32 eager on the same images.

    The check takes the first batch's own vectors, the very ones the job keeps, so the fast backend never runs the
    guard's images a second time. Below runtimes.MIN_COSINE an approximate runtime (asked for by name) warns and keeps
    running; an exact one is replaced by the reference, which embeds that first batch again, so a fast path that
    disagrees never reaches a store of fp32 embeddings.
    """

    def __init__(self, backend, reference, mode):
        self.inner, self.reference, self.mode = backend, reference, mode
        self.description = backend.description
        self.guard = None  # {"images", "min_cosine"} once the first batch is checked

    def embed_batch(self, pixels):
        vectors = self.inner.embed_batch(pixels)
        return vectors if self.guard is not None else self._checked(pixels, vectors)

    def embed_batches(self, batches):
        batches = iter(batches)
        if self.guard is None:  # the first batch alone, checked before any other is started
            first = next(batches, None)
            if first is None:
                return
            yield first[0], self.embed_batch(first[1])
        yield from self.inner.embed_batches(batches)

    def _checked(self, pixels, vectors):
        images = pixels[: runtimes.GUARD_IMAGES]
        cosine = runtimes.min_cosine(vectors[: len(images)], self.reference.embed_batch(images))
        self.guard = {"images": len(images), "min_cosine": round(cosine, 6)}
        if cosine >= runtimes.MIN_COSINE:
            return vectors
        if self.mode in runtimes.APPROXIMATE:
            log.warning("%s embeddings differ from fp32 (min cosine %.4f < %.3f on the first %d images); AUCs may shift slightly",
                        self.mode, cosine, runtimes.MIN_COSINE, len(images))
            return vectors
        log.warning("%s disagrees with PyTorch fp32 (min cosine %.4f < %.3f); embedding with PyTorch eager fp32 instead",
                    self.inner.description, cosine, runtimes.MIN_COSINE)
        self.inner = self.reference
        self.description = f"torch eager fp32 ({self.reference.device}; fast path failed the guard)"
        return self.reference.embed_batch(pixels)


class Graphs:
    """The module's exported ONNX graphs, each built once per machine in a cache folder and reused by every backend:
    keyed by the encoder config, a fingerprint of the weights, the torch version, the precision and (int8) the calibration."""

    def __init__(self, config, module):
        self.config = config
        self._module = module  # () -> the loaded module, so a cached graph never needs the weights hashed twice
        self._fingerprint = None

    def fp32(self, folder, export=True):
        """The fp32 graph's path, exported now if it is missing (and `export`)."""
        if self._fingerprint is None:
            self._fingerprint = runtimes.weights_fingerprint(self._module())
        path = runtimes.onnx_file(folder, self.config, self._fingerprint)
        if export and not path.is_file():
            log.info("exporting %s to ONNX (once; cached in %s)", self.config.name, folder)
            runtimes.export_onnx(self._module(), self.config, path)
        return path

    def int8(self, folder, record, pixels):
        """The int8 QDQ graph for the calibration `record`, quantised once on `pixels()` and cached beside the fp32 graph."""
        fp32 = self.fp32(folder)
        path = runtimes.onnx_file(folder, self.config, self._fingerprint, "int8", record)
        if not path.is_file():
            calibration = pixels()
            log.info("quantising %s to int8 on %d calibration images (%s)", self.config.name, len(calibration), record["method"])
            runtimes.quantize_int8(fp32, calibration, path, record["method"])
        return path
