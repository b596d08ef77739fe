"""The OT ops over their whole documented domain (README "Valid domain") against a float64 oracle.

hypothesis draws the problem: B, n, m from 1 to 70; eps / beta from 1e-4 to 10; the cost range up to 1e4 eps,
shifted anywhere in [-range, range]; marginals uniform, random, with exact zeros or with entries down to 1e-30 of
the others; n_iters 1 to 300 (GW: outer 1-6, inner 1-60); float32 and float64; grad "none" and "unrolled". The
oracle (tests/support/ot_oracle.py) is a plain float64 log-domain loop written for these tests. Plans must be finite
and within tests/support/tolerance.py's rule (assert_close_to_oracle); gradients finite wherever the oracle's are, and
within that rule where the problem is well conditioned (ot_condition <= WELL_CONDITIONED).

Size: HELO_SWEEP=ci (default, derandomized: the same examples every run, within CI's budget) or HELO_SWEEP=nightly
(20x the examples, a fresh random draw each run; failures are kept in .hypothesis/ and replayed first).
HELO_SWEEP_REPORT=<file> appends one JSON line per checked result (op, backend, dtype, condition, error, bound):
the worst error per regime is read from it.
"""

import json
import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import helo_fast as hf
from helo_fast import _backend, reference
from devices import CPU, backend_params, skip_unless_backend
from domain_sweep import sweep_settings
from ot_oracle import batched
import ot_oracle
from tolerance import WELL_CONDITIONED, assert_close_to_oracle, ot_condition

# The oracle solves one problem at a time in Python: B x iterations is kept below this per example.
ORACLE_WORK = 2400


MARGINALS = ("uniform", "random", "zeros", "near_zeros")


def marginal(gen, batch, size, kind, mass):
    """[B, size] float64 weights of total ``mass``: uniform, random, with exact zeros (at least one entry positive),
    or with entries 1e-30 to 1e-12 times the others."""
    if kind == "uniform":
        w = torch.ones(batch, size, dtype=torch.float64)
    else:
        w = torch.rand(batch, size, generator=gen, dtype=torch.float64) + 0.05
        if kind == "zeros":
            w = w * (torch.rand(batch, size, generator=gen) < 0.6)
            w[:, torch.randint(size, (1,), generator=gen)] = 0.5  # one positive entry per problem at least
        elif kind == "near_zeros":
            tiny = 10.0 ** -torch.randint(12, 31, (batch, size), generator=gen, dtype=torch.float64)
            w = torch.where(torch.rand(batch, size, generator=gen) < 0.4, tiny, w)
    return w / w.sum(-1, keepdim=True) * mass


@st.composite
def ot_problems(draw, max_size=70, max_iters=300, max_batch=70):
    """Parameters of a batched OT problem (tensors come from a drawn seed, so shrinking works on the parameters)."""
    batch = draw(st.one_of(st.integers(1, min(3, max_batch)), st.integers(1, max_batch)))
    size = st.one_of(st.integers(1, min(8, max_size)), st.integers(1, max_size))
    n, m = draw(size), draw(size)
    n_iters = min(draw(st.integers(1, max_iters)), max(1, ORACLE_WORK // batch))
    return dict(
        batch=batch,
        n=n,
        m=m,
        n_iters=n_iters,
        reg=10.0 ** draw(st.floats(-4, 1)),
        # cost range / reg, weighted towards the top, where kernels underflow
        scaled_range=10.0 ** draw(st.one_of(st.floats(-2, 4), st.floats(2.5, 4))),
        shift=draw(st.floats(-1, 1)),  # cost offset, in cost ranges
        a=draw(st.sampled_from(MARGINALS)),
        b=draw(st.sampled_from(MARGINALS)),
        mass=draw(st.sampled_from([1.0, 1.0, 3.5])),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        grad=draw(st.sampled_from(["none", "unrolled"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def build(p):
    """(cost [B, n, m], a [B, n], b [B, m], weight [B, n, m]) in float64 from the drawn parameters."""
    gen = torch.Generator().manual_seed(p["seed"])
    width = p["scaled_range"] * p["reg"]
    cost = (torch.rand(p["batch"], p["n"], p["m"], generator=gen, dtype=torch.float64) + p["shift"]) * width
    a = marginal(gen, p["batch"], p["n"], p["a"], p["mass"])
    b = marginal(gen, p["batch"], p["m"], p["b"], p["mass"])
    weight = torch.randn(p["batch"], p["n"], p["m"], generator=gen, dtype=torch.float64)
    return cost, a, b, weight


def value_and_grads(fn, inputs, weight, with_grad):
    leaves = [t.detach().clone().requires_grad_(with_grad) for t in inputs]
    out = fn(*leaves)
    if not with_grad:
        return out.detach(), None
    return out.detach(), torch.autograd.grad((out * weight.to(out.dtype)).sum(), leaves)


def natural_scales(plan, weight, reg, inputs):
    """The size a gradient has without cancellation: |weight| |plan| / reg for a cost (or structure) input,
    |weight| |plan| / (smallest positive entry) for a marginal. Errors of gradients that vanish in exact
    arithmetic (a single row or column) are measured against it."""
    top = float(weight.abs().max()) * float(plan.abs().max())
    scales = []
    for t in inputs:
        if t.dim() == 2:  # a marginal
            positive = t[t > 0]
            scales.append(top / float(positive.min()) if positive.numel() else top)
        else:
            scales.append(top / reg)
    return scales


REPORT = os.environ.get("HELO_SWEEP_REPORT")


def record(what, condition, dtype, err_bound, **labels):
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(
                json.dumps(
                    dict(
                        labels,
                        what=what,
                        condition=condition,
                        dtype=str(dtype).replace("torch.", ""),
                        error=err_bound[0],
                        bound=err_bound[1],
                    )
                )
                + "\n"
            )


def check(fn, ref_fn, oracle_fn, inputs, weight, dtype, grad, condition, reg, **labels):
    """fn's plan (and gradients) against the oracle, at the tolerance of tests/support/tolerance.py."""
    with_grad = grad == "unrolled"
    oracle, oracle_grads = value_and_grads(oracle_fn, inputs, weight, with_grad)
    low = [t.to(dtype) for t in inputs]
    out, grads = value_and_grads(lambda *x: fn(*x, grad=grad), low, weight, with_grad)
    assert out.dtype == dtype
    ref, ref_grads = (None, None) if dtype == torch.float64 else value_and_grads(ref_fn, low, weight, with_grad)
    record("plan", condition, dtype, assert_close_to_oracle(out, oracle, ref, condition), **labels)
    if not with_grad:
        return
    well = condition <= WELL_CONDITIONED
    for index, (g, o, r, scale) in enumerate(
        zip(grads, oracle_grads, ref_grads or [None] * len(grads), natural_scales(oracle, weight, reg, inputs))
    ):
        finite = torch.isfinite(o)
        assert bool(torch.isfinite(g)[finite].all()), f"gradient w.r.t. input {index} not finite where the oracle's is"
        record(
            f"grad{index}",
            condition,
            dtype,
            assert_close_to_oracle(g, o, r, condition, scale=scale, well_conditioned=well),
            **labels,
        )


SOLVERS = {
    "sinkhorn": (hf.sinkhorn, reference.sinkhorn, ot_oracle.sinkhorn, "eps"),
    "ipot": (hf.ipot, reference.ipot, ot_oracle.ipot, "beta"),
}


def run_ot(op, backend, p):
    fn, ref_fn, oracle_fn, reg_name = SOLVERS[op]
    cost, a, b, weight = build(p)
    kw = {reg_name: p["reg"], "n_iters": p["n_iters"]}
    condition = ot_condition(op, float(cost.abs().max()) / p["reg"], p["n_iters"])
    check(
        lambda c, x, y, grad: fn(c, x, y, grad=grad, backend=backend, **kw),
        lambda c, x, y: ref_fn(c, x, y, grad="unrolled", **kw),
        lambda c, x, y: batched(oracle_fn, c, x, y, **kw),
        (cost, a, b),
        weight,
        p["dtype"],
        p["grad"],
        condition,
        p["reg"],
        op=op,
        backend=backend,
    )


@pytest.mark.slow
@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
@sweep_settings(30)
@given(p=ot_problems())
def test_reference_ot_op_matches_oracle_over_the_domain(op, p):
    run_ot(op, "reference", p)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
@sweep_settings(100)
@given(p=ot_problems())
def test_cpp_ot_op_matches_oracle_over_the_domain(op, p):
    run_ot(op, "cpp", p)


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
@sweep_settings(12)
@given(p=ot_problems(max_size=6, max_iters=25, max_batch=2))
def test_triton_ot_op_matches_oracle_over_the_domain(op, p):
    reason = _backend.unavailable_reason("triton", CPU, op)
    if reason is not None:
        pytest.skip(reason)
    run_ot(op, "triton", p)


@st.composite
def gw_problems(draw, max_size=12, max_batch=70):
    """Parameters of a batched GW step. Structures are cosine-distance graphs sparsified as HeLo's (§4.4, but of any
    size and scale); the scale is drawn so that the linearised cost range is up to 1e4 eps."""
    batch = draw(st.one_of(st.integers(1, 3), st.integers(1, max_batch)))
    outer = draw(st.integers(1, 6))
    inner = min(draw(st.integers(1, 60)), max(1, ORACLE_WORK // (batch * outer)))
    return dict(
        batch=batch,
        n=draw(st.integers(1, max_size)),
        m=draw(st.integers(1, max_size)),
        outer=outer,
        inner=inner,
        solver=draw(st.sampled_from(["ipot", "sinkhorn"])),
        reg=10.0 ** draw(st.floats(-3, 1)),
        scaled_range=10.0 ** draw(st.floats(-2, 4)),
        a=draw(st.sampled_from(MARGINALS)),
        b=draw(st.sampled_from(MARGINALS)),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        grad=draw(st.sampled_from(["none", "unrolled"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def structure(gen, batch, n, scale):
    x = torch.randn(batch, n, 8, generator=gen, dtype=torch.float64)
    d = 1 - torch.nn.functional.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1)
    tau = d.amin((1, 2), keepdim=True) + 0.1 * (d.amax((1, 2), keepdim=True) - d.amin((1, 2), keepdim=True))
    return torch.relu(d - tau) * scale


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params("gromov_wasserstein", include_triton=False))
@sweep_settings(50)
@given(p=gw_problems())
def test_gromov_wasserstein_matches_oracle_over_the_domain(backend, p):
    run_gromov_wasserstein(backend, p)


@pytest.mark.slow
@pytest.mark.triton
@sweep_settings(10)
@given(p=gw_problems(max_size=6, max_batch=2))
def test_triton_gromov_wasserstein_matches_oracle_over_the_domain(p):
    skip_unless_backend("triton", "gromov_wasserstein")
    run_gromov_wasserstein("triton", p)


def run_gromov_wasserstein(backend, p):
    gen = torch.Generator().manual_seed(p["seed"])
    # (max cs + max ct)^2 bounds the linearised cost (HELO_SPEC §4.4); cosine distances are at most 2.
    scale = math.sqrt(p["scaled_range"] * p["reg"]) / 4
    cs, ct = structure(gen, p["batch"], p["n"], scale), structure(gen, p["batch"], p["m"], scale)
    a, b = marginal(gen, p["batch"], p["n"], p["a"], 1.0), marginal(gen, p["batch"], p["m"], p["b"], 1.0)
    weight = torch.randn(p["batch"], p["n"], p["m"], generator=gen, dtype=torch.float64)
    kw = dict(eps=p["reg"], outer_iters=p["outer"], inner_iters=p["inner"], solver=p["solver"])
    bound = (float(cs.abs().max()) + float(ct.abs().max())) ** 2 / p["reg"]
    condition = ot_condition(p["solver"], bound, p["inner"], p["outer"])
    check(
        lambda *x, grad: hf.gromov_wasserstein(*x, grad=grad, backend=backend, **kw),
        lambda *x: reference.gromov_wasserstein(*x, grad="unrolled", **kw),
        lambda *x: batched(ot_oracle.gromov_wasserstein, *x, **kw),
        (cs, ct, a, b),
        weight,
        p["dtype"],
        p["grad"],
        condition,
        p["reg"],
        op=f"gw-{p['solver']}",
        backend=backend,
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params("sinkhorn", include_triton=False))
@sweep_settings(30)
@given(p=ot_problems(max_size=20, max_batch=8), tol_exponent=st.floats(-10, -2))
def test_sinkhorn_with_tol_and_implicit_gradient_over_the_domain(backend, p, tol_exponent):
    """tol and grad="implicit" over the domain (issue 30): each problem's plan is the oracle's at the count it
    reports (a multiple of 10, or the cap), converged says whether that plan is within tol, and the implicit
    gradient is finite everywhere and 0 at zero-mass entries. (Its value is checked in
    tests/ops/test_sinkhorn.py.)"""
    if backend == "cpp":
        skip_unless_backend("cpp", "sinkhorn")
    run_sinkhorn_with_tol(backend, p, tol_exponent)


@pytest.mark.slow
@pytest.mark.triton
@sweep_settings(12)
@given(p=ot_problems(max_size=6, max_iters=25, max_batch=2), tol_exponent=st.floats(-10, -2))
def test_triton_sinkhorn_with_tol_and_implicit_gradient_over_the_domain(p, tol_exponent):
    skip_unless_backend("triton", "sinkhorn")
    run_sinkhorn_with_tol("triton", p, tol_exponent)


def run_sinkhorn_with_tol(backend, p, tol_exponent):
    import warnings

    cost, a, b, weight = build(p)
    tol = 10.0**tol_exponent * p["mass"]
    leaves = [t.to(p["dtype"]).clone().requires_grad_(p["grad"] == "unrolled") for t in (cost, a, b)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hf.OTConvergenceWarning)
        plan, info = hf.sinkhorn(
            *leaves,
            eps=p["reg"],
            n_iters=p["n_iters"],
            tol=tol,
            return_info=True,
            grad="implicit" if p["grad"] == "unrolled" else "none",
            backend=backend,
        )
    counts = info.iterations.tolist()
    assert all(1 <= k <= p["n_iters"] and (k % 10 == 0 or k == p["n_iters"]) for k in counts)
    for k, count in enumerate(counts):
        one = [t[k : k + 1] for t in (cost, a, b)]
        condition = ot_condition("sinkhorn", float(one[0].abs().max()) / p["reg"], count)
        oracle = batched(ot_oracle.sinkhorn, *one, eps=p["reg"], n_iters=count)
        ref = (
            None
            if p["dtype"] == torch.float64
            else reference.sinkhorn(*(t.to(p["dtype"]) for t in one), eps=p["reg"], n_iters=count, grad="none")
        )
        assert_close_to_oracle(plan[k : k + 1].detach(), oracle, ref, condition)
        if p["dtype"] == torch.float64 and condition <= WELL_CONDITIONED:
            violation = float((oracle.sum(1) - one[2]).abs().sum())
            if abs(violation - tol) > 1e-3 * tol:  # away from the boundary, the decision is the oracle's
                assert bool(info.converged[k]) == (violation <= tol)
    if p["grad"] == "unrolled":
        grads = torch.autograd.grad((plan * weight.to(plan.dtype)).sum(), leaves)
        for g in grads:
            assert torch.isfinite(g).all(), "implicit gradient not finite"
        assert (grads[1][a == 0] == 0).all() and (grads[2][b == 0] == 0).all()
