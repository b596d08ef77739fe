"""The counter-based mask hash of ``helo_fast._rng`` in Triton (its C++ twin: csrc/mask_hash.h), shared by the
lcd_attention and seeded_dropout kernels: bit-identical masks on every backend."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _hash_uniform(index, seed, STREAM: tl.constexpr):
    """float32 uniforms in [0, 1) from (seed, linear index, stream), as helo_fast._rng.hash_uniform."""
    mix = ((seed & 0xFFFFFFFF) * 0x85EBCA77 + STREAM * 0xC2B2AE3D) & 0xFFFFFFFF
    x = index.to(tl.uint32) * 0x9E3779B1 + mix.to(tl.uint32)
    x = x ^ (x >> 16)
    x = x * 0x85EBCA6B
    x = x ^ (x >> 13)
    x = x * 0xC2B2AE35
    x = x ^ (x >> 16)
    return (x >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2**-24


@triton.jit
def _hash_uniform_kernel(out_ptr, seed_ptr, numel, STREAM: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _hash_uniform(offs, tl.load(seed_ptr), STREAM), mask=offs < numel)


def hash_uniform(seed: int, shape, stream: int, device=None) -> torch.Tensor:
    """The in-kernel mask hash as a tensor (float32, ``shape``): must equal helo_fast._rng.hash_uniform."""
    numel = 1
    for size in shape:
        numel *= int(size)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    seed_t = torch.tensor([seed], dtype=torch.int64, device=device)
    block = 1024
    _hash_uniform_kernel[(triton.cdiv(numel, block),)](out, seed_t, numel, STREAM=stream, BLOCK=block)
    return out.reshape(tuple(shape))
