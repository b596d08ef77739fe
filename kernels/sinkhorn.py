"""Triton kernels for batched log-domain Sinkhorn and IPOT (one program per OT problem).

Each program holds its whole [n, m] cost tile on chip (n, m padded to powers of two, masked), runs
exactly ``n_iters`` iterations in the order of ``helo_fast.reference.ot`` and writes the plan.
With ``SAVE`` the per-iteration potentials are written to small history buffers
([B, n_iters, n] / [B, n_iters, m]); the backward kernels recompute every iteration's tile from
them and the cost, so an unrolled backward needs O(n_iters * (n + m)) memory per problem.

Scalars that must keep float64 precision (eps, beta, log m) travel in a small tensor of the
compute dtype (Triton passes Python floats as float32).
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from . import interpreter_enabled

NEG_INF = float("-inf")


def block_size(size: int) -> int:
    """Padded tile extent: the next power of two, at least 16 (tl.dot's minimum on GPU)."""
    return max(16, triton.next_power_of_2(int(size)))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32/16/bf16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def num_warps_configs():
    """Autotune over the warp count on GPU; a single config under the interpreter (no timing runs).

    HELO_TRITON_NUM_WARPS="4" (or "2,4") narrows the GPU choice: every config is compiled and timed for each
    new shape, which dominates test runs over many shapes."""
    if interpreter_enabled():
        warps = (4,)
    else:
        setting = os.environ.get("HELO_TRITON_NUM_WARPS", "1,2,4,8")
        try:
            warps = tuple(int(w) for w in setting.split(","))
        except ValueError:
            raise ValueError(f"HELO_TRITON_NUM_WARPS must be a comma-separated list of ints, "
                             f"got {setting!r}") from None
    return [triton.Config({}, num_warps=w) for w in warps]


# ----------------------------------------------------------------------------- tile helpers

@triton.jit
def _lse(x, AXIS: tl.constexpr):
    """logsumexp along AXIS; an all -inf slice gives -inf (not NaN)."""
    mx = tl.max(x, axis=AXIS)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    total = tl.sum(tl.exp(x - tl.expand_dims(mx, AXIS)), axis=AXIS)
    return tl.where(total > 0, tl.log(tl.where(total > 0, total, 1.0)), float("-inf")) + mx


@triton.jit
def _log_ratio(log_w, lse):
    """log_w - lse, and -inf where log_w is -inf (a zero-mass row or column; lse may be -inf there too)."""
    return tl.where(log_w == float("-inf"), log_w, log_w - lse)


@triton.jit
def _over_marginal(x, w):
    """x / w for w > 0 and 0 where the marginal w is 0 (the gradient of a zero-mass entry: HELO reference)."""
    return tl.where(w > 0, x / tl.where(w > 0, w, 1.0), 0.0)


@triton.jit
def _softmax_masked(x, mask, AXIS: tl.constexpr):
    """softmax along AXIS of x (x = -inf where ~mask); 0 where ~mask."""
    lse = _lse(x, AXIS)
    lse = tl.where(lse == float("-inf"), 0.0, lse)  # only in fully padded slices
    return tl.where(mask, tl.exp(x - tl.expand_dims(lse, AXIS)), 0.0)


@triton.jit
def _sinkhorn_tile(cost, log_a, log_b, mask, mn, mm, eps, n_iters, f_hist_ptr, g_hist_ptr, rn, rm, n, m,
                   SAVE: tl.constexpr):
    """Run ``n_iters`` log-domain Sinkhorn iterations on one tile; return the potentials (f, g)."""
    f = tl.zeros_like(log_a)
    g = tl.zeros_like(log_b)
    for it in range(n_iters):
        g = eps * _log_ratio(log_b, _lse(tl.where(mask, (f[:, None] - cost) / eps, float("-inf")), 0))
        g = tl.where(mm, g, 0.0)
        f = eps * _log_ratio(log_a, _lse(tl.where(mask, (g[None, :] - cost) / eps, float("-inf")), 1))
        f = tl.where(mn, f, 0.0)
        if SAVE:
            tl.store(f_hist_ptr + it * n + rn, f, mask=mn)
            tl.store(g_hist_ptr + it * m + rm, g, mask=mm)
    return f, g


@triton.jit
def _ipot_tile(cost, log_a, log_b, mask, mn, mm, beta, neg_log_m, n_iters, d_hist_ptr, s_hist_ptr,
               cd_hist_ptr, cs_hist_ptr, rn, rm, n, m, SAVE: tl.constexpr):
    """Run ``n_iters`` log-domain IPOT iterations on one tile; return log T (-inf outside the mask).

    Saves log delta_k, log sigma_k and their running sums (for log T_k = k L + cumsum terms). The
    sums are kept in float64 whatever the compute dtype: they grow like k |L| and the backward
    rebuilds each log Q_k from them, which in float32 would lose ~log2(k) bits to cancellation.
    """
    log_kernel = -cost / beta
    log_plan = tl.zeros_like(cost)
    log_sigma = tl.zeros_like(log_b) + neg_log_m
    cum_d = tl.zeros_like(log_a).to(tl.float64)
    cum_s = tl.zeros_like(log_b).to(tl.float64)
    for it in range(n_iters):
        log_q = log_kernel + log_plan
        log_delta = _log_ratio(log_a, _lse(tl.where(mask, log_q + log_sigma[None, :], float("-inf")), 1))
        log_delta = tl.where(mn, log_delta, 0.0)
        log_sigma = _log_ratio(log_b, _lse(tl.where(mask, log_q + log_delta[:, None], float("-inf")), 0))
        log_sigma = tl.where(mm, log_sigma, 0.0)
        log_plan = log_delta[:, None] + log_q + log_sigma[None, :]
        if SAVE:
            cum_d += log_delta.to(tl.float64)
            cum_s += log_sigma.to(tl.float64)
            tl.store(d_hist_ptr + it * n + rn, log_delta, mask=mn)
            tl.store(s_hist_ptr + it * m + rm, log_sigma, mask=mm)
            tl.store(cd_hist_ptr + it * n + rn, cum_d, mask=mn)
            tl.store(cs_hist_ptr + it * m + rm, cum_s, mask=mm)
    return tl.where(mask, log_plan, float("-inf"))


@triton.jit
def _load_problem(cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn, stride_cm, stride_ab, stride_bb,
                  BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    rn = tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    mn = rn < n
    mm = rm < m
    mask = mn[:, None] & mm[None, :]
    cost = tl.load(cost_ptr + pid * stride_cb + rn[:, None] * stride_cn + rm[None, :] * stride_cm, mask=mask,
                   other=0.0)
    a = tl.load(a_ptr + pid * stride_ab + rn, mask=mn, other=1.0)
    b = tl.load(b_ptr + pid * stride_bb + rm, mask=mm, other=1.0)
    return rn, rm, mn, mm, mask, cost, a, b


# ----------------------------------------------------------------------------- sinkhorn

@triton.autotune(configs=num_warps_configs(), key=["n", "m"])
@triton.jit
def _sinkhorn_fwd_kernel(cost_ptr, a_ptr, b_ptr, reg_ptr, plan_ptr, f_hist_ptr, g_hist_ptr, n, m, n_iters,
                         stride_cb, stride_cn, stride_cm, stride_ab, stride_bb,
                         SAVE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    rn, rm, mn, mm, mask, cost, a, b = _load_problem(cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn,
                                                     stride_cm, stride_ab, stride_bb, BLOCK_N, BLOCK_M)
    eps = tl.load(reg_ptr)
    f, g = _sinkhorn_tile(cost, tl.log(a), tl.log(b), mask, mn, mm, eps, n_iters,
                          f_hist_ptr + pid * n_iters * n, g_hist_ptr + pid * n_iters * m, rn, rm, n, m, SAVE)
    plan = tl.exp(tl.where(mask, (f[:, None] + g[None, :] - cost) / eps, float("-inf")))
    tl.store(plan_ptr + pid * n * m + rn[:, None] * m + rm[None, :], plan, mask=mask)


@triton.jit
def _sinkhorn_plan_from_hist(cost, mask, eps, n_iters, f_hist_ptr, g_hist_ptr, rn, rm, n, m, mn, mm):
    """The plan of the last iteration, rebuilt from the saved potentials (0 outside the mask)."""
    f = tl.load(f_hist_ptr + (n_iters - 1) * n + rn, mask=mn, other=0.0)
    g = tl.load(g_hist_ptr + (n_iters - 1) * m + rm, mask=mm, other=0.0)
    return tl.exp(tl.where(mask, (f[:, None] + g[None, :] - cost) / eps, float("-inf")))


@triton.jit
def _sinkhorn_tile_bwd(grad, cost, mask, mn, mm, eps, n_iters, f_hist_ptr, g_hist_ptr, rn, rm, n, m):
    """Backward of ``_sinkhorn_tile`` + plan: grad w.r.t. the plan -> (d cost, d log a, d log b)."""
    plan = _sinkhorn_plan_from_hist(cost, mask, eps, n_iters, f_hist_ptr, g_hist_ptr, rn, rm, n, m, mn, mm)
    d_log_plan = grad * plan
    d_cost = -d_log_plan / eps
    d_f = tl.sum(d_log_plan, axis=1) / eps
    d_g = tl.sum(d_log_plan, axis=0) / eps
    d_log_a = tl.zeros_like(d_f)
    d_log_b = tl.zeros_like(d_g)
    for rev in range(n_iters):
        it = n_iters - 1 - rev
        # f_k = eps log a - eps LSE_j((g_k - C) / eps)
        g = tl.load(g_hist_ptr + it * m + rm, mask=mm, other=0.0)
        row_soft = _softmax_masked(tl.where(mask, (g[None, :] - cost) / eps, float("-inf")), mask, 1)
        d_log_a += eps * d_f
        d_g -= tl.sum(d_f[:, None] * row_soft, axis=0)
        d_cost += d_f[:, None] * row_soft
        # g_k = eps log b - eps LSE_i((f_{k-1} - C) / eps), f_0 = 0
        f_prev = tl.load(f_hist_ptr + (it - 1) * n + rn, mask=mn & (it > 0), other=0.0)
        col_soft = _softmax_masked(tl.where(mask, (f_prev[:, None] - cost) / eps, float("-inf")), mask, 0)
        d_log_b += eps * d_g
        d_f = -tl.sum(d_g[None, :] * col_soft, axis=1)
        d_cost += d_g[None, :] * col_soft
        d_g = tl.zeros_like(d_g)
    return d_cost, d_log_a, d_log_b


@triton.autotune(configs=num_warps_configs(), key=["n", "m"])
@triton.jit
def _sinkhorn_bwd_kernel(grad_ptr, cost_ptr, a_ptr, b_ptr, reg_ptr, f_hist_ptr, g_hist_ptr,
                         dcost_ptr, da_ptr, db_ptr, n, m, n_iters,
                         stride_cb, stride_cn, stride_cm, stride_ab, stride_bb, stride_gb, stride_gn, stride_gm,
                         BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    rn, rm, mn, mm, mask, cost, a, b = _load_problem(cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn,
                                                     stride_cm, stride_ab, stride_bb, BLOCK_N, BLOCK_M)
    eps = tl.load(reg_ptr)
    grad = tl.load(grad_ptr + pid * stride_gb + rn[:, None] * stride_gn + rm[None, :] * stride_gm, mask=mask,
                   other=0.0)
    d_cost, d_log_a, d_log_b = _sinkhorn_tile_bwd(grad, cost, mask, mn, mm, eps, n_iters,
                                                  f_hist_ptr + pid * n_iters * n, g_hist_ptr + pid * n_iters * m,
                                                  rn, rm, n, m)
    tl.store(dcost_ptr + pid * n * m + rn[:, None] * m + rm[None, :], d_cost, mask=mask)
    tl.store(da_ptr + pid * n + rn, _over_marginal(d_log_a, a), mask=mn)
    tl.store(db_ptr + pid * m + rm, _over_marginal(d_log_b, b), mask=mm)


@functools.lru_cache(maxsize=64)
def _cached_scalars(values, dtype, device):
    return torch.tensor(values, dtype=dtype, device=device)


def scalar_tensor(values, dtype, device):
    """The float scalars ``values`` as a (cached, never written) tensor of ``dtype`` on ``device``.

    Cached so that a CUDA call does not pay a host-to-device copy for its constants every time.
    """
    return _cached_scalars(tuple(float(v) for v in values), dtype, torch.device(device))


def _prepare(cost, a, b):
    dtype = compute_dtype(cost.dtype)
    return cost.to(dtype), a.to(dtype).contiguous(), b.to(dtype).contiguous(), dtype


def sinkhorn_fwd(cost, a, b, eps: float, n_iters: int, save: bool):
    """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], f_hist [B, K, n], g_hist [B, K, m]).

    The histories (K = n_iters) are empty ([B, 0, n] / [B, 0, m]) unless ``save``.
    """
    out_dtype = cost.dtype
    cost, a, b, dtype = _prepare(cost, a, b)
    batch, n, m = cost.shape
    plan = torch.empty((batch, n, m), dtype=dtype, device=cost.device)
    k = n_iters if save else 0
    f_hist = torch.empty((batch, k, n), dtype=dtype, device=cost.device)
    g_hist = torch.empty((batch, k, m), dtype=dtype, device=cost.device)
    _sinkhorn_fwd_kernel[(batch,)](cost, a, b, scalar_tensor([eps], dtype, cost.device), plan, f_hist, g_hist,
                                   n, m, n_iters, cost.stride(0), cost.stride(1), cost.stride(2), a.stride(0),
                                   b.stride(0), SAVE=save, BLOCK_N=block_size(n), BLOCK_M=block_size(m))
    return plan.to(out_dtype), f_hist, g_hist


def sinkhorn_bwd(grad_plan, cost, a, b, f_hist, g_hist, eps: float, n_iters: int):
    """Gradient of the unrolled Sinkhorn plan -> (d_cost [B, n, m], d_a [B, n], d_b [B, m])."""
    out_dtype = cost.dtype
    cost, a, b, dtype = _prepare(cost, a, b)
    grad_plan = grad_plan.to(dtype)
    batch, n, m = cost.shape
    d_cost = torch.empty((batch, n, m), dtype=dtype, device=cost.device)
    d_a = torch.empty((batch, n), dtype=dtype, device=cost.device)
    d_b = torch.empty((batch, m), dtype=dtype, device=cost.device)
    _sinkhorn_bwd_kernel[(batch,)](grad_plan, cost, a, b, scalar_tensor([eps], dtype, cost.device),
                                   f_hist.contiguous(), g_hist.contiguous(), d_cost, d_a, d_b, n, m, n_iters,
                                   cost.stride(0), cost.stride(1), cost.stride(2), a.stride(0), b.stride(0),
                                   grad_plan.stride(0), grad_plan.stride(1), grad_plan.stride(2),
                                   BLOCK_N=block_size(n), BLOCK_M=block_size(m))
    return d_cost.to(out_dtype), d_a.to(out_dtype), d_b.to(out_dtype)


# ----------------------------------------------------------------------------- ipot

@triton.autotune(configs=num_warps_configs(), key=["n", "m"])
@triton.jit
def _ipot_fwd_kernel(cost_ptr, a_ptr, b_ptr, reg_ptr, plan_ptr, d_hist_ptr, s_hist_ptr, cd_hist_ptr, cs_hist_ptr,
                     n, m, n_iters, stride_cb, stride_cn, stride_cm, stride_ab, stride_bb,
                     SAVE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    rn, rm, mn, mm, mask, cost, a, b = _load_problem(cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn,
                                                     stride_cm, stride_ab, stride_bb, BLOCK_N, BLOCK_M)
    beta = tl.load(reg_ptr)
    neg_log_m = tl.load(reg_ptr + 1)
    log_plan = _ipot_tile(cost, tl.log(a), tl.log(b), mask, mn, mm, beta, neg_log_m, n_iters,
                          d_hist_ptr + pid * n_iters * n, s_hist_ptr + pid * n_iters * m,
                          cd_hist_ptr + pid * n_iters * n, cs_hist_ptr + pid * n_iters * m, rn, rm, n, m, SAVE)
    tl.store(plan_ptr + pid * n * m + rn[:, None] * m + rm[None, :], tl.exp(log_plan), mask=mask)


@triton.jit
def _ipot_log_plan_from_hist(log_kernel, mask, n_iters, cd_hist_ptr, cs_hist_ptr, rn, rm, n, m, mn, mm, K):
    """log T_K = K L + cumsum(log delta)_i + cumsum(log sigma)_j (float64 sums; -inf outside the mask)."""
    has_k = K > 0
    cum_d = tl.load(cd_hist_ptr + (K - 1) * n + rn, mask=mn & has_k, other=0.0)
    cum_s = tl.load(cs_hist_ptr + (K - 1) * m + rm, mask=mm & has_k, other=0.0)
    log_plan = (K * log_kernel.to(tl.float64) + cum_d[:, None] + cum_s[None, :]).to(log_kernel.dtype)
    return tl.where(mask, log_plan, float("-inf"))


@triton.jit
def _ipot_tile_bwd(grad, cost, mask, mn, mm, beta, neg_log_m, n_iters, d_hist_ptr, s_hist_ptr, cd_hist_ptr,
                   cs_hist_ptr, rn, rm, n, m):
    """Backward of ``_ipot_tile`` + exp: grad w.r.t. the plan -> (d cost, d log a, d log b)."""
    log_kernel = -cost / beta
    log_plan = _ipot_log_plan_from_hist(log_kernel, mask, n_iters, cd_hist_ptr, cs_hist_ptr, rn, rm, n, m, mn, mm,
                                        n_iters)
    d_plan = grad * tl.exp(log_plan)  # gradient w.r.t. log T_K
    d_kernel = tl.zeros_like(cost)
    carry_s = tl.sum(tl.zeros_like(cost), axis=0)  # gradient reaching log sigma_k from delta_{k+1}
    d_log_a = tl.sum(tl.zeros_like(cost), axis=1)
    d_log_b = tl.sum(tl.zeros_like(cost), axis=0)
    for rev in range(n_iters):
        it = n_iters - 1 - rev  # iteration k = it + 1
        has_prev = it > 0
        log_delta = tl.load(d_hist_ptr + it * n + rn, mask=mn, other=0.0)
        prev_sigma = tl.load(s_hist_ptr + (it - 1) * m + rm, mask=mm & has_prev, other=0.0)
        prev_sigma = tl.where(has_prev, prev_sigma, neg_log_m)
        # Q_k = L + T_{k-1}
        log_q = log_kernel + _ipot_log_plan_from_hist(log_kernel, mask, n_iters, cd_hist_ptr, cs_hist_ptr, rn, rm,
                                                      n, m, mn, mm, it)  # T_0 = 0: the sums load as 0
        # T_k = delta_k + Q_k + sigma_k
        d_q = d_plan
        d_delta = tl.sum(d_plan, axis=1)
        d_sigma = tl.sum(d_plan, axis=0) + carry_s
        # sigma_k = log b - LSE_i(Q_k + delta_k)
        col_soft = _softmax_masked(tl.where(mask, log_q + log_delta[:, None], float("-inf")), mask, 0)
        d_log_b += d_sigma
        d_q -= d_sigma[None, :] * col_soft
        d_delta -= tl.sum(d_sigma[None, :] * col_soft, axis=1)
        # delta_k = log a - LSE_j(Q_k + sigma_{k-1})
        row_soft = _softmax_masked(tl.where(mask, log_q + prev_sigma[None, :], float("-inf")), mask, 1)
        d_log_a += d_delta
        d_q -= d_delta[:, None] * row_soft
        carry_s = -tl.sum(d_delta[:, None] * row_soft, axis=0)
        d_kernel += d_q
        d_plan = d_q
    return -d_kernel / beta, d_log_a, d_log_b


@triton.autotune(configs=num_warps_configs(), key=["n", "m"])
@triton.jit
def _ipot_bwd_kernel(grad_ptr, cost_ptr, a_ptr, b_ptr, reg_ptr, d_hist_ptr, s_hist_ptr, cd_hist_ptr, cs_hist_ptr,
                     dcost_ptr, da_ptr, db_ptr, n, m, n_iters,
                     stride_cb, stride_cn, stride_cm, stride_ab, stride_bb, stride_gb, stride_gn, stride_gm,
                     BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    rn, rm, mn, mm, mask, cost, a, b = _load_problem(cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn,
                                                     stride_cm, stride_ab, stride_bb, BLOCK_N, BLOCK_M)
    beta = tl.load(reg_ptr)
    neg_log_m = tl.load(reg_ptr + 1)
    grad = tl.load(grad_ptr + pid * stride_gb + rn[:, None] * stride_gn + rm[None, :] * stride_gm, mask=mask,
                   other=0.0)
    offset_n = pid * n_iters * n
    offset_m = pid * n_iters * m
    d_cost, d_log_a, d_log_b = _ipot_tile_bwd(grad, cost, mask, mn, mm, beta, neg_log_m, n_iters,
                                              d_hist_ptr + offset_n, s_hist_ptr + offset_m,
                                              cd_hist_ptr + offset_n, cs_hist_ptr + offset_m, rn, rm, n, m)
    tl.store(dcost_ptr + pid * n * m + rn[:, None] * m + rm[None, :], d_cost, mask=mask)
    tl.store(da_ptr + pid * n + rn, _over_marginal(d_log_a, a), mask=mn)
    tl.store(db_ptr + pid * m + rm, _over_marginal(d_log_b, b), mask=mm)


def ipot_fwd(cost, a, b, beta: float, n_iters: int, save: bool):
    """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], d_hist, s_hist, cd_hist, cs_hist).

    Histories ([B, K, n] / [B, K, m], K = n_iters; empty unless ``save``): log delta_k, log sigma_k
    (compute dtype) and their running sums (float64).
    """
    out_dtype = cost.dtype
    cost, a, b, dtype = _prepare(cost, a, b)
    batch, n, m = cost.shape
    plan = torch.empty((batch, n, m), dtype=dtype, device=cost.device)
    k = n_iters if save else 0
    hists = [torch.empty((batch, k, size), dtype=dt, device=cost.device)
             for size, dt in ((n, dtype), (m, dtype), (n, torch.float64), (m, torch.float64))]
    _ipot_fwd_kernel[(batch,)](cost, a, b, scalar_tensor([beta, -math.log(m)], dtype, cost.device), plan, *hists,
                               n, m, n_iters, cost.stride(0), cost.stride(1), cost.stride(2), a.stride(0),
                               b.stride(0), SAVE=save, BLOCK_N=block_size(n), BLOCK_M=block_size(m))
    return (plan.to(out_dtype), *hists)


def ipot_bwd(grad_plan, cost, a, b, d_hist, s_hist, cd_hist, cs_hist, beta: float, n_iters: int):
    """Gradient of the unrolled IPOT plan -> (d_cost [B, n, m], d_a [B, n], d_b [B, m])."""
    out_dtype = cost.dtype
    cost, a, b, dtype = _prepare(cost, a, b)
    grad_plan = grad_plan.to(dtype)
    batch, n, m = cost.shape
    d_cost = torch.empty((batch, n, m), dtype=dtype, device=cost.device)
    d_a = torch.empty((batch, n), dtype=dtype, device=cost.device)
    d_b = torch.empty((batch, m), dtype=dtype, device=cost.device)
    hists = [h.contiguous() for h in (d_hist, s_hist, cd_hist, cs_hist)]
    _ipot_bwd_kernel[(batch,)](grad_plan, cost, a, b, scalar_tensor([beta, -math.log(m)], dtype, cost.device),
                               *hists, d_cost, d_a, d_b, n, m, n_iters,
                               cost.stride(0), cost.stride(1), cost.stride(2), a.stride(0), b.stride(0),
                               grad_plan.stride(0), grad_plan.stride(1), grad_plan.stride(2),
                               BLOCK_N=block_size(n), BLOCK_M=block_size(m))
    return d_cost.to(out_dtype), d_a.to(out_dtype), d_b.to(out_dtype)
