"""Decode once: the pre-scan keeps what it decoded for embedding, and nothing about the embeddings changes."""

import pickle

import numpy as np
import pytest
from PIL import Image

import medprobe.data.images as images_module
import medprobe.data.scan as scan_module
from conftest import write_image_folder
from medprobe.core.errors import DatasetError
from medprobe.data.datasets import DataSpec, load_dataset
from medprobe.data.images import decode_image
from medprobe.data.scan import scan_images
from medprobe.data.sources import FileImages, KeptImages
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders.transforms import make_transform
from test_resume import TinyEncoder


def write_folder(root):
    """PNGs and JPEGs (the scan treats JPEGs differently: reduced scale when not kept)."""
    write_image_folder(root, per_class=5, size=40)
    rng = np.random.default_rng(1)
    for k in range(4):
        pixels = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "a" / f"photo_{k}.jpg", quality=90)
    return root


@pytest.fixture
def decodes(monkeypatch):
    """Every full or reduced decode of a file, by path, wherever it happens."""
    calls = []
    original = images_module.read_image

    def counting(path, fast=False, data=None):
        calls.append((str(path), fast))
        return original(path, fast, data=data)

    monkeypatch.setattr(images_module, "read_image", counting)
    monkeypatch.setattr(scan_module, "read_image", counting)
    return calls


def embed_tiny(data):
    encoder = TinyEncoder()
    return embed(data, encoder, make_transform(encoder.config), EmbedOptions(encoder.config.name, use_cache=False, progress=False))


def test_each_file_is_decoded_once_and_the_embeddings_are_those_of_the_two_pass_path(tmp_path, decodes):
    folder = write_folder(tmp_path / "imgs")
    two_pass = embed_tiny(load_dataset(folder)).vectors  # nothing kept: embedding decodes every file itself
    decodes.clear()

    data, report = DataSpec(str(folder)).load()
    assert len(data.images.kept) == len(data) == report.scanned == 14
    once = embed_tiny(data)
    assert sorted(path for path, _ in decodes) == sorted(str(p) for p in data.images.paths), "a file was decoded twice"
    assert not any(fast for _, fast in decodes), "kept images must be decoded at full scale"
    np.testing.assert_array_equal(once.vectors, two_pass)
    assert len(data.images.kept) == 0 and data.images.kept.used == 0, "embedded images must be let go"


def test_a_kept_image_is_exactly_the_decoded_file(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    data, _ = scan_images(load_dataset(folder))
    for index, path in enumerate(data.images.paths):
        kept = data.images.load(index)
        assert kept.mode == decode_image(path).mode
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(decode_image(path)))


def test_beyond_the_budget_files_are_checked_at_reduced_scale_and_decoded_again(tmp_path, decodes):
    folder = write_folder(tmp_path / "imgs")
    reference = embed_tiny(load_dataset(folder)).vectors
    data = load_dataset(folder)
    data.images = FileImages(data.images.paths, KeptImages(budget=3 * 40 * 40 * 3))  # room for three 40 px PNGs
    decodes.clear()
    data, _ = scan_images(data)
    assert len(data.images.kept) == 3 and data.images.kept.used == 3 * 40 * 40 * 3
    assert sum(fast for _, fast in decodes) == len(data) - 3, "files that are not kept are only checked"
    np.testing.assert_array_equal(embed_tiny(data).vectors, reference)
    assert len(decodes) == 2 * len(data) - 3


def test_bad_files_are_all_reported_before_embedding_and_skip_keeps_the_good_ones(tmp_path, decodes):
    folder = write_folder(tmp_path / "imgs")
    (folder / "b" / "empty.png").write_bytes(b"")
    (folder / "a" / "cut.jpg").write_bytes((folder / "a" / "photo_0.jpg").read_bytes()[:300])
    with pytest.raises(DatasetError) as failed:
        DataSpec(str(folder)).load()
    assert "2 of 16 images cannot be read" in str(failed.value)
    assert "empty.png: empty file" in str(failed.value) and "cut.jpg: corrupt or truncated" in str(failed.value)

    data, report = DataSpec(str(folder), on_error="skip").load()
    assert len(report.skipped) == 2 and len(data) == 14
    assert len(data.images.kept) == 14 and data.images.kept.used == sum(
        np.asarray(decode_image(p)).size for p in data.images.paths
    ), "a failed decode must give its reservation back"
    decodes.clear()
    embed_tiny(data)
    assert decodes == [], "every good file was kept by the scan"


def test_a_ray_task_never_carries_the_kept_pixels(tmp_path):
    data, _ = scan_images(load_dataset(write_folder(tmp_path / "imgs")))
    assert len(data.images.kept) == 14
    copy = pickle.loads(pickle.dumps(data.images))
    assert len(copy.kept) == 0 and copy.kept.budget == data.images.kept.budget
    assert [str(p) for p in copy.paths] == [str(p) for p in data.images.paths]
