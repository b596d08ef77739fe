"""What the C++ registrations of the OT ops (sinkhorn, ipot, gromov_wasserstein) share: input preparation, the
dtype of the saved histories, and the fake kernels and autograd of the two single-problem solvers (sinkhorn, ipot),
whose ops have the same signature with ``eps`` (Sinkhorn) or ``beta`` (IPOT) as the one float argument.

Each forward op returns the plan plus the per-iteration potentials its backward needs (``save_history``;
O(n_iters (n + m)) per problem, empty when no gradient is wanted); the backward op recomputes everything else from
them, so grad="unrolled" never stores per-iteration matrices. float16/bfloat16 inputs run in float32 and the plan
is cast back. A backward under create_graph=True (second derivatives) differentiates the reference instead
(``ot_reference_vjp``): the *_bwd ops have no derivative of their own.
"""

from __future__ import annotations

import torch

from .._numerics import LOW_PRECISION_DTYPES
from . import differentiable_backward_wanted, reference_vjp


def prepare_ot_inputs(grad: str, *tensors: torch.Tensor):
    """Detach for grad="none"; upcast float16/bfloat16 to float32. Returns (tensors, original dtype)."""
    dtype = tensors[0].dtype
    if grad == "none":
        tensors = tuple(t.detach() for t in tensors)
    if dtype in LOW_PRECISION_DTYPES:
        tensors = tuple(t.float() for t in tensors)
    return tensors, dtype


def history_dtype(dtype):
    """float32 problems save float64 histories (their gradient is computed in float64)."""
    return torch.float64 if dtype == torch.float32 else dtype


# ---- fake (meta) kernels: shapes only, for torch.compile / FakeTensor tracing
def ot_fwd_fake(cost, a, b, eps_or_beta, n_iters, save_history):
    batch, n, m = cost.shape
    hist = n_iters if save_history else 0
    dt = history_dtype(cost.dtype)
    return (
        cost.new_empty(cost.shape),
        cost.new_empty((batch, hist, n), dtype=dt),
        cost.new_empty((batch, hist, m), dtype=dt),
    )


def ot_bwd_fake(grad_plan, cost, a, b, hist_n, hist_m, eps_or_beta):
    return torch.empty_like(cost), torch.empty_like(a), torch.empty_like(b)


def ot_reference_vjp(op: str, grad_plan, cost, a, b, n_iters: int, **regularisation):
    """(d_cost, d_a, d_b) of the reference ``op`` ("sinkhorn" or "ipot", ``regularisation`` its eps= or beta=) as a
    differentiable graph: the backward of the fast ops under create_graph=True."""
    return reference_vjp(
        op, grad_plan, (cost, a, b), lambda ref: ref(cost, a, b, n_iters=n_iters, grad="unrolled", **regularisation)
    )


# ---- autograd: backward = the *_bwd op on the saved inputs and potentials
def ot_setup_context(ctx, inputs, output):
    cost, a, b, eps_or_beta, n_iters, _save = inputs
    _plan, hist_n, hist_m = output
    ctx.save_for_backward(cost, a, b, hist_n, hist_m)
    ctx.eps_or_beta, ctx.n_iters = eps_or_beta, n_iters
    ctx.mark_non_differentiable(hist_n, hist_m)


def make_ot_backward(bwd_op, op: str, regularisation: str):
    """The backward of the C++ op of ``op`` ("sinkhorn" or "ipot"; ``regularisation``: "eps" or "beta")."""

    def backward(ctx, grad_plan, _grad_hist_n, _grad_hist_m):
        cost, a, b, hist_n, hist_m = ctx.saved_tensors
        if differentiable_backward_wanted(grad_plan, cost, a, b):
            grads = ot_reference_vjp(op, grad_plan, cost, a, b, ctx.n_iters, **{regularisation: ctx.eps_or_beta})
            return (*grads, None, None, None)
        grad_cost, grad_a, grad_b = bwd_op(grad_plan.contiguous(), cost, a, b, hist_n, hist_m, ctx.eps_or_beta)
        return grad_cost, grad_a, grad_b, None, None, None

    return backward
