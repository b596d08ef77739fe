"""Triton kernels for batched log-domain Sinkhorn (one program per OT problem).

Each program holds its whole [n, m] cost tile on chip (n, m padded to powers of two, masked), runs
exactly ``n_iters`` iterations in the order of ``helo_fast.reference.sinkhorn`` and writes the plan.
With ``SAVE`` the per-iteration potentials are written to small history buffers
([B, n_iters, n] / [B, n_iters, m]); the backward kernels recompute every iteration's tile from
them and the cost, so an unrolled backward needs O(n_iters * (n + m)) memory per problem.

``_sinkhorn_fwd_tol_kernel`` (``tol=``) runs the same iterations in a loop that each program leaves at its own
count: the first check (every CHECK_EVERY-th iteration and the last) where its marginal violation is <= tol.

Scalars that must keep float64 precision (eps, tol) travel in a small tensor of the
compute dtype (Triton passes Python floats as float32).
"""

from __future__ import annotations

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
def _sinkhorn_tile(
    cost, log_a, log_b, mask, mn, mm, eps, n_iters, f_hist_ptr, g_hist_ptr, rn, rm, n, m, SAVE: tl.constexpr
):
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


@autotune_num_warps(["n", "m"])
@triton.jit
def _sinkhorn_fwd_kernel(
    cost_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    plan_ptr,
    f_hist_ptr,
    g_hist_ptr,
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
    eps = tl.load(scalars_ptr)
    f, g = _sinkhorn_tile(
        cost,
        tl.log(a),
        tl.log(b),
        mask,
        mn,
        mm,
        eps,
        n_iters,
        f_hist_ptr + pid * n_iters * n,
        g_hist_ptr + pid * n_iters * m,
        rn,
        rm,
        n,
        m,
        SAVE,
    )
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


@autotune_num_warps(["n", "m"])
@triton.jit
def _sinkhorn_bwd_kernel(
    grad_ptr,
    cost_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    f_hist_ptr,
    g_hist_ptr,
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
    eps = tl.load(scalars_ptr)
    grad = tl.load(grad_ptr + pid * stride_gb + rn[:, None] * stride_gn + rm[None, :] * stride_gm, mask=mask, other=0.0)
    d_cost, d_log_a, d_log_b = _sinkhorn_tile_bwd(
        grad,
        cost,
        mask,
        mn,
        mm,
        eps,
        n_iters,
        f_hist_ptr + pid * n_iters * n,
        g_hist_ptr + pid * n_iters * m,
        rn,
        rm,
        n,
        m,
    )
    tl.store(dcost_ptr + pid * n * m + rn[:, None] * m + rm[None, :], d_cost, mask=mask)
    tl.store(da_ptr + pid * n + rn, _over_marginal(d_log_a, a), mask=mn)
    tl.store(db_ptr + pid * m + rm, _over_marginal(d_log_b, b), mask=mm)


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
    _sinkhorn_fwd_kernel[(batch,)](
        cost,
        a,
        b,
        scalar_tensor([eps], dtype, cost.device),
        plan,
        f_hist,
        g_hist,
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
    _sinkhorn_bwd_kernel[(batch,)](
        grad_plan,
        cost,
        a,
        b,
        scalar_tensor([eps], dtype, cost.device),
        f_hist.contiguous(),
        g_hist.contiguous(),
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


# ---- with a tolerance (helo_fast.sinkhorn(..., tol=)): each program stops at its own count ----------------------
@triton.jit
def _sinkhorn_tile_tol(
    cost, log_a, log_b, b, mask, mn, mm, eps, tol, n_iters, f_hist_ptr, g_hist_ptr, rn, rm, n, m, SAVE: tl.constexpr
):
    """``_sinkhorn_tile`` that stops after the first check (every CHECK_EVERY-th iteration and the last) where the
    column-marginal violation sum_j |sum_i P_ij - b_j| is <= tol (helo_fast._convergence's test). The column LSE of
    each iteration's f is computed once: the next iteration's g update and the check both use it.
    Returns (f, g, iterations, violation)."""
    f = tl.zeros_like(log_a)
    g = tl.zeros_like(log_b)
    col = _lse(tl.where(mask, (f[:, None] - cost) / eps, float("-inf")), 0)
    k = tl.full((), 0, tl.int32)
    violation = eps * 0.0
    running = k < n_iters
    while running:
        g = eps * _log_ratio(log_b, col)
        g = tl.where(mm, g, 0.0)
        f = eps * _log_ratio(log_a, _lse(tl.where(mask, (g[None, :] - cost) / eps, float("-inf")), 1))
        f = tl.where(mn, f, 0.0)
        col = _lse(tl.where(mask, (f[:, None] - cost) / eps, float("-inf")), 0)
        if SAVE:
            tl.store(f_hist_ptr + k * n + rn, f, mask=mn)
            tl.store(g_hist_ptr + k * m + rm, g, mask=mm)
        k += 1
        check = ((k % CHECK_EVERY) == 0) | (k == n_iters)
        # O(m) from the column LSE at hand: cheaper every iteration than a branch (which made ptxas spill)
        mass = tl.exp(g / eps + col)  # 0 where b_j = 0 (g_j = -inf)
        violation = tl.where(check, tl.sum(tl.where(mm, tl.abs(mass - b), 0.0), axis=0), violation)
        running = (k < n_iters) & ~(check & (violation <= tol))
    return f, g, k, violation


@autotune_num_warps(["n", "m"])
@triton.jit
def _sinkhorn_fwd_tol_kernel(
    cost_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    plan_ptr,
    f_ptr,
    g_ptr,
    f_hist_ptr,
    g_hist_ptr,
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
    eps = tl.load(scalars_ptr)
    tol = tl.load(scalars_ptr + 1)
    f, g, k, violation = _sinkhorn_tile_tol(
        cost,
        tl.log(a),
        tl.log(b),
        b,
        mask,
        mn,
        mm,
        eps,
        tol,
        n_iters,
        f_hist_ptr + pid * n_iters * n,
        g_hist_ptr + pid * n_iters * m,
        rn,
        rm,
        n,
        m,
        SAVE,
    )
    plan = tl.exp(tl.where(mask, (f[:, None] + g[None, :] - cost) / eps, float("-inf")))
    tl.store(plan_ptr + pid * n * m + rn[:, None] * m + rm[None, :], plan, mask=mask)
    tl.store(f_ptr + pid * n + rn, f, mask=mn)
    tl.store(g_ptr + pid * m + rm, g, mask=mm)
    tl.store(iterations_ptr + pid, k.to(tl.int64))
    tl.store(violation_ptr + pid, violation)


def sinkhorn_fwd_tol(cost, a, b, eps: float, n_iters: int, tol: float, save: bool):
    """cost [B, n, m], a [B, n], b [B, m] -> (plan [B, n, m], f [B, n], g [B, m], f_hist [B, K, n],
    g_hist [B, K, m], iterations [B] int64, violation [B]): each problem stops at its own count (<= n_iters).

    f, g are the final potentials (plan = exp((f + g - cost) / eps)); the histories (K = n_iters, empty unless
    ``save``) hold each problem's first ``iterations`` rows. Everything but the plan is in the compute dtype.
    """
    out_dtype = cost.dtype
    cost, a, b, dtype = _prepare(cost, a, b)
    batch, n, m = cost.shape
    device = cost.device
    plan = torch.empty((batch, n, m), dtype=dtype, device=device)
    f, g = torch.empty((batch, n), dtype=dtype, device=device), torch.empty((batch, m), dtype=dtype, device=device)
    k = n_iters if save else 0
    f_hist = torch.empty((batch, k, n), dtype=dtype, device=device)
    g_hist = torch.empty((batch, k, m), dtype=dtype, device=device)
    # The cap until the kernel writes the counts: a launch recorded without running (benchmarks/gpu_audit) leaves
    # counts the backward can read.
    iterations = torch.full((batch,), n_iters, dtype=torch.int64, device=device)
    violation = torch.empty((batch,), dtype=dtype, device=device)
    if batch > 0:
        _sinkhorn_fwd_tol_kernel[(batch,)](
            cost,
            a,
            b,
            scalar_tensor([eps, tol], dtype, device),
            plan,
            f,
            g,
            f_hist,
            g_hist,
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
    return plan.to(out_dtype), f, g, f_hist, g_hist, iterations, violation
