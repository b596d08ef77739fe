"""The sinkhorn op on every backend against the reference: the tests it shares with ipot (ot_solver_suite.py), then
its own (instruction-set variants, stability at small eps, input errors, issue 17's reproductions), then
grad="implicit" (issue 30): the gradient of the converged plan by the implicit function theorem, against float64
central differences of the converged plan and against the unrolled gradient at many iterations (the same gauge for
a, b), on both Schur sides (n < m, n > m), with zero-mass entries (0, never NaN), float32, the not-converged warning,
and gradcheck on the cost."""

import warnings

import pytest
import torch

import helo_fast as hf
from helo_fast import reference
from cpu_isa import run_under_isa
from devices import CPU, backend_params, cpp_devices, cpu_backends, requires_cpp
from ot_cases import draw_ot_problem, ot_problem, to_device
from tolerance import assert_no_nan

# The tests sinkhorn shares with ipot (every fast backend; see ot_solver_suite.py), collected here for OP.
from ot_solver_suite import (  # noqa: F401
    solver,
    test_both_backward_paths,
    test_empty_batch_gives_an_empty_plan_and_gradient,
    test_extreme_regularisation_stays_finite,
    test_float32_within_reference_error,
    test_forward_and_gradients_match_reference,
    test_forward_float64_with_uniform_and_given_marginals_equals_reference,
    test_grad_none_saves_nothing_and_detaches,
    test_gradcheck,
    test_half_precision_inputs_within_reference_error,
    test_helo_size_forward_and_backward_on_cuda,
    test_opcheck,
    test_problem_too_large_for_shared_memory_matches_reference,
    test_small_regularisation_matches_reference,
    test_torch_compile_fullgraph_matches_eager,
    test_uniform_marginals_and_non_contiguous_inputs,
)

OP = "sinkhorn"


def cpp(cost, a, b, eps=0.07, n_iters=13):
    return hf.sinkhorn(cost, a, b, eps=eps, n_iters=n_iters, grad="unrolled", backend="cpp")


def ref(cost, a, b, eps=0.07, n_iters=13):
    return reference.sinkhorn(cost, a, b, eps=eps, n_iters=n_iters, grad="unrolled")


@requires_cpp
@pytest.mark.slow
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_every_cpu_instruction_set_variant_matches_reference(isa):
    # The kernels are compiled per instruction set and picked at run time; this machine would only run the
    # widest, so a subprocess caps the choice with HELO_FAST_CPU_ISA.
    script = (
        "import torch\n"
        "from ot_cases import assert_parity, ot_problem\n"
        "from ot_solver_suite import SOLVERS\n"
        "solver = SOLVERS['sinkhorn']\n"
        "cpp, ref = (lambda *x: solver.run('cpp', *x)), (lambda *x: solver.run('reference', *x))\n"
        "for shape in ((2, 8, 3), (2, 36, 36), (1, 64, 64)):\n"
        "    for dtype in (torch.float64, torch.float32):\n"
        "        assert_parity(cpp, ref, ot_problem(sum(shape), *shape), dtype)\n"
    )
    run_under_isa(isa, script)


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("eps", [1e-3, 1e-2])
def test_stable_at_small_eps_and_large_costs(eps, device):
    cost, a, b = ot_problem(5, 2, 9, 7, cost_scale=1e3, device=device)
    leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
    plan = hf.sinkhorn(*leaves, eps=eps, n_iters=30, backend="cpp")
    grads = torch.autograd.grad((plan * torch.randn_like(plan)).sum(), leaves)
    assert_no_nan(plan, *grads)
    torch.testing.assert_close(plan.sum(2), a, rtol=1e-9, atol=1e-12)  # the row update comes last
    assert float((plan.detach().sum(1) - b).abs().max()) < 1.0  # columns: finite and a valid transport mass
    torch.testing.assert_close(plan, reference.sinkhorn(cost, a, b, eps=eps, n_iters=30), rtol=1e-8, atol=1e-12)


@requires_cpp
def test_bad_inputs_raise_before_the_kernel():
    cost, a, b = ot_problem(0, 2, 3, 4)
    with pytest.raises(ValueError, match=r"a must have shape \[B, n\]"):
        hf.sinkhorn(cost, b, b, eps=0.1, n_iters=3, backend="cpp")
    with pytest.raises(ValueError, match="eps must be a finite float > 0"):
        hf.sinkhorn(cost, a, b, eps=0.0, n_iters=3, backend="cpp")
    with pytest.raises(ValueError, match="n_iters must be an int >= 1"):
        hf.sinkhorn(cost, a, b, eps=0.1, n_iters=0, backend="cpp")
    with pytest.raises(TypeError, match="a must have the dtype of cost"):
        hf.sinkhorn(cost, a.float(), b, eps=0.1, n_iters=3, backend="cpp")
    with pytest.raises(ValueError, match="cost contains NaN or inf"):
        hf.sinkhorn(cost.clone().fill_(float("nan")), a, b, eps=0.1, n_iters=3, backend="cpp")
    # Direct callers of the op get the C++ checks.
    with pytest.raises(RuntimeError, match=r"b must be \[B, m\]"):
        torch.ops.helo_fast.sinkhorn_fwd(cost, a, a, 0.1, 3, False)
    plan, f_hist, g_hist = torch.ops.helo_fast.sinkhorn_fwd(cost, a, b, 0.1, 3, False)
    with pytest.raises(RuntimeError, match="save_history=True"):
        torch.ops.helo_fast.sinkhorn_bwd(plan, cost, a, b, f_hist, g_hist, 0.1)


# ---- issue 17: wrong plans where kernel entries underflow, NaN gradients, zero-mass marginals, empty batches ----
@requires_cpp
def test_plan_needing_an_underflowed_kernel_entry():
    """exp(-0.75 / 1e-3) is 0 in float64, yet the plan puts 0.5 there (issue 17's reproduction): the scaling form
    must notice and fall back to the log domain."""
    cost = torch.tensor([[[0, 0.4], [0.4, 0.75]]], dtype=torch.float64)
    plan = hf.sinkhorn(cost, eps=1e-3, n_iters=100, backend="cpp")
    expected = reference.sinkhorn(cost, eps=1e-3, n_iters=100)
    torch.testing.assert_close(plan, expected, rtol=1e-10, atol=1e-14)
    assert float(plan[0, 1, 1]) > 0.49


@requires_cpp
def test_gradient_finite_where_the_reference_is_at_eps_1e_3():
    """The scaling-form backward multiplied u v (overflowing to inf) by a kernel entry of 0: NaN."""
    cost = torch.tensor([[[1, 0.3794], [0.4668, 0]]], dtype=torch.float64)
    a = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    b = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    weight = torch.tensor([[[0.3, -1.2], [0.7, 2.0]]], dtype=torch.float64)
    for n_iters in (1, 2, 17):
        grads = [
            torch.autograd.grad((fn(c, x, y, eps=8.79e-4, n_iters=n_iters) * weight).sum(), (c, x, y))
            for fn in (cpp, ref)
            for c, x, y in [[t.clone().requires_grad_() for t in (cost, a, b)]]
        ]
        assert_no_nan(*grads[0])
        scale = float(weight.abs().max()) / 8.79e-4  # the size of a cost gradient: |weight| |plan| / eps
        for g, r in zip(*grads):
            assert float((g - r).abs().max()) <= 1e-10 * scale


@pytest.mark.parametrize("backend", backend_params("sinkhorn"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_mass_entries_give_zero_rows_and_columns(backend, dtype):
    cost, a, b = ot_problem(11, 2, 5, 4)
    a[0, 1], b[1, 2] = 0.0, 0.0
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    leaves = [t.to(dtype).requires_grad_() for t in (cost, a, b)]
    plan = hf.sinkhorn(*leaves, eps=0.05, n_iters=20, backend=backend)
    grads = torch.autograd.grad((plan * torch.linspace(-1, 1, 40, dtype=dtype).reshape(2, 5, 4)).sum(), leaves)
    assert_no_nan(plan, *grads)
    assert float(plan[0, 1].abs().max()) == 0 and float(plan[1, :, 2].abs().max()) == 0
    assert float(grads[1][0, 1]) == 0  # a zero-mass entry gets no gradient (its cost row still shapes the first g)
    expected = reference.sinkhorn(cost, a, b, eps=0.05, n_iters=20)
    assert float((plan.double() - expected).abs().max()) <= (1e-12 if dtype == torch.float64 else 1e-5)


# grad="implicit" (issue 30), on the reference and cpp on CPU.

BACKENDS = cpu_backends(include_triton=False)
F64 = torch.float64


def problem(n, m, batch=2, seed=0, zeros=False, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    zero_entries = {"a_zeros": [(0, 1)], "b_zeros": [(1, 0)]} if zeros else {}
    cost, a, b = draw_ot_problem(gen, batch, n, m, floor=0.2, **zero_entries)
    weight = torch.randn(batch, n, m, generator=gen, dtype=F64)
    return to_device((cost, a, b, weight), dtype, CPU)


def gradients(cost, a, b, weight, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
    plan = hf.sinkhorn(*leaves, **kwargs)
    (plan * weight).sum().backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m", [(4, 6), (6, 4), (5, 5)])
@pytest.mark.parametrize("zeros", [False, True])
def test_implicit_gradient_equals_the_unrolled_one_at_many_iterations(backend, n, m, zeros):
    cost, a, b, weight = problem(n, m, zeros=zeros)
    implicit = gradients(cost, a, b, weight, eps=0.05, n_iters=20000, tol=1e-14, grad="implicit", backend=backend)
    unrolled = gradients(cost, a, b, weight, eps=0.05, n_iters=3000, grad="unrolled", backend="reference")
    for got, want in zip(implicit, unrolled):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    if zeros:  # a zero-mass entry gets no gradient (OTT's implicit gradient is NaN there)
        assert implicit[1][0, 1] == 0 and implicit[2][1, 0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_implicit_gradient_matches_central_differences_of_the_converged_plan(backend):
    cost, a, b, weight = problem(3, 4, batch=1, seed=5)
    run = dict(eps=0.1, n_iters=50000, tol=1e-15, backend=backend)
    grad_cost, grad_a, grad_b = gradients(cost, a, b, weight, grad="implicit", **run)

    def loss(c, a_, b_):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hf.OTConvergenceWarning)
            return float((hf.sinkhorn(c, a_, b_, grad="none", **run) * weight).sum())

    h = 1e-5
    for i, j in ((0, 0), (1, 3), (2, 1)):
        e = torch.zeros_like(cost)
        e[0, i, j] = h
        numeric = (loss(cost + e, a, b) - loss(cost - e, a, b)) / (2 * h)
        assert abs(numeric - float(grad_cost[0, i, j])) <= 1e-7 * (1 + abs(numeric))
    # Equal-mass directions of (a, b) (the feasible ones): a_i and b_j up together, and a_i up with a_k down.
    for da, db in (((0, h), (2, h)), ((2, h), (0, h))):
        ea, eb = torch.zeros_like(a), torch.zeros_like(b)
        ea[0, da[0]], eb[0, db[0]] = da[1], db[1]
        numeric = (loss(cost, a + ea, b + eb) - loss(cost, a - ea, b - eb)) / (2 * h)
        assert abs(numeric - float(grad_a[0, da[0]] + grad_b[0, db[0]])) <= 1e-7 * (1 + abs(numeric))
    ea = torch.zeros_like(a)
    ea[0, 0], ea[0, 1] = h, -h
    numeric = (loss(cost, a + ea, b) - loss(cost, a - ea, b)) / (2 * h)
    assert abs(numeric - float(grad_a[0, 0] - grad_a[0, 1])) <= 1e-7 * (1 + abs(numeric))


def test_implicit_gradcheck_on_the_cost():
    cost, a, b, _ = problem(3, 4, batch=1, seed=7)
    torch.autograd.gradcheck(
        lambda c: hf.sinkhorn(c, a, b, eps=0.2, n_iters=100000, tol=1e-15, grad="implicit", backend="reference"),
        (cost.clone().requires_grad_(),),
        atol=1e-6,
        rtol=1e-5,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_implicit_float32_is_close_to_float64(backend):
    cost, a, b, weight = problem(5, 7, batch=3, seed=2)
    want = gradients(cost, a, b, weight, eps=0.1, n_iters=5000, tol=1e-13, grad="implicit", backend=backend)
    got = gradients(
        *(t.float() for t in (cost, a, b, weight)), eps=0.1, n_iters=5000, tol=1e-6, grad="implicit", backend=backend
    )
    for g32, g64 in zip(got, want):
        assert g32.dtype == torch.float32
        torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_implicit_warns_when_the_forward_did_not_converge(backend):
    cost, a, b, weight = problem(4, 4)
    with pytest.warns(hf.OTConvergenceWarning, match="grad='implicit' assumes converged plans"):
        gradients(cost, a, b, weight, eps=0.01, n_iters=10, tol=1e-12, grad="implicit", backend=backend)
    with pytest.raises(hf.OTConvergenceError):
        gradients(cost, a, b, weight, eps=0.01, n_iters=10, tol=1e-12, grad="implicit", strict=True, backend=backend)


def test_implicit_keeps_no_iterations_and_refuses_a_second_derivative():
    cost, a, b, weight = problem(4, 4)
    c = cost.clone().requires_grad_()
    plan = hf.sinkhorn(c, a, b, eps=0.1, n_iters=1000, tol=1e-10, grad="implicit", backend="reference")
    saved = [t for t in plan.grad_fn.saved_tensors]  # only the plan [B, n, m]
    assert len(saved) == 1 and saved[0].shape == cost.shape
    (g,) = torch.autograd.grad((plan * weight).sum(), c, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
