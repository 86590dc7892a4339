"""The embedding step four ways, side by side in one run on the same N HAM10000 JPEGs: the local path, a local Ray,
a two-node Ray cluster on this machine, and a local Ray reading the images from an S3 server on loopback (moto).

    python benchmarks/ray_scale.py                 # N = 200, a quick check
    python benchmarks/ray_scale.py --n 2000        # the figures in docs/ray.md

Each configuration starts from an empty store (its own temporary folder) and embeds EfficientNet-Lite0 (fp32, the
default `auto` runtime). Per configuration: wall seconds of the job (Ray's start-up apart), img/s, CPU seconds per
image over every process involved (the driver; for Ray, also every process of its session, sampled from /proc every
0.2 s; for S3, the in-process server too) and both ratios to the local path. The vectors of every configuration are
compared with the local path's, image by image. The machine may be shared: the load average is printed with each row.
"""

import argparse
import csv
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HAM = ROOT.parent / "shared" / "data" / "ham10000_melnv"
ENCODER = "efficientnet_lite0"


def ticks():
    return os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """utime + stime of one live process, in seconds (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / ticks()


def parent(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def is_worker(pid):
    """Whether a Ray process is a worker running a task or actor (its title "ray::<name>"), not a daemon (raylet, GCS,
    agents, log monitor) or an idle worker (Ray's own cost of being there)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return title.startswith(b"ray::") and not title.startswith(b"ray::IDLE")


class CpuMeter:
    """CPU seconds of this process plus every process that `belongs` (sampled every 0.2 s, so the short-lived count),
    with the Ray workers that ran the job's tasks and actors (`workers`) apart from Ray's daemons and idle workers."""

    def __init__(self, belongs):
        self.belongs, self.seen, self.working, self.stop = belongs, {}, set(), threading.Event()

    def sample(self):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid() and self.belongs(int(entry.name)):
                cpu = proc_cpu(int(entry.name))
                if cpu is not None:
                    self.seen[int(entry.name)] = cpu
                    if is_worker(int(entry.name)):
                        self.working.add(int(entry.name))  # once it ran the job's work, all its CPU is the work's

    def __enter__(self):
        self.sample()
        self.before = dict(self.seen)
        self.self_before = resource.getrusage(resource.RUSAGE_SELF)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self):
        while not self.stop.wait(0.2):
            self.sample()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sample()
        me = resource.getrusage(resource.RUSAGE_SELF)
        self.own = (me.ru_utime - self.self_before.ru_utime) + (me.ru_stime - self.self_before.ru_stime)
        used = {pid: cpu - self.before.get(pid, 0.0) for pid, cpu in self.seen.items()}
        self.workers = sum(cpu for pid, cpu in used.items() if pid in self.working)
        self.cpu = self.own + sum(used.values())


def descends_from(pid, ancestor):
    while pid and pid > 1:
        if pid == ancestor:
            return True
        pid = parent(pid)
    return False


def names(folder):
    """pid -> belongs to the Ray processes naming `folder` (a `ray start` cluster), or their children."""
    def belongs(pid):
        for p in (pid, parent(pid)):
            try:
                if p and folder.encode() in Path(f"/proc/{p}/cmdline").read_bytes():
                    return True
            except OSError:
                pass
        return False
    return belongs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest(n, folder):
    files = sorted(HAM.rglob("*.jpg"))[:: max(1, 2000 // n)][:n]
    (folder / "images").mkdir(parents=True)
    with open(folder / "ham.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for path in files:
            shutil.copyfile(path, folder / "images" / path.name)
            writer.writerow([f"images/{path.name}", path.parent.name, path.parent.parent.name])
    return folder / "ham.csv"


def run_local(csv_path, cache):
    from medprobe.data.datasets import load_dataset
    from medprobe.embedding.embed import embed
    from medprobe.embedding.options import EmbedOptions
    from medprobe.encoders import create_encoder

    data = load_dataset(csv_path)
    encoder, transform = create_encoder(ENCODER)
    with CpuMeter(lambda pid: False) as meter:
        tick = time.perf_counter()
        result = embed(data, encoder, transform, EmbedOptions(ENCODER, cache_dir=str(cache), progress=False))
        wall = time.perf_counter() - tick
    return result, wall, 0.0, meter.cpu, meter.own, 0.0


FRESH = """
import sys, numpy as np
from medprobe.data.datasets import load_dataset
from medprobe.embedding.embed import embed
from medprobe.embedding.options import EmbedOptions
from medprobe.encoders import create_encoder
encoder, transform = create_encoder(sys.argv[3])
result = embed(load_dataset(sys.argv[1]), encoder, transform, EmbedOptions(sys.argv[3], cache_dir=sys.argv[2], progress=False))
np.save(sys.argv[2] + "/vectors.npy", result.vectors)
print(result.key)
"""


def run_local_fresh(csv_path, cache):
    """The local path as a user's command runs it: a new process that imports medprobe and PyTorch, makes its ONNX
    Runtime session and warms it up, as each Ray actor does (the exported graph is on disk for both)."""
    from types import SimpleNamespace

    cache.mkdir(parents=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FRESH, str(csv_path), str(cache), ENCODER], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - tick
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = SimpleNamespace(vectors=np.load(cache / "vectors.npy"), key=done.stdout.strip().splitlines()[-1])
    return result, wall, 0.0, cpu, cpu, 0.0


def run_ray(dataset, cache, address, belongs):
    from medprobe.data.datasets import load_dataset
    from medprobe.embedding.options import EmbedOptions
    from medprobe.embedding.ray import embed_on_ray

    data = load_dataset(dataset)
    with CpuMeter(belongs) as meter:
        tick = time.perf_counter()
        result = embed_on_ray(data, EmbedOptions(ENCODER, cache_dir=str(cache), progress=False), address=address)
        wall = time.perf_counter() - tick
    start = result.cost["ray"]["start_s"]
    return result, wall - start, start, meter.cpu, meter.own, meter.workers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="HAM10000 images (2000 at most; default 200)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="mprs", dir="/tmp"))
    csv_path = manifest(args.n, work / "data")
    rows = []
    try:
        # the ONNX graph is exported once, outside every measurement (each store below starts empty)
        run_local(csv_path, work / "warm")
        rows.append(("local path", *run_local(csv_path, work / "local")))
        rows.append(("local path, a new process (imports, session, warm-up)", *run_local_fresh(csv_path, work / "fresh")))

        # the two-node cluster first: a driver that held an in-process Ray before had its actors cancelled there (Ray 2.60)
        cores = os.cpu_count()
        folder = tempfile.mkdtemp(prefix="mprc", dir="/tmp")
        port = free_port()
        # its own HOME: no ~/.ray token of another cluster; no RAY_ variables of the local Ray stopped just before
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": folder, "RAY_USAGE_STATS_ENABLED": "0"}
        ray_cli = str(Path(sys.executable).with_name("ray"))
        per_node = ["--num-cpus", str(max(1, cores // 2)), "--disable-usage-stats"]
        try:
            for command in (["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", folder], ["--address", f"127.0.0.1:{port}"]):
                started = subprocess.run([ray_cli, "start", *command, *per_node], env=env, capture_output=True, text=True)
                if started.returncode:
                    raise SystemExit(f"ray start {' '.join(command)} failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
            rows.append(("two-node Ray", *run_ray(csv_path, work / "two", f"127.0.0.1:{port}", names(folder))))
        finally:
            stop(folder)

        import ray

        me = os.getpid()
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")
        try:
            rows.append(("local Ray", *run_ray(csv_path, work / "ray", "local", lambda pid: descends_from(pid, me))))
        finally:
            ray.shutdown()

        from moto.server import ThreadedMotoServer

        s3_port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        server.start()
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
        try:
            import s3fs

            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("bench")
            fs.put(str(work / "data") + "/", "bench/ham/", recursive=True)
            ray.init(address="local", include_dashboard=False, logging_level="ERROR")  # started after the variables: workers see them
            try:
                rows.append(("S3 (moto, loopback), local Ray", *run_ray("s3://bench/ham/ham.csv", work / "s3", "local",
                                                                         lambda pid: descends_from(pid, me))))
            finally:
                ray.shutdown()
        finally:
            server.stop()
        report(rows, args.n)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stop(folder):
    """End the cluster's processes (those naming its folder, and their children) and no other Ray on the machine."""
    import signal

    belongs = names(folder)
    ours = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit() and belongs(int(entry.name))]  # before any exits
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
    shutil.rmtree(folder, ignore_errors=True)


def report(rows, n):
    reference, _, _, local_cpu, _, _ = rows[0][1:]
    local_wall = rows[0][2]
    print(f"\nEfficientNet-Lite0, {n} HAM10000 JPEGs, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end\n")
    print("CPU-s over the job (Ray's start-up apart): the driver, the Ray workers that ran its tasks and actors, and Ray's "
          "daemons and idle workers; the work ratio is (driver + workers) / local, the CPU ratio everything / local.\n")
    fresh_cpu = rows[1][4]
    print("| configuration | identical to local | start-up s | job s | img/s | CPU-s / image | driver CPU-s | workers CPU-s | "
          "Ray daemons CPU-s | wall ratio | work CPU ratio | CPU ratio | work CPU ratio to a new process |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, result, wall, start, cpu, own, workers in rows:
        same = np.array_equal(result.vectors, reference.vectors) and result.key == reference.key
        print(f"| {name} | {'yes' if same else 'NO'} | {start:.1f} | {wall:.1f} | {n / wall:.1f} | {cpu / n:.4f} | {own:.1f} | {workers:.1f} | "
              f"{cpu - own - workers:.1f} | {wall / local_wall:.2f} | {(own + workers) / local_cpu:.2f} | {cpu / local_cpu:.2f} | "
              f"{(own + workers) / fresh_cpu:.2f} |")


if __name__ == "__main__":
    main()
