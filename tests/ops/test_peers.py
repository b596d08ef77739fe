"""Every op against independent peers: first the reference ops against POT, a direct transcription of HELO_SPEC §4
and SDPA; then POT's own test cases for sinkhorn_log and entropic Gromov-Wasserstein, ported as facts about
helo_fast's ops on every backend.

POT's cases: the inputs and properties follow POT's test suite (test_bregman.py, test_gromov.py: 2-D Gaussian point
clouds, squared Euclidean costs normalised to max 1, uniform and random histograms, reg from 1 down to 1e-3,
marginals after convergence, gradients through the torch backend); the code is written here. POT runs side by side
as the outside truth: ot.sinkhorn(method="sinkhorn_log", stopThr=0) iterates exactly numItermax times in the order
of helo_fast.sinkhorn (column potential first, from zero potentials), so the plans agree to rounding.
Entropic GW (square loss, PGD, no warm start): POT's inner cost is 2 (const - 2 C1 T C2^T), twice HeLo's
linearised cost, so POT's epsilon is twice helo_fast's eps; the two agree for symmetric C1, C2 (POT then uses
that cost as is) with POT's outer loop run max_iter times (tol=0) and its linear-domain Sinkhorn numItermax
times (stopThr=0).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helo_fast as hf
from helo_fast import reference
from helo_fast._rng import bernoulli_mask, hash_uniform
from devices import backend_params
from ot_oracle import gw_transcription, ipot_transcription
from tolerance import assert_float64_close, assert_no_nan

ot = pytest.importorskip("ot")


def random_marginal(gen, batch, size):
    w = torch.rand(batch, size, generator=gen, dtype=torch.float64) + 0.05
    return w / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("n,m", [(5, 7), (9, 4), (1, 3), (6, 6)])
def test_sinkhorn_equals_pot_sinkhorn_log(n, m):
    gen = torch.Generator().manual_seed(n * 100 + m)
    batch, eps, n_iters = 3, 0.07, 37
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64)
    a, b = random_marginal(gen, batch, n), random_marginal(gen, batch, m)
    plan = reference.sinkhorn(cost, a, b, eps=eps, n_iters=n_iters)
    for i in range(batch):
        expected = ot.sinkhorn(
            a[i].numpy(), b[i].numpy(), cost[i].numpy(), eps, method="sinkhorn_log", numItermax=n_iters, stopThr=-1
        )
        assert_float64_close(plan[i], torch.from_numpy(np.asarray(expected)))


@pytest.mark.parametrize("n,m", [(6, 6), (5, 8), (1, 4)])
def test_ipot_equals_spec_transcription(n, m):
    gen = torch.Generator().manual_seed(7 + n + m)
    cost = torch.rand(2, n, m, generator=gen, dtype=torch.float64)
    plan = reference.ipot(cost, beta=0.1, n_iters=20)
    for i in range(2):
        assert_float64_close(plan[i], ipot_transcription(cost[i], 0.1, 20))


def structure_matrix(gen, batch, n):
    x = torch.randn(batch, n, 4, generator=gen, dtype=torch.float64)
    d = 1 - F.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1)
    return d


@pytest.mark.parametrize("n,m", [(6, 6), (7, 5)])
def test_gromov_equals_spec_transcription(n, m):
    gen = torch.Generator().manual_seed(11 + n * m)
    cs, ct = structure_matrix(gen, 2, n), structure_matrix(gen, 2, m)
    plan = reference.gromov_wasserstein(cs, ct, eps=0.1, outer_iters=5, inner_iters=20)
    for i in range(2):
        assert_float64_close(plan[i], gw_transcription(cs[i], ct[i], 0.1, 5, 20))


def test_gromov_plan_meets_marginals_and_sinkhorn_solver_runs():
    gen = torch.Generator().manual_seed(3)
    cs, ct = structure_matrix(gen, 3, 8), structure_matrix(gen, 3, 8)
    # Each solver ends on its column (ipot) or row (sinkhorn) update, which that marginal then meets exactly.
    for solver, exact_dim, other_dim in (("ipot", -2, -1), ("sinkhorn", -1, -2)):
        plan = reference.gromov_wasserstein(cs, ct, eps=0.1, solver=solver, inner_iters=50)
        assert_no_nan(plan)
        assert torch.allclose(plan.sum(exact_dim), torch.full((3, 8), 1 / 8, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(plan.sum(other_dim), torch.full((3, 8), 1 / 8, dtype=torch.float64), atol=1e-3)


def test_ipot_log_domain_survives_small_beta():
    gen = torch.Generator().manual_seed(5)
    cost = 1e3 * torch.rand(2, 6, 6, generator=gen, dtype=torch.float64)
    plan = reference.ipot(cost, beta=1e-3, n_iters=20)
    assert_no_nan(plan)
    assert torch.allclose(plan.sum(-2), torch.full((2, 6), 1 / 6, dtype=torch.float64), atol=1e-12)
    # The plain-domain transcription underflows to 0/0 here.
    assert not bool(torch.isfinite(ipot_transcription(cost[0], 1e-3, 20)).all())


def test_grad_none_detaches_and_unrolled_differentiates():
    gen = torch.Generator().manual_seed(1)
    cost = torch.rand(2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert not reference.ipot(cost, beta=0.1, n_iters=5).requires_grad
    assert not reference.sinkhorn(cost, eps=0.1, n_iters=5, grad="none").requires_grad
    assert torch.autograd.gradcheck(lambda c: reference.sinkhorn(c, eps=0.3, n_iters=4), (cost,))
    assert torch.autograd.gradcheck(lambda c: reference.ipot(c, beta=0.3, n_iters=4, grad="unrolled"), (cost,))


@pytest.mark.parametrize("bias_shape,bias_before_scale", [(None, True), ((1, 1, 7, 9), True), ((2, 3, 7, 9), False)])
def test_lcd_attention_at_p0_equals_sdpa_residual_layernorm(bias_shape, bias_before_scale):
    gen = torch.Generator().manual_seed(13)
    batch, heads, lq, lk, dim = 2, 3, 7, 9, 5
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64) for length in (lq, lk, lk))
    bias = None if bias_shape is None else torch.randn(bias_shape, generator=gen, dtype=torch.float64)
    residual = torch.randn(batch, lq, heads * dim, generator=gen, dtype=torch.float64)
    weight = torch.randn(heads * dim, generator=gen, dtype=torch.float64)
    shift = torch.randn(heads * dim, generator=gen, dtype=torch.float64)
    scale = dim**-0.5
    out = reference.lcd_attention(
        q, k, v, bias, residual=residual, ln_weight=weight, ln_bias=shift, bias_before_scale=bias_before_scale
    )
    mask = None if bias is None else (bias * scale if bias_before_scale else bias)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    expected = F.layer_norm(
        residual + attn.transpose(1, 2).reshape(batch, lq, heads * dim), (heads * dim,), weight, shift
    )
    assert_float64_close(out, expected)


def test_lcd_attention_fully_masked_row_is_uniform_not_nan():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 3, 4, generator=gen) for _ in range(3))
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1] = True
    out = reference.lcd_attention(q, k, v, dropkey_mask=mask)
    assert_no_nan(out)
    assert torch.allclose(out[0, 1], v[0, 0].mean(0), atol=1e-6)


def test_lcd_attention_seeded_masks_follow_generator():
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 5, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    kwargs = dict(dropkey_p=0.5, dropout_p=0.3)
    first = reference.lcd_attention(q, k, v, generator=torch.Generator().manual_seed(9), **kwargs)
    again = reference.lcd_attention(q, k, v, generator=torch.Generator().manual_seed(9), **kwargs)
    other = reference.lcd_attention(q, k, v, generator=torch.Generator().manual_seed(10), **kwargs)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_hash_masks_have_the_requested_rate_and_differ_per_stream():
    u = hash_uniform(123, (64, 64, 16), stream=0)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    for p in (0.1, 0.5):
        rate = float(bernoulli_mask(123, (64, 64, 16), p, stream=0).double().mean())
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / u.numel())
    assert not torch.equal(bernoulli_mask(1, (100,), 0.5, 0), bernoulli_mask(1, (100,), 0.5, 1))


# POT's own test cases, on every backend.


def gaussian_clouds(seed, n, m):
    """POT's test problem: two 2-D Gaussian samples and their squared Euclidean cost, normalised to max 1."""
    rng = np.random.RandomState(seed)
    xs = rng.randn(n, 2)
    xt = rng.randn(m, 2) + np.array([1.0, -0.5])
    cost = ot.dist(xs, xt)
    return xs, xt, cost / cost.max()


def histogram(seed, size, kind):
    if kind == "uniform":
        return ot.unif(size)
    w = np.random.RandomState(seed + 7).rand(size) + 0.1
    if kind == "zeros":
        w[::3] = 0.0
    return w / w.sum()


def helo_plan(backend, cost, a, b, reg, n_iters):
    t = [torch.tensor(x)[None] for x in (cost, a, b)]
    return hf.sinkhorn(*t, eps=reg, n_iters=n_iters, backend=backend)[0]


def pot_plan(cost, a, b, reg, n_iters):
    return torch.tensor(
        ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", numItermax=n_iters, stopThr=0.0, warn=False)
    )


# Sizes shrink for Triton, which runs under the CPU interpreter here.
def size_for(backend):
    return (12, 9) if backend == "triton" else (60, 45)


@pytest.mark.parametrize("backend", backend_params("sinkhorn"))
@pytest.mark.parametrize("reg, n_iters", [(1.0, 1), (1.0, 10), (0.1, 50), (1e-2, 100), (1e-3, 30)])
@pytest.mark.parametrize("kind", ["uniform", "random", "zeros"])
def test_sinkhorn_log_plan_equals_pot_at_stopthr_zero(backend, reg, n_iters, kind):
    n, m = size_for(backend)
    _, _, cost = gaussian_clouds(0, n, m)
    a, b = histogram(1, n, kind), histogram(2, m, "random")
    assert_float64_close(helo_plan(backend, cost, a, b, reg, n_iters), pot_plan(cost, a, b, reg, n_iters))


@pytest.mark.parametrize("backend", backend_params("sinkhorn"))
def test_converged_plan_has_the_marginals(backend):
    """POT's test_sinkhorn: after convergence the plan's rows sum to a (exactly: the row update is last) and its
    columns to b."""
    n, m = size_for(backend)
    _, _, cost = gaussian_clouds(3, n, m)
    a, b = histogram(4, n, "random"), histogram(5, m, "uniform")
    plan = helo_plan(backend, cost, a, b, 1.0, 300)
    np.testing.assert_allclose(plan.sum(1).numpy(), a, rtol=1e-12, atol=0)
    np.testing.assert_allclose(plan.sum(0).numpy(), b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", backend_params("sinkhorn"))
def test_sinkhorn_log_small_reg_equals_pot_and_stays_finite(backend):
    """POT's small-reg cases: reg = 1e-3 on a normalised cost (the linear kernel exp(-M / reg) underflows; the
    log domain must not), plans equal to POT's sinkhorn_log, mass on the cheap entries."""
    n, m = size_for(backend)
    _, _, cost = gaussian_clouds(6, n, m)
    a, b = ot.unif(n), ot.unif(m)
    plan = helo_plan(backend, cost, a, b, 1e-3, 200)
    assert bool(torch.isfinite(plan).all())
    assert_float64_close(plan, pot_plan(cost, a, b, 1e-3, 200))
    assert float((plan * torch.tensor(cost)).sum()) < float(torch.tensor(cost).mean())


@pytest.mark.parametrize("backend", backend_params("sinkhorn"))
@pytest.mark.parametrize("n, m", [(2, 2), (3, 5), (6, 4)])
@pytest.mark.parametrize("reg", [1e-3, 5e-4])
def test_small_random_problems_at_small_reg_equal_pot(backend, n, m, reg):
    """POT's random small histograms and costs in [0, 1) at reg 1e-3 and below (cost / reg up to 2000): kernel
    entries of e^-2000 underflow in any dtype, yet the plan may need them. 40 problems each (8 under the Triton
    interpreter), against POT."""
    rng = np.random.RandomState(n * 100 + m)
    problems = [
        (rng.rand(n, m), histogram(rng.randint(1000), n, "random"), histogram(rng.randint(1000), m, "random"))
        for _ in range(8 if backend == "triton" else 40)
    ]
    cost, a, b = (torch.tensor(np.stack(x)) for x in zip(*problems))
    plans = hf.sinkhorn(cost, a, b, eps=reg, n_iters=100, backend=backend)
    for plan, (c, x, y) in zip(plans, problems):
        assert_float64_close(plan, pot_plan(c, x, y, reg, 100))


def pot_torch_grads(cost, a, b, reg, n_iters, weight):
    leaves = [torch.tensor(x, requires_grad=True) for x in (cost, a, b)]
    plan = ot.sinkhorn(
        leaves[1], leaves[2], leaves[0], reg, method="sinkhorn_log", numItermax=n_iters, stopThr=0.0, warn=False
    )
    return torch.autograd.grad((plan * weight).sum(), leaves)


@pytest.mark.parametrize("backend", backend_params("sinkhorn"))
@pytest.mark.parametrize("reg, n_iters", [(1.0, 5), (0.05, 40), (1e-2, 20)])
def test_unrolled_gradients_equal_pot_torch_autodiff(backend, reg, n_iters):
    """POT's torch backend differentiates its sinkhorn_log loop with autograd: the same unrolled gradient."""
    n, m = (7, 5) if backend == "triton" else (20, 15)
    _, _, cost = gaussian_clouds(8, n, m)
    a, b = histogram(9, n, "random"), histogram(10, m, "random")
    weight = torch.tensor(np.random.RandomState(11).randn(n, m))
    leaves = [torch.tensor(x)[None].requires_grad_() for x in (cost, a, b)]
    plan = hf.sinkhorn(*leaves, eps=reg, n_iters=n_iters, backend=backend)[0]
    ours = torch.autograd.grad((plan * weight).sum(), leaves)
    for g, expected in zip(ours, pot_torch_grads(cost, a, b, reg, n_iters, weight)):
        assert_float64_close(g[0], expected)


def symmetric_structures(seed, n, m):
    """POT's test_entropic_gromov problem: distance matrices of two point clouds, normalised to max 1."""
    xs, xt, _ = gaussian_clouds(seed, n, m)
    c1, c2 = ot.dist(xs, xs), ot.dist(xt, xt)
    return c1 / c1.max(), c2 / c2.max()


@pytest.mark.parametrize("backend", backend_params("gromov_wasserstein"))
@pytest.mark.parametrize("epsilon, outer, inner", [(1.0, 1, 10), (0.2, 5, 30), (0.1, 10, 50)])
@pytest.mark.parametrize("kind", ["uniform", "random"])
def test_entropic_gromov_square_loss_equals_pot(backend, epsilon, outer, inner, kind):
    n, m = (8, 6) if backend == "triton" else (20, 14)
    c1, c2 = symmetric_structures(12, n, m)
    p, q = histogram(13, n, kind), histogram(14, m, kind)
    expected = ot.gromov.entropic_gromov_wasserstein(
        c1,
        c2,
        p,
        q,
        "square_loss",
        epsilon=epsilon,
        max_iter=outer,
        tol=0.0,
        solver="PGD",
        numItermax=inner,
        stopThr=0.0,
    )
    t = [torch.tensor(x)[None] for x in (c1, c2, p, q)]
    plan = hf.gromov_wasserstein(
        *t, eps=epsilon / 2, outer_iters=outer, inner_iters=inner, solver="sinkhorn", backend=backend
    )[0]
    assert_float64_close(plan, torch.tensor(expected))
    np.testing.assert_allclose(plan.sum(1).numpy(), p, rtol=1e-12, atol=0)  # the last Sinkhorn update is the rows'
