"""torch.library custom ops (schemas, fake kernels, autograd) and the registry of implementations.

Each backend module registers its entry points with ``register(op, backend, fn)``; ``functional``
looks them up with ``get``. ``fn`` takes already-validated inputs (marginals filled in).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

_IMPLS: Dict[Tuple[str, str], Callable] = {}


def register(op: str, backend: str, fn: Callable) -> Callable:
    """Record ``fn`` as the ``backend`` implementation of ``op``."""
    _IMPLS[(op, backend)] = fn
    return fn


def register_seeded_dropout_autograd(qualname: str, op: Callable) -> None:
    """Autograd of a seeded dropout op ``op(x, seed, p)`` (registered as ``qualname``): linear in x with a mask
    fixed by the seed, so its backward is ``op(grad, seed, p)`` and the seed is all it saves."""

    def setup_context(ctx, inputs, output):
        _, seed, ctx.p = inputs
        ctx.save_for_backward(seed)

    def backward(ctx, grad_out):
        (seed,) = ctx.saved_tensors
        return op(grad_out, seed, ctx.p), None, None

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


def has_impl(op: str, backend: str) -> bool:
    return (op, backend) in _IMPLS


def get(op: str, backend: str) -> Callable:
    return _IMPLS[(op, backend)]


from . import cpp_ot  # noqa: E402,F401  (registers the C++ OT ops)
from . import cpp_attention  # noqa: E402,F401  (registers the C++ fused attention)
from . import cpp_dropout  # noqa: E402,F401  (registers the C++ seeded dropout)
from . import triton_ops  # noqa: E402,F401  (registers the Triton ops)
