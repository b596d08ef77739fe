"""Reference Gromov-Wasserstein step of HeLo (HELO_SPEC §4.4) in plain PyTorch: linearise, solve with the reference
IPOT or Sinkhorn, repeat. Differentiates through the unrolled loops with ordinary autograd."""
from __future__ import annotations

from .._validation import validate_gromov_wasserstein
from .ipot import ipot
from .log_domain import detach_if
from .sinkhorn import sinkhorn


def constant_cost(cs, ct, a, b):
    """The marginal term of the linearised GW cost: (cs∘cs) a 1^T + 1 ((ct∘ct) b)^T -> [B, n, m]."""
    return (cs * cs) @ a[:, :, None] + ((ct * ct) @ b[:, :, None]).transpose(1, 2)


def gromov_wasserstein(cs, ct, a=None, b=None, *, eps=0.1, outer_iters=5, inner_iters=20, solver="ipot",
                       grad="none", check_finite=True):
    """HeLo's Gromov-Wasserstein step (HELO_SPEC §4.4): linearise, solve, repeat.

    cs: [B, n, n], ct: [B, m, m] structure matrices; a: [B, n], b: [B, m] (None = uniform).
    Gamma = a b^T; ``outer_iters`` times: L = const - 2 cs Gamma ct^T, Gamma = solver(L, eps,
    inner_iters) with solver "ipot" (beta = eps) or "sinkhorn". Returns Gamma [B, n, m].
    """
    a, b = validate_gromov_wasserstein(cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters,
                                       solver=solver, grad=grad, check_finite_values=check_finite)
    cs, ct, a, b = detach_if(grad, cs, ct, a, b)
    const = constant_cost(cs, ct, a, b)
    plan = a[:, :, None] * b[:, None, :]
    for _ in range(outer_iters):
        cost = const - 2.0 * cs @ plan @ ct.transpose(1, 2)
        if solver == "ipot":
            plan = ipot(cost, a, b, beta=eps, n_iters=inner_iters, grad=grad, check_finite=False)
        else:
            plan = sinkhorn(cost, a, b, eps=eps, n_iters=inner_iters, grad=grad, check_finite=False)
    return plan
