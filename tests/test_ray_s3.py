"""Object storage and more than one node: real HAM10000 JPEGs in an S3-compatible server (moto, on loopback),
embedded by a two-node Ray cluster started here, against the local path on the same images.

The server and the cluster are started once for the module and stopped after it, with their own temporary folders.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import process_stat, processes_naming, store_vectors
from medprobe.cli import main

# Ray Data deprecation warnings: their summary parses source with `ast` while Ray threads run, which CPython 3.11.7 can abort
# on ("AST constructor recursion depth mismatch", fixed in later 3.11 releases).
pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ENCODER = "efficientnet_lite0"
BUCKET = "medprobe"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _S3Server:
    """moto's S3 app (and its /moto-api) on 127.0.0.1:`port`, in a thread of this process. moto's own ThreadedMotoServer
    looks for each request's service among all of moto's, listing its package folder every time: a third of its CPU here."""

    def __init__(self, port):
        from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        s3, api = create_backend_app("s3"), create_backend_app("moto_api")

        def app(environ, start_response):
            return (api if environ.get("PATH_INFO", "").startswith("/moto-api") else s3)(environ, start_response)

        self.server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join()


@pytest.fixture(scope="module")
def s3(shared_data, tmp_path_factory):
    """A moto S3 server on 127.0.0.1 holding 64 HAM10000 JPEGs and a manifest with paths relative to it; the same
    files and manifest in a local folder, for the local reference."""
    import s3fs

    port = _free_port()
    server = {"now": _S3Server(port)}
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "medprobe-test", "AWS_SECRET_ACCESS_KEY": "medprobe-test",
           "AWS_DEFAULT_REGION": "us-east-1",
           # one retry, not botocore's four with back-off (up to 15 s on a refused connection, when a test stops the server);
           # set here, as the cluster's workers read only what its nodes were started with
           "AWS_MAX_ATTEMPTS": "2",
           # fsspec's own configuration (read by every process the tests start, Ray's workers included): a request in
           # flight when a test stops the server waited for botocore's 60 s read timeout; on loopback 10 s is ample
           "FSSPEC_S3": json.dumps({"config_kwargs": {"connect_timeout": 5, "read_timeout": 10}})}
    local = tmp_path_factory.mktemp("ham_local")
    files = sorted((shared_data / "ham10000_melnv").rglob("*.jpg"))
    (local / "images").mkdir()
    with open(local / "ham.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for path in files[:: len(files) // 64][:64]:
            shutil.copyfile(path, local / "images" / path.name)
            writer.writerow([f"images/{path.name}", path.parent.name, path.parent.parent.name])
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put(str(local) + "/", f"{BUCKET}/ham/", recursive=True)
        try:
            yield {"url": f"s3://{BUCKET}/ham/ham.csv", "local": local / "ham.csv", "port": port, "server": server, "env": env}
        finally:
            server["now"].stop()


@pytest.fixture(scope="module")
def cluster(s3):
    """`ray start --head` and a second `ray start --address` node, 1 CPU each, with their own HOME and temp folder."""
    ray = str(Path(sys.executable).with_name("ray"))
    folder = tempfile.mkdtemp(prefix="mpray", dir="/tmp")  # short: Ray's socket paths live under it
    # Its own HOME (no ~/.ray token), and none of the RAY_ variables an in-process ray.init of another test module left
    # (it sets RAY_AUTH_MODE=token in os.environ), here or in the driver.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **s3["env"], "HOME": folder, "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        for command in (["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", folder], ["--address", f"127.0.0.1:{port}"]):
            started = subprocess.run([ray, "start", *command, *common], env=env, capture_output=True, text=True, timeout=180)
            assert started.returncode == 0, f"ray start {command} failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
        yield f"127.0.0.1:{port}"
    finally:
        _stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(folder):
    """End this cluster's processes (those naming its folder, and their children), and no other Ray on the machine."""
    ours = processes_naming(folder.encode())
    children = set()
    for entry in Path("/proc").iterdir():
        fields = process_stat(entry.name) if entry.name.isdigit() else []
        if fields and int(fields[1]) in ours:  # its parent is one of ours
            children.add(int(entry.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours | children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2  # SIGTERM's grace: up to 2 s, over as soon as every process has gone
        while time.monotonic() < deadline and any(map(_running, ours | children)):
            time.sleep(0.05)


def _running(pid):
    """Whether a process is still there and not a zombie waiting to be reaped."""
    return process_stat(pid)[:1] not in ([], ["Z"])


def in_a_new_process(s3, *args):
    """The CLI in a fresh process, as a user runs it (a driver that never held another Ray session), with the S3 variables.
    Usage statistics stay off, as for the whole suite (conftest): the driver's Ray Data would start an actor to send them."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **s3["env"], "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "medprobe.cli", *map(str, args)], env=env, capture_output=True, text=True, timeout=900)


def test_run_on_two_nodes_from_s3_with_an_s3_store_equals_the_local_run(s3, cluster, tmp_path):
    """Images and the embedding store both in the bucket (no shared filesystem): the two-node run equals the local run bit
    for bit, and a second run on this machine, without Ray, reads every vector back from the bucket and writes nothing."""

    import s3fs

    # ONNX Runtime named on both sides: under `auto`, a job this small runs eager unless an exported graph is already in
    # the artifacts folder, which differs between a store on disk (its own folder) and one in a bucket (the user cache).
    # (Not eager: it costs each one-thread actor several times ONNX Runtime's time, and its own export is checked too.)
    common = ["--encoder", ENCODER, "--runtime", "onnx", "--selection", "val", "--n-boot", "200", "--batch-size", "32", "--quiet"]
    assert main(["run", "--dataset", str(s3["local"]), *common, "--cache-dir", str(tmp_path / "local"), "--out", str(tmp_path / "here")]) == 0
    store = f"s3://{BUCKET}/stores/{tmp_path.name}"
    there = in_a_new_process(s3, "run", "--dataset", s3["url"], *common, "--cache-dir", store, "--out", tmp_path / "there", "--ray", cluster)
    assert there.returncode == 0, there.stderr[-3000:]

    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3["env"].items():
            patch.setenv(name, value)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        objects = sorted(fs.find(store))
        fs.get(store.removeprefix("s3://") + "/", str(tmp_path / "copy") + "/", recursive=True)
    assert any(o.endswith("/_recipe.json") for o in objects) and sum("/rows-" in o for o in objects) >= 2  # written by both nodes' actors
    ours, theirs = store_vectors(tmp_path / "copy"), store_vectors(tmp_path / "local")
    assert len(theirs) == 64 and ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[d], theirs[d]) and ours[d].tobytes() == theirs[d].tobytes() for d in theirs)
    here, there = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("here", "there"))
    assert there["metrics"]["test"]["auc"] == here["metrics"]["test"]["auc"] and there["metrics"] == here["metrics"]
    assert (tmp_path / "there" / "predictions.csv").read_bytes() == (tmp_path / "here" / "predictions.csv").read_bytes()

    with pytest.MonkeyPatch.context() as patch:  # here, in this process, without Ray
        for name, value in s3["env"].items():
            patch.setenv(name, value)
        assert main(["run", "--dataset", s3["url"], *common, "--cache-dir", store, "--out", str(tmp_path / "again")]) == 0
        timings = json.loads((tmp_path / "again" / "results.json").read_text())["timings"]
        assert timings["embedded_from_store"] == 64 and timings["embedded_now"] == 0
        assert (tmp_path / "again" / "predictions.csv").read_bytes() == (tmp_path / "here" / "predictions.csv").read_bytes()
        assert sorted(s3fs.S3FileSystem(skip_instance_cache=True).find(store)) == objects  # nothing written again


def test_wrong_credentials_are_one_line_naming_the_url(s3, capsys):
    import requests

    endpoint = s3["env"]["AWS_ENDPOINT_URL"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()  # moto checks keys from now on
    try:
        code = main(["run", "--dataset", s3["url"], "--encoder", ENCODER, "--quiet"])
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert s3["url"] in err and "access denied" in err and "Traceback" not in err


def test_a_stopped_s3_server_is_named_and_a_rerun_completes_from_the_store(s3, cluster, tmp_path):
    cache = tmp_path / "cache"
    # One actor: what is under test is the error and the resumed store, not the layout (the two-node test has both nodes write).
    command = ["embed", "--dataset", s3["url"], "--encoder", ENCODER, "--batch-size", "8", "--cache-dir", cache, "--ray", cluster,
               "--ray-actors", "1", "--quiet"]
    stopped = []

    def stop_after_the_first_file():
        deadline = time.monotonic() + 300
        while not list(cache.rglob("rows-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        s3["server"]["now"].stop()
        stopped.append(len(list(cache.rglob("rows-*.parquet"))))

    stopper = threading.Thread(target=stop_after_the_first_file)
    stopper.start()
    try:
        first = in_a_new_process(s3, *command)
    finally:
        stopper.join()
        s3["server"]["now"] = _S3Server(s3["port"])  # the same buckets: moto keeps them in this process
    code, err = first.returncode, first.stderr.strip()
    assert stopped and stopped[0] < 4, "the job ended before the server was stopped"
    # The error is one line naming the file's URL (Ray's workers may print their own lines before it).
    last = err.splitlines()[-1]
    assert code == 2 and last.startswith(f"medprobe: error: s3://{BUCKET}/ham/images/") and "endpoint" in last, err
    assert sum("medprobe: error" in line for line in err.splitlines()) == 1, err

    kept = {p.name: p.stat().st_mtime_ns for p in cache.rglob("rows-*.parquet")}
    again = in_a_new_process(s3, *command)
    assert kept and again.returncode == 0 and "computed" in again.stdout, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in cache.rglob("rows-*.parquet") if p.name in kept} == kept  # nothing redone
    assert len(store_vectors(next(cache.glob(f"{ENCODER}/*")))) == 64


def test_a_damaged_object_in_an_s3_store_is_dropped_and_its_images_recomputed(s3, tmp_path, monkeypatch, caplog):
    """The store's checksum-in-the-name holds in a bucket: an object whose bytes were changed is never read as rows,
    it is deleted with a warning, and its images are embedded again, to the same vectors."""
    import s3fs

    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)
    store = f"s3://{BUCKET}/stores/damaged-{tmp_path.name}"
    embed = ["embed", "--dataset", s3["url"], "--encoder", ENCODER, "--cache-dir", store, "--quiet"]
    assert main(embed) == 0
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.get(store.removeprefix("s3://") + "/", str(tmp_path / "first") + "/", recursive=True)
    first = store_vectors(tmp_path / "first")
    (victim,) = [o for o in fs.find(store) if "/rows-" in o]
    data = fs.cat_file(victim)
    fs.pipe_file(victim, data[:-64] + bytes(64))  # the same name, other bytes
    assert main(embed) == 0
    assert any("is damaged" in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records)
    assert not fs.exists(victim)
    fs.get(store.removeprefix("s3://") + "/", str(tmp_path / "second") + "/", recursive=True)
    second = store_vectors(tmp_path / "second")
    assert second.keys() == first.keys() and len(first) == 64 and all(np.array_equal(first[d], second[d]) for d in first)


def test_cache_listing_of_a_bucket_is_refused_in_one_line(capsys):
    assert main(["cache", "--cache-dir", f"s3://{BUCKET}/stores"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "local disk" in err and "aws s3 ls" in err


def test_an_image_folder_in_a_bucket_runs_as_the_same_folder_on_disk(s3, tmp_path, monkeypatch):
    """split/class/image objects under a prefix, listed (never read) by the driver: the same run as the local folder, and the
    bucket's metadata.csv beside the class folders is not taken for a manifest."""

    import s3fs

    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "ham_folder"
    with open(s3["local"], newline="") as f:
        for row in csv.DictReader(f):
            target = folder / row["split"] / row["label"] / Path(row["path"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s3["local"].parent / row["path"], target)
    (folder / "metadata.csv").write_text("image_id,age\nx,1\n")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(folder) + "/", f"{BUCKET}/folders/{tmp_path.name}/", recursive=True)
    quick = ["--encoder", ENCODER, "--selection", "val", "--n-boot", "200", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", "--dataset", str(folder), "--out", str(tmp_path / "here"), *quick]) == 0
    assert main(["run", "--dataset", f"s3://{BUCKET}/folders/{tmp_path.name}/", "--out", str(tmp_path / "there"), *quick]) == 0
    here, there = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("here", "there"))
    assert there["metrics"] == here["metrics"] and there["dataset"]["n"] == here["dataset"]["n"]
    assert (tmp_path / "there" / "predictions.csv").read_bytes() == (tmp_path / "here" / "predictions.csv").read_bytes()
    assert there["timings"]["embedded_from_store"] == 64  # the same bytes: every vector came from the local run's store


def down(s3):
    """The S3 variables with the endpoint at a port where nothing listens (and no retries to wait for)."""
    return {**s3["env"], "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_MAX_ATTEMPTS": "1"}


@pytest.fixture
def fresh_filesystems():
    """fsspec keeps one filesystem per set of arguments in each process: dropped before the test, so none made for the
    live server is reused for a dead endpoint, and after it, so none made for the dead one outlives the test."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_an_unreachable_store_bucket_is_one_line_naming_it(s3, fresh_filesystems, medprobe):
    """The images are local, the store's endpoint is down: one line naming the store's URL, exit 2, nothing taken for damage."""
    done = medprobe("embed", "--dataset", s3["local"], "--encoder", ENCODER, "--cache-dir", f"s3://{BUCKET}/stores/down", "--quiet",
                    env=down(s3))
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"medprobe: error: embedding store s3://{BUCKET}/stores/down/") and "AWS_ENDPOINT_URL" in err


def test_unreachable_images_stop_in_one_line_even_under_on_error_skip(s3, fresh_filesystems, medprobe, tmp_path):
    """An endpoint that is down fails every image alike: --on-error skip must not drop them all as "unreadable" (the
    dataset would shrink to nothing, or worse, to the images read before a blip); one line naming an image's URL."""
    rows = s3["local"].read_text().splitlines()
    manifest = tmp_path / "remote.csv"  # on this disk, naming the images in the bucket
    manifest.write_text("\n".join(rows[:1] + [f"s3://{BUCKET}/ham/{row}" for row in rows[1:]]) + "\n")
    done = medprobe("run", "--dataset", manifest, "--encoder", ENCODER, "--on-error", "skip", "--out", tmp_path / "run", "--quiet", env=down(s3))
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"medprobe: error: s3://{BUCKET}/ham/images/") and "AWS_ENDPOINT_URL" in err
    assert not (tmp_path / "run" / "results.json").exists()
