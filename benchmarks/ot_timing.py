"""What the OT benchmarks (test_bench_sinkhorn.py, test_bench_gromov_wasserstein.py) share: dtype, provider skips and
the timing of a forward or forward+backward pass."""

import os

import pytest
import torch

from helo_fast import _backend

from .conftest import input_sets, record, rotating, synchronized
from .memory import saved_tensor_bytes

DTYPE = torch.float32
COMPILE = os.environ.get("HELO_BENCH_COMPILE") == "1"


def skip_unavailable(provider, device, op):
    if provider == "compile" and not COMPILE:
        pytest.skip("set HELO_BENCH_COMPILE=1 for the torch.compile provider")
    if provider in ("cpp", "triton") and _backend.unavailable_reason(provider, device, op) is not None:
        pytest.skip(_backend.unavailable_reason(provider, device, op))


def timed(benchmark, fn, inputs, backward, **record_kwargs):
    """Time fn(*inputs) (no_grad) or fn(*inputs).backward(w) (inputs rotated on CUDA); record saved bytes."""
    extra = {}
    if backward:
        extra["saved_bytes"] = saved_tensor_bytes(fn, *inputs)
        weight = torch.randn_like(fn(*inputs).detach())

        def step(*args):
            for t in args:
                t.grad = None
            fn(*args).backward(weight)
    else:

        def step(*args):
            with torch.no_grad():
                return fn(*args)

    record(benchmark, pass_="fwd+bwd" if backward else "fwd", dtype=DTYPE, **record_kwargs, **extra)
    benchmark(synchronized(rotating(step, input_sets(inputs))))


# The triton provider is timed on CUDA only: the CPU interpreter is not worth timing.
def skip_unless_cuda_triton(device, op):
    if device.type != "cuda" or _backend.unavailable_reason("triton", device, op) is not None:
        pytest.skip("the triton provider is timed on CUDA only")
