"""Public fused ops: validate the inputs once, pick the backend, run it.

Each op takes ``backend="auto" | "reference" | "cpp" | "triton"`` (see ``_backend.choose_backend``)
and ``check_finite=True`` (NaN/inf inputs raise ValueError; False skips that check for speed).
Under torch.autocast the OT ops and lcd_attention follow the policy of ``_autocast`` (applied before validation).
Inside a torch.func transform (vmap, grad, jvp, jacrev, jacfwd, ...) or with a forward-mode tangent on an input
(torch.autograd.forward_ad) every backend runs the reference, which those transforms differentiate exactly
(``_transforms.needs_reference``); a second derivative of a fast backend's result (``create_graph=True``) is
taken through the reference too (``_ops.reference_vjp``).
"""

from __future__ import annotations

import torch

from . import _backend, _ops, reference
from ._autocast import ATTENTION_ARGS, OT_ARGS, autocast_policy
from ._convergence import GWInfo, OTInfo, report
from ._gw_value import gromov_wasserstein_value, marginal_potentials
from ._ot_finish import finish_gromov_wasserstein, finish_ipot, finish_sinkhorn
from ._ot_value import sinkhorn_value
from ._transforms import needs_reference
from ._validation import (
    check_symmetric,
    device_of,
    validate_attention,
    validate_dropout,
    validate_gromov_wasserstein,
    validate_ot,
)


@autocast_policy(OT_ARGS)
def sinkhorn(
    cost,
    a=None,
    b=None,
    *,
    eps,
    n_iters,
    grad="unrolled",
    tol=None,
    return_info=False,
    strict=False,
    backend="auto",
    check_finite=True,
):
    """Batched entropic optimal transport by log-domain Sinkhorn iterations (POT's ``sinkhorn_log`` order).

    Exactly ``n_iters`` iterations, column potential first: g_j = eps (log b_j - LSE_i((f_i - C_ij) / eps)), then
    f_i = eps (log a_i - LSE_j((g_j - C_ij) / eps)); the plan is exp((f_i + g_j - C_ij) / eps).

    Args:
        cost: [B, n, m] cost matrices, B >= 0, n, m >= 1; float64, float32, float16 or bfloat16 (the last two are
            computed in float32); finite.
        a: [B, n] source marginals, or None for uniform 1/n. Finite, >= 0, positive total mass; zeros are allowed
            (that row of the plan is 0 and its entry gets no gradient). Dtype and device of ``cost``.
        b: [B, m] target marginals, or None for uniform 1/m; as ``a``, with the same total mass as ``a``.
        eps: float > 0, the entropic regularisation: at least the smallest normal number of the compute dtype,
            and max|cost| / eps at most 1 / (its machine epsilon) (float32: 8.4e6, float64: 4.5e15).
        n_iters: int in [1, 2**31 - 1], the number of iterations (with ``tol``: the cap).
        grad: "unrolled" (default: the exact gradient of the unrolled iterations with respect to cost, a, b),
            "none" (nothing is saved; the result does not require grad) or "implicit" (needs ``tol``: the gradient
            of the converged plan by the implicit function theorem, one linear solve per problem in the backward,
            O(n m) memory whatever the iteration count; see ``helo_fast._ot_implicit``).
        tol: None (default: exactly ``n_iters`` iterations) or a float > 0: each problem stops at the first check
            (after every 10th iteration and the last) where sum_j |sum_i P_ij - b_j| <= tol (``_convergence``).
        return_info: True (needs ``tol``) also returns an ``OTInfo`` of [B] tensors: iterations, violation,
            converged.
        strict: with ``tol``, a problem that reaches ``n_iters`` unconverged raises ``OTConvergenceError`` instead
            of the one ``OTConvergenceWarning`` per call.
        backend: "auto" (cpp on CPU tensors; on CUDA tensors cpp, or triton where cpp has no CUDA kernels
            (``_backend.AUTO_CUDA_PREFERENCE``); reference when nothing is built), "reference", "cpp" or "triton"
            (``tol`` runs on every backend and device; a build without the kernels it needs raises ValueError saying
            so).
        check_finite: False skips the NaN/inf scan of ``cost`` (one reduction); the marginals are always checked.

    Returns:
        The plan [B, n, m] in the dtype of ``cost`` (float32 under torch.autocast, float64 staying float64);
        ``(plan, info)`` with ``return_info``.

    Raises:
        TypeError: an argument of the wrong type or dtype, or tensors of different dtypes.
        ValueError: a wrong shape or device, a meta tensor, eps / n_iters / grad out of range, NaN or inf,
            marginals that are negative or of unequal mass. Each message names the argument.
        RuntimeError: ``backend`` names a backend that is not available here (the message says what is missing).

    Example:
        >>> import torch, helo_fast
        >>> cost = torch.rand(2, 3, 4, dtype=torch.float64)
        >>> plan = helo_fast.sinkhorn(cost, eps=0.1, n_iters=50)
        >>> plan.shape, round(float(plan[0].sum()), 6)
        (torch.Size([2, 3, 4]), 1.0)
    """
    backend = _backend.choose_backend(backend, device_of("cost", cost), "sinkhorn")
    if backend == "reference" or needs_reference(cost, a, b):
        return reference.sinkhorn(
            cost,
            a,
            b,
            eps=eps,
            n_iters=n_iters,
            grad=grad,
            tol=tol,
            return_info=return_info,
            strict=strict,
            check_finite=check_finite,
        )
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
        return _ops.get("sinkhorn", backend)(cost, a, b, eps=eps, n_iters=n_iters, grad=grad)
    solve = _converged_solver("sinkhorn", backend, cost)
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


def _converged_solver(op: str, backend: str, tensor):
    """The ``tol`` solver of ``op`` on ``backend`` (registered as "<op>_converged"), or ValueError naming what is
    missing."""
    reason = _ops.ot_converged.tol_unavailable_reason(op, backend, tensor.device)
    if reason is not None:
        raise ValueError(
            f"tol is not implemented for helo_fast.{op} on backend={backend!r} with {tensor.device.type} "
            f"tensors ({reason}); pass tol=None for exactly n_iters iterations, or another backend"
        )
    return _ops.get(f"{op}_converged", backend)


@autocast_policy(OT_ARGS)
def sinkhorn_cost(
    cost, a=None, b=None, *, eps, n_iters, tol, strict=False, return_info=False, backend="auto", check_finite=True
):
    """The regularised OT value of each problem at convergence, with its envelope gradient: a loss.

    V = <P, C> + eps KL(P | a bᵀ) with KL(P | Q) = sum P log(P / Q) - sum P + sum Q and P the converged plan of
    ``sinkhorn(cost, a, b, eps=eps, n_iters=n_iters, tol=tol)`` (OTT's ``reg_ot_cost`` convention; POT's
    ``sinkhorn2`` reports <P, C> only). The gradient is the envelope theorem's, no backward pass through the
    iterations: dV/dcost = P, dV/da and dV/db from the dual potentials (defined up to a shift (+t, -t), since only
    equal-mass changes of a, b are feasible; the one returned has sum a dV/da = sum b dV/db; ``_ot_value``).

    Args:
        cost: [B, n, m] cost matrices (as for ``sinkhorn``).
        a: [B, n] source marginals or None (uniform); zeros allowed (their gradient is still finite).
        b: [B, m] target marginals or None (uniform), of the mass of ``a``.
        eps: float > 0, the entropic regularisation (as for ``sinkhorn``).
        n_iters: int in [1, 2**31 - 1], the iteration cap.
        tol: float > 0, the convergence tolerance of ``sinkhorn`` (the envelope gradient is exact at convergence).
        strict: raise ``OTConvergenceError`` instead of warning when a problem reaches ``n_iters`` unconverged.
        return_info: True also returns the solve's ``OTInfo``.
        backend: as for ``sinkhorn`` (reference, or cpp on CPU tensors).
        check_finite: False skips the NaN/inf scan of ``cost``.

    Returns:
        V [B] in the dtype of ``cost``; ``(V, info)`` with ``return_info``.

    Raises:
        What ``sinkhorn`` raises; ValueError for tol None or not > 0.

    Example:
        >>> import torch, helo_fast
        >>> cost = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
        >>> value = helo_fast.sinkhorn_cost(cost, eps=0.1, n_iters=1000, tol=1e-9)
        >>> value.sum().backward()
        >>> value.shape, round(float(cost.grad[0].sum()), 6)
        (torch.Size([2]), 1.0)
    """
    if tol is None:
        raise ValueError("sinkhorn_cost needs tol (a float > 0): its envelope gradient is that of the converged value")
    backend = _backend.choose_backend(backend, device_of("cost", cost), "sinkhorn")
    a, b = validate_ot(
        cost,
        a,
        b,
        eps=eps,
        n_iters=n_iters,
        grad="none",
        tol=tol,
        return_info=return_info,
        strict=strict,
        check_finite_values=check_finite,
    )
    if backend == "reference" or needs_reference(cost, a, b):
        solve = reference.sinkhorn_solve
    else:
        solve = _converged_solver("sinkhorn", backend, cost)
    with torch.no_grad():
        plan, _f, g, iterations, violation = solve(cost, a, b, eps=eps, n_iters=n_iters, tol=tol, grad="none")
    info = OTInfo(iterations, violation, violation <= tol)
    report("sinkhorn_cost", info, tol=tol, cap=f"n_iters={n_iters}", strict=strict)
    value = sinkhorn_value(cost, a, b, plan, g, eps)
    return (value, info) if return_info else value


@autocast_policy(OT_ARGS)
def ipot(
    cost,
    a=None,
    b=None,
    *,
    beta,
    n_iters,
    grad="none",
    tol=None,
    return_info=False,
    strict=False,
    backend="auto",
    check_finite=True,
):
    """Batched inexact proximal-point OT (IPOT, HeLo's solver, HELO_SPEC §4.5), computed in the log domain.

    T = 1, sigma = 1/m; each of the ``n_iters`` iterations: Q = exp(-cost / beta) * T, delta = a / (Q sigma),
    sigma = b / (Qᵀ delta), T = diag(delta) Q diag(sigma). In the log domain it does not underflow for small beta.

    Args:
        cost: [B, n, m] cost matrices, B >= 0, n, m >= 1; float64, float32, float16 or bfloat16 (the last two are
            computed in float32); finite.
        a: [B, n] source marginals, or None for uniform 1/n. Finite, >= 0, positive total mass; zeros are allowed
            (that row of the plan is 0 and its entry gets no gradient). Dtype and device of ``cost``.
        b: [B, m] target marginals, or None for uniform 1/m; as ``a``, with the same total mass as ``a``.
        beta: float > 0, the proximal step: at least the smallest normal number of the compute dtype, and
            max|cost| / beta at most 1 / (its machine epsilon) (float32: 8.4e6, float64: 4.5e15).
        n_iters: int in [1, 2**31 - 1], the number of iterations (with ``tol``: the cap).
        grad: "none" (default, as in HeLo: nothing is saved; the result does not require grad) or "unrolled"
            (the exact gradient of the unrolled iterations with respect to cost, a, b).
        tol: None (default: exactly ``n_iters`` iterations) or a float > 0: each problem stops at the first check
            (after every 10th iteration and the last) where sum_i |sum_j T_ij - a_i| <= tol (the columns are exact).
        return_info: True (needs ``tol``) also returns an ``OTInfo`` (as for ``sinkhorn``).
        strict: with ``tol``, raise ``OTConvergenceError`` for a problem that reaches ``n_iters`` unconverged.
        backend: "auto", "reference", "cpp" or "triton" (as for ``sinkhorn``).
        check_finite: False skips the NaN/inf scan of ``cost`` (one reduction); the marginals are always checked.

    Returns:
        The plan T [B, n, m] in the dtype of ``cost`` (float32 under torch.autocast, float64 staying float64);
        ``(plan, info)`` with ``return_info``.

    Raises:
        TypeError: an argument of the wrong type or dtype, or tensors of different dtypes.
        ValueError: a wrong shape or device, a meta tensor, beta / n_iters / grad out of range, NaN or inf,
            marginals that are negative or of unequal mass. Each message names the argument.
        RuntimeError: ``backend`` names a backend that is not available here.

    Example:
        >>> import torch, helo_fast
        >>> cost = torch.rand(2, 3, 4, dtype=torch.float64)
        >>> plan = helo_fast.ipot(cost, beta=0.1, n_iters=20)
        >>> plan.shape, plan.requires_grad
        (torch.Size([2, 3, 4]), False)
    """
    backend = _backend.choose_backend(backend, device_of("cost", cost), "ipot")
    if backend == "reference" or needs_reference(cost, a, b):
        return reference.ipot(
            cost,
            a,
            b,
            beta=beta,
            n_iters=n_iters,
            grad=grad,
            tol=tol,
            return_info=return_info,
            strict=strict,
            check_finite=check_finite,
        )
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
    if tol is None:
        return _ops.get("ipot", backend)(cost, a, b, beta=beta, n_iters=n_iters, grad=grad)
    plan, iterations, violation = _converged_solver("ipot", backend, cost)(
        cost, a, b, beta=beta, n_iters=n_iters, tol=tol, grad=grad
    )
    return finish_ipot(
        plan,
        iterations=iterations,
        violation=violation,
        tol=tol,
        n_iters=n_iters,
        return_info=return_info,
        strict=strict,
    )


@autocast_policy(OT_ARGS)
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
    backend="auto",
    check_finite=True,
):
    """HeLo's whole Gromov-Wasserstein step (HELO_SPEC §4.4) as one op: linearise the cost, solve, repeat.

    Gamma = a bᵀ; ``outer_iters`` times: L = (cs∘cs) a 1ᵀ + 1 ((ct∘ct) b)ᵀ - 2 cs Gamma ctᵀ, then
    Gamma = ipot(L, beta=eps, n_iters=inner_iters) (or ``sinkhorn`` with ``solver="sinkhorn"``), each inner solve
    started afresh.

    Args:
        cs: [B, n, n] source structure matrices (HeLo: sparsified cosine distances), B >= 0, n >= 1; float64,
            float32, float16 or bfloat16 (the last two are computed in float32); finite.
        ct: [B, m, m] target structure matrices, m >= 1; dtype and device of ``cs``; finite.
        a: [B, n] source marginals, or None for uniform 1/n. Finite, >= 0, positive total mass; zeros allowed.
        b: [B, m] target marginals, or None for uniform 1/m; as ``a``, with the same total mass as ``a``.
        eps: float > 0 (default 0.1), the inner solver's beta (IPOT) or eps (Sinkhorn): at least the compute
            dtype's smallest normal number, and max|L| / eps at most 1 / (its machine epsilon), where |L| is
            bounded by (max|cs| + max|ct|)**2 times the mass.
        outer_iters: int in [1, 2**31 - 1] (default 5), the number of linearisations.
        inner_iters: int in [1, 2**31 - 1] (default 20), the iterations of each inner solve.
        solver: "ipot" (default, HeLo) or "sinkhorn".
        grad: "none" (default, as in HeLo: the plan is detached) or "unrolled" (the exact gradient of all the
            unrolled iterations with respect to cs, ct, a, b). "implicit" is refused (ValueError): the outer loop
            is a fixed point of a non-convex problem, not always locally unique.
        tol: None (default: exactly outer_iters x inner_iters) or a float > 0: each problem's outer loop stops
            when sum |Gamma_k - Gamma_k-1| <= tol, and each inner solve stops on its solver's test (as ``sinkhorn``
            / ``ipot`` with ``tol``); ``outer_iters`` and ``inner_iters`` are the caps.
        return_info: True (needs ``tol``) also returns a ``GWInfo`` of [B] tensors (outer and total inner
            iterations, the last plan change and inner violation, converged).
        strict: as for ``sinkhorn``.
        backend: "auto", "reference", "cpp" or "triton" (as for ``sinkhorn``).
        check_finite: False skips the NaN/inf scan of ``cs`` and ``ct``; the marginals are always checked.

    Returns:
        The plan Gamma [B, n, m] in the dtype of ``cs`` (float32 under torch.autocast, float64 staying float64);
        ``(plan, info)`` with ``return_info``.

    Raises:
        TypeError: an argument of the wrong type or dtype, or tensors of different dtypes.
        ValueError: a wrong shape or device, a meta tensor, eps / iteration counts / solver / grad out of range,
            NaN or inf, marginals that are negative or of unequal mass. Each message names the argument.
        RuntimeError: ``backend`` names a backend that is not available here.

    Example:
        >>> import torch, helo_fast
        >>> cs, ct = torch.rand(2, 5, 5), torch.rand(2, 6, 6)
        >>> helo_fast.gromov_wasserstein(cs, ct, eps=0.1, outer_iters=5, inner_iters=20).shape
        torch.Size([2, 5, 6])
    """
    backend = _backend.choose_backend(backend, device_of("cs", cs), "gromov_wasserstein")
    if backend == "reference" or needs_reference(cs, ct, a, b):
        return reference.gromov_wasserstein(
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
            check_finite=check_finite,
        )
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
    if tol is None:
        return _ops.get("gromov_wasserstein", backend)(
            cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, grad=grad
        )
    solve = _converged_solver("gromov_wasserstein", backend, cs)
    plan, *counts = solve(
        cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, tol=tol, grad=grad
    )
    iterations, inner_iterations, violation, inner_violation = counts
    return finish_gromov_wasserstein(
        plan,
        iterations=iterations,
        inner_iterations=inner_iterations,
        violation=violation,
        inner_violation=inner_violation,
        tol=tol,
        outer_iters=outer_iters,
        inner_iters=inner_iters,
        return_info=return_info,
        strict=strict,
    )


@autocast_policy(OT_ARGS)
def gromov_wasserstein_cost(
    cs,
    ct,
    a=None,
    b=None,
    *,
    eps,
    outer_iters,
    inner_iters,
    tol,
    solver="sinkhorn",
    strict=False,
    return_info=False,
    backend="auto",
    check_finite=True,
):
    """The Gromov-Wasserstein value of each problem at convergence, with its envelope gradient: a loss.

    Γ is the converged plan of ``gromov_wasserstein(cs, ct, a, b, eps=eps, outer_iters=outer_iters,
    inner_iters=inner_iters, solver=solver, tol=tol)`` (HeLo's linearise-and-solve step run to its fixed point), and
    V = sum_ijkl (cs_ik - ct_jl)² Γ_ij Γ_kl + 2 eps KL(Γ | a bᵀ) for solver="sinkhorn" (the objective whose stationary
    points are the fixed points of the outer loop: 2 eps, since the linearised cost is half the discrepancy's
    gradient; KL as in ``sinkhorn_cost``), or the discrepancy alone for solver="ipot" (IPOT converges to an
    unregularised plan of each linearisation). The gradient is the envelope theorem's, no backward pass through the
    iterations (``_gw_value``): dV/dcs = 2 (cs∘(r rᵀ) - Γ ct Γᵀ), dV/dct = 2 (ct∘(c cᵀ) - Γᵀ cs Γ) with r, c the
    plan's marginals; dV/da, dV/db (solver="sinkhorn" only) are twice the dual potentials of one more Sinkhorn solve
    on the final linearisation (run only when a or b requires grad; same gauge as ``sinkhorn_cost``). GW has local
    minima: V and its gradient are those of the stationary point found.

    Args:
        cs: [B, n, n] symmetric source structure matrices (as for ``gromov_wasserstein``), equal to their transposes
            to sqrt(machine eps) of their largest entry.
        ct: [B, m, m] symmetric target structure matrices; dtype and device of ``cs``.
        a: [B, n] source marginals or None (uniform); zeros allowed.
        b: [B, m] target marginals or None (uniform), of the mass of ``a``.
        eps: float > 0, the inner solver's eps (Sinkhorn) or beta (IPOT), as for ``gromov_wasserstein``.
        outer_iters: int in [1, 2**31 - 1], the cap on the linearisations.
        inner_iters: int in [1, 2**31 - 1], the cap on each inner solve's iterations.
        tol: float > 0, the tolerance of the outer loop (plan change) and of each inner solve.
        solver: "sinkhorn" (default: the entropic value, smooth in the inputs) or "ipot" (HeLo's solver; its outer
            loop often cycles between vertices and warns, and it has no gradient with respect to a and b).
        strict: raise ``OTConvergenceError`` instead of warning when a problem reaches a cap unconverged.
        return_info: True also returns the solve's ``GWInfo`` (with a, b requiring grad, the potentials' solve
            counts in its inner iterations and violation).
        backend: "auto", "reference", "cpp" or "triton" (as for ``gromov_wasserstein`` with ``tol``).
        check_finite: False skips the NaN/inf scan of ``cs`` and ``ct``.

    Returns:
        V [B] in the dtype of ``cs``; ``(V, info)`` with ``return_info``.

    Raises:
        What ``gromov_wasserstein`` raises; ValueError for tol None or not > 0, a non-symmetric ``cs`` or ``ct``, or
        solver="ipot" with ``a`` or ``b`` requiring grad.

    Example:
        >>> import torch, helo_fast
        >>> x = torch.rand(2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> cs = (x + x.transpose(1, 2)).requires_grad_()
        >>> ct = torch.ones(2, 4, 4, dtype=torch.float64) - torch.eye(4, dtype=torch.float64)
        >>> value = helo_fast.gromov_wasserstein_cost(cs, ct, eps=0.1, outer_iters=100, inner_iters=1000, tol=1e-9)
        >>> value.sum().backward()
        >>> value.shape, bool(torch.allclose(cs.grad, cs.grad.transpose(1, 2)))
        (torch.Size([2]), True)
    """
    if tol is None:
        raise ValueError(
            "gromov_wasserstein_cost needs tol (a float > 0): its envelope gradient is that of the converged value"
        )
    backend = _backend.choose_backend(backend, device_of("cs", cs), "gromov_wasserstein")
    a, b = validate_gromov_wasserstein(
        cs,
        ct,
        a,
        b,
        eps=eps,
        outer_iters=outer_iters,
        inner_iters=inner_iters,
        solver=solver,
        grad="none",
        tol=tol,
        return_info=return_info,
        strict=strict,
        check_finite_values=check_finite,
    )
    check_symmetric("cs", cs)
    check_symmetric("ct", ct)
    marginal_grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    if marginal_grad and solver == "ipot":
        raise ValueError(
            "gromov_wasserstein_cost with solver='ipot' has no gradient with respect to a or b (they "
            "would be the duals of an unregularised OT problem, which IPOT does not return exactly); "
            "detach a and b, or use solver='sinkhorn'"
        )
    if backend == "reference" or needs_reference(cs, ct, a, b):
        solve, sinkhorn_solve = reference.gromov_wasserstein_solve, reference.sinkhorn_solve
    else:
        solve = _converged_solver("gromov_wasserstein", backend, cs)
        sinkhorn_solve = _converged_solver("sinkhorn", backend, cs) if marginal_grad else None
    potentials = None
    with torch.no_grad():
        plan, iterations, inner_iterations, change, inner_violation = solve(
            cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, tol=tol, grad="none"
        )
        if marginal_grad:
            cost, g, count, violation = marginal_potentials(
                cs, ct, a, b, plan, eps=eps, inner_iters=inner_iters, tol=tol, sinkhorn_solve=sinkhorn_solve
            )
            potentials = (cost, g)
            inner_iterations = inner_iterations + count.to(inner_iterations.dtype)
            inner_violation = torch.maximum(inner_violation, violation.to(inner_violation.dtype))
    info = GWInfo(iterations, inner_iterations, change, inner_violation, (change <= tol) & (inner_violation <= tol))
    report(
        "gromov_wasserstein_cost",
        info,
        tol=tol,
        cap=f"outer_iters={outer_iters} (inner_iters={inner_iters})",
        strict=strict,
    )
    value = gromov_wasserstein_value(cs, ct, a, b, plan, eps=eps, solver=solver, potentials=potentials)
    return (value, info) if return_info else value


@autocast_policy(ATTENTION_ARGS)
def lcd_attention(
    q,
    k,
    v,
    bias=None,
    *,
    scale=None,
    dropkey_p=0.0,
    dropout_p=0.0,
    residual=None,
    ln_weight=None,
    ln_bias=None,
    ln_eps=1e-5,
    bias_before_scale=True,
    generator=None,
    dropkey_mask=None,
    dropout_mask=None,
    backend="auto",
    check_finite=True,
):
    """HeLo's small-sequence attention fused end to end (HELO_SPEC §3, §4.8, §6): one op, forward and backward.

    logits = (q kᵀ + bias) * scale (or q kᵀ * scale + bias); DropKey sets a dropped logit to -1e12 (so a row whose
    keys are all dropped gets uniform weights, never NaN); softmax; dropout of the weights, kept ones * 1/(1 - p);
    A v with the heads concatenated; + residual; LayerNorm over the H*D features when ``ln_weight`` is given.

    Args:
        q: [B, H, Lq, D] queries, B >= 0, H, Lq, D >= 1; float64, float32, float16 or bfloat16 (the last two
            accumulate in float32); finite.
        k: [B, H, Lk, D] keys, Lk >= 1; dtype and device of ``q``.
        v: [B, H, Lk, D] values; dtype and device of ``q``.
        bias: None or an additive logit bias broadcastable to [B, H, Lq, Lk] (HeLo's LCD-CA: the label correlation
            [C, C]); dtype of ``q``; read through broadcast strides, its gradient has its own shape.
        scale: float > 0, or None for D**-0.5.
        dropkey_p: float in [0, 1), the DropKey probability (0: off).
        dropout_p: float in [0, 1), the attention-weight dropout probability (0: off).
        residual: None or [B, Lq, H*D], added to the attention output; dtype of ``q``.
        ln_weight: None (no LayerNorm) or [H*D]; dtype of ``q``, or float32 for float16/bfloat16 inputs.
        ln_bias: None or [H*D], as ``ln_weight`` (needs ``ln_weight``).
        ln_eps: float > 0, LayerNorm's epsilon (default 1e-5).
        bias_before_scale: True (default, HeLo's LCD-CA) adds the bias before the scaling, False after it.
        generator: the torch.Generator one seed is drawn from when a mask is drawn (None: torch's default CPU
            generator). The masks are a counter hash of that seed, the same on every backend, and the backward
            regenerates them.
        dropkey_mask: None or bool [B, H, Lq, Lk] (True = dropped), used instead of drawing one.
        dropout_mask: None or bool [B, H, Lq, Lk] (True = dropped), used instead of drawing one.
        backend: "auto", "reference", "cpp" or "triton" (as for ``sinkhorn``).
        check_finite: False skips the NaN/inf scan of the tensor inputs.

    Returns:
        [B, Lq, H*D] in the dtype of ``q`` (under torch.autocast: the autocast dtype).

    Raises:
        TypeError: an argument of the wrong type or dtype, or tensors of different dtypes.
        ValueError: a wrong shape or device, a meta tensor, p / scale / ln_eps out of range, ``ln_bias`` without
            ``ln_weight``, NaN or inf. Each message names the argument.
        RuntimeError: ``backend`` names a backend that is not available here.

    Example:
        >>> import torch, helo_fast
        >>> q, k, v = torch.randn(8, 4, 10, 32), torch.randn(8, 4, 36, 32), torch.randn(8, 4, 36, 32)
        >>> x, w, b = torch.randn(8, 10, 128), torch.ones(128), torch.zeros(128)
        >>> gen = torch.Generator().manual_seed(0)
        >>> out = helo_fast.lcd_attention(q, k, v, dropkey_p=0.5, dropout_p=0.5, residual=x, ln_weight=w,
        ...                               ln_bias=b, generator=gen)
        >>> out.shape
        torch.Size([8, 10, 128])
    """
    kwargs = dict(
        dropkey_p=dropkey_p,
        dropout_p=dropout_p,
        residual=residual,
        ln_weight=ln_weight,
        ln_bias=ln_bias,
        ln_eps=ln_eps,
        bias_before_scale=bias_before_scale,
        generator=generator,
        dropkey_mask=dropkey_mask,
        dropout_mask=dropout_mask,
    )
    backend = _backend.choose_backend(backend, device_of("q", q), "lcd_attention")
    if backend == "reference" or needs_reference(q, k, v, bias, residual, ln_weight, ln_bias):
        return reference.lcd_attention(q, k, v, bias, scale=scale, check_finite=check_finite, **kwargs)
    scale = validate_attention(
        q,
        k,
        v,
        bias,
        residual,
        ln_weight,
        ln_bias,
        scale=scale,
        dropkey_p=dropkey_p,
        dropout_p=dropout_p,
        ln_eps=ln_eps,
        dropkey_mask=dropkey_mask,
        dropout_mask=dropout_mask,
        check_finite_values=check_finite,
    )
    return _ops.get("lcd_attention", backend)(q, k, v, bias, scale=scale, **kwargs)


def seeded_dropout(x, p, *, generator=None, training=True, backend="auto"):
    """Dropout whose mask is a pure function of (seed, element index): HeLo's FFN dropout, one fused pass.

    Element i (row-major) is dropped when a counter hash of (seed, i) falls below p; one seed is drawn from
    ``generator`` per call. So every backend gives the same mask, bit for bit, for the same generator state, and
    the backward is the same op on the gradient (only the seed is kept). The masks are not ``nn.Dropout``'s:
    same distribution, different draws.

    Args:
        x: a float tensor (float64, float32, float16 or bfloat16) of any shape with at most 2**32 elements.
        p: float in [0, 1), the probability of dropping an element.
        generator: the torch.Generator the seed is drawn from (None: torch's default CPU generator).
        training: False returns ``x`` itself and draws nothing (as p = 0 does).
        backend: "auto", "reference", "cpp" or "triton" (as for ``sinkhorn``).

    Returns:
        x * 1/(1 - p) where kept and 0 where dropped: the shape and dtype of ``x``.

    Raises:
        TypeError: ``x`` is not a float tensor or ``p`` not a float.
        ValueError: p outside [0, 1), ``x`` a meta tensor or of more than 2**32 elements.
        RuntimeError: ``backend`` names a backend that is not available here.

    Example:
        >>> import torch, helo_fast
        >>> x = torch.ones(4, 64)
        >>> y = helo_fast.seeded_dropout(x, 0.5, generator=torch.Generator().manual_seed(0))
        >>> sorted(set(y.flatten().tolist()))
        [0.0, 2.0]
    """
    backend = _backend.choose_backend(backend, device_of("x", x), "seeded_dropout")
    if training and (backend == "reference" or needs_reference(x)):
        return reference.seeded_dropout(x, p, generator=generator)  # validates its inputs itself
    p = validate_dropout(x, p)
    if not training or p == 0.0:
        return x
    return _ops.get("seeded_dropout", backend)(x, p, generator=generator)


# Each op's reference, for the fast ops' backward under create_graph=True (``_ops.reference_vjp``): registered here,
# the layer that knows both, so that the fast path (``_ops``) never imports ``reference``.
for _op in _ops.OPS:
    _ops.register(_op, "reference", getattr(reference, _op))
