"""The two baselines every split is scored against: the training-set mean distribution and a single-modality
MLP trained with the run's optimiser settings."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import edl_metrics
from .config import TrainConfig
from .step import evaluate, make_optimizer


class SingleModalityMLP(nn.Module):
    """Baseline: one block of the row (e.g. the video features) -> Linear -> ReLU -> Dropout -> Linear
    -> log_softmax. forward(x [B, F]) -> log-probabilities [B, C]."""

    def __init__(self, columns: slice, n_classes: int, hidden: int = 128, dropout: float = 0.5):
        super().__init__()
        self.columns = columns
        self.net = nn.Sequential(
            nn.Linear(columns.stop - columns.start, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x[:, self.columns]), dim=-1)


def mean_baseline(y_train: torch.Tensor, y_test: torch.Tensor) -> Dict[str, float]:
    """Metrics of predicting the training-set mean distribution for every test row."""
    mean = y_train.double().mean(dim=0, keepdim=True)
    return edl_metrics(y_test.cpu(), mean.expand_as(y_test).cpu())


def train_mlp_baseline(
    x_train, y_train, x_test, y_test, columns: slice, cfg: TrainConfig, seed: int
) -> Dict[str, float]:
    """Train the single-modality MLP with the run's optimiser settings; return its test metrics."""
    torch.manual_seed(seed)
    model = SingleModalityMLP(columns, y_train.shape[1]).to(x_train.device, x_train.dtype)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
    shuffle = torch.Generator().manual_seed(seed + 1)
    for _ in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(x_train.shape[0], generator=shuffle).split(cfg.batch_size):
            idx = idx.to(x_train.device)
            loss = F.kl_div(model(x_train[idx]), y_train[idx], reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return evaluate(model, x_test, y_test, cfg.batch_size)
