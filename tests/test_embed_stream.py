"""Streaming embedding: decode one thread ahead in O(batch) memory, store files appended as each chunk completes,
errors and early stops handled; the fused normalisation; device checks."""

import importlib
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medprobe.core.errors import EncoderError
from medprobe.data.datasets import load_dataset
from medprobe.data.sources import ArrayImages
from medprobe.embedding.embed import decoded_batches, embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import Encoder, EncoderConfig, create_encoder
from medprobe.encoders.torch_encoder import TorchEncoder
from medprobe.encoders.transforms import make_transform

embed_module = importlib.import_module("medprobe.embedding.embed")  # the module; `medprobe.embed` the attribute is the function


# --- streaming -------------------------------------------------------------------------------------


class Recorder:
    """A tiny deterministic encoder that records how many store files were on disk at each call."""

    config = EncoderConfig(name="test/recorder", family="test", arch="r", embed_dim=4, input_size=8, resize_mode="squash")
    weights_id = "default"
    runtime = {"precision": "fp32"}

    def __init__(self):
        self.seen = []
        self.cache = None

    def prepare(self, n_images=None, artifacts=None):
        pass

    def calibrate_on(self, digests, load):
        pass

    def runtime_info(self):
        return self.runtime

    def embed_batch(self, pixels):
        self.seen.append(len(list(Path(self.cache).rglob("rows-*.parquet"))) if self.cache else 0)
        return pixels.reshape(len(pixels), 3, -1).mean(axis=2).repeat(2, axis=1)[:, :4].astype(np.float32)


def _npz(tmp_path, n):
    from conftest import write_npz

    return write_npz(tmp_path / "tiny.npz", n_train=n, n_val=n, n_test=n, size=8)


def test_store_files_are_appended_as_each_chunk_completes(tmp_path):
    data = load_dataset(_npz(tmp_path, 8))  # 24 distinct images: 6 appended files of 4, batches of 2
    assert len(set(data.content_digests())) == 24
    encoder = Recorder()
    encoder.cache = tmp_path / "cache"
    assert isinstance(encoder, Encoder)  # the stand-in implements the whole protocol embed() relies on
    options = EmbedOptions(encoder.config.name, cache_dir=str(encoder.cache), batch_size=2, shard_size=4, progress=False)
    result = embed(data, encoder, make_transform(encoder.config), options)
    assert encoder.seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert result.vectors.shape == (24, 4)
    assert [len(pq.read_table(f)) for f in sorted(Path(result.path).glob("rows-*.parquet"))] == [4] * 6
    expected = np.stack([encoder.embed_batch(make_transform(encoder.config)(data.images.load(i))[None])[0] for i in range(24)])
    np.testing.assert_allclose(result.vectors, expected, rtol=1e-6)


def test_decoding_runs_at_most_a_couple_of_batches_ahead():
    """Memory stays O(batch): with a GPU, decoding runs ahead of the encoder but waits for it instead of filling memory."""
    decoded = []

    class Counting(ArrayImages):
        def load(self, index):
            decoded.append(index)
            return super().load(index)

    images = Counting([np.zeros((400, 8, 8), np.uint8)])
    ahead = []
    batches = [(0, list(range(b, b + 10))) for b in range(0, 400, 10)]
    for (_, rows), pixels in decoded_batches(images, make_transform(Recorder.config), batches, overlap=True):
        time.sleep(0.005)  # a slow encoder
        ahead.append(len(decoded) - (rows[-1] + 1))
        assert pixels.shape == (10, 3, 8, 8)
    assert 0 < max(ahead) <= (embed_module.PREFETCH + 1) * 10


@pytest.mark.parametrize("overlap", [False, True])
def test_batches_hold_exactly_what_the_transform_gives_each_image(overlap):
    """Decoding in a pool, straight into the batch, changes nothing: every row equals transform(load(i)) bit for bit."""
    rng = np.random.default_rng(0)
    images = ArrayImages([rng.integers(0, 256, (30, 20, 12, 3), dtype=np.uint8)])
    config = EncoderConfig(name="t", family="t", arch="t", embed_dim=1, input_size=16, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    transform = make_transform(config)
    batches = [(0, [5, 3, 29, 0]), (1, list(range(7, 20)))]
    got = list(decoded_batches(images, transform, batches, overlap=overlap))
    assert [batch for batch, _ in got] == batches
    for (_, rows), pixels in got:
        np.testing.assert_array_equal(pixels, np.stack([transform(images.load(i)) for i in rows]))


@pytest.mark.parametrize("overlap", [False, True])
def test_a_decoding_error_reaches_the_caller_and_stops_the_threads(overlap):
    from medprobe.core.errors import ImageError

    class Broken(ArrayImages):
        def load(self, index):
            if index == 13:
                raise ImageError(f"image #{index}", "corrupt")
            return super().load(index)

    images = Broken([np.zeros((40, 8, 8), np.uint8)])
    with pytest.raises(ImageError, match="#13"):
        for _ in decoded_batches(images, make_transform(Recorder.config), [(0, list(range(b, b + 4))) for b in range(0, 40, 4)], overlap=overlap):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith("medprobe-decode")]


@pytest.mark.parametrize("overlap", [False, True])
def test_stopping_early_stops_the_decode_threads(overlap):
    images = ArrayImages([np.zeros((400, 8, 8), np.uint8)])
    batches = decoded_batches(images, make_transform(Recorder.config), [(0, list(range(b, b + 4))) for b in range(0, 400, 4)], overlap=overlap)
    for _ in batches:
        break
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("medprobe-decode")]


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
