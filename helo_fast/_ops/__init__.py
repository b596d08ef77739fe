"""The Python op index and the registry of implementations.

``OPS`` lists the public ops; ``helo_fast/_ops/<op>.py`` registers each op's C++ op (schema in csrc/schema.cpp) and
Triton op (``torch.library.custom_op``): fake kernels, autograd, autocast rules, and the entry point of each backend
with ``register(op, backend, fn)``; ``functional`` looks them up with ``get``. ``fn`` takes already-validated
inputs (marginals filled in).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

OPS = ("sinkhorn", "ipot", "gromov_wasserstein", "lcd_attention", "seeded_dropout")

_IMPLS: Dict[Tuple[str, str], Callable] = {}


def register(op: str, backend: str, fn: Callable) -> Callable:
    """Record ``fn`` as the ``backend`` implementation of ``op``."""
    _IMPLS[(op, backend)] = fn
    return fn


def wants_grad(*tensors) -> bool:
    """Whether a call must keep what its backward needs: grad mode is on and some input (None allowed) requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def has_impl(op: str, backend: str) -> bool:
    return (op, backend) in _IMPLS


def get(op: str, backend: str) -> Callable:
    return _IMPLS[(op, backend)]


# Each module registers its op's C++ and Triton implementations (where available).
from . import sinkhorn, ipot, gromov_wasserstein, lcd_attention, seeded_dropout  # noqa: E402,F401
