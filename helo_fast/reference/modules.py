"""Reference nn.Modules of HeLo's hot spots, built on the reference functional ops.

A fast implementation (``helo_fast.nn``) provides modules with the same constructor arguments and
the same ``state_dict`` keys, so ``helo_fast.models`` can swap them without touching checkpoints.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._validation import check_probability
from .lcd_attention import lcd_attention
from .seeded_dropout import seeded_dropout
from . import gromov_wasserstein, sinkhorn  # with the autocast rule of helo_fast._autocast


class LCDAttention(nn.Module):
    """Multi-head (cross-)attention with no bias and no output projection, post-LN residual.

    out = LayerNorm(query + concat_h softmax(logits_h + DropKey) V_h), with
    logits = (Q K^T + bias) * scale (``bias_before_scale``) or Q K^T * scale + bias, scale = head_dim**-0.5.
    Serves HeLo's physiological cross-attention (HELO_SPEC §3), the transformer's self-attention
    (§4.8) and LCD-CA (§6, one head, label-correlation bias). Parameters: ``q_proj``, ``k_proj``,
    ``v_proj`` (Linear d -> d, no bias) and ``norm`` (LayerNorm(d)).
    """

    def __init__(self, d_model: int, n_heads: int, *, ln_eps: float = 1e-5, bias_before_scale: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.bias_before_scale = d_model, n_heads, bias_before_scale
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm = nn.LayerNorm(d_model, eps=ln_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_model // self.n_heads).transpose(1, 2)

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
        """query: [B, Lq, d]; key_value: [B, Lk, d] (None = self-attention); bias broadcastable to
        [B, H, Lq, Lk]. The caller passes dropkey_p/dropout_p = 0 when the mask should be off.
        Returns [B, Lq, d]."""
        key_value = query if key_value is None else key_value
        return self.attention_op(
            self._heads(self.q_proj(query)),
            self._heads(self.k_proj(key_value)),
            self._heads(self.v_proj(key_value)),
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
        """The fused attention op this module runs: the reference one (``helo_fast.nn`` overrides it)."""
        return lcd_attention(*args, **kwargs)


class GromovWasserstein(nn.Module):
    """HeLo's GW transport plan between two structure matrices (HELO_SPEC §4.4-§4.6); no parameters.

    forward(cs [B, n, n], ct [B, m, m]) -> plan [B, n, m] with uniform marginals.
    ``grad="none"`` detaches the plan (the release's behaviour), ``"unrolled"`` differentiates
    through the solver iterations.
    """

    def __init__(
        self, *, eps: float = 0.1, outer_iters: int = 5, inner_iters: int = 20, solver: str = "ipot", grad: str = "none"
    ):
        super().__init__()
        self.eps, self.outer_iters, self.inner_iters = eps, outer_iters, inner_iters
        self.solver, self.grad = solver, grad

    def forward(self, cs: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
        """cs [B, n, n], ct [B, m, m] -> plan [B, n, m]."""
        return self.gromov_op(
            cs,
            ct,
            eps=self.eps,
            outer_iters=self.outer_iters,
            inner_iters=self.inner_iters,
            solver=self.solver,
            grad=self.grad,
        )

    def gromov_op(self, *args, **kwargs):
        """The GW op this module runs: the reference one (``helo_fast.nn`` overrides it)."""
        return gromov_wasserstein(*args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"eps={self.eps}, outer_iters={self.outer_iters}, inner_iters={self.inner_iters}, "
            f"solver={self.solver!r}, grad={self.grad!r}"
        )


class Sinkhorn(nn.Module):
    """Batched log-domain entropic OT plan (``helo_fast.reference.sinkhorn``); no parameters.

    forward(cost [B, n, m], a [B, n] = None, b [B, m] = None) -> plan [B, n, m].
    """

    def __init__(self, *, eps: float, n_iters: int, grad: str = "unrolled"):
        super().__init__()
        self.eps, self.n_iters, self.grad = eps, n_iters, grad

    def forward(self, cost: torch.Tensor, a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None):
        return self.sinkhorn_op(cost, a, b, eps=self.eps, n_iters=self.n_iters, grad=self.grad)

    def sinkhorn_op(self, *args, **kwargs):
        """The Sinkhorn op this module runs: the reference one (``helo_fast.nn`` overrides it)."""
        return sinkhorn(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, n_iters={self.n_iters}, grad={self.grad!r}"


class SeededDropout(nn.Dropout):
    """nn.Dropout whose mask comes from the counter hash of ``helo_fast._rng`` (``reference.seeded_dropout``).

    forward(x [any shape], generator=None) -> same shape: x * 1/(1-p) where kept, 0 where dropped, in training
    mode; x in eval mode. One seed is drawn from ``generator`` per call (the default CPU generator when None), so
    the reference and the fused module give the same masks for the same generator state. No parameters.
    """

    def __init__(self, p: float = 0.5):
        super().__init__(check_probability("p", p))

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.dropout_op(x, self.p if self.training else 0.0, generator=generator)

    def dropout_op(self, *args, **kwargs):
        """The dropout op this module runs: the reference one (``helo_fast.nn`` overrides it)."""
        return seeded_dropout(*args, **kwargs)
