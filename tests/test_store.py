"""The per-image embedding store: re-split, grow, filter or re-order a dataset and pay only for new images."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK, write_image_folder
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
    first = medprobe("run", "--dataset", root, "--metadata", metadata, "--group", "lesion_id", "--out", tmp_path / "given", "--quiet", "--n-boot", "50", *QUICK)
    assert first.returncode == 0, first.stderr
    manifest = tmp_path / "shuffled.csv"
    rows = [(str(p), p.parent.name) for p in sorted(root.glob("*/*/*.jpg"))][::-1]  # another order, no splits
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    second = medprobe("run", "--dataset", manifest, "--metadata", metadata, "--group", "lesion_id", "--resplit", "--out", tmp_path / "grouped",
                      "--quiet", "--n-boot", "50", *QUICK)
    assert second.returncode == 0, second.stderr
    timings = results(tmp_path / "grouped")["timings"]
    assert timings["embedded_now"] == 0 and timings["embedded_from_store"] == 40 and "cache hit" in second.stdout
    assert timings["embed_cost_cpu_s"] > 0 and timings["embed_cost_source"] == "the store (measured when computed)"


def test_a_grown_folder_embeds_only_the_new_images(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=25)
    assert medprobe("embed", "--dataset", folder, "--quiet", "--encoder", "efficientnet_lite0").returncode == 0
    write_image_folder(tmp_path / "extra", per_class=1, seed=7)
    shutil.copy(tmp_path / "extra" / "a" / "a_0.png", folder / "a" / "new.png")
    assert medprobe("run", "--dataset", folder, "--out", tmp_path / "o", "--quiet", "--n-boot", "50", *QUICK).returncode == 0
    timings = results(tmp_path / "o")["timings"]
    assert timings["embedded_now"] == 1 and timings["embedded_from_store"] == 50
    assert timings["embed_cost_source"] == "this run and the store"


def test_fixing_one_skipped_file_embeds_exactly_that_file(tmp_path, medprobe):
    folder = write_image_folder(tmp_path / "imgs", per_class=10)
    good = (folder / "a" / "a_3.png").read_bytes()
    (folder / "a" / "a_3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert medprobe("run", "--dataset", folder, "--on-error", "skip", "--out", tmp_path / "o1", "--quiet", "--n-boot", "50", *QUICK).returncode == 0
    (folder / "a" / "a_3.png").write_bytes(good)
    assert medprobe("run", "--dataset", folder, "--out", tmp_path / "o2", "--quiet", "--n-boot", "50", *QUICK).returncode == 0
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


# --- a store damaged by hand (issue 27): repaired with a notice, or one line and exit 2; never a traceback ----------


def filled_store(root, n_files=3, rows=8, name="efficientnet_lite0"):
    """A store of random vectors written through Store.append, for what does not need an encoder."""
    store = Store(root, name, {"encoder": {"name": name}, "runtime": {"precision": "fp32"}})
    rng = np.random.default_rng(0)
    for f in range(n_files):
        digests = [f"{f:02d}{i:062d}" for i in range(rows)]
        store.append(digests, rng.normal(size=(rows, 16)).astype(np.float32), np.ones(rows), np.ones(rows))
    return store


def test_cache_verify_exits_cleanly_every_time(tmp_path):
    # It used to abort ("terminate called without an active exception", exit 134) in 9 of 10 tries: pyarrow's thread
    # pool torn down at exit after reading from a buffer. Each try is a fresh process, as a user runs it.
    filled_store(tmp_path / "cache", n_files=6, rows=64)
    env = dict(os.environ, MEDPROBE_CACHE=str(tmp_path / "cache"))
    for _ in range(4):
        done = subprocess.run([sys.executable, "-m", "medprobe.cli", "cache", "--verify"], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "", done.stderr[-500:]
        assert "0 damaged file(s)" in done.stdout


def test_a_ray_worker_reading_the_store_exits_cleanly_every_time(tmp_path):
    # The same abort in a Ray worker's look-up of what a store holds (`_held_digests`, which read with pyarrow's pool): 3
    # of 12 processes that only looked up a store aborted at exit, once the worker stopped importing PyTorch up front.
    filled_store(tmp_path / "cache", n_files=6, rows=64)
    code = ("import sys; from medprobe.embedding.ray import _held_digests; from medprobe.embedding.store import Store; "
            "held, names = _held_digests(Store(sys.argv[1], 'efficientnet_lite0', {'encoder': {'name': 'efficientnet_lite0'}, "
            "'runtime': {'precision': 'fp32'}})); print(len(held), len(names))")
    for _ in range(6):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "" and done.stdout.split() == ["384", "6"], (done.returncode, done.stderr[-500:])


@pytest.fixture
def ham_twelve(shared_data, tmp_path):
    """Twelve real HAM10000 images in class folders (six each: enough for the splits drawn), embedded once."""
    root = tmp_path / "ham12"
    for label in ("mel", "nv"):
        (root / label).mkdir(parents=True)
        for path in sorted((shared_data / "ham10000_melnv" / "train" / label).glob("*.jpg"))[:6]:
            shutil.copy(path, root / label / path.name)
    data = load_dataset(root)
    encoder, transform = create_encoder("efficientnet_lite0", runtime="torch")
    options = EmbedOptions(cache_dir=str(tmp_path / "cache"), progress=False)
    first = embed(data, encoder, transform, options)
    return data, encoder, transform, options, first


def test_what_the_store_did_not_write_is_moved_aside_and_nothing_is_recomputed(ham_twelve, caplog):
    import pandas as pd

    data, encoder, transform, options, first = ham_twelve
    store = Path(first.path)
    (own,) = store.glob("rows-*.parquet")
    # A folder named like a rows file made every run recompute its images and add a file (the store grew without
    # limit); a foreign.parquet was kept and read by pandas.read_parquet(store) as garbage rows.
    (store / "rows-0000.parquet").mkdir()
    shutil.copy(own, store / "rows-0000.parquet" / "x.parquet")
    shutil.copy(own, store / "foreign.parquet")
    (store / "notes.txt").write_text("my notes\n")
    for _ in range(2):
        again = embed(data, encoder, transform, options)
        assert again.from_cache and again.cost["computed_now"] == 0
    assert sorted(store.glob("rows-*")) == [own]
    quarantine = store / "_quarantine"
    assert (quarantine / "rows-0000.parquet" / "x.parquet").read_bytes() == own.read_bytes()
    assert (quarantine / "foreign.parquet").read_bytes() == own.read_bytes() and (quarantine / "notes.txt").read_text() == "my notes\n"
    assert "foreign.parquet was not written by medprobe; moved to" in caplog.text
    read = pd.read_parquet(store)
    assert len(read) == len(data) and read["image_sha256"].is_unique
    np.testing.assert_array_equal(again.vectors, first.vectors)


@pytest.mark.parametrize("damage", ["deleted", "[1,2]", "another encoder's"])
def test_a_lost_or_edited_recipe_is_listed_and_written_again(tmp_path, medprobe, damage, caplog):
    store = filled_store(tmp_path / "cache")
    recipe = store.path / "_recipe.json"
    original = recipe.read_text()
    if damage == "deleted":
        recipe.unlink()
    elif damage == "[1,2]":
        recipe.write_text("[1,2]")
    else:
        recipe.write_text(filled_store(tmp_path / "other", name="resnet18").path.joinpath("_recipe.json").read_text())
    listing = medprobe("cache", "--verify")
    assert listing.returncode == 0 and "1 store(s)" in listing.stdout, listing.stderr
    assert "_recipe.json missing or damaged" in listing.stdout and "resnet18" not in listing.stdout
    assert "verified 1 store(s): 0 damaged" in listing.stdout
    assert len(Store(tmp_path / "cache", "efficientnet_lite0", store.description).lookup({f"00{0:062d}"})) == 1
    assert recipe.read_text() == original and "_recipe.json was missing or damaged; written again" in caplog.text
    assert "missing or damaged" not in medprobe("cache").stdout
    pruned = medprobe("cache", "--prune", "--encoder", "efficientnet_lite0")
    assert pruned.returncode == 0 and "removed 1 store(s), 24 embeddings" in pruned.stdout and not store.path.exists()


def refuse_unlink_in(folder, monkeypatch):
    """A read-only store, also for root (whom chmod does not stop): deleting inside it raises PermissionError."""
    unlink = Path.unlink

    def read_only(self, missing_ok=False):
        if Path(folder) in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)


def test_a_read_only_store_gives_one_line_under_prune_and_verify(tmp_path, medprobe, monkeypatch):
    store = filled_store(tmp_path / "cache")
    victim = store.files()[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    refuse_unlink_in(store.path, monkeypatch)
    verified = medprobe("cache", "--verify")
    assert verified.returncode == 2 and "damaged:" in verified.stdout
    assert verified.stderr.strip() == (f"medprobe: error: 1 damaged file(s) could not be removed, the first {victim} (Permission denied); "
                                       "runs leave them out, and the store's owner can remove them with `medprobe cache --verify`")
    pruned = medprobe("cache", "--prune", "--encoder", "efficientnet_lite0")
    assert pruned.returncode == 2 and len(pruned.stderr.strip().splitlines()) == 1
    assert pruned.stderr.startswith(f"medprobe: error: could not delete 1 store(s), the first {store.path} (Permission denied: ")
    assert victim.exists() and len(store.files()) == 3
