"""Launch utilities shared by every Triton kernel: tile sizes, autotune configs (num_warps, pruned per tile), cached
scalar tensors. (Each kernel picks its own compute dtype: helo_fast._numerics.compute_dtype.)"""

from __future__ import annotations

import functools
import os

import torch
import triton

from helo_fast.kernels import interpreter_enabled


def block_size(size: int) -> int:
    """Padded tile extent: the next power of two, at least 16 (tl.dot's minimum on GPU)."""
    return max(16, triton.next_power_of_2(int(size)))


def num_warps_configs(default: str = "1,2,4,8"):
    """Autotune over the warp counts ``default`` on GPU; a single config under the interpreter (no timing runs).

    HELO_TRITON_NUM_WARPS="4" (or "2,4") narrows the GPU choice: every config is compiled and timed for each
    new shape, which dominates test runs over many shapes."""
    if interpreter_enabled():
        warps = (4,)
    else:
        setting = os.environ.get("HELO_TRITON_NUM_WARPS", default)
        try:
            warps = tuple(int(w) for w in setting.split(","))
        except ValueError:
            raise ValueError(f"HELO_TRITON_NUM_WARPS must be a comma-separated list of ints, got {setting!r}") from None
    return [triton.Config({}, num_warps=w) for w in warps]


# A program's largest tile may take at most this many bytes per thread (32 float32 registers): more, and ptxas spills
# to local memory or, at 64 x 128 float32 tiles on one warp, runs for minutes in over 13 GiB (gpu-check).
TILE_BYTES_PER_THREAD = 128


def min_num_warps(block_sizes, itemsize: int, tile_bytes_per_thread: int = TILE_BYTES_PER_THREAD) -> int:
    """The fewest warps for a program whose largest tile is the product of the two largest ``block_sizes``."""
    largest = sorted(block_sizes, reverse=True)[:2]
    tile = largest[0] * (largest[1] if len(largest) > 1 else 1)
    return max(1, -(-tile * itemsize // (32 * tile_bytes_per_thread)))


def prune_num_warps(configs, named_args, *, tile_bytes_per_thread: int = TILE_BYTES_PER_THREAD, **kwargs):
    """``early_config_prune`` of the autotuned kernels: drop warp counts below ``min_num_warps`` for this launch's
    BLOCK_* constexprs and the element size of the first floating-point tensor argument (its storage dtype, 4 bytes
    if there is none; keep the largest config if none is left), and counts above 8 unless needed (each config is
    compiled and timed on a GPU). The GPU audit (benchmarks/gpu_audit) calls the same function, so it compiles
    exactly the configs a launch can pick."""
    blocks = [v for k, v in kwargs.items() if k.startswith("BLOCK")]
    itemsize = next(
        (t.element_size() for t in named_args.values() if isinstance(t, torch.Tensor) and t.is_floating_point()), 4
    )
    need = min_num_warps(blocks, itemsize, tile_bytes_per_thread) if blocks else 1
    return [c for c in configs if need <= c.num_warps <= max(8, need)] or [max(configs, key=lambda c: c.num_warps)]


def autotune_num_warps(key, warps: str = "1,2,4,8", tile_bytes_per_thread: int = TILE_BYTES_PER_THREAD):
    """``triton.autotune`` over ``num_warps_configs(warps)`` keyed by ``key``, pruned by ``prune_num_warps`` with
    ``tile_bytes_per_thread`` (lower for a kernel that keeps many tiles as large as its largest live)."""
    prune = prune_num_warps
    if tile_bytes_per_thread != TILE_BYTES_PER_THREAD:
        prune = functools.partial(prune_num_warps, tile_bytes_per_thread=tile_bytes_per_thread)
    return triton.autotune(configs=num_warps_configs(warps), key=key, prune_configs_by={"early_config_prune": prune})


@functools.lru_cache(maxsize=64)
def _cached_scalars(values, dtype, device):
    return torch.tensor(values, dtype=dtype, device=device)


def scalar_tensor(values, dtype, device):
    """The float scalars ``values`` as a (cached, never written) tensor of ``dtype`` on ``device``.

    Cached so that a CUDA call does not pay a host-to-device copy for its constants every time.
    """
    return _cached_scalars(tuple(float(v) for v in values), dtype, torch.device(device))
