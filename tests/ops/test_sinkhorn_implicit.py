"""sinkhorn(grad="implicit") (issue 30): the gradient of the converged plan by the implicit function theorem, against
float64 central differences of the converged plan and against the unrolled gradient at many iterations (the same
gauge for a, b), on both Schur sides (n < m, n > m), with zero-mass entries (0, never NaN), float32, the
not-converged warning, and gradcheck on the cost."""

import warnings

import pytest
import torch

import helo_fast as hf
from ot_cases import draw_ot_problem, to_device
from devices import CPU, cpu_backends

BACKENDS = cpu_backends(include_triton=False)
F64 = torch.float64


def problem(n, m, batch=2, seed=0, zeros=False, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    zero_entries = {"a_zeros": [(0, 1)], "b_zeros": [(1, 0)]} if zeros else {}
    cost, a, b = draw_ot_problem(gen, batch, n, m, floor=0.2, **zero_entries)
    weight = torch.randn(batch, n, m, generator=gen, dtype=F64)
    return to_device((cost, a, b, weight), dtype, CPU)


def gradients(cost, a, b, weight, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
    plan = hf.sinkhorn(*leaves, **kwargs)
    (plan * weight).sum().backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m", [(4, 6), (6, 4), (5, 5)])
@pytest.mark.parametrize("zeros", [False, True])
def test_implicit_gradient_equals_the_unrolled_one_at_many_iterations(backend, n, m, zeros):
    cost, a, b, weight = problem(n, m, zeros=zeros)
    implicit = gradients(cost, a, b, weight, eps=0.05, n_iters=20000, tol=1e-14, grad="implicit", backend=backend)
    unrolled = gradients(cost, a, b, weight, eps=0.05, n_iters=3000, grad="unrolled", backend="reference")
    for got, want in zip(implicit, unrolled):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    if zeros:  # a zero-mass entry gets no gradient (OTT's implicit gradient is NaN there)
        assert implicit[1][0, 1] == 0 and implicit[2][1, 0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_implicit_gradient_matches_central_differences_of_the_converged_plan(backend):
    cost, a, b, weight = problem(3, 4, batch=1, seed=5)
    run = dict(eps=0.1, n_iters=50000, tol=1e-15, backend=backend)
    grad_cost, grad_a, grad_b = gradients(cost, a, b, weight, grad="implicit", **run)

    def loss(c, a_, b_):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hf.OTConvergenceWarning)
            return float((hf.sinkhorn(c, a_, b_, grad="none", **run) * weight).sum())

    h = 1e-5
    for i, j in ((0, 0), (1, 3), (2, 1)):
        e = torch.zeros_like(cost)
        e[0, i, j] = h
        numeric = (loss(cost + e, a, b) - loss(cost - e, a, b)) / (2 * h)
        assert abs(numeric - float(grad_cost[0, i, j])) <= 1e-7 * (1 + abs(numeric))
    # Equal-mass directions of (a, b) (the feasible ones): a_i and b_j up together, and a_i up with a_k down.
    for da, db in (((0, h), (2, h)), ((2, h), (0, h))):
        ea, eb = torch.zeros_like(a), torch.zeros_like(b)
        ea[0, da[0]], eb[0, db[0]] = da[1], db[1]
        numeric = (loss(cost, a + ea, b + eb) - loss(cost, a - ea, b - eb)) / (2 * h)
        assert abs(numeric - float(grad_a[0, da[0]] + grad_b[0, db[0]])) <= 1e-7 * (1 + abs(numeric))
    ea = torch.zeros_like(a)
    ea[0, 0], ea[0, 1] = h, -h
    numeric = (loss(cost, a + ea, b) - loss(cost, a - ea, b)) / (2 * h)
    assert abs(numeric - float(grad_a[0, 0] - grad_a[0, 1])) <= 1e-7 * (1 + abs(numeric))


def test_implicit_gradcheck_on_the_cost():
    cost, a, b, _ = problem(3, 4, batch=1, seed=7)
    torch.autograd.gradcheck(
        lambda c: hf.sinkhorn(c, a, b, eps=0.2, n_iters=100000, tol=1e-15, grad="implicit", backend="reference"),
        (cost.clone().requires_grad_(),),
        atol=1e-6,
        rtol=1e-5,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_implicit_float32_is_close_to_float64(backend):
    cost, a, b, weight = problem(5, 7, batch=3, seed=2)
    want = gradients(cost, a, b, weight, eps=0.1, n_iters=5000, tol=1e-13, grad="implicit", backend=backend)
    got = gradients(
        *(t.float() for t in (cost, a, b, weight)), eps=0.1, n_iters=5000, tol=1e-6, grad="implicit", backend=backend
    )
    for g32, g64 in zip(got, want):
        assert g32.dtype == torch.float32
        torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_implicit_warns_when_the_forward_did_not_converge(backend):
    cost, a, b, weight = problem(4, 4)
    with pytest.warns(hf.OTConvergenceWarning, match="grad='implicit' assumes converged plans"):
        gradients(cost, a, b, weight, eps=0.01, n_iters=10, tol=1e-12, grad="implicit", backend=backend)
    with pytest.raises(hf.OTConvergenceError):
        gradients(cost, a, b, weight, eps=0.01, n_iters=10, tol=1e-12, grad="implicit", strict=True, backend=backend)


def test_implicit_keeps_no_iterations_and_refuses_a_second_derivative():
    cost, a, b, weight = problem(4, 4)
    c = cost.clone().requires_grad_()
    plan = hf.sinkhorn(c, a, b, eps=0.1, n_iters=1000, tol=1e-10, grad="implicit", backend="reference")
    saved = [t for t in plan.grad_fn.saved_tensors]  # only the plan [B, n, m]
    assert len(saved) == 1 and saved[0].shape == cost.shape
    (g,) = torch.autograd.grad((plan * weight).sum(), c, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
