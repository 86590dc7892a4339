"""int8 calibration is fixed by the data set's content: the same images give the same store key and the same
vectors whatever order they come in and whatever the first batch is; other images give another key."""

import json

import numpy as np
import pytest

from medprobe.data.datasets import load_dataset
from medprobe.embedding.embed import describe_job, embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import create_encoder, runtimes
from medprobe.encoders.runtimes import calibration_record, calibration_sample

SAMPLE = 8  # images per calibration here (256 in use): small, so quantising stays quick


def test_the_sample_is_the_smallest_distinct_digests_whatever_their_order():
    digests = ["d", "b", "a", "c", "a"]
    assert calibration_sample(digests, size=3) == ["a", "b", "c"]
    assert calibration_sample(list(reversed(digests)), size=3) == ["a", "b", "c"]
    assert calibration_record(["a", "b"]) == calibration_record(["a", "b"])
    assert calibration_record(["a", "b"])["sample_sha256"] != calibration_record(["a", "c"])["sample_sha256"]
    assert calibration_record(["a", "b"], method="percentile") != calibration_record(["a", "b"])


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(runtimes, "CALIBRATION_IMAGES", SAMPLE)


def _npz(path, seed, reverse=False):
    """30 images, 28 px; `reverse` lists the same images in the opposite order (another first batch)."""
    from conftest import write_npz

    write_npz(path, n_train=16, n_val=6, n_test=8, seed=seed)
    if reverse:
        arrays = dict(np.load(path))
        np.savez(path, **{k: v[::-1] for k, v in arrays.items()})
    return path


def _int8(data, cache):
    encoder, transform = create_encoder("efficientnet_lite0", runtime="int8")
    options = EmbedOptions("efficientnet_lite0", cache_dir=str(cache), batch_size=4, progress=False)
    return embed(data, encoder, transform, options), encoder


def test_same_images_in_another_order_give_the_same_calibration_key_and_vectors(tmp_path, small_sample, medprobe):
    forward = load_dataset(_npz(tmp_path / "a.npz", seed=0))
    backward = load_dataset(_npz(tmp_path / "b.npz", seed=0, reverse=True))
    assert forward.content_digests()[:4] != backward.content_digests()[:4]  # the first batches differ
    # Two caches: each job exports and quantises its own graph, so equal vectors are not one graph read twice.
    first, encoder = _int8(forward, tmp_path / "cache1")
    second, _ = _int8(backward, tmp_path / "cache2")
    assert first.description == second.description
    assert encoder.calibration["images"] == SAMPLE and encoder.calibration["method"] == runtimes.CALIBRATION_METHOD
    by_digest = dict(zip(backward.content_digests(), second.vectors))
    np.testing.assert_array_equal(first.vectors, np.stack([by_digest[d] for d in forward.content_digests()]))
    # the same data set again, its vectors already stored: the same key, nothing recomputed
    again, _ = _int8(forward, tmp_path / "cache1")
    assert again.from_cache and again.key == first.key
    np.testing.assert_array_equal(again.vectors, first.vectors)
    # and results.json records the calibration with the encoder
    done = medprobe("run", "--dataset", tmp_path / "a.npz", "--runtime", "int8", "--cache-dir", tmp_path / "cache1",
                    "--out", tmp_path / "out", "--quiet", "--encoder", "efficientnet_lite0", "--selection", "val", "--n-boot", "200")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "results.json").read_text())["encoder"]["runtime"]
    assert record["calibration"] == encoder.calibration


def test_other_images_or_another_method_give_another_key(tmp_path, small_sample, monkeypatch):
    def key(path):
        data = load_dataset(path)
        encoder, transform = create_encoder("efficientnet_lite0", runtime="int8")
        encoder.calibrate_on(data.content_digests(), lambda rows: pytest.fail("the key must not need any pixels"))
        return describe_job(encoder, transform)

    same = key(_npz(tmp_path / "a.npz", seed=0))
    assert key(_npz(tmp_path / "b.npz", seed=0, reverse=True)) == same
    assert key(_npz(tmp_path / "c.npz", seed=1)) != same
    monkeypatch.setattr(runtimes, "CALIBRATION_METHOD", "percentile")
    assert key(tmp_path / "a.npz") != same
    fp32, _ = create_encoder("efficientnet_lite0")
    fp32.calibrate_on(load_dataset(tmp_path / "a.npz").content_digests(), None)  # fp32 ignores it: its key never moves
    assert fp32.runtime == {"precision": "fp32"}


def test_an_encoder_reused_for_other_images_quantises_again_for_them(tmp_path, small_sample):
    first, second = load_dataset(_npz(tmp_path / "a.npz", seed=0)), load_dataset(_npz(tmp_path / "c.npz", seed=1))
    encoder, transform = create_encoder("efficientnet_lite0", runtime="int8")
    options = EmbedOptions("efficientnet_lite0", cache_dir=str(tmp_path / "cache"), batch_size=4, progress=False)
    embed(first, encoder, transform, options)
    reused = embed(second, encoder, transform, options)
    alone, _ = _int8(second, tmp_path / "other-cache")
    assert reused.description == alone.description
    np.testing.assert_array_equal(reused.vectors, alone.vectors)


def test_openvino_int8_runs_the_same_calibrated_graph_under_its_own_key(tmp_path, small_sample):
    pytest.importorskip("openvino")
    data = load_dataset(_npz(tmp_path / "a.npz", seed=0))
    ort, ort_encoder = _int8(data, tmp_path / "cache")
    encoder, transform = create_encoder("efficientnet_lite0", runtime="openvino-int8")
    options = EmbedOptions("efficientnet_lite0", cache_dir=str(tmp_path / "cache"), batch_size=4, progress=False)
    ov = embed(data, encoder, transform, options)
    assert encoder.calibration == ort_encoder.calibration and ov.description != ort.description
    assert encoder.backend.startswith("openvino") and "int8" in encoder.backend
    assert runtimes.min_cosine(ov.vectors, ort.vectors) > 0.99  # one graph, two int8 kernels; ~0.9995 on real images


def test_int8_on_ray_is_refused_before_any_work(tmp_path):
    from medprobe.core.errors import ClusterError
    from medprobe.embedding.ray import embed_on_ray

    data = load_dataset(_npz(tmp_path / "a.npz", seed=0))
    with pytest.raises(ClusterError, match="--runtime int8 is not available on Ray"):
        embed_on_ray(data, EmbedOptions("efficientnet_lite0", runtime="int8", progress=False))
