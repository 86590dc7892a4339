"""What computing a job's embeddings cost, recorded beside its cache entry, so a cache hit never flatters a compute ratio."""

import json
import logging
from pathlib import Path

from medprobe.core.files import atomic_write_bytes

log = logging.getLogger(__name__)

# Beside the cache shards; the leading underscore keeps Parquet readers from treating it as data.
COST_FILE = "_cost.json"


def embedding_cost(embedded, wall_s, cpu_s):
    """What computing these embeddings cost, even when this run read them from the cache.

    A run that computed the embeddings records its cost beside the cache entry; a later run
    that hits the cache reads it back, so a bench's compute ratio does not credit the cache.
    Returns {"wall_s", "cpu_s", "measured_in"}; "measured_in" is "this run", "cache record" or
    "unknown (cached before costs were recorded)".
    """
    record = Path(embedded.path) / COST_FILE if embedded.path else None
    if not embedded.from_cache:
        cost = {"wall_s": wall_s, "cpu_s": cpu_s, "measured_in": "this run", "n_images": len(embedded.vectors)}
        if record is not None and record.parent.is_dir():
            atomic_write_bytes(record, json.dumps(cost, indent=1).encode())
        return cost
    try:
        cost = json.loads(record.read_text())
        return {**cost, "measured_in": "cache record"}
    except (OSError, ValueError, AttributeError):
        log.info("no cost record for cache entry %s; the embedding cost of this run is unknown", embedded.path)
        return {"wall_s": None, "cpu_s": None, "measured_in": "unknown (cached before costs were recorded)"}
