"""Time one HeLo training step (forward, backward, optimiser) for a backend: the demo's speed-up."""

from __future__ import annotations

import statistics
import time

import torch

from ..models import HeLo, HeLoConfig
from ..training.step import make_optimizer, train_step


def synthetic_batch(config: HeLoConfig, batch_size: int, seed: int = 0, device="cpu"):
    """Random features [B, F] and target distributions [B, C] of the config's sizes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, config.n_features, generator=gen)
    y = torch.softmax(2 * torch.randn(batch_size, config.n_classes, generator=gen), dim=-1)
    return x.to(device), y.to(device)


def median_step_seconds(
    config: HeLoConfig, backend: str, batch_size: int, steps: int = 10, warmup: int = 2, seed: int = 0, device="cpu"
) -> float:
    """Median wall time of ``steps`` training steps of HeLo(config, backend) after ``warmup`` steps."""
    torch.manual_seed(seed)
    model = HeLo(config, backend=backend, mask_seed=seed).to(device).train()
    optimizer = make_optimizer(model)
    x, y = synthetic_batch(config, batch_size, seed, device)
    times = []
    for step in range(warmup + steps):
        tic = time.perf_counter()
        train_step(model, optimizer, x, y)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - tic)
    return statistics.median(times)
