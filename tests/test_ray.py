"""`--ray`: a local Ray on this machine embeds real images into the same store, image for image, as the local path."""

import csv
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import process_stat, processes_naming, store_rows, store_vectors
from medprobe.cli import main
from medprobe.data.datasets import load_dataset
from medprobe.data.sources import FileImages
from medprobe.embedding.embed import describe_job, embed, load_pixels
from medprobe.embedding.options import EmbedOptions
from medprobe.embedding.ray import Part, ShardEmbedder, embed_on_ray, job_blocks
from medprobe.encoders import create_encoder

ENCODER = "efficientnet_lite0"


def options(cache_dir=None, **given):
    return EmbedOptions(ENCODER, cache_dir=None if cache_dir is None else str(cache_dir), progress=False, **given)


@pytest.fixture(scope="module")
def ham(shared_data, tmp_path_factory):
    """A CSV manifest over 96 real HAM10000 JPEGs (24 from each of train/test x mel/nv), paths relative to the CSV."""
    files = sorted((shared_data / "ham10000_melnv").rglob("*.jpg"))
    folder = tmp_path_factory.mktemp("ham")
    manifest = folder / "ham.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for path in files[:: len(files) // 96][:96]:
            writer.writerow([os.path.relpath(path, folder), path.parent.name, path.parent.parent.name])
    return manifest


@pytest.fixture(scope="module")
def ham48(ham):
    """Every other row of `ham`: 12 images of each of train/test x mel/nv, for the end-to-end runs."""
    lines = ham.read_text().splitlines()
    small = ham.with_name("ham48.csv")
    small.write_text("\n".join(lines[:1] + lines[1::2]) + "\n")
    return small


def test_shard_embedder_call_on_a_plain_batch_dict(ham, tmp_path, monkeypatch):
    """The worker without Ray: it reads and hashes each file, embeds what the store lacks, appends it, and skips it next time."""
    data = load_dataset(ham)
    encoder, transform = create_encoder(ENCODER)
    part = Part(ENCODER, options(), describe_job(encoder, transform))
    worker = dict(images=data.images, parts=[part], root=str(tmp_path), writable=[True], held=[(frozenset(), frozenset())], n_images=3)
    out = ShardEmbedder(**worker)({"index": np.arange(3)})
    expected = np.stack([load_pixels(data.images, transform, i) for i in range(3)])
    np.testing.assert_array_equal(out["index"], [0, 1, 2])
    assert list(out["sha256"]) == data.content_digests()[:3] and out["computed_0"].all()
    np.testing.assert_array_equal(out["embedding_0"], encoder.embed_batch(expected))
    stored = store_vectors(tmp_path)
    assert stored.keys() == set(out["sha256"]) and all(stored[d].tobytes() == v.tobytes() for d, v in zip(out["sha256"], out["embedding_0"]))

    again = ShardEmbedder(**worker)({"index": np.arange(4)})  # a new actor sees the file the first one appended
    np.testing.assert_array_equal(again["computed_0"], [False, False, False, True])
    assert len(store_vectors(tmp_path)) == 4

    # An actor whose rows are all stored never sizes PyTorch (its only reason to import it) nor builds a model.
    import torch

    sized = []
    monkeypatch.setattr(torch, "set_num_threads", sized.append)
    stored = ShardEmbedder(**worker)
    assert not stored({"index": np.arange(4)})["computed_0"].any()
    assert sized == [] and stored.models[0][0]._module is None
    assert ShardEmbedder(**worker)({"index": np.arange(5)})["computed_0"].tolist() == [False] * 4 + [True] and sized == [1]


def test_job_blocks_hold_the_local_paths_batches():
    rows = list(range(300))
    blocks = job_blocks(rows, shard_size=128, batch_size=32, actors=1)
    assert [len(b) for b in blocks] == [128, 128, 44]  # whole chunks when there is enough work per actor
    blocks = job_blocks(rows, shard_size=128, batch_size=32, actors=4)
    assert [len(b) for b in blocks] == [32, 32, 32, 32, 32, 32, 32, 32, 32, 12]  # one batch each, never across a chunk
    assert sum(blocks, []) == rows


@pytest.mark.ray
def test_ray_fills_the_local_store_image_by_image(local_ray, ham, tmp_path, monkeypatch):
    data = load_dataset(ham)
    encoder, transform = create_encoder(ENCODER)
    ham_local = embed(data, encoder, transform, options(tmp_path / "local"))
    data = load_dataset(ham)  # digests not known yet: the workers hash the files

    def driver_reads(self, index, *_):
        raise AssertionError(f"the driver read {self.paths[index]}")

    with monkeypatch.context() as driver:  # patched in this process only: the Ray workers read the files
        for method in ("content", "load", "load_content"):
            driver.setattr(FileImages, method, driver_reads)
        on_ray = embed_on_ray(data, options(tmp_path / "ray"), concurrency=2)

    assert on_ray.key == ham_local.key
    np.testing.assert_array_equal(on_ray.vectors, ham_local.vectors)
    assert Path(on_ray.path).parts[-2:] == Path(ham_local.path).parts[-2:]  # <encoder>/<recipe key[:24]>
    ours, theirs = store_vectors(on_ray.path), store_vectors(ham_local.path)
    assert ours.keys() == theirs.keys() == set(data.content_digests())
    assert all(ours[d].tobytes() == theirs[d].tobytes() for d in theirs)
    schemas = {pq.read_schema(f).metadata[b"medprobe.recipe"] for f in store_rows(tmp_path)["files"]}
    assert len(schemas) == 1  # both stores' files carry the one recipe key
    ray_rows = store_rows(on_ray.path)
    assert np.isfinite(ray_rows["wall_s"]).all() and np.isnan(ray_rows["cpu_s"]).all()  # the workers' CPU is not seen
    assert on_ray.cost["cpu_s"] is None and on_ray.cost["computed_now"] == len(ours)

    again = embed(data, encoder, transform, options(tmp_path / "ray"))  # a Ray-filled store is a local cache hit
    assert again.from_cache and again.key == on_ray.key and again.cost["computed_now"] == 0
    np.testing.assert_array_equal(again.vectors, ham_local.vectors)


@pytest.mark.ray
def test_cli_ray_on_a_retinamnist_slice(local_ray, shared_data, tmp_path, capsys):
    """In-memory (npz) images take the object-store route; the CLI output is then a cache hit locally."""
    real = np.load(shared_data / "medmnist" / "retinamnist.npz")
    npz = tmp_path / "retina_slice.npz"
    np.savez(npz, **{f"{s}_{k}": real[f"{s}_{k}"][:n] for s, n in (("train", 24), ("val", 4), ("test", 8)) for k in ("images", "labels")})

    assert main(["embed", "--dataset", str(npz), "--ray", "--ray-actors", "1", "--quiet", "--encoder", ENCODER]) == 0
    assert "computed" in capsys.readouterr().out
    assert main(["embed", "--dataset", str(npz), "--quiet", "--encoder", ENCODER]) == 0
    assert "cache hit" in capsys.readouterr().out

    data = load_dataset(npz)
    encoder, transform = create_encoder(ENCODER)
    cached = embed(data, encoder, transform, options())
    fresh = embed(data, encoder, transform, options(use_cache=False))
    np.testing.assert_array_equal(cached.vectors, fresh.vectors)


def _descends_from(pid, ancestor):
    while pid > 1:
        if pid == ancestor:
            return True
        fields = process_stat(pid)
        if not fields:
            return False
        pid = int(fields[1])
    return False


def _actor_pids():
    """This session's encoder actors: Ray titles each worker after its UDF, and they descend from this process."""
    return {pid for pid in processes_naming(b"Embedder") if pid != os.getpid() and _descends_from(pid, os.getpid())}


@pytest.mark.ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor through /proc")
def test_a_killed_actor_is_replaced_and_the_job_resumes(local_ray, ham, tmp_path):
    # Three one-batch chunks, so the kill lands mid-job; the local reference uses the same layout. (Batches
    # under ~32 rows are not bit-stable across thread counts in PyTorch's CPU kernels, and an actor has one thread.)
    layout = {"shard_size": 32, "batch_size": 32}
    data = load_dataset(ham)
    encoder, transform = create_encoder(ENCODER)
    reference = embed(data, encoder, transform, options(use_cache=False, **layout)).vectors
    killed, replacement, late = [], [], []

    def kill_after_first_chunk():
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob("rows-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        victims = _actor_pids()
        late.append(len(list(tmp_path.rglob("rows-*.parquet"))) >= 3)  # every chunk already appended: the job was done
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        while not replacement and time.monotonic() < deadline:
            replacement.extend(_actor_pids() - set(killed))
            time.sleep(0.1)

    killer = threading.Thread(target=kill_after_first_chunk)
    killer.start()
    result = embed_on_ray(data, options(tmp_path, **layout), concurrency=1)
    killer.join()

    assert late == [False], "the job ended before the kill"
    # A replacement actor is usually seen, but under heavy load the killed actor may already have handed
    # Ray every batch, and then none is needed; what must hold is that the job survives the kill intact.
    assert killed, "no encoder actor was found to kill"
    np.testing.assert_array_equal(result.vectors, reference)

    # Resume: with the middle chunk's file gone (a job stopped before appending it), only that chunk is recomputed.
    store = Path(result.path)
    assert len(store_vectors(store)) == 96  # the kill made no image be stored twice
    middle = set(data.content_digests()[32:64])
    (victim,) = [f for f in store.glob("rows-*.parquet") if set(pq.read_table(f, columns=["image_sha256"]).column(0).to_pylist()) & middle]
    victim.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in store.glob("rows-*.parquet")}
    resumed = embed_on_ray(data, options(tmp_path, **layout), concurrency=1)
    assert not resumed.from_cache and resumed.cost["computed_now"] == 32 and resumed.cost["from_store"] == 64
    assert {p.name: p.stat().st_mtime_ns for p in store.glob("rows-*.parquet") if p.name in kept} == kept
    assert len(list(store.glob("rows-*.parquet"))) == len(kept) + 1 and len(store_vectors(store)) == 96
    np.testing.assert_array_equal(resumed.vectors, reference)


@pytest.mark.ray
def test_embed_on_ray_then_run_report_and_bench_say_the_cpu_cost_is_unknown(local_ray, ham48, tmp_path, capsys):
    ham = ham48
    """Issue 24: rows embedded on Ray carry no CPU cost; `run` crashed on them. Every later command now says "unknown"."""
    cache, run, bench = tmp_path / "cache", tmp_path / "run", tmp_path / "bench"
    common = ["--dataset", str(ham), "--encoder", ENCODER, "--cache-dir", str(cache), "--quiet"]
    assert main(["embed", *common, "--ray", "--ray-actors", "1"]) == 0
    assert main(["run", *common, "--selection", "val", "--n-boot", "200", "--out", str(run)]) == 0
    timings = json.loads((run / "results.json").read_text())["timings"]
    assert timings["embedded_now"] == 0 and timings["embedded_from_store"] == 48  # read from the Ray-filled store
    assert timings["embed_cost_cpu_s"] is None and "CPU seconds unknown for 48 images" in timings["embed_cost_source"]
    assert timings["embed_cost_s"] > 0  # the wall time the driver saw is known

    assert main(["report", str(run)]) == 0
    assert "unknown + " in (run / "report.html").read_text()  # CPU s (embed + fit): the embedding's share is unknown

    assert main(["baseline", "--dataset", str(ham), "--epochs", "1", "--n-boot", "50", "--out", str(bench / "baselines" / "ham"), "--quiet"]) == 0
    (tmp_path / "grid.yaml").write_text(f"datasets: [{ham}]\nencoders: [{ENCODER}]\nprobes: [logreg]\nselections: [val]\nn_boot: 200\n")
    assert main(["bench", str(tmp_path / "grid.yaml"), "--out", str(bench), "--baseline", str(bench / "baselines" / "ham"),
                 "--cache-dir", str(cache), "--quiet"]) == 0
    capsys.readouterr()
    row = next(line for line in (bench / "table.md").read_text().splitlines() if line.startswith(f"| {ENCODER} + logreg"))
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert cells[4] == "unknown" and cells[-1] == "unknown"  # CPU s and the compute ratio: unknown, not a number
    assert "compute ratio ≈ " + f"{ENCODER} + logreg unknown" in (bench / "table.md").read_text()  # the capped baseline's projection
    page = (bench / "report.html").read_text()
    assert "<td>unknown</td>" in page and "compute ratio to ResNet-18" in page


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from conftest import write_npz

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert main(["embed", "--dataset", str(write_npz(tmp_path / "tiny.npz")), "--ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'medprobe[ray]'" in err


def _manifest_with_a_broken_jpeg(folder, rows):
    """`rows` (a manifest's data lines, paths relative to `folder`) and a JPEG cut off in its header, as a CSV there."""
    lines = rows.read_text().splitlines()
    shutil.copy(rows, folder / "good.csv")
    first = next(csv.reader(lines[1:2]))[0]
    (folder / "broken.jpg").write_bytes((rows.parent / first).read_bytes()[:300])
    manifest = folder / "m.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows([os.path.relpath(rows.parent / path, folder), label, split] for path, label, split in csv.reader(lines[1:]))
        writer.writerow(["broken.jpg", "mel", "train"])
    return manifest


@pytest.mark.ray
def test_run_on_ray_reads_no_image_here_skips_or_lists_an_unreadable_one_and_embeds_a_fusion_in_one_pass(local_ray, ham48, tmp_path,
                                                                                                       monkeypatch, medprobe):
    """Issue 24: with --ray the driver lists the dataset and the workers read it; nothing here opens an image file. The
    encoder is a fusion: the workers embed both parts in the one pass, each into its own store, as the local run does."""
    manifest = _manifest_with_a_broken_jpeg(tmp_path, ham48)
    fusion = f"{ENCODER}+{ENCODER}@max"
    # CV selection: on Ray its fold x grid fits are Ray tasks, and the result must equal the threads' here
    common = ["--dataset", manifest, "--encoder", fusion, "--selection", "cv", "--n-boot", "200", "--quiet"]
    local = medprobe("run", *common, "--on-error", "skip", "--cache-dir", tmp_path / "local", "--out", tmp_path / "here")
    assert local.returncode == 0, local.stderr

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read an image")

    for name in ("content", "load", "load_content"):
        monkeypatch.setattr(FileImages, name, refuse)  # this process only: the Ray workers import their own
    failed = medprobe("run", *common, "--cache-dir", tmp_path / "ray", "--out", tmp_path / "failed", "--ray", "--ray-actors", "1")
    assert failed.returncode == 2 and re.search(r"1 of 49 images cannot be read:\n  .*broken.jpg: ", failed.stderr), failed.stderr
    assert "--on-error skip" in failed.stderr  # how to go on without it
    assert "Traceback" not in failed.stderr and not (tmp_path / "failed" / "results.json").exists()
    stores = sorted(p.parent.relative_to(tmp_path / "local") for p in (tmp_path / "local").glob("*/*/_recipe.json"))
    assert len(stores) == 2 and stores == sorted(p.parent.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").glob("*/*/_recipe.json"))
    for store in stores:  # each part's store, filled on Ray by the failed run, image by image, bit for bit
        ours, theirs = store_vectors(tmp_path / "ray" / store), store_vectors(tmp_path / "local" / store)
        assert len(theirs) == 48 and ours.keys() == theirs.keys() and all(ours[d].tobytes() == theirs[d].tobytes() for d in theirs)

    done = medprobe("run", *common, "--on-error", "skip", "--cache-dir", tmp_path / "ray", "--out", tmp_path / "there",
                    "--ray", "--ray-actors", "1")
    assert done.returncode == 0, done.stderr
    here, there = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("here", "there"))
    assert there["metrics"] == here["metrics"] and there["probe"]["params"] == here["probe"]["params"]
    assert there["probe"]["selection"]["solver"].endswith(", ray tasks") and not here["probe"]["selection"]["solver"].endswith("tasks")
    assert (tmp_path / "there" / "predictions.csv").read_bytes() == (tmp_path / "here" / "predictions.csv").read_bytes()
    assert there["images"]["skipped"] == here["images"]["skipped"]
    assert there["images"]["on_ray"]["actors"] == 1 and here["images"]["on_ray"] is None
    assert there["timings"]["ray_start_s"] >= 0
    assert there["timings"]["embedded_now"] == 0 and there["timings"]["embedded_from_store"] == 2 * 48  # both parts, stored by the failed run
    assert there["cache"]["hit"] is True  # the failed run computed them all, this one nothing


def test_a_worker_keeps_exported_graphs_beside_a_local_store_given_as_a_string(tmp_path, monkeypatch):
    """The driver hands each worker the store's root as a string; a local one is still local. (Taken for a URL, the
    worker looked for graphs in the user cache, where another job's export made it run ONNX Runtime while the local
    path ran PyTorch eager on the same images: equal only to ~1e-6, and the store is compared bit for bit.)"""
    from medprobe.core.locations import job_artifacts, user_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    assert job_artifacts(str(tmp_path / "store"), writable=True) == tmp_path / "store"
    assert job_artifacts(tmp_path / "store", writable=True) == tmp_path / "store"
    assert job_artifacts("s3://bucket/store", writable=True) == user_cache() / "embeddings"
