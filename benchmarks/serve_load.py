"""`medprobe serve` under load on loopback, against `medprobe predict`'s offline rate on the same images.

Serves a model (default: fitted here on the shared HAM10000 train JPEGs with the default encoder, --selection val) and
sends the shared 150x150 HAM10000 test JPEGs from a bounded client: first one request at a time (latency
percentiles), then 16 clients each with one request in flight (throughput, errors). The offline rate is
`medprobe predict` (no cache) on the same images in a warm process (start-up not counted), measured before and
after the server's runs and averaged (other work on a shared machine drifts over minutes).
The server's resident memory is read from /proc at the start and the end. Issue 25's targets: p50 <= 150 ms for one
client, 16-client throughput >= 70 % of offline predict, zero errors over 2,000 requests, RSS flat.

    .venv/bin/python benchmarks/serve_load.py                 # 2,000 requests at 16 clients
    .venv/bin/python benchmarks/serve_load.py --quick         # 400 requests, for a quick look
"""

import argparse
import http.client
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
HAM = ROOT.parent / "shared" / "data" / "ham10000_melnv"
MEDPROBE = [sys.executable, "-m", "medprobe.cli"]


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model, flags):
    process = subprocess.Popen([*MEDPROBE, "serve", str(model), "--port", "0", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([process.stdout], [], [], 600)
    line = process.stdout.readline() if ready else ""
    if "http://" not in line:
        process.kill()
        sys.exit(f"the server did not start: {line!r} {process.stderr.read()[-2000:]}")
    return process, "http://" + line.split("http://", 1)[1].split("/", 1)[0]


def offline_rate(model, images, tmp):
    """Images per second of `medprobe predict` (no cache) on `images`, in this process once it is warm (a 1-image
    predict first), so neither Python's start-up nor the first export is counted; (rate, seconds, CPU-s per image)."""
    from medprobe.embedding.options import EmbedOptions
    from medprobe.workflows.predict import predict

    folder = Path(tempfile.mkdtemp(dir=tmp))
    for path in images:
        os.symlink(path, folder / path.name)
    options = EmbedOptions(use_cache=False, progress=False)
    predict(model, images[0], options)
    started, cpu = time.perf_counter(), time.process_time()
    done = predict(model, folder, options)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert len(done.paths) == len(images)
    return len(images) / seconds, seconds, cpu / len(images)


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hammer(url, payloads, n_requests, clients, on_quarter=None):
    """(latencies in s, errors, wall s): `clients` threads, each with one request in flight on its own keep-alive
    connection, `n_requests` in all; `on_quarter()` is called as each quarter of the requests is sent.
    The client is http.client, not requests: it shares the two cores with the server, and requests' own CPU per call
    (several ms) would be charged to the server's throughput."""
    host, port = url.removeprefix("http://").split(":")
    latencies, errors, lock = [], [], threading.Lock()
    quarters = {n_requests * q // 4 for q in (1, 2, 3)}
    counter = iter(range(n_requests))

    def worker():
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                connection.close()
                return
            if i in quarters and on_quarter:
                on_quarter()
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/predict", body=payloads[i % len(payloads)], headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200 and b'"label"' in body
                outcome = response.status
            except (OSError, http.client.HTTPException) as e:
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=120)
                ok, outcome = False, repr(e)
            with lock:
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors.append(str(outcome))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    return np.array(latencies), errors, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved model folder (default: fit one on HAM10000 train with the default encoder)")
    parser.add_argument("--requests", type=int, default=2000, help="requests at 16 clients (default 2000)")
    parser.add_argument("--single", type=int, default=200, help="requests from one client (default 200)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--offline-images", type=int, default=500, help="images for the offline predict rate (default 500)")
    parser.add_argument("--quick", action="store_true", help="400 requests, 100 from one client, 200 offline images")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.single, args.offline_images = 400, 100, 200
    images = sorted(HAM.glob("test/*/*.jpg"))
    if len(images) < args.offline_images:
        sys.exit(f"the shared HAM10000 JPEGs are not at {HAM}")
    payloads = [p.read_bytes() for p in images]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "model"
            subprocess.run([*MEDPROBE, "fit", "--dataset", str(HAM), "--save", str(model), "--selection", "val", "--n-boot", "200", "--quiet"],
                           check=True, capture_output=True)
        rate_before, before_s, cpu_before = offline_rate(model, images[: args.offline_images], tmp)
        process, url = start_server(model, [])
        try:
            rss_ready = rss_mib(process.pid)
            hammer(url, payloads[:20], 20, 1)  # warm: the first requests of a process pay for lazy imports and arenas
            rss_start = rss_mib(process.pid)
            one, one_errors, _ = hammer(url, payloads, args.single, 1)
            rss_mid = rss_mib(process.pid)
            during = []  # RSS as each quarter of the 16-client run starts: a leak climbs, a plateau does not
            server_cpu, client_cpu = cpu_seconds(process.pid), time.process_time()
            many, many_errors, wall = hammer(url, payloads, args.requests, args.clients, lambda: during.append(round(rss_mib(process.pid), 1)))
            server_cpu, client_cpu = cpu_seconds(process.pid) - server_cpu, time.process_time() - client_cpu
            rss_end = rss_mib(process.pid)
            batches = requests.get(url + "/healthz", timeout=30).json()["batches"]
        finally:
            process.terminate()
            process.wait(30)
        rate_after, after_s, cpu_after = offline_rate(model, images[: args.offline_images], tmp)
    rate = (rate_before + rate_after) / 2
    throughput = args.requests / wall
    figures = {
        "one_client_ms": {f"p{q}": round(1e3 * float(np.percentile(one, q)), 1) for q in (50, 95, 99)},
        "clients": args.clients, "requests": args.requests, "errors": len(one_errors) + len(many_errors),
        "error_examples": (one_errors + many_errors)[:5],
        "throughput_img_s": round(throughput, 1), "offline_predict_img_s": round(rate, 1), "ratio": round(throughput / rate, 3),
        "offline_before_after_img_s": [round(rate_before, 1), round(rate_after, 1)],
        "many_clients_ms": {f"p{q}": round(1e3 * float(np.percentile(many, q)), 1) for q in (50, 95, 99)},
        "server_rss_mib": {"ready": round(rss_ready, 1), "after_20_warm_up": round(rss_start, 1), "after_one_client": round(rss_mid, 1),
                           "16_clients_at_quarters": during, "end": round(rss_end, 1)},
        "batches": batches, "offline_seconds": [round(before_s, 2), round(after_s, 2)], "offline_images": args.offline_images,
        "cpu_ms_per_image": {"offline_predict": round(1e3 * (cpu_before + cpu_after) / 2, 2), "server": round(1e3 * server_cpu / args.requests, 2),
                             "client": round(1e3 * client_cpu / args.requests, 2)},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures, indent=1))
    print(f"\none client: p50 {figures['one_client_ms']['p50']} ms, p95 {figures['one_client_ms']['p95']} ms, p99 {figures['one_client_ms']['p99']} ms "
          f"(target p50 <= 150)\n{args.clients} clients: {throughput:.1f} img/s vs offline predict {rate:.1f} img/s = {throughput / rate:.2f}x "
          f"(target >= 0.70)\nerrors: {figures['errors']} of {args.requests + args.single} (target 0)\n"
          f"server RSS: ready {rss_ready:.0f}, warmed {rss_start:.0f}, after one client {rss_mid:.0f}, 16 clients at 1/4, 1/2, 3/4 {during}, "
          f"end {rss_end:.0f} MiB; mean batch {batches['images'] / max(1, batches['batches']):.2f} images\n"
          f"CPU per image at {args.clients} clients: server {figures['cpu_ms_per_image']['server']} ms, the client itself "
          f"{figures['cpu_ms_per_image']['client']} ms, offline predict {figures['cpu_ms_per_image']['offline_predict']} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
