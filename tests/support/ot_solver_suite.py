"""The tests sinkhorn and ipot share (they are the same kind of op: cost [B, n, m], marginals, a regularisation and an
iteration count in, a plan out). test_sinkhorn.py and test_ipot.py import them by name, so each runs them for its own
``OP``; the ``solver`` fixture gives the module's op. Every fast backend runs them (the ``fast_backend`` fixture:
cpp on the CPU and CUDA, Triton on its device); tests of what only the C++ kernels have (their float64 history of
float32 problems, the scaling form's log-domain fallback, CUDA shared memory) take ``cpp_devices()`` instead.
"""

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import helo_fast as hf
from helo_fast import _ops, reference
from devices import (
    CUDA,
    backend_params,
    cpp_devices,
    seeded_weights,
    skip_on_the_triton_interpreter,
    skip_unless_backend,
)
from ot_cases import (
    PARITY_DTYPES,
    SHAPES,
    assert_both_backward_paths,
    assert_parity,
    ot_problem,
    skip_triton_low_precision_parity,
)
from tolerance import assert_float64_close, assert_no_nan, assert_within_reference_error


@dataclass(frozen=True)
class Solver:
    """One OT solver op: its public function, its reference, the name of its regularisation argument and the
    regularisation / iteration count / seed offset its parity tests use."""

    op: str
    public: Callable
    reference: Callable
    reg_name: str
    parity_reg: float
    parity_iters: int
    seed_offset: int

    def run(self, backend, cost, a, b, reg=None, n_iters=None, grad="unrolled"):
        """The plan of ``backend`` ("reference", "cpp" or "triton") for cost [B, n, m], a [B, n], b [B, m]."""
        kwargs = {
            self.reg_name: self.parity_reg if reg is None else reg,
            "n_iters": self.parity_iters if n_iters is None else n_iters,
            "grad": grad,
        }
        if backend == "reference":
            return self.reference(cost, a, b, **kwargs)
        return self.public(cost, a, b, backend=backend, **kwargs)

    def plan_and_grads(self, backend, inputs64, dtype, weight, reg, n_iters):
        """(plan, d cost, d a, d b) of sum(plan * weight) with the float64 ``inputs64`` cast to ``dtype``."""
        inputs = [t.to(dtype).requires_grad_(True) for t in inputs64]
        plan = self.run(backend, *inputs, reg=reg, n_iters=n_iters)
        return (plan, *torch.autograd.grad((plan * weight.to(dtype)).sum(), inputs))

    def assert_within_reference_error(self, backend, inputs64, dtype, weight, reg, n_iters):
        """Plan and gradients of ``backend`` in ``dtype`` within 2x the reference's own error in ``dtype``."""
        results = self.plan_and_grads(backend, inputs64, dtype, weight, reg, n_iters)
        assert all(t.dtype == dtype for t in results)
        for got, ref64, ref_same in zip(
            results,
            self.plan_and_grads("reference", inputs64, torch.float64, weight, reg, n_iters),
            self.plan_and_grads("reference", inputs64, dtype, weight, reg, n_iters),
        ):
            assert_within_reference_error(got, ref64, ref_same)

    def registered(self, backend):
        """(fwd, bwd) custom ops of ``backend``; the Triton bwd also takes the iteration count."""
        prefix = "" if backend == "cpp" else "triton_"
        return (
            getattr(torch.ops.helo_fast, f"{prefix}{self.op}_fwd"),
            getattr(torch.ops.helo_fast, f"{prefix}{self.op}_bwd"),
        )


SOLVERS = {
    "sinkhorn": Solver("sinkhorn", hf.sinkhorn, reference.sinkhorn, "eps", 0.07, 13, 0),
    "ipot": Solver("ipot", hf.ipot, reference.ipot, "beta", 0.1, 9, 50),
}


def shared_tests_missing(module, collected_functions) -> list[str]:
    """Names of this suite's tests missing from ``collected_functions`` (the functions test ``module`` collected)
    when the module runs the suite (it is test_<op>.py of an op in SOLVERS, or it imports the ``solver``
    fixture), else []. An op module that forgets a test in its import list never runs it: tests/conftest.py makes
    that a collection error."""
    op = getattr(module, "OP", None)
    runs_suite = (op in SOLVERS and module.__name__.rpartition(".")[2] == f"test_{op}") or getattr(
        module, "solver", None
    ) is solver
    if not runs_suite:
        return []
    shared = {
        name: obj
        for name, obj in globals().items()
        if name.startswith("test_") and callable(obj) and getattr(obj, "__module__", None) == __name__
    }
    collected = set(collected_functions)
    return sorted(name for name, obj in shared.items() if obj not in collected)


@pytest.fixture
def solver(request):
    """The Solver of the test module's ``OP``."""
    return SOLVERS[request.module.OP]


def random_problem(seed, batch, n, m, uniform=False, device=torch.device("cpu")):
    """ot_problem's cost and marginals, or the cost with None marginals (uniform) when ``uniform``."""
    cost, a, b = ot_problem(seed, batch, n, m, device=device)
    return (cost, None, None) if uniform else (cost, a, b)


# ----------------------------------------------------------------------------------------------- every fast backend


@pytest.mark.parametrize("dtype,with_grad", PARITY_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}n{n}m{m}" for b, n, m in SHAPES])
def test_forward_and_gradients_match_reference(solver, fast_backend, shape, dtype, with_grad):
    backend, device = fast_backend
    skip_on_the_triton_interpreter(backend, device, big=max(shape) > 9)
    skip_triton_low_precision_parity(backend, dtype, instead="test_float32_within_reference_error")
    assert_parity(
        lambda *x: solver.run(backend, *x),
        lambda *x: solver.run("reference", *x),
        ot_problem(sum(shape) + solver.seed_offset, *shape, device=device),
        dtype,
        with_grad=with_grad,
    )


@pytest.mark.parametrize(
    "batch,n,m,uniform", [(1, 1, 1, False), (2, 1, 3, True), (3, 5, 7, False), (2, 9, 4, False), (1, 6, 6, True)]
)
def test_forward_float64_with_uniform_and_given_marginals_equals_reference(solver, fast_backend, batch, n, m, uniform):
    backend, device = fast_backend
    cost, a, b = random_problem(n * 10 + m, batch, n, m, uniform=uniform, device=device)
    assert_float64_close(
        solver.run(backend, cost, a, b, reg=0.1, n_iters=7), solver.run("reference", cost, a, b, reg=0.1, n_iters=7)
    )


def test_float32_within_reference_error(solver, fast_backend):
    # The rule compares maximum errors, which are stable only over many entries (16 problems), and at
    # reg=0.5: at 0.1, 20 iterations amplify each ulp of exp/log ~400x, and which of two equally
    # accurate float32 runs is ahead then varies with the seed (measured: ratios 0.5-2.7 either way).
    backend, device = fast_backend
    weight = seeded_weights(2, 16, 7, 5, device=device)
    solver.assert_within_reference_error(
        backend, ot_problem(3, 16, 7, 5, device=device), torch.float32, weight, reg=0.5, n_iters=20
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_within_reference_error(solver, fast_backend, dtype):
    # Computed in float32 inside the kernel; plan and gradients returned in the input dtype.
    backend, device = fast_backend
    weight = seeded_weights(4, 4, 5, 6, device=device)
    solver.assert_within_reference_error(
        backend, ot_problem(12, 4, 5, 6, device=device), dtype, weight, reg=0.5, n_iters=5
    )


def test_extreme_regularisation_stays_finite(solver, fast_backend):
    backend, device = fast_backend
    cost, a, b = ot_problem(5, 2, 6, 4, device=device)
    cost = 1e3 * cost
    plan = solver.run(backend, cost, a, b, reg=1e-3, n_iters=10)
    assert_no_nan(plan)
    assert_float64_close(plan, solver.run("reference", cost, a, b, reg=1e-3, n_iters=10))


def test_uniform_marginals_and_non_contiguous_inputs(solver, fast_backend):
    backend, device = fast_backend
    cost, a, b = ot_problem(3, 3, 6, 4, device=device)
    wide = torch.rand(3, 4, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    cost_nc = wide[:, :, ::2].transpose(1, 2)  # [B, 6, 4], non-contiguous
    assert not cost_nc.is_contiguous()
    for c in (cost, cost_nc):
        torch.testing.assert_close(
            solver.run(backend, c, None, None, reg=0.1, n_iters=11),
            solver.run("reference", c, None, None, reg=0.1, n_iters=11),
            rtol=1e-10,
            atol=1e-13,
        )
    a_nc = torch.stack([a, a], dim=-1).reshape(3, 12)[:, ::2]  # the values of a, every other element
    assert not a_nc.is_contiguous()
    torch.testing.assert_close(
        solver.run(backend, cost, a_nc, b, reg=0.1, n_iters=5),
        solver.run("reference", cost, a_nc, b, reg=0.1, n_iters=5),
        rtol=1e-10,
        atol=1e-13,
    )


def test_gradcheck(solver, fast_backend):
    # The registered entry point, not the public op: gradcheck's perturbations would break the equal-mass check that
    # the public op runs on a and b.
    backend, device = fast_backend
    fn = _ops.get(solver.op, backend)
    # Under the Triton CPU interpreter (~0.3 s a call) a smaller problem: 11 inputs to perturb instead of 38.
    shape = (1, 3, 2) if backend == "triton" and device.type == "cpu" else (2, 3, 4)
    cost, a, b = ot_problem(1, *shape, device=device)
    for c, reg in ((cost, 0.3), (cost * 400, 1.0)):  # moderate, then large costs
        leaves = [t.clone().requires_grad_() for t in (c, a, b)]
        assert torch.autograd.gradcheck(
            lambda x, y, z: fn(x, y, z, **{solver.reg_name: reg}, n_iters=4, grad="unrolled"), leaves
        )


def test_opcheck(solver, fast_backend):
    backend, device = fast_backend
    fwd, bwd = solver.registered(backend)
    cost, a, b = ot_problem(2, 2, 4, 3, device=device)
    for save in (True, False):
        torch.library.opcheck(fwd, (cost, a, b, 0.2, 5, save))
    torch.library.opcheck(fwd, (cost.clone().requires_grad_(), a.clone().requires_grad_(), b, 0.2, 5, True))
    plan, *hists = fwd(cost, a, b, 0.2, 5, True)
    n_iters = () if backend == "cpp" else (5,)
    torch.library.opcheck(bwd, (torch.randn_like(plan), cost, a, b, *hists, 0.2, *n_iters))


def test_grad_none_saves_nothing_and_detaches(solver, fast_backend):
    backend, device = fast_backend
    cost, a, b = ot_problem(4, 2, 5, 6, device=device)
    cost.requires_grad_()
    plan = solver.run(backend, cost, a, b, reg=0.1, n_iters=5, grad="none")
    assert not plan.requires_grad
    assert_float64_close(plan, solver.run("reference", cost.detach(), a, b, reg=0.1, n_iters=5, grad="none"))
    _, *hists = solver.registered(backend)[0](cost.detach(), a, b, 0.1, 5, False)
    assert all(h.numel() == 0 for h in hists)


@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager(solver, fast_backend):
    backend, device = fast_backend
    cost, a, b = ot_problem(9, 2, 4, 3, device=device)
    cost.requires_grad_(True)

    def fn(c):
        return (
            solver.public(
                c, a, b, **{solver.reg_name: 0.2}, n_iters=5, grad="unrolled", backend=backend, check_finite=False
            )
            .pow(2)
            .sum()
        )

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected, got = fn(cost), compiled(cost)
    assert_float64_close(got, expected)
    assert_float64_close(torch.autograd.grad(got, cost)[0], torch.autograd.grad(expected, cost)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_helo_size_forward_and_backward_on_cuda(solver, fast_backend, dtype):
    backend, device = fast_backend
    if device != CUDA:
        pytest.skip("the HeLo size (B=128, 36x36) runs on CUDA only (the CPU runs it in the parity tests)")
    weight = seeded_weights(20, 128, 36, 36, device=device)
    # reg 0.5: see test_float32_within_reference_error
    solver.assert_within_reference_error(
        backend, ot_problem(10, 128, 36, 36, device=device), dtype, weight, reg=0.5, n_iters=20
    )


@pytest.mark.parametrize("backend", backend_params())
def test_empty_batch_gives_an_empty_plan_and_gradient(solver, backend):
    skip_unless_backend(backend, solver.op)
    cost = torch.rand(0, 3, 4, requires_grad=True)
    plan = solver.run(backend, cost, None, None, reg=0.1, n_iters=5)
    assert plan.shape == (0, 3, 4) and plan.dtype == torch.float32
    (grad,) = torch.autograd.grad(plan.sum(), cost, allow_unused=True)
    assert grad is None or grad.shape == (0, 3, 4)


# ------------------------------------------------------------------------------------------- the C++ kernels only


@pytest.mark.parametrize("device", cpp_devices(include_cpu=False))
@pytest.mark.parametrize("dtype,with_grad", PARITY_DTYPES)
def test_problem_too_large_for_shared_memory_matches_reference(solver, dtype, with_grad, device):
    # 2(n + m) + 2nm values exceed the CUDA kernel's 48 KB of shared memory: it solves in a global workspace.
    assert_parity(
        lambda *x: solver.run("cpp", *x),
        lambda *x: solver.run("reference", *x),
        ot_problem(17 + (solver.op == "ipot"), 2, 70, 90, device=device),
        dtype,
        with_grad=with_grad,
    )


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_small_regularisation_matches_reference(solver, dtype, device):
    # reg = 2e-3 with costs in [0, 3): K spans ~1500, far past float range for the rows whose costs are all
    # large (test_both_backward_paths forces the log-domain fallback on purpose).
    n_iters = 9 if solver.op == "sinkhorn" else 6
    seed = 7 if solver.op == "sinkhorn" else 8
    assert_parity(
        lambda *x: solver.run("cpp", *x, reg=2e-3, n_iters=n_iters),
        lambda *x: solver.run("reference", *x, reg=2e-3, n_iters=n_iters),
        ot_problem(seed, 2, 6, 5, cost_scale=3.0, device=device),
        dtype,
        grad_floor=1 / 2e-3,
    )


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("row_offset", [0.0, 40.0], ids=["scaling_form", "log_fallback"])
def test_both_backward_paths(solver, row_offset, dtype, device):
    assert_both_backward_paths(
        solver.op,
        lambda c, a, b, r, k: solver.run("cpp", c, a, b, reg=r, n_iters=k),
        lambda c, a, b, r, k: solver.run("reference", c, a, b, reg=r, n_iters=k),
        0.05,
        8,
        row_offset,
        dtype,
        seed=4 if solver.op == "sinkhorn" else 3,
        device=device,
    )
