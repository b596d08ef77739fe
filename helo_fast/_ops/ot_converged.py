"""The OT ops with a tolerance (``tol=``) on the C++ backend: the ops ``helo_fast::sinkhorn_fwd_tol`` /
``ipot_fwd_tol`` (csrc/cpu/ot_converged.cpp; each problem stops at its own count), their fake kernels, and the entry
points registered as "<op>_converged" for ``functional`` (inputs validated, marginals filled in).

grad="unrolled": the forward saves the per-iteration potentials as the fixed-count ops do; the backward runs the
fixed-count ``*_bwd`` op once per distinct iteration count, on the problems that stopped there and their history
prefix, so each problem gets the exact gradient of its own unrolled iterations. (A second derivative is refused:
``once_differentiable``.) gromov_wasserstein runs the shared outer loop (``_gw_converged``) on these inner solves.
CPU tensors only (no CUDA kernel with a tolerance yet: ``functional`` raises a ValueError naming it).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import _ext
from .._gw_converged import solve_gromov_wasserstein
from . import register, wants_grad
from .ot_common import prepare_ot_inputs


def _tol_fwd_fake(cost, a, b, reg, n_iters, tol, save_history, *, potentials):
    batch, n, m = cost.shape
    hist = n_iters if save_history else 0
    dtype = torch.float64 if save_history and cost.dtype == torch.float32 else cost.dtype
    work = cost.new_empty((0,), dtype=dtype)
    out = [cost.new_empty(cost.shape)]
    if potentials:
        out += [work.new_empty((batch, n)), work.new_empty((batch, m))]
    out += [work.new_empty((batch, hist, n)), work.new_empty((batch, hist, m)),
            cost.new_empty((batch,), dtype=torch.int64), work.new_empty((batch,))]
    return tuple(out)


class _UnrolledByCount(torch.autograd.Function):
    """plan of a tol solve with save_history; backward: the fixed-count bwd op per distinct iteration count."""

    @staticmethod
    def forward(ctx, cost, a, b, reg, plan, hist_n, hist_m, iterations, bwd_op):
        ctx.save_for_backward(cost, a, b, hist_n, hist_m, iterations)
        ctx.reg, ctx.bwd_op = reg, bwd_op
        return plan

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_plan):
        cost, a, b, hist_n, hist_m, iterations = ctx.saved_tensors
        grad_cost, grad_a, grad_b = torch.zeros_like(cost), torch.zeros_like(a), torch.zeros_like(b)
        grad_plan = grad_plan.to(cost.dtype)
        for count in torch.unique(iterations).tolist():
            idx = (iterations == count).nonzero().squeeze(1)
            parts = ctx.bwd_op(grad_plan.index_select(0, idx).contiguous(), cost.index_select(0, idx),
                               a.index_select(0, idx), b.index_select(0, idx),
                               hist_n.index_select(0, idx)[:, :count].contiguous(),
                               hist_m.index_select(0, idx)[:, :count].contiguous(), ctx.reg)
            for out, part in zip((grad_cost, grad_a, grad_b), parts):
                out.index_copy_(0, idx, part.to(out.dtype))
        return grad_cost, grad_a, grad_b, None, None, None, None, None, None


if _ext.has_cpp():
    torch.library.register_fake("helo_fast::sinkhorn_fwd_tol")(
        lambda cost, a, b, eps, n_iters, tol, save: _tol_fwd_fake(cost, a, b, eps, n_iters, tol, save,
                                                                  potentials=True))
    torch.library.register_fake("helo_fast::ipot_fwd_tol")(
        lambda cost, a, b, beta, n_iters, tol, save: _tol_fwd_fake(cost, a, b, beta, n_iters, tol, save,
                                                                   potentials=False))

    def sinkhorn_converged_cpp(cost, a, b, *, eps, n_iters, tol, grad):
        """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], f [B, n], g [B, m], iterations [B],
        violation [B]); f, g the final potentials (P = exp((f + g - C) / eps))."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad == "unrolled" and wants_grad(cost, a, b)
        with torch.no_grad():
            plan, f, g, f_hist, g_hist, iterations, violation = torch.ops.helo_fast.sinkhorn_fwd_tol(
                cost.detach(), a.detach(), b.detach(), float(eps), int(n_iters), float(tol), save)
        if save:
            plan = _UnrolledByCount.apply(cost, a, b, float(eps), plan, f_hist, g_hist, iterations,
                                          torch.ops.helo_fast.sinkhorn_bwd)
        return plan.to(dtype), f, g, iterations, violation

    def ipot_converged_cpp(cost, a, b, *, beta, n_iters, tol, grad):
        """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], iterations [B], violation [B])."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad == "unrolled" and wants_grad(cost, a, b)
        with torch.no_grad():
            plan, d_hist, s_hist, iterations, violation = torch.ops.helo_fast.ipot_fwd_tol(
                cost.detach(), a.detach(), b.detach(), float(beta), int(n_iters), float(tol), save)
        if save:
            plan = _UnrolledByCount.apply(cost, a, b, float(beta), plan.to(cost.dtype), d_hist, s_hist, iterations,
                                          torch.ops.helo_fast.ipot_bwd)
        return plan.to(dtype), iterations, violation

    def gromov_wasserstein_converged_cpp(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver, tol, grad):
        """cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] -> (plan, outer iterations, inner iterations, plan
        change, inner violation), each problem's outer and inner loops stopping on their own."""
        (cs, ct, a, b), dtype = prepare_ot_inputs(grad, cs, ct, a, b)

        def inner_solve(cost, a_, b_):
            if solver == "ipot":
                return ipot_converged_cpp(cost, a_, b_, beta=eps, n_iters=inner_iters, tol=tol, grad=grad)
            plan, _f, _g, iterations, violation = sinkhorn_converged_cpp(cost, a_, b_, eps=eps, n_iters=inner_iters,
                                                                         tol=tol, grad=grad)
            return plan, iterations, violation

        plan, *counts = solve_gromov_wasserstein(cs, ct, a, b, outer_iters=outer_iters, tol=tol,
                                                 inner_solve=inner_solve)
        return (plan.to(dtype), *counts)

    register("sinkhorn_converged", "cpp", sinkhorn_converged_cpp)
    register("ipot_converged", "cpp", ipot_converged_cpp)
    register("gromov_wasserstein_converged", "cpp", gromov_wasserstein_converged_cpp)
