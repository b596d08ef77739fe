"""The C++ ipot op (helo_fast::ipot_fwd / ipot_bwd) against the reference, forward and backward."""
import pytest
import torch

import helo_fast as hf
from helo_fast import reference
from devices import cpp_devices, skip_unless_backend
from ot_cases import PARITY_DTYPES, SHAPES, assert_both_backward_paths, assert_parity, ot_problem, requires_cpp
from test_reference_ops import ipot_transcription
from tolerance import assert_no_nan, assert_within_reference_error

pytestmark = requires_cpp


def cpp(cost, a, b, beta=0.1, n_iters=9):
    return hf.ipot(cost, a, b, beta=beta, n_iters=n_iters, grad="unrolled", backend="cpp")


def ref(cost, a, b, beta=0.1, n_iters=9):
    return reference.ipot(cost, a, b, beta=beta, n_iters=n_iters, grad="unrolled")


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype,with_grad", PARITY_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}n{n}m{m}" for b, n, m in SHAPES])
def test_forward_and_gradients_match_reference(shape, dtype, with_grad, device):
    assert_parity(cpp, ref, ot_problem(sum(shape) + 50, *shape, device=device), dtype, with_grad=with_grad)


@pytest.mark.parametrize("device", cpp_devices(include_cpu=False))
@pytest.mark.parametrize("dtype,with_grad", PARITY_DTYPES)
def test_problem_too_large_for_shared_memory_matches_reference(dtype, with_grad, device):
    # 2(n + m) + 2nm values exceed the CUDA kernel's 48 KB of shared memory: it solves in a global workspace.
    assert_parity(cpp, ref, ot_problem(18, 2, 70, 90, device=device), dtype, with_grad=with_grad)


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_small_beta_matches_reference(dtype, device):
    # beta = 2e-3 with costs in [0, 3): K spans ~1500 (test_both_backward_paths forces the log-domain fallback).
    def run(fn):
        return lambda c, a, b: fn(c, a, b, beta=2e-3, n_iters=6)

    assert_parity(run(cpp), run(ref), ot_problem(8, 2, 6, 5, cost_scale=3.0, device=device), dtype, grad_floor=1 / 2e-3)


@pytest.mark.parametrize("device", cpp_devices())
def test_uniform_marginals_and_non_contiguous_inputs(device):
    wide = torch.rand(3, 4, 12, dtype=torch.float64).to(device)[:, :, ::2]
    cost_nc = wide.transpose(1, 2)  # [B, 6, 4], non-contiguous
    assert not cost_nc.is_contiguous()
    torch.testing.assert_close(hf.ipot(cost_nc, beta=0.1, n_iters=20, backend="cpp"),
                               reference.ipot(cost_nc, beta=0.1, n_iters=20), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("device", cpp_devices())
def test_gradcheck(device):
    cost, a, b = ot_problem(1, 2, 3, 4, device=device)
    for c, beta in ((cost, 0.3), (cost * 400, 1.0)):  # moderate, then large costs
        leaves = [t.clone().requires_grad_() for t in (c, a, b)]
        assert torch.autograd.gradcheck(lambda x, y, z: torch.ops.helo_fast.ipot_fwd(x, y, z, beta, 4, True)[0], leaves)


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("row_offset", [0.0, 40.0], ids=["scaling_form", "log_fallback"])
def test_both_backward_paths(row_offset, dtype, device):
    assert_both_backward_paths("ipot", lambda c, a, b, r, k: cpp(c, a, b, beta=r, n_iters=k),
                               lambda c, a, b, r, k: ref(c, a, b, beta=r, n_iters=k), 0.05, 8, row_offset, dtype,
                               seed=3, device=device)


@pytest.mark.parametrize("device", cpp_devices())
def test_opcheck(device):
    cost, a, b = ot_problem(2, 2, 4, 3, device=device)
    for save in (True, False):
        torch.library.opcheck(torch.ops.helo_fast.ipot_fwd, (cost, a, b, 0.2, 5, save))
    torch.library.opcheck(torch.ops.helo_fast.ipot_fwd, (cost.clone().requires_grad_(), a, b, 0.2, 5, True))
    plan, d_hist, s_hist = torch.ops.helo_fast.ipot_fwd(cost, a, b, 0.2, 5, True)
    torch.library.opcheck(torch.ops.helo_fast.ipot_bwd, (torch.randn_like(plan), cost, a, b, d_hist, s_hist, 0.2))


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
    torch.testing.assert_close(plan.detach(), reference.ipot(cost, *uniform, beta=beta, n_iters=20), rtol=1e-8,
                               atol=1e-12)
    # float32: finite, and the column marginals as good as the reference's own float32 run (log terms of
    # size |C|/beta = 1e6 carry float32 rounding of ~0.06 into the exponent).
    plan32, ref32 = hf.ipot(cost.float(), beta=beta, n_iters=20, backend="cpp"), reference.ipot(cost.float(), beta=beta,
                                                                                             n_iters=20)
    assert_no_nan(plan32)
    err, ref_err = [float((p.double().sum(1) - uniform[1]).abs().max()) for p in (plan32, ref32)]
    assert err <= max(2 * ref_err, 1e-5)


@pytest.mark.parametrize("device", cpp_devices())
def test_grad_none_detaches(device):
    cost, a, b = ot_problem(4, 2, 5, 6, device=device)
    plan = hf.ipot(cost.requires_grad_(), a, b, beta=0.1, n_iters=5, backend="cpp")  # grad="none" is the default
    assert not plan.requires_grad


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
ALL_BACKENDS = ["reference", "cpp", "triton"]


def test_float32_plans_where_the_scaling_form_loses_entries():
    """Issue 17's reproduction: costs up to 8 at beta 0.1 in float32. Entries of Q that flush to 0 stayed 0 while
    the scalings grew, and plans came out off by 0.17 (the reference's float32 error: 2e-6)."""
    cost = torch.rand(40, 8, 6, generator=torch.Generator().manual_seed(0)) * 8
    plan = hf.ipot(cost, beta=0.1, n_iters=40, backend="cpp")
    expected = reference.ipot(cost.double(), beta=0.1, n_iters=40)
    own = reference.ipot(cost, beta=0.1, n_iters=40)
    assert_within_reference_error(plan, expected, own)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_mass_entries_give_zero_rows_and_columns(backend, dtype):
    """a = [0, .25, .25, .25, .25] made the reference's IPOT NaN (log 0 - log 0 in the second iteration)."""
    skip_unless_backend(backend, "ipot")
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


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_gives_an_empty_plan(backend):
    skip_unless_backend(backend, "ipot")
    plan = hf.ipot(torch.rand(0, 3, 4), beta=0.1, n_iters=5, backend=backend)
    assert plan.shape == (0, 3, 4) and plan.dtype == torch.float32
