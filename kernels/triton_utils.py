"""Launch utilities shared by every Triton kernel: tile sizes, compute dtype, autotune configs, scalar tensors."""
from __future__ import annotations

import functools
import os

import torch
import triton

from helo_fast.kernels import interpreter_enabled


def block_size(size: int) -> int:
    """Padded tile extent: the next power of two, at least 16 (tl.dot's minimum on GPU)."""
    return max(16, triton.next_power_of_2(int(size)))

def num_warps_configs():
    """Autotune over the warp count on GPU; a single config under the interpreter (no timing runs).

    HELO_TRITON_NUM_WARPS="4" (or "2,4") narrows the GPU choice: every config is compiled and timed for each
    new shape, which dominates test runs over many shapes."""
    if interpreter_enabled():
        warps = (4,)
    else:
        setting = os.environ.get("HELO_TRITON_NUM_WARPS", "1,2,4,8")
        try:
            warps = tuple(int(w) for w in setting.split(","))
        except ValueError:
            raise ValueError(f"HELO_TRITON_NUM_WARPS must be a comma-separated list of ints, "
                             f"got {setting!r}") from None
    return [triton.Config({}, num_warps=w) for w in warps]

@functools.lru_cache(maxsize=64)
def _cached_scalars(values, dtype, device):
    return torch.tensor(values, dtype=dtype, device=device)

def scalar_tensor(values, dtype, device):
    """The float scalars ``values`` as a (cached, never written) tensor of ``dtype`` on ``device``.

    Cached so that a CUDA call does not pay a host-to-device copy for its constants every time.
    """
    return _cached_scalars(tuple(float(v) for v in values), dtype, torch.device(device))
