"""gromov_wasserstein: the C++ op (torch.ops.helo_fast.gromov_wasserstein_fwd/_bwd, schema in csrc/schema.cpp) and the
Triton op (helo_fast::triton_gromov_wasserstein_fwd/_bwd, kernels/gromov_wasserstein.py, which also saves each outer
iteration's input plan): fake kernels, autograd, autocast rules, and the entry points registered for
``functional.gromov_wasserstein`` (inputs already validated, marginals filled in). A backward under
create_graph=True (second derivatives) differentiates the reference instead (``_reference_vjp``).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _ext, kernels
from .._autocast import register_autocast_rule
from .._numerics import compute_dtype
from . import differentiable_backward_wanted, reference_vjp, register, wants_grad
from .ot_common import history_dtype, prepare_ot_inputs


def _reference_vjp(grad_plan, cs, ct, a, b, eps, outer_iters, inner_iters, solver):
    """(d_cs, d_ct, d_a, d_b) of the reference as a differentiable graph (the backward under create_graph=True)."""
    return reference_vjp(
        "gromov_wasserstein",
        grad_plan,
        (cs, ct, a, b),
        lambda ref: ref(
            cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, grad="unrolled"
        ),
    )


if _ext.has_cpp():

    @torch.library.register_fake("helo_fast::gromov_wasserstein_fwd")
    def _gromov_wasserstein_fwd_fake(cs, ct, a, b, eps, outer_iters, inner_iters, solver, save_history):
        batch, n, m = cs.shape[0], cs.shape[1], ct.shape[1]
        outer, inner = (outer_iters, inner_iters) if save_history else (0, 0)
        dt = history_dtype(cs.dtype)
        return (
            cs.new_empty((batch, n, m)),
            cs.new_empty((batch, outer, n, m), dtype=dt),
            cs.new_empty((batch, outer, inner, n), dtype=dt),
            cs.new_empty((batch, outer, inner, m), dtype=dt),
        )

    @torch.library.register_fake("helo_fast::gromov_wasserstein_bwd")
    def _gromov_wasserstein_bwd_fake(grad_plan, cs, ct, a, b, plans, hist_n, hist_m, eps, solver):
        return torch.empty_like(cs), torch.empty_like(ct), torch.empty_like(a), torch.empty_like(b)

    def _gromov_wasserstein_setup_context(ctx, inputs, output):
        cs, ct, a, b, eps, outer, inner, solver, _save = inputs
        _plan, plans, hist_n, hist_m = output
        ctx.save_for_backward(cs, ct, a, b, plans, hist_n, hist_m)
        ctx.eps, ctx.solver, ctx.iters = eps, solver, (outer, inner)
        ctx.mark_non_differentiable(plans, hist_n, hist_m)

    def _gromov_wasserstein_backward(ctx, grad_plan, _g_plans, _g_hist_n, _g_hist_m):
        cs, ct, a, b, plans, hist_n, hist_m = ctx.saved_tensors
        if differentiable_backward_wanted(grad_plan, cs, ct, a, b):
            grads = _reference_vjp(grad_plan, cs, ct, a, b, ctx.eps, *ctx.iters, ctx.solver)
            return (*grads, None, None, None, None, None)
        grads = torch.ops.helo_fast.gromov_wasserstein_bwd(
            grad_plan.contiguous(), cs, ct, a, b, plans, hist_n, hist_m, ctx.eps, ctx.solver
        )
        return (*grads, None, None, None, None, None)

    torch.library.register_autograd(
        "helo_fast::gromov_wasserstein_fwd",
        _gromov_wasserstein_backward,
        setup_context=_gromov_wasserstein_setup_context,
    )

    def gromov_wasserstein_cpp(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver, grad):
        """HeLo's GW step. cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] -> plan [B, n, m]."""
        (cs, ct, a, b), dtype = prepare_ot_inputs(grad, cs, ct, a, b)
        save = grad != "none" and wants_grad(cs, ct, a, b)
        plan, _, _, _ = torch.ops.helo_fast.gromov_wasserstein_fwd(
            cs, ct, a, b, float(eps), int(outer_iters), int(inner_iters), str(solver), save
        )
        return plan.to(dtype)

    # Under autocast every float argument is cast to float32 (helo_fast._autocast's OT rule).
    register_autocast_rule("helo_fast::gromov_wasserstein_fwd")
    register_autocast_rule("helo_fast::gromov_wasserstein_bwd")
    register("gromov_wasserstein", "cpp", gromov_wasserstein_cpp)

if kernels.TRITON_ERROR is None:
    from ..kernels import gromov_wasserstein as triton_gromov_wasserstein

    @torch.library.custom_op("helo_fast::triton_gromov_wasserstein_fwd", mutates_args=())
    def triton_gromov_wasserstein_fwd(
        cs: Tensor,
        ct: Tensor,
        a: Tensor,
        b: Tensor,
        eps: float,
        outer_iters: int,
        inner_iters: int,
        solver: str,
        save: bool,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], 4 potential histories [B, outer, inner, n|m], input plans [B, outer, n, m]).

        The histories are empty unless ``save``.
        """
        return triton_gromov_wasserstein.gromov_wasserstein_fwd(
            cs, ct, a, b, eps, outer_iters, inner_iters, solver, save
        )

    @triton_gromov_wasserstein_fwd.register_fake
    def _(cs, ct, a, b, eps, outer_iters, inner_iters, solver, save):
        batch, n, m = cs.shape[0], cs.shape[1], ct.shape[1]
        hists = triton_gromov_wasserstein.history_buffers(
            batch, n, m, outer_iters, inner_iters, solver, save, compute_dtype(cs.dtype), cs.device
        )
        return (cs.new_empty((batch, n, m)), *hists)

    @torch.library.custom_op("helo_fast::triton_gromov_wasserstein_bwd", mutates_args=())
    def triton_gromov_wasserstein_bwd(
        grad_plan: Tensor,
        cs: Tensor,
        ct: Tensor,
        a: Tensor,
        b: Tensor,
        h0: Tensor,
        h1: Tensor,
        h2: Tensor,
        h3: Tensor,
        plans: Tensor,
        eps: float,
        outer_iters: int,
        inner_iters: int,
        solver: str,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (d_cs [B, n, n], d_ct [B, m, m], d_a [B, n], d_b [B, m]) of the unrolled iterations."""
        return triton_gromov_wasserstein.gromov_wasserstein_bwd(
            grad_plan, cs, ct, a, b, h0, h1, h2, h3, plans, eps, outer_iters, inner_iters, solver
        )

    @triton_gromov_wasserstein_bwd.register_fake
    def _(grad_plan, cs, ct, a, b, h0, h1, h2, h3, plans, eps, outer_iters, inner_iters, solver):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (cs, ct, a, b))

    def _triton_setup_context(ctx, inputs, output):
        cs, ct, a, b, eps, outer_iters, inner_iters, solver, save = inputs
        ctx.save_for_backward(cs, ct, a, b, *output[1:])
        ctx.args = (eps, outer_iters, inner_iters, solver)
        ctx.save = save

    def _triton_backward(ctx, grad_plan, *_grad_hists):
        if not ctx.save:
            raise RuntimeError("triton gromov_wasserstein was run with save=False; it has no backward")
        cs, ct, a, b, *hists = ctx.saved_tensors
        if differentiable_backward_wanted(grad_plan, cs, ct, a, b):
            return (*_reference_vjp(grad_plan, cs, ct, a, b, *ctx.args), None, None, None, None, None)
        return (
            *triton_gromov_wasserstein_bwd(grad_plan, cs, ct, a, b, *hists, *ctx.args),
            None,
            None,
            None,
            None,
            None,
        )

    triton_gromov_wasserstein_fwd.register_autograd(_triton_backward, setup_context=_triton_setup_context)

    def gromov_wasserstein_triton(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver, grad):
        """cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] (validated) -> plan [B, n, m]."""
        if grad == "none":
            cs, ct, a, b = cs.detach(), ct.detach(), a.detach(), b.detach()
        save = grad != "none" and wants_grad(cs, ct, a, b)
        return triton_gromov_wasserstein_fwd(
            cs, ct, a, b, float(eps), int(outer_iters), int(inner_iters), solver, save
        )[0]

    register_autocast_rule("helo_fast::triton_gromov_wasserstein_fwd")
    register_autocast_rule("helo_fast::triton_gromov_wasserstein_bwd")
    register("gromov_wasserstein", "triton", gromov_wasserstein_triton)
