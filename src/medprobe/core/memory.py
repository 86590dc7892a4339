"""The C heap of a process that runs PyTorch on the CPU: freed memory is reused, not handed back to the kernel."""

import ctypes
import functools
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
KEEP_FREED_BYTES = 1 << 30  # freed memory at the heap's top kept for reuse, at most


@functools.cache
def reuse_freed_memory():
    """Make glibc's malloc serve large allocations from its heap and keep what is freed there for the next one.

    PyTorch's CPU kernels allocate each layer's output anew. By default glibc maps fresh pages for every allocation above
    128 KB-32 MB and unmaps them when freed, so each batch faults its activations in again, page by page, and the kernel
    zeroes every page. On the 2-core machine PyTorch eager spent most of its CPU time there: 128 images through
    efficientnet_lite0 at one thread took 4.7 s user + 7.2 s system time and 2.8 million page faults; after this call,
    4.6 s user + 0.08 s system (benchmarks/eager_heap.py). The cost is memory: up to KEEP_FREED_BYTES that the process
    freed stay with it.

    Called where medprobe starts PyTorch work (an encoder's network, the baseline's training); once per process. Returns
    whether the heap was changed: not where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
