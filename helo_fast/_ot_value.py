"""The regularised OT value of a converged Sinkhorn plan and its envelope gradient (``helo_fast.sinkhorn_cost``).

V(C, a, b) = <P, C> + eps KL(P | a bᵀ), KL(P | Q) = sum P log(P / Q) - sum P + sum Q (the objective the plan
minimises; OTT's ``reg_ot_cost`` convention). By the envelope theorem, at the optimum dV/dC = P, and from the dual
V = max f'·a + g'·b - eps sum a_i b_j (exp((f'_i + g'_j - C_ij) / eps) - 1):
    dV/da_i = f'_i + eps (sum(b) - 1),  dV/db_j = g'_j + eps (sum(a) - 1),
with f'_i = -eps LSE_j((g_j - C_ij) / eps) and g'_j = -eps LSE_i((f_i - C_ij) / eps) (finite also where a_i or b_j
is 0). Only equal-mass perturbations of (a, b) are feasible, so (dV/da, dV/db) is defined up to (+t, -t); the one
returned has sum_i a_i dV/da_i = sum_j b_j dV/db_j. No backward pass through the iterations. Computed in float64.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def kl_to_product(plan, a, b):
    """KL(P | a bᵀ) = sum P log(P / (a bᵀ)) - sum P + sum a sum b [B] of plan [B, n, m], a [B, n], b [B, m] (0 log 0 =
    0; computed in the inputs' dtype)."""
    return (
        torch.xlogy(plan, plan).sum((1, 2))
        - torch.xlogy(plan.sum(2), a).sum(-1)
        - torch.xlogy(plan.sum(1), b).sum(-1)
        - plan.sum((1, 2))
        + a.sum(-1) * b.sum(-1)
    )


def value_and_gradients(cost, a, b, plan, g, eps: float):
    """cost, plan [B, n, m]; a [B, n]; b [B, m]; g [B, m] the plan's column potential (P = exp((f + g - C) / eps))
    -> (V [B], dV/da [B, n], dV/db [B, m]) in float64 (dV/dC is the plan)."""
    C, P, a, b, g = (t.double() for t in (cost, plan, a, b, g))
    mass_a, mass_b = a.sum(-1), b.sum(-1)
    value = (P * C).sum((1, 2)) + eps * kl_to_product(P, a, b)
    f_rel = -eps * torch.logsumexp((g[:, None, :] - C) / eps, dim=2)
    f = torch.where(a > 0, f_rel + eps * torch.log(torch.where(a > 0, a, torch.ones_like(a))), -torch.inf)
    g_rel = -eps * torch.logsumexp((f[:, :, None] - C) / eps, dim=1)
    grad_a = f_rel + eps * (mass_b[:, None] - 1.0)
    grad_b = g_rel + eps * (mass_a[:, None] - 1.0)
    shift = ((grad_a * a).sum(-1) - (grad_b * b).sum(-1)) / (mass_a + mass_b)
    return value, grad_a - shift[:, None], grad_b + shift[:, None]


class _SinkhornValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, plan, g, eps):
        value, grad_a, grad_b = value_and_gradients(cost, a, b, plan, g, eps)
        ctx.save_for_backward(plan, grad_a, grad_b)
        return value.to(cost.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value):
        plan, grad_a, grad_b = ctx.saved_tensors
        gv = grad_value.double()
        return (
            (gv[:, None, None] * plan.double()).to(plan.dtype),
            (gv[:, None] * grad_a).to(plan.dtype),
            (gv[:, None] * grad_b).to(plan.dtype),
            None,
            None,
            None,
        )


def sinkhorn_value(cost, a, b, plan, g, eps: float):
    """V [B] (the dtype of cost) of the converged plan [B, n, m] with column potential g [B, m], with the envelope
    gradient with respect to cost, a and b attached."""
    return _SinkhornValue.apply(cost, a, b, plan.detach(), g.detach(), float(eps))
