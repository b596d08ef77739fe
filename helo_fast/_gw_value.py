"""The value of a converged Gromov-Wasserstein plan and its envelope gradient (``helo_fast.gromov_wasserstein_cost``).

The squared-loss GW discrepancy of a plan Γ [n, m] between structures cs [n, n] and ct [m, m]:
    E(Γ) = sum_ijkl (cs_ik - ct_jl)² Γ_ij Γ_kl = rᵀ (cs∘cs) r + cᵀ (ct∘ct) c - 2 <Γ, cs Γ ctᵀ>,  r = Γ 1, c = Γᵀ 1.
The value: V = E(Γ) + 2 eps KL(Γ | a bᵀ) for solver="sinkhorn", V = E(Γ) for solver="ipot" (KL as ``_ot_value``).

Why 2 eps. For symmetric cs, ct the gradient of E on U(a, b) is 2 L(Γ), with L(Γ) = (cs∘cs) a 1ᵀ + 1 ((ct∘ct) b)ᵀ
- 2 cs Γ ctᵀ the cost HeLo's step linearises to (HELO_SPEC §4.4). The converged outer loop's Γ is the Sinkhorn plan
of its own linearisation, so L(Γ) + eps log(Γ / a bᵀ) = f ⊕ g; doubled, 2 L(Γ) + 2 eps log(Γ / a bᵀ) = 2f ⊕ 2g is
the stationarity condition of E + 2 eps KL on U(a, b) (with eps KL the fixed point is not stationary: its
finite-difference gradient differs from the envelope one by ~1e-3 at eps 0.05). IPOT run to its tolerance converges
to an unregularised OT plan of L(Γ) (its proximal term vanishes at the limit), so its fixed point is a stationary
point of E itself. A non-symmetric cs or ct breaks dE = 2 L dΓ, so the inputs are checked (``check_symmetric``).

Envelope gradient (partial derivatives at the stationary Γ, no backward pass through the iterations):
    dV/dcs = 2 (cs ∘ r rᵀ - Γ ct Γᵀ),   dV/dct = 2 (ct ∘ c cᵀ - Γᵀ cs Γ)   (symmetric, as the inputs);
    dV/da, dV/db (solver="sinkhorn") = 2 x those of the linear problem's value ``_ot_value`` on the cost L(Γ): the
    Lagrange multipliers of V's constraints are twice the dual potentials of Sinkhorn on L(Γ), which one more
    Sinkhorn solve on the final linearisation returns (run only when a or b requires grad). Same gauge as
    ``sinkhorn_cost``: sum a dV/da = sum b dV/db. For solver="ipot" they would be the duals of an unregularised OT
    problem, which IPOT does not return exactly: refused (``functional.gromov_wasserstein_cost``).
GW has local minima: this is the gradient of the value at the stationary point found, valid while that point moves
smoothly with the inputs. Computed in float64.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from ._gw_converged import constant_cost
from ._ot_value import kl_to_product, value_and_gradients

KL_WEIGHT = {"sinkhorn": 2.0, "ipot": 0.0}  # the multiple of eps on KL(Γ | a bᵀ) in V, per inner solver (see above)


def gw_discrepancy(cs, ct, plan):
    """E(Γ) = sum_ijkl (cs_ik - ct_jl)² Γ_ij Γ_kl [B] for cs [B, n, n], ct [B, m, m], plan [B, n, m]."""
    r, c = plan.sum(2), plan.sum(1)
    return (
        (((cs * cs) @ r[:, :, None]).squeeze(2) * r).sum(-1)
        + (((ct * ct) @ c[:, :, None]).squeeze(2) * c).sum(-1)
        - 2.0 * (plan * (cs @ plan @ ct.transpose(1, 2))).sum((1, 2))
    )


def linearised_cost(cs, ct, a, b, plan):
    """L(Γ) = (cs∘cs) a 1ᵀ + 1 ((ct∘ct) b)ᵀ - 2 cs Γ ctᵀ [B, n, m]: the cost of the outer loop's next inner solve."""
    return constant_cost(cs, ct, a, b) - 2.0 * cs @ plan @ ct.transpose(1, 2)


def marginal_potentials(cs, ct, a, b, plan, *, eps: float, inner_iters: int, tol: float, sinkhorn_solve: Callable):
    """One Sinkhorn solve (``sinkhorn_solve``: a backend's "sinkhorn_converged" signature) on the final linearisation
    L(Γ) -> (L [B, n, m], column potential g [B, m], iterations [B], violation [B]), for dV/da and dV/db."""
    cost = linearised_cost(cs, ct, a, b, plan)
    _plan, _f, g, iterations, violation = sinkhorn_solve(cost, a, b, eps=eps, n_iters=inner_iters, tol=tol, grad="none")
    return cost, g, iterations, violation


class _GromovWassersteinValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cs, ct, a, b, plan, grad_a, grad_b, kl_weight):
        C_s, C_t, P = cs.double(), ct.double(), plan.double()
        value = gw_discrepancy(C_s, C_t, P)
        if kl_weight:
            value = value + kl_weight * kl_to_product(P, a.double(), b.double())
        ctx.save_for_backward(cs, ct, plan, grad_a, grad_b)
        return value.to(cs.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value):
        cs, ct, plan, grad_a, grad_b = ctx.saved_tensors
        gv = grad_value.double()
        C_s, C_t, P = cs.double(), ct.double(), plan.double()
        r, c = P.sum(2), P.sum(1)
        grads = [None] * 8
        if ctx.needs_input_grad[0]:
            d_cs = 2.0 * (C_s * r[:, :, None] * r[:, None, :] - P @ C_t @ P.transpose(1, 2))
            grads[0] = (gv[:, None, None] * d_cs).to(cs.dtype)
        if ctx.needs_input_grad[1]:
            d_ct = 2.0 * (C_t * c[:, :, None] * c[:, None, :] - P.transpose(1, 2) @ C_s @ P)
            grads[1] = (gv[:, None, None] * d_ct).to(ct.dtype)
        for k, grad in ((2, grad_a), (3, grad_b)):
            if ctx.needs_input_grad[k]:
                if grad is None:  # the caller refuses this case in the forward; never return a silent None
                    raise RuntimeError(
                        "gromov_wasserstein_cost: no gradient with respect to the marginals was computed in the forward"
                    )
                grads[k] = (gv[:, None] * grad).to(cs.dtype)
        return tuple(grads)


def gromov_wasserstein_value(
    cs, ct, a, b, plan, *, eps: float, solver: str, potentials: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
):
    """V [B] (the dtype of cs) of the converged plan [B, n, m], with the envelope gradient with respect to cs and ct
    attached, and with respect to a and b when ``potentials`` = (L(Γ) [B, n, m], g [B, m]) of
    ``marginal_potentials`` is given (solver="sinkhorn")."""
    grad_a = grad_b = None
    if potentials is not None:
        cost, g = potentials
        _value, grad_a, grad_b = value_and_gradients(
            cost.detach(), a.detach(), b.detach(), plan.detach(), g.detach(), eps
        )
        grad_a, grad_b = 2.0 * grad_a, 2.0 * grad_b
    return _GromovWassersteinValue.apply(cs, ct, a, b, plan.detach(), grad_a, grad_b, KL_WEIGHT[solver] * eps)
