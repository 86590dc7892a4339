"""The OpenVINO runtimes: fp32 under the exactness guard, bf16 in its own store, and a clear message without the package."""

import importlib.util
import logging

import numpy as np
import pytest

from medprobe.core.errors import EncoderError
from medprobe.embedding.embed import describe_job
from medprobe.embedding.store import recipe_key
from medprobe.encoders import backends, create_encoder
from medprobe.encoders.runtimes import MIN_COSINE, min_cosine
from medprobe.encoders.transforms import make_transform
from numerics import BF16_BAND, BF16_FLAGS, skip_without_any_cpu_flag
from test_embed_fast import Broken, fresh  # `real` (real weights and images) is conftest's, built once per session

pytest.importorskip("openvino", reason="the OpenVINO runtimes need the openvino extra (it is in dev)")


def test_openvino_fp32_matches_the_pytorch_reference_on_real_images(real):  # noqa: F811
    _, pixels, reference, _ = real
    encoder = fresh(real, "openvino")
    out = encoder.embed_batch(pixels)
    assert encoder.backend.startswith("openvino") and " f32 " in encoder.backend, encoder.backend
    assert out.dtype == np.float32 and out.shape == reference.shape
    np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-4)
    assert encoder.guard["min_cosine"] >= MIN_COSINE


def test_openvino_bf16_runs_in_bf16_and_is_only_approximately_fp32(real, caplog):  # noqa: F811
    skip_without_any_cpu_flag(*BF16_FLAGS)
    _, pixels, reference, _ = real
    encoder = fresh(real, "openvino-bf16")
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels)
    assert " bf16 " in encoder.backend, encoder.backend  # this CPU has native bf16: the hint is honoured, not ignored
    cosine = min_cosine(out, reference)
    assert BF16_BAND[0] < cosine < BF16_BAND[1], f"bf16 should be close to fp32 but not equal to it: {cosine}"
    assert encoder.guard["min_cosine"] == pytest.approx(min_cosine(out[:8], reference[:8]), abs=1e-6)
    # Approximate and asked for by name: below the bar it warns and keeps running; never falls back.
    assert ("differ from fp32" in caplog.text) == (encoder.guard["min_cosine"] < MIN_COSINE)
    assert "failed the guard" not in encoder.backend


def test_an_openvino_fp32_result_that_disagrees_is_replaced_by_eager_fp32(real, caplog, monkeypatch):  # noqa: F811
    _, pixels, reference, _ = real
    encoder = fresh(real, "openvino")
    monkeypatch.setattr(backends, "OpenVino", Broken)
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels[:3])
    assert "disagrees with PyTorch fp32" in caplog.text and "failed the guard" in encoder.backend
    assert min_cosine(out, reference[:3]) > 0.99999


def test_openvino_bf16_never_shares_a_store_with_fp32_or_torch_bf16(real):  # noqa: F811
    transform = make_transform(real[0].config)
    keys = {rt: recipe_key(describe_job(fresh(real, rt), transform)) for rt in ("auto", "onnx", "openvino", "openvino-bf16", "bf16", "int8")}
    assert keys["openvino"] == keys["auto"] == keys["onnx"], "fp32 runtimes agree to ~1e-6 and share one store"
    assert len({keys["auto"], keys["openvino-bf16"], keys["bf16"], keys["int8"]}) == 4


@pytest.mark.parametrize("runtime", ["openvino", "openvino-bf16"])
def test_without_openvino_asking_for_it_is_a_clear_error_before_any_work(runtime, monkeypatch, medprobe, tmp_path):
    from conftest import write_npz

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real_find_spec(name, *a))
    with pytest.raises(EncoderError, match=rf"--runtime {runtime} needs OpenVINO, which is not installed: pip install 'medprobe\[openvino\]'"):
        create_encoder("efficientnet_lite0", runtime=runtime)
    done = medprobe("run", "--dataset", str(write_npz(tmp_path / "tiny.npz", n_train=4, n_val=2, n_test=2)), "--runtime", runtime,
                    "--out", str(tmp_path / "out"))
    assert done.returncode != 0 and "needs OpenVINO" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("rows-*.parquet")), "nothing may run"


@pytest.mark.parametrize("runtime", ["openvino", "openvino-bf16"])
def test_an_export_or_compile_failure_falls_back_to_eager_with_a_one_line_notice(real, runtime, caplog, monkeypatch):  # noqa: F811
    from medprobe.encoders import runtimes

    _, pixels, reference, _ = real
    encoder = fresh(real, runtime)

    def fail(*args):
        raise RuntimeError("Unsupported operation: SomeOp\nlong trace")

    monkeypatch.setattr(runtimes, "openvino_model", fail)
    with caplog.at_level(logging.WARNING):
        out = encoder.embed_batch(pixels[:2])
    assert "OpenVINO cannot run efficientnet_lite0 (RuntimeError: Unsupported operation: SomeOp); embedding with PyTorch eager" in caplog.text
    assert encoder.backend.startswith("torch eager fp32")
    np.testing.assert_allclose(out, reference[:2], rtol=1e-5, atol=1e-6)
