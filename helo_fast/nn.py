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
from ._validation import OT_SOLVERS, check_choice
from .reference import modules as reference_modules


class LCDAttention(reference_modules.LCDAttention):
    """Multi-head (cross-)attention + residual + LayerNorm as ONE fused op (``helo_fast.lcd_attention``).

    out = LayerNorm(query + concat_h softmax(DropKey(logits_h)) V_h), no projection biases, no output projection;
    HeLo's three attentions. Same arguments, parameters (``q_proj``, ``k_proj``, ``v_proj``: Linear d -> d without
    bias; ``norm``: LayerNorm(d)) and state_dict keys as ``helo_fast.reference.modules.LCDAttention``.

    Args:
        d_model: int, the feature width d, divisible by ``n_heads``.
        n_heads: int >= 1, the number of heads (head size d / n_heads; the scale is its -1/2 power).
        ln_eps: float > 0, LayerNorm's epsilon.
        bias_before_scale: True adds the bias to q kᵀ before the scaling (HeLo's LCD-CA), False after it.
        backend: "auto", "reference", "cpp" or "triton" (see ``helo_fast.lcd_attention``).

    forward(query, key_value=None, bias=None, *, dropkey_p=0.0, dropout_p=0.0, generator=None):
        query [B, Lq, d]; key_value [B, Lk, d] (None: self-attention); bias broadcastable to [B, H, Lq, Lk];
        dropkey_p, dropout_p in [0, 1) (the caller passes 0 where masks are off, e.g. in eval mode); generator:
        the torch.Generator the mask seed is drawn from. Returns [B, Lq, d] in the dtype of ``query``.

    Raises:
        ValueError: ``d_model`` not divisible by ``n_heads``, an unknown ``backend``; in forward, what
            ``helo_fast.lcd_attention`` raises.

    Example:
        >>> import torch, helo_fast.nn
        >>> attention = helo_fast.nn.LCDAttention(128, 4)
        >>> attention(torch.randn(8, 18, 128), torch.randn(8, 18, 128)).shape
        torch.Size([8, 18, 128])
    """

    def __init__(
        self, d_model: int, n_heads: int, *, ln_eps: float = 1e-5, bias_before_scale: bool = True, backend: str = "auto"
    ):
        super().__init__(d_model, n_heads, ln_eps=ln_eps, bias_before_scale=bias_before_scale)
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(
        self,
        query: torch.Tensor,
        key_value: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        *,
        dropkey_p: float = 0.0,
        dropout_p: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """The reference module's forward, with the projections of one input as one GEMM (Q, K, V of a
        self-attention; K, V of a cross-attention): one larger matmul and, in the backward, no sum of the input's
        three gradients. The heads are strided views of its output, which the fused op reads as they are."""
        if key_value is None:
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            q, k, v = F.linear(query, weight).chunk(3, dim=-1)
        else:
            q = self.q_proj(query)
            k, v = F.linear(key_value, torch.cat([self.k_proj.weight, self.v_proj.weight])).chunk(2, dim=-1)
        return self.attention_op(
            self._heads(q),
            self._heads(k),
            self._heads(v),
            bias,
            dropkey_p=dropkey_p,
            dropout_p=dropout_p,
            residual=query,
            ln_weight=self.norm.weight,
            ln_bias=self.norm.bias,
            ln_eps=self.norm.eps,
            bias_before_scale=self.bias_before_scale,
            generator=generator,
        )

    def attention_op(self, *args, **kwargs):
        return functional.lcd_attention(*args, backend=self.backend, **kwargs)


class FusedGromovWasserstein(reference_modules.GromovWasserstein):
    """HeLo's Gromov-Wasserstein step (``helo_fast.gromov_wasserstein``) as a module; no parameters.

    Args:
        eps: float > 0, the inner solver's beta (IPOT) or eps (Sinkhorn).
        outer_iters: int >= 1, the number of cost linearisations.
        inner_iters: int >= 1, the iterations of each inner solve.
        solver: "ipot" (HeLo) or "sinkhorn".
        grad: "none" (the plan is detached, as in HeLo) or "unrolled".
        backend: "auto", "reference", "cpp" or "triton".

    forward(cs, ct): cs [B, n, n], ct [B, m, m] structure matrices -> plan [B, n, m] with uniform marginals, in
    the dtype of ``cs``. The arguments are checked on each call (ValueError / TypeError naming the argument).

    Example:
        >>> import torch, helo_fast.nn
        >>> step = helo_fast.nn.FusedGromovWasserstein(eps=0.1, outer_iters=5, inner_iters=20)
        >>> step(torch.rand(4, 36, 36), torch.rand(4, 36, 36)).shape
        torch.Size([4, 36, 36])
    """

    def __init__(
        self,
        *,
        eps: float = 0.1,
        outer_iters: int = 5,
        inner_iters: int = 20,
        solver: str = "ipot",
        grad: str = "none",
        backend: str = "auto",
    ):
        super().__init__(eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, grad=grad)
        self.backend = check_choice("backend", backend, BACKENDS)

    def gromov_op(self, *args, **kwargs):
        return functional.gromov_wasserstein(*args, backend=self.backend, **kwargs)


class FusedSinkhorn(reference_modules.Sinkhorn):
    """Batched log-domain Sinkhorn (``helo_fast.sinkhorn``) as a module; no parameters.

    Args:
        eps: float > 0, the entropic regularisation.
        n_iters: int >= 1, the number of iterations.
        grad: "unrolled" (the exact gradient of the iterations) or "none" (detached).
        backend: "auto", "reference", "cpp" or "triton".

    forward(cost, a=None, b=None): cost [B, n, m]; a [B, n], b [B, m] marginals (None: uniform) -> plan [B, n, m]
    in the dtype of ``cost``. The arguments are checked on each call (ValueError / TypeError naming the argument).

    Example:
        >>> import torch, helo_fast.nn
        >>> helo_fast.nn.FusedSinkhorn(eps=0.05, n_iters=50)(torch.rand(2, 3, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, *, eps: float, n_iters: int, grad: str = "unrolled", backend: str = "auto"):
        super().__init__(eps=eps, n_iters=n_iters, grad=grad)
        self.backend = check_choice("backend", backend, BACKENDS)

    def sinkhorn_op(self, *args, **kwargs):
        return functional.sinkhorn(*args, backend=self.backend, **kwargs)


class FusedDropout(reference_modules.SeededDropout):
    """Seeded dropout (``helo_fast.seeded_dropout``) as an ``nn.Dropout``; the reference module's masks; no parameters.

    Args:
        p: float in [0, 1), the probability of dropping an element (ValueError / TypeError otherwise).
        backend: "auto", "reference", "cpp" or "triton".

    forward(x, generator=None): x of any shape (at most 2**32 elements) -> the same shape and dtype: x * 1/(1 - p)
    where kept and 0 where dropped in training mode, x itself in eval mode. One seed is drawn from ``generator``
    (None: torch's default CPU generator) per call.

    Example:
        >>> import torch, helo_fast.nn
        >>> dropout = helo_fast.nn.FusedDropout(0.5)
        >>> dropout(torch.ones(4, 64), generator=torch.Generator().manual_seed(0)).unique().tolist()
        [0.0, 2.0]
    """

    def __init__(self, p: float = 0.5, *, backend: str = "auto"):
        super().__init__(p)
        self.backend = check_choice("backend", backend, BACKENDS)

    def dropout_op(self, *args, **kwargs):
        return functional.seeded_dropout(*args, backend=self.backend, **kwargs)


class SinkhornLoss(nn.Module):
    """The converged regularised OT value (``helo_fast.sinkhorn_cost``) as a loss, with its envelope gradient (no
    backward pass through the iterations); no parameters, no reference counterpart (``convert`` leaves it alone).

    Args:
        eps: float > 0, the entropic regularisation.
        n_iters: int >= 1, the iteration cap.
        tol: float > 0, the convergence tolerance (sum_j |sum_i P_ij - b_j|).
        reduction: "mean" (default), "sum" or "none" over the batch.
        strict: True raises ``OTConvergenceError`` instead of warning when a problem reaches ``n_iters``.
        backend: "auto", "reference" or "cpp" (tol runs there).

    forward(cost, a=None, b=None): cost [B, n, m]; a [B, n], b [B, m] marginals (None: uniform) -> the values [B]
    reduced as ``reduction`` says, in the dtype of ``cost``.

    Example:
        >>> import torch, helo_fast.nn
        >>> loss = helo_fast.nn.SinkhornLoss(eps=0.1, n_iters=1000, tol=1e-6)
        >>> loss(torch.rand(4, 3, 5)).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        eps: float,
        n_iters: int,
        tol: float,
        reduction: str = "mean",
        strict: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.eps, self.n_iters, self.tol, self.strict = eps, n_iters, tol, strict
        self.reduction = check_choice("reduction", reduction, ("mean", "sum", "none"))
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(
        self, cost: torch.Tensor, a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        value = functional.sinkhorn_cost(
            cost, a, b, eps=self.eps, n_iters=self.n_iters, tol=self.tol, strict=self.strict, backend=self.backend
        )
        return value if self.reduction == "none" else getattr(value, self.reduction)()

    def extra_repr(self) -> str:
        return f"eps={self.eps}, n_iters={self.n_iters}, tol={self.tol}, reduction={self.reduction!r}"


class GromovWassersteinLoss(nn.Module):
    """The converged Gromov-Wasserstein value (``helo_fast.gromov_wasserstein_cost``) as a loss, with its envelope
    gradient (no backward pass through the iterations); no parameters, no reference counterpart (``convert`` leaves
    it alone).

    Args:
        eps: float > 0, the inner solver's eps (Sinkhorn) or beta (IPOT).
        outer_iters: int >= 1, the cap on the linearisations.
        inner_iters: int >= 1, the cap on each inner solve's iterations.
        tol: float > 0, the tolerance of the outer loop (plan change, L1) and of each inner solve.
        solver: "sinkhorn" (default: V = GW discrepancy + 2 eps KL(Γ | a bᵀ)) or "ipot" (the discrepancy alone).
        reduction: "mean" (default), "sum" or "none" over the batch.
        strict: True raises ``OTConvergenceError`` instead of warning when a problem reaches a cap.
        backend: "auto", "reference", "cpp" or "triton".

    forward(cs, ct, a=None, b=None): cs [B, n, n], ct [B, m, m] symmetric structure matrices; a [B, n], b [B, m]
    marginals (None: uniform) -> the values [B] reduced as ``reduction`` says, in the dtype of ``cs``.

    Example:
        >>> import torch, helo_fast.nn
        >>> loss = helo_fast.nn.GromovWassersteinLoss(eps=0.5, outer_iters=100, inner_iters=1000, tol=1e-6)
        >>> gen = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(4, 3, 3, generator=gen), torch.rand(4, 5, 5, generator=gen)
        >>> loss(x + x.transpose(1, 2), y + y.transpose(1, 2)).shape
        torch.Size([])
    """

    def __init__(
        self,
        *,
        eps: float,
        outer_iters: int,
        inner_iters: int,
        tol: float,
        solver: str = "sinkhorn",
        reduction: str = "mean",
        strict: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.eps, self.outer_iters, self.inner_iters, self.tol, self.strict = eps, outer_iters, inner_iters, tol, strict
        self.solver = check_choice("solver", solver, OT_SOLVERS)
        self.reduction = check_choice("reduction", reduction, ("mean", "sum", "none"))
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(
        self, cs: torch.Tensor, ct: torch.Tensor, a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        value = functional.gromov_wasserstein_cost(
            cs,
            ct,
            a,
            b,
            eps=self.eps,
            outer_iters=self.outer_iters,
            inner_iters=self.inner_iters,
            tol=self.tol,
            solver=self.solver,
            strict=self.strict,
            backend=self.backend,
        )
        return value if self.reduction == "none" else getattr(value, self.reduction)()

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, outer_iters={self.outer_iters}, inner_iters={self.inner_iters}, tol={self.tol}, "
            f"solver={self.solver!r}, reduction={self.reduction!r}"
        )


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
    ``torch.compile``-d model too (it recompiles on the next call). Other modules (a plain ``nn.Dropout``
    among them) are left alone.

    Args:
        model: any nn.Module.
        backend: "auto", "reference", "cpp" or "triton", the backend of the fused modules.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: an unknown ``backend``.

    Example:
        >>> import helo_fast
        >>> from helo_fast.models import HeLo, HeLoConfig
        >>> model = helo_fast.convert(HeLo(HeLoConfig(), backend="reference"))
        >>> any(isinstance(m, helo_fast.nn.LCDAttention) for m in model.modules())
        True
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
    """Undo ``convert``: every fused module inside ``model`` becomes its reference module again, in place.

    Args:
        model: any nn.Module.

    Returns:
        ``model`` itself, with the same parameters, buffers and state_dict keys.

    Example:
        >>> import helo_fast
        >>> from helo_fast.models import HeLo
        >>> model = helo_fast.revert(HeLo(backend="cpp"))
        >>> any(isinstance(m, helo_fast.nn.FusedGromovWasserstein) for m in model.modules())
        False
    """
    for module in model.modules():
        reference_cls = REFERENCE_MODULES.get(type(module))
        if reference_cls is not None:
            module.__class__ = reference_cls
            del module.backend
    return model
