"""Reference batched log-domain Sinkhorn in plain PyTorch: the ground truth for the fused kernels."""
from __future__ import annotations

import torch

from .._validation import validate_ot
from .log_domain import detach_if, log_marginal, log_ratio, logsumexp


def sinkhorn(cost, a=None, b=None, *, eps, n_iters, grad="unrolled", check_finite=True):
    """Batched log-domain entropic OT (POT's ``sinkhorn_log`` iteration order).

    cost: [B, n, m]; a: [B, n], b: [B, m] marginals (None = uniform); eps > 0; exactly
    ``n_iters`` iterations, column potential first. Returns the plan [B, n, m] =
    exp((f_i + g_j - cost_ij) / eps). Zero entries of a (b) give zero rows (columns) of the plan and a zero
    gradient with respect to those entries.
    """
    a, b = validate_ot(cost, a, b, eps=eps, n_iters=n_iters, grad=grad, check_finite_values=check_finite)
    cost, a, b = detach_if(grad, cost, a, b)
    log_a, log_b = log_marginal(a), log_marginal(b)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(n_iters):
        g = eps * log_ratio(log_b, logsumexp((f[:, :, None] - cost) / eps, dim=1))
        f = eps * log_ratio(log_a, logsumexp((g[:, None, :] - cost) / eps, dim=2))
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)
