"""The C++ seeded dropout (torch.ops.helo_fast.seeded_dropout_fwd): fake kernel, autograd, registration.

The mask is a function of (seed, element index), so the backward is the same op applied to the gradient with
the same seed: nothing but the seed is saved.
"""
from __future__ import annotations

import torch

from .. import _ext, _rng
from . import register, register_seeded_dropout_autograd

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
