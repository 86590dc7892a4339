"""core.memory: a process that runs PyTorch on the CPU reuses freed memory instead of faulting fresh pages in each time
(the CPU it saves: benchmarks/eager_heap.py)."""

import resource

import numpy as np
import pytest

from medprobe.core.memory import reuse_freed_memory


def _faults_of_allocations(count, megabytes):
    """Minor page faults taken by `count` buffers of `megabytes`, each written in full and freed before the next."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        np.ones(megabytes << 17)  # float64: 8 bytes each
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_large_buffer_freed_and_allocated_again_faults_no_new_pages():
    if not reuse_freed_memory():
        pytest.skip("the C library is not glibc: its heap is left as it is")
    _faults_of_allocations(1, 64)  # the heap grows once
    assert _faults_of_allocations(5, 64) < 1000  # each buffer is 16,384 pages: mapped anew, they would all fault again


def test_building_an_encoders_network_sets_the_heap(monkeypatch):
    from medprobe.encoders import create_encoder, torch_encoder

    calls = []
    monkeypatch.setattr(torch_encoder, "reuse_freed_memory", lambda: calls.append(1))
    encoder, _ = create_encoder("efficientnet_lite0", runtime="torch")
    assert calls == []  # configured only: a run whose embeddings are all stored never starts PyTorch
    encoder.module
    assert calls == [1]
