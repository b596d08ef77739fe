"""Triton kernels for small-sequence attention fused end to end (``lcd_attention``).

One program per batch entry holds the query rows [Lq, H*D] of all heads (heads side by side, as
in the output layout) plus K and V [Lk, H*D], so the LayerNorm over H*D needs no second pass.
Head h is computed by masking the H*D columns to that head's D columns before each tl.dot (H
times the flops of a per-head layout, irrelevant at HeLo's sizes, which are launch-bound).
DropKey / dropout masks are drawn in the kernel from the counter-based hash of
``helo_fast._rng`` (bit-identical to the reference) and regenerated in the backward kernel, or
read from explicit bool masks. The backward recomputes the forward for its rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from helo_fast._numerics import compute_dtype, dropkey_value
from helo_fast._rng import MASK_EXPLICIT, MASK_NONE, MASK_SEEDED, STREAM_DROPKEY, STREAM_DROPOUT, mask_mode
from helo_fast.kernels.mask_hash import _hash_uniform
from helo_fast.kernels.triton_utils import autotune_num_warps, block_size, scalar_tensor

_STREAM_DROPKEY = tl.constexpr(STREAM_DROPKEY)
_STREAM_DROPOUT = tl.constexpr(STREAM_DROPOUT)
_MASK_NONE = tl.constexpr(MASK_NONE)
_MASK_SEEDED = tl.constexpr(MASK_SEEDED)
# Warps: a program keeps about eight tiles as large as its largest (q, k, v, the output, the gradients) and its
# float32 tl.dot (IEEE: FMA, no tensor cores) holds whole K rows of its operands per thread. At the shared rule
# (128 B of the largest tile per thread) HeLo's 64 x 128 tiles got 8 warps and spilled 14 KiB per thread in the
# backward, 8 KiB in the forward; at 32 B they get 16 warps (16 x 128: 8) and spill at most 2.2 KiB in the backward,
# none in the forward (gpu-check, sm_90 and sm_100).
_AUTOTUNE = dict(warps="1,2,4,8,16", tile_bytes_per_thread=32)


@triton.jit
def _dropped(mode: tl.constexpr, mask_ptr, index, valid, seed, p, STREAM: tl.constexpr):
    """Bool tile: True where the element is dropped (MASK_SEEDED: u < p; MASK_EXPLICIT: the mask)."""
    if mode == _MASK_SEEDED:
        return _hash_uniform(index, seed, STREAM) < p
    else:
        return tl.load(mask_ptr + index, mask=valid, other=0) != 0


@triton.jit
def _head_weights(
    q_h,
    k,
    bias_ptr,
    dropkey_mask_ptr,
    dropout_mask_ptr,
    seed,
    dropkey_p,
    dropout_p,
    scale,
    keep_scale,
    dropkey_value,
    pid,
    h,
    H,
    Lq,
    Lk,
    rq,
    rk,
    valid,
    stride_bb,
    stride_bh,
    stride_bq,
    stride_bk,
    HAS_BIAS: tl.constexpr,
    BIAS_BEFORE_SCALE: tl.constexpr,
    DROPKEY_MODE: tl.constexpr,
    DROPOUT_MODE: tl.constexpr,
):
    """Attention weights of head h: returns (softmax probs, dropout keep 0/1) tiles [BQ, BK]."""
    logits = tl.dot(q_h, tl.trans(k), input_precision="ieee")
    if HAS_BIAS:
        bias = tl.load(
            bias_ptr + pid * stride_bb + h * stride_bh + rq[:, None] * stride_bq + rk[None, :] * stride_bk,
            mask=valid,
            other=0.0,
        )
        if BIAS_BEFORE_SCALE:
            logits = (logits + bias) * scale
        else:
            logits = logits * scale + bias
    else:
        logits = logits * scale
    index = ((pid * H + h) * Lq + rq[:, None]) * Lk + rk[None, :]
    if DROPKEY_MODE != _MASK_NONE:
        dropped_key = _dropped(DROPKEY_MODE, dropkey_mask_ptr, index, valid, seed, dropkey_p, _STREAM_DROPKEY)
        # Replaced, not added: a fully dropped row gets uniform weights in every dtype (helo_fast.reference).
        logits = tl.where(dropped_key, dropkey_value, logits)
    logits = tl.where(rk[None, :] < Lk, logits, float("-inf"))
    row_max = tl.max(logits, axis=1)
    e = tl.exp(logits - row_max[:, None])
    probs = e / tl.sum(e, axis=1)[:, None]
    if DROPOUT_MODE != _MASK_NONE:
        keep = tl.where(
            _dropped(DROPOUT_MODE, dropout_mask_ptr, index, valid, seed, dropout_p, _STREAM_DROPOUT), 0.0, 1.0
        )
    else:
        keep = tl.zeros_like(probs) + 1.0
    return probs, keep


@triton.jit
def _load_call_scalars(fparams_ptr, seed_ptr, prob_ptr):
    """The call's scalars, read on device: (scale, keep_scale, ln_eps, dropkey_value, seed, dropkey_p, dropout_p)."""
    return (
        tl.load(fparams_ptr),
        tl.load(fparams_ptr + 1),
        tl.load(fparams_ptr + 2),
        tl.load(fparams_ptr + 3),
        tl.load(seed_ptr),
        tl.load(prob_ptr),
        tl.load(prob_ptr + 1),
    )


@triton.jit
def _load_rows(ptr, pid, rows, cols, n_rows, H, D, stride_b, stride_h, stride_l):
    """Load [B, H, L, D] entry pid as a [rows, H*D] tile (column c = head c // D, dim c % D)."""
    head = cols // D
    valid = (rows[:, None] < n_rows) & (cols[None, :] < H * D)
    offs = pid * stride_b + head[None, :] * stride_h + rows[:, None] * stride_l + (cols % D)[None, :]
    return tl.load(ptr + offs, mask=valid, other=0.0), offs, valid


@triton.jit
def _attention_rows(
    q,
    k,
    v,
    res_ptr,
    bias_ptr,
    dropkey_mask_ptr,
    dropout_mask_ptr,
    seed,
    dropkey_p,
    dropout_p,
    scale,
    keep_scale,
    dropkey_value,
    pid,
    H,
    D,
    Lq,
    Lk,
    rq,
    rk,
    cols,
    stride_bb,
    stride_bh,
    stride_bq,
    stride_bk,
    HAS_BIAS: tl.constexpr,
    BIAS_BEFORE_SCALE: tl.constexpr,
    DROPKEY_MODE: tl.constexpr,
    DROPOUT_MODE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    """Heads concatenated plus residual, before LayerNorm: [BQ, BC]."""
    valid = (rq[:, None] < Lq) & (rk[None, :] < Lk)
    out = tl.zeros_like(q)
    for h in range(H):
        in_head = (cols // D) == h
        q_h = tl.where(in_head[None, :], q, 0.0)
        probs, keep = _head_weights(
            q_h,
            k,
            bias_ptr,
            dropkey_mask_ptr,
            dropout_mask_ptr,
            seed,
            dropkey_p,
            dropout_p,
            scale,
            keep_scale,
            dropkey_value,
            pid,
            h,
            H,
            Lq,
            Lk,
            rq,
            rk,
            valid,
            stride_bb,
            stride_bh,
            stride_bq,
            stride_bk,
            HAS_BIAS,
            BIAS_BEFORE_SCALE,
            DROPKEY_MODE,
            DROPOUT_MODE,
        )
        weights = probs * keep / keep_scale
        out += tl.where(in_head[None, :], tl.dot(weights.to(v.dtype), v, input_precision="ieee"), 0.0)
    if HAS_RESIDUAL:
        out_valid = (rq[:, None] < Lq) & (cols[None, :] < H * D)
        out = out + tl.load(res_ptr + pid * Lq * H * D + rq[:, None] * H * D + cols[None, :], mask=out_valid, other=0.0)
    return out


@triton.jit
def _layer_norm_stats(x, cols, HD, ln_eps):
    """(x - mean, rstd) over the HD valid columns of each row."""
    col_ok = cols[None, :] < HD
    mean = tl.sum(tl.where(col_ok, x, 0.0), axis=1) / HD
    centered = tl.where(col_ok, x - mean[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / HD
    return centered, 1.0 / tl.sqrt(var + ln_eps)


@autotune_num_warps(["Lq", "Lk", "H", "D"], **_AUTOTUNE)
@triton.jit
def _lcd_attention_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bias_ptr,
    res_ptr,
    lnw_ptr,
    lnb_ptr,
    dropkey_mask_ptr,
    dropout_mask_ptr,
    seed_ptr,
    fparams_ptr,
    prob_ptr,
    out_ptr,
    H,
    D,
    Lq,
    Lk,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_bb,
    stride_bh,
    stride_bq,
    stride_bk,
    HAS_BIAS: tl.constexpr,
    BIAS_BEFORE_SCALE: tl.constexpr,
    DROPKEY_MODE: tl.constexpr,
    DROPOUT_MODE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_LN: tl.constexpr,
    HAS_LN_BIAS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rq = tl.arange(0, BLOCK_Q)
    rk = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_C)
    scale, keep_scale, ln_eps, dropkey_value, seed, dropkey_p, dropout_p = _load_call_scalars(
        fparams_ptr, seed_ptr, prob_ptr
    )
    q, _, _ = _load_rows(q_ptr, pid, rq, cols, Lq, H, D, stride_qb, stride_qh, stride_ql)
    k, _, _ = _load_rows(k_ptr, pid, rk, cols, Lk, H, D, stride_kb, stride_kh, stride_kl)
    v, _, _ = _load_rows(v_ptr, pid, rk, cols, Lk, H, D, stride_vb, stride_vh, stride_vl)
    out = _attention_rows(
        q,
        k,
        v,
        res_ptr,
        bias_ptr,
        dropkey_mask_ptr,
        dropout_mask_ptr,
        seed,
        dropkey_p,
        dropout_p,
        scale,
        keep_scale,
        dropkey_value,
        pid,
        H,
        D,
        Lq,
        Lk,
        rq,
        rk,
        cols,
        stride_bb,
        stride_bh,
        stride_bq,
        stride_bk,
        HAS_BIAS,
        BIAS_BEFORE_SCALE,
        DROPKEY_MODE,
        DROPOUT_MODE,
        HAS_RESIDUAL,
    )
    col_ok = cols < H * D
    if HAS_LN:
        centered, rstd = _layer_norm_stats(out, cols, H * D, ln_eps)
        out = centered * rstd[:, None] * tl.load(lnw_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if HAS_LN_BIAS:
            out = out + tl.load(lnb_ptr + cols, mask=col_ok, other=0.0)[None, :]
    out_valid = (rq[:, None] < Lq) & col_ok[None, :]
    tl.store(out_ptr + pid * Lq * H * D + rq[:, None] * H * D + cols[None, :], out, mask=out_valid)


@autotune_num_warps(["Lq", "Lk", "H", "D"], **_AUTOTUNE)
@triton.jit
def _lcd_attention_bwd_kernel(
    grad_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    bias_ptr,
    res_ptr,
    lnw_ptr,
    dropkey_mask_ptr,
    dropout_mask_ptr,
    seed_ptr,
    fparams_ptr,
    prob_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    dbias_ptr,
    dres_ptr,
    dlnw_ptr,
    dlnb_ptr,
    H,
    D,
    Lq,
    Lk,
    stride_qb,
    stride_qh,
    stride_ql,
    stride_kb,
    stride_kh,
    stride_kl,
    stride_vb,
    stride_vh,
    stride_vl,
    stride_bb,
    stride_bh,
    stride_bq,
    stride_bk,
    HAS_BIAS: tl.constexpr,
    BIAS_BEFORE_SCALE: tl.constexpr,
    DROPKEY_MODE: tl.constexpr,
    DROPOUT_MODE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_LN: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rq = tl.arange(0, BLOCK_Q)
    rk = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_C)
    HD = H * D
    scale, keep_scale, ln_eps, dropkey_value, seed, dropkey_p, dropout_p = _load_call_scalars(
        fparams_ptr, seed_ptr, prob_ptr
    )
    q, q_offs, q_valid = _load_rows(q_ptr, pid, rq, cols, Lq, H, D, stride_qb, stride_qh, stride_ql)
    k, k_offs, k_valid = _load_rows(k_ptr, pid, rk, cols, Lk, H, D, stride_kb, stride_kh, stride_kl)
    v, v_offs, v_valid = _load_rows(v_ptr, pid, rk, cols, Lk, H, D, stride_vb, stride_vh, stride_vl)
    col_ok = cols < HD
    out_valid = (rq[:, None] < Lq) & col_ok[None, :]
    row_offs = pid * Lq * HD + rq[:, None] * HD + cols[None, :]
    grad = tl.load(grad_ptr + row_offs, mask=out_valid, other=0.0)
    if HAS_LN:
        x = _attention_rows(
            q,
            k,
            v,
            res_ptr,
            bias_ptr,
            dropkey_mask_ptr,
            dropout_mask_ptr,
            seed,
            dropkey_p,
            dropout_p,
            scale,
            keep_scale,
            dropkey_value,
            pid,
            H,
            D,
            Lq,
            Lk,
            rq,
            rk,
            cols,
            stride_bb,
            stride_bh,
            stride_bq,
            stride_bk,
            HAS_BIAS,
            BIAS_BEFORE_SCALE,
            DROPKEY_MODE,
            DROPOUT_MODE,
            HAS_RESIDUAL,
        )
        centered, rstd = _layer_norm_stats(x, cols, HD, ln_eps)
        x_hat = centered * rstd[:, None]
        tl.store(dlnw_ptr + pid * HD + cols, tl.sum(tl.where(out_valid, grad * x_hat, 0.0), axis=0), mask=col_ok)
        tl.store(dlnb_ptr + pid * HD + cols, tl.sum(grad, axis=0), mask=col_ok)
        d_hat = grad * tl.load(lnw_ptr + cols, mask=col_ok, other=0.0)[None, :]
        mean_d = tl.sum(d_hat, axis=1) / HD
        mean_dx = tl.sum(d_hat * x_hat, axis=1) / HD
        d_x = tl.where(out_valid, rstd[:, None] * (d_hat - mean_d[:, None] - x_hat * mean_dx[:, None]), 0.0)
    else:
        d_x = grad
    if HAS_RESIDUAL:
        tl.store(dres_ptr + row_offs, d_x, mask=out_valid)
    valid = (rq[:, None] < Lq) & (rk[None, :] < Lk)
    d_q = tl.zeros_like(q)
    d_k = tl.zeros_like(k)
    d_v = tl.zeros_like(v)
    for h in range(H):
        in_head = (cols // D) == h
        q_h = tl.where(in_head[None, :], q, 0.0)
        probs, keep = _head_weights(
            q_h,
            k,
            bias_ptr,
            dropkey_mask_ptr,
            dropout_mask_ptr,
            seed,
            dropkey_p,
            dropout_p,
            scale,
            keep_scale,
            dropkey_value,
            pid,
            h,
            H,
            Lq,
            Lk,
            rq,
            rk,
            valid,
            stride_bb,
            stride_bh,
            stride_bq,
            stride_bk,
            HAS_BIAS,
            BIAS_BEFORE_SCALE,
            DROPKEY_MODE,
            DROPOUT_MODE,
        )
        weights = probs * keep / keep_scale
        d_x_h = tl.where(in_head[None, :], d_x, 0.0)
        d_v += tl.dot(tl.trans(weights), d_x_h, input_precision="ieee")
        d_probs = tl.dot(d_x_h, tl.trans(v), input_precision="ieee") * keep / keep_scale
        d_logits = probs * (d_probs - tl.sum(d_probs * probs, axis=1)[:, None])
        d_logits = tl.where(valid, d_logits, 0.0)
        d_qk = d_logits * scale
        if HAS_BIAS:
            d_bias = d_qk if BIAS_BEFORE_SCALE else d_logits
            tl.store(dbias_ptr + ((pid * H + h) * Lq + rq[:, None]) * Lk + rk[None, :], d_bias, mask=valid)
        d_q += tl.where(in_head[None, :], tl.dot(d_qk, k, input_precision="ieee"), 0.0)
        d_k += tl.dot(tl.trans(d_qk), q_h, input_precision="ieee")
    tl.store(dq_ptr + q_offs, d_q, mask=q_valid)
    tl.store(dk_ptr + k_offs, d_k, mask=k_valid)
    tl.store(dv_ptr + v_offs, d_v, mask=v_valid)


def _mask_mode(p: float, mask, dtype: torch.dtype):
    """(mask mode, helo_fast._rng.mask_mode's; the explicit mask as the kernel reads it, or None)."""
    mode = mask_mode(p, mask)
    if mode == MASK_EXPLICIT:
        # Triton 3.8 sizes the MMA operands of a tl.dot from the narrowest load feeding them: a uint8 mask makes
        # them 4-wide in k, which its float64 MMA cannot lower (it asserts in MMAv2.cpp). float64 reads int32.
        return mode, mask.to(torch.int32 if dtype == torch.float64 else torch.uint8).contiguous()
    return mode, None


def _launch_args(q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_eps, seed, dropkey_mask, dropout_mask):
    """Common preparation of the forward and backward launches (compute dtype, layouts, scalars)."""
    dtype = compute_dtype(q.dtype)
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))
    bias_e = None if bias is None else bias.to(dtype).expand(batch, heads, lq, lk)
    residual = None if residual is None else residual.to(dtype).contiguous()
    dropkey_mode, dropkey_mask = _mask_mode(dropkey_p, dropkey_mask, dtype)
    dropout_mode, dropout_mask = _mask_mode(dropout_p, dropout_mask, dtype)
    keep_scale = 1.0 - dropout_p if dropout_mode != MASK_NONE else 1.0
    fparams = scalar_tensor((scale, keep_scale, ln_eps, dropkey_value(dtype)), dtype, q.device)
    probs = scalar_tensor((dropkey_p, dropout_p), torch.float32, q.device)  # compared as float32, like _rng
    if seed is None:
        seed = scalar_tensor((0,), torch.int64, q.device)  # unused: no hash mask in this call
    seed = seed.to(device=q.device, dtype=torch.int64, non_blocking=True)
    dummy = q
    bias_strides = bias_e.stride() if bias_e is not None else (0, 0, 0, 0)
    tensors = dict(
        q=q,
        k=k,
        v=v,
        bias=bias_e if bias_e is not None else dummy,
        res=residual if residual is not None else dummy,
        dropkey_mask=dropkey_mask if dropkey_mask is not None else dummy,
        dropout_mask=dropout_mask if dropout_mask is not None else dummy,
        seed=seed,
        fparams=fparams,
        probs=probs,
    )
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *bias_strides)
    flags = dict(
        HAS_BIAS=bias is not None,
        DROPKEY_MODE=dropkey_mode,
        DROPOUT_MODE=dropout_mode,
        HAS_RESIDUAL=residual is not None,
        BLOCK_Q=block_size(lq),
        BLOCK_K=block_size(lk),
        BLOCK_C=block_size(heads * dim),
    )
    return dtype, tensors, strides, flags


def lcd_attention_fwd(
    q,
    k,
    v,
    bias,
    scale: float,
    dropkey_p: float,
    dropout_p: float,
    residual,
    ln_weight,
    ln_bias,
    ln_eps: float,
    bias_before_scale: bool,
    seed,
    dropkey_mask,
    dropout_mask,
):
    """Fused attention forward -> out [B, Lq, H*D] (see helo_fast.reference.lcd_attention); the arguments in the
    op's one order (helo_fast._ops.lcd_attention.OP_ARGS).

    q [B, H, Lq, D]; k, v [B, H, Lk, D]; bias broadcastable to [B, H, Lq, Lk] or None; residual
    [B, Lq, H*D] or None; ln_weight / ln_bias [H*D] or None; seed: int64 tensor [1] (used where a
    probability is > 0 and no explicit bool mask [B, H, Lq, Lk] is given).
    """
    batch, heads, lq, dim = q.shape
    dtype, t, strides, flags = _launch_args(
        q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_eps, seed, dropkey_mask, dropout_mask
    )
    out = torch.empty((batch, lq, heads * dim), dtype=dtype, device=q.device)
    lnw = ln_weight.to(dtype).contiguous() if ln_weight is not None else t["q"]
    lnb = ln_bias.to(dtype).contiguous() if ln_bias is not None else t["q"]
    _lcd_attention_fwd_kernel[(batch,)](
        t["q"],
        t["k"],
        t["v"],
        t["bias"],
        t["res"],
        lnw,
        lnb,
        t["dropkey_mask"],
        t["dropout_mask"],
        t["seed"],
        t["fparams"],
        t["probs"],
        out,
        heads,
        dim,
        lq,
        k.shape[2],
        *strides,
        BIAS_BEFORE_SCALE=bias_before_scale,
        HAS_LN=ln_weight is not None,
        HAS_LN_BIAS=ln_bias is not None,
        **flags,
    )
    return out.to(q.dtype)


def lcd_attention_bwd(
    grad_out,
    q,
    k,
    v,
    bias,
    scale: float,
    dropkey_p: float,
    dropout_p: float,
    residual,
    ln_weight,
    ln_bias,
    ln_eps: float,
    bias_before_scale: bool,
    seed,
    dropkey_mask,
    dropout_mask,
):
    """Fused attention backward (recomputes the forward) -> (dq, dk, dv, dbias, dresidual, dln_weight, dln_bias).

    The forward's arguments after grad_out. dbias is summed to ``bias.shape``; entries are None where the input was
    None. The kernel never reads ln_bias (LayerNorm's input and weight gradients do not depend on it): only whether
    it is given and its dtype, that of its gradient.
    """
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    dtype, t, strides, flags = _launch_args(
        q, k, v, bias, scale, dropkey_p, dropout_p, residual, ln_eps, seed, dropkey_mask, dropout_mask
    )
    grad_out = grad_out.to(dtype).contiguous()
    dq, dk, dv = (torch.empty_like(t[name]) for name in ("q", "k", "v"))
    dbias = torch.empty((batch, heads, lq, lk), dtype=dtype, device=q.device) if bias is not None else dq
    dres = torch.empty_like(grad_out) if residual is not None else dq
    has_ln = ln_weight is not None
    dlnw = torch.empty((batch, heads * dim), dtype=dtype, device=q.device) if has_ln else dq
    dlnb = torch.empty((batch, heads * dim), dtype=dtype, device=q.device) if has_ln else dq  # the kernel writes it
    lnw = ln_weight.to(dtype).contiguous() if has_ln else t["q"]
    _lcd_attention_bwd_kernel[(batch,)](
        grad_out,
        t["q"],
        t["k"],
        t["v"],
        t["bias"],
        t["res"],
        lnw,
        t["dropkey_mask"],
        t["dropout_mask"],
        t["seed"],
        t["fparams"],
        t["probs"],
        dq,
        dk,
        dv,
        dbias,
        dres,
        dlnw,
        dlnb,
        heads,
        dim,
        lq,
        lk,
        *strides,
        BIAS_BEFORE_SCALE=bias_before_scale,
        HAS_LN=has_ln,
        **flags,
    )
    out_dtype = q.dtype
    return (
        dq.to(out_dtype),
        dk.to(out_dtype),
        dv.to(out_dtype),
        dbias.sum_to_size(bias.shape).to(out_dtype) if bias is not None else None,
        dres.to(out_dtype) if residual is not None else None,
        dlnw.sum(0).to(ln_weight.dtype) if has_ln else None,
        dlnb.sum(0).to(ln_bias.dtype) if ln_bias is not None else None,
    )
