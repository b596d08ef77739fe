"""The six emotion-distribution-learning measures of HELO_SPEC §9."""
from __future__ import annotations

from typing import Dict, Union

import numpy as np
import torch

METRIC_NAMES = ("chebyshev", "clark", "canberra", "kl", "cosine", "intersection")
LOWER_IS_BETTER = {"chebyshev": True, "clark": True, "canberra": True, "kl": True, "cosine": False,
                   "intersection": False}
_EPS = 1e-12  # clip only where a division or a log needs it


def _as_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise TypeError(f"{name} must be a floating-point array, got {x.dtype}")
    return x.detach().to(torch.float64)


def edl_metrics(y_true, y_pred, *, per_sample: bool = False) -> Dict[str, Union[float, torch.Tensor]]:
    """Chebyshev, Clark, Canberra, KL (lower is better), Cosine, Intersection (higher is better).

    y_true, y_pred: [N, C] (or [C]) distributions, torch or numpy. Returns a dict of floats, the
    mean over samples; with ``per_sample=True`` a dict of float64 tensors [N] instead.
    """
    y = _as_tensor("y_true", y_true)
    p = _as_tensor("y_pred", y_pred)
    y = y[None] if y.dim() == 1 else y
    p = p[None] if p.dim() == 1 else p
    if y.dim() != 2 or y.shape != p.shape:
        raise ValueError(f"y_true and y_pred must both have shape [N, C]; got {tuple(y.shape)} and {tuple(p.shape)}")
    if not (bool(torch.isfinite(y).all()) and bool(torch.isfinite(p).all())):
        raise ValueError("y_true and y_pred must be finite")
    if bool((y < 0).any()) or bool((p < 0).any()):
        raise ValueError("y_true and y_pred must be non-negative distributions")
    diff = p - y
    total = (p + y).clamp_min(_EPS)
    values = {
        "chebyshev": diff.abs().amax(dim=1),
        "clark": torch.sqrt((diff.square() / total.square()).sum(dim=1)),
        "canberra": (diff.abs() / total).sum(dim=1),
        "kl": torch.where(y > 0, y * (y.clamp_min(_EPS).log() - p.clamp_min(_EPS).log()), torch.zeros_like(y)).sum(dim=1),
        "cosine": (y * p).sum(dim=1) / (y.norm(dim=1) * p.norm(dim=1)).clamp_min(_EPS),
        "intersection": torch.minimum(y, p).sum(dim=1),
    }
    if per_sample:
        return values
    return {name: float(v.mean()) for name, v in values.items()}
