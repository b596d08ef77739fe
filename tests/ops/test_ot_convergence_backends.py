"""tol= on every fast backend and device (issue 30): cpp on CPU and CUDA, triton on its device (the CPU interpreter
here, CUDA on a GPU), each against the float64 reference at sizes the interpreter runs in seconds: the same
per-problem iteration counts and converged flags, plans to 1e-10, the unrolled gradient of each problem's own count,
grad="implicit", sinkhorn_cost, gromov_wasserstein's outer and inner tolerances, the warning / strict, and opcheck of
the tolerance ops. (tests/ops/test_ot_convergence.py checks the reference and cpp on CPU against POT and at larger
sizes.)"""

import pytest
import torch

import helo_fast as hf
from helo_fast import _ops
from ot_cases import ot_problem, quiet

OP = "sinkhorn"  # the op the fast_backend fixture checks each backend for
F64 = torch.float64


def mixed_problem(batch=4, n=4, m=5, seed=3, dtype=F64):
    """A small batch whose problems need different counts (cost / reg over two decades), with zero-mass entries."""
    scale = torch.logspace(1, -1, batch, dtype=F64)[:, None, None]
    return ot_problem(seed, batch, n, m, dtype, cost_scale=scale, a_zeros=[(0, 1)], b_zeros=[(-1, 2)])


def on(device, *tensors):
    return [t.to(device) for t in tensors]


def reg_of(op):
    return {"eps": 0.2} if op == "sinkhorn" else {"beta": 2.0}


def tol_of(op, dtype=F64):
    """A tolerance at which mixed_problem's problems stop at different counts within 200 iterations."""
    return 1e-9 if op == "sinkhorn" and dtype == F64 else 1e-5


def same_info(got, want, float_rtol=1e-6):
    for g, w in zip(got, want):
        g = g.cpu()
        if g.dtype in (torch.int64, torch.bool):
            assert g.tolist() == w.tolist()
        else:
            torch.testing.assert_close(g, w, rtol=float_rtol, atol=1e-13)


@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_counts_and_plans_equal_the_reference(fast_backend, op, dtype):
    backend, device = fast_backend
    cost, a, b = mixed_problem(dtype=dtype)
    run = dict(n_iters=200, tol=tol_of(op, dtype), return_info=True, **reg_of(op))
    ref, ref_info = quiet(getattr(hf, op), cost, a, b, backend="reference", **run)
    plan, info = quiet(getattr(hf, op), *on(device, cost, a, b), backend=backend, **run)
    assert len(set(ref_info.iterations.tolist())) >= 2, ref_info.iterations  # each problem stops at its own count
    assert info.iterations.dtype == torch.int64 and info.violation.dtype == dtype and plan.dtype == dtype
    assert info.iterations.tolist() == ref_info.iterations.tolist()
    assert info.converged.tolist() == ref_info.converged.tolist()
    # float32 violations near convergence are rounding noise (~1e-6 of a unit mass): compared to that
    torch.testing.assert_close(
        info.violation.cpu(),
        ref_info.violation,
        rtol=1e-6 if dtype == F64 else 1e-2,
        atol=1e-15 if dtype == F64 else 2e-6,
    )
    close = dict(rtol=1e-10, atol=1e-13) if dtype == F64 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(plan.cpu(), ref, **close)


@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
def test_a_problem_stops_at_the_cap_when_it_is_not_a_check_point(fast_backend, op):
    backend, device = fast_backend
    cost, a, b = mixed_problem(batch=2)
    run = dict(n_iters=13, tol=1e-300, return_info=True, **reg_of(op))
    plan, info = quiet(getattr(hf, op), *on(device, cost, a, b), backend=backend, **run)
    assert info.iterations.tolist() == [13, 13] and not info.converged.any()
    fixed = getattr(hf.reference, op)(cost, a, b, n_iters=13, **reg_of(op))
    torch.testing.assert_close(plan.cpu(), fixed, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
def test_unrolled_gradient_is_that_of_each_problems_own_count(fast_backend, op):
    backend, device = fast_backend
    cost, a, b = mixed_problem()
    weight = torch.randn(cost.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads = []
    for name, dev in (("reference", "cpu"), (backend, device)):
        leaves = [t.to(dev).requires_grad_() for t in (cost, a, b)]
        plan, info = quiet(
            getattr(hf, op),
            *leaves,
            n_iters=200,
            tol=tol_of(op),
            grad="unrolled",
            return_info=True,
            backend=name,
            **reg_of(op),
        )
        (plan * weight.to(dev)).sum().backward()
        grads.append([t.grad.cpu() for t in leaves])
        counts = info.iterations.tolist()
    assert len(set(counts)) >= 2, counts
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_second_derivative_with_tol_on_triton(fast_backend):
    backend, device = fast_backend
    if backend != "triton":
        pytest.skip("the C++ ops with tol are once-differentiable")
    cost, a, b = mixed_problem(batch=2, n=3, m=4)
    weight = torch.randn(cost.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    results = []
    for name, dev in (("reference", "cpu"), (backend, device)):
        leaf = cost.to(dev).requires_grad_()
        plan = quiet(hf.sinkhorn, leaf, *on(dev, a, b), eps=0.5, n_iters=40, tol=1e-6, grad="unrolled", backend=name)
        (grad,) = torch.autograd.grad((plan * weight.to(dev)).sum(), leaf, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * grad).sum(), leaf)
        results.append((grad.detach().cpu(), hvp.cpu()))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_implicit_gradient_and_sinkhorn_cost_equal_the_reference(fast_backend):
    backend, device = fast_backend
    cost, a, b = mixed_problem()
    weight = torch.randn(cost.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    out = []
    for name, dev in (("reference", "cpu"), (backend, device)):
        leaves = [t.to(dev).requires_grad_() for t in (cost, a, b)]
        plan = hf.sinkhorn(*leaves, eps=0.2, n_iters=2000, tol=1e-11, grad="implicit", backend=name)
        implicit = torch.autograd.grad((plan * weight.to(dev)).sum(), leaves)
        value = hf.sinkhorn_cost(*leaves, eps=0.2, n_iters=2000, tol=1e-11, backend=name)
        envelope = torch.autograd.grad(value.sum(), leaves)
        out.append([t.detach().cpu() for t in (plan, value, *implicit, *envelope)])
    for got, want in zip(*out):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_a_problem_at_the_cap_warns_once_and_strict_raises(fast_backend):
    backend, device = fast_backend
    cost, a, b = on(device, *mixed_problem())
    with pytest.warns(hf.OTConvergenceWarning, match=r"sinkhorn: 4 of 4 problems did not reach tol=1e-12") as record:
        hf.sinkhorn(cost, a, b, eps=0.01, n_iters=15, tol=1e-12, backend=backend)
    assert sum(issubclass(w.category, hf.OTConvergenceWarning) for w in record) == 1
    with pytest.raises(hf.OTConvergenceError, match="strict=True"):
        hf.ipot(cost, a, b, beta=0.01, n_iters=15, tol=1e-12, strict=True, backend=backend)


@pytest.mark.parametrize("solver", ["sinkhorn", "ipot"])
def test_gromov_wasserstein_with_tol_equals_the_reference(fast_backend, solver):
    backend, device = fast_backend
    gen = torch.Generator().manual_seed(2)
    cs, ct = torch.rand(3, 4, 4, generator=gen, dtype=F64), torch.rand(3, 5, 5, generator=gen, dtype=F64)
    cs[1] *= 0.05  # nearly flat structure: fewer outer iterations
    eps, tol = (0.2, 1e-7) if solver == "sinkhorn" else (2.0, 1e-5)
    run = dict(eps=eps, outer_iters=8, inner_iters=200, solver=solver, tol=tol, return_info=True, grad="unrolled")
    weight = torch.arange(20, dtype=F64).reshape(4, 5)
    results = []
    for name, dev in (("reference", "cpu"), (backend, device)):
        leaves = [cs.to(dev).requires_grad_(), ct.to(dev).requires_grad_()]
        plan, info = quiet(hf.gromov_wasserstein, *leaves, backend=name, **run)
        (plan * weight.to(dev)).sum().backward()
        results.append((plan.detach().cpu(), info, [t.grad.cpu() for t in leaves]))
    (ref, ref_info, ref_grads), (plan, info, grads) = results
    assert len(set(ref_info.iterations.tolist())) >= 2, ref_info.iterations
    same_info(info, ref_info)
    torch.testing.assert_close(plan, ref, rtol=1e-10, atol=1e-13)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_empty_batch(fast_backend):
    backend, device = fast_backend
    cost = torch.zeros(0, 3, 4, dtype=F64, device=device)
    for op in ("sinkhorn", "ipot"):
        plan, info = getattr(hf, op)(cost, n_iters=10, tol=1e-6, return_info=True, backend=backend, **reg_of(op))
        assert plan.shape == (0, 3, 4) and info.iterations.shape == (0,)


@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
@pytest.mark.parametrize("save", [False, True])
def test_opcheck_of_the_tolerance_ops(fast_backend, op, save):
    backend, device = fast_backend
    name = f"{op}_fwd_tol" if backend == "cpp" else f"triton_{op}_fwd_tol"
    cost, a, b = on(device, *mixed_problem(batch=2, n=3, m=4))
    for dtype, tol in ((F64, 1e-6), (torch.float32, 1e-4)):
        args = (cost.to(dtype), a.to(dtype), b.to(dtype), 0.5, 20, tol, save)
        torch.library.opcheck(getattr(torch.ops.helo_fast, name), args, test_utils=("test_schema", "test_faketensor"))


def test_a_backend_without_a_tol_solver_refuses_tol_naming_it(monkeypatch):
    """Where a backend lacks a tol solver the call raises a ValueError that says so, before any kernel runs."""
    if not _ops.has_impl("sinkhorn_converged", "cpp"):
        pytest.skip("the cpp extension is not built")
    monkeypatch.delitem(_ops._IMPLS, ("sinkhorn_converged", "cpp"))
    cost, a, b = mixed_problem()
    with pytest.raises(
        ValueError,
        match=r"tol is not implemented for helo_fast.sinkhorn on backend='cpp' with cpu "
        r"tensors \(the cpp backend has no tol solver for sinkhorn\)",
    ):
        hf.sinkhorn(cost, a, b, eps=0.1, n_iters=10, tol=1e-6, backend="cpp")
