"""Reference Gromov-Wasserstein step of HeLo (HELO_SPEC §4.4) in plain PyTorch: linearise, solve with the reference
IPOT or Sinkhorn, repeat. Differentiates through the unrolled loops with ordinary autograd."""

from __future__ import annotations

from .._gw_converged import constant_cost, solve_gromov_wasserstein
from .._ot_finish import finish_gromov_wasserstein
from .._validation import validate_gromov_wasserstein
from . import ipot as _ipot
from . import sinkhorn as _sinkhorn
from .log_domain import detach_if


def gromov_wasserstein(
    cs,
    ct,
    a=None,
    b=None,
    *,
    eps=0.1,
    outer_iters=5,
    inner_iters=20,
    solver="ipot",
    grad="none",
    tol=None,
    return_info=False,
    strict=False,
    check_finite=True,
):
    """HeLo's Gromov-Wasserstein step (HELO_SPEC §4.4): linearise, solve, repeat.

    cs: [B, n, n], ct: [B, m, m] structure matrices; a: [B, n], b: [B, m] (None = uniform).
    Gamma = a b^T; ``outer_iters`` times: L = const - 2 cs Gamma ct^T, Gamma = solver(L, eps,
    inner_iters) with solver "ipot" (beta = eps) or "sinkhorn". Returns Gamma [B, n, m] (and a ``GWInfo`` with
    ``return_info``). With ``tol`` each problem's outer loop stops when sum |Gamma_k - Gamma_k-1| <= tol, and each
    inner solve stops on its own test (``_convergence``) with the same tol.
    """
    a, b = validate_gromov_wasserstein(
        cs,
        ct,
        a,
        b,
        eps=eps,
        outer_iters=outer_iters,
        inner_iters=inner_iters,
        solver=solver,
        grad=grad,
        tol=tol,
        return_info=return_info,
        strict=strict,
        check_finite_values=check_finite,
    )
    cs, ct, a, b = detach_if(grad, cs, ct, a, b)
    if tol is None:
        const = constant_cost(cs, ct, a, b)
        plan = a[:, :, None] * b[:, None, :]
        for _ in range(outer_iters):
            plan = inner_solve(
                const - 2.0 * cs @ plan @ ct.transpose(1, 2), a, b, eps, inner_iters, None, solver, grad
            )[0]
        return plan
    plan, iterations, inner_iterations, change, inner_violation = solve(
        cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, tol=tol, grad=grad
    )
    return finish_gromov_wasserstein(
        plan,
        iterations=iterations,
        inner_iterations=inner_iterations,
        violation=change,
        inner_violation=inner_violation,
        tol=tol,
        outer_iters=outer_iters,
        inner_iters=inner_iters,
        return_info=return_info,
        strict=strict,
    )


def solve(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver, tol, grad):
    """The outer loop with ``tol`` on validated inputs (the caller detaches them for grad="none") -> (plan [B, n, m],
    outer iterations [B], inner iterations [B], last plan change [B], last inner violation [B]): the reference's
    counterpart of the backends' "gromov_wasserstein_converged"."""
    return solve_gromov_wasserstein(
        cs,
        ct,
        a,
        b,
        outer_iters=outer_iters,
        tol=tol,
        inner_solve=lambda cost, a_, b_: inner_solve(cost, a_, b_, eps, inner_iters, tol, solver, grad),
    )


def inner_solve(cost, a, b, eps, inner_iters, tol, solver, grad):
    """One inner solve on validated inputs -> (plan, iterations, violation) (the last two None without tol)."""
    if solver == "ipot":
        return _ipot.solve(cost, a, b, beta=eps, n_iters=inner_iters, tol=tol, grad=grad)
    plan, _f, _g, iterations, violation = _sinkhorn.solve(cost, a, b, eps=eps, n_iters=inner_iters, tol=tol, grad=grad)
    return plan, iterations, violation
