"""grad="implicit" for sinkhorn: the gradient of the converged plan by the implicit function theorem, on top of any
backend's converged forward (backend-neutral: it needs only the plan).

At the solution P = exp((f_i + g_j - C_ij) / eps) with P 1 = a, Pᵀ 1 = b. For a loss L with G = dL/dP and
H = G ∘ P, the adjoint (u, v) solves the dual system
    [[diag(P 1), P], [Pᵀ, diag(Pᵀ 1)]] [u; v] = [H 1; Hᵀ 1],
and then dL/dC = P ∘ (u_i + v_j - G_ij) / eps, dL/da = u, dL/db = v. The system is singular along the gauge
(u + t, v - t): its right-hand side is orthogonal to it, so a solution exists; v is eliminated (Schur complement
S = diag(P 1) - P diag(1 / Pᵀ 1) Pᵀ on the smaller side, min(n, m)² per problem, O(n m) memory), the gauge is
removed by the rank-one term w wᵀ (w: the support of the rows, S w = 0; where P's support falls apart into blocks,
each with its own gauge, a pseudo-inverse takes over), and the returned gauge is the one with
sum_j b_j dL/db_j = 0: the limit of the unrolled iterations' gradient (their last row update makes the rows exact,
so perturbing a moves the columns by b sum(da) / sum(b)). Zero-mass entries (a zero row or column of P) are taken
out of the system (an identity row): their gradients are 0, never NaN. Computed in float64.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _solve_eliminating_columns(P, row, col, rhs_row, rhs_col):
    """(u, v) solving the dual system by eliminating v (the column side). P [B, n, m], row [B, n] = P 1, col [B, m]
    = Pᵀ 1, rhs_row [B, n], rhs_col [B, m]; any gauge."""
    inv_col = torch.where(col > 0, 1.0 / torch.where(col > 0, col, torch.ones_like(col)), torch.zeros_like(col))
    support = row > 0
    weight = support.to(P.dtype)
    scale = row.sum(-1, keepdim=True) / weight.sum(-1, keepdim=True)  # ~ the diagonal's size: keeps S conditioned
    schur = torch.diag_embed(row + (~support).to(P.dtype)) - (P * inv_col[:, None, :]) @ P.transpose(1, 2)
    schur = schur + scale[:, :, None] * weight[:, :, None] * weight[:, None, :]
    rhs = rhs_row - (P @ (rhs_col * inv_col)[:, :, None]).squeeze(2)
    rhs = rhs.masked_fill(~support, 0.0)
    u, info = torch.linalg.solve_ex(schur, rhs)
    bad = (info != 0) | ~torch.isfinite(u).all(-1)
    if bool(bad.any()):  # a support that falls apart into blocks (entries of P that underflowed): one gauge per block
        u = torch.where(bad[:, None], (torch.linalg.pinv(schur, hermitian=True) @ rhs[:, :, None]).squeeze(2), u)
    v = (rhs_col - (P.transpose(1, 2) @ u[:, :, None]).squeeze(2)) * inv_col
    return u, v


def implicit_vjp(grad_plan, plan, eps: float):
    """(dL/dcost [B, n, m], dL/da [B, n], dL/db [B, m]) in float64 from dL/dplan and the converged plan."""
    P, G = plan.double(), grad_plan.double()
    H = G * P
    row, col = P.sum(2), P.sum(1)
    rhs_row, rhs_col = H.sum(2), H.sum(1)
    if P.shape[1] <= P.shape[2]:
        u, v = _solve_eliminating_columns(P, row, col, rhs_row, rhs_col)
    else:
        v, u = _solve_eliminating_columns(P.transpose(1, 2), col, row, rhs_col, rhs_row)
    # The gauge: sum_j col_j v_j = 0 (zero-mass entries stay 0).
    shift = (col * v).sum(-1, keepdim=True) / col.sum(-1, keepdim=True)
    u = torch.where(row > 0, u + shift, torch.zeros_like(u))
    v = torch.where(col > 0, v - shift, torch.zeros_like(v))
    grad_cost = P * (u[:, :, None] + v[:, None, :] - G) / eps
    return grad_cost, u, v


class _SinkhornImplicit(torch.autograd.Function):
    """plan = the converged Sinkhorn plan of (cost, a, b), computed by the caller; backward: ``implicit_vjp``."""

    @staticmethod
    def forward(ctx, cost, a, b, plan, eps):
        ctx.save_for_backward(plan)
        ctx.eps = eps
        return plan

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_plan):
        (plan,) = ctx.saved_tensors
        grad_cost, grad_a, grad_b = implicit_vjp(grad_plan, plan, ctx.eps)
        needs = ctx.needs_input_grad
        return (
            grad_cost.to(plan.dtype) if needs[0] else None,
            grad_a.to(plan.dtype) if needs[1] else None,
            grad_b.to(plan.dtype) if needs[2] else None,
            None,
            None,
        )


def implicit_plan(plan, cost, a, b, eps: float):
    """The converged ``plan`` [B, n, m] (no graph) with the implicit gradient with respect to cost [B, n, m],
    a [B, n], b [B, m] attached where grad mode is on and one of them requires grad."""
    if not (torch.is_grad_enabled() and (cost.requires_grad or a.requires_grad or b.requires_grad)):
        return plan
    return _SinkhornImplicit.apply(cost, a, b, plan.detach(), float(eps))
