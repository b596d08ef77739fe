"""Property-based tests (hypothesis, fixed example budget) for every op on every backend built here.

Random shapes (1 and non-powers of two), marginals, eps/beta in 1e-3..10, cost scales up to 1e3:
parity with the float64 reference, plans non-negative and finite, the marginal that the solver's
last update enforces is met, gradients finite.
"""

import pytest
import torch
from hypothesis import given, strategies as st

import helo_fast as hf
from helo_fast import reference
from devices import cpu_backends
from tolerance import assert_float64_close, assert_no_nan

sizes = st.integers(min_value=1, max_value=9)
regs = st.sampled_from([1e-3, 1e-2, 0.1, 1.0, 10.0])
scales = st.sampled_from([1.0, 10.0, 1e3])


def problem(seed, batch, n, m, scale, uniform, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    cost = scale * torch.rand(batch, n, m, generator=gen, dtype=dtype)
    if uniform:
        return cost, None, None
    a = torch.rand(batch, n, generator=gen, dtype=dtype) + 0.1
    b = torch.rand(batch, m, generator=gen, dtype=dtype) + 0.1
    return cost, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def check_plan(plan, a, b, exact_dim, n, m):
    """Finite, non-negative, and the marginal on ``exact_dim`` (-1: rows -> a, -2: columns -> b) is met."""
    assert_no_nan(plan)
    assert bool((plan >= 0).all())
    target = a if exact_dim == -1 else b
    if target is None:
        target = torch.full(plan.sum(exact_dim).shape, 1.0 / (n if exact_dim == -1 else m), dtype=plan.dtype)
    assert torch.allclose(plan.sum(exact_dim), target, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("backend", cpu_backends("sinkhorn"))
@given(
    seed=st.integers(0, 2**16), batch=st.integers(1, 3), n=sizes, m=sizes, eps=regs, scale=scales, uniform=st.booleans()
)
def test_sinkhorn_properties(backend, seed, batch, n, m, eps, scale, uniform):
    cost, a, b = problem(seed, batch, n, m, scale, uniform)
    cost.requires_grad_(True)
    plan = hf.sinkhorn(cost, a, b, eps=eps, n_iters=10, backend=backend)
    check_plan(plan.detach(), a, b, -1, n, m)  # the row potential is updated last
    assert_float64_close(plan, reference.sinkhorn(cost, a, b, eps=eps, n_iters=10), rtol=1e-9)
    (grad,) = torch.autograd.grad((plan * torch.linspace(0, 1, m, dtype=cost.dtype)).sum(), cost)
    assert_no_nan(grad)


@pytest.mark.slow
@pytest.mark.parametrize("backend", cpu_backends("ipot"))
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
    n=sizes,
    m=sizes,
    beta=regs,
    scale=scales,
    uniform=st.booleans(),
)
def test_ipot_properties(backend, seed, batch, n, m, beta, scale, uniform):
    cost, a, b = problem(seed, batch, n, m, scale, uniform)
    cost.requires_grad_(True)
    plan = hf.ipot(cost, a, b, beta=beta, n_iters=10, grad="unrolled", backend=backend)
    check_plan(plan.detach(), a, b, -2, n, m)  # the column scaling is updated last
    assert_float64_close(plan, reference.ipot(cost, a, b, beta=beta, n_iters=10, grad="unrolled"), rtol=1e-9)
    (grad,) = torch.autograd.grad((plan * torch.linspace(0, 1, m, dtype=cost.dtype)).sum(), cost)
    assert_no_nan(grad)


@pytest.mark.slow
@pytest.mark.parametrize("backend", cpu_backends("gromov_wasserstein"))
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
    n=sizes,
    m=sizes,
    eps=st.sampled_from([1e-2, 0.1, 1.0]),
    solver=st.sampled_from(["ipot", "sinkhorn"]),
)
def test_gromov_properties(backend, seed, batch, n, m, eps, solver):
    gen = torch.Generator().manual_seed(seed)
    cs = torch.rand(batch, n, n, generator=gen, dtype=torch.float64)
    ct = torch.rand(batch, m, m, generator=gen, dtype=torch.float64)
    plan = hf.gromov_wasserstein(cs, ct, eps=eps, outer_iters=3, inner_iters=8, solver=solver, backend=backend)
    check_plan(plan, None, None, -2 if solver == "ipot" else -1, n, m)
    expected = reference.gromov_wasserstein(cs, ct, eps=eps, outer_iters=3, inner_iters=8, solver=solver)
    assert_float64_close(plan, expected, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("backend", cpu_backends("lcd_attention"))
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    lq=sizes,
    lk=sizes,
    dim=st.integers(1, 7),
    with_bias=st.booleans(),
    with_ln=st.booleans(),
    p=st.sampled_from([0.0, 0.3]),
    bias_before_scale=st.booleans(),
)
def test_lcd_attention_properties(backend, seed, batch, heads, lq, lk, dim, with_bias, with_ln, p, bias_before_scale):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, lq, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, heads, lk, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, heads, lk, dim, generator=gen, dtype=torch.float64)
    bias = torch.randn(lq, lk, generator=gen, dtype=torch.float64) if with_bias else None
    residual = torch.randn(batch, lq, heads * dim, generator=gen, dtype=torch.float64)
    ln = (
        dict(
            ln_weight=torch.rand(heads * dim, generator=gen, dtype=torch.float64) + 0.5,
            ln_bias=torch.randn(heads * dim, generator=gen, dtype=torch.float64),
        )
        if with_ln
        else {}
    )
    kwargs = dict(dropkey_p=p, dropout_p=p, residual=residual, bias_before_scale=bias_before_scale, **ln)
    out = hf.lcd_attention(q, k, v, bias, generator=torch.Generator().manual_seed(seed), backend=backend, **kwargs)
    expected = reference.lcd_attention(q, k, v, bias, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert_float64_close(out, expected, rtol=1e-9)
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert_no_nan(grad)
