"""Compute costs, measured the same way for embedding probes and conventional training.

CPU seconds are this process's user + system time over all its threads (torch's intra-op
pool, decoder threads, ONNX Runtime) plus that of finished child processes, so a ratio of
CPU seconds compares work done, whatever the core count or the load on a shared machine.
"""

import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass


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


@dataclass
class Timings:
    """A run's wall and CPU seconds by stage, and what its embeddings cost when they were computed; results.json's `timings`.

    A cost nobody could measure (images embedded on Ray workers) stays None, "unknown", never a guess.

    >>> timings = Timings()
    >>> with timings.stage("fit"):
    ...     fit()
    >>> timings.fit_s, timings.fit_cpu_s
    """

    ray_start_s: float | None = None  # Ray's own start-up, apart from the work
    scan_s: float = 0.0
    load_s: float = 0.0
    load_cpu_s: float = 0.0
    embed_s: float = 0.0
    embed_cpu_s: float = 0.0
    # what computing every image cost, whenever it was computed: a run that read the store does not flatter the compute ratio
    embed_cost_s: float | None = None
    embed_cost_cpu_s: float | None = None
    embed_cost_source: str | None = None
    embedded_now: int | None = None
    embedded_from_store: int | None = None
    fit_s: float = 0.0
    fit_cpu_s: float = 0.0
    evaluate_s: float = 0.0
    evaluate_cpu_s: float = 0.0
    total_s: float = 0.0
    total_cpu_s: float = 0.0

    def __post_init__(self):
        self._since = time.perf_counter(), cpu_seconds()  # the totals count from here

    @contextmanager
    def stage(self, name):
        """Time a block as `{name}_s` and `{name}_cpu_s`."""
        with Stopwatch() as clock:
            yield
        setattr(self, f"{name}_s", clock.wall)
        setattr(self, f"{name}_cpu_s", clock.cpu)

    def finish(self):
        """Record the totals since this object was made; returns self."""
        self.total_s, self.total_cpu_s = time.perf_counter() - self._since[0], cpu_seconds() - self._since[1]
        return self

    def to_json(self):
        data = asdict(self)
        return data if self.ray_start_s is not None else {k: v for k, v in data.items() if k != "ray_start_s"}
