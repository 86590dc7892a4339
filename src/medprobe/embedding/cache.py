"""Content-keyed embedding cache: a folder of Parquet shards per (images, encoder, preprocessing, version).

Layout: `<cache>/<encoder>/<key[:24]>/part-00000.parquet ...` plus `_manifest.json`, written last,
listing every shard with its row count and SHA-256. Shards carry the key and config in their
Parquet metadata and page checksums, so a torn or edited file is detected and rebuilt.
The folder reads directly with pandas, polars and DuckDB (`read_parquet('<entry>/*.parquet')`).
"""

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from medprobe.core.files import atomic_write_bytes, file_digest

log = logging.getLogger(__name__)

# A leading underscore makes pyarrow, pandas and polars skip it when reading the folder as a dataset.
MANIFEST = "_manifest.json"


def cache_key(image_digests, description):
    """SHA-256 over the description (encoder config, preprocessing, runtime, version) and every image's digest."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    for image_digest in image_digests:
        digest.update(image_digest.encode())
    return digest.hexdigest()


class CacheEntry:
    """One cache entry: the shards of one embedding job."""

    def __init__(self, root, encoder_name, key, description):
        self.key = key
        self.description = description
        self.path = Path(root) / encoder_name.replace("/", "_") / key[:24]

    def shard_path(self, shard):
        return self.path / f"part-{shard:05d}.parquet"

    def is_complete(self):
        return (self.path / MANIFEST).is_file()

    def read_shard(self, shard, expected_rows):
        """The shard's (ids, digests, vectors), or None when it is absent, torn or from another key."""
        import pyarrow.parquet as pq

        path = self.shard_path(shard)
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path, page_checksum_verification=True)
            key = (table.schema.metadata or {}).get(b"medprobe.key", b"").decode()
            if key != self.key or table.num_rows != expected_rows:
                log.warning("cache shard %s does not match this job; recomputing it", path)
                return None
            vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
            return vectors.reshape(table.num_rows, -1)
        except Exception as e:  # a torn footer, a bad page, a footer naming other columns: pyarrow raises many types
            log.warning("cache shard %s is corrupt (%s: %s); recomputing it", path, type(e).__name__, e)
            return None

    def write_shard(self, shard, start, ids, digests, vectors):
        import pyarrow as pa
        import pyarrow.parquet as pq

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        table = pa.table(
            {
                "index": pa.array(np.arange(start, start + len(ids)), pa.int64()),
                "id": pa.array(list(ids), pa.string()),
                "image_sha256": pa.array(list(digests), pa.string()),
                "embedding": embedding,
            }
        )
        metadata = {"medprobe.key": self.key, "medprobe.config": json.dumps(self.description, default=str)}
        table = table.replace_schema_metadata(metadata)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, write_page_checksum=True)
        atomic_write_bytes(self.shard_path(shard), sink.getvalue().to_pybytes())

    def finish(self, n_shards, n_rows, dim):
        self.remove_stale_parts()
        shards = []
        for shard in range(n_shards):
            path = self.shard_path(shard)
            shards.append({"file": path.name, "sha256": file_digest(path)})
        manifest = {"key": self.key, "rows": n_rows, "dim": dim, "shards": shards, "config": self.description}
        atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=1, default=str).encode())

    def remove_stale_parts(self, older_than_s=3600):
        """Delete temporary files a killed writer left behind (an hour old: a live writer renames its own in seconds)."""
        now = time.time()
        for part in self.path.glob(".*.part"):
            try:
                if now - part.stat().st_mtime > older_than_s:
                    part.unlink()
            except OSError:
                pass

    def verified_shards(self):
        """Shard numbers whose bytes still match the manifest; a mismatch is logged and the shard is redone."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
            records = list(enumerate(manifest["shards"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            # A damaged manifest proves nothing: every shard is checked again by its Parquet footer and page checksums.
            log.warning("cache manifest %s is corrupt (%s); checking every shard again", self.path / MANIFEST, e)
            try:
                (self.path / MANIFEST).unlink(missing_ok=True)
            except OSError:  # a read-only cache: the shards are still checked one by one below
                pass
            return {int(p.stem.split("-")[-1]) for p in self.path.glob("part-*.parquet") if p.stem.split("-")[-1].isdigit()}
        good = set()
        for shard, record in records:
            path = self.path / record["file"]
            if path.is_file() and file_digest(path) == record["sha256"]:
                good.add(shard)
            else:
                log.warning("cache shard %s fails its checksum; recomputing it", path)
        return good
