"""``TrainConfig`` (everything about a run except the model and the data) and the checks of its values.

``TrainConfig`` checks its values once, when built (``check_train_values``); its errors name the field
(``lr_gamma``), or what ``error_names`` makes of it: the command line builds its TrainConfig with the option
names (``--lr-gamma``), so both refuse the same values with the same check.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass
from typing import Any, Callable, Mapping, Optional

import torch

from .._validation import check_choice, check_int_at_least, check_positive, check_probability
from ..data import PROTOCOLS
from .precision import PRECISIONS

BASELINE_MODALITIES = ("eeg", "gsr", "ppg", "video")
TRAIN_DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICE_TYPES = ("cpu", "cuda")


def _check_non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float >= 0, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite float >= 0, got {value}")
    return float(value)


def _check_optional_int(name: str, value, minimum: int) -> None:
    if value is not None:
        check_int_at_least(name, value, minimum)


def check_train_values(values: Mapping[str, Any], name: Callable[[str], str] = str) -> None:
    """Raise ValueError/TypeError, naming ``name(field)``, for the first bad value among the
    ``TrainConfig`` fields present in ``values`` (fields absent from ``values`` are not checked)."""
    checks = {
        "protocol": lambda n, v: check_choice(n, v, PROTOCOLS),
        "baseline_modality": lambda n, v: check_choice(n, v, BASELINE_MODALITIES),
        "dtype": lambda n, v: check_choice(n, v, tuple(TRAIN_DTYPES)),
        "precision": lambda n, v: check_choice(n, v, PRECISIONS),
        "epochs": lambda n, v: check_int_at_least(n, v, 1),
        "batch_size": lambda n, v: check_int_at_least(n, v, 1),
        "checkpoint_every": lambda n, v: check_int_at_least(n, v, 1),
        "folds": lambda n, v: check_int_at_least(n, v, 2),
        "seed": lambda n, v: check_int_at_least(n, v, 0),
        "max_splits": lambda n, v: _check_optional_int(n, v, 1),
        "threads": lambda n, v: _check_optional_int(n, v, 1),
        "lr": _check_learning_rate,
        "lr_gamma": check_positive,
        "weight_decay": _check_non_negative,
        "test_fraction": lambda n, v: check_probability(n, check_positive(n, v)),
    }
    for field, check in checks.items():
        if field in values:
            check(name(field), values[field])
    if values.get("resume") and not values.get("checkpoint_dir"):
        raise ValueError(f"{name('resume')} needs a {name('checkpoint_dir')}")


def _check_learning_rate(name: str, value) -> None:
    # Adam moves each parameter by about lr per step; above 1 the run diverges within a step or two.
    if check_positive(name, value) > 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


@dataclass
class TrainConfig:
    """Everything about a run except the model and the data (HELO_SPEC §7 defaults), its values checked when built.

    ``error_names`` (not a field): how an error names a field, ``str`` by default (``lr_gamma``); the command line
    passes ``cli.checks.option_name`` (``--lr-gamma``).
    """

    protocol: str = "subject-dependent"
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lr_gamma: float = 0.99
    seed: int = 3407
    folds: int = 5
    test_fraction: float = 0.2
    max_splits: Optional[int] = None  # only the first N splits (None: all)
    device: str = "auto"
    dtype: str = "float32"  # of the model and data: "float32" or "float64"
    precision: str = "32"  # "32", "bf16-mixed" or "16-mixed" (CUDA): see training.precision
    threads: Optional[int] = None  # torch.set_num_threads for the run (None: leave as is)
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 10
    resume: bool = False
    overwrite: bool = False  # replace the run already in checkpoint_dir (else refused)
    save_models: bool = True  # final model of each split -> checkpoint_dir/model_<i>.pt
    baselines: bool = True
    baseline_modality: str = "video"
    quiet: bool = False
    output_json: Optional[str] = None
    error_names: InitVar[Callable[[str], str]] = str

    def __post_init__(self, error_names: Callable[[str], str]):
        check_train_values(vars(self), error_names)
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str (cpu, cuda, cuda:<index> or auto), got {type(self.device).__name__}")


def resolve_device(device: str, name: str = "device") -> torch.device:
    """ "auto" -> cuda when available, else cpu; otherwise the cpu or cuda device named, checked to exist here.

    ValueError naming ``name`` for a string that is not a device, another device type (meta, ...),
    or a CUDA device this machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} {device!r} is not a device; use cpu, cuda, cuda:<index> or auto") from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"{name} {device!r}: training runs on {' or '.join(DEVICE_TYPES)}, not {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device!r}: no CUDA device is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
