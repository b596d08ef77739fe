"""Log-domain tile helpers shared by the Triton OT kernels (sinkhorn, ipot, gromov_wasserstein): a whole
[n, m] problem per program, n and m padded to powers of two and masked."""

from __future__ import annotations

import triton
import triton.language as tl

from helo_fast._convergence import CHECK_EVERY as _CHECK_EVERY
from helo_fast._numerics import compute_dtype

# The kernels with a tolerance test convergence after every CHECK_EVERY-th iteration (helo_fast._convergence).
CHECK_EVERY: tl.constexpr = tl.constexpr(_CHECK_EVERY)


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
def _load_problem(
    cost_ptr,
    a_ptr,
    b_ptr,
    pid,
    n,
    m,
    stride_cb,
    stride_cn,
    stride_cm,
    stride_ab,
    stride_bb,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    rn = tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    mn = rn < n
    mm = rm < m
    mask = mn[:, None] & mm[None, :]
    cost = tl.load(cost_ptr + pid * stride_cb + rn[:, None] * stride_cn + rm[None, :] * stride_cm, mask=mask, other=0.0)
    a = tl.load(a_ptr + pid * stride_ab + rn, mask=mn, other=1.0)
    b = tl.load(b_ptr + pid * stride_bb + rm, mask=mm, other=1.0)
    return rn, rm, mn, mm, mask, cost, a, b


def _prepare(cost, a, b):
    dtype = compute_dtype(cost.dtype)
    return cost.to(dtype), a.to(dtype).contiguous(), b.to(dtype).contiguous(), dtype
