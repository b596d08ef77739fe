"""Triton kernels for batched log-domain IPOT (HELO_SPEC §4.5; one program per OT problem).

Each program holds its whole [n, m] cost tile on chip (n, m padded to powers of two, masked), runs
exactly ``n_iters`` iterations in the order of ``helo_fast.reference.ipot`` and writes the plan.
With ``SAVE`` the per-iteration log delta / log sigma and their running sums are written to small history
buffers ([B, n_iters, n] / [B, n_iters, m]); the backward kernel rebuilds every iteration's tile from
them and the cost, so an unrolled backward needs O(n_iters * (n + m)) memory per problem.

``_ipot_fwd_tol_kernel`` (``tol=``) runs the same iterations in a loop that each program leaves at its own count:
the first check (every CHECK_EVERY-th iteration and the last) where its marginal violation is <= tol.

Scalars that must keep float64 precision (beta, log m, tol) travel in a small tensor of the compute dtype
(Triton passes Python floats as float32).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from helo_fast.kernels.ot_tiles import (
    CHECK_EVERY,
    _load_problem,
    _log_ratio,
    _lse,
    _over_marginal,
    _prepare,
    _softmax_masked,
)
from helo_fast.kernels.triton_utils import autotune_num_warps, block_size, scalar_tensor


@triton.jit
def _ipot_tile(
    cost,
    log_a,
    log_b,
    mask,
    mn,
    mm,
    beta,
    neg_log_m,
    n_iters,
    d_hist_ptr,
    s_hist_ptr,
    cd_hist_ptr,
    cs_hist_ptr,
    rn,
    rm,
    n,
    m,
    SAVE: tl.constexpr,
):
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


@autotune_num_warps(["n", "m"])
@triton.jit
def _ipot_fwd_kernel(
    cost_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    plan_ptr,
    d_hist_ptr,
    s_hist_ptr,
    cd_hist_ptr,
    cs_hist_ptr,
    n,
    m,
    n_iters,
    stride_cb,
    stride_cn,
    stride_cm,
    stride_ab,
    stride_bb,
    SAVE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    rn, rm, mn, mm, mask, cost, a, b = _load_problem(
        cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn, stride_cm, stride_ab, stride_bb, BLOCK_N, BLOCK_M
    )
    beta = tl.load(scalars_ptr)
    neg_log_m = tl.load(scalars_ptr + 1)
    log_plan = _ipot_tile(
        cost,
        tl.log(a),
        tl.log(b),
        mask,
        mn,
        mm,
        beta,
        neg_log_m,
        n_iters,
        d_hist_ptr + pid * n_iters * n,
        s_hist_ptr + pid * n_iters * m,
        cd_hist_ptr + pid * n_iters * n,
        cs_hist_ptr + pid * n_iters * m,
        rn,
        rm,
        n,
        m,
        SAVE,
    )
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
def _ipot_tile_bwd(
    grad, cost, mask, mn, mm, beta, neg_log_m, n_iters, d_hist_ptr, s_hist_ptr, cd_hist_ptr, cs_hist_ptr, rn, rm, n, m
):
    """Backward of ``_ipot_tile`` + exp: grad w.r.t. the plan -> (d cost, d log a, d log b)."""
    log_kernel = -cost / beta
    log_plan = _ipot_log_plan_from_hist(
        log_kernel, mask, n_iters, cd_hist_ptr, cs_hist_ptr, rn, rm, n, m, mn, mm, n_iters
    )
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
        log_q = log_kernel + _ipot_log_plan_from_hist(
            log_kernel, mask, n_iters, cd_hist_ptr, cs_hist_ptr, rn, rm, n, m, mn, mm, it
        )  # T_0 = 0: the sums load as 0
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


@autotune_num_warps(["n", "m"])
@triton.jit
def _ipot_bwd_kernel(
    grad_ptr,
    cost_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    d_hist_ptr,
    s_hist_ptr,
    cd_hist_ptr,
    cs_hist_ptr,
    dcost_ptr,
    da_ptr,
    db_ptr,
    n,
    m,
    n_iters,
    stride_cb,
    stride_cn,
    stride_cm,
    stride_ab,
    stride_bb,
    stride_gb,
    stride_gn,
    stride_gm,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    rn, rm, mn, mm, mask, cost, a, b = _load_problem(
        cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn, stride_cm, stride_ab, stride_bb, BLOCK_N, BLOCK_M
    )
    beta = tl.load(scalars_ptr)
    neg_log_m = tl.load(scalars_ptr + 1)
    grad = tl.load(grad_ptr + pid * stride_gb + rn[:, None] * stride_gn + rm[None, :] * stride_gm, mask=mask, other=0.0)
    offset_n = pid * n_iters * n
    offset_m = pid * n_iters * m
    d_cost, d_log_a, d_log_b = _ipot_tile_bwd(
        grad,
        cost,
        mask,
        mn,
        mm,
        beta,
        neg_log_m,
        n_iters,
        d_hist_ptr + offset_n,
        s_hist_ptr + offset_m,
        cd_hist_ptr + offset_n,
        cs_hist_ptr + offset_m,
        rn,
        rm,
        n,
        m,
    )
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
    hists = [
        torch.empty((batch, k, size), dtype=dt, device=cost.device)
        for size, dt in ((n, dtype), (m, dtype), (n, torch.float64), (m, torch.float64))
    ]
    _ipot_fwd_kernel[(batch,)](
        cost,
        a,
        b,
        scalar_tensor([beta, -math.log(m)], dtype, cost.device),
        plan,
        *hists,
        n,
        m,
        n_iters,
        cost.stride(0),
        cost.stride(1),
        cost.stride(2),
        a.stride(0),
        b.stride(0),
        SAVE=save,
        BLOCK_N=block_size(n),
        BLOCK_M=block_size(m),
    )
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
    _ipot_bwd_kernel[(batch,)](
        grad_plan,
        cost,
        a,
        b,
        scalar_tensor([beta, -math.log(m)], dtype, cost.device),
        *hists,
        d_cost,
        d_a,
        d_b,
        n,
        m,
        n_iters,
        cost.stride(0),
        cost.stride(1),
        cost.stride(2),
        a.stride(0),
        b.stride(0),
        grad_plan.stride(0),
        grad_plan.stride(1),
        grad_plan.stride(2),
        BLOCK_N=block_size(n),
        BLOCK_M=block_size(m),
    )
    return d_cost.to(out_dtype), d_a.to(out_dtype), d_b.to(out_dtype)


# ---- with a tolerance (helo_fast.ipot(..., tol=)): each program stops at its own count --------------------------
@triton.jit
def _ipot_tile_tol(
    cost,
    log_a,
    log_b,
    a,
    mask,
    mn,
    mm,
    beta,
    neg_log_m,
    tol,
    n_iters,
    d_hist_ptr,
    s_hist_ptr,
    cd_hist_ptr,
    cs_hist_ptr,
    rn,
    rm,
    n,
    m,
    SAVE: tl.constexpr,
):
    """``_ipot_tile`` that stops after the first check (every CHECK_EVERY-th iteration and the last) where the
    row-marginal violation sum_i |sum_j T_ij - a_i| is <= tol (helo_fast._convergence's test; the columns are
    exact). Returns (log T (-inf outside the mask), iterations, violation)."""
    log_kernel = -cost / beta
    log_plan = tl.zeros_like(cost)
    log_sigma = tl.zeros_like(log_b) + neg_log_m
    cum_d = tl.zeros_like(log_a).to(tl.float64)
    cum_s = tl.zeros_like(log_b).to(tl.float64)
    k = tl.full((), 0, tl.int32)
    violation = beta * 0.0
    running = k < n_iters
    while running:
        log_q = log_kernel + log_plan
        log_delta = _log_ratio(log_a, _lse(tl.where(mask, log_q + log_sigma[None, :], float("-inf")), 1))
        log_delta = tl.where(mn, log_delta, 0.0)
        log_sigma = _log_ratio(log_b, _lse(tl.where(mask, log_q + log_delta[:, None], float("-inf")), 0))
        log_sigma = tl.where(mm, log_sigma, 0.0)
        log_plan = log_delta[:, None] + log_q + log_sigma[None, :]
        if SAVE:
            cum_d += log_delta.to(tl.float64)
            cum_s += log_sigma.to(tl.float64)
            tl.store(d_hist_ptr + k * n + rn, log_delta, mask=mn)
            tl.store(s_hist_ptr + k * m + rm, log_sigma, mask=mm)
            tl.store(cd_hist_ptr + k * n + rn, cum_d, mask=mn)
            tl.store(cs_hist_ptr + k * m + rm, cum_s, mask=mm)
        k += 1
        check = ((k % CHECK_EVERY) == 0) | (k == n_iters)
        if check:  # a pass over the tile: only at check points
            mass = tl.exp(_lse(tl.where(mask, log_plan, float("-inf")), 1))  # 0 where a_i = 0
            violation = tl.sum(tl.where(mn, tl.abs(mass - a), 0.0), axis=0)
        running = (k < n_iters) & ~(check & (violation <= tol))
    return tl.where(mask, log_plan, float("-inf")), k, violation


@autotune_num_warps(["n", "m"])
@triton.jit
def _ipot_fwd_tol_kernel(
    cost_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    plan_ptr,
    d_hist_ptr,
    s_hist_ptr,
    cd_hist_ptr,
    cs_hist_ptr,
    iterations_ptr,
    violation_ptr,
    n,
    m,
    n_iters,
    stride_cb,
    stride_cn,
    stride_cm,
    stride_ab,
    stride_bb,
    SAVE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    rn, rm, mn, mm, mask, cost, a, b = _load_problem(
        cost_ptr, a_ptr, b_ptr, pid, n, m, stride_cb, stride_cn, stride_cm, stride_ab, stride_bb, BLOCK_N, BLOCK_M
    )
    beta = tl.load(scalars_ptr)
    neg_log_m = tl.load(scalars_ptr + 1)
    tol = tl.load(scalars_ptr + 2)
    log_plan, k, violation = _ipot_tile_tol(
        cost,
        tl.log(a),
        tl.log(b),
        a,
        mask,
        mn,
        mm,
        beta,
        neg_log_m,
        tol,
        n_iters,
        d_hist_ptr + pid * n_iters * n,
        s_hist_ptr + pid * n_iters * m,
        cd_hist_ptr + pid * n_iters * n,
        cs_hist_ptr + pid * n_iters * m,
        rn,
        rm,
        n,
        m,
        SAVE,
    )
    tl.store(plan_ptr + pid * n * m + rn[:, None] * m + rm[None, :], tl.exp(log_plan), mask=mask)
    tl.store(iterations_ptr + pid, k.to(tl.int64))
    tl.store(violation_ptr + pid, violation)


def ipot_fwd_tol(cost, a, b, beta: float, n_iters: int, tol: float, save: bool):
    """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], d_hist, s_hist, cd_hist, cs_hist, iterations [B] int64,
    violation [B]): each problem stops at its own count (<= n_iters). The histories are ``ipot_fwd``'s, each
    problem's first ``iterations`` rows written; the violation is in the compute dtype."""
    out_dtype = cost.dtype
    cost, a, b, dtype = _prepare(cost, a, b)
    batch, n, m = cost.shape
    device = cost.device
    plan = torch.empty((batch, n, m), dtype=dtype, device=device)
    k = n_iters if save else 0
    hists = [
        torch.empty((batch, k, size), dtype=dt, device=device)
        for size, dt in ((n, dtype), (m, dtype), (n, torch.float64), (m, torch.float64))
    ]
    # The cap until the kernel writes the counts: a launch recorded without running (benchmarks/gpu_audit) leaves
    # counts the backward can read.
    iterations = torch.full((batch,), n_iters, dtype=torch.int64, device=device)
    violation = torch.empty((batch,), dtype=dtype, device=device)
    if batch > 0:
        _ipot_fwd_tol_kernel[(batch,)](
            cost,
            a,
            b,
            scalar_tensor([beta, -math.log(m), tol], dtype, device),
            plan,
            *hists,
            iterations,
            violation,
            n,
            m,
            n_iters,
            cost.stride(0),
            cost.stride(1),
            cost.stride(2),
            a.stride(0),
            b.stride(0),
            SAVE=save,
            BLOCK_N=block_size(n),
            BLOCK_M=block_size(m),
        )
    return (plan.to(out_dtype), *hists, iterations, violation)
