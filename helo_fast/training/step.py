"""One optimisation step of a model, its predictions and its metrics: what training, the baselines, evaluation of
saved models and the demo's step timing share."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from ..metrics import METRIC_NAMES, edl_metrics
from ..models import HeLoConfig, helo_loss
from .distributed import DistContext, all_reduce_sum, shard
from .precision import autocast


def scored_rows(n_rows: int, batch_size: int, first_sample_only: bool) -> np.ndarray:
    """Rows that count in the metrics: all, or (release defect) the first row of each test batch."""
    rows = np.arange(n_rows)
    return rows[::batch_size] if first_sample_only else rows


def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """HELO_SPEC §7's Adam, PyTorch's fused implementation: one pass over each parameter instead of about ten
    (on CPU ~12x faster than the default for-loop at HeLo's 4 M parameters, ~20% of a fused-model training step).

    Its rounding differs from the default implementation's in an ulp here and there, which HeLo's GW step amplifies
    as it does any rounding change (~0.2% in the metrics after 2 epochs); a 2-process DDP run still equals the
    single-process one (tests/training/test_distributed.py, torch 2.13; an earlier session's torch did not, and kept the
    default).
    """
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: Optional[HeLoConfig] = None,
    batch_total: Optional[int] = None,
    loss_scale: float = 1.0,
    precision: str = "32",
    scaler: Optional[torch.amp.GradScaler] = None,
):
    """One optimisation step: forward and HeLo loss (``config``'s terms, default ``model.config``) under the
    autocast of ``precision`` (``precision.py``), backward of ``loss * loss_scale`` (scaled by ``scaler`` when
    given, for 16-mixed), optimiser step.

    x: [B, F] features; y: [B, C] target distributions; ``batch_total``: see ``helo_loss`` (the
    global batch size in data-parallel training). Returns (loss, {"kl", "corr"}).
    """
    config = model.config if config is None else config
    with autocast(precision, x.device):
        loss, parts = helo_loss(
            model(x), y, kl_reduction=config.kl_reduction, lambda_corr=config.lambda_corr, batch_total=batch_total
        )
    optimizer.zero_grad()
    total = loss * loss_scale if loss_scale != 1.0 else loss
    if scaler is None:
        total.backward()
        optimizer.step()
    else:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss, parts


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, precision: str = "32") -> torch.Tensor:
    """Predicted distributions [rows, C] of ``model`` (eval mode) in batches of ``batch_size``, under the autocast
    of ``precision``."""
    model.eval()
    outs = []
    for start in range(0, x.shape[0], batch_size):
        with autocast(precision, x.device):
            out = model(x[start : start + batch_size])
        outs.append(out.probs if isinstance(out, tuple) else out.exp())
    return torch.cat(outs)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    first_sample_only: bool = False,
    ctx: DistContext = DistContext(),
    precision: str = "32",
) -> Dict[str, float]:
    """The six metrics of ``model`` on (x [rows, F], y [rows, C]) (``first_sample_only``: release defect), its
    predictions made in ``precision``.

    Under data parallelism each rank scores its share of the rows and the per-row sums are reduced.
    """
    rows = torch.from_numpy(scored_rows(x.shape[0], batch_size, first_sample_only)).to(x.device)
    if not ctx.enabled:
        probs = predict(model, x, batch_size, precision)
        return edl_metrics(y[rows].cpu(), probs[rows].cpu())
    mine = shard(rows, ctx)
    sums = torch.zeros(len(METRIC_NAMES) + 1, dtype=torch.float64, device=x.device)
    if len(mine):
        per_row = edl_metrics(y[mine].cpu(), predict(model, x[mine], batch_size, precision).cpu(), per_sample=True)
        sums[:-1] = torch.stack([per_row[m].sum() for m in METRIC_NAMES]).to(x.device)
        sums[-1] = len(mine)
    all_reduce_sum(sums, ctx)
    return {m: float(sums[i] / sums[-1]) for i, m in enumerate(METRIC_NAMES)}
