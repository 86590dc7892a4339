"""What computing a job's embeddings cost, recorded beside its cache entry, so a cache hit never flatters a compute ratio."""

import json
import logging
import time
from pathlib import Path

from medprobe.core.costs import cpu_seconds
from medprobe.core.files import atomic_write_bytes

log = logging.getLogger(__name__)

# Beside the cache shards; the leading underscore keeps Parquet readers from treating it as data.
COST_FILE = "_cost.json"


class CostMeter:
    """The running cost of computing one cache entry, kept beside it after every shard.

    A job that resumes a killed one starts from the killed job's record, so the entry's cost is
    that of every image in it, not only of those the last run computed.
    """

    def __init__(self, folder, resuming):
        self.path = Path(folder) / COST_FILE if folder else None
        previous = _read(self.path) if resuming and self.path else None
        self.before = previous if previous and not previous.get("complete") else {"wall_s": 0.0, "cpu_s": 0.0, "n_images": 0, "runs": 0}
        self.started, self.started_cpu = time.perf_counter(), cpu_seconds()

    def record(self, n_images, complete=False):
        """Write the cost so far: earlier interrupted runs plus this one, `n_images` computed in this run."""
        if self.path is None:
            return
        cost = {
            "wall_s": self.before["wall_s"] + time.perf_counter() - self.started,
            "cpu_s": self.before["cpu_s"] + cpu_seconds() - self.started_cpu,
            "n_images": self.before["n_images"] + n_images,
            "runs": self.before.get("runs", 0) + 1,
            "complete": complete,
        }
        atomic_write_bytes(self.path, json.dumps(cost, indent=1).encode())


def _read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def embedding_cost(embedded, wall_s, cpu_s):
    """What computing these embeddings cost, even when this run read them from the cache.

    A run that computed the embeddings records its cost beside the cache entry; a later run
    that hits the cache reads it back, so a bench's compute ratio does not credit the cache.
    Returns {"wall_s", "cpu_s", "measured_in"}; "measured_in" is "this run", "cache record" or
    "unknown (cached before costs were recorded)".
    """
    record = _read(Path(embedded.path) / COST_FILE) if embedded.path else None
    if not embedded.from_cache:
        if record and record.get("runs", 1) > 1:  # this run finished what killed runs started: theirs counts too
            return {**record, "measured_in": f"this run and {record['runs'] - 1} interrupted earlier run(s)"}
        return {"wall_s": wall_s, "cpu_s": cpu_s, "measured_in": "this run", "n_images": len(embedded.vectors)}
    if record is None:
        log.info("no cost record for cache entry %s; the embedding cost of this run is unknown", embedded.path)
        return {"wall_s": None, "cpu_s": None, "measured_in": "unknown (cached before costs were recorded)"}
    return {**record, "measured_in": "cache record"}
