"""ipot: the C++ op (torch.ops.helo_fast.ipot_fwd/_bwd, schema in csrc/schema.cpp) and the Triton op
(helo_fast::triton_ipot_fwd/_bwd, kernels/ipot.py): fake kernels, autograd, autocast rules, and the entry points
registered for ``functional.ipot`` (inputs already validated, marginals filled in).
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
    torch.library.register_fake("helo_fast::ipot_fwd")(ot_fwd_fake)
    torch.library.register_fake("helo_fast::ipot_bwd")(ot_bwd_fake)
    torch.library.register_autograd(
        "helo_fast::ipot_fwd",
        make_ot_backward(torch.ops.helo_fast.ipot_bwd, "ipot", "beta"),
        setup_context=ot_setup_context,
    )

    def ipot_cpp(cost, a, b, *, beta, n_iters, grad):
        """Log-domain IPOT. cost [B, n, m], a [B, n], b [B, m] -> plan [B, n, m]."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad != "none" and wants_grad(cost, a, b)
        plan, _, _ = torch.ops.helo_fast.ipot_fwd(cost, a, b, float(beta), int(n_iters), save)
        return plan.to(dtype)

    # Under autocast every float argument is cast to float32 (helo_fast._autocast's OT rule).
    register_autocast_rule("helo_fast::ipot_fwd")
    register_autocast_rule("helo_fast::ipot_bwd")
    register("ipot", "cpp", ipot_cpp)

if kernels.TRITON_ERROR is None:
    from ..kernels import ipot as triton_ipot

    @torch.library.custom_op("helo_fast::triton_ipot_fwd", mutates_args=())
    def triton_ipot_fwd(
        cost: Tensor, a: Tensor, b: Tensor, beta: float, n_iters: int, save: bool
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], log delta, log sigma histories and their running sums [B, K, n|m])."""
        return triton_ipot.ipot_fwd(cost, a, b, beta, n_iters, save)

    @triton_ipot_fwd.register_fake
    def _(cost, a, b, beta, n_iters, save):
        k = n_iters if save else 0
        dtype = compute_dtype(cost.dtype)
        batch, n, m = cost.shape
        hists = tuple(
            cost.new_empty((batch, k, size), dtype=dt)
            for size, dt in ((n, dtype), (m, dtype), (n, torch.float64), (m, torch.float64))
        )
        return (torch.empty_like(cost, memory_format=torch.contiguous_format), *hists)

    @torch.library.custom_op("helo_fast::triton_ipot_bwd", mutates_args=())
    def triton_ipot_bwd(
        grad_plan: Tensor,
        cost: Tensor,
        a: Tensor,
        b: Tensor,
        d_hist: Tensor,
        s_hist: Tensor,
        cd_hist: Tensor,
        cs_hist: Tensor,
        beta: float,
        n_iters: int,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """-> (d_cost [B, n, m], d_a [B, n], d_b [B, m]) of the unrolled iterations."""
        return triton_ipot.ipot_bwd(grad_plan, cost, a, b, d_hist, s_hist, cd_hist, cs_hist, beta, n_iters)

    @triton_ipot_bwd.register_fake
    def _(grad_plan, cost, a, b, d_hist, s_hist, cd_hist, cs_hist, beta, n_iters):
        return (torch.empty_like(cost, memory_format=torch.contiguous_format), torch.empty_like(a), torch.empty_like(b))

    def _ipot_setup(ctx, inputs, output):
        cost, a, b, beta, n_iters, save = inputs
        ctx.save_for_backward(cost, a, b, *output[1:])
        ctx.beta, ctx.n_iters, ctx.save = beta, n_iters, save

    def _ipot_backward(ctx, grad_plan, *_grad_hists):
        if not ctx.save:
            raise RuntimeError("triton ipot was run with save=False; it has no backward (use grad='unrolled')")
        cost, a, b, *hists = ctx.saved_tensors
        if differentiable_backward_wanted(grad_plan, cost, a, b):
            return (*ot_reference_vjp("ipot", grad_plan, cost, a, b, ctx.n_iters, beta=ctx.beta), None, None, None)
        d_cost, d_a, d_b = triton_ipot_bwd(grad_plan, cost, a, b, *hists, ctx.beta, ctx.n_iters)
        return d_cost, d_a, d_b, None, None, None

    triton_ipot_fwd.register_autograd(_ipot_backward, setup_context=_ipot_setup)

    def ipot_triton(cost, a, b, *, beta, n_iters, grad):
        """cost [B, n, m], a [B, n], b [B, m] (validated) -> plan [B, n, m]."""
        if grad == "none":
            cost, a, b = cost.detach(), a.detach(), b.detach()
        save = grad != "none" and wants_grad(cost, a, b)
        return triton_ipot_fwd(cost, a, b, float(beta), int(n_iters), save)[0]

    register_autocast_rule("helo_fast::triton_ipot_fwd")
    register_autocast_rule("helo_fast::triton_ipot_bwd")
    register("ipot", "triton", ipot_triton)
