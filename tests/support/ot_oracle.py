"""A float64 oracle for the OT ops, written for the tests and independent of helo_fast.reference.

One problem at a time, a plain loop over the iterations. Every log-sum-exp runs over the entries that carry
mass at that point, picked by index: a zero-mass row or column leaves the sums once its potential has been
computed (its plan row or column is then 0), so the oracle needs no -inf arithmetic. Before that it takes
part like any other, as the starting potentials (f = 0; IPOT's sigma = 1/m) of every row and column do in
POT's sinkhorn_log and in HELO_SPEC §4.5. Autograd through it gives the oracle's gradients (zero for a
zero-mass marginal entry).

Apart from it, ``ipot_transcription`` / ``gw_transcription``: HELO_SPEC §4.5 / §4.4 written down literally (uniform
marginals, plain domain), which underflows where the ops' log domain does not.
"""

import math

import torch


def _positive(w):
    return torch.nonzero(w > 0).flatten()


def _plan(shape, rows, cols, block):
    """A zero [n, m] plan with ``block`` at (rows x cols)."""
    return torch.zeros(shape, dtype=torch.float64).index_put((rows[:, None], cols[None, :]), block)


def sinkhorn(cost, a, b, *, eps, n_iters):
    """One problem: cost [n, m], a [n], b [m] (float64, entries >= 0) -> plan [n, m].

    POT's sinkhorn_log order from f = 0: g_j = eps (log b_j - LSE_i((f_i - C_ij) / eps)), then f likewise.
    """
    rows, cols = _positive(a), _positive(b)
    log_a, log_b = a[rows].log(), b[cols].log()
    f, f_rows = torch.zeros(cost.shape[0], dtype=torch.float64), torch.arange(cost.shape[0])  # all rows start at 0
    for _ in range(n_iters):
        g = eps * (log_b - torch.logsumexp((f[:, None] - cost[f_rows][:, cols]) / eps, dim=0))
        f, f_rows = eps * (log_a - torch.logsumexp((g[None, :] - cost[rows][:, cols]) / eps, dim=1)), rows
    return _plan(cost.shape, rows, cols, torch.exp((f[:, None] + g[None, :] - cost[rows][:, cols]) / eps))


def ipot(cost, a, b, *, beta, n_iters):
    """One problem: cost [n, m], a [n], b [m] (float64) -> plan [n, m].

    HELO_SPEC §4.5 in logs: T = 1, sigma = 1/m; each iteration Q = T exp(-C / beta), delta = a / (Q sigma),
    sigma = b / (Q^T delta), T = delta Q sigma.
    """
    n, m = cost.shape
    rows, cols = _positive(a), _positive(b)
    log_a, log_b = a[rows].log(), b[cols].log()
    log_k = -cost / beta
    log_t, t_cols = torch.zeros(n, m, dtype=torch.float64)[rows], torch.arange(m)  # T_0 = 1 on every column
    log_sigma = torch.full((m,), -math.log(m), dtype=torch.float64)
    for _ in range(n_iters):
        log_q = log_k[rows][:, t_cols] + log_t
        log_delta = log_a - torch.logsumexp(log_q + log_sigma[None, :], dim=1)
        log_q = log_q[:, torch.searchsorted(t_cols, cols)]  # only columns with mass from here on
        log_sigma = log_b - torch.logsumexp(log_q + log_delta[:, None], dim=0)
        log_t, t_cols = log_delta[:, None] + log_q + log_sigma[None, :], cols
    return _plan(cost.shape, rows, cols, torch.exp(log_t))


def gromov_wasserstein(cs, ct, a, b, *, eps, outer_iters, inner_iters, solver):
    """One problem: cs [n, n], ct [m, m], a [n], b [m] -> plan [n, m] (HELO_SPEC §4.4)."""
    const = ((cs * cs) @ a)[:, None] + ((ct * ct) @ b)[None, :]
    plan = a[:, None] * b[None, :]
    for _ in range(outer_iters):
        cost = const - 2.0 * cs @ plan @ ct.T
        if solver == "ipot":
            plan = ipot(cost, a, b, beta=eps, n_iters=inner_iters)
        else:
            plan = sinkhorn(cost, a, b, eps=eps, n_iters=inner_iters)
    return plan


def batched(fn, *tensors, **kwargs):
    """fn(*problem, **kwargs) for each problem of the [B, ...] float64 ``tensors``, stacked."""
    return torch.stack([fn(*(t[p] for t in tensors), **kwargs) for p in range(tensors[0].shape[0])])


# ------------------------------------------------------------------ the spec, literally (plain domain)


def ipot_transcription(cost, beta, n_iters):
    """HELO_SPEC §4.5 literally (uniform marginals, plain domain), one problem [n, m]."""
    n, m = cost.shape
    plan = torch.ones_like(cost)
    kernel = torch.exp(-cost / beta)
    sigma = torch.full((m, 1), 1.0 / m, dtype=cost.dtype)
    for _ in range(n_iters):
        q = kernel * plan
        delta = 1.0 / (n * (q @ sigma))
        sigma = 1.0 / (m * (q.T @ delta))
        plan = delta * q * sigma.T
    return plan


def gw_transcription(cs, ct, beta, outer, inner):
    """HELO_SPEC §4.4 literally (uniform marginals, plain-domain IPOT inside), one problem: cs [n, n], ct [m, m] ->
    plan [n, m]."""
    n, m = cs.shape[0], ct.shape[0]
    mu = torch.full((n, 1), 1.0 / n, dtype=cs.dtype)
    nu = torch.full((m, 1), 1.0 / m, dtype=cs.dtype)
    c_st = (cs * cs) @ mu @ torch.ones(1, m, dtype=cs.dtype) + torch.ones(n, 1, dtype=cs.dtype) @ nu.T @ (ct * ct).T
    gamma = mu @ nu.T
    for _ in range(outer):
        cost = c_st - 2 * cs @ gamma @ ct.T
        gamma = ipot_transcription(cost, beta, inner)
    return gamma
