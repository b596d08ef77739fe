"""The C++ OT ops (torch.ops.helo_fast.*): fake kernels and autograd, registered for functional."""
from __future__ import annotations

import torch

from .. import _ext
from . import register

if _ext.has_cpp():

    @torch.library.register_fake("helo_fast::sinkhorn_fwd")
    def _sinkhorn_fwd_fake(cost, a, b, eps, n_iters):
        return torch.empty_like(cost)

    def sinkhorn_cpp(cost, a, b, *, eps, n_iters, grad):
        """cost [B, n, m], a [B, n], b [B, m] (validated) -> plan [B, n, m]; forward only so far."""
        if grad != "none" and (cost.requires_grad or a.requires_grad or b.requires_grad):
            raise NotImplementedError("the cpp sinkhorn backward is not built yet; use grad='none' or backend='reference'")
        return torch.ops.helo_fast.sinkhorn_fwd(cost.detach(), a.detach(), b.detach(), float(eps), int(n_iters))

    register("sinkhorn", "cpp", sinkhorn_cpp)
