"""The HeLo model (``HeLo``, ``HeLoConfig``) and its loss, as HELO_SPEC specifies it (summary: docs/spec.md)."""

from .backends import HELO_OPS, op_backends
from .config import RELEASE_DEFECTS, HeLoConfig
from .helo import HeLo, HeLoOutput, module_classes
from .loss import HeLoLoss, helo_loss

__all__ = [
    "HeLo",
    "HeLoConfig",
    "HeLoOutput",
    "HeLoLoss",
    "helo_loss",
    "module_classes",
    "RELEASE_DEFECTS",
    "HELO_OPS",
    "op_backends",
]
