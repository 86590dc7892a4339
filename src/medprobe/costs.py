"""Compute costs, measured the same way for embedding probes and conventional training.

CPU seconds are this process's user + system time over all its threads (torch's intra-op
pool, decoder threads, ONNX Runtime) plus that of finished child processes, so a ratio of
CPU seconds compares work done, whatever the core count or the load on a shared machine.
"""

import json
import logging
import resource
import time
from pathlib import Path

from medprobe.cache import atomic_write_bytes

log = logging.getLogger(__name__)

# Beside the cache shards; the leading underscore keeps Parquet readers from treating it as data.
COST_FILE = "_cost.json"


def cpu_seconds():
    """CPU seconds used so far by this process and its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Stopwatch:
    """Wall and CPU seconds of a block.

    >>> with Stopwatch() as clock:
    ...     work()
    >>> clock.wall, clock.cpu
    """

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = cpu_seconds() - self._cpu
        return False


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
