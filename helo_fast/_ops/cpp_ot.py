"""The C++ OT ops (torch.ops.helo_fast.{sinkhorn,ipot,gromov_wasserstein}_{fwd,bwd}): fake kernels,
autograd and the entry points registered for ``functional``.

Each forward op returns the plan plus the per-iteration potentials its backward needs
(``save_history``; O(n_iters (n + m)) per problem, empty when no gradient is wanted); the backward op
recomputes everything else from them, so grad="unrolled" never stores per-iteration matrices.
float16/bfloat16 inputs run in float32 and the plan is cast back.
"""
from __future__ import annotations

import torch

from .. import _ext
from .._autocast import register_autocast_rule
from . import register

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _wants_grad(grad: str, *tensors: torch.Tensor) -> bool:
    return grad != "none" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _prepare(grad: str, *tensors: torch.Tensor):
    """Detach for grad="none"; upcast float16/bfloat16 to float32. Returns (tensors, original dtype)."""
    dtype = tensors[0].dtype
    if grad == "none":
        tensors = tuple(t.detach() for t in tensors)
    if dtype in _LOW_PRECISION:
        tensors = tuple(t.float() for t in tensors)
    return tensors, dtype


if _ext.has_cpp():
    _ops = torch.ops.helo_fast

    # ---- fake (meta) kernels: shapes only, for torch.compile / FakeTensor tracing --------------
    def _history_dtype(dtype):
        """float32 problems save float64 histories (their gradient is computed in float64)."""
        return torch.float64 if dtype == torch.float32 else dtype

    def _ot_fwd_fake(cost, a, b, reg, n_iters, save_history):
        batch, n, m = cost.shape
        hist = n_iters if save_history else 0
        dt = _history_dtype(cost.dtype)
        return (cost.new_empty(cost.shape), cost.new_empty((batch, hist, n), dtype=dt),
                cost.new_empty((batch, hist, m), dtype=dt))

    def _ot_bwd_fake(grad_plan, cost, a, b, hist_n, hist_m, reg):
        return torch.empty_like(cost), torch.empty_like(a), torch.empty_like(b)

    for _name in ("sinkhorn", "ipot"):
        torch.library.register_fake(f"helo_fast::{_name}_fwd")(_ot_fwd_fake)
        torch.library.register_fake(f"helo_fast::{_name}_bwd")(_ot_bwd_fake)

    @torch.library.register_fake("helo_fast::gromov_wasserstein_fwd")
    def _gw_fwd_fake(cs, ct, a, b, eps, outer_iters, inner_iters, solver, save_history):
        batch, n, m = cs.shape[0], cs.shape[1], ct.shape[1]
        outer, inner = (outer_iters, inner_iters) if save_history else (0, 0)
        dt = _history_dtype(cs.dtype)
        return (cs.new_empty((batch, n, m)), cs.new_empty((batch, outer, n, m), dtype=dt),
                cs.new_empty((batch, outer, inner, n), dtype=dt), cs.new_empty((batch, outer, inner, m), dtype=dt))

    @torch.library.register_fake("helo_fast::gromov_wasserstein_bwd")
    def _gw_bwd_fake(grad_plan, cs, ct, a, b, plans, hist_n, hist_m, eps, solver):
        return torch.empty_like(cs), torch.empty_like(ct), torch.empty_like(a), torch.empty_like(b)

    # ---- autograd: backward = the *_bwd op on the saved inputs and potentials ------------------
    def _ot_setup_context(ctx, inputs, output):
        cost, a, b, reg, _n_iters, _save = inputs
        _plan, hist_n, hist_m = output
        ctx.save_for_backward(cost, a, b, hist_n, hist_m)
        ctx.reg = reg
        ctx.mark_non_differentiable(hist_n, hist_m)

    def _make_ot_backward(bwd_op):
        def backward(ctx, grad_plan, _grad_hist_n, _grad_hist_m):
            cost, a, b, hist_n, hist_m = ctx.saved_tensors
            grad_cost, grad_a, grad_b = bwd_op(grad_plan.contiguous(), cost, a, b, hist_n, hist_m, ctx.reg)
            return grad_cost, grad_a, grad_b, None, None, None

        return backward

    torch.library.register_autograd("helo_fast::sinkhorn_fwd", _make_ot_backward(_ops.sinkhorn_bwd),
                                    setup_context=_ot_setup_context)
    torch.library.register_autograd("helo_fast::ipot_fwd", _make_ot_backward(_ops.ipot_bwd),
                                    setup_context=_ot_setup_context)

    def _gw_setup_context(ctx, inputs, output):
        cs, ct, a, b, eps, _outer, _inner, solver, _save = inputs
        _plan, plans, hist_n, hist_m = output
        ctx.save_for_backward(cs, ct, a, b, plans, hist_n, hist_m)
        ctx.eps, ctx.solver = eps, solver
        ctx.mark_non_differentiable(plans, hist_n, hist_m)

    def _gw_backward(ctx, grad_plan, _g_plans, _g_hist_n, _g_hist_m):
        cs, ct, a, b, plans, hist_n, hist_m = ctx.saved_tensors
        grads = _ops.gromov_wasserstein_bwd(grad_plan.contiguous(), cs, ct, a, b, plans, hist_n, hist_m, ctx.eps,
                                            ctx.solver)
        return (*grads, None, None, None, None, None)

    torch.library.register_autograd("helo_fast::gromov_wasserstein_fwd", _gw_backward, setup_context=_gw_setup_context)

    # ---- entry points for functional (inputs already validated, marginals filled in) ----------
    def sinkhorn_cpp(cost, a, b, *, eps, n_iters, grad):
        """Log-domain Sinkhorn. cost [B, n, m], a [B, n], b [B, m] -> plan [B, n, m]."""
        (cost, a, b), dtype = _prepare(grad, cost, a, b)
        plan, _, _ = _ops.sinkhorn_fwd(cost, a, b, float(eps), int(n_iters), _wants_grad(grad, cost, a, b))
        return plan.to(dtype)

    def ipot_cpp(cost, a, b, *, beta, n_iters, grad):
        """Log-domain IPOT. cost [B, n, m], a [B, n], b [B, m] -> plan [B, n, m]."""
        (cost, a, b), dtype = _prepare(grad, cost, a, b)
        plan, _, _ = _ops.ipot_fwd(cost, a, b, float(beta), int(n_iters), _wants_grad(grad, cost, a, b))
        return plan.to(dtype)

    def gromov_wasserstein_cpp(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver, grad):
        """HeLo's GW step. cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] -> plan [B, n, m]."""
        (cs, ct, a, b), dtype = _prepare(grad, cs, ct, a, b)
        plan, _, _, _ = _ops.gromov_wasserstein_fwd(cs, ct, a, b, float(eps), int(outer_iters), int(inner_iters),
                                                   str(solver), _wants_grad(grad, cs, ct, a, b))
        return plan.to(dtype)

    # Under autocast every float argument is cast to float32 (helo_fast._autocast's OT rule).
    for _name in ("sinkhorn", "ipot", "gromov_wasserstein"):
        register_autocast_rule(f"helo_fast::{_name}_fwd")
        register_autocast_rule(f"helo_fast::{_name}_bwd")

    register("sinkhorn", "cpp", sinkhorn_cpp)
    register("ipot", "cpp", ipot_cpp)
    register("gromov_wasserstein", "cpp", gromov_wasserstein_cpp)
