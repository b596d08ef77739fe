"""The OT ops with a tolerance (``tol=``) on the C++ backend: the ops ``helo_fast::sinkhorn_fwd_tol`` /
``ipot_fwd_tol`` (csrc/cpu/ot_converged.cpp; each problem stops at its own count), their fake kernels, and the entry
points registered as "<op>_converged" for ``functional`` (inputs validated, marginals filled in).

grad="unrolled": the forward saves the per-iteration potentials as the fixed-count ops do; the backward runs the
fixed-count ``*_bwd`` op once per distinct iteration count, on the problems that stopped there and their history
prefix, so each problem gets the exact gradient of its own unrolled iterations. (A second derivative is refused:
``once_differentiable``.) gromov_wasserstein runs the shared outer loop (``_gw_converged``) on these inner solves.
The ops run on CPU tensors (csrc/cpu/ot_converged.cpp) and CUDA tensors (csrc/cuda/sinkhorn.cu, ipot.cu, where the
extension was built with CUDA). The Triton ops with a tolerance are ``ot_converged_triton``'s; both backends share
``backward_by_count`` and ``make_gromov_wasserstein_converged``, and ``tol_unavailable_reason`` says where each runs.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import _ext
from .._gw_converged import solve_gromov_wasserstein
from . import has_impl, register, wants_grad
from .ot_common import prepare_ot_inputs


def _tol_fwd_fake(cost, a, b, reg, n_iters, tol, save_history, *, potentials):
    batch, n, m = cost.shape
    hist = n_iters if save_history else 0
    dtype = torch.float64 if save_history and cost.dtype == torch.float32 else cost.dtype
    work = cost.new_empty((0,), dtype=dtype)
    out = [cost.new_empty(cost.shape)]
    if potentials:
        out += [work.new_empty((batch, n)), work.new_empty((batch, m))]
    out += [
        work.new_empty((batch, hist, n)),
        work.new_empty((batch, hist, m)),
        cost.new_empty((batch,), dtype=torch.int64),
        work.new_empty((batch,)),
    ]
    return tuple(out)


def tol_unavailable_reason(op: str, backend: str, device: torch.device):
    """None when ``backend`` (already available for ``op`` on ``device``) runs ``op`` with ``tol``, else what is
    missing."""
    if not has_impl(f"{op}_converged", backend):
        return f"the {backend} backend has no tol solver for {op}"
    if backend == "cpp" and device.type != "cpu":
        ops = ("sinkhorn_fwd_tol", "ipot_fwd_tol") if op == "gromov_wasserstein" else (f"{op}_fwd_tol",)
        key = device.type.upper()
        if not all(torch._C._dispatch_has_kernel_for_dispatch_key(f"helo_fast::{name}", key) for name in ops):
            return f"helo_fast._C has no {key} kernel of {' / '.join(ops)} (rebuild the extension)"
    return None


def backward_by_count(grad_plan, cost, a, b, hists, iterations, bwd):
    """(d_cost, d_a, d_b) of plans whose problems stopped at their own ``iterations`` [B]: ``bwd(grad_plan, cost, a,
    b, hists, count)`` (a fixed-count backward, histories cut to their first ``count`` rows) once per distinct
    count, on the problems that stopped there. Shared by the C++ and Triton ops with a tolerance."""
    grads = [torch.zeros_like(cost), torch.zeros_like(a), torch.zeros_like(b)]
    grad_plan = grad_plan.to(cost.dtype)
    for count in torch.unique(iterations).tolist():
        idx = (iterations == count).nonzero().squeeze(1)
        parts = bwd(
            grad_plan.index_select(0, idx).contiguous(),
            cost.index_select(0, idx),
            a.index_select(0, idx),
            b.index_select(0, idx),
            [h.index_select(0, idx)[:, :count].contiguous() for h in hists],
            count,
        )
        grads = [
            g if part is None else g.index_copy(0, idx, part.to(g.dtype))  # None: no gradient wanted
            for g, part in zip(grads, parts)
        ]
    return tuple(grads)


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
        grads = backward_by_count(
            grad_plan,
            cost,
            a,
            b,
            (hist_n, hist_m),
            iterations,
            lambda g, c, a_, b_, h, _count: ctx.bwd_op(g, c, a_, b_, *h, ctx.reg),
        )
        return (*grads, None, None, None, None, None, None)


def make_gromov_wasserstein_converged(sinkhorn_converged, ipot_converged):
    """The gromov_wasserstein entry point with a tolerance over a backend's two inner solvers (registered as
    "sinkhorn_converged" / "ipot_converged"): the shared outer loop of ``_gw_converged``."""

    def gromov_wasserstein_converged(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver, tol, grad):
        """cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] -> (plan, outer iterations, inner iterations, plan
        change, inner violation), each problem's outer and inner loops stopping on their own."""
        (cs, ct, a, b), dtype = prepare_ot_inputs(grad, cs, ct, a, b)

        def inner_solve(cost, a_, b_):
            if solver == "ipot":
                return ipot_converged(cost, a_, b_, beta=eps, n_iters=inner_iters, tol=tol, grad=grad)
            plan, _f, _g, iterations, violation = sinkhorn_converged(
                cost, a_, b_, eps=eps, n_iters=inner_iters, tol=tol, grad=grad
            )
            return plan, iterations, violation

        plan, *counts = solve_gromov_wasserstein(
            cs, ct, a, b, outer_iters=outer_iters, tol=tol, inner_solve=inner_solve
        )
        return (plan.to(dtype), *counts)

    return gromov_wasserstein_converged


if _ext.has_cpp():
    torch.library.register_fake("helo_fast::sinkhorn_fwd_tol")(
        lambda cost, a, b, eps, n_iters, tol, save: _tol_fwd_fake(cost, a, b, eps, n_iters, tol, save, potentials=True)
    )
    torch.library.register_fake("helo_fast::ipot_fwd_tol")(
        lambda cost, a, b, beta, n_iters, tol, save: _tol_fwd_fake(
            cost, a, b, beta, n_iters, tol, save, potentials=False
        )
    )

    def sinkhorn_converged_cpp(cost, a, b, *, eps, n_iters, tol, grad):
        """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], f [B, n], g [B, m], iterations [B],
        violation [B]); f, g the final potentials (P = exp((f + g - C) / eps))."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad == "unrolled" and wants_grad(cost, a, b)
        with torch.no_grad():
            plan, f, g, f_hist, g_hist, iterations, violation = torch.ops.helo_fast.sinkhorn_fwd_tol(
                cost.detach(), a.detach(), b.detach(), float(eps), int(n_iters), float(tol), save
            )
        if save:
            plan = _UnrolledByCount.apply(
                cost, a, b, float(eps), plan, f_hist, g_hist, iterations, torch.ops.helo_fast.sinkhorn_bwd
            )
        return plan.to(dtype), f, g, iterations, violation

    def ipot_converged_cpp(cost, a, b, *, beta, n_iters, tol, grad):
        """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], iterations [B], violation [B])."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad == "unrolled" and wants_grad(cost, a, b)
        with torch.no_grad():
            plan, d_hist, s_hist, iterations, violation = torch.ops.helo_fast.ipot_fwd_tol(
                cost.detach(), a.detach(), b.detach(), float(beta), int(n_iters), float(tol), save
            )
        if save:
            plan = _UnrolledByCount.apply(
                cost, a, b, float(beta), plan.to(cost.dtype), d_hist, s_hist, iterations, torch.ops.helo_fast.ipot_bwd
            )
        return plan.to(dtype), iterations, violation

    gromov_wasserstein_converged_cpp = make_gromov_wasserstein_converged(sinkhorn_converged_cpp, ipot_converged_cpp)

    register("sinkhorn_converged", "cpp", sinkhorn_converged_cpp)
    register("ipot_converged", "cpp", ipot_converged_cpp)
    register("gromov_wasserstein_converged", "cpp", gromov_wasserstein_converged_cpp)
