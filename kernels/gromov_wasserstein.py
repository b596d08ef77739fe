"""Triton kernels for HeLo's Gromov-Wasserstein step: linearisation + all inner solves in one launch.

One program per problem keeps cs [n, n], ct [m, m] and the plan [n, m] on chip (padded to powers
of two, masked) for all ``outer_iters`` x ``inner_iters`` iterations, in the order of
``helo_fast.reference.gromov_wasserstein``. With ``SAVE`` the forward writes every inner solve's
potentials ([B, outer_iters, inner_iters, n | m]) and each outer iteration's input plan
([B, outer_iters, n, m]); the backward kernel walks the outer iterations in reverse, recomputes each
linearised cost from the saved plan and runs the fused IPOT / Sinkhorn tile backward on it.
The input plans are saved, not replayed from the potentials: a replayed plan is exp(k L + sums),
which turns a 1-ulp difference in L into k/eps ulps (200 at HeLo's settings) per outer iteration.
At HeLo's sizes they cost about as much memory as the potentials (5 x 36 x 36 vs 5 x 20 x 72).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from helo_fast._numerics import compute_dtype
from helo_fast.kernels.ipot import _ipot_tile, _ipot_tile_bwd
from helo_fast.kernels.ot_tiles import _over_marginal
from helo_fast.kernels.sinkhorn import _sinkhorn_tile, _sinkhorn_tile_bwd
from helo_fast.kernels.triton_utils import autotune_num_warps, block_size, scalar_tensor

SOLVER_IPOT = 0
SOLVER_SINKHORN = 1


@triton.jit
def _load_structures(
    cs_ptr,
    ct_ptr,
    a_ptr,
    b_ptr,
    pid,
    n,
    m,
    stride_sb,
    stride_sr,
    stride_sc,
    stride_tb,
    stride_tr,
    stride_tc,
    stride_ab,
    stride_bb,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    rn = tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    mn = rn < n
    mm = rm < m
    cs = tl.load(
        cs_ptr + pid * stride_sb + rn[:, None] * stride_sr + rn[None, :] * stride_sc,
        mask=mn[:, None] & mn[None, :],
        other=0.0,
    )
    ct = tl.load(
        ct_ptr + pid * stride_tb + rm[:, None] * stride_tr + rm[None, :] * stride_tc,
        mask=mm[:, None] & mm[None, :],
        other=0.0,
    )
    a = tl.load(a_ptr + pid * stride_ab + rn, mask=mn, other=0.0)
    b = tl.load(b_ptr + pid * stride_bb + rm, mask=mm, other=0.0)
    return rn, rm, mn, mm, cs, ct, a, b


@triton.jit
def _linearised_cost(const, cs, plan, ct):
    """L = const - 2 cs plan ct^T."""
    return const - tl.dot(tl.dot(2.0 * cs, plan, input_precision="ieee"), tl.trans(ct), input_precision="ieee")


@autotune_num_warps(["n", "m"])
@triton.jit
def _gromov_wasserstein_fwd_kernel(
    cs_ptr,
    ct_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    plan_ptr,
    h0_ptr,
    h1_ptr,
    h2_ptr,
    h3_ptr,
    plans_ptr,
    n,
    m,
    outer_iters,
    inner_iters,
    stride_sb,
    stride_sr,
    stride_sc,
    stride_tb,
    stride_tr,
    stride_tc,
    stride_ab,
    stride_bb,
    SOLVER: tl.constexpr,
    SAVE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    rn, rm, mn, mm, cs, ct, a, b = _load_structures(
        cs_ptr,
        ct_ptr,
        a_ptr,
        b_ptr,
        pid,
        n,
        m,
        stride_sb,
        stride_sr,
        stride_sc,
        stride_tb,
        stride_tr,
        stride_tc,
        stride_ab,
        stride_bb,
        BLOCK_N,
        BLOCK_M,
    )
    mask = mn[:, None] & mm[None, :]
    eps = tl.load(scalars_ptr)
    neg_log_m = tl.load(scalars_ptr + 1)
    log_a = tl.log(tl.where(mn, a, 1.0))  # -inf for a zero-mass entry
    log_b = tl.log(tl.where(mm, b, 1.0))
    # const = (cs∘cs) a 1^T + 1 ((ct∘ct) b)^T
    const = tl.sum(cs * cs * a[None, :], axis=1)[:, None] + tl.sum(ct * ct * b[None, :], axis=1)[None, :]
    plan = a[:, None] * b[None, :]
    per_n = inner_iters * n
    per_m = inner_iters * m
    h0_ptr += pid * outer_iters * per_n
    h1_ptr += pid * outer_iters * per_m
    h2_ptr += pid * outer_iters * per_n
    h3_ptr += pid * outer_iters * per_m
    plan_offs = rn[:, None] * m + rm[None, :]
    plans_ptr += pid * outer_iters * n * m
    for o in range(outer_iters):
        if SAVE:
            tl.store(plans_ptr + o * n * m + plan_offs, plan, mask=mask)
        cost = _linearised_cost(const, cs, plan, ct)
        if SOLVER == 0:
            log_plan = _ipot_tile(
                cost,
                log_a,
                log_b,
                mask,
                mn,
                mm,
                eps,
                neg_log_m,
                inner_iters,
                h0_ptr + o * per_n,
                h1_ptr + o * per_m,
                h2_ptr + o * per_n,
                h3_ptr + o * per_m,
                rn,
                rm,
                n,
                m,
                SAVE,
            )
            plan = tl.exp(log_plan)
        else:
            f, g = _sinkhorn_tile(
                cost,
                log_a,
                log_b,
                mask,
                mn,
                mm,
                eps,
                inner_iters,
                h0_ptr + o * per_n,
                h1_ptr + o * per_m,
                rn,
                rm,
                n,
                m,
                SAVE,
            )
            plan = tl.exp(tl.where(mask, (f[:, None] + g[None, :] - cost) / eps, float("-inf")))
    tl.store(plan_ptr + pid * n * m + rn[:, None] * m + rm[None, :], plan, mask=mask)


@autotune_num_warps(["n", "m"])
@triton.jit
def _gromov_wasserstein_bwd_kernel(
    grad_ptr,
    cs_ptr,
    ct_ptr,
    a_ptr,
    b_ptr,
    scalars_ptr,
    h0_ptr,
    h1_ptr,
    h2_ptr,
    h3_ptr,
    plans_ptr,
    dcs_ptr,
    dct_ptr,
    da_ptr,
    db_ptr,
    n,
    m,
    outer_iters,
    inner_iters,
    stride_sb,
    stride_sr,
    stride_sc,
    stride_tb,
    stride_tr,
    stride_tc,
    stride_ab,
    stride_bb,
    stride_gb,
    stride_gn,
    stride_gm,
    SOLVER: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    rn, rm, mn, mm, cs, ct, a, b = _load_structures(
        cs_ptr,
        ct_ptr,
        a_ptr,
        b_ptr,
        pid,
        n,
        m,
        stride_sb,
        stride_sr,
        stride_sc,
        stride_tb,
        stride_tr,
        stride_tc,
        stride_ab,
        stride_bb,
        BLOCK_N,
        BLOCK_M,
    )
    mask = mn[:, None] & mm[None, :]
    eps = tl.load(scalars_ptr)
    neg_log_m = tl.load(scalars_ptr + 1)
    const = tl.sum(cs * cs * a[None, :], axis=1)[:, None] + tl.sum(ct * ct * b[None, :], axis=1)[None, :]
    plans_ptr += pid * outer_iters * n * m
    per_n = inner_iters * n
    per_m = inner_iters * m
    h0_ptr += pid * outer_iters * per_n
    h1_ptr += pid * outer_iters * per_m
    h2_ptr += pid * outer_iters * per_n
    h3_ptr += pid * outer_iters * per_m
    d_plan = tl.load(
        grad_ptr + pid * stride_gb + rn[:, None] * stride_gn + rm[None, :] * stride_gm, mask=mask, other=0.0
    )
    d_const = tl.zeros_like(d_plan)
    d_cs = tl.zeros_like(cs)
    d_ct = tl.zeros_like(ct)
    d_log_a = tl.zeros_like(a)
    d_log_b = tl.zeros_like(b)
    for rev in range(outer_iters):
        o = outer_iters - 1 - rev
        prev = tl.load(plans_ptr + o * n * m + rn[:, None] * m + rm[None, :], mask=mask, other=0.0)
        cost = _linearised_cost(const, cs, prev, ct)
        if SOLVER == 0:
            d_cost, d_la, d_lb = _ipot_tile_bwd(
                d_plan,
                cost,
                mask,
                mn,
                mm,
                eps,
                neg_log_m,
                inner_iters,
                h0_ptr + o * per_n,
                h1_ptr + o * per_m,
                h2_ptr + o * per_n,
                h3_ptr + o * per_m,
                rn,
                rm,
                n,
                m,
            )
        else:
            d_cost, d_la, d_lb = _sinkhorn_tile_bwd(
                d_plan, cost, mask, mn, mm, eps, inner_iters, h0_ptr + o * per_n, h1_ptr + o * per_m, rn, rm, n, m
            )
        d_log_a += d_la
        d_log_b += d_lb
        d_const += d_cost
        # cost = const - 2 M, M = cs prev ct^T
        d_m = -2.0 * d_cost
        d_cs += tl.dot(tl.dot(d_m, ct, input_precision="ieee"), tl.trans(prev), input_precision="ieee")
        d_ct += tl.dot(tl.trans(d_m), tl.dot(cs, prev, input_precision="ieee"), input_precision="ieee")
        d_plan = tl.dot(tl.dot(tl.trans(cs), d_m, input_precision="ieee"), ct, input_precision="ieee")
    # first plan = a b^T; const = u 1^T + 1 w^T with u = (cs∘cs) a, w = (ct∘ct) b
    d_u = tl.sum(d_const, axis=1)
    d_w = tl.sum(d_const, axis=0)
    d_cs += 2.0 * cs * (d_u[:, None] * a[None, :])
    d_ct += 2.0 * ct * (d_w[:, None] * b[None, :])
    d_a = tl.sum(d_plan * b[None, :], axis=1) + tl.sum(cs * cs * d_u[:, None], axis=0)
    d_b = tl.sum(d_plan * a[:, None], axis=0) + tl.sum(ct * ct * d_w[:, None], axis=0)
    d_a += _over_marginal(d_log_a, a)
    d_b += _over_marginal(d_log_b, b)
    tl.store(dcs_ptr + pid * n * n + rn[:, None] * n + rn[None, :], d_cs, mask=mn[:, None] & mn[None, :])
    tl.store(dct_ptr + pid * m * m + rm[:, None] * m + rm[None, :], d_ct, mask=mm[:, None] & mm[None, :])
    tl.store(da_ptr + pid * n + rn, d_a, mask=mn)
    tl.store(db_ptr + pid * m + rm, d_b, mask=mm)


def _launch_common(cs, ct, a, b, eps):
    dtype = compute_dtype(cs.dtype)
    cs, ct, a, b = (t.to(dtype) for t in (cs, ct, a, b))
    m = ct.shape[1]
    scalars = scalar_tensor((eps, -math.log(m)), dtype, cs.device)
    strides = (
        cs.stride(0),
        cs.stride(1),
        cs.stride(2),
        ct.stride(0),
        ct.stride(1),
        ct.stride(2),
        a.stride(0),
        b.stride(0),
    )
    return dtype, cs, ct, a, b, scalars, strides


def gromov_wasserstein_fwd(cs, ct, a, b, eps: float, outer_iters: int, inner_iters: int, solver: str, save: bool):
    """cs [B, n, n], ct [B, m, m], a [B, n], b [B, m] -> (plan [B, n, m], h0, h1, h2, h3, plans).

    Histories (empty unless ``save``), [B, outer_iters, inner_iters, n | m]: for solver "ipot"
    log delta, log sigma and their running sums (float64); for "sinkhorn" f, g (h2, h3 empty);
    plans [B, outer_iters, n, m]: the plan entering each outer iteration.
    """
    out_dtype = cs.dtype
    dtype, cs, ct, a, b, scalars, strides = _launch_common(cs, ct, a, b, eps)
    batch, n, m = cs.shape[0], cs.shape[1], ct.shape[1]
    plan = torch.empty((batch, n, m), dtype=dtype, device=cs.device)
    hists = history_buffers(batch, n, m, outer_iters, inner_iters, solver, save, dtype, cs.device)
    _gromov_wasserstein_fwd_kernel[(batch,)](
        cs,
        ct,
        a,
        b,
        scalars,
        plan,
        *hists,
        n,
        m,
        outer_iters,
        inner_iters,
        *strides,
        SOLVER=SOLVER_IPOT if solver == "ipot" else SOLVER_SINKHORN,
        SAVE=save,
        BLOCK_N=block_size(n),
        BLOCK_M=block_size(m),
    )
    return (plan.to(out_dtype), *hists)


def history_buffers(batch, n, m, outer_iters, inner_iters, solver, save, dtype, device):
    """The five (possibly empty) history buffers of ``gromov_wasserstein_fwd``."""

    def buf(size, dt, used):
        k = (outer_iters, inner_iters) if (save and used) else (0, 0)
        return torch.empty((batch, *k, size), dtype=dt, device=device)

    ipot = solver == "ipot"
    plans = torch.empty((batch, outer_iters if save else 0, n, m), dtype=dtype, device=device)
    return [buf(n, dtype, True), buf(m, dtype, True), buf(n, torch.float64, ipot), buf(m, torch.float64, ipot), plans]


def gromov_wasserstein_bwd(
    grad_plan, cs, ct, a, b, h0, h1, h2, h3, plans, eps: float, outer_iters: int, inner_iters: int, solver: str
):
    """Gradient of the unrolled GW plan -> (d_cs [B, n, n], d_ct [B, m, m], d_a [B, n], d_b [B, m])."""
    out_dtype = cs.dtype
    dtype, cs, ct, a, b, scalars, strides = _launch_common(cs, ct, a, b, eps)
    grad_plan = grad_plan.to(dtype)
    batch, n, m = cs.shape[0], cs.shape[1], ct.shape[1]
    d_cs = torch.empty((batch, n, n), dtype=dtype, device=cs.device)
    d_ct = torch.empty((batch, m, m), dtype=dtype, device=cs.device)
    d_a = torch.empty((batch, n), dtype=dtype, device=cs.device)
    d_b = torch.empty((batch, m), dtype=dtype, device=cs.device)
    _gromov_wasserstein_bwd_kernel[(batch,)](
        grad_plan,
        cs,
        ct,
        a,
        b,
        scalars,
        *(h.contiguous() for h in (h0, h1, h2, h3, plans)),
        d_cs,
        d_ct,
        d_a,
        d_b,
        n,
        m,
        outer_iters,
        inner_iters,
        *strides,
        grad_plan.stride(0),
        grad_plan.stride(1),
        grad_plan.stride(2),
        SOLVER=SOLVER_IPOT if solver == "ipot" else SOLVER_SINKHORN,
        BLOCK_N=block_size(n),
        BLOCK_M=block_size(m),
    )
    return tuple(t.to(out_dtype) for t in (d_cs, d_ct, d_a, d_b))
