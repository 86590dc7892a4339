"""The opt-in approximate runtimes (bf16, int8) on real images and weights: measured, reported, never the default."""

import logging

from medprobe.encoders.runtimes import MIN_COSINE, min_cosine
from numerics import BF16_BAND, INT8_BAND
from test_embed_fast import fresh  # `real` (real weights and images) is conftest's, built once per session


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
