"""The six emotion-distribution-learning measures of HELO_SPEC §9."""

from __future__ import annotations

from typing import Dict, Tuple, Union

import numpy as np
import torch

METRIC_NAMES = ("chebyshev", "clark", "canberra", "kl", "cosine", "intersection")
LOWER_IS_BETTER = {
    "chebyshev": True,
    "clark": True,
    "canberra": True,
    "kl": True,
    "cosine": False,
    "intersection": False,
}
ROW_SUM_TOLERANCE = 1e-3  # above rounding in float16 (softmax rows miss 1 by up to ~4e-4), 32 and 64; not bfloat16


def _as_rows(name: str, x) -> Tuple[torch.Tensor, torch.dtype]:
    """x (torch or numpy, [N, C] or [C]) -> (float64 rows [N, C], x's own dtype)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point array, got {x.dtype}")
    rows = x.detach().to(torch.float64)
    return (rows[None] if rows.dim() == 1 else rows), x.dtype


def _check_distribution(name: str, rows: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise ValueError naming ``name`` unless every row of ``rows`` [N, C] is finite, non-negative and sums
    to 1 within ROW_SUM_TOLERANCE, or within ``dtype``'s eps where that is larger (bfloat16: rounding a
    softmax row to 8 significant bits alone moves its sum by up to ~3e-3)."""
    if not bool(torch.isfinite(rows).all()):
        raise ValueError(f"{name} must be finite")
    if bool((rows < 0).any()):
        raise ValueError(f"{name} must be non-negative (a distribution per row), got a minimum of {float(rows.min())}")
    tolerance = max(ROW_SUM_TOLERANCE, torch.finfo(dtype).eps)
    miss = (rows.sum(dim=1) - 1.0).abs()
    if bool((miss > tolerance).any()):
        worst = int(miss.argmax())
        raise ValueError(
            f"each row of {name} must sum to 1 (within {tolerance:g}); row {worst} sums to {float(rows[worst].sum())!r}"
        )


def edl_metrics(y_true, y_pred, *, per_sample: bool = False) -> Dict[str, Union[float, torch.Tensor]]:
    """Chebyshev, Clark, Canberra, KL (lower is better), Cosine, Intersection (higher is better).

    y_true, y_pred: [N, C] (or [C]) distributions, torch or numpy, N >= 1: finite, non-negative, each row
    summing to 1 within 1e-3 (within the dtype's eps for bfloat16), else ValueError naming the argument.
    Computed in float64. Returns a dict of floats, the mean over samples; with ``per_sample=True`` a dict of
    float64 tensors [N] instead.

    Nothing is clipped except where a log needs it (HELO_SPEC §9): KL = sum over y > 0 of y log(y / p) takes
    p at least the smallest normal number of y_pred's dtype (``torch.finfo(dtype).tiny``: 2.2e-308 in float64,
    1.2e-38 in float32), so a zero prediction gives a large finite KL and any normal p (1e-15 say) counts as it
    is. Clark and Canberra sum |y - p| / (y + p) terms, which are scale-free, so the only guard is 0/0 := 0
    where y = p = 0; Cosine divides by norms that valid rows keep away from 0.

    Args:
        y_true: [N, C] or [C] true distributions (torch tensor or numpy array, any float dtype), N >= 1.
        y_pred: the predicted distributions, the shape of ``y_true``.
        per_sample: False (default) averages over the N rows; True returns each row's values.

    Returns:
        {"chebyshev", "clark", "canberra", "kl", "cosine", "intersection"} -> float (the mean over rows), or
        -> float64 tensor [N] with ``per_sample=True``.

    Raises:
        ValueError: shapes that differ or are not [N, C] / [C], no rows, or a row that is not a distribution
            (NaN/inf, a negative entry, a sum off 1); the message names the argument.

    Example:
        >>> import torch, helo_fast
        >>> y = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        >>> scores = helo_fast.edl_metrics(y, y)
        >>> scores["chebyshev"], scores["intersection"]
        (0.0, 1.0)
    """
    y, y_dtype = _as_rows("y_true", y_true)
    p, p_dtype = _as_rows("y_pred", y_pred)
    if y.dim() != 2 or y.shape != p.shape:
        raise ValueError(f"y_true and y_pred must both have shape [N, C]; got {tuple(y.shape)} and {tuple(p.shape)}")
    if y.shape[0] == 0:
        raise ValueError("y_true and y_pred must have at least one row (the metrics are means over rows)")
    _check_distribution("y_true", y, y_dtype)
    _check_distribution("y_pred", p, p_dtype)
    diff, total = p - y, p + y
    ratio = torch.where(total > 0, diff.abs() / total, 0.0)
    log_p = p.clamp_min(torch.finfo(p_dtype).tiny).log()
    values = {
        "chebyshev": diff.abs().amax(dim=1),
        "clark": torch.sqrt(ratio.square().sum(dim=1)),
        "canberra": ratio.sum(dim=1),
        "kl": torch.where(y > 0, y * (y.log() - log_p), 0.0).sum(dim=1),
        "cosine": (y * p).sum(dim=1) / (y.norm(dim=1) * p.norm(dim=1)),
        "intersection": torch.minimum(y, p).sum(dim=1),
    }
    if per_sample:
        return values
    return {name: float(v.mean()) for name, v in values.items()}
