"""Bands for numerics that depend on the CPU's kernels, and skips for CPU features a test needs; one home for both.

Each band is derived from what the exactness guard and docs/speed.md promise, not from one machine's reading:
an approximate runtime lies below the guard's bar (MIN_COSINE, else it would be exact and need no opt-in) and
well above a broken one. Smallest per-image cosine to fp32 PyTorch eager on the 12 fixture images, as measured:
  bf16: 0.988-0.995 (Zen 4), 0.9956 (AVX512-BF16 EPYC), 0.98989 (Sapphire Rapids with AMX, OpenVINO bf16);
  int8: 0.93-0.97, 0.9547, 0.9216 (AVX512-VNNI EPYC).
Each lower edge leaves about 0.01-0.02 of margin below the lowest of these.

To simulate a CPU without a feature on one that has it, set MEDPROBE_TEST_HIDE_CPU_FLAGS, e.g.
`MEDPROBE_TEST_HIDE_CPU_FLAGS=avx512_bf16,amx_bf16 make test`: the tests that need it then skip, naming the flag.
"""

import os
from functools import cache

import pytest

from medprobe.encoders.runtimes import MIN_COSINE

BF16_BAND = (0.98, MIN_COSINE)
INT8_BAND = (0.90, 0.99)

# OpenVINO runs bf16 natively only with one of these; without both it silently computes in f32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_flags():
    """The flags /proc/cpuinfo lists for this CPU, less those hidden by MEDPROBE_TEST_HIDE_CPU_FLAGS."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        line = ""
    hidden = set(filter(None, os.environ.get("MEDPROBE_TEST_HIDE_CPU_FLAGS", "").split(",")))
    return frozenset(line.partition(":")[2].split()) - hidden


def skip_without_any_cpu_flag(*flags):
    """Skip the calling test unless this CPU has at least one of `flags`; the message names them."""
    if not cpu_flags() & set(flags):
        pytest.skip(f"this CPU lacks {' and '.join(flags)} (needed for native bf16 kernels)")
