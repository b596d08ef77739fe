"""tol= on sinkhorn, ipot and gromov_wasserstein (issue 30).

First the reference and cpp on CPU: converged plans against POT, per-problem stopping on mixed batches (each problem
at its own count, the one the fixed-count iterations reach), the report (OTInfo / GWInfo), the one warning per call,
strict=True, the unrolled gradient with tol, and the argument checks.

Then every fast backend and device (the ``fast_backend`` fixture: cpp on CPU and CUDA, triton on its device, the CPU
interpreter here, CUDA on a GPU), each against the float64 reference at sizes the interpreter runs in seconds: the
same per-problem iteration counts and converged flags, plans to 1e-10, the unrolled gradient of each problem's own
count, grad="implicit", sinkhorn_cost, gromov_wasserstein's outer and inner tolerances, the warning / strict, and
opcheck of the tolerance ops."""

import warnings

import ot
import pytest
import torch

import helo_fast as hf
from helo_fast import _ops
from helo_fast._convergence import CHECK_EVERY
from devices import cpu_backends
from ot_cases import ot_problem, quiet

OP = "sinkhorn"  # the op the fast_backend fixture checks each backend for
BACKENDS = cpu_backends(include_triton=False)
F64 = torch.float64


def problem(batch=4, n=5, m=7, seed=0, dtype=F64, zero=True):
    zeros = {"a_zeros": [(0, 1)], "b_zeros": [(-1, 2)]} if zero else {}
    return ot_problem(seed, batch, n, m, dtype, **zeros)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_sinkhorn_converged_plan_matches_pot_sinkhorn_log(backend, eps):
    cost, a, b = problem(zero=False)
    plan, info = hf.sinkhorn(cost, a, b, eps=eps, n_iters=20000, tol=1e-13, return_info=True, backend=backend)
    assert info.converged.all()
    for k in range(cost.shape[0]):
        expected = ot.sinkhorn(
            a[k].numpy(), b[k].numpy(), cost[k].numpy(), eps, method="sinkhorn_log", numItermax=200000, stopThr=1e-14
        )
        torch.testing.assert_close(plan[k], torch.from_numpy(expected), rtol=1e-10, atol=1e-12)


def fixed_count_violation(op, cost, a, b, reg, k):
    """The marginal violation of the reference's fixed-count plan after k iterations [B] (the test's own code)."""
    if op == "sinkhorn":
        plan = hf.reference.sinkhorn(cost, a, b, eps=reg, n_iters=k, grad="none")
        return (plan.sum(1) - b).abs().sum(-1)
    plan = hf.reference.ipot(cost, a, b, beta=reg, n_iters=k)
    return (plan.sum(2) - a).abs().sum(-1)


def mixed_batch(op):
    """A batch whose problems need very different counts: eps (beta) over two decades."""
    cost, a, b = problem(batch=5, seed=3)
    scale = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.1], dtype=F64)[:, None, None]  # cost / eps from x1 to x100
    return cost * scale, a, b, (0.2 if op == "sinkhorn" else 0.3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
def test_each_problem_stops_at_its_own_count(backend, op):
    cost, a, b, reg = mixed_batch(op)
    tol, cap = 1e-9, 3000
    kwargs = {"eps" if op == "sinkhorn" else "beta": reg}
    plan, info = getattr(hf, op)(cost, a, b, n_iters=cap, tol=tol, return_info=True, backend=backend, **kwargs)
    assert info.converged.all()
    counts = info.iterations.tolist()
    assert len(set(counts)) >= 3, counts  # the batch really is mixed
    # Each count is the first check point (every CHECK_EVERY iterations) where the fixed-count plan is within tol.
    for p, count in enumerate(counts):
        assert count % CHECK_EVERY == 0
        one = (cost[p : p + 1], a[p : p + 1], b[p : p + 1])
        violation = fixed_count_violation(op, *one, reg, count)
        assert float(violation[0]) <= tol
        torch.testing.assert_close(info.violation[p : p + 1], violation, rtol=1e-3, atol=1e-15)
        if count > CHECK_EVERY:
            assert float(fixed_count_violation(op, *one, reg, count - CHECK_EVERY)[0]) > tol
        alone = getattr(hf, op)(*one, n_iters=count, backend=backend, **kwargs)
        torch.testing.assert_close(plan[p : p + 1], alone, rtol=1e-12, atol=1e-15)
    assert (info.violation <= tol).all()


@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
def test_cpp_counts_and_plans_equal_the_reference(op):
    if "cpp" not in BACKENDS:
        pytest.skip("the cpp extension is not built")
    for dtype, tol in ((F64, 1e-10), (torch.float32, 1e-5)):
        cost, a, b, reg = mixed_batch(op)
        cost, a, b = cost.to(dtype), a.to(dtype), b.to(dtype)
        kwargs = {"eps" if op == "sinkhorn" else "beta": reg}
        ref, ref_info = quiet(
            getattr(hf, op), cost, a, b, n_iters=2000, tol=tol, return_info=True, backend="reference", **kwargs
        )
        fast, info = quiet(
            getattr(hf, op), cost, a, b, n_iters=2000, tol=tol, return_info=True, backend="cpp", **kwargs
        )
        assert info.iterations.tolist() == ref_info.iterations.tolist()
        assert info.converged.tolist() == ref_info.converged.tolist()
        torch.testing.assert_close(
            fast, ref, rtol=1e-10 if dtype == F64 else 1e-4, atol=1e-13 if dtype == F64 else 1e-6
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
def test_unrolled_gradient_with_tol_is_that_of_each_problems_own_count(backend, op):
    cost, a, b, reg = mixed_batch(op)
    kwargs = {"eps" if op == "sinkhorn" else "beta": reg}
    weight = torch.randn(cost.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
    plan, info = getattr(hf, op)(
        *leaves, n_iters=2000, tol=1e-8, grad="unrolled", return_info=True, backend=backend, **kwargs
    )
    (plan * weight).sum().backward()
    for p, count in enumerate(info.iterations.tolist()):
        one = [t[p : p + 1].clone().requires_grad_() for t in (cost, a, b)]
        fixed = getattr(hf.reference, op)(*one, n_iters=count, grad="unrolled", **kwargs)
        (fixed * weight[p : p + 1]).sum().backward()
        for leaf, ref in zip(leaves, one):
            torch.testing.assert_close(leaf.grad[p : p + 1], ref.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_problem_at_the_cap_warns_once_and_strict_raises(backend):
    cost, a, b = problem()
    with pytest.warns(hf.OTConvergenceWarning, match=r"sinkhorn: 4 of 4 problems did not reach tol=1e-12") as record:
        plan, info = hf.sinkhorn(cost, a, b, eps=0.01, n_iters=15, tol=1e-12, return_info=True, backend=backend)
    assert len(record) == 1
    assert info.iterations.tolist() == [15] * 4 and not info.converged.any()
    assert info.iterations.dtype == torch.int64 and info.violation.dtype == F64
    assert torch.isfinite(plan).all()
    with pytest.raises(hf.OTConvergenceError, match="strict=True"):
        hf.ipot(cost, a, b, beta=0.01, n_iters=15, tol=1e-12, strict=True, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged call is silent
        hf.sinkhorn(cost, a, b, eps=0.5, n_iters=1000, tol=1e-8, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", ["sinkhorn", "ipot"])
def test_gromov_wasserstein_outer_and_inner_tolerances(backend, solver):
    gen = torch.Generator().manual_seed(2)
    cs, ct = torch.rand(4, 5, 5, generator=gen, dtype=F64), torch.rand(4, 6, 6, generator=gen, dtype=F64)
    cs[1] *= 0.05  # nearly flat structure: converges in fewer outer iterations
    eps = 0.1 if solver == "sinkhorn" else 0.5  # IPOT's GW plans at eps 0.1 keep jumping between vertices
    plan, info = quiet(
        hf.gromov_wasserstein,
        cs,
        ct,
        eps=eps,
        outer_iters=40,
        inner_iters=500,
        solver=solver,
        tol=1e-8,
        return_info=True,
        backend=backend,
    )
    ref, ref_info = quiet(
        hf.reference.gromov_wasserstein,
        cs,
        ct,
        eps=eps,
        outer_iters=40,
        inner_iters=500,
        solver=solver,
        tol=1e-8,
        return_info=True,
    )
    for got, want in zip(info, ref_info):
        if got.dtype == torch.int64 or got.dtype == torch.bool:
            assert got.tolist() == want.tolist()
        else:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(plan, ref, rtol=1e-10, atol=1e-13)
    stopped = info.violation <= 1e-8
    assert stopped.any() and (info.iterations[stopped] < 40).all()
    # The plan of a problem that stopped at outer count k is the fixed-count plan of k outer iterations, each inner
    # solve run to its own count: with a huge inner tol every inner solve stops at its first check.
    plan1, info1 = quiet(
        hf.gromov_wasserstein,
        cs,
        ct,
        eps=0.1,
        outer_iters=3,
        inner_iters=CHECK_EVERY,
        solver=solver,
        tol=1e3,
        return_info=True,
        backend=backend,
    )
    assert info1.iterations.tolist() == [1] * 4 and info1.inner_iterations.tolist() == [CHECK_EVERY] * 4
    fixed = hf.gromov_wasserstein(
        cs, ct, eps=0.1, outer_iters=1, inner_iters=CHECK_EVERY, solver=solver, backend=backend
    )
    torch.testing.assert_close(plan1, fixed, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gromov_wasserstein_unrolled_gradient_with_tol_matches_the_reference(backend):
    gen = torch.Generator().manual_seed(4)
    cs, ct = torch.rand(3, 4, 4, generator=gen, dtype=F64), torch.rand(3, 5, 5, generator=gen, dtype=F64)
    grads = []
    for run in (hf.reference.gromov_wasserstein, lambda *x, **k: hf.gromov_wasserstein(*x, backend=backend, **k)):
        leaves = [cs.clone().requires_grad_(), ct.clone().requires_grad_()]
        plan = quiet(
            run, *leaves, eps=0.2, outer_iters=6, inner_iters=200, solver="sinkhorn", tol=1e-7, grad="unrolled"
        )
        (plan * torch.arange(20, dtype=F64).reshape(4, 5)).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_tol_none_is_the_fixed_count_op():
    cost, a, b = problem()
    for backend in BACKENDS:
        fixed = hf.sinkhorn(cost, a, b, eps=0.1, n_iters=CHECK_EVERY, backend=backend)
        capped = quiet(hf.sinkhorn, cost, a, b, eps=0.1, n_iters=CHECK_EVERY, tol=1e-300, backend=backend)
        torch.testing.assert_close(capped, fixed, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_stopping_arguments_name_themselves(backend):
    cost, a, b = problem()
    cs, ct = torch.rand(2, 3, 3, dtype=F64), torch.rand(2, 4, 4, dtype=F64)
    run = dict(eps=0.1, n_iters=10, backend=backend)
    for tol, error in ((0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), ("1e-6", TypeError)):
        with pytest.raises(error, match="tol"):
            hf.sinkhorn(cost, a, b, tol=tol, **run)
    with pytest.raises(ValueError, match="return_info=True needs tol"):
        hf.sinkhorn(cost, a, b, return_info=True, **run)
    with pytest.raises(ValueError, match="strict=True needs tol"):
        hf.ipot(cost, a, b, beta=0.1, n_iters=10, strict=True, backend=backend)
    with pytest.raises(TypeError, match="return_info must be a bool"):
        hf.sinkhorn(cost, a, b, tol=1e-6, return_info=1, **run)
    with pytest.raises(ValueError, match="grad='implicit' needs tol"):
        hf.sinkhorn(cost, a, b, grad="implicit", **run)
    with pytest.raises(ValueError, match="grad='implicit' is implemented for sinkhorn only"):
        hf.ipot(cost, a, b, beta=0.1, n_iters=10, tol=1e-6, grad="implicit", backend=backend)
    with pytest.raises(ValueError, match="grad='implicit' is not implemented for gromov_wasserstein"):
        hf.gromov_wasserstein(cs, ct, tol=1e-6, grad="implicit", backend=backend)
    with pytest.raises(ValueError, match="strict=True needs tol"):
        hf.gromov_wasserstein(cs, ct, strict=True, backend=backend)


def test_empty_batch():
    cost = torch.zeros(0, 3, 4, dtype=F64)
    for backend in BACKENDS:
        plan, info = hf.sinkhorn(cost, None, None, eps=0.1, n_iters=10, tol=1e-6, return_info=True, backend=backend)
        assert plan.shape == (0, 3, 4) and info.iterations.shape == (0,)


@pytest.mark.parametrize("op", ["sinkhorn_fwd_tol", "ipot_fwd_tol"])
@pytest.mark.parametrize("save", [False, True])
def test_opcheck_of_the_tolerance_ops(op, save):
    if "cpp" not in BACKENDS:
        pytest.skip("the cpp extension is not built")
    cost, a, b = problem(zero=True)
    torch.library.opcheck(
        getattr(torch.ops.helo_fast, op),
        (cost, a, b, 0.2, 50, 1e-6, save),
        test_utils=("test_schema", "test_faketensor"),
    )
    cost32, a32, b32 = (t.float() for t in (cost, a, b))
    torch.library.opcheck(
        getattr(torch.ops.helo_fast, op),
        (cost32, a32, b32, 0.2, 50, 1e-5, save),
        test_utils=("test_schema", "test_faketensor"),
    )


# Every fast backend and device, against the float64 reference at small sizes.


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


def test_a_problem_at_the_cap_warns_once_and_strict_raises_on_every_fast_backend(fast_backend):
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


def test_empty_batch_on_every_fast_backend(fast_backend):
    backend, device = fast_backend
    cost = torch.zeros(0, 3, 4, dtype=F64, device=device)
    for op in ("sinkhorn", "ipot"):
        plan, info = getattr(hf, op)(cost, n_iters=10, tol=1e-6, return_info=True, backend=backend, **reg_of(op))
        assert plan.shape == (0, 3, 4) and info.iterations.shape == (0,)


@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
@pytest.mark.parametrize("save", [False, True])
def test_opcheck_of_the_tolerance_ops_on_every_fast_backend(fast_backend, op, save):
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
