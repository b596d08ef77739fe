"""The sinkhorn op on every backend against the reference: the tests it shares with ipot (ot_solver_suite.py), then
its own (instruction-set variants, stability at small eps, input errors, issue 17's reproductions)."""

import pytest
import torch

import helo_fast as hf
from helo_fast import reference
from cpu_isa import run_under_isa
from devices import backend_params, cpp_devices, requires_cpp
from ot_cases import ot_problem
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
