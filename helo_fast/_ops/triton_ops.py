"""The Triton backend: custom ops ``helo_fast::triton_<op>_fwd`` / ``_bwd`` and their registration.

Registered with ``torch.library.custom_op`` + ``register_fake`` + ``register_autograd`` (opaque to
torch.compile, which traces them with fullgraph=True through the fake kernels). Not
``torch.library.triton_op`` + ``wrap_triton``: tracing that under TRITON_INTERPRET=1 fails (torch
2.13 / triton 3.8: the interpreted launch reads the data pointers of fake tensors), so it could
not be tested without a GPU. On a GPU it would let Inductor see the kernels; worth measuring.

Gradients (grad="unrolled") come from the fused backward kernels, which recompute each iteration
from the saved per-iteration potentials (gromov_wasserstein also saves each outer iteration's
input plan, see kernels/gromov.py).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _rng, kernels
from .._autocast import FLOAT32, LOW, register_autocast_rule
from . import register, register_seeded_dropout_autograd

if kernels.TRITON_ERROR is None:
    from ..kernels import attention as _attention
    from ..kernels import dropout as _dropout
    from ..kernels import gromov as _gromov
    from ..kernels import sinkhorn as _sinkhorn

    def _empty(like: Tensor) -> Tensor:
        return like.new_empty(0)

    def _any_grad(*tensors) -> bool:
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)

    # ------------------------------------------------------------------ sinkhorn

    @torch.library.custom_op("helo_fast::triton_sinkhorn_fwd", mutates_args=())
    def triton_sinkhorn_fwd(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int,
                            save: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], f history [B, K, n], g history [B, K, m]); K = n_iters if save else 0."""
        return _sinkhorn.sinkhorn_fwd(cost, a, b, eps, n_iters, save)

    @triton_sinkhorn_fwd.register_fake
    def _(cost, a, b, eps, n_iters, save):
        k = n_iters if save else 0
        dtype = _sinkhorn.compute_dtype(cost.dtype)
        batch, n, m = cost.shape
        return (torch.empty_like(cost, memory_format=torch.contiguous_format),
                cost.new_empty((batch, k, n), dtype=dtype), cost.new_empty((batch, k, m), dtype=dtype))

    @torch.library.custom_op("helo_fast::triton_sinkhorn_bwd", mutates_args=())
    def triton_sinkhorn_bwd(grad_plan: Tensor, cost: Tensor, a: Tensor, b: Tensor, f_hist: Tensor, g_hist: Tensor,
                            eps: float, n_iters: int) -> Tuple[Tensor, Tensor, Tensor]:
        """-> (d_cost [B, n, m], d_a [B, n], d_b [B, m]) of the unrolled iterations."""
        return _sinkhorn.sinkhorn_bwd(grad_plan, cost, a, b, f_hist, g_hist, eps, n_iters)

    @triton_sinkhorn_bwd.register_fake
    def _(grad_plan, cost, a, b, f_hist, g_hist, eps, n_iters):
        return (torch.empty_like(cost, memory_format=torch.contiguous_format), torch.empty_like(a),
                torch.empty_like(b))

    def _sinkhorn_setup(ctx, inputs, output):
        cost, a, b, eps, n_iters, save = inputs
        ctx.save_for_backward(cost, a, b, output[1], output[2])
        ctx.eps, ctx.n_iters, ctx.save = eps, n_iters, save

    def _sinkhorn_backward(ctx, grad_plan, _grad_f, _grad_g):
        if not ctx.save:
            raise RuntimeError("triton sinkhorn was run with save=False; it has no backward (use grad='unrolled')")
        cost, a, b, f_hist, g_hist = ctx.saved_tensors
        d_cost, d_a, d_b = triton_sinkhorn_bwd(grad_plan, cost, a, b, f_hist, g_hist, ctx.eps, ctx.n_iters)
        return d_cost, d_a, d_b, None, None, None

    triton_sinkhorn_fwd.register_autograd(_sinkhorn_backward, setup_context=_sinkhorn_setup)

    def sinkhorn_triton(cost, a, b, *, eps, n_iters, grad):
        """cost [B, n, m], a [B, n], b [B, m] (validated) -> plan [B, n, m]."""
        if grad == "none":
            cost, a, b = cost.detach(), a.detach(), b.detach()
        save = grad != "none" and _any_grad(cost, a, b)
        return triton_sinkhorn_fwd(cost, a, b, float(eps), int(n_iters), save)[0]

    # ------------------------------------------------------------------ ipot

    @torch.library.custom_op("helo_fast::triton_ipot_fwd", mutates_args=())
    def triton_ipot_fwd(cost: Tensor, a: Tensor, b: Tensor, beta: float, n_iters: int,
                        save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], log delta, log sigma histories and their running sums [B, K, n|m])."""
        return _sinkhorn.ipot_fwd(cost, a, b, beta, n_iters, save)

    @triton_ipot_fwd.register_fake
    def _(cost, a, b, beta, n_iters, save):
        k = n_iters if save else 0
        dtype = _sinkhorn.compute_dtype(cost.dtype)
        batch, n, m = cost.shape
        hists = tuple(cost.new_empty((batch, k, size), dtype=dt)
                      for size, dt in ((n, dtype), (m, dtype), (n, torch.float64), (m, torch.float64)))
        return (torch.empty_like(cost, memory_format=torch.contiguous_format), *hists)

    @torch.library.custom_op("helo_fast::triton_ipot_bwd", mutates_args=())
    def triton_ipot_bwd(grad_plan: Tensor, cost: Tensor, a: Tensor, b: Tensor, d_hist: Tensor, s_hist: Tensor,
                        cd_hist: Tensor, cs_hist: Tensor, beta: float, n_iters: int) -> Tuple[Tensor, Tensor, Tensor]:
        """-> (d_cost [B, n, m], d_a [B, n], d_b [B, m]) of the unrolled iterations."""
        return _sinkhorn.ipot_bwd(grad_plan, cost, a, b, d_hist, s_hist, cd_hist, cs_hist, beta, n_iters)

    @triton_ipot_bwd.register_fake
    def _(grad_plan, cost, a, b, d_hist, s_hist, cd_hist, cs_hist, beta, n_iters):
        return (torch.empty_like(cost, memory_format=torch.contiguous_format), torch.empty_like(a),
                torch.empty_like(b))

    def _ipot_setup(ctx, inputs, output):
        cost, a, b, beta, n_iters, save = inputs
        ctx.save_for_backward(cost, a, b, *output[1:])
        ctx.beta, ctx.n_iters, ctx.save = beta, n_iters, save

    def _ipot_backward(ctx, grad_plan, *_grad_hists):
        if not ctx.save:
            raise RuntimeError("triton ipot was run with save=False; it has no backward (use grad='unrolled')")
        cost, a, b, *hists = ctx.saved_tensors
        d_cost, d_a, d_b = triton_ipot_bwd(grad_plan, cost, a, b, *hists, ctx.beta, ctx.n_iters)
        return d_cost, d_a, d_b, None, None, None

    triton_ipot_fwd.register_autograd(_ipot_backward, setup_context=_ipot_setup)

    def ipot_triton(cost, a, b, *, beta, n_iters, grad):
        """cost [B, n, m], a [B, n], b [B, m] (validated) -> plan [B, n, m]."""
        if grad == "none":
            cost, a, b = cost.detach(), a.detach(), b.detach()
        save = grad != "none" and _any_grad(cost, a, b)
        return triton_ipot_fwd(cost, a, b, float(beta), int(n_iters), save)[0]

    # ------------------------------------------------------------------ gromov_wasserstein

    @torch.library.custom_op("helo_fast::triton_gromov_wasserstein_fwd", mutates_args=())
    def triton_gromov_wasserstein_fwd(cs: Tensor, ct: Tensor, a: Tensor, b: Tensor, eps: float, outer_iters: int,
                                      inner_iters: int, solver: str,
                                      save: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """-> (plan [B, n, m], 4 potential histories [B, outer, inner, n|m], input plans [B, outer, n, m]).

        The histories are empty unless ``save``.
        """
        return _gromov.gromov_wasserstein_fwd(cs, ct, a, b, eps, outer_iters, inner_iters, solver, save)

    @triton_gromov_wasserstein_fwd.register_fake
    def _(cs, ct, a, b, eps, outer_iters, inner_iters, solver, save):
        batch, n, m = cs.shape[0], cs.shape[1], ct.shape[1]
        hists = _gromov.gromov_history_buffers(batch, n, m, outer_iters, inner_iters, solver, save,
                                               _sinkhorn.compute_dtype(cs.dtype), cs.device)
        return (cs.new_empty((batch, n, m)), *hists)

    @torch.library.custom_op("helo_fast::triton_gromov_wasserstein_bwd", mutates_args=())
    def triton_gromov_wasserstein_bwd(grad_plan: Tensor, cs: Tensor, ct: Tensor, a: Tensor, b: Tensor, h0: Tensor,
                                      h1: Tensor, h2: Tensor, h3: Tensor, plans: Tensor, eps: float,
                                      outer_iters: int, inner_iters: int,
                                      solver: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (d_cs [B, n, n], d_ct [B, m, m], d_a [B, n], d_b [B, m]) of the unrolled iterations."""
        return _gromov.gromov_wasserstein_bwd(grad_plan, cs, ct, a, b, h0, h1, h2, h3, plans, eps, outer_iters,
                                              inner_iters, solver)

    @triton_gromov_wasserstein_bwd.register_fake
    def _(grad_plan, cs, ct, a, b, h0, h1, h2, h3, plans, eps, outer_iters, inner_iters, solver):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (cs, ct, a, b))

    def _gromov_setup(ctx, inputs, output):
        cs, ct, a, b, eps, outer_iters, inner_iters, solver, save = inputs
        ctx.save_for_backward(cs, ct, a, b, *output[1:])
        ctx.args = (eps, outer_iters, inner_iters, solver)
        ctx.save = save

    def _gromov_backward(ctx, grad_plan, *_grad_hists):
        if not ctx.save:
            raise RuntimeError("triton gromov_wasserstein was run with save=False; it has no backward")
        cs, ct, a, b, *hists = ctx.saved_tensors
        return (*triton_gromov_wasserstein_bwd(grad_plan, cs, ct, a, b, *hists, *ctx.args), None, None, None, None,
                None)

    triton_gromov_wasserstein_fwd.register_autograd(_gromov_backward, setup_context=_gromov_setup)

    def gromov_wasserstein_triton(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver, grad):
        """cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] (validated) -> plan [B, n, m]."""
        if grad == "none":
            cs, ct, a, b = cs.detach(), ct.detach(), a.detach(), b.detach()
        save = grad != "none" and _any_grad(cs, ct, a, b)
        return triton_gromov_wasserstein_fwd(cs, ct, a, b, float(eps), int(outer_iters), int(inner_iters), solver,
                                             save)[0]

    # ------------------------------------------------------------------ lcd_attention

    @torch.library.custom_op("helo_fast::triton_lcd_attention_fwd", mutates_args=())
    def triton_lcd_attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
                                 ln_weight: Optional[Tensor], ln_bias: Optional[Tensor],
                                 dropkey_mask: Optional[Tensor], dropout_mask: Optional[Tensor],
                                 seed: Optional[Tensor], scale: float, dropkey_p: float, dropout_p: float,
                                 ln_eps: float, bias_before_scale: bool) -> Tensor:
        """-> out [B, Lq, H*D]; seed: int64 [1] for the hash masks (None when no mask is drawn)."""
        return _attention.lcd_attention_fwd(q, k, v, bias, residual, ln_weight, ln_bias, scale, dropkey_p, dropout_p,
                                            ln_eps, bias_before_scale, seed, dropkey_mask, dropout_mask)

    @triton_lcd_attention_fwd.register_fake
    def _(q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask, seed, scale, dropkey_p, dropout_p,
          ln_eps, bias_before_scale):
        batch, heads, lq, dim = q.shape
        return q.new_empty((batch, lq, heads * dim))

    @torch.library.custom_op("helo_fast::triton_lcd_attention_bwd", mutates_args=())
    def triton_lcd_attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                                 residual: Optional[Tensor], ln_weight: Optional[Tensor],
                                 dropkey_mask: Optional[Tensor], dropout_mask: Optional[Tensor],
                                 seed: Optional[Tensor], scale: float, dropkey_p: float, dropout_p: float,
                                 ln_eps: float, bias_before_scale: bool) -> List[Tensor]:
        """-> [dq, dk, dv, dbias, dresidual, dln_weight, dln_bias]; empty tensors for absent inputs."""
        grads = _attention.lcd_attention_bwd(grad_out, q, k, v, bias, residual, ln_weight, scale, dropkey_p,
                                             dropout_p, ln_eps, bias_before_scale, seed, dropkey_mask, dropout_mask)
        return [g if g is not None else _empty(q) for g in grads]

    @triton_lcd_attention_bwd.register_fake
    def _(grad_out, q, k, v, bias, residual, ln_weight, dropkey_mask, dropout_mask, seed, scale, dropkey_p,
          dropout_p, ln_eps, bias_before_scale):
        def like(t):
            return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else _empty(q)
        return [like(q), like(k), like(v), like(bias), like(residual), like(ln_weight), like(ln_weight)]

    def _attention_setup(ctx, inputs, output):
        (q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask, seed, scale, dropkey_p, dropout_p,
         ln_eps, bias_before_scale) = inputs
        ctx.save_for_backward(q, k, v, bias, residual, ln_weight, dropkey_mask, dropout_mask, seed)
        ctx.scalars = (scale, dropkey_p, dropout_p, ln_eps, bias_before_scale)
        ctx.present = (bias is not None, residual is not None, ln_weight is not None, ln_bias is not None)

    def _attention_backward(ctx, grad_out):
        q, k, v, bias, residual, ln_weight, dropkey_mask, dropout_mask, seed = ctx.saved_tensors
        dq, dk, dv, dbias, dres, dlnw, dlnb = triton_lcd_attention_bwd(
            grad_out, q, k, v, bias, residual, ln_weight, dropkey_mask, dropout_mask, seed, *ctx.scalars)
        has_bias, has_res, has_ln, has_ln_bias = ctx.present
        return (dq, dk, dv, dbias if has_bias else None, dres if has_res else None, dlnw if has_ln else None,
                dlnb if has_ln_bias else None, None, None, None, None, None, None, None, None)

    triton_lcd_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)

    def lcd_attention_triton(q, k, v, bias, *, scale, dropkey_p, dropout_p, residual, ln_weight, ln_bias, ln_eps,
                             bias_before_scale, generator, dropkey_mask, dropout_mask):
        """Validated inputs (see helo_fast.functional.lcd_attention) -> out [B, Lq, H*D]."""
        needed = _rng.needs_seed(dropkey_p, dropout_p, dropkey_mask, dropout_mask)
        seed = _rng.draw_seed_tensor(generator) if needed else None
        return triton_lcd_attention_fwd(q, k, v, bias, residual, ln_weight, ln_bias, dropkey_mask, dropout_mask, seed,
                                        float(scale), float(dropkey_p), float(dropout_p), float(ln_eps),
                                        bool(bias_before_scale))

    # ------------------------------------------------------------------ seeded_dropout

    @torch.library.custom_op("helo_fast::triton_seeded_dropout_fwd", mutates_args=())
    def triton_seeded_dropout_fwd(x: Tensor, seed: Tensor, p: float) -> Tensor:
        """-> x * 1/(1-p) where kept, 0 where dropped (shape of x); seed: int64 [1]. Its own backward."""
        return _dropout.seeded_dropout_fwd(x, p, seed)

    @triton_seeded_dropout_fwd.register_fake
    def _(x, seed, p):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    register_seeded_dropout_autograd("helo_fast::triton_seeded_dropout_fwd", triton_seeded_dropout_fwd)

    def seeded_dropout_triton(x, p, *, generator):
        """Validated x (any shape), 0 < p < 1 -> the dropout of x, seed drawn from ``generator`` as the reference."""
        return triton_seeded_dropout_fwd(x, _rng.draw_seed_tensor(generator), float(p))

    # Under autocast (helo_fast._autocast): the OT ops in float32; the attention's q, k, v, bias, residual (and
    # grad_out) in the autocast dtype, its LayerNorm parameters in float32. seeded_dropout keeps the input dtype.
    for _name in ("sinkhorn", "ipot", "gromov_wasserstein"):
        register_autocast_rule(f"helo_fast::triton_{_name}_fwd")
        register_autocast_rule(f"helo_fast::triton_{_name}_bwd")
    register_autocast_rule("helo_fast::triton_lcd_attention_fwd", [LOW] * 5 + [FLOAT32] * 2)
    register_autocast_rule("helo_fast::triton_lcd_attention_bwd", [LOW] * 6 + [FLOAT32])

    register("sinkhorn", "triton", sinkhorn_triton)
    register("ipot", "triton", ipot_triton)
    register("gromov_wasserstein", "triton", gromov_wasserstein_triton)
    register("lcd_attention", "triton", lcd_attention_triton)
    register("seeded_dropout", "triton", seeded_dropout_triton)
