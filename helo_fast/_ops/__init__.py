"""The Python op index and the registry of implementations.

``OPS`` lists the public ops; ``helo_fast/_ops/<op>.py`` registers each op's C++ op (schema in csrc/schema.cpp) and
Triton op (``torch.library.custom_op``): fake kernels, autograd (lcd_attention's C++ op has its autograd in C++,
csrc/lcd_attention_autograd.cpp), autocast rules, and the entry point of each backend
with ``register(op, backend, fn)``; ``functional`` looks them up with ``get``. ``fn`` takes already-validated
inputs (marginals filled in).

``functional`` also registers each op's reference (plain PyTorch, under backend "reference"), so the fast ops'
backward can differentiate it when the backward itself must be differentiable (``create_graph=True``: Hessian-vector
products, gradient penalties; ``reference_vjp``) without this layer importing ``helo_fast.reference``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


def differentiable_backward_wanted(*tensors) -> bool:
    """Whether a fast op's backward must itself be differentiable: it runs with create_graph=True (grad mode is on
    inside a backward only then) and some input (None allowed) requires grad. False while torch.compile traces."""
    return (
        torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and any(t is not None and t.requires_grad for t in tensors)
    )


def reference_vjp(
    op: str, grad_out: torch.Tensor, inputs: Sequence[Optional[torch.Tensor]], run: Callable[[Callable], torch.Tensor]
) -> List[Optional[torch.Tensor]]:
    """The vector-Jacobian product of ``op``'s reference at ``inputs`` (the fast op's saved inputs), as a
    differentiable graph: the backward of a fast op under create_graph=True. ``run(reference)`` calls the reference
    on ``inputs`` with the op's other arguments and returns its output (the shape of ``grad_out``).

    Returns one gradient per input: None for an input that is None or does not require grad.
    """
    if not has_impl(op, "reference"):
        raise RuntimeError(
            f"the second derivative of helo_fast.{op} needs its reference, which helo_fast.functional "
            "registers: import helo_fast"
        )
    with torch.enable_grad():
        out = run(get(op, "reference"))
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out, create_graph=True, allow_unused=True)
    result: List[Optional[torch.Tensor]] = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        result[i] = g
    return result


def has_impl(op: str, backend: str) -> bool:
    return (op, backend) in _IMPLS


def get(op: str, backend: str) -> Callable:
    return _IMPLS[(op, backend)]


# Each module registers its op's C++ and Triton implementations (where available).
from . import sinkhorn, ipot, gromov_wasserstein, lcd_attention, seeded_dropout, ot_converged, ot_converged_triton  # noqa: E402,F401
