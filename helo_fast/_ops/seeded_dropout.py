"""seeded_dropout: the C++ op (torch.ops.helo_fast.seeded_dropout_fwd, schema in csrc/schema.cpp) and the Triton op
(helo_fast::triton_seeded_dropout_fwd, kernels/seeded_dropout.py): fake kernels, autograd, registration.

The mask is a function of (seed, element index), so the backward is the same op applied to the gradient with
the same seed: nothing but the seed is saved.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .. import _ext, _rng, kernels
from . import register


def register_seeded_dropout_autograd(qualname: str, op: Callable) -> None:
    """Autograd of a seeded dropout op ``op(x, seed, p)`` (registered as ``qualname``): linear in x with a mask
    fixed by the seed, so its backward is ``op(grad, seed, p)`` and the seed is all it saves."""

    def setup_context(ctx, inputs, output):
        _, seed, ctx.p = inputs
        ctx.save_for_backward(seed)

    def backward(ctx, grad_out):
        (seed,) = ctx.saved_tensors
        return op(grad_out, seed, ctx.p), None, None

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


if _ext.has_cpp():

    @torch.library.register_fake("helo_fast::seeded_dropout_fwd")
    def _seeded_dropout_fwd_fake(x, seed, p):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    register_seeded_dropout_autograd("helo_fast::seeded_dropout_fwd", torch.ops.helo_fast.seeded_dropout_fwd)

    def seeded_dropout_cpp(x, p, *, generator):
        """Validated x (any shape), 0 < p < 1 -> x * 1/(1-p) where kept, 0 where dropped, from the C++ kernels.
        The seed is drawn from ``generator`` as the reference draws it, as an int64 CPU tensor [1] (an int would
        make torch.compile recompile for every new seed)."""
        return torch.ops.helo_fast.seeded_dropout_fwd(x, _rng.draw_seed_tensor(generator), float(p))

    register("seeded_dropout", "cpp", seeded_dropout_cpp)

if kernels.TRITON_ERROR is None:
    from ..kernels import seeded_dropout as triton_seeded_dropout

    @torch.library.custom_op("helo_fast::triton_seeded_dropout_fwd", mutates_args=())
    def triton_seeded_dropout_fwd(x: Tensor, seed: Tensor, p: float) -> Tensor:
        """-> x * 1/(1-p) where kept, 0 where dropped (shape of x); seed: int64 [1]. Its own backward."""
        return triton_seeded_dropout.seeded_dropout_fwd(x, p, seed)

    @triton_seeded_dropout_fwd.register_fake
    def _(x, seed, p):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    register_seeded_dropout_autograd("helo_fast::triton_seeded_dropout_fwd", triton_seeded_dropout_fwd)

    def seeded_dropout_triton(x, p, *, generator):
        """Validated x (any shape), 0 < p < 1 -> the dropout of x, seed drawn from ``generator`` as the reference."""
        return triton_seeded_dropout_fwd(x, _rng.draw_seed_tensor(generator), float(p))

    register("seeded_dropout", "triton", seeded_dropout_triton)
