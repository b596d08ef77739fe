"""Reference batched log-domain IPOT (HELO_SPEC §4.5) in plain PyTorch: the ground truth for the fused kernels."""

from __future__ import annotations

import math

import torch

from .._convergence import StopState, is_check_point
from .._ot_finish import finish_ipot
from .._validation import validate_ot
from .log_domain import detach_if, log_marginal, log_ratio, logsumexp


def ipot(
    cost, a=None, b=None, *, beta, n_iters, grad="none", tol=None, return_info=False, strict=False, check_finite=True
):
    """Batched inexact proximal-point OT (HELO_SPEC §4.5), computed in the log domain.

    cost: [B, n, m]; a: [B, n], b: [B, m] (None = uniform); beta > 0 the proximal step.
    T = 1, A = exp(-cost/beta), sigma = 1/m; each iteration: Q = A∘T, delta = a / (Q sigma),
    sigma = b / (Q^T delta), T = diag(delta) Q diag(sigma). Returns T [B, n, m] (and an ``OTInfo`` with
    ``return_info``). With ``tol`` each problem stops at the first check (every ``_convergence.CHECK_EVERY``
    iterations) where its row-marginal L1 error is <= tol; ``n_iters`` is the cap. Zero entries of a (b) give zero
    rows (columns) of T and a zero gradient with respect to those entries.
    """
    a, b = validate_ot(
        cost,
        a,
        b,
        beta=beta,
        n_iters=n_iters,
        grad=grad,
        tol=tol,
        return_info=return_info,
        strict=strict,
        check_finite_values=check_finite,
    )
    plan, iterations, violation = solve(cost, a, b, beta=beta, n_iters=n_iters, tol=tol, grad=grad)
    if tol is None:
        return plan
    return finish_ipot(
        plan,
        iterations=iterations,
        violation=violation,
        tol=tol,
        n_iters=n_iters,
        return_info=return_info,
        strict=strict,
    )


def row_violation(log_plan, a):
    """sum_i |sum_j T_ij - a_i| [B] for T = exp(log_plan) (no gradient)."""
    with torch.no_grad():
        return (torch.exp(logsumexp(log_plan, dim=2)) - a).abs().sum(-1)


def solve(cost, a, b, *, beta, n_iters, tol, grad):
    """The iterations on validated inputs: -> (plan [B, n, m], iterations [B] int64 or None, violation [B] or None).
    With ``tol`` a problem that has stopped keeps its state (``torch.where``)."""
    cost, a, b = detach_if(grad, cost, a, b)
    log_a, log_b = log_marginal(a), log_marginal(b)
    log_kernel = -cost / beta
    log_plan = torch.zeros_like(cost)
    log_sigma = torch.full_like(log_b, -math.log(cost.shape[2]))
    state = StopState.start(cost.shape[0], n_iters, cost.dtype, cost.device)
    for k in range(1, n_iters + 1):
        log_q = log_kernel + log_plan
        log_delta = log_ratio(log_a, logsumexp(log_q + log_sigma[:, None, :], dim=2))
        log_sigma_next = log_ratio(log_b, logsumexp(log_q + log_delta[:, :, None], dim=1))
        log_plan_next = log_delta[:, :, None] + log_q + log_sigma_next[:, None, :]
        if tol is None:
            log_plan, log_sigma = log_plan_next, log_sigma_next
            continue
        log_plan = torch.where(state.active[:, None, None], log_plan_next, log_plan)
        log_sigma = torch.where(state.active[:, None], log_sigma_next, log_sigma)
        if is_check_point(k, n_iters):
            state = state.checked(k, row_violation(log_plan.detach(), a.detach()), tol)
            if not bool(state.active.any()):
                break
    plan = torch.exp(log_plan)
    return (plan, None, None) if tol is None else (plan, state.iterations, state.violation)
