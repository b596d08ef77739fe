"""The OT ops with a tolerance (``tol=``) on the Triton backend: the custom ops ``helo_fast::triton_sinkhorn_fwd_tol``
/ ``triton_ipot_fwd_tol`` (kernels/sinkhorn.py, kernels/ipot.py: one program per problem, each stopping at its own
count), their fake kernels and autograd, and the entry points registered as "<op>_converged" for ``functional``
(inputs validated, marginals filled in).

grad="unrolled": the forward saves the per-iteration potentials as the fixed-count Triton ops do; the backward runs
the fixed-count Triton backward once per distinct iteration count (``ot_converged.backward_by_count``), so each
problem gets the exact gradient of its own unrolled iterations. Under create_graph=True each count's part is the
reference's differentiable vector-Jacobian product at that count instead. gromov_wasserstein runs the shared outer
loop (``_gw_converged``) on these inner solves.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import kernels
from .._autocast import register_autocast_rule
from .._numerics import compute_dtype
from . import differentiable_backward_wanted, register, wants_grad
from .ot_common import ot_reference_vjp, prepare_ot_inputs
from .ot_converged import backward_by_count, make_gromov_wasserstein_converged

if kernels.TRITON_ERROR is None:
    from ..kernels import ipot as triton_ipot
    from ..kernels import sinkhorn as triton_sinkhorn
    from .ipot import triton_ipot_bwd
    from .sinkhorn import triton_sinkhorn_bwd

    def _tol_fwd_fake(cost, n_iters, save, hist_dtypes, potentials):
        batch, n, m = cost.shape
        dtype = compute_dtype(cost.dtype)
        k = n_iters if save else 0
        out = [torch.empty_like(cost, memory_format=torch.contiguous_format)]
        if potentials:
            out += [cost.new_empty((batch, n), dtype=dtype), cost.new_empty((batch, m), dtype=dtype)]
        out += [cost.new_empty((batch, k, size), dtype=dt) for size, dt in zip((n, m, n, m), hist_dtypes)]
        return (*out, cost.new_empty((batch,), dtype=torch.int64), cost.new_empty((batch,), dtype=dtype))

    def _backward(op, ctx, grad_plan, fixed_count_bwd):
        """The unrolled backward of a tol op: ``fixed_count_bwd(grad, cost, a, b, hists, count)`` per count."""
        if not ctx.save:
            raise RuntimeError(
                f"triton {op} with tol was run with save=False; it has no backward (use grad='unrolled')"
            )
        cost, a, b, iterations, *hists = ctx.saved_tensors
        if differentiable_backward_wanted(grad_plan, cost, a, b):

            def bwd(g, c, a_, b_, _hists, count):
                return ot_reference_vjp(op, g, c, a_, b_, count, **{ctx.reg_name: ctx.reg})
        else:
            bwd = fixed_count_bwd
        return backward_by_count(grad_plan, cost, a, b, hists, iterations, bwd)

    # ---- sinkhorn
    @torch.library.custom_op("helo_fast::triton_sinkhorn_fwd_tol", mutates_args=())
    def triton_sinkhorn_fwd_tol(
        cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int, tol: float, save: bool
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], f [B, n], g [B, m], f history [B, K, n], g history [B, K, m], iterations [B],
        violation [B]); K = n_iters if save else 0, each problem's first ``iterations`` rows written."""
        return triton_sinkhorn.sinkhorn_fwd_tol(cost, a, b, eps, n_iters, tol, save)

    @triton_sinkhorn_fwd_tol.register_fake
    def _(cost, a, b, eps, n_iters, tol, save):
        dtype = compute_dtype(cost.dtype)
        return _tol_fwd_fake(cost, n_iters, save, (dtype, dtype), potentials=True)

    def _sinkhorn_setup(ctx, inputs, output):
        cost, a, b, eps, _n_iters, _tol, save = inputs
        _plan, _f, _g, f_hist, g_hist, iterations, _violation = output
        ctx.save_for_backward(cost, a, b, iterations, f_hist, g_hist)
        ctx.mark_non_differentiable(*output[1:])
        ctx.reg_name, ctx.reg, ctx.save = "eps", eps, save

    def _sinkhorn_backward(ctx, grad_plan, *_unused):
        grads = _backward(
            "sinkhorn",
            ctx,
            grad_plan,
            lambda g, c, a_, b_, hists, count: triton_sinkhorn_bwd(g, c, a_, b_, *hists, ctx.reg, count),
        )
        return (*grads, None, None, None, None)

    # ---- ipot
    @torch.library.custom_op("helo_fast::triton_ipot_fwd_tol", mutates_args=())
    def triton_ipot_fwd_tol(
        cost: Tensor, a: Tensor, b: Tensor, beta: float, n_iters: int, tol: float, save: bool
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], log delta, log sigma histories and their running sums [B, K, n|m], iterations [B],
        violation [B]); K = n_iters if save else 0, each problem's first ``iterations`` rows written."""
        return triton_ipot.ipot_fwd_tol(cost, a, b, beta, n_iters, tol, save)

    @triton_ipot_fwd_tol.register_fake
    def _(cost, a, b, beta, n_iters, tol, save):
        dtype = compute_dtype(cost.dtype)
        return _tol_fwd_fake(cost, n_iters, save, (dtype, dtype, torch.float64, torch.float64), potentials=False)

    def _ipot_setup(ctx, inputs, output):
        cost, a, b, beta, _n_iters, _tol, save = inputs
        _plan, *hists, iterations, _violation = output
        ctx.save_for_backward(cost, a, b, iterations, *hists)
        ctx.mark_non_differentiable(*output[1:])
        ctx.reg_name, ctx.reg, ctx.save = "beta", beta, save

    def _ipot_backward(ctx, grad_plan, *_unused):
        grads = _backward(
            "ipot",
            ctx,
            grad_plan,
            lambda g, c, a_, b_, hists, count: triton_ipot_bwd(g, c, a_, b_, *hists, ctx.reg, count),
        )
        return (*grads, None, None, None, None)

    triton_sinkhorn_fwd_tol.register_autograd(_sinkhorn_backward, setup_context=_sinkhorn_setup)
    triton_ipot_fwd_tol.register_autograd(_ipot_backward, setup_context=_ipot_setup)

    def sinkhorn_converged_triton(cost, a, b, *, eps, n_iters, tol, grad):
        """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], f [B, n], g [B, m], iterations [B],
        violation [B]); f, g the final potentials (P = exp((f + g - C) / eps))."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad == "unrolled" and wants_grad(cost, a, b)
        if not save:
            cost, a, b = cost.detach(), a.detach(), b.detach()
        plan, f, g, _fh, _gh, iterations, violation = triton_sinkhorn_fwd_tol(
            cost, a, b, float(eps), int(n_iters), float(tol), save
        )
        return plan.to(dtype), f, g, iterations, violation

    def ipot_converged_triton(cost, a, b, *, beta, n_iters, tol, grad):
        """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], iterations [B], violation [B])."""
        (cost, a, b), dtype = prepare_ot_inputs(grad, cost, a, b)
        save = grad == "unrolled" and wants_grad(cost, a, b)
        if not save:
            cost, a, b = cost.detach(), a.detach(), b.detach()
        plan, *_hists, iterations, violation = triton_ipot_fwd_tol(
            cost, a, b, float(beta), int(n_iters), float(tol), save
        )
        return plan.to(dtype), iterations, violation

    register_autocast_rule("helo_fast::triton_sinkhorn_fwd_tol")
    register_autocast_rule("helo_fast::triton_ipot_fwd_tol")
    register("sinkhorn_converged", "triton", sinkhorn_converged_triton)
    register("ipot_converged", "triton", ipot_converged_triton)
    register(
        "gromov_wasserstein_converged",
        "triton",
        make_gromov_wasserstein_converged(sinkhorn_converged_triton, ipot_converged_triton),
    )
