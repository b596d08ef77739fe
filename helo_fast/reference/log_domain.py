"""Log-domain helpers shared by the reference OT ops (sinkhorn, ipot, gromov_wasserstein): zero-mass marginals give
zero rows / columns and zero gradients, never NaN."""

from __future__ import annotations

import math

import torch


def detach_if(grad: str, *tensors):
    return tuple(t.detach() for t in tensors) if grad == "none" else tensors


def log_marginal(w):
    """log w, with -inf where w = 0 (a zero-mass row or column) and a zero gradient there, not 0 * inf."""
    positive = w > 0
    return torch.where(positive, torch.where(positive, w, torch.ones_like(w)).log(), -math.inf)


def logsumexp(x, dim):
    """torch.logsumexp over ``dim``; a slice that is all -inf (a zero-mass row or column) gives -inf with a zero
    gradient instead of NaN."""
    empty = torch.isneginf(x).all(dim=dim, keepdim=True)
    return torch.logsumexp(x.masked_fill(empty, 0.0), dim=dim).masked_fill(empty.squeeze(dim), -math.inf)


def log_ratio(log_w, lse):
    """log_w - lse, and -inf where log_w is -inf (zero mass: the plan's row or column is 0, whatever lse is)."""
    return torch.where(torch.isneginf(log_w), log_w, log_w - lse)
