"""The Triton OT kernels (sinkhorn, ipot, gromov_wasserstein) against the reference, fwd and bwd.

Every test runs on the one device ``triton_devices()`` gives: the CPU under the Triton interpreter
(TRITON_INTERPRET=1, set by the Makefile when there is no GPU; set here when no Triton kernel was
imported yet), so shapes stay tiny, or CUDA with a GPU and the interpreter off. Inputs are drawn on
the CPU from seeded generators (the same numbers on every device) and then moved; the reference runs
on the same device. The full-size HeLo shapes run on CUDA only.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "helo_fast.kernels.triton_utils" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import helo_fast as hf  # noqa: E402
from helo_fast import _ops, reference  # noqa: E402
from devices import CUDA, seeded_weights, triton_module_device  # noqa: E402
from tolerance import assert_float64_close, assert_no_nan, assert_within_reference_error  # noqa: E402

# cpu under the interpreter, else cuda (marked `cuda`, skipped without a GPU)
DEVICE, _MARKS = triton_module_device("sinkhorn")

pytestmark = _MARKS

SOLVERS = {"sinkhorn": (hf.sinkhorn, reference.sinkhorn, "eps"), "ipot": (hf.ipot, reference.ipot, "beta")}


def problem(seed, batch, n, m, dtype=torch.float64, uniform=False, device=DEVICE):
    """(cost [B, n, m], a [B, n], b [B, m]) drawn on the CPU in float64, then cast and moved to ``device``."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64)
    a = torch.rand(batch, n, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(batch, m, generator=gen, dtype=torch.float64) + 0.1
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    cast = [t.to(device=device, dtype=dtype) for t in (cost, a, b)]
    return (cast[0], None, None) if uniform else tuple(cast)


def structure(seed, batch, n, dtype=torch.float64, device=DEVICE):
    """A [B, n, n] cosine-distance matrix drawn on the CPU in float64, then cast and moved to ``device``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 4, generator=gen, dtype=torch.float64)
    d = 1 - torch.nn.functional.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1)
    return d.to(device=device, dtype=dtype)


def weights(seed, *shape, device=DEVICE):
    return seeded_weights(seed, *shape, device=device)


def solve(op, backend, cost, a, b, reg=0.1, n_iters=7, grad="unrolled"):
    fn, ref_fn, reg_name = SOLVERS[op]
    kwargs = {reg_name: reg, "n_iters": n_iters, "grad": grad}
    if backend == "reference":
        return ref_fn(cost, a, b, **kwargs)
    return fn(cost, a, b, backend=backend, **kwargs)


@pytest.mark.parametrize("op", sorted(SOLVERS))
@pytest.mark.parametrize("batch,n,m,uniform", [(1, 1, 1, False), (2, 1, 3, True), (3, 5, 7, False),
                                               (2, 9, 4, False), (1, 6, 6, True)])
def test_forward_float64_equals_reference(op, batch, n, m, uniform):
    cost, a, b = problem(n * 10 + m, batch, n, m, uniform=uniform)
    assert_float64_close(solve(op, "triton", cost, a, b), solve(op, "reference", cost, a, b))


@pytest.mark.parametrize("op", sorted(SOLVERS))
def test_forward_float32_within_reference_error(op):
    # The rule compares maximum errors, which are stable only over many entries (16 problems), and at
    # reg=0.5: at 0.1, 20 iterations amplify each ulp of exp/log ~400x, and which of two equally
    # accurate float32 runs is ahead then varies with the seed (measured: ratios 0.5-2.7 either way).
    cost64, a64, b64 = problem(3, 16, 7, 5)
    cost, a, b = (t.float() for t in (cost64, a64, b64))
    ref64 = solve(op, "reference", cost64, a64, b64, reg=0.5, n_iters=20)
    assert_within_reference_error(solve(op, "triton", cost, a, b, reg=0.5, n_iters=20), ref64,
                                  solve(op, "reference", cost, a, b, reg=0.5, n_iters=20))


@pytest.mark.parametrize("op", sorted(SOLVERS))
def test_extreme_regularisation_stays_finite(op):
    cost, a, b = problem(5, 2, 6, 4)
    cost = 1e3 * cost
    plan = solve(op, "triton", cost, a, b, reg=1e-3, n_iters=10)
    assert_no_nan(plan)
    assert_float64_close(plan, solve(op, "reference", cost, a, b, reg=1e-3, n_iters=10))


@pytest.mark.parametrize("op", sorted(SOLVERS))
@pytest.mark.parametrize("batch,n,m", [(2, 5, 7), (1, 2, 4), (3, 4, 2), (1, 1, 4), (3, 4, 1)])
def test_unrolled_gradient_equals_reference_autograd(op, batch, n, m):
    cost, a, b = problem(batch + n + m, batch, n, m)
    weight = weights(1, batch, n, m)
    grads = {}
    for backend in ("reference", "triton"):
        inputs = [t.clone().requires_grad_(True) for t in (cost, a, b)]
        plan = solve(op, backend, *inputs, n_iters=6)
        grads[backend] = torch.autograd.grad((plan * weight).sum() + plan.pow(2).sum(), inputs)
    # With n == 1 or m == 1 the plan is a b^T whatever the cost: d cost is 0 up to rounding.
    scale = max(float(g.abs().max()) for g in grads["reference"])
    for got, expected in zip(grads["triton"], grads["reference"]):
        assert_float64_close(got, expected) if float(expected.abs().max()) > 1e-12 * scale else \
            assert_float64_close(got, expected, rtol=1e-10 * scale / max(float(expected.abs().max()), 1e-300))


@pytest.mark.parametrize("op", sorted(SOLVERS))
def test_unrolled_gradient_float32_within_reference_error(op):
    cost64, a64, b64 = problem(8, 16, 6, 5)
    weight = weights(2, 16, 6, 5)

    def grads(backend, dtype):
        inputs = [t.to(dtype).requires_grad_(True) for t in (cost64, a64, b64)]
        plan = solve(op, backend, *inputs, reg=0.5, n_iters=10)  # reg: see the forward float32 test
        return torch.autograd.grad((plan * weight.to(dtype)).sum(), inputs)

    for got, ref64, ref32 in zip(grads("triton", torch.float32), grads("reference", torch.float64),
                                 grads("reference", torch.float32)):
        assert_within_reference_error(got, ref64, ref32)


@pytest.mark.parametrize("op", sorted(SOLVERS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_within_reference_error(op, dtype):
    # Computed in float32 inside the kernel; plan and gradients returned in the input dtype.
    cost64, a64, b64 = problem(12, 4, 5, 6)
    weight = weights(4, 4, 5, 6)

    def run(backend, dt):
        inputs = [t.to(dt).requires_grad_(True) for t in (cost64, a64, b64)]
        plan = solve(op, backend, *inputs, reg=0.5, n_iters=5)
        return (plan, *torch.autograd.grad((plan * weight.to(dt)).sum(), inputs))

    results = run("triton", dtype)
    assert all(t.dtype == dtype for t in results)
    for got, ref64, ref_same in zip(results, run("reference", torch.float64), run("reference", dtype)):
        assert_within_reference_error(got, ref64, ref_same)


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(SOLVERS))
def test_gradcheck_float64(op):
    # The registered entry point, not functional: gradcheck's perturbations would break the
    # equal-mass check that functional runs on a and b.
    fn = _ops.get(op, "triton")
    reg_name = SOLVERS[op][2]
    cost, a, b = problem(4, 2, 3, 2)
    inputs = [t.clone().requires_grad_(True) for t in (cost, a, b)]
    assert torch.autograd.gradcheck(lambda c, x, y: fn(c, x, y, **{reg_name: 0.5}, n_iters=3, grad="unrolled"),
                                    inputs)


@pytest.mark.parametrize("op", sorted(SOLVERS))
def test_grad_none_returns_detached_plan(op):
    cost, a, b = problem(6, 2, 3, 4)
    cost.requires_grad_(True)
    plan = solve(op, "triton", cost, a, b, grad="none")
    assert not plan.requires_grad
    assert_float64_close(plan, solve(op, "reference", cost.detach(), a, b, grad="none"))


@pytest.mark.parametrize("solver", ["ipot", "sinkhorn"])
@pytest.mark.parametrize("batch,n,m,uniform", [(2, 6, 6, True), (1, 7, 5, False), (3, 1, 2, False)])
def test_gromov_forward_float64_equals_reference(solver, batch, n, m, uniform):
    cs, ct = structure(n, batch, n), structure(m + 100, batch, m)
    _, a, b = problem(n + m, batch, n, m, uniform=uniform)
    kwargs = dict(eps=0.1, outer_iters=3, inner_iters=10, solver=solver)
    assert_float64_close(hf.gromov_wasserstein(cs, ct, a, b, backend="triton", **kwargs),
                         reference.gromov_wasserstein(cs, ct, a, b, **kwargs))


@pytest.mark.slow
def test_gromov_float32_forward_and_gradient_within_reference_error():
    # At HeLo's eps=0.1 and 5 outer iterations float32 GW is chaotic: each outer iteration amplifies
    # rounding ~10x, and a 1-ulp change of the inputs moves the float32 reference by ~2e-4 relative,
    # as much as the gap between any two float32 implementations; which one is ahead then depends on
    # the seed (measured ratios 0.1-4 either way, gradients included). eps=0.5 with two outer
    # iterations keeps the comparison meaningful (ratios 0.4-1.5 over 4 seeds).
    cs64, ct64 = structure(1, 16, 12), structure(2, 16, 12)
    weight = weights(7, 16, 12, 12)
    kwargs = dict(eps=0.5, outer_iters=2, inner_iters=20, grad="unrolled")

    def run(backend, dtype):
        inputs = [cs64.to(dtype).requires_grad_(True), ct64.to(dtype).requires_grad_(True)]
        plan = hf.gromov_wasserstein(*inputs, backend=backend, **kwargs)
        return (plan, *torch.autograd.grad((plan * weight.to(dtype)).sum(), inputs))

    for got, ref64, ref32 in zip(run("triton", torch.float32), run("reference", torch.float64),
                                 run("reference", torch.float32)):
        assert_within_reference_error(got, ref64, ref32)


@pytest.mark.parametrize("solver", ["ipot", "sinkhorn"])
@pytest.mark.parametrize("eps,outer_iters,inner_iters", [(0.2, 3, 4), (0.1, 5, 20)])  # the latter: HeLo's
def test_gromov_unrolled_gradient_equals_reference(solver, eps, outer_iters, inner_iters):
    cs, ct = structure(3, 2, 5), structure(4, 2, 4)
    weight = weights(3, 2, 5, 4)
    _, a, b = problem(16, 2, 5, 4)
    kwargs = dict(eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver, grad="unrolled")
    grads = {}
    for backend in ("reference", "triton"):
        inputs = [t.clone().requires_grad_(True) for t in (cs, ct, a, b)]
        plan = hf.gromov_wasserstein(*inputs, backend=backend, **kwargs)
        grads[backend] = torch.autograd.grad((plan * weight).sum(), inputs)
    for got, expected in zip(grads["triton"], grads["reference"]):
        assert_float64_close(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["ipot", "sinkhorn"])
def test_gromov_gradcheck_float64(solver):
    fn = _ops.get("gromov_wasserstein", "triton")  # not functional: gradcheck perturbs a and b
    cs, ct = structure(13, 1, 3), structure(14, 1, 2)
    _, a, b = problem(15, 1, 3, 2)
    inputs = [t.clone().requires_grad_(True) for t in (cs, ct, a, b)]
    assert torch.autograd.gradcheck(
        lambda *x: fn(*x, eps=0.5, outer_iters=2, inner_iters=3, solver=solver, grad="unrolled"), inputs)


def test_gromov_grad_none_is_detached():
    cs = structure(5, 1, 4).requires_grad_(True)
    assert not hf.gromov_wasserstein(cs, structure(6, 1, 4), backend="triton", inner_iters=3).requires_grad


@pytest.mark.slow
def test_opcheck_custom_ops():
    cost, a, b = problem(7, 2, 3, 4)
    cost.requires_grad_(True)
    ops = torch.ops.helo_fast
    for fwd, bwd, reg in ((ops.triton_sinkhorn_fwd, ops.triton_sinkhorn_bwd, 0.3),
                          (ops.triton_ipot_fwd, ops.triton_ipot_bwd, 0.3)):
        torch.library.opcheck(fwd, (cost, a, b, reg, 3, True))
        torch.library.opcheck(fwd, (cost.detach(), a, b, reg, 3, False))
        plan, *hists = fwd(cost.detach(), a, b, reg, 3, True)
        torch.library.opcheck(bwd, (torch.randn_like(plan), cost.detach(), a, b, *hists, reg, 3))
    cs, ct = structure(8, 2, 3), structure(9, 2, 4)
    for solver in ("ipot", "sinkhorn"):
        torch.library.opcheck(ops.triton_gromov_wasserstein_fwd, (cs.requires_grad_(True), ct, a, b, 0.3, 2, 3, solver,
                                                                  True))
        plan, *hists = ops.triton_gromov_wasserstein_fwd(cs.detach(), ct, a, b, 0.3, 2, 3, solver, True)
        torch.library.opcheck(ops.triton_gromov_wasserstein_bwd, (torch.randn_like(plan), cs.detach(), ct, a, b,
                                                                  *hists, 0.3, 2, 3, solver))


@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_fullgraph_traces_the_triton_op():
    cost, a, b = problem(9, 2, 4, 3)
    cost.requires_grad_(True)

    def fn(c):
        return hf.sinkhorn(c, a, b, eps=0.2, n_iters=5, backend="triton", check_finite=False).pow(2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected = fn(cost)
    got = compiled(cost)
    assert_float64_close(got, expected)
    assert_float64_close(torch.autograd.grad(got, cost)[0], torch.autograd.grad(expected, cost)[0])


# ----------------------------------------------------------------------------- CUDA, full size

# On CUDA whatever the module's device (also when the interpreter was forced on a GPU machine).
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("op", sorted(SOLVERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_helo_size_forward_and_backward(op, dtype):
    cost64, a64, b64 = problem(10, 128, 36, 36, device=CUDA)
    weight = weights(20, 128, 36, 36, device=CUDA)

    def run(backend, dt):
        inputs = [t.to(dt).requires_grad_(True) for t in (cost64, a64, b64)]
        plan = solve(op, backend, *inputs, reg=0.5, n_iters=20)  # reg: see the forward float32 test
        return (plan, *torch.autograd.grad((plan * weight.to(dt)).sum(), inputs))

    for got, ref64, ref_same in zip(run("triton", dtype), run("reference", torch.float64), run("reference", dtype)):
        assert_within_reference_error(got, ref64, ref_same)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("solver", ["ipot", "sinkhorn"])
def test_cuda_gromov_helo_size(solver):
    cs64, ct64 = structure(11, 128, 36, device=CUDA), structure(12, 128, 36, device=CUDA)
    kwargs = dict(eps=0.1, inner_iters=20, solver=solver)
    # float32 at eps=0.5, two outer iterations (see test_gromov_float32_forward_and_gradient_within_...).
    f32 = dict(kwargs, eps=0.5, outer_iters=2)
    ref64 = reference.gromov_wasserstein(cs64, ct64, **f32)
    ref32 = reference.gromov_wasserstein(cs64.float(), ct64.float(), **f32)
    got = hf.gromov_wasserstein(cs64.float(), ct64.float(), backend="triton", **f32)
    assert_within_reference_error(got, ref64, ref32)
    weight = weights(21, 128, 36, 36, device=CUDA)
    results = []
    for backend in ("triton", "reference"):
        inputs = [cs64.clone().requires_grad_(True), ct64.clone().requires_grad_(True)]
        plan = hf.gromov_wasserstein(*inputs, backend=backend, outer_iters=5, grad="unrolled", **kwargs)
        results.append((plan, *torch.autograd.grad((plan * weight).sum(), inputs)))
    for got, expected in zip(*results):
        assert_float64_close(got, expected)
