"""HeLo's training loss (HELO_SPEC §5, §7): KL(y || y_hat) + lambda_corr * L_corr."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice
from .config import KL_REDUCTIONS, HeLoConfig
from .helo import HeLoOutput


def target_correlation(target: torch.Tensor) -> torch.Tensor:
    """R = dn dn^T with dn = y / ||y||_2 per sample. target [B, C] -> [B, C, C]."""
    unit = F.normalize(target, dim=-1)
    return unit[:, :, None] * unit[:, None, :]


def helo_loss(
    output: HeLoOutput,
    target: torch.Tensor,
    *,
    kl_reduction: str = "batchmean",
    lambda_corr: float = 1.0,
    batch_total: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss and its parts {"kl", "corr"}.

    output: HeLoOutput (log_probs [B, C], label_correlation R_hat [C, C], or [B, C, C] with one per sample);
    target: [B, C] distributions.
    kl = sum y (log y - log y_hat), divided by the batch size for "batchmean", summed for "sum";
    corr = mean over the batch of the mean over all C x C entries of (R_hat - R)^2 (each sample's own
    R_hat when there is one per sample).
    ``batch_total`` replaces B as the divisor of the batch means (data-parallel training passes the
    global batch size, so each process's loss is its share of the global-batch loss).
    """
    check_choice("kl_reduction", kl_reduction, KL_REDUCTIONS)
    if target.shape != output.log_probs.shape:
        raise ValueError(f"target must have shape [B, C] = {tuple(output.log_probs.shape)}, got {tuple(target.shape)}")
    batch, classes = target.shape
    if output.label_correlation.shape not in ((classes, classes), (batch, classes, classes)):
        raise ValueError(
            f"output.label_correlation must have shape [C, C] = {(classes, classes)} or [B, C, C] = "
            f"{(batch, classes, classes)}, got {tuple(output.label_correlation.shape)}"
        )
    rows = batch if batch_total is None else batch_total
    kl = F.kl_div(output.log_probs, target, reduction="sum")
    kl = kl / rows if kl_reduction == "batchmean" else kl
    r = target_correlation(target)
    corr = (output.label_correlation - r).square().mean(dim=(1, 2)).sum() / rows
    return kl + lambda_corr * corr, {"kl": kl.detach(), "corr": corr.detach()}


class HeLoLoss(nn.Module):
    """``helo_loss`` with ``kl_reduction`` and ``lambda_corr`` taken from a HeLoConfig."""

    def __init__(self, config: HeLoConfig):
        super().__init__()
        self.kl_reduction, self.lambda_corr = config.kl_reduction, config.lambda_corr

    def forward(self, output: HeLoOutput, target: torch.Tensor):
        return helo_loss(output, target, kl_reduction=self.kl_reduction, lambda_corr=self.lambda_corr)
