"""--runtime fast: openvino-int8 on images upsampled by OpenCV, in its own store; the default path untouched;
OpenVINO's requests kept in flight across batches without changing a single vector."""

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medprobe.core.errors import EncoderError
from medprobe.data.datasets import Dataset
from medprobe.data.sources import FileImages
from medprobe.embedding.embed import decode_rows, describe_job, embed
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.store import recipe_key
from medprobe.encoders import create_encoder, get_config, runtimes
from medprobe.encoders.transforms import make_transform
from test_embed_fast import fresh  # `real` (real weights and images) is conftest's, built once per session

pytest.importorskip("openvino", reason="--runtime fast needs the fast extra (it is in dev)")
cv2 = pytest.importorskip("cv2", reason="--runtime fast needs the fast extra (it is in dev)")

CONFIG = get_config("efficientnet_lite0")
# The policy keys the default (Pillow) transform has always had: a new key here would move every default store.
DEFAULT_POLICY_KEYS = {"input_size", "resize_mode", "crop_pct", "resize_convention", "interpolation", "mean", "std", "channels",
                       "grayscale", "small_images"}


def smooth_image(width, height, seed=0):
    """A photo-like RGB image (smooth gradients plus mild noise), so resampling kernels differ only slightly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [127 + 100 * np.sin(x / (7 + c) + y / (11 + 2 * c)) for c in range(3)]
    pixels = np.stack(planes, axis=2) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_opencv_upsamples_and_pillow_still_shrinks():
    pillow, opencv = make_transform(CONFIG), make_transform(CONFIG, "opencv")
    small, wide, big = smooth_image(28, 28), smooth_image(100, 60, seed=1), smooth_image(300, 400, seed=2)
    # upsampling: exactly OpenCV's bicubic, close to Pillow's but not equal (another kernel, so another key)
    got = opencv.resized(small)
    np.testing.assert_array_equal(got, cv2.resize(np.asarray(small), (224, 224), interpolation=cv2.INTER_CUBIC))
    difference = np.abs(got.astype(int) - pillow.resized(small).astype(int))
    assert 0 < difference.mean() < 3
    # a non-square image is resized on its shorter side, then centre-cropped, exactly as the Pillow path does it
    expected = cv2.resize(np.asarray(wide), (373, 224), interpolation=cv2.INTER_CUBIC)[:, 74:298]
    np.testing.assert_array_equal(opencv.resized(wide), expected)
    assert pillow.resized(wide).shape == expected.shape == (224, 224, 3)
    # the fallback: shrinking needs Pillow's antialiasing, so those pixels are Pillow's, bit for bit
    np.testing.assert_array_equal(opencv.resized(big), pillow.resized(big))
    # an interpolation OpenCV does not reproduce stays with Pillow too
    nearest = replace(CONFIG, interpolation="nearest")
    np.testing.assert_array_equal(make_transform(nearest, "opencv").resized(small), make_transform(nearest).resized(small))


def test_the_default_policy_is_unchanged_and_fast_records_its_resize():
    assert set(make_transform(CONFIG).policy) == DEFAULT_POLICY_KEYS
    _, transform = create_encoder("efficientnet_lite0")
    assert transform.resize_library == "pillow" and set(transform.policy) == DEFAULT_POLICY_KEYS
    _, fast = create_encoder("efficientnet_lite0", runtime="fast")
    assert "opencv" in fast.policy["resize_library"] and set(fast.policy) - DEFAULT_POLICY_KEYS == {"resize_library"}


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(runtimes, "CALIBRATION_IMAGES", 8)  # 256 in use; small here so quantising stays quick


def mixed_dataset(folder):
    """14 PNGs of four sizes: 28 px and 150 px squares, 100x60 (upsampled and cropped), 300x400 (shrunk: Pillow)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(14):
        width, height = [(28, 28), (150, 150), (100, 60), (300, 400)][i % 4]
        path = folder / f"{i:02d}.png"
        smooth_image(width, height, seed=i).save(path)
        paths.append(path)
    n = len(paths)
    return Dataset("mixed", "binary", ["a", "b"], np.array([p.stem for p in paths]), np.full(n, "train"), np.zeros(n, int), FileImages(paths))


def _embed(data, runtime, cache, batch_size=4):
    encoder, transform = create_encoder("efficientnet_lite0", runtime=runtime)
    options = EmbedOptions("efficientnet_lite0", runtime=runtime, cache_dir=str(cache), batch_size=batch_size, progress=False)
    return embed(data, encoder, transform, options), encoder, transform


def test_fast_has_its_own_key_and_gives_the_same_vectors_twice(tmp_path, small_sample):
    data = mixed_dataset(tmp_path / "images")
    # two caches: the second job exports and quantises its own graph, so equal vectors are not one store read twice
    first, encoder, transform = _embed(data, "fast", tmp_path / "cache1")
    second, _, _ = _embed(data, "fast", tmp_path / "cache2")
    assert encoder.backend.startswith("openvino") and "int8" in encoder.backend, encoder.backend
    assert first.vectors.shape == (14, 1280) and np.isfinite(first.vectors).all()
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert first.key == second.key and encoder.calibration["pixels_resized_by"] == "opencv"
    # the same images through openvino-int8 (Pillow pixels, its own calibration) and the default: other keys, close vectors
    ov, ov_encoder, _ = _embed(data, "openvino-int8", tmp_path / "cache1")
    default, _, _ = _embed(data, "auto", tmp_path / "cache1")
    assert len({first.key, ov.key, default.key}) == 3
    assert "pixels_resized_by" not in ov_encoder.calibration  # openvino-int8's record (so its stores) unchanged
    assert runtimes.min_cosine(first.vectors, default.vectors) > 0.9
    # the embeddings are those of the images' own batches, however the job was cut
    pixels = decode_rows(data.images, transform, list(range(len(data))))
    np.testing.assert_allclose(encoder.embed_batch(pixels), first.vectors, rtol=1e-4, atol=1e-4)


def test_streamed_batches_equal_lone_batches_and_an_abandoned_stream_frees_its_requests(real):  # noqa: F811
    _, pixels, _, _ = real
    encoder = fresh(real, "openvino")
    alone = [encoder.embed_batch(pixels[a:b]) for a, b in ((0, 5), (5, 6), (6, 12))]
    tags = [[0, 5], [5], [6, 12]]  # lists, as embed() passes them: tags need not be hashable
    streamed = list(encoder.embed_batches(zip(tags, [pixels[0:5], pixels[5:6], pixels[6:12]])))
    assert [tag for tag, _ in streamed] == tags
    for (_, vectors), expected in zip(streamed, alone):
        np.testing.assert_array_equal(vectors, expected)
    # a stream dropped half-way (an image failed to decode) hands its requests back: the next call still works
    stream = encoder.embed_batches(([i], pixels[i : i + 1]) for i in range(12))
    next(stream)
    next(stream)
    stream.close()
    np.testing.assert_array_equal(encoder.embed_batch(pixels[6:12]), alone[2])


def test_the_default_runtime_embeds_each_batch_in_turn_with_the_same_vectors(real):  # noqa: F811
    _, pixels, _, _ = real
    encoder = fresh(real, "auto")
    streamed = list(encoder.embed_batches([("a", pixels[:7]), ("b", pixels[7:])]))
    assert encoder.backend.startswith("onnxruntime")  # not streamed: ONNX Runtime takes its batches in turn
    np.testing.assert_array_equal(np.concatenate([v for _, v in streamed]), np.concatenate([encoder.embed_batch(pixels[:7]), encoder.embed_batch(pixels[7:])]))


def test_fast_keys_never_equal_openvino_int8s_even_on_the_same_calibration(real):  # noqa: F811
    digests = [f"{i:064x}" for i in range(20)]
    keys = {}
    for runtime in ("auto", "openvino-int8", "fast"):
        encoder = fresh(real, runtime)
        encoder.calibrate_on(digests, lambda rows: None)
        keys[runtime] = recipe_key(describe_job(encoder, make_transform(encoder.config, runtimes.resize_library(runtime))))
    assert len(set(keys.values())) == 3


def test_without_opencv_fast_is_a_clear_error_before_any_work(monkeypatch, medprobe, tmp_path):
    from conftest import write_npz

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real_find_spec(name, *a))
    with pytest.raises(EncoderError, match=r"--runtime fast resizes with OpenCV, which is not installed: pip install 'medprobe\[fast\]'"):
        create_encoder("efficientnet_lite0", runtime="fast")
    done = medprobe("run", "--dataset", str(write_npz(tmp_path / "tiny.npz", n_train=4, n_val=2, n_test=2)), "--runtime", "fast",
                    "--out", str(tmp_path / "out"))
    assert done.returncode != 0 and "resizes with OpenCV" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_probe_fitted_with_fast_loads_and_refuses_pillow_pixels(tmp_path):
    from types import SimpleNamespace

    from medprobe.core.errors import ModelError
    from medprobe.probes.fit import fit_probe
    from medprobe.probes.saved import load_model, save_model

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)), np.arange(40) % 2
    fitted = fit_probe("logreg", X[:30], y[:30], X[30:], y[30:], task="binary", selection="val")
    data = Dataset("toy", "binary", ["a", "b"], np.arange(30).astype(str), np.array(["train"] * 30), y[:30], FileImages([]))
    folder = save_model(tmp_path / "model", fitted, data, SimpleNamespace(config=CONFIG), make_transform(CONFIG, "opencv"), "efficientnet_lite0")
    model = load_model(folder)  # the recorded OpenCV resize is this installation's `fast` preprocessing: accepted
    model.check_encoder(SimpleNamespace(config=CONFIG), make_transform(CONFIG, "opencv"))
    with pytest.raises(ModelError, match="resize_library"):  # predicting with Pillow's pixels would mean other embeddings
        model.check_encoder(SimpleNamespace(config=CONFIG), make_transform(CONFIG))
