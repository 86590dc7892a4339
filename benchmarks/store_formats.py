"""Embedding-store formats, measured side by side: a folder of Parquet files vs a Lance dataset.

    python benchmarks/store_formats.py                 # 1,000,000 rows (~5 GB per store; needs ~12 GB free in --tmp)
    python benchmarks/store_formats.py --quick         # 100,000 rows, a fast check
    python benchmarks/store_formats.py --rows 300000 --no-cold --json figures.json

The store the project is choosing: one per encoder recipe, keyed by each image's content digest
(SHA-256 hex), float32 1280-d embeddings, plus small per-row columns (`wall_s`, `cpu_s`). A run looks
up every digest, embeds only the missing images and appends them. Synthetic rows: seeded random
float32 vectors and random 64-hex digests, the same rows in every store.

Candidates (columns of the table):
  pq-scan   a folder of immutable Parquet files, one per appended batch of <= 512 rows, each written
            to a temporary file, fsynced and renamed (page checksums on, snappy, no
            dictionary encoding; the initial build skips the fsync). Lookup reads only the `image_sha256` column of every
            file, builds a dict digest -> (file, row), then reads `embedding` only from the files
            that hold requested digests (`ParquetFile.read_row_group` + `take`).
  pq-index  the same files plus `_index.parquet` (digest, file, row for every row), rewritten on each
            append; a lookup reads the index instead of every file's digest column.
  duckdb    the same files, `select ... from read_parquet('part-*.parquet') where image_sha256 in (...)`.
  lance     one Lance dataset (pylance), built by appends of 10,000 rows; lookup is a filter
            `image_sha256 IN (...)` with the scalar index disabled (a scan with late materialisation).
  lance-bt  the same dataset with a BTREE scalar index on `image_sha256`; its append includes
            `optimize_indices()` so the new rows are indexed too.

Operations: lookup of 10,000 digests that are scattered over the store, 10,000 that were appended
together (a re-run of one data set), 10,000 that are all missing (a first run); the same scattered
lookup with the OS page cache dropped before each repeat (root only; `--no-cold` skips it); append
of 10,000 rows; a full scan (digest + embedding of every row, streamed); disk size. Every timing is
the median of `--repeats` (3) runs, and every lookup result is checked against the generated rows.
Each lookup opens the store afresh (a new process would), so no library keeps a cache between repeats.

Two small checks close the run: two processes appending at once (does every row survive?) and a
writer killed with SIGKILL mid-append (is the store still readable, with whole batches only?).

Everything is written under a temporary folder in --tmp (default /tmp) and removed at the end,
also on an error or Ctrl-C.
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

DIM = 1280
FILE_ROWS = 512  # one Parquet file per appended batch of up to 512 rows
LANCE_APPEND = 10_000  # the Lance store is built by appends of this many rows
QUERY = 10_000
THREADS = max(4, 2 * (os.cpu_count() or 1))
CANDIDATES = ["pq-scan", "pq-index", "duckdb", "lance", "lance-bt"]
SCHEMA = pa.schema(
    [
        ("image_sha256", pa.string()),
        ("embedding", pa.list_(pa.float32(), DIM)),
        ("wall_s", pa.float64()),
        ("cpu_s", pa.float64()),
    ]
)


# ---------------------------------------------------------------- synthetic rows


def digests(rng, n):
    text = rng.bytes(32 * n).hex()
    return [text[i * 64 : (i + 1) * 64] for i in range(n)]


def batch(rng, n):
    vectors = rng.standard_normal(n * DIM, dtype=np.float32)
    return pa.table(
        [
            pa.array(digests(rng, n), pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors), DIM),
            pa.array(rng.random(n) * 0.05),
            pa.array(rng.random(n) * 0.1),
        ],
        schema=SCHEMA,
    )


def vectors_of(column):
    """An Arrow column of fixed-size or variable lists of float32 as an (n, DIM) array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return np.asarray(column.flatten(), dtype=np.float32).reshape(-1, DIM)


# ---------------------------------------------------------------- Parquet folder


def write_parquet_file(folder, table, sync=True):
    """One immutable file: written to a temporary sibling, optionally fsynced, renamed into place."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    sink = pa.BufferOutputStream()
    # No dictionary encoding: pyarrow's default tries it on the float vectors, and the failed
    # dictionary page it keeps makes each 512-row file 23 % larger and 4x slower to write.
    pq.write_table(table, sink, write_page_checksum=True, use_dictionary=False)
    partial = folder / f".{name}.{os.getpid()}.part"
    with open(partial, "wb") as f:
        f.write(sink.getvalue().to_pybytes())
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(partial, folder / name)
    return name


def parquet_append(folder, table, sync=True):
    """Split `table` into files of <= FILE_ROWS rows; returns the index rows (digest, file, row) they add."""
    parts = []
    for start in range(0, table.num_rows, FILE_ROWS):
        piece = table.slice(start, FILE_ROWS)
        name = write_parquet_file(folder, piece, sync)
        parts.append(
            pa.table(
                {
                    "image_sha256": piece.column("image_sha256"),
                    "file": pa.array([name] * piece.num_rows, pa.string()),
                    "row": pa.array(np.arange(piece.num_rows, dtype=np.int32)),
                }
            )
        )
    return pa.concat_tables(parts)


def data_files(folder):
    return sorted(p.name for p in folder.glob("part-*.parquet"))


def write_index(folder, index_table):
    sink = pa.BufferOutputStream()
    pq.write_table(index_table, sink, use_dictionary=["file"])
    partial = folder / f"._index.parquet.{os.getpid()}.part"
    with open(partial, "wb") as f:
        f.write(sink.getvalue().to_pybytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, folder / "_index.parquet")


def parquet_append_indexed(folder, table):
    """Append the files, then rewrite `_index.parquet` with the new rows added (read + concat + write)."""
    added = parquet_append(folder, table)
    old = pq.read_table(folder / "_index.parquet")
    write_index(folder, pa.concat_tables([old, added.cast(old.schema)]))


def fetch_embeddings(folder, positions):
    """positions: {file: [(row, digest), ...]} -> (digests, vectors), reading only those files' embedding column."""

    def one(item):
        name, hits = item
        rows = pa.array([r for r, _ in hits], pa.int32())
        column = pq.ParquetFile(folder / name).read_row_group(0, columns=["embedding"]).column(0)
        return [d for _, d in hits], vectors_of(column.take(rows))

    with ThreadPoolExecutor(THREADS) as pool:
        parts = list(pool.map(one, positions.items()))
    if not parts:
        return [], np.empty((0, DIM), np.float32)
    return [d for ds, _ in parts for d in ds], np.concatenate([v for _, v in parts])


def group_hits(wanted, where):
    positions = {}
    for digest in wanted:
        hit = where.get(digest)
        if hit is not None:
            positions.setdefault(hit[0], []).append((hit[1], digest))
    return positions


def lookup_pq_scan(folder, wanted):
    def digest_column(name):
        return name, pq.read_table(folder / name, columns=["image_sha256"]).column(0).to_pylist()

    with ThreadPoolExecutor(THREADS) as pool:
        columns = list(pool.map(digest_column, data_files(folder)))
    where = {d: (name, row) for name, ds in columns for row, d in enumerate(ds)}
    return fetch_embeddings(folder, group_hits(wanted, where))


def lookup_pq_index(folder, wanted):
    index = pq.read_table(folder / "_index.parquet")
    where = dict(
        zip(
            index.column("image_sha256").to_pylist(),
            zip(index.column("file").to_pylist(), index.column("row").to_pylist()),
        )
    )
    return fetch_embeddings(folder, group_hits(wanted, where))


def lookup_duckdb(folder, wanted):
    import duckdb

    con = duckdb.connect()
    try:
        con.register("wanted", pa.table({"d": pa.array(wanted, pa.string())}))
        table = con.execute(
            f"select image_sha256, embedding from read_parquet('{folder}/part-*.parquet') "
            "where image_sha256 in (select d from wanted)"
        ).to_arrow_table()
    finally:
        con.close()
    return table.column("image_sha256").to_pylist(), vectors_of(table.column("embedding"))


def scan_parquet(folder):
    dataset = pads.dataset([str(folder / n) for n in data_files(folder)], format="parquet")
    return sum(b.num_rows for b in dataset.to_batches(columns=["image_sha256", "embedding"]))


def scan_duckdb(folder):
    import duckdb

    con = duckdb.connect()
    try:
        reader = con.sql(f"select image_sha256, embedding from read_parquet('{folder}/part-*.parquet')").to_arrow_reader(65536)
        return sum(b.num_rows for b in reader)
    finally:
        con.close()


# ---------------------------------------------------------------- Lance


def lance_in_filter(wanted):
    # Digests are 64 lowercase hex characters (checked here), so quoting them in SQL is safe.
    assert all(len(d) == 64 and d.isalnum() for d in wanted)
    return "image_sha256 IN (" + ",".join(f"'{d}'" for d in wanted) + ")"


def lookup_lance(uri, wanted, use_index):
    import lance

    dataset = lance.dataset(uri)
    table = dataset.to_table(
        columns=["image_sha256", "embedding"], filter=lance_in_filter(wanted), use_scalar_index=use_index
    )
    return table.column("image_sha256").to_pylist(), vectors_of(table.column("embedding"))


def lance_append(uri, table, reindex):
    import lance

    dataset = lance.write_dataset(table, uri, mode="append")
    if reindex:
        dataset.optimize.optimize_indices()


def scan_lance(uri):
    import lance

    return sum(b.num_rows for b in lance.dataset(uri).to_batches(columns=["image_sha256", "embedding"]))


# ---------------------------------------------------------------- helpers


def disk_bytes(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def drop_page_cache():
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def median_time(fn, repeats, before=None):
    times, result = [], None
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def check(result, expected, label):
    """The lookup found exactly the expected digests, each with its generated vector."""
    found, vectors = result
    if len(found) != len(expected):
        raise AssertionError(f"{label}: found {len(found)} rows, expected {len(expected)}")
    for i, d in enumerate(found):
        if not np.array_equal(vectors[i], expected[d]):
            raise AssertionError(f"{label}: wrong vector for {d}")


def uptime():
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- concurrency and crash checks (small stores)


def _writer(kind, path, seed, batches, start_event):
    rng = np.random.default_rng(seed)
    start_event.wait()
    for _ in range(batches):
        table = batch(rng, FILE_ROWS)
        if kind == "pq-scan":
            parquet_append(Path(path), table)
        elif kind == "pq-index":
            parquet_append_indexed(Path(path), table)
        else:
            import lance

            lance.write_dataset(table, path, mode="append")


def _store_rows(kind, path):
    if kind == "pq-scan":
        folder = Path(path)
        return sum(pq.read_metadata(folder / n).num_rows for n in data_files(folder))
    if kind == "pq-index":
        return pq.read_table(Path(path) / "_index.parquet").num_rows
    import lance

    return lance.dataset(path).count_rows()


def _empty_store(kind, path):
    empty = SCHEMA.empty_table()
    if kind.startswith("pq"):
        Path(path).mkdir(parents=True)
        write_index(Path(path), pa.table({"image_sha256": pa.array([], pa.string()), "file": pa.array([], pa.string()), "row": pa.array([], pa.int32())}))
    else:
        import lance

        lance.write_dataset(empty, path)


def concurrency_check(root, kind, batches=20):
    """Two processes append `batches` x 512 rows each at the same moment; every row should be there after."""
    path = str(root / f"conc-{kind}")
    _empty_store(kind, path)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(kind, path, 100 + i, batches, go)) for i in range(2)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # both children imported and waiting
    go.set()
    for p in procs:
        p.join()
    errors = [p.exitcode for p in procs if p.exitcode]
    rows = _store_rows(kind, path)
    want = 2 * batches * FILE_ROWS
    verdict = "ok" if rows == want and not errors else "LOST ROWS" if rows < want else "error"
    return f"{verdict}: {rows:,}/{want:,} rows" + (f", writer exit codes {errors}" if errors else "")


def crash_check(root, kind, after_s=1.5):
    """A writer appending in a loop is killed with SIGKILL; the store must still read whole, batch-aligned."""
    path = str(root / f"crash-{kind}")
    _empty_store(kind, path)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    p = ctx.Process(target=_writer, args=(kind, path, 7, 10_000, go))
    p.start()
    time.sleep(2.0)
    go.set()
    time.sleep(after_s)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    try:
        if kind == "pq-scan":
            folder = Path(path)
            rows = sum(pq.read_table(folder / n, page_checksum_verification=True).num_rows for n in data_files(folder))
            leftovers = len(list(folder.glob(".*.part")))
        else:
            import lance

            dataset = lance.dataset(path)
            dataset.validate()
            rows = dataset.to_table().num_rows
            leftovers = "n/a"
        aligned = rows % FILE_ROWS == 0
        return f"readable: {rows:,} rows, whole batches {aligned}, temp leftovers {leftovers}"
    except Exception as e:  # noqa: BLE001  any failure to read back is the finding
        return f"UNREADABLE: {type(e).__name__}: {e}"


# ---------------------------------------------------------------- the run


def build(root, n_rows, query_rows, seed):
    """Write the same rows to the Parquet folder (+ index) and the Lance dataset; return build times."""
    import lance

    rng = np.random.default_rng(seed)
    pq_dir = root / "parquet"
    pq_dir.mkdir()
    lance_uri = str(root / "store.lance")
    expected, index_parts = {}, []  # expected: row number -> (digest, vector) for the query rows
    t_pq = t_lance = 0.0
    pending, lance_created, done = [], False, 0
    while done < n_rows:
        n = min(FILE_ROWS * 20, n_rows - done)
        table = batch(rng, n)
        for i in np.nonzero((query_rows >= done) & (query_rows < done + n))[0]:
            row = int(query_rows[i]) - done
            expected[int(query_rows[i])] = (
                table.column("image_sha256")[row].as_py(),
                vectors_of(table.column("embedding").slice(row, 1))[0],
            )
        start = time.perf_counter()
        index_parts.append(parquet_append(pq_dir, table, sync=False))
        t_pq += time.perf_counter() - start
        pending.append(table)
        buffered = sum(t.num_rows for t in pending)
        done += n
        while buffered >= LANCE_APPEND or (done == n_rows and buffered):
            whole = pa.concat_tables(pending)
            take = min(LANCE_APPEND, whole.num_rows)
            start = time.perf_counter()
            lance.write_dataset(whole.slice(0, take), lance_uri, mode="append" if lance_created else "create")
            t_lance += time.perf_counter() - start
            lance_created = True
            pending = [whole.slice(take)] if whole.num_rows > take else []
            buffered = whole.num_rows - take
    start = time.perf_counter()
    write_index(pq_dir, pa.concat_tables(index_parts))
    t_index = time.perf_counter() - start
    start = time.perf_counter()
    lance.dataset(lance_uri).create_scalar_index("image_sha256", "BTREE")
    t_btree = time.perf_counter() - start
    return pq_dir, lance_uri, expected, {"pq": t_pq, "index": t_index, "lance": t_lance, "btree": t_btree}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in each store (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cold", action="store_true", help="skip the lookups with the page cache dropped")
    parser.add_argument("--no-checks", action="store_true", help="skip the two-writer and SIGKILL checks")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where the stores are written (removed after)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    n_rows = 100_000 if args.quick else args.rows
    if n_rows < 2 * QUERY + FILE_ROWS:
        parser.error(f"--rows must be at least {2 * QUERY + FILE_ROWS}")

    try:
        import lance
    except ImportError:
        sys.exit("the Lance columns need `pip install pylance` (about 220 MB; not a medprobe dependency); install it and rerun")

    need = 2.3 * n_rows * DIM * 4
    free = shutil.disk_usage(args.tmp).free
    if free < need:
        parser.error(f"{args.tmp} has {free / 1e9:.1f} GB free, the stores need ~{need / 1e9:.1f} GB; lower --rows")

    root = Path(tempfile.mkdtemp(prefix="medprobe-store-bench-", dir=args.tmp))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(root, n_rows, args, lance.__version__)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print(f"removed {root}", file=sys.stderr)


def run(root, n_rows, args, lance_version):
    import duckdb

    rng = np.random.default_rng(args.seed + 1)
    scattered = np.sort(rng.choice(n_rows, QUERY, replace=False))
    clustered = np.arange(n_rows // 2, n_rows // 2 + QUERY)
    print(f"medprobe store benchmark: {n_rows:,} rows x {DIM} float32, in {root}", file=sys.stderr)
    print(f"pyarrow {pa.__version__}, duckdb {duckdb.__version__}, pylance {lance_version}; {uptime()}", file=sys.stderr)
    t0 = time.perf_counter()
    pq_dir, lance_uri, expected, built = build(root, n_rows, np.concatenate([scattered, clustered]), args.seed)
    print(f"built in {time.perf_counter() - t0:.0f} s: {len(data_files(pq_dir)):,} Parquet files", file=sys.stderr)

    def query(rows):  # the requested digests, shuffled, and the vector each must come back with
        rows = np.random.default_rng(args.seed + 4).permutation(rows)
        return [expected[int(r)][0] for r in rows], dict(expected[int(r)] for r in rows)

    queries = {
        "lookup 10k scattered": query(scattered),
        "lookup 10k clustered": query(clustered),
        "lookup 10k all missing": (digests(np.random.default_rng(args.seed + 2), QUERY), {}),
    }
    lookups = {
        "pq-scan": lambda w: lookup_pq_scan(pq_dir, w),
        "pq-index": lambda w: lookup_pq_index(pq_dir, w),
        "duckdb": lambda w: lookup_duckdb(pq_dir, w),
        "lance": lambda w: lookup_lance(lance_uri, w, False),
        "lance-bt": lambda w: lookup_lance(lance_uri, w, True),
    }
    figures = {}  # (operation, candidate) -> (seconds, rows)

    def record(op, cand, seconds, rows):
        figures[(op, cand)] = (seconds, rows)
        print(f"  {op:28s} {cand:9s} {seconds:8.3f} s", file=sys.stderr)

    record("build (write all rows)", "pq-scan", built["pq"], n_rows)
    record("build (write all rows)", "pq-index", built["pq"] + built["index"], n_rows)
    record("build (write all rows)", "lance", built["lance"], n_rows)
    record("build (write all rows)", "lance-bt", built["lance"] + built["btree"], n_rows)
    for op, (wanted, want) in queries.items():
        for cand, fn in lookups.items():
            seconds, result = median_time(lambda fn=fn, wanted=wanted: fn(wanted), args.repeats)
            check(result, want, f"{cand} {op}")
            record(op, cand, seconds, QUERY)
    cold = not args.no_cold and drop_page_cache()
    if cold:
        wanted, want = queries["lookup 10k scattered"]
        for cand, fn in lookups.items():
            seconds, result = median_time(lambda fn=fn: fn(wanted), args.repeats, before=drop_page_cache)
            check(result, want, f"{cand} cold")
            record("lookup 10k scattered, cold", cand, seconds, QUERY)
    for cand, fn in [("pq-scan", scan_parquet), ("duckdb", scan_duckdb), ("lance", scan_lance)]:
        target = lance_uri if cand == "lance" else pq_dir
        seconds, rows = median_time(lambda fn=fn, target=target: fn(target), args.repeats)
        assert rows == n_rows, (cand, rows)
        record("full scan", cand, seconds, n_rows)
    # Sizes before the appends, so they describe exactly n_rows rows.
    index_bytes = disk_bytes(pq_dir / "_index.parquet")
    parquet_bytes = disk_bytes(pq_dir) - index_bytes
    lance_bytes = disk_bytes(lance_uri)
    btree_bytes = disk_bytes(Path(lance_uri) / "_indices")
    sizes = {
        "pq-scan": parquet_bytes,
        "pq-index": parquet_bytes + index_bytes,
        "duckdb": parquet_bytes,
        "lance": lance_bytes - btree_bytes,
        "lance-bt": lance_bytes,
    }
    appends = {
        "pq-scan": lambda t: parquet_append(pq_dir, t),
        "pq-index": lambda t: parquet_append_indexed(pq_dir, t),
        "lance": lambda t: lance_append(lance_uri, t, False),
        "lance-bt": lambda t: lance_append(lance_uri, t, True),
    }
    append_rng = np.random.default_rng(args.seed + 3)
    for cand, fn in appends.items():
        tables = [batch(append_rng, QUERY) for _ in range(args.repeats)]
        seconds, _ = median_time(lambda fn=fn, tables=tables: fn(tables.pop()), args.repeats)
        record("append 10k", cand, seconds, QUERY)
    n_files = len(data_files(pq_dir))
    checks = {}
    if not args.no_checks:
        for kind in ("pq-scan", "pq-index", "lance"):
            checks[f"two writers, 2 x 20 x 512 rows: {kind}"] = concurrency_check(root, kind)
        for kind in ("pq-scan", "lance"):
            checks[f"SIGKILL mid-append: {kind}"] = crash_check(root, kind)
    load = uptime()
    print_table(n_rows, figures, sizes, checks, load, n_files)
    if args.json:
        out = {
            "rows": n_rows,
            "uptime_after": load,
            "versions": {"pyarrow": pa.__version__, "duckdb": duckdb.__version__, "pylance": lance_version},
            "figures": [{"operation": o, "candidate": c, "seconds": s, "rows": r} for (o, c), (s, r) in figures.items()],
            "disk_bytes": sizes,
            "checks": checks,
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def print_table(n_rows, figures, sizes, checks, load, n_files):
    ops = list(dict.fromkeys(o for o, _ in figures))
    print(f"\n{n_rows:,} rows x {DIM} float32 ({n_files:,} Parquet files after the appends); median of repeats")
    print("cells: seconds (rows/s); `=`: the same files and code as the column to its left\n")
    print("| operation | " + " | ".join(CANDIDATES) + " |")
    print("|---|" + "---|" * len(CANDIDATES))
    for op in ops:
        cells = []
        for cand in CANDIDATES:
            if (op, cand) in figures:
                s, r = figures[(op, cand)]
                cells.append(f"{s:.3f} ({r / s:,.0f})" if s > 0 else "-")
            else:
                cells.append("=")
        print(f"| {op} | " + " | ".join(cells) + " |")
    print("| disk MB | " + " | ".join(f"{sizes[c] / 1e6:,.0f}" for c in CANDIDATES) + " |")
    if checks:
        print()
        for name, verdict in checks.items():
            print(f"- {name}: {verdict}")
    print(f"\nuptime at the end: {load}")


if __name__ == "__main__":
    sys.exit(main())
