"""What must match for a checkpoint to be resumed: a run's fingerprint, and the differences between two.

The fingerprint holds the options that change the numbers (the precision among them), the dataset's content
(SHA-256 of its arrays), and the environment that does: torch's thread count, the device, the number of
processes, the CPU capability and the backend each op of HeLo resolves to.
"""

from __future__ import annotations

import hashlib
import os
from typing import List

import numpy as np
import torch

from ..data import EmotionDataset
from .plan import RunPlan


def dataset_digest(dataset: EmotionDataset) -> str:
    """SHA-256 of the dataset's arrays (features, labels, subjects): a resume must see the same data."""
    digest = hashlib.sha256()
    for array in (dataset.features, dataset.labels, dataset.subjects):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def run_fingerprint(dataset: EmotionDataset, plan: RunPlan, world_size: int = 1) -> dict:
    """What must match for a checkpoint of ``plan``'s run on ``dataset`` to be resumed: the options that change the
    numbers, and the environment that does (torch's thread count, device, number of processes, kernel choices:
    ``plan.backends``)."""
    model_config, cfg, device = plan.model_config, plan.train_config, plan.device
    keys = (
        "protocol",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "lr_gamma",
        "seed",
        "folds",
        "test_fraction",
        "max_splits",
        "baselines",
        "baseline_modality",
        "dtype",
        "precision",
    )
    environment = {
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "HELO_FAST_CPU_ISA": os.environ.get("HELO_FAST_CPU_ISA"),
        "backends": dict(plan.backends),
    }
    return {
        "train": {k: getattr(cfg, k) for k in keys},
        "model": model_config.to_dict(),
        "environment": environment,
        "dataset": {
            "name": dataset.name,
            "rows": len(dataset),
            "features": int(dataset.features.shape[1]),
            "sha256": dataset_digest(dataset),
        },
    }


def fingerprint_differences(saved, current, prefix: str = "") -> List[str]:
    """ "key.sub: checkpoint X, this run Y" for every entry where two fingerprints differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in list(current) + [k for k in saved if k not in current]:
            out += fingerprint_differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [f"{prefix[:-1]}: checkpoint {saved!r}, this run {current!r}"]
