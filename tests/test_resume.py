"""Resumable extraction: SIGKILL a real `medprobe embed` mid-run, rerun, get bit-identical embeddings;
torn or edited cache files are detected, logged and rebuilt."""

import json
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
from conftest import SHARED_DATA, write_image_folder

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
    return {p.name: p for p in Path(cache).rglob("part-*.parquet")}


def medprobe_embed(folder, cache, shard_size):
    env = dict(os.environ, MEDPROBE_CACHE=str(cache), MEDPROBE_SHARD_SIZE=str(shard_size))
    command = [sys.executable, "-m", "medprobe.cli", "embed", "--dataset", str(folder), "--quiet", "--batch-size", "4"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(process, cache, shards_done, timeout=120):
    """SIGKILL once `shards_done` shards are committed (0: after a short start-up delay)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if (shards_done == 0 and time.monotonic() > deadline - timeout + 1.0) or (shards_done and len(shard_files(cache)) >= shards_done):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    return process.returncode


def manifest(cache):
    return json.loads(next(Path(cache).rglob("_manifest.json")).read_text())


def test_sigkill_at_several_points_then_rerun_gives_bit_identical_embeddings(tmp_path):
    folder = copy_real_jpegs(tmp_path / "ham", per_class=8)  # 16 images, 4 shards of 4
    baseline = medprobe_embed(folder, tmp_path / "whole", 4)
    assert baseline.wait() == 0, baseline.stderr.read().decode()

    killed = tmp_path / "killed"
    kills = []
    for shards_done in (0, 1, 2):
        kills.append(kill_when(medprobe_embed(folder, killed, 4), killed, shards_done))
    assert -signal.SIGKILL in kills, "no run was killed before finishing; the test proved nothing"
    assert not list(killed.rglob("_manifest.json")), "a killed run must not leave a manifest"
    before = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name, p in shard_files(killed).items()}
    assert 0 < len(before) < 4

    final = medprobe_embed(folder, killed, 4)
    assert final.wait() == 0, final.stderr.read().decode()
    after = shard_files(killed)
    now = {name: (after[name].stat().st_ino, after[name].stat().st_mtime_ns) for name in before}
    assert now == before, f"resume recomputed finished shards (kills: {kills}; stderr: {final.stderr.read().decode()[-2000:]})"
    assert [s["sha256"] for s in manifest(killed)["shards"]] == [s["sha256"] for s in manifest(tmp_path / "whole")["shards"]]


# --- corrupt cache files, in process with a tiny deterministic encoder --------------------------------


class TinyEncoder:
    config = EncoderConfig(name="test/tiny", family="test", arch="tiny", embed_dim=8, input_size=16, resize_mode="squash")
    weights_id = "default"
    runtime = {"precision": "fp32"}

    def __init__(self):
        self.weights = np.random.default_rng(0).normal(size=(3 * 16 * 16, 8)).astype(np.float32)
        self.calls = 0

    def prepare(self, n_images=None, artifacts=None):
        pass

    def runtime_info(self):
        return self.runtime

    def embed_batch(self, pixels):
        self.calls += len(pixels)
        return pixels.reshape(len(pixels), -1) @ self.weights


SHARDS_OF_4 = EmbedOptions(TinyEncoder.config.name, shard_size=4, progress=False)


@pytest.fixture
def tiny(tmp_path):
    data = load_dataset(write_image_folder(tmp_path / "imgs", per_class=10, size=16))  # 20 images: 5 shards
    encoder = TinyEncoder()
    assert isinstance(encoder, Encoder)
    first = embed(data, encoder, make_transform(encoder.config), SHARDS_OF_4)
    assert len(list(Path(first.path).glob("part-*.parquet"))) == 5
    encoder.calls = 0
    return data, encoder, first


def rerun(data, encoder):
    return embed(data, encoder, make_transform(encoder.config), SHARDS_OF_4)


def test_a_truncated_shard_of_a_complete_entry_fails_its_checksum_and_is_rebuilt(tiny, caplog):
    data, encoder, first = tiny
    shard = Path(first.path) / "part-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:-40])
    with caplog.at_level(logging.WARNING):
        again = rerun(data, encoder)
    assert "part-00002.parquet fails its checksum" in caplog.text
    assert encoder.calls == 4 and again.vectors.tobytes() == first.vectors.tobytes()
    encoder.calls = 0
    assert rerun(data, encoder).from_cache and encoder.calls == 0  # the manifest was rewritten


def test_a_torn_shard_of_an_interrupted_run_is_detected_by_its_footer(tiny, caplog):
    data, encoder, first = tiny
    (Path(first.path) / "_manifest.json").unlink()  # as if killed before the end
    shard = Path(first.path) / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        again = rerun(data, encoder)
    assert "part-00001.parquet is corrupt" in caplog.text
    assert encoder.calls == 4 and again.vectors.tobytes() == first.vectors.tobytes()


def test_a_flipped_byte_anywhere_never_gives_wrong_embeddings(tiny):
    data, encoder, first = tiny
    (Path(first.path) / "_manifest.json").unlink()  # no manifest: only Parquet's own checks stand guard
    shard = Path(first.path) / "part-00003.parquet"
    original = shard.read_bytes()
    for offset in range(0, len(original), max(1, len(original) // 60)):
        damaged = bytearray(original)
        damaged[offset] ^= 0xFF
        shard.write_bytes(bytes(damaged))
        again = rerun(data, encoder)
        assert again.vectors.tobytes() == first.vectors.tobytes(), f"byte {offset} flipped gave different embeddings"
        (Path(first.path) / "_manifest.json").unlink(missing_ok=True)
        shard.write_bytes(original)


def test_a_corrupt_manifest_is_reported_and_the_shards_checked_again(tiny, caplog):
    data, encoder, first = tiny
    (Path(first.path) / "_manifest.json").write_text('{"key": "trunc')
    with caplog.at_level(logging.WARNING):
        again = rerun(data, encoder)
    assert "_manifest.json is corrupt" in caplog.text
    assert encoder.calls == 0 and again.vectors.tobytes() == first.vectors.tobytes()
