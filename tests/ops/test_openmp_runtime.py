"""The kernels' threads run on torch's OpenMP runtime, whatever compiler built the extension (csrc/parallel.h): a
second runtime in the process (clang's LLVM libomp next to torch's GNU libgomp) has idle threads that busy-wait on
the cores the other's team works on (measured 1.5-4x slower attention and training step: docs/performance.md)."""

import os
import sys

import pytest
import torch

import helo_fast as hf
from helo_fast import _ext

pytestmark = [
    pytest.mark.skipif(not _ext.has_cpp(), reason=_ext.EXTENSION_ERROR or ""),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps"),
]

# file-name prefix of each OpenMP runtime's shared library -> its name
RUNTIMES = {"libgomp": "GNU libgomp", "libomp": "LLVM libomp", "libiomp": "Intel libiomp"}


def loaded_openmp_runtimes():
    """The OpenMP runtimes mapped into this process."""
    with open("/proc/self/maps") as maps:
        names = {os.path.basename(line.split()[-1]) for line in maps if "/" in line}
    return {runtime for prefix, runtime in RUNTIMES.items() for name in names if name.startswith(prefix)}


def test_the_extension_adds_no_second_openmp_runtime():
    hf.sinkhorn(torch.rand(4, 8, 8), eps=0.1, n_iters=3, backend="cpp")  # a kernel has run (its team, on 2+ threads)
    assert len(loaded_openmp_runtimes()) <= 1, loaded_openmp_runtimes()
