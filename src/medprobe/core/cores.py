"""How many CPU cores medprobe's work may use: one rule for every thread pool it sizes (inference, decoding, probe fits)."""

import os

THREADS_VARIABLE = "MEDPROBE_THREADS"  # a cap on usable_cores: a Ray actor sets it to the CPUs Ray gave it


def usable_cores():
    """CPU cores this process may run on (affinity-aware, so containers and `taskset` are respected).

    $MEDPROBE_THREADS lowers it: a Ray actor sets it to the CPUs Ray gave it, so its runtime does not take the node's.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = max(1, os.cpu_count() or 1)
    return min(cores, int(os.environ.get(THREADS_VARIABLE) or cores))
