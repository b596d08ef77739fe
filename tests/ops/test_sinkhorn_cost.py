"""hf.sinkhorn_cost and nn.SinkhornLoss (issue 30): the regularised OT value <P, C> + eps KL(P | a bᵀ) of the
converged plan (against the formula applied to POT's plan) and its envelope gradient (dV/dC = P; dV/da, dV/db
against float64 central differences in equal-mass directions, finite at zero-mass entries)."""

import ot
import pytest
import torch

import helo_fast as hf
import helo_fast.nn
from devices import cpu_backends
from ot_cases import ot_problem

BACKENDS = cpu_backends(include_triton=False)
F64 = torch.float64


def problem(batch=2, n=4, m=5, seed=0, zeros=False, mass=1.0):
    zero_entries = {"a_zeros": [(0, 1)], "b_zeros": [(1, 3)]} if zeros else {}
    return ot_problem(seed, batch, n, m, floor=0.2, mass=mass, **zero_entries)


def kl_value(plan, cost, a, b, eps):
    """<P, C> + eps (sum P log(P / (a bᵀ)) - sum P + sum a sum b), written out for one problem."""
    ab = a[:, None] * b[None, :]
    inside = plan > 0
    kl = (plan[inside] * torch.log(plan[inside] / ab[inside])).sum() - plan.sum() + ab.sum()
    return float((plan * cost).sum() + eps * kl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_is_the_objective_at_pots_converged_plan(backend):
    cost, a, b = problem()
    eps = 0.1
    value = hf.sinkhorn_cost(cost, a, b, eps=eps, n_iters=20000, tol=1e-13, backend=backend)
    assert value.shape == (2,) and value.dtype == F64
    for k in range(2):
        plan = torch.from_numpy(
            ot.sinkhorn(
                a[k].numpy(),
                b[k].numpy(),
                cost[k].numpy(),
                eps,
                method="sinkhorn_log",
                numItermax=200000,
                stopThr=1e-14,
            )
        )
        assert abs(float(value[k]) - kl_value(plan, cost[k], a[k], b[k], eps)) <= 1e-11


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("mass", [1.0, 2.5])
def test_envelope_gradient_matches_central_differences(backend, zeros, mass):
    cost, a, b = problem(zeros=zeros, mass=mass)
    eps, run = 0.2, dict(n_iters=50000, tol=1e-14, backend=backend)
    leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
    value = hf.sinkhorn_cost(*leaves, eps=eps, **run)
    value.sum().backward()
    grad_cost, grad_a, grad_b = (t.grad for t in leaves)
    plan = hf.sinkhorn(cost, a, b, eps=eps, **run)
    torch.testing.assert_close(grad_cost, plan, rtol=1e-12, atol=1e-15)  # dV/dC = P
    assert torch.isfinite(grad_a).all() and torch.isfinite(grad_b).all()

    def total(c, a_, b_):
        return float(hf.sinkhorn_cost(c, a_, b_, eps=eps, **run).sum())

    h = 1e-6
    e = torch.zeros_like(cost)
    e[:, 2, 1] = h
    numeric = (total(cost + e, a, b) - total(cost - e, a, b)) / (2 * h)
    assert abs(numeric - float(grad_cost[:, 2, 1].sum())) <= 1e-7
    # Equal-mass directions: a_i and b_j up together (the total mass changes), a_i up and a_k down. Entries 0 / 2 of
    # a and 0 / 2 of b are positive in both problems, so the steps stay inside the domain.
    for i, j, k in ((0, 2, None), (2, 0, None), (0, None, 2)):
        ea, eb = torch.zeros_like(a), torch.zeros_like(b)
        ea[:, i] = h
        if j is not None:
            eb[:, j] = h
            analytic = grad_a[:, i] + grad_b[:, j]
        else:
            ea[:, k] = -h
            analytic = grad_a[:, i] - grad_a[:, k]
        numeric = (total(cost, a + ea, b + eb) - total(cost, a - ea, b - eb)) / (2 * h)
        assert abs(numeric - float(analytic.sum())) <= 1e-6 * (1 + abs(numeric))
    # The gauge: sum a dV/da = sum b dV/db.
    torch.testing.assert_close((grad_a * a).sum(-1), (grad_b * b).sum(-1), rtol=1e-12, atol=1e-14)


def test_value_needs_tol_and_reports():
    cost, a, b = problem()
    with pytest.raises(ValueError, match="sinkhorn_cost needs tol"):
        hf.sinkhorn_cost(cost, a, b, eps=0.1, n_iters=10, tol=None)
    with pytest.warns(hf.OTConvergenceWarning, match="sinkhorn_cost"):
        value, info = hf.sinkhorn_cost(cost, a, b, eps=0.01, n_iters=10, tol=1e-12, return_info=True)
    assert not info.converged.any() and torch.isfinite(value).all()


def test_sinkhorn_loss_module_reduces_and_backpropagates():
    cost, a, b = problem(batch=3)
    for reduction in ("mean", "sum", "none"):
        loss = helo_fast.nn.SinkhornLoss(eps=0.1, n_iters=5000, tol=1e-10, reduction=reduction)
        c = cost.clone().requires_grad_()
        out = loss(c, a, b)
        values = hf.sinkhorn_cost(cost, a, b, eps=0.1, n_iters=5000, tol=1e-10)
        expected = values if reduction == "none" else getattr(values, reduction)()
        torch.testing.assert_close(out.detach(), expected)
        out.sum().backward()
        assert torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        helo_fast.nn.SinkhornLoss(eps=0.1, n_iters=10, tol=1e-6, reduction="max")
