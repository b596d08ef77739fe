"""hf.gromov_wasserstein_cost and nn.GromovWassersteinLoss (issue 30 item 3, the GW counterpart of sinkhorn_cost): the
value against a direct float64 evaluation of sum_ijkl (cs_ik - ct_jl)² Γ_ij Γ_kl (+ 2 eps KL(Γ | a bᵀ) for Sinkhorn)
on the returned plan, and its envelope gradient against float64 central differences of the converged value, on small
problems whose outer loop converges to a locally unique fixed point, on every backend (Triton under the CPU
interpreter at these sizes)."""

import warnings

import pytest
import torch
from devices import CPU, fast_backend_params, skip_on_the_triton_interpreter, skip_unless_backend

import helo_fast as hf
import helo_fast.nn
from ot_cases import marginal

F64 = torch.float64
OP = "gromov_wasserstein"


@pytest.fixture(params=[pytest.param(("reference", CPU), id="reference")] + fast_backend_params())
def backend(request):
    name, device = request.param
    skip_unless_backend(name, OP, device)
    return name, device


def symmetric(x):
    return (x + x.transpose(1, 2)) / 2


def problem(batch=2, n=4, m=5, seed=0, zeros=False, mass=1.0, device=CPU):
    """Symmetric random structures and random marginals (a zero-mass entry in each problem with ``zeros``)."""
    gen = torch.Generator().manual_seed(seed)
    cs = symmetric(torch.rand(batch, n, n, generator=gen, dtype=F64))
    ct = symmetric(torch.rand(batch, m, m, generator=gen, dtype=F64))
    a = marginal(gen, batch, n, 0.2, [(0, 1)] if zeros else (), mass)
    b = marginal(gen, batch, m, 0.2, [(1, 3)] if zeros else (), mass)
    return [t.to(device) for t in (cs, ct, a, b)]


def direct_value(plan, cs, ct, a, b, kl_weight):
    """sum_ijkl (cs_ik - ct_jl)² Γ_ij Γ_kl + kl_weight (sum Γ log(Γ / a bᵀ) - sum Γ + sum a bᵀ), written out [B]."""
    plan, cs, ct, a, b = (t.double().cpu() for t in (plan, cs, ct, a, b))
    gap = (cs[:, :, None, :, None] - ct[:, None, :, None, :]) ** 2  # [B, i, j, k, l]
    values = torch.einsum("bijkl,bij,bkl->b", gap, plan, plan)
    ab = a[:, :, None] * b[:, None, :]
    for k in range(plan.shape[0]):
        inside = plan[k] > 0
        kl = (plan[k][inside] * torch.log(plan[k][inside] / ab[k][inside])).sum() - plan[k].sum() + ab[k].sum()
        values[k] += kl_weight * kl
    return values


SINKHORN = dict(eps=0.1, outer_iters=500, inner_iters=20000, tol=1e-13, solver="sinkhorn")
# IPOT's GW outer loop reaches a vertex fixed point on these problems in 3-4 outer iterations (others of the batch
# cycle between vertices). Tight: for the finite differences; loose: for the value, in fewer IPOT iterations.
IPOT = dict(eps=0.1, outer_iters=20, inner_iters=5000, tol=1e-10, solver="ipot")
IPOT_LOOSE = dict(IPOT, tol=1e-6)
IPOT_PROBLEMS = [2, 3, 4]  # of problem(batch=8, seed=2): the ones whose outer loop converges


def ipot_problem(device=CPU):
    return [t[IPOT_PROBLEMS] for t in problem(batch=8, seed=2, device=device)]


@pytest.mark.parametrize("solver", ["sinkhorn", "ipot"])
def test_value_is_the_formula_on_the_returned_plan(backend, solver):
    name, device = backend
    run = SINKHORN if solver == "sinkhorn" else IPOT_LOOSE
    cs, ct, a, b = ipot_problem(device) if solver == "ipot" else problem(zeros=True, device=device)
    value, info = hf.gromov_wasserstein_cost(cs, ct, a, b, return_info=True, backend=name, **run)
    plan, plan_info = hf.gromov_wasserstein(cs, ct, a, b, return_info=True, backend=name, **run)
    assert value.shape == (cs.shape[0],) and value.dtype == F64 and info.converged.all()
    for got, want in zip(info, plan_info):
        assert torch.equal(got, want)
    want = direct_value(plan, cs, ct, a, b, 2.0 * run["eps"] if solver == "sinkhorn" else 0.0)
    torch.testing.assert_close(value.cpu(), want, rtol=1e-12, atol=1e-14)


def central_difference(total, args, index, step):
    """(total(args with args[index] + step) - total(args with args[index] - step)) / 2 for a step tensor."""
    plus, minus = list(args), list(args)
    plus[index], minus[index] = args[index] + step, args[index] - step
    return (total(*plus) - total(*minus)) / 2


@pytest.mark.parametrize("zeros, mass", [(False, 1.0), (True, 2.5)])
def test_sinkhorn_envelope_gradient_matches_central_differences(backend, zeros, mass):
    name, device = backend
    skip_on_the_triton_interpreter(name, device, big=zeros)  # ~3 min there; zero masses: the value test's problem
    inputs = problem(zeros=zeros, mass=mass, device=device)
    leaves = [t.clone().requires_grad_() for t in inputs]
    value, info = hf.gromov_wasserstein_cost(*leaves, return_info=True, backend=name, **SINKHORN)
    assert info.converged.all()
    value.sum().backward()
    grads = [t.grad.cpu() for t in leaves]
    assert all(torch.isfinite(g).all() for g in grads)
    for g in grads[:2]:
        torch.testing.assert_close(g, g.transpose(1, 2), rtol=0, atol=1e-15)  # symmetric, as the inputs

    def total(*args):
        return float(hf.gromov_wasserstein_cost(*args, backend=name, **SINKHORN).sum())

    h = 1e-5
    for index, (i, k) in ((0, (1, 3)), (0, (2, 2)), (1, (0, 4)), (1, (3, 1))):  # cs, ct: symmetric steps
        step = torch.zeros_like(inputs[index])
        step[:, i, k] = h
        step[:, k, i] = h
        numeric = central_difference(total, inputs, index, step) / h
        analytic = float((grads[index] * step.cpu()).sum()) / h
        assert abs(numeric - analytic) <= 1e-7 * (1 + abs(numeric)), (index, i, k, numeric, analytic)
    # Equal-mass directions of (a, b): a_i and b_j up together, a_i up and a_k down (entries 0 / 2 of a and b are
    # positive in both problems, so the steps stay inside the domain).
    cs, ct, a, b = inputs
    for i, j, k in ((0, 2, None), (2, 0, None), (0, None, 2)):
        ea, eb = torch.zeros_like(a), torch.zeros_like(b)
        ea[:, i] = h
        if j is not None:
            eb[:, j] = h
            analytic = float((grads[2][:, i] + grads[3][:, j]).sum())
        else:
            ea[:, k] = -h
            analytic = float((grads[2][:, i] - grads[2][:, k]).sum())
        numeric = (total(cs, ct, a + ea, b + eb) - total(cs, ct, a - ea, b - eb)) / (2 * h)
        assert abs(numeric - analytic) <= 1e-7 * (1 + abs(numeric)), (i, j, k, numeric, analytic)
    torch.testing.assert_close(
        (grads[2] * a.cpu()).sum(-1), (grads[3] * b.cpu()).sum(-1), rtol=1e-12, atol=1e-14
    )  # the gauge, as sinkhorn_cost's


def test_ipot_envelope_gradient_matches_central_differences(backend):
    """IPOT's fixed points here are vertices: locally the plan does not move and V is quadratic in cs, ct, so a
    larger step is exact up to the inner solves' tolerance."""
    name, device = backend
    skip_on_the_triton_interpreter(name, device)  # thousands of IPOT iterations per solve
    inputs = ipot_problem(device)
    leaves = [t.clone().requires_grad_() for t in inputs[:2]]
    value, info = hf.gromov_wasserstein_cost(*leaves, *inputs[2:], return_info=True, backend=name, **IPOT)
    assert info.converged.all()
    value.sum().backward()
    grads = [t.grad.cpu() for t in leaves]

    def total(*args):
        return float(hf.gromov_wasserstein_cost(*args, backend=name, **IPOT).sum())

    h = 1e-3
    for index, (i, k) in ((0, (1, 3)), (0, (2, 2)), (1, (0, 4)), (1, (3, 1))):
        step = torch.zeros_like(inputs[index])
        step[:, i, k] = h
        step[:, k, i] = h
        numeric = central_difference(total, inputs, index, step) / h
        analytic = float((grads[index] * step.cpu()).sum()) / h
        assert abs(numeric - analytic) <= 1e-6 * (1 + abs(numeric)), (index, i, k, numeric, analytic)


def test_eps_kl_is_not_the_stationary_objective():
    """The reason for 2 eps: with eps KL(Γ | a bᵀ) the converged plan is not stationary, and the partial derivative
    at fixed Γ misses the finite difference by far more than the tolerance above."""
    cs, ct, a, b = problem()
    run = dict(SINKHORN, solver="sinkhorn", backend="reference")

    def value_with(weight, cs_):
        plan = hf.gromov_wasserstein(cs_, ct, a, b, **run)
        return float(direct_value(plan, cs_, ct, a, b, weight * run["eps"]).sum())

    leaf = cs.clone().requires_grad_()
    hf.gromov_wasserstein_cost(leaf, ct, a, b, **run).sum().backward()
    h, step = 1e-5, torch.zeros_like(cs)
    step[:, 1, 3] = step[:, 3, 1] = h
    analytic = float((leaf.grad * step).sum()) / h
    misses = {w: abs((value_with(w, cs + step) - value_with(w, cs - step)) / (2 * h) - analytic) for w in (1.0, 2.0)}
    assert misses[2.0] <= 1e-7 and misses[1.0] >= 1e-4, misses


def test_refusals_and_reports():
    cs, ct, a, b = problem()
    with pytest.raises(ValueError, match="gromov_wasserstein_cost needs tol"):
        hf.gromov_wasserstein_cost(cs, ct, eps=0.1, outer_iters=10, inner_iters=10, tol=None)
    skew = cs.clone()
    skew[1, 0, 2] += 1e-3
    with pytest.raises(ValueError, match=r"cs must be symmetric .* problem 1"):
        hf.gromov_wasserstein_cost(skew, ct, eps=0.1, outer_iters=10, inner_iters=10, tol=1e-6)
    skew[1, 0, 2] = cs[1, 0, 2] + 1e-10  # rounding-size asymmetry (a float64 matmul's) is accepted
    hf.gromov_wasserstein_cost(skew, ct, eps=0.5, outer_iters=100, inner_iters=1000, tol=1e-6)
    with pytest.raises(ValueError, match="ct must be symmetric"):
        hf.gromov_wasserstein_cost(
            cs, ct + torch.triu(torch.ones_like(ct), 1), eps=0.1, outer_iters=10, inner_iters=10, tol=1e-6
        )
    with pytest.raises(ValueError, match="solver='ipot' has no gradient with respect to a or b"):
        hf.gromov_wasserstein_cost(
            cs, ct, a.requires_grad_(), b, solver="ipot", eps=0.5, outer_iters=10, inner_iters=10, tol=1e-6
        )
    a = a.detach()
    with torch.no_grad():  # nothing is differentiated: no refusal
        hf.gromov_wasserstein_cost(
            cs, ct, a.clone().requires_grad_(), b, solver="ipot", eps=0.5, outer_iters=10, inner_iters=100, tol=1e-3
        )
    with pytest.warns(hf.OTConvergenceWarning, match="gromov_wasserstein_cost: 2 of 2 problems"):
        value, info = hf.gromov_wasserstein_cost(
            cs, ct, a, b, eps=0.1, outer_iters=2, inner_iters=10, tol=1e-12, return_info=True
        )
    assert not info.converged.any() and torch.isfinite(value).all()
    with pytest.raises(hf.OTConvergenceError, match="strict=True"):
        hf.gromov_wasserstein_cost(cs, ct, eps=0.1, outer_iters=2, inner_iters=10, tol=1e-12, strict=True)


def test_the_marginal_potentials_solve_counts_in_the_info():
    cs, ct, a, b = problem()
    _, plain = hf.gromov_wasserstein_cost(cs, ct, a, b, return_info=True, backend="reference", **SINKHORN)
    _, wanted = hf.gromov_wasserstein_cost(
        cs, ct, a.clone().requires_grad_(), b, return_info=True, backend="reference", **SINKHORN
    )
    assert torch.equal(wanted.iterations, plain.iterations)
    assert (wanted.inner_iterations > plain.inner_iterations).all() and wanted.converged.all()


def test_float32_value_and_gradient_follow_float64():
    cs, ct, a, b = problem()
    run = dict(eps=0.5, outer_iters=200, inner_iters=2000, tol=1e-6)
    out = []
    for dtype in (F64, torch.float32):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (cs, ct, a, b)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value = hf.gromov_wasserstein_cost(*leaves, **run)
        value.sum().backward()
        assert value.dtype == dtype and all(t.grad.dtype == dtype for t in leaves)
        out.append([value.detach().double()] + [t.grad.double() for t in leaves])
    for got, want in zip(out[1], out[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gromov_wasserstein_loss_module_reduces_and_backpropagates():
    cs, ct, a, b = problem(batch=3)
    run = dict(eps=0.5, outer_iters=200, inner_iters=2000, tol=1e-10)
    values = hf.gromov_wasserstein_cost(cs, ct, a, b, **run)
    for reduction in ("mean", "sum", "none"):
        loss = helo_fast.nn.GromovWassersteinLoss(reduction=reduction, **run)
        leaf = cs.clone().requires_grad_()
        out = loss(leaf, ct, a, b)
        expected = values if reduction == "none" else getattr(values, reduction)()
        torch.testing.assert_close(out.detach(), expected)
        out.sum().backward()
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    assert "solver='sinkhorn'" in repr(loss)
    with pytest.raises(ValueError, match="reduction"):
        helo_fast.nn.GromovWassersteinLoss(eps=0.1, outer_iters=10, inner_iters=10, tol=1e-6, reduction="max")
    with pytest.raises(ValueError, match="solver"):
        helo_fast.nn.GromovWassersteinLoss(eps=0.1, outer_iters=10, inner_iters=10, tol=1e-6, solver="emd")
