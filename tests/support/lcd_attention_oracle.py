"""A plain float64 oracle of lcd_attention, written for the tests from the op's documented definition (not from any
backend): logits, DropKey, softmax, dropout, A·V, heads concatenated, residual, LayerNorm, each one torch call."""

import torch
import torch.nn.functional as F

DROPPED_LOGIT = -1e12  # what DropKey sets a dropped logit to (README "Valid domain")


def lcd_attention_oracle(
    q,
    k,
    v,
    bias=None,
    *,
    scale,
    bias_before_scale,
    dropkey_mask,
    dropout_mask,
    dropout_p,
    residual=None,
    ln_weight=None,
    ln_bias=None,
    ln_eps=1e-5,
):
    """float64 output [B, Lq, H*D] of q [B, H, Lq, D], k, v [B, H, Lk, D] with explicit bool masks (True = dropped,
    None = none); differentiable in every tensor argument. A dropped logit's gradient is the softmax's gradient at
    that position (the documented straight-through rule)."""
    q, k, v, bias, residual, ln_weight, ln_bias = (
        None if t is None else t.double() for t in (q, k, v, bias, residual, ln_weight, ln_bias)
    )
    batch, heads, lq, dim = q.shape
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k)
    if bias is not None:
        logits = (logits + bias) * scale if bias_before_scale else logits * scale + bias
    else:
        logits = logits * scale
    if dropkey_mask is not None:
        logits = torch.where(dropkey_mask, DROPPED_LOGIT + (logits - logits.detach()), logits)
    weights = torch.softmax(logits, dim=-1)
    if dropout_mask is not None:
        weights = torch.where(dropout_mask, torch.zeros_like(weights), weights / (1.0 - dropout_p))
    out = torch.einsum("bhqk,bhkd->bqhd", weights, v).reshape(batch, lq, heads * dim)
    if residual is not None:
        out = out + residual
    if ln_weight is not None:
        out = F.layer_norm(out, (heads * dim,), ln_weight, ln_bias, ln_eps)
    return out
