"""Inputs that used to escape as tracebacks, raw third-party output or wrong records."""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import QUICK, store_rows, store_vectors, write_image_folder, write_npz
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


def test_headers_read_in_threads_warn_nowhere_and_leave_the_filters_as_they_were():
    """The scan reads headers in threads, and Pillow warns while guessing at a DICOM file. Warning filters are one list
    per process: with each thread saving and restoring it unlocked, a warning reached the terminal (2 of them, every
    time, in this loop) and the filters stayed changed after it."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import pydicom.data

    from medprobe.data.images import decoded_bytes

    guessed_as_tiff = Path(pydicom.data.__file__).parent / "test_files" / "MR_small_expb.dcm"  # "Corrupt EXIF data"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads take turns inside each header read, as on a loaded machine
        try:
            with ThreadPoolExecutor(4) as pool:
                sizes = set(pool.map(decoded_bytes, [guessed_as_tiff] * 400))
        finally:
            sys.setswitchinterval(switch)
        assert [str(w.message) for w in shown] == [] and warnings.filters == filters
    assert sizes == {None}  # Pillow cannot size a DICOM file: read_image decodes it, as it always did


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
                           "--out", str(tmp_path / "o"), "--quiet", "--n-boot", "50", *QUICK], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Expected explicit VR" not in done.stderr
    stray = [line for line in done.stderr.strip().splitlines() if not line.startswith(("medprobe:", "  skipped "))]
    assert stray == [], stray
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
    real, calls = encoder.embed_batches, []

    def dies_on_the_third_batch(batches):
        for tag, vectors in real(batches):
            calls.append(tag)
            if len(calls) == 3:
                raise KeyboardInterrupt  # as a kill after two appended chunks
            yield tag, vectors

    encoder.embed_batches = dies_on_the_third_batch
    with pytest.raises(KeyboardInterrupt):
        embed(data, encoder, transform, options)
    encoder.embed_batches = real
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


# --- `fit --save` never deletes what the user owns -------------------------------------------------------------------
# The model used to be swapped in and the old folder rmtree'd whatever it held: a thesis, the dataset's own images,
# the --out results. Each refusal comes before any work (no images are read), so these tests embed nothing.


@pytest.fixture(scope="module")
def fundus_pngs(shared_data):
    """{split/class/name.png: bytes} of 40 real RetinaMNIST images, healthy (grade 0) vs disease (grade 1-3)."""
    import io

    npz = np.load(shared_data / "medmnist" / "retinamnist.npz")
    files = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        images, grades = npz[f"{split}_images"], npz[f"{split}_labels"][:, 0]
        for label, chosen in (("healthy", np.flatnonzero(grades == 0)[:n]), ("disease", np.flatnonzero((grades > 0) & (grades < 4))[:n])):
            for i in chosen:
                encoded = io.BytesIO()
                Image.fromarray(images[i]).save(encoded, format="PNG")
                files[f"{split}/{label}/{split}_{i:04d}.png"] = encoded.getvalue()
    return files


def image_folder(root, fundus_pngs):
    for name, data in fundus_pngs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def snapshot(folder):
    """Every file under `folder` with its bytes: what must be exactly the same after a refused save."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused(done, message):
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("medprobe: error: ") and "Traceback" not in done.stderr
    assert message in done.stderr, done.stderr


FAST = ("--encoder", "efficientnet_lite0", "--selection", "val", "--n-boot", "200", "--quiet")


def test_save_into_a_folder_of_the_users_files_is_refused_and_nothing_is_touched(tmp_path, fundus_pngs, medprobe):
    data = image_folder(tmp_path / "data", fundus_pngs)
    thesis = tmp_path / "thesis"
    (thesis / "figures").mkdir(parents=True)
    (thesis / "chapter1.tex").write_text("\\chapter{Introduction}")
    (thesis / "notes.txt").write_text("ask the supervisor")
    (thesis / "references.bib").write_text("@article{x}")
    (thesis / "figures" / "fundus.png").write_bytes(next(iter(fundus_pngs.values())))
    before = snapshot(thesis)
    done = medprobe("fit", "--dataset", data, "--save", thesis, *FAST)
    refused(done, f"--save {thesis}: holds 4 entries that medprobe did not write (chapter1.tex, figures, notes.txt and 1 more)")
    assert snapshot(thesis) == before and not (tmp_path / "cache").exists()  # refused before any image was embedded


@pytest.mark.parametrize("where", ["data", "data/train", "data/models/retina", "."])
def test_save_at_in_or_above_the_dataset_folder_is_refused(tmp_path, fundus_pngs, medprobe, where):
    project = tmp_path / "project"
    data = image_folder(project / "data", fundus_pngs)
    before = snapshot(project)
    done = medprobe("fit", "--dataset", data, "--save", project / where, *FAST)
    relation = {"data": "is the dataset folder", "data/train": "is inside the dataset folder",
                "data/models/retina": "is inside the dataset folder", ".": "holds the dataset folder"}[where]
    refused(done, f"--save {project / where}: {relation} {data}")
    assert snapshot(project) == before and not (project / "data" / "models").exists()


@pytest.mark.parametrize("kind", ["csv", "npz"])
def test_save_at_or_above_a_dataset_file_is_refused(tmp_path, shared_data, fundus_pngs, medprobe, kind):
    project = tmp_path / "project"
    project.mkdir()
    if kind == "csv":
        image_folder(project / "images", fundus_pngs)
        rows = "\n".join(f"images/{n},{n.split('/')[1]},{n.split('/')[0]}" for n in fundus_pngs)
        (project / "manifest.csv").write_text(f"path,label,split\n{rows}\n")
        source = project / "manifest.csv"
    else:
        real = np.load(shared_data / "medmnist" / "retinamnist.npz")  # the first 20 real images of each split
        source = project / "retina20.npz"
        np.savez(source, **{f"{s}_{k}": real[f"{s}_{k}"][:20] for s in ("train", "val", "test") for k in ("images", "labels")})
    before = snapshot(tmp_path)
    for above in (project, tmp_path):
        refused(medprobe("fit", "--dataset", source, "--save", above, *FAST), f"--save {above}: holds the dataset file {source}")
    assert snapshot(tmp_path) == before


def test_save_and_out_in_one_folder_or_one_inside_the_other_is_refused(tmp_path, fundus_pngs, medprobe):
    data = image_folder(tmp_path / "data", fundus_pngs)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "results.json").write_text("{}")  # an earlier run's results
    (runs / "predictions.csv").write_text("id,label\n")
    before = snapshot(runs)
    refused(medprobe("fit", "--dataset", data, "--save", runs, "--out", runs, *FAST), f"--save {runs}: is the --out folder {runs}")
    refused(medprobe("fit", "--dataset", data, "--save", runs / "model", "--out", runs, *FAST),
            f"--save {runs / 'model'}: is inside the --out folder {runs}")
    refused(medprobe("fit", "--dataset", data, "--save", tmp_path, "--out", runs, *FAST), f"--save {tmp_path}: holds the --out folder {runs}")
    assert snapshot(runs) == before and not (runs / "model").exists()


@pytest.mark.parametrize("spelling", [".", "./", "../work", "{cwd}"])
def test_save_into_the_current_folder_is_refused_in_any_spelling(tmp_path, fundus_pngs, medprobe, spelling):
    data = image_folder(tmp_path / "data", fundus_pngs)
    work = tmp_path / "work"
    work.mkdir()  # empty: it would pass as an empty folder, but replacing it would pull the folder from under the shell
    save = spelling.format(cwd=work)
    refused(medprobe("fit", "--dataset", data, "--save", save, *FAST, cwd=work), f"--save {save}: is the current folder")
    refused(medprobe("fit", "--dataset", data, "--save", "..", *FAST, cwd=work), f"--save ..: holds the current folder {work}")
    assert work.is_dir() and not any(work.iterdir())


@pytest.mark.parametrize("flag", ["--save", "--out"])
def test_a_save_or_out_path_through_a_symlink_loop_is_refused_before_any_work(tmp_path, fundus_pngs, medprobe, flag):
    data = image_folder(tmp_path / "data", fundus_pngs)
    os.symlink("loop", tmp_path / "loop")  # loop -> loop
    before = snapshot(data)
    for target in (tmp_path / "loop", tmp_path / "loop" / "model"):
        paths = {"--save": target, "--out": tmp_path / "runs"} if flag == "--save" else {"--save": tmp_path / "model", "--out": target}
        done = medprobe("fit", "--dataset", data, *[a for kv in paths.items() for a in kv], *FAST)
        refused(done, f"{flag} {target}: the path runs through a symlink loop; fix the link or choose another folder")
    done = medprobe("run", "--dataset", data, "--out", tmp_path / "loop" / "run", *FAST)  # and `run`, which used to give a traceback after the work
    refused(done, f"--out {tmp_path / 'loop' / 'run'}: the path runs through a symlink loop")
    assert snapshot(data) == before and not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def saved_model(fundus_pngs, tmp_path_factory):
    """A real model fitted on the real images, saved once; tests copy it."""
    from medprobe.cli import main

    root = tmp_path_factory.mktemp("saved")
    data = image_folder(root / "data", fundus_pngs)
    assert main(["fit", "--dataset", str(data), "--save", str(root / "model"), "--cache-dir", str(root / "cache"), *FAST]) == 0
    return root / "model"


def test_saving_again_over_a_model_replaces_it_and_sweeps_what_killed_saves_left(tmp_path, fundus_pngs, saved_model, medprobe):
    from medprobe.probes.saved import load_model

    data = image_folder(tmp_path / "data", fundus_pngs)
    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as after a kill
    stale_part = tmp_path / f".model.{dead.pid}.0123abcd.part"  # a half-built model
    stale_old = tmp_path / f".model.old-{dead.pid}"  # a previous model set aside, killed before it was removed
    live_part = tmp_path / f".model.{os.getppid()}.4567cdef.part"  # another save in progress right now
    for leftover in (stale_part, stale_old, live_part):
        shutil.copytree(saved_model, leftover)
    (stale_part / ".arrays.safetensors.12345.part").write_bytes(b"half written")
    mine = tmp_path / f".model.{dead.pid}.89abcdef.part"  # named like ours, but holding a user's file: never removed
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    old_json = (model / "model.json").read_text()
    time.sleep(1.1)  # model.json records its creation to the second
    done = medprobe("fit", "--dataset", data, "--save", model, *FAST)
    assert done.returncode == 0, done.stderr
    assert (model / "model.json").read_text() != old_json and load_model(model).label_names == ["disease", "healthy"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert model.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert not stale_part.exists() and not stale_old.exists() and live_part.exists() and (mine / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.glob(".model*")) == sorted([live_part.name, mine.name])  # no leftover of this save


def test_a_users_notes_inside_a_model_folder_are_refused_not_deleted(tmp_path, fundus_pngs, saved_model, medprobe):
    data = image_folder(tmp_path / "data", fundus_pngs)
    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    (model / "notes.txt").write_text("fitted for the March review")
    before = snapshot(model)
    refused(medprobe("fit", "--dataset", data, "--save", model, *FAST), f"--save {model}: holds 1 entry that medprobe did not write (notes.txt)")
    assert snapshot(model) == before


def test_notes_added_while_the_fit_runs_are_kept_and_the_old_model_stays(tmp_path, saved_model, monkeypatch):
    from medprobe.core.errors import OutputError
    from medprobe.probes import saved

    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    with pytest.raises(OutputError, match="holds 1 entry that medprobe did not write \\(notes.txt\\)"):
        with saved.atomic_folder(model, saved.MODEL_FILES) as building:
            (building / "model.json").write_text("{}")
            (model / "notes.txt").write_text("written while the probe was being fitted")
    assert snapshot(model) == {**snapshot(saved_model), "notes.txt": b"written while the probe was being fitted"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the half-built folder is gone


def test_the_library_never_swaps_a_file_for_a_model_folder(tmp_path):
    from medprobe.core.errors import OutputError
    from medprobe.probes import saved

    (tmp_path / "results").write_text("a user's file where the model was to go")
    with pytest.raises(OutputError, match="results: is a file, not a folder"):
        with saved.atomic_folder(tmp_path / "results", saved.MODEL_FILES) as building:
            (building / "model.json").write_text("{}")
    assert (tmp_path / "results").read_text() == "a user's file where the model was to go" and len(list(tmp_path.iterdir())) == 1


def test_a_save_killed_between_its_two_renames_points_to_the_previous_model(tmp_path, saved_model, monkeypatch):
    from medprobe.core import files
    from medprobe.core.errors import ModelError
    from medprobe.probes import saved

    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    replace, calls = os.replace, []

    def killed_at_the_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(files.os, "replace", killed_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        with saved.atomic_folder(model, saved.MODEL_FILES) as building:
            (building / "model.json").write_text("{}")
    monkeypatch.undo()
    aside = tmp_path / f".model.old-{os.getpid()}"
    with pytest.raises(ModelError, match=f"the previous model is at {aside}; rename it back"):
        saved.load_model(model)
    aside.rename(model)
    assert saved.load_model(model).label_names == ["disease", "healthy"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700)])
def test_a_saved_model_folder_follows_the_umask(tmp_path, saved_model, umask, mode):
    from medprobe.probes import saved

    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    previous = os.umask(umask)
    try:
        with saved.atomic_folder(model, saved.MODEL_FILES) as building:
            for path in saved_model.iterdir():
                saved.atomic_write_bytes(building / path.name, path.read_bytes())
    finally:
        os.umask(previous)
    assert (model.stat().st_mode & 0o777) == mode
    assert all(path.stat().st_mode & 0o777 == mode & 0o666 for path in model.iterdir())
    assert saved.load_model(model).label_names == ["disease", "healthy"]


# --- settings refused at the edge, before any work (issue 27): one line, exit 2 ----------------------------------------


@pytest.fixture(scope="module")
def ham_eight(shared_data, tmp_path_factory):
    """Eight real HAM10000 images in class folders."""
    root = tmp_path_factory.mktemp("ham") / "ham8"
    for label in ("mel", "nv"):
        (root / label).mkdir(parents=True)
        for path in sorted((shared_data / "ham10000_melnv" / "train" / label).glob("*.jpg"))[:4]:
            shutil.copy(path, root / label / path.name)
    return root


@pytest.mark.parametrize("args, env, message", [
    (("run", "--n-boot", "-1"), {}, "the number of bootstrap resamples (--n-boot) must be a whole number of at least 1 (default 1000), got -1"),
    (("fit", "--n-boot", "0"), {}, "the number of bootstrap resamples (--n-boot) must be a whole number of at least 1 (default 1000), got 0"),
    (("run", "--ray", "--ray-actors", "0"), {}, "ray actors must be at least 1, got 0"),
    (("embed", "--ray", "--ray-actors", "-3"), {}, "ray actors must be at least 1, got -3"),
    (("embed",), {"MEDPROBE_SHARD_SIZE": "abc"}, "MEDPROBE_SHARD_SIZE must be a whole number of images per store file, e.g. 512; got 'abc'"),
    (("run", "--encoder", "efficientnet_lite0@"), {},
     "efficientnet_lite0@: nothing after '@'; name a recipe after it (e.g. efficientnet_lite0@stages,up) or drop the '@'"),
    (("embed", "--encoder", "efficientnet_lite0+resnet18@"), {},
     "resnet18@: nothing after '@'; name a recipe after it (e.g. efficientnet_lite0@stages,up) or drop the '@'"),
])
def test_a_bad_setting_is_refused_in_one_line_before_any_work(tmp_path, medprobe, monkeypatch, ham_eight, args, env, message):
    from medprobe.embedding import ray as ray_module

    def no_ray(*a, **k):
        raise AssertionError("Ray was started for a command whose settings are wrong")

    monkeypatch.setattr(ray_module, "_import_ray", no_ray)
    out = {"run": ("--out", tmp_path / "out"), "fit": ("--save", tmp_path / "out")}.get(args[0], ())
    done = medprobe(*args, "--dataset", ham_eight, *out, "--quiet", "--cache-dir", tmp_path / "cache", env=env)
    assert done.returncode == 2 and done.stderr.strip() == f"medprobe: error: {message}"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # nothing embedded, nothing written


def test_compare_and_evaluate_refuse_a_negative_n_boot_before_reading_anything(tmp_path, medprobe):
    expected = "medprobe: error: the number of bootstrap resamples (--n-boot) must be a whole number of at least 1 (default 1000), got -1"
    done = medprobe("compare", tmp_path / "a", tmp_path / "b", "--n-boot", "-1")
    assert done.returncode == 2 and done.stderr.strip() == expected
    done = medprobe("evaluate", tmp_path / "model", "--dataset", tmp_path / "data", "--n-boot", "-1", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.strip() == expected
