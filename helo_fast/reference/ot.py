"""Reference optimal-transport ops in plain PyTorch: the ground truth for the fused kernels.

All ops are batched over a leading B axis, run in the log domain, and differentiate through the
unrolled loops with ordinary autograd (``grad="none"`` detaches the inputs instead).
"""
from __future__ import annotations

import math

import torch

from .._validation import validate_gromov, validate_ot


def _detach_if(grad: str, *tensors):
    return tuple(t.detach() for t in tensors) if grad == "none" else tensors


def _log_marginal(w):
    """log w, with -inf where w = 0 (a zero-mass row or column) and a zero gradient there, not 0 * inf."""
    positive = w > 0
    return torch.where(positive, torch.where(positive, w, torch.ones_like(w)).log(), -math.inf)


def _logsumexp(x, dim):
    """torch.logsumexp over ``dim``; a slice that is all -inf (a zero-mass row or column) gives -inf with a zero
    gradient instead of NaN."""
    empty = torch.isneginf(x).all(dim=dim, keepdim=True)
    return torch.logsumexp(x.masked_fill(empty, 0.0), dim=dim).masked_fill(empty.squeeze(dim), -math.inf)


def _log_ratio(log_w, lse):
    """log_w - lse, and -inf where log_w is -inf (zero mass: the plan's row or column is 0, whatever lse is)."""
    return torch.where(torch.isneginf(log_w), log_w, log_w - lse)


def sinkhorn(cost, a=None, b=None, *, eps, n_iters, grad="unrolled", check_finite=True):
    """Batched log-domain entropic OT (POT's ``sinkhorn_log`` iteration order).

    cost: [B, n, m]; a: [B, n], b: [B, m] marginals (None = uniform); eps > 0; exactly
    ``n_iters`` iterations, column potential first. Returns the plan [B, n, m] =
    exp((f_i + g_j - cost_ij) / eps). Zero entries of a (b) give zero rows (columns) of the plan and a zero
    gradient with respect to those entries.
    """
    a, b = validate_ot(cost, a, b, reg_name="eps", reg=eps, n_iters_name="n_iters", n_iters=n_iters,
                       grad=grad, check_finite_values=check_finite)
    cost, a, b = _detach_if(grad, cost, a, b)
    log_a, log_b = _log_marginal(a), _log_marginal(b)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(n_iters):
        g = eps * _log_ratio(log_b, _logsumexp((f[:, :, None] - cost) / eps, dim=1))
        f = eps * _log_ratio(log_a, _logsumexp((g[:, None, :] - cost) / eps, dim=2))
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)


def ipot(cost, a=None, b=None, *, beta, n_iters, grad="none", check_finite=True):
    """Batched inexact proximal-point OT (HELO_SPEC §4.5), computed in the log domain.

    cost: [B, n, m]; a: [B, n], b: [B, m] (None = uniform); beta > 0 the proximal step.
    T = 1, A = exp(-cost/beta), sigma = 1/m; each iteration: Q = A∘T, delta = a / (Q sigma),
    sigma = b / (Q^T delta), T = diag(delta) Q diag(sigma). Returns T [B, n, m]. Zero entries of a (b) give zero
    rows (columns) of T and a zero gradient with respect to those entries.
    """
    a, b = validate_ot(cost, a, b, reg_name="beta", reg=beta, n_iters_name="n_iters", n_iters=n_iters,
                       grad=grad, check_finite_values=check_finite)
    cost, a, b = _detach_if(grad, cost, a, b)
    log_a, log_b = _log_marginal(a), _log_marginal(b)
    log_kernel = -cost / beta
    log_plan = torch.zeros_like(cost)
    log_sigma = torch.full_like(log_b, -math.log(cost.shape[2]))
    for _ in range(n_iters):
        log_q = log_kernel + log_plan
        log_delta = _log_ratio(log_a, _logsumexp(log_q + log_sigma[:, None, :], dim=2))
        log_sigma = _log_ratio(log_b, _logsumexp(log_q + log_delta[:, :, None], dim=1))
        log_plan = log_delta[:, :, None] + log_q + log_sigma[:, None, :]
    return torch.exp(log_plan)


def gw_constant_cost(cs, ct, a, b):
    """The marginal term of the linearised GW cost: (cs∘cs) a 1^T + 1 ((ct∘ct) b)^T -> [B, n, m]."""
    return (cs * cs) @ a[:, :, None] + ((ct * ct) @ b[:, :, None]).transpose(1, 2)


def gromov_wasserstein(cs, ct, a=None, b=None, *, eps=0.1, outer_iters=5, inner_iters=20, solver="ipot",
                       grad="none", check_finite=True):
    """HeLo's Gromov-Wasserstein step (HELO_SPEC §4.4): linearise, solve, repeat.

    cs: [B, n, n], ct: [B, m, m] structure matrices; a: [B, n], b: [B, m] (None = uniform).
    Gamma = a b^T; ``outer_iters`` times: L = const - 2 cs Gamma ct^T, Gamma = solver(L, eps,
    inner_iters) with solver "ipot" (beta = eps) or "sinkhorn". Returns Gamma [B, n, m].
    """
    a, b = validate_gromov(cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters,
                           solver=solver, grad=grad, check_finite_values=check_finite)
    cs, ct, a, b = _detach_if(grad, cs, ct, a, b)
    const = gw_constant_cost(cs, ct, a, b)
    plan = a[:, :, None] * b[:, None, :]
    for _ in range(outer_iters):
        cost = const - 2.0 * cs @ plan @ ct.transpose(1, 2)
        if solver == "ipot":
            plan = ipot(cost, a, b, beta=eps, n_iters=inner_iters, grad=grad, check_finite=False)
        else:
            plan = sinkhorn(cost, a, b, eps=eps, n_iters=inner_iters, grad=grad, check_finite=False)
    return plan
