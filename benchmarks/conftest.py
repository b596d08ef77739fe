"""Shared set-up of the pytest-benchmark suites.

Conventions every benchmark follows (benchmarks/report.py relies on them):
- ``benchmark.group`` = "<op> <shape> <pass>", e.g. "gromov_wasserstein B=128 n=36 fwd+bwd";
- ``benchmark.extra_info`` holds "op", "provider" (reference | compile | pot | pot_batch | sdpa | io_floor | cpp |
  triton), "pass" ("fwd" or "fwd+bwd"), "size" (a short label), "batch" (B), "device", "dtype", "precision" where
  it is not "32" (e.g. "bf16-mixed": run under autocast), and, where measured, "saved_bytes" (bytes autograd keeps
  for backward) or "cuda_peak_bytes";
- the "reference" provider (eager plain PyTorch) is the denominator of every speed-up ratio.
CPU runs use 2 threads (HELO_BENCH_THREADS overrides). The torch.compile provider runs only with
HELO_BENCH_COMPILE=1. On CUDA the timed function synchronises and cycles through enough copies of its
inputs that they cannot all sit in the L2 cache (``input_sets``/``rotating``).
"""

import os

import pytest
import torch

THREADS = int(os.environ.get("HELO_BENCH_THREADS", "2"))
# torch.compile providers take a minute or more to compile on 2 cores: opt-in.
COMPILE = os.environ.get("HELO_BENCH_COMPILE") == "1"
DEVICE = torch.device(os.environ.get("HELO_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))


def compiled(fn, **compile_kwargs):
    """torch.compile(fn) with dynamo's caches cleared first: every parametrized case compiles its own graph
    (sharing one would hit dynamo's per-function recompile limit across shapes and grad modes)."""
    torch._dynamo.reset()
    return torch.compile(fn, **compile_kwargs)


def pytest_configure(config):
    torch.set_num_threads(THREADS)


@pytest.fixture
def device():
    return DEVICE


def synchronized(fn):
    """Wrap ``fn`` so its time includes the GPU work it queued."""
    if DEVICE.type != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


def rotation_count(set_bytes: int, l2_bytes: int, max_sets: int) -> int:
    """How many input sets of ``set_bytes`` together exceed twice ``l2_bytes`` (1 to ``max_sets``)."""
    return max(1, min(max_sets, 2 * l2_bytes // max(set_bytes, 1) + 1))


def input_sets(tensors, *, max_sets: int = 32):
    """Copies of ``tensors`` (a list; None entries stay None) to cycle through between timed calls.

    On CUDA: as many sets as it takes for their bytes to exceed twice the L2 cache (so each call reads its
    inputs from device memory, as in training, rather than from the cache the previous call left warm), at
    most ``max_sets``; the first set is ``tensors`` itself. On CPU: only ``tensors`` (HeLo's per-call
    inputs are cache-sized there and are timed as such). Copies keep ``requires_grad``.
    """
    if DEVICE.type != "cuda":
        return [tensors]
    nbytes = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    count = rotation_count(nbytes, torch.cuda.get_device_properties(DEVICE).L2_cache_size, max_sets)

    def copy(t):
        return None if t is None else t.detach().clone().requires_grad_(t.requires_grad)

    return [tensors] + [[copy(t) for t in tensors] for _ in range(count - 1)]


def rotating(step, sets):
    """A no-argument callable that runs ``step(*sets[i])`` with i = 0, 1, ... cycling over ``sets``."""
    position = [0]

    def run():
        inputs = sets[position[0] % len(sets)]
        position[0] += 1
        return step(*inputs)

    return run


def record(benchmark, *, op, provider, pass_, size, batch, dtype, **extra):
    """Fill ``benchmark.group``/``extra_info`` with the suite's conventions."""
    benchmark.group = f"{op} {size} {pass_}"
    benchmark.extra_info.update(
        op=op,
        provider=provider,
        **{"pass": pass_},
        size=size,
        batch=batch,
        device=str(DEVICE),
        dtype=str(dtype).replace("torch.", ""),
        threads=THREADS,
        **extra,
    )


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the versions and the GPU with the results (benchmarks/report.py prints them)."""
    machine_info["helo_torch"] = torch.__version__
    try:
        import triton

        machine_info["helo_triton"] = triton.__version__
    except ImportError:
        machine_info["helo_triton"] = "not installed"
    machine_info["helo_cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["helo_threads"] = THREADS
