"""Compute costs, measured the same way for embedding probes and conventional training.

CPU seconds are this process's user + system time over all its threads (torch's intra-op
pool, decoder threads, ONNX Runtime) plus that of finished child processes, so a ratio of
CPU seconds compares work done, whatever the core count or the load on a shared machine.
"""

import resource
import time


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
