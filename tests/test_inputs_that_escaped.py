"""Inputs that used to escape as tracebacks, raw third-party output or wrong records."""

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import store_rows, store_vectors, write_image_folder, write_npz
from medprobe.data.datasets import load_dataset
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import create_encoder


def png_claiming(path, width, height):
    """A 1x1 PNG whose header claims width x height (the pixel data stays tiny)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_an_extremely_elongated_image_is_refused_by_name_not_by_memory_error(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=8)
    Image.new("L", (100000, 2)).save(folder / "a" / "strip.png")
    done = medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet")
    assert done.returncode == 2 and "strip.png: image is 100000 x 2 pixels (aspect ratio over 50:1)" in done.stderr
    assert "MemoryError" not in done.stderr and "Traceback" not in done.stderr


def test_a_bad_max_pixels_setting_is_named_once(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=8)
    done = medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet", env={"MEDPROBE_MAX_PIXELS": "abc"})
    assert done.returncode == 2 and done.stderr.strip() == (
        "medprobe: error: MEDPROBE_MAX_PIXELS must be a whole number of pixels, e.g. 200000000; got 'abc'")


def test_a_gigapixel_header_gets_medprobes_message_with_the_setting(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=8)
    png_claiming(folder / "a" / "huge.png", 40000, 40000)
    done = medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet")
    assert done.returncode == 2 and "huge.png: image is 40000 x 40000 = 1,600,000,000 pixels" in done.stderr
    assert "MEDPROBE_MAX_PIXELS" in done.stderr and "DecompressionBomb" not in done.stderr


def test_pydicoms_own_output_becomes_per_file_notes(tmp_path):
    # A real process, not the in-process runner: what must not happen is raw output on the user's terminal.
    import shutil

    import pydicom.data

    # pydicom's own test files: every 2nd keeps the run short and still holds the undecodable, the padded and the
    # implicit-VR files whose log records and warnings used to reach the terminal.
    # (Read from pydicom's folder: get_testdata_files would also try to download more, 15 s offline.)
    files = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm") if p.stat().st_size > 0)[::2]
    for i, path in enumerate(files):
        target = tmp_path / "dcm" / "ab"[i % 2] / f"{i:03d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    done = subprocess.run([sys.executable, "-m", "medprobe.cli", "run", "--dataset", str(tmp_path / "dcm"), "--on-error", "skip",
                           "--out", str(tmp_path / "o"), "--quiet", "--n-boot", "50"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Expected explicit VR" not in done.stderr
    assert all(line.startswith(("medprobe:", "  skipped ")) for line in done.stderr.strip().splitlines())
    record = json.loads((tmp_path / "o" / "results.json").read_text())["images"]
    assert any(n["note"].startswith("pydicom: ") for n in record["notes"])
    assert record["skipped"] and all("\n" not in s["reason"] for s in record["skipped"])


@pytest.fixture
def tiny_cache(tmp_path):
    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=16, n_val=4, n_test=4, classes=2))  # 24 images: 3 files of 8
    options = EmbedOptions(cache_dir=str(tmp_path / "cache"), progress=False, shard_size=8)
    encoder, transform = create_encoder("efficientnet_lite0", runtime="torch")
    first = embed(data, encoder, transform, options)
    return data, options, encoder, transform, first


def file_holding(first, digest):
    import pyarrow.parquet as pq

    return next(f for f in Path(first.path).glob("rows-*.parquet") if digest in pq.read_table(f, columns=["image_sha256"]).column(0).to_pylist())


# (Was: an entry killed before its manifest is repaired. The store has no manifest: each file is whole once renamed.)
def test_a_store_whose_last_chunk_was_never_appended_recomputes_only_that_chunk(tiny_cache):
    data, options, encoder, transform, first = tiny_cache
    digests = data.content_digests()
    last = file_holding(first, digests[-1])
    last.unlink()  # as if killed while embedding the last chunk
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(first.path).glob("rows-*.parquet")}
    again = embed(data, encoder, transform, options)
    assert again.cost["computed_now"] == 8 and again.cost["from_store"] == 16 and not again.from_cache
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept
    np.testing.assert_array_equal(again.vectors, first.vectors)
    assert len(store_vectors(first.path)) == 24  # each image once


def test_a_store_file_whose_footer_names_other_columns_is_recomputed(tiny_cache, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, options, encoder, transform, first = tiny_cache
    shard = file_holding(first, data.content_digests()[8])
    table = pq.read_table(shard)
    renamed = table.rename_columns(["image_sha256", "vector", "wall_s", "cpu_s"]).replace_schema_metadata(table.schema.metadata)
    sink = pa.BufferOutputStream()
    pq.write_table(renamed, sink, write_page_checksum=True)
    data_bytes = sink.getvalue().to_pybytes()
    shard.unlink()
    shard = shard.with_name(f"rows-{hashlib.sha256(data_bytes).hexdigest()[:32]}.parquet")  # named as the store names it
    shard.write_bytes(data_bytes)
    again = embed(data, encoder, transform, options)
    assert not again.from_cache and again.cost["computed_now"] == 8 and f"{shard} is damaged" in caplog.text and not shard.exists()
    np.testing.assert_allclose(again.vectors, first.vectors, rtol=1e-5, atol=1e-6)
    assert embed(data, encoder, transform, options).from_cache  # and repaired for good


def test_stale_part_files_are_removed_when_the_store_is_next_used(tiny_cache):
    data, options, encoder, transform, first = tiny_cache
    folder = Path(first.path)
    stale = folder / ".rows-0123456789abcdef0123456789abcdef.parquet.99999.part"  # as atomic_write_bytes names them
    stale.write_bytes(b"left by a killed writer")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    live = folder / ".rows-fedcba9876543210fedcba9876543210.parquet.99998.part"  # another process writing right now
    live.write_bytes(b"being written")
    assert embed(data, encoder, transform, options).from_cache
    assert not stale.exists() and live.exists()


def test_a_resumed_job_records_the_cost_of_every_image(tmp_path):
    data = load_dataset(write_npz(tmp_path / "t.npz", n_train=16, n_val=4, n_test=4, classes=2))
    options = EmbedOptions(cache_dir=str(tmp_path / "cache"), progress=False, shard_size=8, batch_size=8)
    encoder, transform = create_encoder("efficientnet_lite0", runtime="torch")
    real, calls = encoder.embed_batch, []

    def dies_on_the_third_batch(pixels):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill after two appended chunks
        return real(pixels)

    encoder.embed_batch = dies_on_the_third_batch
    with pytest.raises(KeyboardInterrupt):
        embed(data, encoder, transform, options)
    encoder.embed_batch = real
    killed = store_rows(tmp_path / "cache")
    assert len(killed["image_sha256"]) == 16 and (killed["cpu_s"] > 0).all()
    resumed = embed(data, encoder, transform, options)
    cost = resumed.cost
    assert cost["n_images"] == 24 and cost["computed_now"] == 8 and cost["from_store"] == 16
    assert cost["measured_in"] == "this run and the store"
    # Every image's cost, the killed run's included: what the store recorded for the 24 images.
    rows = store_rows(tmp_path / "cache")
    assert len(rows["image_sha256"]) == 24
    assert cost["cpu_s"] == pytest.approx(rows["cpu_s"].sum()) and cost["wall_s"] == pytest.approx(rows["wall_s"].sum())
    assert cost["cpu_s"] > killed["cpu_s"].sum() > 0


def test_medprobe_embed_records_the_cost(tmp_path, medprobe):
    npz = write_npz(tmp_path / "t.npz", n_train=16, n_val=4, n_test=4, classes=2)
    done = medprobe("embed", "--dataset", npz, "--quiet", "--cache-dir", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    rows = store_rows(tmp_path / "cache")
    assert len(rows["image_sha256"]) == 24
    assert np.isfinite(rows["wall_s"]).all() and np.isfinite(rows["cpu_s"]).all()
    assert (rows["wall_s"] > 0).all() and rows["cpu_s"].sum() > 0
