"""A run's plan: its two configs and what they resolve to on this machine, each decided once.

``plan_run`` resolves the device (this process's GPU under torchrun), checks the precision against it, and
resolves the backend each op of HeLo gets (``models.op_backends``). The experiment, its fingerprint and the demo
read the plan; none of them resolves these again. Library callers get a plan from ``run_experiment``; the command
line builds it itself, with its option names in the errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from ..models import HeLoConfig, op_backends
from .config import TrainConfig, resolve_device
from .distributed import local_device
from .precision import check_precision


@dataclass(frozen=True)
class RunPlan:
    """``model_config`` and ``train_config`` with ``device`` (where this process trains; the precision checked for
    it) and ``backends`` ({op: backend} for the ops of HeLo)."""

    model_config: HeLoConfig
    train_config: TrainConfig
    device: torch.device
    backends: Dict[str, str]


def plan_run(model_config: HeLoConfig, train_config: TrainConfig, error_names: Callable[[str], str] = str) -> RunPlan:
    """The plan of a run of ``model_config`` under ``train_config`` here.

    ValueError naming ``error_names("device")`` / ``error_names("precision")`` for a device this machine lacks or a
    precision that cannot train there; RuntimeError (from ``choose_backend``) when ``model_config.backend`` names
    a backend that cannot run one of HeLo's ops here.
    """
    device = local_device(resolve_device(train_config.device, error_names("device")))
    check_precision(error_names("precision"), train_config.precision, device, train_config.dtype)
    return RunPlan(model_config, train_config, device, op_backends(model_config.backend, device))
