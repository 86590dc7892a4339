"""The embedding store: one folder per encoder recipe, every image's embedding addressed by the SHA-256 of its bytes.

    <cache>/<encoder>/<recipe key[:24]>/_recipe.json          what the embeddings depend on (encoder config,
                                                              preprocessing, decoding, runtime, weights, version)
    <cache>/<encoder>/<recipe key[:24]>/rows-<sha[:32]>.parquet  immutable files of rows: image_sha256, embedding,
                                                              wall_s and cpu_s (what computing that image cost)

A run looks up every image's digest and embeds only the missing ones, so order, subset, split,
duplicates and dataset name do not matter. Files are only ever added, each written whole under a
temporary name and renamed: two processes filling one store at once each add their own files, a
kill loses at most the rows not yet written, and a file's name is the SHA-256 of its bytes, so a
damaged file is recognised, left out and its images recomputed.

The cache may be a URL (`--cache-dir s3://bucket/medprobe-store`, any filesystem fsspec knows): the same layout, read
and written through universal_pathlib. An object is written whole by one PUT, so it appears complete or not at all,
and content-named objects never collide: writers on many nodes need no shared filesystem and no lock. What is
local-only: moving foreign files aside (objects of other names are never read as rows) and sweeping writers' parts
(there are none). The folder reads directly:

    pd.read_parquet(folder)                                        # pandas
    pl.read_parquet(f"{folder}/rows-*.parquet")                    # polars
    duckdb.sql(f"select * from read_parquet('{folder}/rows-*.parquet')")
"""

import hashlib
import json
import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medprobe.core import remote
from medprobe.core.errors import CacheError, MedprobeError
from medprobe.core.files import atomic_write_bytes, file_digest, is_writable_folder
from medprobe.core.remote import INSTALL_HINT, is_url

log = logging.getLogger(__name__)

RECIPE = "_recipe.json"  # the leading underscore: pyarrow, pandas and polars skip it when reading the folder
ROWS = "rows-*.parquet"
QUARANTINE = "_quarantine"  # what the store did not write is moved here, out of the folder's reading, never deleted
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
        self.remote = is_url(str(root))
        self.root = folder_at(root)
        self.description = description
        self.key = recipe_key(description)
        self.encoder_folder = self.root / encoder_name.replace("/", "_")  # as the per-dataset cache named it
        self.path = self.encoder_folder / self.key[:24]

    def files(self):
        with self._reaching(self.path):
            return _row_files(self.path)

    @contextmanager
    def _reaching(self, where):
        """For a store at a URL: a network or credentials failure stops the command in one line naming the URL, and is
        never taken for a damaged file (which would be deleted)."""
        if not self.remote:
            yield
            return
        try:
            yield
        except Exception as e:  # noqa: BLE001 -- each filesystem (s3fs, gcsfs, ...) raises its own types
            raise CacheError(f"embedding store {where}: {remote.reason(e)}") from e

    def lookup(self, wanted):
        """{digest: Stored} for every digest in `wanted` the store holds in an intact file."""
        import pyarrow.parquet as pq

        if not self.remote:
            self._import_legacy()
            self._remove_stale_parts()
            tidy(self.path)
        with self._reaching(self.path):
            self._repair_recipe()
        where = defaultdict(list)  # file -> [(digest, row)]
        seen = set()
        for path in self.files():
            try:
                with path.open("rb") as file:  # only the footer and the digest column are read (an object: ranged GETs)
                    column = pq.read_table(file, columns=["image_sha256"], page_checksum_verification=True,
                                           use_threads=False).column(0).to_pylist()
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

        with self._reaching(self.path / RECIPE):
            if not (self.path / RECIPE).is_file():
                self._write(self.path / RECIPE, self._recipe_bytes())
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
        with self._reaching(path):
            self._write(path, data)
        return path

    def writable(self):
        if not self.remote:
            return is_writable_folder(self.path)
        try:  # a bucket says whether it takes writes only when written: the recipe is the store's first object anyway
            if not (self.path / RECIPE).is_file():
                self._write(self.path / RECIPE, self._recipe_bytes())
        except Exception as e:  # noqa: BLE001 -- refused (credentials, a read-only bucket): embed without keeping the result
            log.warning("embedding store %s cannot be written (%s: %s)", self.path, type(e).__name__, e)
            return False
        return True

    def _write(self, path, data):
        """A whole file: a local one through a synced temporary file and a rename; an object by one PUT."""
        if self.remote:
            path.write_bytes(data)
        else:
            atomic_write_bytes(path, data)

    def _recipe_bytes(self):
        return (json.dumps(self.description, indent=1, sort_keys=True, default=str) + "\n").encode()

    def _repair_recipe(self):
        """Write _recipe.json again when it was deleted or edited: without it `medprobe cache` cannot name the store."""
        path = self.path / RECIPE
        if not self.path.is_dir() or _read_recipe(path) == json.loads(self._recipe_bytes()):
            return
        try:
            self._write(path, self._recipe_bytes())
        except OSError as e:  # a read-only store still reads; only its listing lacks the names
            log.warning("embedding store %s: %s is missing or damaged and cannot be written again (%s)", self.path, RECIPE, e)
            return
        log.warning("embedding store %s: %s was missing or damaged; written again", self.path, RECIPE)

    def _read_verified(self, path):
        """(vectors, wall_s, cpu_s) of an intact file of this recipe, or None (logged, and the file removed)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest()[:32] != path.stem.removeprefix("rows-"):
                raise ValueError("its bytes no longer match the checksum in its name")
            # One thread: pyarrow's pool, torn down at exit after reading from a buffer, aborted `medprobe cache --verify`
            # ("terminate called without an active exception", exit 134).
            table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True, use_threads=False)
            if (table.schema.metadata or {}).get(b"medprobe.recipe", b"").decode() != self.key:
                raise ValueError("it belongs to another recipe")
            # Inside the try: a file whose name matches its bytes may still lack a column (KeyError) or be ragged.
            vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)
            return vectors, table.column("wall_s").to_numpy(), table.column("cpu_s").to_numpy()
        except Exception as e:  # damaged, edited or foreign: never returned, its images are recomputed
            self._drop(path, e)
            return None

    def _drop(self, path, error):
        if self.remote:  # a lost connection or refused credentials is not damage: checked before anything is deleted
            with self._reaching(path):
                path.stat()
        log.warning("embedding store file %s is damaged (%s: %s); its images are recomputed", path, type(error).__name__, error)
        try:
            path.unlink()
        except Exception:  # noqa: BLE001 -- a read-only store or bucket: it is left and ignored
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
                tables = [pq.read_table(p, columns=["image_sha256", "embedding"], use_threads=False) for p in sorted(entry.glob("part-*.parquet"))]
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


# --- the folder's own files, and what `medprobe cache` shows and does ---------------------------------


def _is_rows_name(name):
    """The only data files the store writes: rows-<first 32 hex digits of the SHA-256 of their bytes>.parquet."""
    return len(name) == 45 and name.startswith("rows-") and name.endswith(".parquet") and all(c in "0123456789abcdef" for c in name[5:37])


def folder_at(location):
    """A local Path, or a UPath for a URL: the store uses the same path methods on both."""
    if not is_url(str(location)):
        return Path(location)
    try:
        from upath import UPath
    except ImportError as e:
        raise MedprobeError(INSTALL_HINT.format(scheme=str(location).split("://", 1)[0])) from e
    return UPath(str(location))


def _row_files(folder):
    local = isinstance(folder, Path)  # an object store lists objects only: no per-file request to ask if it is one
    return sorted((p for p in folder.glob(ROWS) if _is_rows_name(p.name) and (not local or p.is_file())), key=lambda p: p.name)


def tidy(folder):
    """Move what the store did not write (a folder named like a rows file, foreign.parquet, notes) into _quarantine/.

    Readers of the folder (pandas.read_parquet, pyarrow) would read such files as rows; the store would read a
    folder named rows-*.parquet as rows and recompute their images on every run. Nothing is deleted: it may be
    the user's. Returns the paths moved.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    moved = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")) or (_is_rows_name(path.name) and path.is_file() and not path.is_symlink()):
            continue  # the recipe, the quarantine, writers' parts, and what readers skip anyway; the store's own files
        target = folder / QUARANTINE / path.name
        while target.exists() or target.is_symlink():
            target = target.with_name(f"{target.name}~")
        try:
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
        except FileNotFoundError:  # another process using the store moved it first
            continue
        except OSError as e:  # a read-only store: left where it is; the store reads only its own files
            log.warning("embedding store %s: %s was not written by medprobe and cannot be moved aside (%s); "
                        "it is left out, but readers of the folder such as pandas.read_parquet would read it", folder, path.name, e.strerror or e)
            continue
        log.warning("embedding store %s: %s was not written by medprobe; moved to %s so that readers of the folder "
                    "do not take it for rows", folder, path.name, target)
        moved.append(target)
    return moved


def _read_recipe(path):
    """The recipe a store's _recipe.json holds, or None when it is missing or unreadable."""
    try:
        description = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return description if isinstance(description, dict) else None


def list_stores(root):
    """One record per store under `root`: encoder, recipe key, images, files, bytes, last write."""
    import pyarrow.parquet as pq

    root = Path(root)
    # A store is found by its recipe or by its rows: a deleted _recipe.json must not hide it from listing and pruning.
    folders = sorted({p.parent for p in root.glob(f"*/*/{RECIPE}")} | {p.parent for p in root.glob(f"*/*/{ROWS}") if _is_rows_name(p.name)})
    records = []
    for folder in folders:
        files = _row_files(folder)
        description = _read_recipe(folder / RECIPE)
        if description is None or recipe_key(description)[:24] != folder.name:  # missing, edited, or another store's
            description, note = None, f"{RECIPE} missing or damaged; repaired when the store is next used"
        else:
            note = ""
        rows = 0
        for path in files:
            try:
                rows += pq.ParquetFile(path).metadata.num_rows
            except Exception:  # counted by `verify`
                pass
        encoder = description["encoder"] if description else {}
        runtime = description["runtime"] if description else {}
        records.append({
            # the folder is named after the encoder ('/' as '_'), so --encoder still finds a store whose recipe is lost
            "encoder": str(encoder.get("name", folder.parent.name)) if isinstance(encoder, dict) else folder.parent.name,
            "runtime": str(runtime.get("precision", "?")) if isinstance(runtime, dict) else "?",
            "path": str(folder), "files": len(files), "images": rows, "note": note,
            "bytes": sum(p.stat().st_size for p in files),
            "modified": max((p.stat().st_mtime for p in files), default=(folder / RECIPE if description else folder).stat().st_mtime),
        })
    return records


def verify_store(folder):
    """(good files, [(bad file, reason)]): every file's bytes against the checksum in its name, and its Parquet pages.

    What the store did not write is first moved aside (`tidy`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    tidy(folder)
    good, bad = 0, []
    for path in _row_files(folder):
        try:
            if file_digest(path)[:32] != path.stem.removeprefix("rows-"):
                raise ValueError("bytes do not match the checksum in the name")
            # One thread: pyarrow's pool, torn down at exit after reading from a buffer, aborted this command (exit 134).
            table = pq.read_table(pa.BufferReader(path.read_bytes()), page_checksum_verification=True, use_threads=False)
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
    """Delete whole stores last written more than `older_than_days` ago and/or of `encoder`.

    Only the store's own files are deleted; what it had moved to _quarantine/ stays. Returns (removed records,
    [(record, reason)] of stores that could not be deleted, e.g. read-only ones).
    """
    removed, failed = [], []
    for record in list_stores(root):
        old = older_than_days is not None and time.time() - record["modified"] > older_than_days * 86400
        if (older_than_days is None or old) and (encoder is None or record["encoder"] == encoder):
            folder = Path(record["path"])
            try:
                tidy(folder)
                for path in [*_row_files(folder), *folder.glob(".*.part"), folder / RECIPE]:
                    path.unlink(missing_ok=True)
                if (folder / QUARANTINE).exists():
                    log.warning("kept %s: files medprobe did not write, found in the store", folder / QUARANTINE)
                else:
                    folder.rmdir()
            except OSError as e:
                failed.append((record, f"{e.strerror or e}: {e.filename}" if e.filename else str(e)))
                continue
            removed.append(record)
    return removed, failed
