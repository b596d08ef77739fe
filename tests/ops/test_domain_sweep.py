"""Every op over its whole documented domain (README "Valid domain") against a float64 oracle: the OT ops first, then
lcd_attention (seeded_dropout's sweep is in test_seeded_dropout.py, beside its plain oracle).

The OT ops: hypothesis draws the problem: B, n, m from 1 to 70; eps / beta from 1e-4 to 10; the cost range up to
1e4 eps, shifted anywhere in [-range, range]; marginals uniform, random, with exact zeros or with entries down to
1e-30 of the others; n_iters 1 to 300 (GW: outer 1-6, inner 1-60); float32 and float64; grad "none" and "unrolled".
The oracle (tests/support/ot_oracle.py) is a plain float64 log-domain loop written for these tests. Plans must be
finite and within tests/support/tolerance.py's rule (assert_close_to_oracle); gradients finite wherever the oracle's
are, and within that rule where the problem is well conditioned (ot_condition <= WELL_CONDITIONED).

lcd_attention: hypothesis draws the problem: B 1-6, H 1-8, Lq and Lk 1-40, D 1-140 (HeLo's D = 32 and 128 inside);
bias absent or of every broadcastable shape, before or after the scale; residual and LayerNorm (with or without its
bias) on or off; scale default or 0.01-10; input magnitudes 0.1-3; q, k, v contiguous or heads of [B, L, H*D];
DropKey and dropout p in [0, 0.99) with masks drawn from the generator or given; float64, float32 and bfloat16; with
and without gradients. The oracle (tests/support/lcd_attention_oracle.py) is a plain float64 transcription of the
documented definition. Outputs and gradients must be finite; float64 within 1e-10 of the oracle (relative to the
largest oracle entry or the gradient's natural size), lower precisions within tests/support/tolerance.py's rule
against the reference run in the same precision, with a floor of 8 ulps times the conditioning (1 + max |logit|,
times LayerNorm's amplification |x| / std).

Size: HELO_SWEEP=ci (default, derandomized: the same examples every run, within CI's budget) or HELO_SWEEP=nightly
(20x the examples, a fresh random draw each run; failures are kept in .hypothesis/ and replayed first).
HELO_SWEEP_REPORT=<file> appends one JSON line per checked OT result (op, backend, dtype, condition, error, bound):
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
from helo_fast.reference.lcd_attention import attention_masks
from devices import CPU, backend_params, skip_unless_backend
from domain_sweep import sweep_settings
from lcd_attention_oracle import lcd_attention_oracle
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


def check_ot(fn, ref_fn, oracle_fn, inputs, weight, dtype, grad, condition, reg, **labels):
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
    check_ot(
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
    check_ot(
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


# lcd_attention.

BIAS_KINDS = ("none", "key", "query_key", "batch", "full", "head_key")
LN_KINDS = ("none", "weight", "weight_and_bias")


def probability():
    return st.one_of(st.just(0.0), st.sampled_from([0.1, 0.5, 0.9]), st.floats(0.0, 0.99))


@st.composite
def attention_problems(draw, max_len, max_dim):
    """Parameters of one lcd_attention call (tensors come from a drawn seed, so shrinking works on the parameters)."""
    length = st.one_of(st.integers(1, 6), st.integers(1, max_len))
    return dict(
        batch=draw(st.integers(1, 6)),
        heads=draw(st.integers(1, 8)),
        lq=draw(length),
        lk=draw(length),
        dim=draw(
            st.one_of(st.integers(1, 8), st.sampled_from([32, 128][: 1 + (max_dim >= 128)]), st.integers(1, max_dim))
        ),
        bias=draw(st.sampled_from(BIAS_KINDS)),
        bias_before_scale=draw(st.booleans()),
        residual=draw(st.booleans()),
        ln=draw(st.sampled_from(LN_KINDS)),
        scale=draw(st.one_of(st.none(), st.floats(-2, 1).map(lambda e: 10.0**e))),
        magnitude=10.0 ** draw(st.floats(-1, 0.5)),
        dropkey_p=draw(probability()),
        dropout_p=draw(probability()),
        explicit_masks=draw(st.booleans()),
        head_views=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16])),
        grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def bias_shape(kind, batch, heads, lq, lk):
    return {
        "none": None,
        "key": (lk,),
        "query_key": (lq, lk),
        "batch": (batch, 1, lq, lk),
        "full": (batch, heads, lq, lk),
        "head_key": (1, heads, 1, lk),
    }[kind]


def make_inputs(p):
    """float64 tensors of the problem ``p`` (None where absent) and the explicit masks every run uses."""
    gen = torch.Generator().manual_seed(p["seed"])
    batch, heads, lq, lk, dim = p["batch"], p["heads"], p["lq"], p["lk"], p["dim"]

    def draw(*shape, magnitude=1.0):
        return magnitude * torch.randn(*shape, generator=gen, dtype=torch.float64)

    def heads_of(length, magnitude=1.0):
        """[B, H, L, D]: contiguous, or the heads of a [B, L, H*D] tensor (HeLo's layout, read in place on CPU)."""
        if p["head_views"]:
            return draw(batch, length, heads, dim, magnitude=magnitude).transpose(1, 2)
        return draw(batch, heads, length, dim, magnitude=magnitude)

    shape = bias_shape(p["bias"], batch, heads, lq, lk)
    tensors = dict(
        q=heads_of(lq, p["magnitude"]),
        k=heads_of(lk, p["magnitude"]),
        v=heads_of(lk),
        bias=draw(*shape) if shape is not None else None,
        residual=draw(batch, lq, heads * dim) if p["residual"] else None,
        ln_weight=1 + 0.3 * draw(heads * dim) if p["ln"] != "none" else None,
        ln_bias=draw(heads * dim) if p["ln"] == "weight_and_bias" else None,
    )
    mask_shape = (batch, heads, lq, lk)
    if p["explicit_masks"]:
        dropkey = torch.rand(mask_shape, generator=gen) < p["dropkey_p"]
        dropout = torch.rand(mask_shape, generator=gen) < p["dropout_p"]
    else:  # the masks the generator seeded with p["seed"] draws (the hash every backend shares)
        dropkey, dropout = attention_masks(
            mask_shape, p["dropkey_p"], p["dropout_p"], torch.Generator().manual_seed(p["seed"])
        )
    return tensors, dropkey, dropout


def upstream_weight(shape):
    """The fixed upstream gradient w of every run (the loss is sum(out * w)): standard normal, from seed 1."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


UPSTREAM_SIZE = 1.0  # the scale of upstream_weight's entries


def run(backend, p, tensors, dropkey, dropout, dtype):
    """Output and gradients (of sum(out * w), w fixed) of ``backend`` on ``tensors`` cast to ``dtype``."""
    leaves = {
        n: (t.detach().to(dtype).requires_grad_(p["grad"]) if t is not None else None) for n, t in tensors.items()
    }
    masks = (
        dict(dropkey_mask=dropkey, dropout_mask=dropout)
        if p["explicit_masks"]
        else dict(generator=torch.Generator().manual_seed(p["seed"]))
    )
    out = hf.lcd_attention(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves["bias"],
        residual=leaves["residual"],
        ln_weight=leaves["ln_weight"],
        ln_bias=leaves["ln_bias"],
        scale=p["scale"],
        dropkey_p=p["dropkey_p"],
        dropout_p=p["dropout_p"],
        bias_before_scale=p["bias_before_scale"],
        backend=backend,
        **masks,
    )
    if not p["grad"]:
        return out.detach(), {}
    weight = upstream_weight(out.shape)
    present = [n for n, t in leaves.items() if t is not None]
    grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(), [leaves[n] for n in present])
    return out.detach(), dict(zip(present, grads))


def conditioning(p, tensors, dropkey):
    """(1 + max |logit|) x LayerNorm's amplification (max |x - mean| / std of its input rows, 1 without it)."""
    with torch.no_grad():
        q, k = tensors["q"], tensors["k"]
        scale = p["scale"] if p["scale"] is not None else p["dim"] ** -0.5
        logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
        if tensors["bias"] is not None:
            logits = logits + tensors["bias"] * (scale if p["bias_before_scale"] else 1.0)
        if dropkey is not None:
            logits = logits.masked_fill(dropkey, 0.0)
        cond = 1.0 + float(logits.abs().max())
        if tensors["ln_weight"] is not None:
            pre = lcd_attention_oracle(
                q,
                k,
                tensors["v"],
                tensors["bias"],
                scale=scale,
                bias_before_scale=p["bias_before_scale"],
                dropkey_mask=dropkey,
                dropout_mask=None,
                dropout_p=0.0,
                residual=tensors["residual"],
            )
            centred = pre - pre.mean(-1, keepdim=True)
            std = (centred.pow(2).mean(-1) + 1e-5).sqrt()
            cond *= float((centred.abs().amax(-1) / std).max()) + 1.0
    return cond


def check(backend, p):
    tensors, dropkey, dropout = make_inputs(p)
    dropkey = dropkey if p["dropkey_p"] > 0 or p["explicit_masks"] else None
    dropout = dropout if p["dropout_p"] > 0 or p["explicit_masks"] else None
    scale = p["scale"] if p["scale"] is not None else p["dim"] ** -0.5
    leaves = {n: (t.clone().requires_grad_(p["grad"]) if t is not None else None) for n, t in tensors.items()}
    oracle = lcd_attention_oracle(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves["bias"],
        scale=scale,
        bias_before_scale=p["bias_before_scale"],
        dropkey_mask=dropkey,
        dropout_mask=dropout,
        dropout_p=p["dropout_p"],
        residual=leaves["residual"],
        ln_weight=leaves["ln_weight"],
        ln_bias=leaves["ln_bias"],
    )
    oracle_grads = {}
    if p["grad"]:
        weight = upstream_weight(oracle.shape)
        present = [n for n, t in leaves.items() if t is not None]
        oracle_grads = dict(zip(present, torch.autograd.grad((oracle * weight).sum(), [leaves[n] for n in present])))
    oracle = oracle.detach()
    got, grads = run(backend, p, tensors, dropkey, dropout, p["dtype"])
    assert got.dtype == p["dtype"]
    same = run("reference", p, tensors, dropkey, dropout, p["dtype"]) if p["dtype"] != torch.float64 else (None, {})
    cond = conditioning(p, tensors, dropkey)
    assert_close_to_oracle(got, oracle, same[0], cond)
    # A gradient that vanishes in exact arithmetic (q, k and bias at Lk = 1; everything behind a LayerNorm over one
    # channel) is rounding noise of the size of the call's other gradients or of the upstream gradient: a gradient
    # below 1e-3 of those is measured against that.
    natural = 1e-3 * max([float(g.abs().max()) for g in oracle_grads.values()] + [UPSTREAM_SIZE])
    for name, grad in grads.items():
        assert grad.dtype == p["dtype"], name
        assert_close_to_oracle(grad, oracle_grads[name], same[1].get(name), cond, scale=natural)


@pytest.mark.slow
@sweep_settings(25)
@given(p=attention_problems(max_len=40, max_dim=140))
def test_reference_lcd_attention_matches_oracle_over_the_domain(p):
    check("reference", p)


@pytest.mark.slow
@sweep_settings(60)
@given(p=attention_problems(max_len=40, max_dim=140))
def test_cpp_lcd_attention_matches_oracle_over_the_domain(p):
    skip_unless_backend("cpp", "lcd_attention")
    check("cpp", p)


@pytest.mark.slow
@pytest.mark.triton
@sweep_settings(15)
@given(p=attention_problems(max_len=12, max_dim=40))  # the Triton CPU interpreter takes ~0.1-1 s a call
def test_triton_lcd_attention_matches_oracle_over_the_domain(p):
    skip_unless_backend("triton", "lcd_attention")
    check("triton", p)
