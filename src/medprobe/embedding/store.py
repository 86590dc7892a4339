"""The embedding store: one folder per encoder recipe, every image's embedding addressed by the SHA-256 of its bytes.

    <cache>/<encoder>/<recipe key[:24]>/_recipe.json          what the embeddings depend on (encoder config,
                                                              preprocessing, decoding, runtime, weights, version)
    <cache>/<encoder>/<recipe key[:24]>/rows-<sha[:32]>.parquet  immutable files of rows: image_sha256, embedding,
                                                              wall_s and cpu_s (what computing that image cost)

A run looks up every image's digest and embeds only the missing ones, so order, subset, split,
duplicates and dataset name do not matter. Files are only ever added, each written whole under a
temporary name and renamed: two processes filling one store at once each add their own files, a
kill loses at most the rows not yet written, and a file's name is the SHA-256 of its bytes, so a
damaged file is recognised, left out and its images recomputed. The folder reads directly:

    pd.read_parquet(folder)                                        # pandas
    pl.read_parquet(f"{folder}/rows-*.parquet")                    # polars
    duckdb.sql(f"select * from read_parquet('{folder}/rows-*.parquet')")
"""

import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.core.files import atomic_write_bytes, file_digest, is_writable_folder

log = logging.getLogger(__name__)

RECIPE = "_recipe.json"  # the leading underscore: pyarrow, pandas and polars skip it when reading the folder
ROWS = "rows-*.parquet"
LEGACY_MANIFEST = "_manifest.json"  # a per-dataset cache entry of medprobe before the store
IMPORTED = "_imported_into_store"


def recipe_key(description):
    """SHA-256 of everything besides the pixels that decides an embedding."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def content_key(digests, description):
    """SHA-256 over the recipe and every image digest in order: the identity of one dataset's embedding matrix."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    for image_digest in digests:
        digest.update(image_digest.encode())
    return digest.hexdigest()


@dataclass
class Stored:
    vector: np.ndarray
    wall_s: float  # what computing this image cost when it was computed (nan: unknown)
    cpu_s: float


class Store:
    """The store of one encoder recipe under a cache root."""

    def __init__(self, root, encoder_name, description):
        self.root = Path(root)
        self.description = description
        self.key = recipe_key(description)
        self.encoder_folder = self.root / encoder_name.replace("/", "_")  # as the per-dataset cache named it
        self.path = self.encoder_folder / self.key[:24]

    def files(self):
        return sorted(self.path.glob(ROWS))

    def lookup(self, wanted):
        """{digest: Stored} for every digest in `wanted` the store holds in an intact file."""
        import pyarrow.parquet as pq

        self._import_legacy()
        self._remove_stale_parts()
        where = defaultdict(list)  # file -> [(digest, row)]
        seen = set()
        for path in self.files():
            try:
                column = pq.read_table(path, columns=["image_sha256"], page_checksum_verification=True).column(0).to_pylist()
            except Exception as e:  # a torn or foreign file: pyarrow raises many types
                self._drop(path, e)
                continue
            for row, digest in enumerate(column):
                if digest in wanted and digest not in seen:
                    seen.add(digest)
                    where[path].append((digest, row))
        found = {}
        for path, items in where.items():
            rows = self._read_verified(path)
            if rows is None:
                continue
            vectors, wall, cpu = rows
            for digest, row in items:
                found[digest] = Stored(vectors[row], float(wall[row]), float(cpu[row]))
        return found

    def append(self, digests, vectors, wall_s, cpu_s):
        """Add rows as one new immutable file, written whole and renamed into place; returns its path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not (self.path / RECIPE).is_file():
            atomic_write_bytes(self.path / RECIPE, (json.dumps(self.description, indent=1, sort_keys=True, default=str) + "\n").encode())
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        table = pa.table({
            "image_sha256": pa.array(list(digests), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            "wall_s": pa.array(np.asarray(wall_s, np.float64)),
            "cpu_s": pa.array(np.asarray(cpu_s, np.float64)),
        }).replace_schema_metadata({"medprobe.recipe": self.key})
        sink = pa.BufferOutputStream()
        # No dictionary encoding: on float vectors and unique digests it only costs (23 % larger, 4x slower per file;
        # docs/store.md).
        pq.write_table(table, sink, write_page_checksum=True, use_dictionary=False)
        data = sink.getvalue().to_pybytes()
        path = self.path / f"rows-{hashlib.sha256(data).hexdigest()[:32]}.parquet"
        atomic_write_bytes(path, data)
        return path

    def writable(self):
        return is_writable_folder(self.path)

    def _read_verified(self, path):
        """(vectors, wall_s, cpu_s) of an intact file of this recipe, or None (logged, and the file removed)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest()[:32] != path.stem.removeprefix("rows-"):
                raise ValueError("its bytes no longer match the checksum in its name")
            table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
            if (table.schema.metadata or {}).get(b"medprobe.recipe", b"").decode() != self.key:
                raise ValueError("it belongs to another recipe")
            # Inside the try: a file whose name matches its bytes may still lack a column (KeyError) or be ragged.
            vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)
            return vectors, table.column("wall_s").to_numpy(), table.column("cpu_s").to_numpy()
        except Exception as e:  # damaged, edited or foreign: never returned, its images are recomputed
            self._drop(path, e)
            return None

    def _drop(self, path, error):
        log.warning("embedding store file %s is damaged (%s: %s); its images are recomputed", path, type(error).__name__, error)
        try:
            path.unlink()
        except OSError:  # a read-only store: it is left and ignored
            pass

    def _remove_stale_parts(self, older_than_s=3600):
        """Delete temporary files a killed writer left (an hour old: a live writer renames its own within seconds)."""
        now = time.time()
        for part in self.path.glob(".*.part"):
            try:
                if now - part.stat().st_mtime > older_than_s:
                    part.unlink()
            except OSError:  # gone already, or a read-only store
                pass

    def _import_legacy(self):
        """Read each per-dataset cache entry of this recipe (medprobe before the store) into the store, once."""
        import pyarrow.parquet as pq

        for manifest in sorted(self.encoder_folder.glob(f"*/{LEGACY_MANIFEST}")):
            entry = manifest.parent
            if (entry / IMPORTED).exists() or not is_writable_folder(entry):
                continue
            try:
                record = json.loads(manifest.read_text())
                same = json.loads(json.dumps(record["config"], sort_keys=True, default=str)) == json.loads(
                    json.dumps(self.description, sort_keys=True, default=str))
            except (OSError, ValueError, KeyError) as e:
                log.info("ignoring old cache entry %s (%s)", entry, e)
                continue
            if not same:
                continue
            try:
                tables = [pq.read_table(p, columns=["image_sha256", "embedding"]) for p in sorted(entry.glob("part-*.parquet"))]
                cost = _legacy_cost(entry)
                for table in tables:
                    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(table.num_rows, -1)
                    n = table.num_rows
                    self.append(table.column("image_sha256").to_pylist(), vectors, np.full(n, cost[0]), np.full(n, cost[1]))
            except Exception as e:  # a damaged old entry: its images are simply computed again
                log.warning("old cache entry %s could not be read (%s); its images will be embedded again", entry, e)
                continue
            (entry / IMPORTED).write_text(str(self.path) + "\n")
            log.warning("read %d embeddings from the old cache entry %s into the store %s", sum(t.num_rows for t in tables), entry, self.path)


def _legacy_cost(entry):
    """Per-image (wall_s, cpu_s) from an old entry's _cost.json, or nan when it recorded none."""
    try:
        cost = json.loads((entry / "_cost.json").read_text())
        return cost["wall_s"] / cost["n_images"], cost["cpu_s"] / cost["n_images"]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return float("nan"), float("nan")


# --- what `medprobe cache` shows and does -------------------------------------------------------------


def list_stores(root):
    """One record per store under `root`: encoder, recipe key, images, files, bytes, last write."""
    import pyarrow.parquet as pq

    records = []
    for recipe in sorted(Path(root).glob(f"*/*/{RECIPE}")):
        folder = recipe.parent
        files = sorted(folder.glob(ROWS))
        try:
            description = json.loads(recipe.read_text())
        except (OSError, ValueError):  # the rows carry their recipe key; only this listing loses the names
            description = {"encoder": {"name": f"{folder.parent.name} (recipe file damaged)"}, "runtime": {}}
        rows = 0
        for path in files:
            try:
                rows += pq.ParquetFile(path).metadata.num_rows
            except Exception:  # counted by `verify`
                pass
        records.append({
            "encoder": description.get("encoder", {}).get("name", folder.parent.name),
            "runtime": description.get("runtime", {}).get("precision", "?"),
            "path": str(folder), "files": len(files), "images": rows,
            "bytes": sum(p.stat().st_size for p in files),
            "modified": max((p.stat().st_mtime for p in files), default=recipe.stat().st_mtime),
        })
    return records


def verify_store(folder):
    """(good files, [(bad file, reason)]): every file's bytes against the checksum in its name, and its Parquet pages."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good, bad = 0, []
    for path in sorted(Path(folder).glob(ROWS)):
        try:
            if file_digest(path)[:32] != path.stem.removeprefix("rows-"):
                raise ValueError("bytes do not match the checksum in the name")
            table = pq.read_table(pa.BufferReader(path.read_bytes()), page_checksum_verification=True)
            if not (table.schema.metadata or {}).get(b"medprobe.recipe", b"").decode().startswith(Path(folder).name):
                raise ValueError("it belongs to another recipe")
            missing = {"image_sha256", "embedding", "wall_s", "cpu_s"} - set(table.column_names)
            if missing:
                raise ValueError(f"columns {sorted(missing)} are missing")
            good += 1
        except Exception as e:
            bad.append((path, f"{type(e).__name__}: {e}"))
    return good, bad


def prune(root, older_than_days=None, encoder=None):
    """Delete whole stores last written more than `older_than_days` ago and/or of `encoder`; returns what was removed."""
    import shutil

    removed = []
    for record in list_stores(root):
        old = older_than_days is not None and time.time() - record["modified"] > older_than_days * 86400
        if (older_than_days is None or old) and (encoder is None or record["encoder"] == encoder):
            shutil.rmtree(record["path"])
            removed.append(record)
    return removed
