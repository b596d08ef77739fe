"""POT's own test cases for sinkhorn_log and entropic Gromov-Wasserstein, ported as facts about helo_fast's ops.

The inputs and properties follow POT's test suite (test_bregman.py, test_gromov.py: 2-D Gaussian point clouds,
squared Euclidean costs normalised to max 1, uniform and random histograms, reg from 1 down to 1e-3, marginals
after convergence, gradients through the torch backend); the code is written here. POT runs side by side as the
outside truth: ot.sinkhorn(method="sinkhorn_log", stopThr=0) iterates exactly numItermax times in the order of
helo_fast.sinkhorn (column potential first, from zero potentials), so the plans agree to rounding.
Entropic GW (square loss, PGD, no warm start): POT's inner cost is 2 (const - 2 C1 T C2^T), twice HeLo's
linearised cost, so POT's epsilon is twice helo_fast's eps; the two agree for symmetric C1, C2 (POT then uses
that cost as is) with POT's outer loop run max_iter times (tol=0) and its linear-domain Sinkhorn numItermax
times (stopThr=0).
"""

import numpy as np
import pytest
import torch

import helo_fast as hf
from devices import backend_params
from tolerance import assert_float64_close

ot = pytest.importorskip("ot")


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
