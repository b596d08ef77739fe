"""Shared inputs and checks of the OT op tests (test_sinkhorn and test_ipot through ot_solver_suite,
test_gromov_wasserstein (gw_problem, gw_runner), the convergence / implicit-gradient / OT-value tests)."""

import warnings

import pytest
import torch

import helo_fast as hf
from devices import CPU
from tolerance import assert_float64_close, assert_within_reference_error

# (B, n, m): n != m both ways, n = 1, m = 1, odd sizes, batch 1, the HeLo size.
SHAPES = [(3, 5, 7), (2, 8, 3), (2, 1, 4), (1, 6, 1), (1, 9, 9), (2, 36, 36)]

# (dtype, with_grad) of the parity tests: float32 without a gradient saves no history and computes in float32
# (with one, float32 problems are solved in float64 for their float64 backward).
PARITY_DTYPES = [
    pytest.param(torch.float64, True, id="f64"),
    pytest.param(torch.float32, True, id="f32"),
    pytest.param(torch.float32, False, id="f32_nograd"),
]

# Gradients whose reference magnitude is below this are measured against it instead (absolute error
# <= 1e-10 x ZERO_GRAD in float64): they vanish in exact arithmetic (a single row or column).
ZERO_GRAD = 1e-2


def skip_triton_low_precision_parity(backend, dtype, instead):
    """Skip a float32 parity case of the Triton backend, naming the test that checks its float32 results instead."""
    if backend == "triton" and dtype != torch.float64:
        pytest.skip(
            "Triton solves float32 problems in float32 (the C++ op in float64 when it keeps a history): at "
            f"this regularisation the 2x rule is chance; {instead} checks float32 where it is not"
        )


def marginal(gen, batch, size, floor=0.1, zeros=(), mass=1.0):
    """A float64 marginal [B, size]: U[floor, 1 + floor) entries, those at the ``zeros`` indices (b, i) set to 0,
    normalised to total ``mass``."""
    w = torch.rand(batch, size, generator=gen, dtype=torch.float64) + floor
    for index in zeros:
        w[index] = 0.0
    return w / w.sum(-1, keepdim=True) * mass


def draw_ot_problem(gen, batch, n, m, cost_scale=1.0, floor=0.1, a_zeros=(), b_zeros=(), mass=1.0):
    """float64 cost [B, n, m] in [0, cost_scale) (a float or a [B, 1, 1] tensor: one scale per problem) and
    marginals a [B, n], b [B, m] (see ``marginal``), drawn from ``gen`` in that order."""
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * cost_scale
    return (cost, marginal(gen, batch, n, floor, a_zeros, mass), marginal(gen, batch, m, floor, b_zeros, mass))


def ot_problem(seed, batch, n, m, dtype=torch.float64, cost_scale=1.0, device=CPU, **marginals):
    """Random cost [B, n, m] in [0, cost_scale) and non-uniform marginals a [B, n], b [B, m] (``marginals``: floor,
    a_zeros, b_zeros, mass of ``draw_ot_problem``), on ``device`` (drawn on the CPU: the same numbers on every
    device)."""
    gen = torch.Generator().manual_seed(seed)
    return to_device(draw_ot_problem(gen, batch, n, m, cost_scale, **marginals), dtype, device)


def gw_problem(seed, batch, n, m, dtype=torch.float64, device=CPU):
    """Cosine-distance structure matrices cs [B, n, n], ct [B, m, m] (as in HeLo) and non-uniform marginals,
    drawn on the CPU and moved to ``device``."""
    gen = torch.Generator().manual_seed(seed)

    def structure(size):
        x = torch.randn(batch, size, 6, generator=gen, dtype=torch.float64)
        return 1 - torch.nn.functional.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1)

    return to_device((structure(n), structure(m), marginal(gen, batch, n), marginal(gen, batch, m)), dtype, device)


def gw_runner(fn, solver, eps=0.1, outer=3, inner=6, **kw):
    """fn (hf.gromov_wasserstein or the reference) as a function of (cs, ct, a, b) with these settings, the inner
    ``solver`` and the unrolled gradient."""
    return lambda cs, ct, a, b: fn(
        cs, ct, a, b, eps=eps, outer_iters=outer, inner_iters=inner, solver=solver, grad="unrolled", **kw
    )


def quiet(fn, *args, **kwargs):
    """fn(*args, **kwargs) with helo_fast's OTConvergenceWarning silenced (tests of what a capped solve returns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hf.OTConvergenceWarning)
        return fn(*args, **kwargs)


def to_device(tensors, dtype, device):
    """The CPU-drawn ``tensors`` in ``dtype`` on ``device``."""
    return tuple(t.to(device=device, dtype=dtype) for t in tensors)


def value_and_grads(fn, inputs, weight, with_grad=True):
    """fn(*inputs) and the gradients of sum(fn(*inputs) * weight) w.r.t. every input (none without with_grad)."""
    leaves = [t.detach().clone().requires_grad_(with_grad) for t in inputs]
    out = fn(*leaves)
    if not with_grad:
        return out.detach(), ()
    grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(), leaves)
    return out.detach(), grads


def assert_parity(fn, ref_fn, inputs64, dtype, seed=0, grad_floor=0.0, with_grad=True):
    """Forward and gradients of fn vs ref_fn: float64 to 1e-10, lower precision within 2x the reference's error.
    Both run on the device of ``inputs64``. with_grad=False: forward only, on inputs that need no gradient
    (the ops then save no history and compute in the input dtype).

    grad_floor: the scale below which a gradient counts as zero (errors are measured relative to
    max(|reference|, grad_floor)); for a near-saturated plan the cost gradient is a cancellation of
    terms of size 1/eps and is pure rounding noise at that scale.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    probe = fn(*inputs64).detach()
    weight = torch.randn(probe.shape, generator=gen, dtype=torch.float64).to(probe.device)
    ref64, ref_grads64 = value_and_grads(ref_fn, inputs64, weight, with_grad)
    low = [t.to(dtype) for t in inputs64]
    out, grads = value_and_grads(fn, low, weight, with_grad)
    if dtype == torch.float64:
        assert_float64_close(out, ref64)
        for g, r in zip(grads, ref_grads64):
            floor = max(grad_floor, ZERO_GRAD)
            if float(r.abs().max()) < floor:  # zero in exact arithmetic (n = 1 or m = 1), or saturated
                assert float((g - r).abs().max()) <= 1e-10 * floor
            else:
                assert_float64_close(g, r)
        return
    ref_low, ref_grads_low = value_and_grads(ref_fn, low, weight, with_grad)
    assert out.dtype == dtype
    assert_within_reference_error(out, ref64, ref_low)
    for g, r64, rlow in zip(grads, ref_grads64, ref_grads_low):
        floor = max(grad_floor, ZERO_GRAD)
        if float(r64.abs().max()) < floor:
            own, ref_err = float((g.double() - r64).abs().max()), float((rlow.double() - r64).abs().max())
            assert own <= max(2 * ref_err, 8 * torch.finfo(dtype).eps * floor)
        else:
            assert_within_reference_error(g, r64, rlow)


def assert_both_backward_paths(op, cpp_fn, ref_fn, reg, n_iters, row_offset, dtype, seed, device=CPU):
    """Parity (and float64 gradcheck) of the C++ op ``op`` ("sinkhorn" or "ipot") on a [2, 5, 4] problem whose
    cost rows are shifted by up to ``row_offset``. The plan does not depend on per-row offsets, but an offset of
    40 / reg = 800 makes a whole row of the scaled kernel exp(K - max K) underflow (e^-800): the scaling form
    must give up and forward and backward run in the log domain; offset 0 keeps the scaling form."""
    cost, a, b = ot_problem(seed, 2, 5, 4, device=device)
    cost = cost + row_offset * torch.linspace(0, 1, 5, dtype=torch.float64, device=device)[None, :, None]
    assert_parity(lambda *x: cpp_fn(*x, reg, n_iters), lambda *x: ref_fn(*x, reg, n_iters), (cost, a, b), dtype)
    if dtype == torch.float64:
        fwd = getattr(torch.ops.helo_fast, f"{op}_fwd")
        leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
        assert torch.autograd.gradcheck(lambda x, y, z: fwd(x, y, z, reg, n_iters, True)[0], leaves)
