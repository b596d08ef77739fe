"""Dropout with a counter-based mask: HeLo's FFN dropout, drawn like its attention-weight dropout."""

from __future__ import annotations

import torch

from .. import _rng
from .._transforms import check_random_draw_allowed
from .._validation import validate_dropout


def seeded_dropout(x: torch.Tensor, p: float, *, generator=None) -> torch.Tensor:
    """x [any shape] -> x * 1/(1-p) where kept, 0 where dropped (same shape and dtype).

    Element i (row-major) is dropped when ``_rng.bernoulli_mask(seed, x.shape, p, STREAM_DROPOUT)`` is True,
    with one seed drawn from ``generator`` per call (none when p = 0). The mask is a function of (seed, i), so
    every backend draws the same mask from the same generator state, and a backward needs only the seed.
    """
    p = validate_dropout(x, p)
    if p == 0.0:
        return x
    check_random_draw_allowed("seeded_dropout")  # a clear error inside a vmap that refuses random draws
    seed = _rng.draw_seed_tensor(generator)  # a tensor: no recompiling on its value under torch.compile
    dropped = _rng.bernoulli_mask(seed, x.shape, p, _rng.STREAM_DROPOUT, x.device)
    return torch.where(dropped, torch.zeros((), dtype=x.dtype, device=x.device), x * (1.0 / (1.0 - p)))
