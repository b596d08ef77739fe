"""Reference small-sequence attention (HELO_SPEC §3, §4.8, §6) in plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _rng
from .._numerics import compute_dtype, dropkey_value
from .._autocast import ATTENTION_ARGS, autocast_policy
from .._transforms import check_random_draw_allowed
from .._validation import validate_attention


def attention_masks(shape, dropkey_p, dropout_p, generator=None, dropkey_mask=None, dropout_mask=None, device=None):
    """Return (dropkey_mask, dropout_mask), bool [B, H, Lq, Lk] or None (True = dropped).

    Explicit masks are returned as given; otherwise a mask is drawn for each p > 0 from one seed
    taken from ``generator`` with the counter-based hash of ``helo_fast._rng`` (same on all backends).
    """
    if _rng.needs_seed(dropkey_p, dropout_p, dropkey_mask, dropout_mask):
        check_random_draw_allowed("lcd_attention")  # a clear error inside a vmap that refuses random draws
        seed = _rng.draw_seed_tensor(generator)  # a tensor: no recompiling on its value under torch.compile
        return _rng.attention_masks_of_seed(seed, shape, dropkey_p, dropout_p, dropkey_mask, dropout_mask, device)
    return dropkey_mask, dropout_mask


@autocast_policy(ATTENTION_ARGS)
def lcd_attention(
    q,
    k,
    v,
    bias=None,
    *,
    scale=None,
    dropkey_p=0.0,
    dropout_p=0.0,
    residual=None,
    ln_weight=None,
    ln_bias=None,
    ln_eps=1e-5,
    bias_before_scale=True,
    generator=None,
    dropkey_mask=None,
    dropout_mask=None,
    check_finite=True,
):
    """Attention fused end to end: bias, DropKey, softmax, dropout, A·V, residual, LayerNorm.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; bias broadcastable to [B, H, Lq, Lk];
    residual: [B, Lq, H*D]; ln_weight, ln_bias: [H*D] (LayerNorm applied when ln_weight is given).
    logits = (q k^T + bias) * scale if bias_before_scale else q k^T * scale + bias
    (scale defaults to D**-0.5); DropKey sets each logit to -1e12 with probability dropkey_p (a row with every
    key dropped gets uniform weights, in every dtype; the dropped logit's gradient still flows, as with the release's
    additive -1e12 in float32);
    dropout zeroes each weight with probability dropout_p and rescales by 1/(1 - dropout_p).
    Explicit bool masks (True = dropped) override the random ones.
    Returns [B, Lq, H*D]: heads concatenated, plus residual, then LayerNorm.
    float16/bfloat16 inputs are computed in float32 and the result returned in their dtype; their LayerNorm
    parameters may be float32. Under torch.autocast see ``helo_fast._autocast`` (q, k, v, bias, residual are cast to
    the autocast dtype, the LayerNorm parameters to float32).
    """
    scale = validate_attention(
        q,
        k,
        v,
        bias,
        residual,
        ln_weight,
        ln_bias,
        scale=scale,
        dropkey_p=dropkey_p,
        dropout_p=dropout_p,
        ln_eps=ln_eps,
        dropkey_mask=dropkey_mask,
        dropout_mask=dropout_mask,
        check_finite_values=check_finite,
    )
    batch, heads, lq, dim = q.shape
    dropkey_mask, dropout_mask = attention_masks(
        (batch, heads, lq, k.shape[2]), dropkey_p, dropout_p, generator, dropkey_mask, dropout_mask, q.device
    )
    out_dtype, dropped_value = q.dtype, dropkey_value(q.dtype)
    compute = compute_dtype(q.dtype)
    q, k, v, bias, residual, ln_weight, ln_bias = (
        None if t is None else t.to(compute) for t in (q, k, v, bias, residual, ln_weight, ln_bias)
    )
    logits = q @ k.transpose(-1, -2)
    if bias is not None and bias_before_scale:
        logits = logits + bias
    logits = logits * scale
    if bias is not None and not bias_before_scale:
        logits = logits + bias
    if dropkey_mask is not None:
        # Replaced, not added: x - 1e12 keeps x's digits in float64 (softmax(x) for a fully dropped row) and loses them
        # in float32 (uniform); replacing gives uniform weights in every dtype. The straight-through term keeps the
        # gradient of the dropped logits (zero forward), as the additive mask has in float32.
        dropped = torch.full_like(logits, dropped_value) + (logits - logits.detach())
        logits = torch.where(dropkey_mask, dropped, logits)
    weights = torch.softmax(logits, dim=-1)
    if dropout_mask is not None:
        weights = weights * (~dropout_mask).to(weights.dtype) / (1.0 - dropout_p)
    out = (weights @ v).transpose(1, 2).reshape(batch, lq, heads * dim)
    if residual is not None:
        out = out + residual
    if ln_weight is not None:
        out = F.layer_norm(out, (heads * dim,), ln_weight, ln_bias, ln_eps)
    return out.to(out_dtype)
