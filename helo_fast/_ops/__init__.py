"""torch.library custom ops (schemas, fake kernels, autograd) and the registry of implementations.

Each backend module registers its entry points with ``register(op, backend, fn)``; ``functional``
looks them up with ``get``. ``fn`` takes already-validated inputs (marginals filled in).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

_IMPLS: Dict[Tuple[str, str], Callable] = {}


def register(op: str, backend: str, fn: Callable) -> Callable:
    """Record ``fn`` as the ``backend`` implementation of ``op``."""
    _IMPLS[(op, backend)] = fn
    return fn


def has_impl(op: str, backend: str) -> bool:
    return (op, backend) in _IMPLS


def get(op: str, backend: str) -> Callable:
    return _IMPLS[(op, backend)]


from . import cpp_ot  # noqa: E402,F401  (registers the C++ OT ops)
from . import cpp_attention  # noqa: E402,F401  (registers the C++ fused attention)
from . import cpp_dropout  # noqa: E402,F401  (registers the C++ seeded dropout)
from . import triton_ops  # noqa: E402,F401  (registers the Triton ops)
