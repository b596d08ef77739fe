"""Reference Gromov-Wasserstein step of HeLo (HELO_SPEC §4.4) in plain PyTorch: linearise, solve with the reference
IPOT or Sinkhorn, repeat. Differentiates through the unrolled loops with ordinary autograd."""
from __future__ import annotations

import torch

from .._ot_finish import finish_gromov_wasserstein
from .._validation import validate_gromov_wasserstein
from . import ipot as _ipot
from . import sinkhorn as _sinkhorn
from .log_domain import detach_if


def constant_cost(cs, ct, a, b):
    """The marginal term of the linearised GW cost: (cs∘cs) a 1^T + 1 ((ct∘ct) b)^T -> [B, n, m]."""
    return (cs * cs) @ a[:, :, None] + ((ct * ct) @ b[:, :, None]).transpose(1, 2)


def gromov_wasserstein(cs, ct, a=None, b=None, *, eps=0.1, outer_iters=5, inner_iters=20, solver="ipot",
                       grad="none", tol=None, return_info=False, strict=False, check_finite=True):
    """HeLo's Gromov-Wasserstein step (HELO_SPEC §4.4): linearise, solve, repeat.

    cs: [B, n, n], ct: [B, m, m] structure matrices; a: [B, n], b: [B, m] (None = uniform).
    Gamma = a b^T; ``outer_iters`` times: L = const - 2 cs Gamma ct^T, Gamma = solver(L, eps,
    inner_iters) with solver "ipot" (beta = eps) or "sinkhorn". Returns Gamma [B, n, m] (and a ``GWInfo`` with
    ``return_info``). With ``tol`` each problem's outer loop stops when sum |Gamma_k - Gamma_k-1| <= tol, and each
    inner solve stops on its own test (``_convergence``) with the same tol.
    """
    a, b = validate_gromov_wasserstein(cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters,
                                       solver=solver, grad=grad, tol=tol, return_info=return_info, strict=strict,
                                       check_finite_values=check_finite)
    cs, ct, a, b = detach_if(grad, cs, ct, a, b)
    const = constant_cost(cs, ct, a, b)
    plan = a[:, :, None] * b[:, None, :]
    if tol is None:
        for _ in range(outer_iters):
            plan = inner_solve(const - 2.0 * cs @ plan @ ct.transpose(1, 2), a, b, eps, inner_iters, None, solver,
                               grad)[0]
        return plan
    batch = cs.shape[0]
    active = torch.ones(batch, dtype=torch.bool, device=cs.device)
    iterations = torch.full((batch,), outer_iters, dtype=torch.int64, device=cs.device)
    inner_iterations = torch.zeros(batch, dtype=torch.int64, device=cs.device)
    change = torch.zeros(batch, dtype=cs.dtype, device=cs.device)
    inner_violation = torch.zeros(batch, dtype=cs.dtype, device=cs.device)
    for k in range(1, outer_iters + 1):
        new_plan, inner_count, inner_error = inner_solve(const - 2.0 * cs @ plan @ ct.transpose(1, 2), a, b, eps,
                                                         inner_iters, tol, solver, grad)
        current = (new_plan - plan).detach().abs().sum((1, 2))
        inner_iterations = inner_iterations + torch.where(active, inner_count, 0)
        inner_violation = torch.where(active, inner_error, inner_violation)
        change = torch.where(active, current, change)
        plan = torch.where(active[:, None, None], new_plan, plan)
        done = active & (current <= tol)
        iterations = torch.where(done, k, iterations)
        active = active & ~done
        if not bool(active.any()):
            break
    return finish_gromov_wasserstein(plan, iterations=iterations, inner_iterations=inner_iterations,
                                     violation=change, inner_violation=inner_violation, tol=tol,
                                     outer_iters=outer_iters, inner_iters=inner_iters, return_info=return_info,
                                     strict=strict)


def inner_solve(cost, a, b, eps, inner_iters, tol, solver, grad):
    """One inner solve on validated inputs -> (plan, iterations, violation) (the last two None without tol)."""
    if solver == "ipot":
        return _ipot.solve(cost, a, b, beta=eps, n_iters=inner_iters, tol=tol, grad=grad)
    plan, _f, _g, iterations, violation = _sinkhorn.solve(cost, a, b, eps=eps, n_iters=inner_iters, tol=tol,
                                                          grad=grad)
    return plan, iterations, violation
