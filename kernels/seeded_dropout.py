"""Triton kernel for ``seeded_dropout``: one elementwise pass, the mask from the counter hash of
``helo_fast._rng`` (bit-identical to the reference and the C++ kernels). The backward is the same kernel
applied to the gradient with the same seed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from helo_fast._numerics import compute_dtype
from helo_fast._rng import STREAM_DROPOUT
from helo_fast.kernels.mask_hash import _hash_uniform
from helo_fast.kernels.triton_utils import scalar_tensor

_STREAM_DROPOUT = tl.constexpr(STREAM_DROPOUT)
_BLOCK = 1024


@triton.jit
def _seeded_dropout_fwd_kernel(x_ptr, out_ptr, seed_ptr, prob_ptr, scale_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    x = tl.load(x_ptr + offs, mask=valid, other=0.0)
    scale = tl.load(scale_ptr)
    kept = x.to(scale.dtype) * scale
    dropped = _hash_uniform(offs, tl.load(seed_ptr), _STREAM_DROPOUT) < tl.load(prob_ptr)
    tl.store(out_ptr + offs, tl.where(dropped, tl.zeros_like(kept), kept), mask=valid)


def seeded_dropout_fwd(x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
    """x (any shape, at most 2**32 elements) -> x * 1/(1-p) where kept, 0 where dropped; seed: int64 tensor [1].

    bf16/fp16 are scaled in float32 and rounded to their dtype by PyTorch afterwards (the interpreter's in-kernel
    float32 -> bf16 conversion does not round to nearest even, PyTorch's x * scalar does)."""
    x = x.contiguous()
    scale_dtype = compute_dtype(x.dtype)
    out = torch.empty(x.shape, dtype=scale_dtype, device=x.device)
    numel = x.numel()
    if numel == 0:
        return out.to(x.dtype)
    seed = seed.to(device=x.device, dtype=torch.int64, non_blocking=True)
    prob = scalar_tensor((p,), torch.float32, x.device)  # compared as float32, like _rng.bernoulli_mask
    scale = scalar_tensor((1.0 / (1.0 - p),), scale_dtype, x.device)
    _seeded_dropout_fwd_kernel[(triton.cdiv(numel, _BLOCK),)](x, out, seed, prob, scale, numel, BLOCK=_BLOCK)
    return out.to(x.dtype)
