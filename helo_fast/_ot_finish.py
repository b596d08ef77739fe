"""The end of an OT call with ``tol`` (every backend and the reference): the per-problem report (``OTInfo``), the
warning or error for problems that hit the cap (``_convergence.report``) and, for sinkhorn's grad="implicit", the
implicit gradient on the converged plan."""

from __future__ import annotations

from ._convergence import GWInfo, OTInfo, report
from ._ot_implicit import implicit_plan


def finish_sinkhorn(plan, cost, a, b, *, eps, iterations, violation, tol, n_iters, grad, return_info, strict):
    """plan [B, n, m] of a sinkhorn call with tol; iterations, violation [B] -> plan (, OTInfo)."""
    info = OTInfo(iterations, violation, violation <= tol)
    report("sinkhorn", info, tol=tol, cap=f"n_iters={n_iters}", strict=strict, implicit=grad == "implicit")
    if grad == "implicit":
        plan = implicit_plan(plan, cost, a, b, eps)
    return (plan, info) if return_info else plan


def finish_ipot(plan, *, iterations, violation, tol, n_iters, return_info, strict):
    """plan [B, n, m] of an ipot call with tol; iterations, violation [B] -> plan (, OTInfo)."""
    info = OTInfo(iterations, violation, violation <= tol)
    report("ipot", info, tol=tol, cap=f"n_iters={n_iters}", strict=strict)
    return (plan, info) if return_info else plan


def finish_gromov_wasserstein(
    plan,
    *,
    iterations,
    inner_iterations,
    violation,
    inner_violation,
    tol,
    outer_iters,
    inner_iters,
    return_info,
    strict,
):
    """plan [B, n, m] of a gromov_wasserstein call with tol; the [B] counts and violations -> plan (, GWInfo)."""
    info = GWInfo(
        iterations, inner_iterations, violation, inner_violation, (violation <= tol) & (inner_violation <= tol)
    )
    report(
        "gromov_wasserstein", info, tol=tol, cap=f"outer_iters={outer_iters} (inner_iters={inner_iters})", strict=strict
    )
    return (plan, info) if return_info else plan
