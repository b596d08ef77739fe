"""The ipot op on every backend against the reference: the tests it shares with sinkhorn (ot_solver_suite.py), then
its own (stability where the release's plain IPOT fails, input errors, issue 17's reproductions)."""

import pytest
import torch

import helo_fast as hf
from helo_fast import reference
from devices import backend_params, cpp_devices, requires_cpp
from ot_cases import ot_problem
from ot_oracle import ipot_transcription
from tolerance import assert_no_nan, assert_within_reference_error

# The tests ipot shares with sinkhorn (every fast backend; see ot_solver_suite.py), collected here for OP.
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

OP = "ipot"


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("beta", [1e-3, 1e-2])
def test_stable_at_small_beta_where_the_plain_release_ipot_fails(beta, device):
    cost, a, b = ot_problem(5, 2, 9, 7, cost_scale=1e3, device=device)
    uniform = (cost.new_full((2, 9), 1 / 9), cost.new_full((2, 7), 1 / 7))
    # The release's plain-domain IPOT: exp(-C/beta) underflows to 0 and the plan becomes NaN.
    plain = ipot_transcription(cost[0].cpu(), beta, 20)
    assert not bool(torch.isfinite(plain).all())
    leaves = [t.clone().requires_grad_() for t in (cost, *uniform)]
    plan = hf.ipot(*leaves, beta=beta, n_iters=20, grad="unrolled", backend="cpp")
    grads = torch.autograd.grad((plan * torch.randn_like(plan)).sum(), leaves)
    assert_no_nan(plan, *grads)
    torch.testing.assert_close(plan.detach().sum(1), uniform[1], rtol=1e-9, atol=1e-12)  # columns are updated last
    torch.testing.assert_close(
        plan.detach(), reference.ipot(cost, *uniform, beta=beta, n_iters=20), rtol=1e-8, atol=1e-12
    )
    # float32: finite, and the column marginals as good as the reference's own float32 run (log terms of
    # size |C|/beta = 1e6 carry float32 rounding of ~0.06 into the exponent).
    plan32, ref32 = (
        hf.ipot(cost.float(), beta=beta, n_iters=20, backend="cpp"),
        reference.ipot(cost.float(), beta=beta, n_iters=20),
    )
    assert_no_nan(plan32)
    err, ref_err = [float((p.double().sum(1) - uniform[1]).abs().max()) for p in (plan32, ref32)]
    assert err <= max(2 * ref_err, 1e-5)


@requires_cpp
def test_bad_inputs_raise_before_the_kernel():
    cost, a, b = ot_problem(0, 2, 3, 4)
    with pytest.raises(ValueError, match=r"b must have shape \[B, m\]"):
        hf.ipot(cost, a, a, beta=0.1, n_iters=3, backend="cpp")
    with pytest.raises(ValueError, match="beta must be a finite float > 0"):
        hf.ipot(cost, a, b, beta=-1.0, n_iters=3, backend="cpp")
    with pytest.raises(ValueError, match="grad must be one of"):
        hf.ipot(cost, a, b, beta=0.1, n_iters=3, grad="implicit!", backend="cpp")
    with pytest.raises(RuntimeError, match="regularisation"):
        torch.ops.helo_fast.ipot_fwd(cost, a, b, 0.0, 3, False)
    plan, d_hist, s_hist = torch.ops.helo_fast.ipot_fwd(cost, a, b, 0.1, 3, False)
    with pytest.raises(RuntimeError, match="save_history=True"):
        torch.ops.helo_fast.ipot_bwd(plan, cost, a, b, d_hist, s_hist, 0.1)


# ---- issue 17: wrong plans from IPOT's sticky underflowed entries, zero-mass marginals, empty batches -------------
@requires_cpp
def test_float32_plans_where_the_scaling_form_loses_entries():
    """Issue 17's reproduction: costs up to 8 at beta 0.1 in float32. Entries of Q that flush to 0 stayed 0 while
    the scalings grew, and plans came out off by 0.17 (the reference's float32 error: 2e-6)."""
    cost = torch.rand(40, 8, 6, generator=torch.Generator().manual_seed(0)) * 8
    plan = hf.ipot(cost, beta=0.1, n_iters=40, backend="cpp")
    expected = reference.ipot(cost.double(), beta=0.1, n_iters=40)
    own = reference.ipot(cost, beta=0.1, n_iters=40)
    assert_within_reference_error(plan, expected, own)


@pytest.mark.parametrize("backend", backend_params("ipot"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_mass_entries_give_zero_rows_and_columns(backend, dtype):
    """a = [0, .25, .25, .25, .25] made the reference's IPOT NaN (log 0 - log 0 in the second iteration)."""
    cost, _, b = ot_problem(12, 2, 5, 4)
    a = torch.tensor([[0, 0.25, 0.25, 0.25, 0.25]] * 2, dtype=torch.float64)
    b[1, 0] = 0.0
    b = b / b.sum(-1, keepdim=True)
    leaves = [t.to(dtype).requires_grad_() for t in (cost, a, b)]
    plan = hf.ipot(*leaves, beta=0.1, n_iters=9, grad="unrolled", backend=backend)
    grads = torch.autograd.grad((plan * torch.linspace(-1, 1, 40, dtype=dtype).reshape(2, 5, 4)).sum(), leaves)
    assert_no_nan(plan, *grads)
    assert float(plan[:, 0].abs().max()) == 0 and float(plan[1, :, 0].abs().max()) == 0
    assert float(grads[1][:, 0].abs().max()) == 0
    expected = reference.ipot(cost, a, b, beta=0.1, n_iters=9)
    assert_no_nan(expected)
    assert float((plan.double() - expected).abs().max()) <= (1e-12 if dtype == torch.float64 else 1e-5)
