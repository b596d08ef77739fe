"""Drop-in nn.Modules backed by the fused ops, and ``convert`` / ``revert`` for existing models.

Each fast module subclasses its reference module (``helo_fast.reference.modules``): same
constructor arguments (plus ``backend=``), same parameters and ``state_dict`` keys; only the op
call is replaced by the ``helo_fast.functional`` op with the module's ``backend``.

    model = helo_fast.convert(model)    # in place: reference modules -> fused ones, weights kept
    model = helo_fast.revert(model)     # back to the reference modules
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from ._backend import BACKENDS
from ._validation import check_choice
from .reference import modules as reference_modules


class LCDAttention(reference_modules.LCDAttention):
    """Multi-head attention + residual + LayerNorm as ONE fused op (``functional.lcd_attention``).

    Same arguments and state_dict keys as ``helo_fast.reference.modules.LCDAttention``;
    forward(query [B, Lq, d], key_value [B, Lk, d] = None, bias = None, ...) -> [B, Lq, d].
    """

    def __init__(self, d_model: int, n_heads: int, *, ln_eps: float = 1e-5, bias_before_scale: bool = True,
                 backend: str = "auto"):
        super().__init__(d_model, n_heads, ln_eps=ln_eps, bias_before_scale=bias_before_scale)
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(self, query: torch.Tensor, key_value: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                *, dropkey_p: float = 0.0, dropout_p: float = 0.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The reference module's forward, with the projections of one input as one GEMM (Q, K, V of a
        self-attention; K, V of a cross-attention): one larger matmul and, in the backward, no sum of the input's
        three gradients. The heads are strided views of its output, which the fused op reads as they are."""
        if key_value is None:
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            q, k, v = F.linear(query, weight).chunk(3, dim=-1)
        else:
            q = self.q_proj(query)
            k, v = F.linear(key_value, torch.cat([self.k_proj.weight, self.v_proj.weight])).chunk(2, dim=-1)
        return self.attention_op(self._heads(q), self._heads(k), self._heads(v), bias, dropkey_p=dropkey_p,
                                 dropout_p=dropout_p, residual=query, ln_weight=self.norm.weight,
                                 ln_bias=self.norm.bias, ln_eps=self.norm.eps,
                                 bias_before_scale=self.bias_before_scale, generator=generator)

    def attention_op(self, *args, **kwargs):
        return functional.lcd_attention(*args, backend=self.backend, **kwargs)


class FusedGromovWasserstein(reference_modules.GromovWasserstein):
    """HeLo's GW step fused into one op per call; forward(cs [B, n, n], ct [B, m, m]) -> plan [B, n, m]."""

    def __init__(self, *, eps: float = 0.1, outer_iters: int = 5, inner_iters: int = 20, solver: str = "ipot",
                 grad: str = "none", backend: str = "auto"):
        super().__init__(eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, grad=grad)
        self.backend = check_choice("backend", backend, BACKENDS)

    def gromov_op(self, *args, **kwargs):
        return functional.gromov_wasserstein(*args, backend=self.backend, **kwargs)


class FusedSinkhorn(reference_modules.Sinkhorn):
    """Fused log-domain Sinkhorn; forward(cost [B, n, m], a [B, n] = None, b [B, m] = None) -> plan."""

    def __init__(self, *, eps: float, n_iters: int, grad: str = "unrolled", backend: str = "auto"):
        super().__init__(eps=eps, n_iters=n_iters, grad=grad)
        self.backend = check_choice("backend", backend, BACKENDS)

    def sinkhorn_op(self, *args, **kwargs):
        return functional.sinkhorn(*args, backend=self.backend, **kwargs)


class FusedDropout(reference_modules.SeededDropout):
    """Seeded dropout as one fused pass (``functional.seeded_dropout``); same masks as the reference module.

    forward(x [any shape], generator=None) -> same shape. No parameters.
    """

    def __init__(self, p: float = 0.5, *, backend: str = "auto"):
        super().__init__(p)
        self.backend = check_choice("backend", backend, BACKENDS)

    def dropout_op(self, *args, **kwargs):
        return functional.seeded_dropout(*args, backend=self.backend, **kwargs)


FAST_MODULES: Dict[Type[nn.Module], Type[nn.Module]] = {
    reference_modules.LCDAttention: LCDAttention,
    reference_modules.GromovWasserstein: FusedGromovWasserstein,
    reference_modules.Sinkhorn: FusedSinkhorn,
    reference_modules.SeededDropout: FusedDropout,
}
REFERENCE_MODULES = {fast: ref for ref, fast in FAST_MODULES.items()}


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Swap every reference module inside ``model`` for its fused counterpart, in place.

    Parameters, buffers and state_dict keys are unchanged (the module objects stay the same; only
    their class changes); fused modules already present get ``backend``. Works on a
    ``torch.compile``-d model too (it recompiles on the next call). Returns ``model``.
    """
    check_choice("backend", backend, BACKENDS)
    for module in model.modules():
        fast_cls = FAST_MODULES.get(type(module))
        if fast_cls is not None:
            module.__class__ = fast_cls
        if type(module) in REFERENCE_MODULES:
            module.backend = backend
    return model


def revert(model: nn.Module) -> nn.Module:
    """Undo ``convert``: every fused module inside ``model`` becomes its reference module again."""
    for module in model.modules():
        reference_cls = REFERENCE_MODULES.get(type(module))
        if reference_cls is not None:
            module.__class__ = reference_cls
            del module.backend
    return model
