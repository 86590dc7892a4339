"""The fast embedding path: fp32 runtimes against the fp32 PyTorch reference on real images and real
weights (the exactness guard), fallbacks, cache keys per precision, and CUDA when present."""

import logging
from pathlib import Path

import numpy as np
import pytest

from medprobe.core.errors import EncoderError
from medprobe.data.datasets import load_dataset
from medprobe.embedding.embed import describe_job, embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import backends, create_encoder
from medprobe.encoders.runtimes import MIN_COSINE, min_cosine
from medprobe.encoders.torch_encoder import AUTO_ONNX_MIN_IMAGES, TorchEncoder
from medprobe.encoders.transforms import make_transform


class Broken(backends.Backend):
    """A fast backend that disagrees with fp32 (every vector all ones), built in place of a real one."""

    description = "broken"

    def __init__(self, *args, **kwargs):
        pass

    def embed_batch(self, pixels):
        return np.ones((len(pixels), 1280), np.float32)


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


def test_a_fast_backend_that_disagrees_is_replaced_by_eager_fp32(real, caplog, monkeypatch):
    _, pixels, reference, _ = real
    encoder = fresh(real, "onnx")
    monkeypatch.setattr(backends, "OnnxRuntime", Broken)
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
    small.prepare(n_images=AUTO_ONNX_MIN_IMAGES - 1, artifacts=Path(artifacts) / "empty")
    small.embed_batch(pixels[:2])
    assert small.backend.startswith("torch eager fp32")
    assert not list((Path(artifacts) / "empty").rglob("*.onnx"))
    large = TorchEncoder(real[0].config, lambda: real[0].module)
    large.prepare(n_images=AUTO_ONNX_MIN_IMAGES, artifacts=Path(artifacts) / "large")
    large.embed_batch(pixels[:2])
    assert large.backend.startswith("onnxruntime") and list((Path(artifacts) / "large").rglob("*.onnx"))
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


def test_the_runtime_chosen_at_creation_sets_the_backend_and_the_cache_entry(real, tmp_path):
    from conftest import write_npz

    data = load_dataset(write_npz(tmp_path / "tiny.npz", n_train=2, n_val=2, n_test=2, size=8))
    options = EmbedOptions(batch_size=4, progress=False)
    encoder = TorchEncoder(real[0].config, lambda: real[0].module, runtime="torch")
    transform = make_transform(encoder.config)
    first = embed(data, encoder, transform, options)
    assert encoder.runtime_info()["mode"] == "torch" and encoder.runtime_info()["backend"].startswith("torch eager fp32")
    with pytest.raises(EncoderError, match="unknown runtime 'quick'"):
        TorchEncoder(real[0].config, lambda: real[0].module, runtime="quick")
    with pytest.raises(EncoderError, match="unknown runtime 'quick'"):
        create_encoder("efficientnet_lite0", runtime="quick")
    onnx = TorchEncoder(real[0].config, lambda: real[0].module, runtime="onnx")
    again = embed(data, onnx, transform, options)
    assert again.from_cache and again.key == first.key  # fp32 either way: one entry


@pytest.mark.gpu
def test_cuda_matches_cpu(real):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _, pixels, reference, _ = real
    gpu, _ = create_encoder("efficientnet_lite0", device="cuda")
    assert min_cosine(gpu.embed_batch(pixels), reference) >= MIN_COSINE
    assert gpu.backend.startswith("torch eager fp32 (cuda")
