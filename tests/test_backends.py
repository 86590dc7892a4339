"""One backend per runtime behind backends.Backend, and the exactness guard as a wrapper: checked on stand-ins, no network."""

import logging

import numpy as np
import pytest

from medprobe.encoders import backends, runtimes
from medprobe.encoders.torch_encoder import RUNTIME_SPECS


class Scaled(backends.Backend):
    """Vectors that are the pixels' channel means, times `scale` plus `noise` (so a cosine to the reference is controlled)."""

    def __init__(self, scale=1.0, noise=0.0, device="cpu"):
        self.scale, self.noise, self.device = scale, noise, device
        self.description = f"scaled x{scale} + {noise}"

    def embed_batch(self, pixels):
        vectors = pixels.reshape(len(pixels), pixels.shape[1], -1).mean(axis=2) * self.scale
        return (vectors + self.noise * np.arange(vectors.shape[1])).astype(np.float32)


PIXELS = np.random.default_rng(0).normal(size=(10, 4, 3, 3)).astype(np.float32)


def test_every_runtime_name_has_one_spec_and_only_approximate_ones_have_their_own_key():
    assert set(RUNTIME_SPECS) == set(runtimes.RUNTIMES)
    for name, spec in RUNTIME_SPECS.items():
        assert (spec.key == {"precision": "fp32"}) == (name not in runtimes.APPROXIMATE), name
        assert spec.library in ("", "onnxruntime", "openvino")
        assert (spec.library == "openvino") == (name in runtimes.OPENVINO), name


def test_the_default_embed_batches_takes_each_batch_in_turn():
    backend = Scaled()
    tags = [[0, 3], [3, 10]]
    out = list(backend.embed_batches(zip(tags, (PIXELS[:3], PIXELS[3:]))))
    assert [tag for tag, _ in out] == tags
    np.testing.assert_array_equal(np.concatenate([v for _, v in out]), backend.embed_batch(PIXELS))


def test_a_guarded_backend_that_agrees_runs_and_records_its_cosine():
    guarded = backends.Guarded(Scaled(scale=2.0), Scaled(), "onnx")  # a scale keeps every cosine at 1
    assert guarded.guard is None and guarded.description == "scaled x2.0 + 0.0"  # checked on the first batch, not before
    np.testing.assert_array_equal(guarded.embed_batch(PIXELS), Scaled(scale=2.0).embed_batch(PIXELS))
    assert guarded.guard == {"images": 8, "min_cosine": 1.0}


class Counted(Scaled):
    """Scaled, counting the images it embeds."""

    images = 0

    def embed_batch(self, pixels):
        self.images += len(pixels)
        return super().embed_batch(pixels)


def test_the_guard_checks_the_first_batchs_own_vectors_so_the_fast_backend_embeds_each_image_once():
    fast, reference = Counted(scale=2.0), Counted()
    guarded = backends.Guarded(fast, reference, "onnx")
    out = list(guarded.embed_batches(zip("ab", (PIXELS[:6], PIXELS[6:]))))
    assert fast.images == 10 and reference.images == 6  # the first batch's 6 images are the guard's (fewer than 8)
    assert guarded.guard == {"images": 6, "min_cosine": 1.0} and [tag for tag, _ in out] == ["a", "b"]
    np.testing.assert_array_equal(np.concatenate([v for _, v in out]), fast.embed_batch(PIXELS))


@pytest.mark.parametrize("mode", ["onnx", "openvino", "auto"])
def test_an_exact_runtime_that_disagrees_is_replaced_by_the_reference(mode, caplog):
    reference = Scaled()
    guarded = backends.Guarded(Scaled(noise=5.0), reference, mode)
    with caplog.at_level(logging.WARNING):
        out = list(guarded.embed_batches(zip("ab", (PIXELS[:8], PIXELS[8:]))))
    assert guarded.guard["min_cosine"] < runtimes.MIN_COSINE and "disagrees with PyTorch fp32" in caplog.text
    assert guarded.description == "torch eager fp32 (cpu; fast path failed the guard)"
    # the first batch too: embedded again by the reference, so no vector of the fast path is kept
    np.testing.assert_array_equal(np.concatenate([v for _, v in out]), reference.embed_batch(PIXELS))
    np.testing.assert_array_equal(guarded.embed_batch(PIXELS), reference.embed_batch(PIXELS))


@pytest.mark.parametrize("mode", runtimes.APPROXIMATE)
def test_an_approximate_runtime_below_the_bar_warns_and_keeps_running(mode, caplog):
    fast = Scaled(noise=5.0)
    guarded = backends.Guarded(fast, Scaled(), mode)
    with caplog.at_level(logging.WARNING):
        first = guarded.embed_batch(PIXELS)
    assert f"{mode} embeddings differ from fp32" in caplog.text and guarded.description == fast.description
    np.testing.assert_array_equal(first, fast.embed_batch(PIXELS))
    np.testing.assert_array_equal(guarded.embed_batch(PIXELS), fast.embed_batch(PIXELS))

