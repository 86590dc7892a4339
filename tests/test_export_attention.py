"""CLIP ViTs reach the fast runtimes: nn.MultiheadAttention's fused kernel is switched off while exporting to ONNX."""

import numpy as np
import pytest
import torch

from medprobe.encoders import create_encoder, get_config
from medprobe.encoders.runtimes import MIN_COSINE, min_cosine
from tiny_models import go_offline, write_tiny


@pytest.mark.own_exports  # the export itself is under test: never a copy of an earlier one
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_a_clip_vit_runs_on_the_exported_graph_not_on_eager(runtime, tmp_path, monkeypatch):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    go_offline(tmp_path, monkeypatch)
    weights = write_tiny(get_config("clip_vit_b32"), tmp_path / "clip")
    encoder, _ = create_encoder("clip_vit_b32", weights=str(weights), runtime=runtime)
    encoder.prepare(n_images=10_000, artifacts=tmp_path / "artifacts")
    pixels = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    out = encoder.embed_batch(pixels)
    assert not encoder.backend.startswith("torch eager"), encoder.backend  # it used to fall back: no export for the fused kernel
    assert encoder.guard["min_cosine"] >= MIN_COSINE
    assert min_cosine(out, encoder.reference_batch(pixels)) >= MIN_COSINE
    assert torch.backends.mha.get_fastpath_enabled(), "the export must put PyTorch's setting back"
