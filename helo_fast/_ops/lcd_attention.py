"""lcd_attention: the C++ op (torch.ops.helo_fast.lcd_attention_fwd/_bwd, schema in csrc/schema.cpp) and the Triton op
(helo_fast::triton_lcd_attention_fwd/_bwd, kernels/lcd_attention.py): fake kernels, autograd, autocast rules, and the
entry points registered for ``functional.lcd_attention``. The C++ op's autograd is C++
(csrc/lcd_attention_autograd.cpp); this module implements its differentiable backward
(helo_fast::lcd_attention_reference_vjp).

C++: when gradients are needed the forward also returns what the backward reads: the LayerNorm statistics
(mean, rstd [B, Lq]), the softmax weights [B, H, Lq, Lk] and the LayerNorm input [B, Lq, H*D] (in the
accumulation type); DropKey/dropout masks are never stored, the backward regenerates them from the seed.
Triton: the backward kernel recomputes the forward for its rows from the saved inputs and the seed.
A backward under create_graph=True (second derivatives) differentiates the reference instead (``_reference_vjp``,
with the masks regenerated from the seed), on both.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import _ext, _rng, kernels
from .._autocast import ATTENTION_ARGS, LOW, register_autocast_rule
from .._numerics import compute_dtype, dropkey_value
from . import differentiable_backward_wanted, reference_vjp, register, wants_grad

# The one argument order of lcd_attention in every layer: functional.lcd_attention's (its generator is drawn into
# ``seed``), the C++ schema (csrc/schema.cpp), the Triton ops below and the Triton launchers (kernels/), forward and
# backward; a backward takes grad_out first, and the C++ ops take what this layer adds after these.
OP_ARGS = (
    "q",
    "k",
    "v",
    "bias",
    "scale",
    "dropkey_p",
    "dropout_p",
    "residual",
    "ln_weight",
    "ln_bias",
    "ln_eps",
    "bias_before_scale",
    "seed",
    "dropkey_mask",
    "dropout_mask",
)


def _in_op_order(grads):
    """(dq, dk, dv, dbias, dresidual, dln_weight, dln_bias) -> one gradient (or None) per name of OP_ARGS."""
    by_name = dict(zip(("q", "k", "v", "bias", "residual", "ln_weight", "ln_bias"), grads))
    return tuple(by_name.get(name) for name in OP_ARGS)


def _autocast_casts(qualname):
    """The positional autocast rule of an attention op, from its schema's argument names and the public op's rule
    by name (helo_fast._autocast.ATTENTION_ARGS); grad_out as the activations."""
    namespace, name = qualname.split("::")
    schema = getattr(getattr(torch.ops, namespace), name).default._schema
    return [LOW if arg.name == "grad_out" else ATTENTION_ARGS.get(arg.name) for arg in schema.arguments]


def _reference_vjp(
    grad_out,
    q,
    k,
    v,
    bias,
    scale,
    dropkey_p,
    dropout_p,
    residual,
    ln_weight,
    ln_bias,
    ln_eps,
    bias_before_scale,
    seed,
    dropkey_mask,
    dropout_mask,
):
    """[dq, dk, dv, dbias, dresidual, dln_weight, dln_bias] (None where absent) of the reference, with the masks the
    fast op used (given, or regenerated from ``seed``), as a differentiable graph: the backward under
    create_graph=True."""
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    dropkey_mask, dropout_mask = _rng.attention_masks_of_seed(
        seed, shape, dropkey_p, dropout_p, dropkey_mask, dropout_mask, q.device
    )
    return reference_vjp(
        "lcd_attention",
        grad_out,
        (q, k, v, bias, residual, ln_weight, ln_bias),
        lambda ref: ref(
            q,
            k,
            v,
            bias,
            scale=scale,
            dropkey_p=dropkey_p,
            dropout_p=dropout_p,
            residual=residual,
            ln_weight=ln_weight,
            ln_bias=ln_bias,
            ln_eps=ln_eps,
            bias_before_scale=bias_before_scale,
            dropkey_mask=dropkey_mask,
            dropout_mask=dropout_mask,
            check_finite=False,  # the forward checked these inputs
        ),
    )


if _ext.has_cpp():

    @torch.library.register_fake("helo_fast::lcd_attention_fwd")
    def _lcd_attention_fwd_fake(
        q,
        k,
        v,
        bias,
        scale,
        dropkey_p,
        dropout_p,
        residual,
        ln_weight,
        ln_bias,
        ln_eps,
        bias_before_scale,
        seed,
        dropkey_mask,
        dropout_mask,
        dropkey_value,
        save_for_backward,
    ):
        batch, heads, lq, dim = q.shape
        stat_dtype = compute_dtype(q.dtype)
        saved = save_for_backward
        return (
            q.new_empty((batch, lq, heads * dim)),
            q.new_empty((batch, lq), dtype=stat_dtype),
            q.new_empty((batch, lq), dtype=stat_dtype),
            q.new_empty((batch, heads, lq, k.shape[2]) if saved else (0,), dtype=stat_dtype),
            q.new_empty((batch, lq, heads * dim) if saved else (0,), dtype=stat_dtype),
        )

    @torch.library.register_fake("helo_fast::lcd_attention_bwd")
    def _lcd_attention_bwd_fake(
        grad_out,
        q,
        k,
        v,
        bias,
        scale,
        dropkey_p,
        dropout_p,
        residual,
        ln_weight,
        ln_bias,
        ln_eps,
        bias_before_scale,
        seed,
        dropkey_mask,
        dropout_mask,
        dropkey_value,
        mean,
        rstd,
        prob,
        ln_input,
    ):
        batch, heads, lq, dim = q.shape

        def like(t, shape):
            return q.new_empty(shape if t is not None else (0,))

        def gradient_like(t):  # the layout rule of gradient_like in csrc/lcd_attention_params.h
            grad = torch.empty_like(t)
            return grad if grad.dim() == 0 or grad.stride(-1) == 1 else t.new_empty(t.shape)

        def parameter_grad(t):  # in the parameter's own dtype (float32 LayerNorm parameters of half inputs)
            return q.new_empty((heads * dim,) if t is not None else (0,), dtype=q.dtype if t is None else t.dtype)

        return (
            gradient_like(q),
            gradient_like(k),
            gradient_like(v),
            like(bias, None if bias is None else bias.shape),
            q.new_empty((batch, lq, heads * dim)),
            parameter_grad(ln_weight),
            parameter_grad(ln_bias),
        )

    # Under autocast: q, k, v, bias, residual (and grad_out) in the autocast dtype, the LayerNorm parameters in
    # float32; masks, scalars and the backward's saved statistics untouched (helo_fast._autocast, by name).
    for _qualname in ("helo_fast::lcd_attention_fwd", "helo_fast::lcd_attention_bwd"):
        register_autocast_rule(_qualname, _autocast_casts(_qualname))

    @torch.library.impl("helo_fast::lcd_attention_reference_vjp", "CompositeImplicitAutograd")
    def _lcd_attention_reference_vjp_op(grad_out, *op_args):
        """The backward of lcd_attention_fwd under create_graph=True (its C++ autograd calls this with grad_out and the
        arguments of OP_ARGS): ``_reference_vjp`` with an empty tensor for each None (absent input, or one that needs
        no gradient)."""
        grads = _reference_vjp(grad_out, *op_args)
        return [grad_out.new_empty(0) if g is None else g for g in grads]

    _NO_SEED = torch.zeros(1, dtype=torch.int64)  # passed when no mask is drawn: its value is unused (never written)

    def lcd_attention_cpp(
        q,
        k,
        v,
        bias,
        *,
        scale,
        dropkey_p,
        dropout_p,
        residual,
        ln_weight,
        ln_bias,
        ln_eps,
        bias_before_scale,
        generator,
        dropkey_mask,
        dropout_mask,
    ):
        """Validated inputs (see functional.lcd_attention) -> out [B, Lq, H*D] from the C++ kernels.

        q [B, H, Lq, D], k/v [B, H, Lk, D], bias broadcastable to [B, H, Lq, Lk], residual [B, Lq, H*D],
        ln_weight/ln_bias [H*D], masks bool [B, H, Lq, Lk]. The seed is drawn from ``generator`` exactly as
        the reference draws it, so both give the same masks for the same generator state.
        """
        # The seed as an int64 CPU tensor (an int would make torch.compile recompile for every new seed).
        needed = _rng.needs_seed(dropkey_p, dropout_p, dropkey_mask, dropout_mask)
        seed = _rng.draw_seed_tensor(generator) if needed else _NO_SEED
        if q.is_cuda:  # the CUDA kernels read contiguous [B, H, L, D]: copied once here, the backward reuses them
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        save = wants_grad(q, k, v, bias, residual, ln_weight, ln_bias)
        args = (
            q,
            k,
            v,
            bias,
            float(scale),
            float(dropkey_p),
            float(dropout_p),
            residual,
            ln_weight,
            ln_bias,
            float(ln_eps),
            bool(bias_before_scale),
            seed,
            dropkey_mask,
            dropout_mask,
            dropkey_value(q.dtype),
            save,
        )
        # The op's autograd (csrc/lcd_attention_autograd.cpp), in eager mode and under torch.compile alike.
        return torch.ops.helo_fast.lcd_attention_fwd(*args)[0]

    register("lcd_attention", "cpp", lcd_attention_cpp)

if kernels.TRITON_ERROR is None:
    from ..kernels import lcd_attention as triton_lcd_attention

    @torch.library.custom_op("helo_fast::triton_lcd_attention_fwd", mutates_args=())
    def triton_lcd_attention_fwd(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Optional[Tensor],
        scale: float,
        dropkey_p: float,
        dropout_p: float,
        residual: Optional[Tensor],
        ln_weight: Optional[Tensor],
        ln_bias: Optional[Tensor],
        ln_eps: float,
        bias_before_scale: bool,
        seed: Optional[Tensor],
        dropkey_mask: Optional[Tensor],
        dropout_mask: Optional[Tensor],
    ) -> Tensor:
        """-> out [B, Lq, H*D]; seed: int64 [1] for the hash masks (None when no mask is drawn)."""
        return triton_lcd_attention.lcd_attention_fwd(
            q,
            k,
            v,
            bias,
            scale,
            dropkey_p,
            dropout_p,
            residual,
            ln_weight,
            ln_bias,
            ln_eps,
            bias_before_scale,
            seed,
            dropkey_mask,
            dropout_mask,
        )

    @triton_lcd_attention_fwd.register_fake
    def _(
        q,
        k,
        v,
        bias,
        scale,
        dropkey_p,
        dropout_p,
        residual,
        ln_weight,
        ln_bias,
        ln_eps,
        bias_before_scale,
        seed,
        dropkey_mask,
        dropout_mask,
    ):
        batch, heads, lq, dim = q.shape
        return q.new_empty((batch, lq, heads * dim))

    @torch.library.custom_op("helo_fast::triton_lcd_attention_bwd", mutates_args=())
    def triton_lcd_attention_bwd(
        grad_out: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Optional[Tensor],
        scale: float,
        dropkey_p: float,
        dropout_p: float,
        residual: Optional[Tensor],
        ln_weight: Optional[Tensor],
        ln_bias: Optional[Tensor],
        ln_eps: float,
        bias_before_scale: bool,
        seed: Optional[Tensor],
        dropkey_mask: Optional[Tensor],
        dropout_mask: Optional[Tensor],
    ) -> List[Tensor]:
        """-> [dq, dk, dv, dbias, dresidual, dln_weight, dln_bias]; empty tensors for absent inputs."""
        grads = triton_lcd_attention.lcd_attention_bwd(
            grad_out,
            q,
            k,
            v,
            bias,
            scale,
            dropkey_p,
            dropout_p,
            residual,
            ln_weight,
            ln_bias,
            ln_eps,
            bias_before_scale,
            seed,
            dropkey_mask,
            dropout_mask,
        )
        return [g if g is not None else q.new_empty(0) for g in grads]

    @triton_lcd_attention_bwd.register_fake
    def _(
        grad_out,
        q,
        k,
        v,
        bias,
        scale,
        dropkey_p,
        dropout_p,
        residual,
        ln_weight,
        ln_bias,
        ln_eps,
        bias_before_scale,
        seed,
        dropkey_mask,
        dropout_mask,
    ):
        def like(t):
            return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else q.new_empty(0)

        return [like(q), like(k), like(v), like(bias), like(residual), like(ln_weight), like(ln_bias)]

    def _attention_setup(ctx, inputs, output):
        (
            q,
            k,
            v,
            bias,
            scale,
            dropkey_p,
            dropout_p,
            residual,
            ln_weight,
            ln_bias,
            ln_eps,
            bias_before_scale,
            seed,
            dropkey_mask,
            dropout_mask,
        ) = inputs
        ctx.save_for_backward(q, k, v, bias, residual, ln_weight, ln_bias, seed, dropkey_mask, dropout_mask)
        ctx.scalars = (scale, dropkey_p, dropout_p, ln_eps, bias_before_scale)

    def _attention_backward(ctx, grad_out):
        q, k, v, bias, residual, ln_weight, ln_bias, seed, dropkey_mask, dropout_mask = ctx.saved_tensors
        scale, dropkey_p, dropout_p, ln_eps, bias_before_scale = ctx.scalars
        op_args = (
            q,
            k,
            v,
            bias,
            scale,
            dropkey_p,
            dropout_p,
            residual,
            ln_weight,
            ln_bias,
            ln_eps,
            bias_before_scale,
            seed,
            dropkey_mask,
            dropout_mask,
        )
        inputs = (q, k, v, bias, residual, ln_weight, ln_bias)  # the order of the gradients
        if differentiable_backward_wanted(grad_out, *inputs):
            return _in_op_order(_reference_vjp(grad_out, *op_args))
        grads = triton_lcd_attention_bwd(grad_out, *op_args)
        return _in_op_order([None if x is None else g for x, g in zip(inputs, grads)])

    triton_lcd_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)

    def lcd_attention_triton(
        q,
        k,
        v,
        bias,
        *,
        scale,
        dropkey_p,
        dropout_p,
        residual,
        ln_weight,
        ln_bias,
        ln_eps,
        bias_before_scale,
        generator,
        dropkey_mask,
        dropout_mask,
    ):
        """Validated inputs (see helo_fast.functional.lcd_attention) -> out [B, Lq, H*D]."""
        needed = _rng.needs_seed(dropkey_p, dropout_p, dropkey_mask, dropout_mask)
        seed = _rng.draw_seed_tensor(generator) if needed else None
        return triton_lcd_attention_fwd(
            q,
            k,
            v,
            bias,
            float(scale),
            float(dropkey_p),
            float(dropout_p),
            residual,
            ln_weight,
            ln_bias,
            float(ln_eps),
            bool(bias_before_scale),
            seed,
            dropkey_mask,
            dropout_mask,
        )

    for _qualname in ("helo_fast::triton_lcd_attention_fwd", "helo_fast::triton_lcd_attention_bwd"):
        register_autocast_rule(_qualname, _autocast_casts(_qualname))
    register("lcd_attention", "triton", lcd_attention_triton)
