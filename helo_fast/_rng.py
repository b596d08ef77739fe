"""Counter-based random masks shared by every backend.

DropKey and dropout masks are a pure function of (seed, element index, stream), so a backward pass
regenerates them instead of storing them, and every backend (reference, C++ CPU, CUDA, Triton)
draws bit-identical masks from the same seed. The generator is a 32-bit integer hash
(murmur3's finaliser over a Weyl-style mix of the three inputs):

    x = (index * 0x9E3779B1 + seed * 0x85EBCA77 + stream * 0xC2B2AE3D) mod 2**32
    x ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13; x *= 0xC2B2AE35; x ^= x >> 16   (mod 2**32)
    u = (x >> 8) * 2**-24          # float32 in [0, 1), exact
    dropped = u < float32(p)

``index`` is the row-major linear index into [B, H, Lq, Lk]. Stream 0 is DropKey, stream 1 dropout.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

STREAM_DROPKEY = 0
STREAM_DROPOUT = 1
_M32 = 0xFFFFFFFF


def hash_uniform(seed: Union[int, torch.Tensor], shape, stream: int, device=None) -> torch.Tensor:
    """Float32 uniforms in [0, 1) of the given shape, a pure function of (seed, index, stream).

    ``seed``: an int, or an int64 tensor of one element (``draw_seed_tensor``), which keeps torch.compile from
    specialising, and recompiling, on the seed's value."""
    numel = 1
    for s in shape:
        numel *= int(s)
    if isinstance(seed, torch.Tensor):
        seed = seed.to(device=device, dtype=torch.int64).reshape(())
    # In place on one int64 buffer (half the time of fresh tensors per step at HeLo's B=1024 FFN activations).
    # Products may pass 2**63 and wrap around; only their low 32 bits are kept, and wrapping leaves those exact.
    x = torch.arange(numel, dtype=torch.int64, device=device)
    x.mul_(0x9E3779B1).add_((seed & _M32) * 0x85EBCA77 + stream * 0xC2B2AE3D).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 16)
    x.mul_(0x85EBCA6B).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 13)
    x.mul_(0xC2B2AE35).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 16)
    return (x >> 8).to(torch.float32).mul_(2.0**-24).reshape(tuple(shape))


def bernoulli_mask(seed: Union[int, torch.Tensor], shape, p: float, stream: int, device=None) -> torch.Tensor:
    """Bool mask, True with probability ``p`` (True = dropped); identical on every backend."""
    return hash_uniform(seed, shape, stream, device) < torch.tensor(p, dtype=torch.float32)


# How an attention call gets each of its masks (DropKey, dropout); the values are those of the kernels'
# (csrc/lcd_attention_params.h MaskMode, kernels/lcd_attention.py).
MASK_NONE = 0  # p == 0 and no mask: nothing dropped
MASK_SEEDED = 1  # p > 0 and no mask: the hash mask of the call's seed
MASK_EXPLICIT = 2  # a bool mask given: used as is, whatever p


def mask_mode(p: float, mask=None) -> int:
    """MASK_NONE, MASK_SEEDED or MASK_EXPLICIT: the one rule for every backend's attention masks. (The C++ ops,
    called with the same p and mask, apply it in csrc/lcd_attention_params.h ``mask_mode``.)"""
    if mask is not None:
        return MASK_EXPLICIT
    return MASK_SEEDED if p > 0 else MASK_NONE


def needs_seed(dropkey_p: float, dropout_p: float, dropkey_mask=None, dropout_mask=None) -> bool:
    """Whether an attention call draws a seed: some mask is MASK_SEEDED."""
    return MASK_SEEDED in (mask_mode(dropkey_p, dropkey_mask), mask_mode(dropout_p, dropout_mask))


def attention_masks_of_seed(
    seed, shape, dropkey_p: float, dropout_p: float, dropkey_mask=None, dropout_mask=None, device=None
):
    """(dropkey_mask, dropout_mask): the given ones, the hash masks of ``seed`` [B, H, Lq, Lk] where seeded, None
    where neither (bool, True = dropped)."""
    if mask_mode(dropkey_p, dropkey_mask) == MASK_SEEDED:
        dropkey_mask = bernoulli_mask(seed, shape, dropkey_p, STREAM_DROPKEY, device)
    if mask_mode(dropout_p, dropout_mask) == MASK_SEEDED:
        dropout_mask = bernoulli_mask(seed, shape, dropout_p, STREAM_DROPOUT, device)
    return dropkey_mask, dropout_mask


def draw_seed_tensor(generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The seed draw as an int64 tensor [1] (no .item(), so torch.compile graphs do not break)."""
    return torch.randint(0, 2**31 - 1, (1,), generator=generator)
