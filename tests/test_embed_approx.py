"""The opt-in approximate runtimes (bf16, int8) on real images and weights: measured, reported, never the default."""

import logging

from medprobe.encoders.runtimes import MIN_COSINE, min_cosine
from test_embed_fast import fresh, real  # noqa: F401  (the module-scoped fixture of real weights and images)

# Smallest per-image cosine to fp32 PyTorch eager over the 12 fixture images (EfficientNet-Lite0), as measured:
#   bf16: 0.988-0.995 (README, docs/speed.md on a Zen 4), 0.9956 on an AVX512-BF16 EPYC (guard, first 8: 0.9964);
#   int8: 0.93-0.97 (README), 0.9547 (docs/speed.md), 0.9216 on an AVX512-VNNI EPYC (guard, first 8: 0.9408).
# Each band leaves ~0.01-0.02 of margin below the lowest measurement, and its top is below what an exact fp32
# backend gives (~1 - 1e-6), so a runtime that silently ran fp32, or one that wrecked the embeddings, fails.
BF16_BAND = (0.98, MIN_COSINE)
INT8_BAND = (0.90, 0.99)


def test_bf16_is_approximate_so_it_is_opt_in_and_the_guard_says_so(real, caplog):
    _, pixels, reference, _ = real
    encoder = fresh(real, "bf16")
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels)
    assert encoder.backend.startswith("torch") and "bf16" in encoder.backend
    cosine = min_cosine(out, reference)
    assert BF16_BAND[0] < cosine < BF16_BAND[1], cosine
    # Under the 0.999 bar on the guard's images too, so the guard reports it (and keeps it, as it was asked for).
    assert encoder.guard["images"] == 8 and BF16_BAND[0] < encoder.guard["min_cosine"] < MIN_COSINE
    assert "bf16 embeddings differ from fp32" in caplog.text


def test_int8_is_opt_in_and_reports_its_distance_from_fp32(real, caplog):
    _, pixels, reference, _ = real
    encoder = fresh(real, "int8")
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels)
    assert "int8" in encoder.backend
    cosine = min_cosine(out, reference)
    assert INT8_BAND[0] < cosine < INT8_BAND[1], cosine
    assert encoder.guard["images"] == 8 and INT8_BAND[0] < encoder.guard["min_cosine"] < MIN_COSINE
    assert "int8 embeddings differ from fp32" in caplog.text
