"""The outer loop of gromov_wasserstein with ``tol`` (``_convergence``), shared by the reference and the fast
backends: each outer iteration linearises and solves only the problems still running (one batched inner solve on
them), and a problem stops when the L1 norm of its plan's change is <= tol. The inner solver is the caller's."""

from __future__ import annotations

from typing import Callable, Tuple

import torch


def constant_cost(cs, ct, a, b):
    """The marginal term of the linearised GW cost: (cs∘cs) a 1^T + 1 ((ct∘ct) b)^T -> [B, n, m]."""
    return (cs * cs) @ a[:, :, None] + ((ct * ct) @ b[:, :, None]).transpose(1, 2)


def solve_gromov_wasserstein(
    cs, ct, a, b, *, outer_iters: int, tol: float, inner_solve: Callable
) -> Tuple[torch.Tensor, ...]:
    """cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] (validated) -> (plan [B, n, m], outer iterations [B],
    inner iterations [B] (summed), last plan change [B], last inner violation [B]). ``inner_solve(cost, a, b)``
    solves a sub-batch with the tolerance: -> (plan, iterations, violation). Differentiable through the inner
    solves' own gradients (index_select / index_copy)."""
    batch, device = cs.shape[0], cs.device
    const = constant_cost(cs, ct, a, b)
    plan = a[:, :, None] * b[:, None, :]
    iterations = torch.full((batch,), outer_iters, dtype=torch.int64, device=device)
    inner_iterations = torch.zeros(batch, dtype=torch.int64, device=device)
    change = torch.zeros(batch, dtype=cs.dtype, device=device)
    inner_violation = torch.zeros(batch, dtype=cs.dtype, device=device)
    running = torch.arange(batch, device=device)
    for k in range(1, outer_iters + 1):
        if running.numel() == 0:
            break
        old = plan.index_select(0, running)
        cost = const.index_select(0, running) - 2.0 * cs.index_select(0, running) @ old @ ct.index_select(
            0, running
        ).transpose(1, 2)
        new, count, error = inner_solve(cost, a.index_select(0, running), b.index_select(0, running))
        current = (new - old).detach().abs().sum((1, 2)).to(change.dtype)
        inner_iterations = inner_iterations.index_add(0, running, count.to(torch.int64))
        inner_violation = inner_violation.index_copy(0, running, error.detach().to(inner_violation.dtype))
        change = change.index_copy(0, running, current)
        plan = plan.index_copy(0, running, new.to(plan.dtype))
        done = current <= tol
        iterations = iterations.index_fill(0, running[done], k)
        running = running[~done]
    return plan, iterations, inner_iterations, change, inner_violation
