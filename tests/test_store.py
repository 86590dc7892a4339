"""The per-image embedding store: re-split, grow, filter or re-order a dataset and pay only for new images."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_image_folder
from medprobe.data.datasets import DataSpec, load_dataset
from medprobe.embedding.embed import describe_job, embed
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.store import Store, list_stores, verify_store
from medprobe.encoders import create_encoder


def results(folder):
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def ham_folder(shared_data, tmp_path_factory):
    """40 real HAM10000 images in split/class folders, and HAM's metadata for them."""
    source = shared_data / "ham10000_melnv"
    root = tmp_path_factory.mktemp("ham") / "ham"
    files = sorted(source.glob("*/*/*.jpg"))[::50][:40]
    for path in files:
        target = root / path.parent.parent.name / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return root, source / "metadata.csv"


def test_a_reordered_resplit_manifest_of_the_same_images_embeds_nothing(tmp_path, ham_folder, medprobe):
    root, metadata = ham_folder
    first = medprobe("run", "--dataset", root, "--metadata", metadata, "--group", "lesion_id", "--out", tmp_path / "given", "--quiet", "--n-boot", "50")
    assert first.returncode == 0, first.stderr
    manifest = tmp_path / "shuffled.csv"
    rows = [(str(p), p.parent.name) for p in sorted(root.glob("*/*/*.jpg"))][::-1]  # another order, no splits
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    second = medprobe("run", "--dataset", manifest, "--metadata", metadata, "--group", "lesion_id", "--resplit", "--out", tmp_path / "grouped",
                      "--quiet", "--n-boot", "50")
    assert second.returncode == 0, second.stderr
    timings = results(tmp_path / "grouped")["timings"]
    assert timings["embedded_now"] == 0 and timings["embedded_from_store"] == 40 and "cache hit" in second.stdout
    assert timings["embed_cost_cpu_s"] > 0 and timings["embed_cost_source"] == "the store (measured when computed)"


def test_a_grown_folder_embeds_only_the_new_images(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=25)
    assert medprobe("embed", "--dataset", folder, "--quiet").returncode == 0
    write_image_folder(tmp_path / "extra", per_class=1, seed=7)
    shutil.copy(tmp_path / "extra" / "a" / "a_0.png", folder / "a" / "new.png")
    assert medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet", "--n-boot", "50").returncode == 0
    timings = results(tmp_path / "o")["timings"]
    assert timings["embedded_now"] == 1 and timings["embedded_from_store"] == 50
    assert timings["embed_cost_source"] == "this run and the store"


def test_fixing_one_skipped_file_embeds_exactly_that_file(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=10)
    good = (folder / "a" / "a_3.png").read_bytes()
    (folder / "a" / "a_3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert medprobe("run", "--dataset", folder, "--on-error", "skip", "--out", tmp_path / "o1", "--quiet", "--n-boot", "50").returncode == 0
    (folder / "a" / "a_3.png").write_bytes(good)
    assert medprobe("run", "--dataset", folder, "--out", tmp_path / "o2", "--quiet", "--n-boot", "50").returncode == 0
    timings = results(tmp_path / "o2")["timings"]
    assert timings["embedded_now"] == 1 and timings["embedded_from_store"] == 19


def test_two_processes_filling_one_store_at_once_stay_correct(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", per_class=12)
    env = dict(os.environ, MEDPROBE_CACHE=str(tmp_path / "cache"), MEDPROBE_SHARD_SIZE="4")
    command = [sys.executable, "-m", "medprobe.cli", "embed", "--dataset", str(folder), "--quiet", "--runtime", "torch",
               "--encoder", "efficientnet_lite0"]
    both = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE) for _ in range(2)]
    assert [p.wait() for p in both] == [0, 0], [p.stderr.read().decode()[-1000:] for p in both]
    (store,) = list_stores(tmp_path / "cache")
    good, bad = verify_store(store["path"])
    assert bad == [] and good >= 6  # 24 images in chunks of 4, written by one process or both
    data = load_dataset(folder)
    encoder, transform = create_encoder("efficientnet_lite0", runtime="torch")
    stored = embed(data, encoder, transform, EmbedOptions(cache_dir=str(tmp_path / "cache"), progress=False))
    fresh = embed(data, encoder, transform, EmbedOptions(use_cache=False, progress=False, shard_size=4))
    assert stored.from_cache
    np.testing.assert_array_equal(stored.vectors, fresh.vectors)


def test_an_old_per_dataset_cache_entry_is_read_once_into_the_store(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = load_dataset(write_image_folder(tmp_path / "imgs", per_class=6))
    encoder, transform = create_encoder("efficientnet_lite0", runtime="torch")
    reference = embed(data, encoder, transform, EmbedOptions(use_cache=False, progress=False))
    # The layout medprobe wrote before the store: one folder per dataset, part files and a manifest with the config.
    legacy = tmp_path / "cache" / "efficientnet_lite0" / "0123456789abcdef01234567"
    legacy.mkdir(parents=True)
    vectors = reference.vectors
    pq.write_table(pa.table({
        "index": pa.array(np.arange(len(vectors)), pa.int64()), "id": pa.array(list(data.ids)),
        "image_sha256": pa.array(data.content_digests()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    }), legacy / "part-00000.parquet")
    (legacy / "_manifest.json").write_text(json.dumps({"config": describe_job(encoder, transform), "rows": len(vectors)}, default=str))
    (legacy / "_cost.json").write_text(json.dumps({"wall_s": 6.0, "cpu_s": 12.0, "n_images": 12}))
    again = embed(data, encoder, transform, EmbedOptions(cache_dir=str(tmp_path / "cache"), progress=False))
    assert again.from_cache and "read 12 embeddings from the old cache entry" in caplog.text
    np.testing.assert_array_equal(again.vectors, vectors)
    assert again.cost["cpu_s"] == pytest.approx(12.0) and (legacy / "_imported_into_store").is_file()


def test_a_damaged_store_file_is_never_returned(tmp_path, caplog):
    data = load_dataset(write_image_folder(tmp_path / "imgs", per_class=8))
    encoder, transform = create_encoder("efficientnet_lite0", runtime="torch")
    options = EmbedOptions(cache_dir=str(tmp_path / "cache"), progress=False, shard_size=8)
    first = embed(data, encoder, transform, options)
    store = Store(tmp_path / "cache", "efficientnet_lite0", describe_job(encoder, transform))
    victim = store.files()[0]
    data_bytes = bytearray(victim.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    victim.write_bytes(bytes(data_bytes))
    again = embed(data, encoder, transform, options)
    assert "is damaged" in caplog.text and again.cost["computed_now"] == 8 and not victim.exists()
    np.testing.assert_array_equal(again.vectors, first.vectors)


def test_the_cache_command_lists_verifies_and_prunes(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=6)
    env = {"MEDPROBE_CACHE": tmp_path / "cache"}
    lite0 = ("--encoder", "efficientnet_lite0")
    assert medprobe("embed", "--dataset", folder, "--quiet", *lite0, env=env).returncode == 0
    assert medprobe("embed", "--dataset", folder, "--quiet", "--runtime", "bf16", *lite0, env=env).returncode == 0
    listing = medprobe("cache", env=env)
    assert listing.returncode == 0 and "2 store(s)" in listing.stdout and "fp32" in listing.stdout and "bf16" in listing.stdout
    (store,) = [s for s in list_stores(tmp_path / "cache") if s["runtime"] == "bf16"]
    victim = sorted((tmp_path / "cache").rglob("rows-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    verified = medprobe("cache", "--verify", env=env)
    assert "damaged:" in verified.stdout and "1 damaged file(s) removed" in verified.stdout and not victim.exists()
    assert medprobe("cache", "--prune", env=env).returncode == 2
    pruned = medprobe("cache", "--prune", "--encoder", "efficientnet_lite0", env=env)
    assert "removed 2 store(s)" in pruned.stdout and list_stores(tmp_path / "cache") == []


def test_datasets_that_share_images_share_their_embeddings(tmp_path, ham_folder):
    root, metadata = ham_folder
    encoder, transform = create_encoder("efficientnet_lite0", runtime="torch")
    options = EmbedOptions(cache_dir=str(tmp_path / "cache"), progress=False)
    train, _ = DataSpec(str(root / "train")).load()
    both, _ = DataSpec(str(root)).load()
    embed(train, encoder, transform, options)
    external = embed(both, encoder, transform, options)
    assert external.cost["from_store"] == len(train) and external.cost["computed_now"] == len(both) - len(train)
