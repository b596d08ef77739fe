"""Reference batched log-domain IPOT (HELO_SPEC §4.5) in plain PyTorch: the ground truth for the fused kernels."""
from __future__ import annotations

import math

import torch

from .._validation import validate_ot
from .log_domain import detach_if, log_marginal, log_ratio, logsumexp


def ipot(cost, a=None, b=None, *, beta, n_iters, grad="none", check_finite=True):
    """Batched inexact proximal-point OT (HELO_SPEC §4.5), computed in the log domain.

    cost: [B, n, m]; a: [B, n], b: [B, m] (None = uniform); beta > 0 the proximal step.
    T = 1, A = exp(-cost/beta), sigma = 1/m; each iteration: Q = A∘T, delta = a / (Q sigma),
    sigma = b / (Q^T delta), T = diag(delta) Q diag(sigma). Returns T [B, n, m]. Zero entries of a (b) give zero
    rows (columns) of T and a zero gradient with respect to those entries.
    """
    a, b = validate_ot(cost, a, b, beta=beta, n_iters=n_iters, grad=grad, check_finite_values=check_finite)
    cost, a, b = detach_if(grad, cost, a, b)
    log_a, log_b = log_marginal(a), log_marginal(b)
    log_kernel = -cost / beta
    log_plan = torch.zeros_like(cost)
    log_sigma = torch.full_like(log_b, -math.log(cost.shape[2]))
    for _ in range(n_iters):
        log_q = log_kernel + log_plan
        log_delta = log_ratio(log_a, logsumexp(log_q + log_sigma[:, None, :], dim=2))
        log_sigma = log_ratio(log_b, logsumexp(log_q + log_delta[:, :, None], dim=1))
        log_plan = log_delta[:, :, None] + log_q + log_sigma[:, None, :]
    return torch.exp(log_plan)
