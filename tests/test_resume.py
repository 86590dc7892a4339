"""Resumable extraction: SIGKILL a real `medprobe embed` mid-run, rerun, get bit-identical embeddings
without touching the files already written; torn or edited store files are detected, logged, never
returned, and their images recomputed."""

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, store_vectors, write_image_folder
from medprobe.data.datasets import load_dataset
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import Encoder, EncoderConfig
from medprobe.encoders.transforms import make_transform

HAM = SHARED_DATA / "ham10000_melnv"


def copy_real_jpegs(target, per_class):
    """A class/image folder of real dermatoscopy JPEGs copied into a temp dir (never into the repo)."""
    for cls in ("mel", "nv"):
        files = sorted((HAM / "train" / cls).glob("*.jpg"))[:per_class]
        if len(files) < per_class:
            pytest.fail(f"real data not found at {HAM}")
        (target / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(f, target / cls / f.name)
    return target


def shard_files(cache):
    """The store files written so far (a file appears whole, by rename, once its chunk is done)."""
    return {p.name: p for p in Path(cache).rglob("rows-*.parquet")}


# The plain encoder: what is killed is the store's writing, not a recipe (the default's 260 px costs each process more)
EMBED = ["embed", "--quiet", "--batch-size", "4", "--encoder", "efficientnet_lite0"]


def medprobe_embed(folder, cache, shard_size):
    env = dict(os.environ, MEDPROBE_CACHE=str(cache), MEDPROBE_SHARD_SIZE=str(shard_size))
    command = [sys.executable, "-m", "medprobe.cli", *EMBED, "--dataset", str(folder)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(process, cache, shards_done, timeout=120):
    """SIGKILL once `shards_done` store files are appended (0: after a short start-up delay)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if (shards_done == 0 and time.monotonic() > deadline - timeout + 1.0) or (shards_done and len(shard_files(cache)) >= shards_done):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    return process.returncode


def test_sigkill_at_several_points_then_rerun_gives_bit_identical_embeddings(tmp_path, medprobe):
    folder = copy_real_jpegs(tmp_path / "ham", per_class=8)  # 16 images, 4 chunks of 4
    # the uninterrupted run, here: one thread for PyTorch, as in the processes below (they inherit OMP_NUM_THREADS)
    baseline = medprobe(*EMBED, "--dataset", folder, env={"MEDPROBE_CACHE": tmp_path / "whole", "MEDPROBE_SHARD_SIZE": 4})
    assert baseline.returncode == 0, baseline.stderr
    whole = store_vectors(tmp_path / "whole")
    assert len(whole) == 16 and len(shard_files(tmp_path / "whole")) == 4

    killed = tmp_path / "killed"
    kills = []
    for shards_done in (0, 1, 2):
        kills.append(kill_when(medprobe_embed(folder, killed, 4), killed, shards_done))
    assert -signal.SIGKILL in kills, "no run was killed before finishing; the test proved nothing"
    before = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in shard_files(killed).items()}
    assert 0 < len(before) < 4

    final = medprobe_embed(folder, killed, 4)
    assert final.wait() == 0, final.stderr.read().decode()
    after = shard_files(killed)
    now = {name: (after[name].stat().st_ino, after[name].stat().st_mtime_ns) for name in before}
    assert now == before, f"resume rewrote finished files (kills: {kills}; stderr: {final.stderr.read().decode()[-2000:]})"
    resumed = store_vectors(killed)  # fails if an image was stored twice, i.e. finished work was recomputed
    assert resumed.keys() == whole.keys()
    assert all(resumed[d].tobytes() == whole[d].tobytes() for d in whole), "resumed vectors differ from an uninterrupted run"


# --- damaged store files, in process with a tiny deterministic encoder --------------------------------


class TinyEncoder:
    config = EncoderConfig(name="test/tiny", family="test", arch="tiny", embed_dim=8, input_size=16, resize_mode="squash")
    weights_id = "default"
    runtime = {"precision": "fp32"}

    def __init__(self):
        self.weights = np.random.default_rng(0).normal(size=(3 * 16 * 16, 8)).astype(np.float32)
        self.calls = 0

    def prepare(self, n_images=None, artifacts=None):
        pass

    def calibrate_on(self, digests, load):
        pass

    def runtime_info(self):
        return self.runtime

    def embed_batch(self, pixels):
        self.calls += len(pixels)
        return pixels.reshape(len(pixels), -1) @ self.weights


SHARDS_OF_4 = EmbedOptions(TinyEncoder.config.name, shard_size=4, progress=False)


@pytest.fixture
def tiny(tmp_path):
    data = load_dataset(write_image_folder(tmp_path / "imgs", per_class=10, size=16))  # 20 images: 5 files of 4
    encoder = TinyEncoder()
    assert isinstance(encoder, Encoder)
    first = embed(data, encoder, make_transform(encoder.config), SHARDS_OF_4)
    assert len(files(first)) == 5
    encoder.calls = 0
    return data, encoder, first


def files(embedded):
    return sorted(Path(embedded.path).glob("rows-*.parquet"))


def rerun(data, encoder):
    return embed(data, encoder, make_transform(encoder.config), SHARDS_OF_4)


def rename_to_its_checksum(path):
    """Give a (damaged) file the name its bytes now hash to, so only Parquet's own checks stand guard."""
    target = path.with_name(f"rows-{hashlib.sha256(path.read_bytes()).hexdigest()[:32]}.parquet")
    path.rename(target)
    return target


def test_a_truncated_file_is_detected_removed_and_recomputed(tiny, caplog):
    data, encoder, first = tiny
    shard = files(first)[2]
    shard.write_bytes(shard.read_bytes()[:-40])
    with caplog.at_level(logging.WARNING):
        again = rerun(data, encoder)
    assert f"{shard} is damaged" in caplog.text and not shard.exists()
    assert encoder.calls == 4 and again.vectors.tobytes() == first.vectors.tobytes()
    encoder.calls = 0
    assert rerun(data, encoder).from_cache and encoder.calls == 0  # the recomputed images were appended again


def test_an_edited_vector_fails_the_checksum_in_its_name(tiny, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, encoder, first = tiny
    shard = files(first)[0]
    table = pq.read_table(shard)
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(len(table), -1) + 1
    edited = table.set_column(1, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]))
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), shard, write_page_checksum=True)  # a valid Parquet file
    with caplog.at_level(logging.WARNING):
        again = rerun(data, encoder)
    assert f"{shard} is damaged" in caplog.text and "checksum in its name" in caplog.text and not shard.exists()
    assert encoder.calls == 4 and again.vectors.tobytes() == first.vectors.tobytes()


def test_a_torn_file_whose_name_matches_its_bytes_is_detected_by_its_footer(tiny, caplog):
    data, encoder, first = tiny
    shard = files(first)[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    shard = rename_to_its_checksum(shard)
    with caplog.at_level(logging.WARNING):
        again = rerun(data, encoder)
    assert f"{shard} is damaged" in caplog.text and not shard.exists()
    assert encoder.calls == 4 and again.vectors.tobytes() == first.vectors.tobytes()


@pytest.mark.parametrize("renamed", [False, True], ids=["in-place", "renamed-to-match"])
def test_a_flipped_byte_anywhere_never_gives_wrong_embeddings(tiny, renamed):
    """In place, the checksum in the name catches every flip; renamed to match, Parquet's footer and page checksums must."""
    data, encoder, first = tiny
    shard = files(first)[3]
    kept, original = set(files(first)) - {shard}, shard.read_bytes()
    for offset in range(0, len(original), max(1, len(original) // 60)):
        damaged = bytearray(original)
        damaged[offset] ^= 0xFF
        shard.write_bytes(bytes(damaged))
        if renamed:
            rename_to_its_checksum(shard)
        encoder.calls = 0
        again = rerun(data, encoder)
        assert again.vectors.tobytes() == first.vectors.tobytes(), f"byte {offset} flipped gave different embeddings"
        assert encoder.calls in (0, 4) and set(files(first)) >= kept, f"byte {offset}: {encoder.calls} images recomputed"
        if not renamed:
            assert encoder.calls == 4, f"byte {offset} flipped in place went unnoticed"
        for path in set(files(first)) - kept:  # back to the first run's store for the next flip
            path.unlink()
        shard.write_bytes(original)


def test_a_damaged_recipe_file_does_not_stop_lookups(tiny, caplog):
    data, encoder, first = tiny
    (Path(first.path) / "_recipe.json").write_text('{"encoder": trunc')
    with caplog.at_level(logging.WARNING):
        again = rerun(data, encoder)
    assert encoder.calls == 0 and again.from_cache and again.vectors.tobytes() == first.vectors.tobytes()


def test_a_damaged_recipe_file_does_not_break_the_cache_command(tiny, medprobe):
    _, _, first = tiny
    (Path(first.path) / "_recipe.json").write_text('{"encoder": trunc')
    listing = medprobe("cache", "--verify", env={"MEDPROBE_CACHE": Path(first.path).parent.parent})
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
