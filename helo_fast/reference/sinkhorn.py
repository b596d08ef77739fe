"""Reference batched log-domain Sinkhorn in plain PyTorch: the ground truth for the fused kernels."""

from __future__ import annotations

import torch

from .._convergence import StopState, is_check_point
from .._ot_finish import finish_sinkhorn
from .._validation import validate_ot
from .log_domain import detach_if, log_marginal, log_ratio, logsumexp


def sinkhorn(
    cost, a=None, b=None, *, eps, n_iters, grad="unrolled", tol=None, return_info=False, strict=False, check_finite=True
):
    """Batched log-domain entropic OT (POT's ``sinkhorn_log`` iteration order).

    cost: [B, n, m]; a: [B, n], b: [B, m] marginals (None = uniform); eps > 0; exactly
    ``n_iters`` iterations, column potential first (with ``tol``: each problem stops at the first check, every
    ``_convergence.CHECK_EVERY`` iterations, where its column-marginal L1 error is <= tol; ``n_iters`` is the cap).
    Returns the plan [B, n, m] = exp((f_i + g_j - cost_ij) / eps) (and an ``OTInfo`` with ``return_info``). Zero
    entries of a (b) give zero rows (columns) of the plan and a zero gradient with respect to those entries.
    grad="implicit": the gradient of the converged plan (``helo_fast._ot_implicit``).
    """
    a, b = validate_ot(
        cost,
        a,
        b,
        eps=eps,
        n_iters=n_iters,
        grad=grad,
        tol=tol,
        return_info=return_info,
        strict=strict,
        check_finite_values=check_finite,
    )
    if tol is None:
        return solve(cost, a, b, eps=eps, n_iters=n_iters, tol=None, grad=grad)[0]
    plan, _f, _g, iterations, violation = solve(
        cost, a, b, eps=eps, n_iters=n_iters, tol=tol, grad="none" if grad == "implicit" else grad
    )
    return finish_sinkhorn(
        plan,
        cost,
        a,
        b,
        eps=eps,
        iterations=iterations,
        violation=violation,
        tol=tol,
        n_iters=n_iters,
        grad=grad,
        return_info=return_info,
        strict=strict,
    )


def column_violation(cost, f, g, eps, b):
    """sum_j |sum_i P_ij - b_j| [B] for the plan P = exp((f_i + g_j - cost_ij) / eps) (no gradient)."""
    with torch.no_grad():
        column_mass = torch.exp(g / eps + logsumexp((f[:, :, None] - cost) / eps, dim=1))
        return (column_mass - b).abs().sum(-1)


def solve(cost, a, b, *, eps, n_iters, tol, grad):
    """The iterations on validated inputs: -> (plan [B, n, m], f [B, n], g [B, m], iterations [B] int64 or None,
    violation [B] or None). With ``tol`` a problem that has stopped keeps its potentials (``torch.where``), so its
    unrolled gradient is that of its own iteration count."""
    cost, a, b = detach_if(grad, cost, a, b)
    log_a, log_b = log_marginal(a), log_marginal(b)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    state = StopState.start(cost.shape[0], n_iters, cost.dtype, cost.device)
    for k in range(1, n_iters + 1):
        g_next = eps * log_ratio(log_b, logsumexp((f[:, :, None] - cost) / eps, dim=1))
        f_next = eps * log_ratio(log_a, logsumexp((g_next[:, None, :] - cost) / eps, dim=2))
        if tol is None:
            f, g = f_next, g_next
            continue
        f = torch.where(state.active[:, None], f_next, f)
        g = torch.where(state.active[:, None], g_next, g)
        if is_check_point(k, n_iters):
            state = state.checked(k, column_violation(cost.detach(), f.detach(), g.detach(), eps, b.detach()), tol)
            if not bool(state.active.any()):
                break
    plan = torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)
    return (plan, f, g, None, None) if tol is None else (plan, f, g, state.iterations, state.violation)
