"""sinkhorn: the C++ op (torch.ops.helo_fast.sinkhorn_fwd/_bwd, schema in csrc/schema.cpp) and the Triton op
(helo_fast::triton_sinkhorn_fwd/_bwd, kernels/sinkhorn.py): fake kernels, autograd, autocast rules, and the entry points
registered for ``functional.sinkhorn`` (inputs already validated, marginals filled in).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _ext, kernels
from .._autocast import register_autocast_rule
from .._numerics import compute_dtype
from . import differentiable_backward_wanted, register, wants_grad
from .ot_common import make_ot_backward, ot_bwd_fake, ot_fwd_fake, ot_reference_vjp, ot_setup_context, prepare_ot_inputs

if _ext.has_cpp():
    torch.library.register_fake("helo_fast::sinkhorn_fwd")(ot_fwd_fake)
    torch.library.register_fake("helo_fast::sinkhorn_bwd")(ot_bwd_fake)
    torch.library.register_autograd(
        "helo_fast::sinkhorn_fwd",
        make_ot_backward(torch.ops.helo_fast.sinkhorn_bwd, "sinkhorn", "eps"),
        setup_context=ot_setup_context,
    )

    def sinkhorn_cpp(cost, a, b, *, eps, n_iters, grad):
        """Log-domain Sinkhorn. cost [B, n, m], a [B, n], b [B, m] -> plan [B, n, m]."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad != "none" and wants_grad(cost, a, b)
        plan, _, _ = torch.ops.helo_fast.sinkhorn_fwd(cost, a, b, float(eps), int(n_iters), save)
        return plan.to(dtype)

    # Under autocast every float argument is cast to float32 (helo_fast._autocast's OT rule).
    register_autocast_rule("helo_fast::sinkhorn_fwd")
    register_autocast_rule("helo_fast::sinkhorn_bwd")
    register("sinkhorn", "cpp", sinkhorn_cpp)

if kernels.TRITON_ERROR is None:
    from ..kernels import sinkhorn as triton_sinkhorn

    @torch.library.custom_op("helo_fast::triton_sinkhorn_fwd", mutates_args=())
    def triton_sinkhorn_fwd(
        cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int, save: bool
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], f history [B, K, n], g history [B, K, m]); K = n_iters if save else 0."""
        return triton_sinkhorn.sinkhorn_fwd(cost, a, b, eps, n_iters, save)

    @triton_sinkhorn_fwd.register_fake
    def _(cost, a, b, eps, n_iters, save):
        k = n_iters if save else 0
        dtype = compute_dtype(cost.dtype)
        batch, n, m = cost.shape
        return (
            torch.empty_like(cost, memory_format=torch.contiguous_format),
            cost.new_empty((batch, k, n), dtype=dtype),
            cost.new_empty((batch, k, m), dtype=dtype),
        )

    @torch.library.custom_op("helo_fast::triton_sinkhorn_bwd", mutates_args=())
    def triton_sinkhorn_bwd(
        grad_plan: Tensor, cost: Tensor, a: Tensor, b: Tensor, f_hist: Tensor, g_hist: Tensor, eps: float, n_iters: int
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """-> (d_cost [B, n, m], d_a [B, n], d_b [B, m]) of the unrolled iterations."""
        return triton_sinkhorn.sinkhorn_bwd(grad_plan, cost, a, b, f_hist, g_hist, eps, n_iters)

    @triton_sinkhorn_bwd.register_fake
    def _(grad_plan, cost, a, b, f_hist, g_hist, eps, n_iters):
        return (torch.empty_like(cost, memory_format=torch.contiguous_format), torch.empty_like(a), torch.empty_like(b))

    def _sinkhorn_setup(ctx, inputs, output):
        cost, a, b, eps, n_iters, save = inputs
        ctx.save_for_backward(cost, a, b, output[1], output[2])
        ctx.eps, ctx.n_iters, ctx.save = eps, n_iters, save

    def _sinkhorn_backward(ctx, grad_plan, _grad_f, _grad_g):
        if not ctx.save:
            raise RuntimeError("triton sinkhorn was run with save=False; it has no backward (use grad='unrolled')")
        cost, a, b, f_hist, g_hist = ctx.saved_tensors
        if differentiable_backward_wanted(grad_plan, cost, a, b):
            return (*ot_reference_vjp("sinkhorn", grad_plan, cost, a, b, ctx.n_iters, eps=ctx.eps), None, None, None)
        d_cost, d_a, d_b = triton_sinkhorn_bwd(grad_plan, cost, a, b, f_hist, g_hist, ctx.eps, ctx.n_iters)
        return d_cost, d_a, d_b, None, None, None

    triton_sinkhorn_fwd.register_autograd(_sinkhorn_backward, setup_context=_sinkhorn_setup)

    def sinkhorn_triton(cost, a, b, *, eps, n_iters, grad):
        """cost [B, n, m], a [B, n], b [B, m] (validated) -> plan [B, n, m]."""
        if grad == "none":
            cost, a, b = cost.detach(), a.detach(), b.detach()
        save = grad != "none" and wants_grad(cost, a, b)
        return triton_sinkhorn_fwd(cost, a, b, float(eps), int(n_iters), save)[0]

    register_autocast_rule("helo_fast::triton_sinkhorn_fwd")
    register_autocast_rule("helo_fast::triton_sinkhorn_bwd")
    register("sinkhorn", "triton", sinkhorn_triton)
