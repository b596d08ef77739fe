"""The C++ sinkhorn op (helo_fast::sinkhorn_fwd / sinkhorn_bwd) against the reference, forward and backward."""

import pytest
import torch

import helo_fast as hf
from helo_fast import reference
from cpu_isa import run_under_isa
from devices import cpp_devices, skip_unless_backend
from ot_cases import PARITY_DTYPES, SHAPES, assert_both_backward_paths, assert_parity, ot_problem, requires_cpp
from tolerance import assert_no_nan

pytestmark = requires_cpp


def cpp(cost, a, b, eps=0.07, n_iters=13):
    return hf.sinkhorn(cost, a, b, eps=eps, n_iters=n_iters, grad="unrolled", backend="cpp")


def ref(cost, a, b, eps=0.07, n_iters=13):
    return reference.sinkhorn(cost, a, b, eps=eps, n_iters=n_iters, grad="unrolled")


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype,with_grad", PARITY_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}n{n}m{m}" for b, n, m in SHAPES])
def test_forward_and_gradients_match_reference(shape, dtype, with_grad, device):
    assert_parity(cpp, ref, ot_problem(sum(shape), *shape, device=device), dtype, with_grad=with_grad)


@pytest.mark.parametrize("device", cpp_devices(include_cpu=False))
@pytest.mark.parametrize("dtype,with_grad", PARITY_DTYPES)
def test_problem_too_large_for_shared_memory_matches_reference(dtype, with_grad, device):
    # 2(n + m) + 2nm values exceed the CUDA kernel's 48 KB of shared memory: it solves in a global workspace.
    assert_parity(cpp, ref, ot_problem(17, 2, 70, 90, device=device), dtype, with_grad=with_grad)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_every_cpu_instruction_set_variant_matches_reference(isa):
    # The kernels are compiled per instruction set and picked at run time; this machine would only run the
    # widest, so a subprocess caps the choice with HELO_FAST_CPU_ISA.
    script = (
        "import torch\n"
        "from ot_cases import assert_parity, ot_problem\n"
        "from test_sinkhorn import cpp, ref\n"
        "for shape in ((2, 8, 3), (2, 36, 36), (1, 64, 64)):\n"
        "    for dtype in (torch.float64, torch.float32):\n"
        "        assert_parity(cpp, ref, ot_problem(sum(shape), *shape), dtype)\n"
    )
    run_under_isa(isa, script)


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_small_eps_matches_reference(dtype, device):
    # eps = 2e-3 with costs in [0, 3): K spans ~1500, far past float range for the rows whose costs are all
    # large (test_both_backward_paths forces the log-domain fallback on purpose).
    def run(fn):
        return lambda c, a, b: fn(c, a, b, eps=2e-3, n_iters=9)

    assert_parity(run(cpp), run(ref), ot_problem(7, 2, 6, 5, cost_scale=3.0, device=device), dtype, grad_floor=1 / 2e-3)


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("row_offset", [0.0, 40.0], ids=["scaling_form", "log_fallback"])
def test_both_backward_paths(row_offset, dtype, device):
    assert_both_backward_paths("sinkhorn", lambda c, a, b, r, k: cpp(c, a, b, eps=r, n_iters=k),
                               lambda c, a, b, r, k: ref(c, a, b, eps=r, n_iters=k), 0.05, 8, row_offset, dtype,
                               seed=4, device=device)


@pytest.mark.parametrize("device", cpp_devices())
def test_uniform_marginals_and_non_contiguous_inputs(device):
    cost, a, b = ot_problem(3, 3, 6, 4, device=device)
    wide = torch.rand(3, 4, 12, dtype=torch.float64).to(device)[:, :, ::2]  # [B, m, n] non-contiguous
    cost_nc = wide.transpose(1, 2)
    assert not cost_nc.is_contiguous()
    for c in (cost, cost_nc):
        out = hf.sinkhorn(c, eps=0.1, n_iters=11, backend="cpp")
        expected = reference.sinkhorn(c, eps=0.1, n_iters=11)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-13)
    a_nc = torch.cat([a, a], dim=1)[:, ::2]
    a_nc = a_nc / a_nc.sum(-1, keepdim=True)
    torch.testing.assert_close(hf.sinkhorn(cost, a_nc, b, eps=0.1, n_iters=5, backend="cpp"),
                               reference.sinkhorn(cost, a_nc, b, eps=0.1, n_iters=5), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("device", cpp_devices())
def test_gradcheck(device):
    cost, a, b = ot_problem(1, 2, 3, 4, device=device)

    def fn(c, a_, b_):
        return torch.ops.helo_fast.sinkhorn_fwd(c, a_, b_, 0.3, 4, True)[0]

    for inputs in ((cost, a, b), (cost * 400, a, b)):  # moderate, then large costs
        leaves = [t.clone().requires_grad_() for t in inputs]
        eps_fn = fn if inputs[0].max() < 10 else (lambda c, a_, b_: torch.ops.helo_fast.sinkhorn_fwd(c, a_, b_, 1.0, 4,
                                                                                                       True)[0])
        assert torch.autograd.gradcheck(eps_fn, leaves)


@pytest.mark.parametrize("device", cpp_devices())
def test_opcheck(device):
    cost, a, b = ot_problem(2, 2, 4, 3, device=device)
    for save in (True, False):
        torch.library.opcheck(torch.ops.helo_fast.sinkhorn_fwd, (cost, a, b, 0.2, 5, save))
    leaves = (cost.clone().requires_grad_(), a.clone().requires_grad_(), b)
    torch.library.opcheck(torch.ops.helo_fast.sinkhorn_fwd, (*leaves, 0.2, 5, True))
    plan, f_hist, g_hist = torch.ops.helo_fast.sinkhorn_fwd(cost, a, b, 0.2, 5, True)
    torch.library.opcheck(torch.ops.helo_fast.sinkhorn_bwd, (torch.randn_like(plan), cost, a, b, f_hist, g_hist, 0.2))


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


@pytest.mark.parametrize("device", cpp_devices())
def test_grad_none_saves_nothing_and_detaches(device):
    cost, a, b = ot_problem(4, 2, 5, 6, device=device)
    cost.requires_grad_()
    plan = hf.sinkhorn(cost, a, b, eps=0.1, n_iters=5, grad="none", backend="cpp")
    assert not plan.requires_grad
    _, f_hist, g_hist = torch.ops.helo_fast.sinkhorn_fwd(cost.detach(), a, b, 0.1, 5, False)
    assert f_hist.numel() == 0 and g_hist.numel() == 0


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_run_in_float32(dtype, device):
    cost, a, b = ot_problem(6, 2, 5, 4, device=device)
    out = hf.sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), eps=0.1, n_iters=10, backend="cpp")
    assert out.dtype == dtype
    expected = reference.sinkhorn(cost, a, b, eps=0.1, n_iters=10)
    assert float((out.double() - expected).abs().max()) < 1e-2 * float(expected.abs().max())


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
ALL_BACKENDS = ["reference", "cpp", "triton"]


def test_plan_needing_an_underflowed_kernel_entry():
    """exp(-0.75 / 1e-3) is 0 in float64, yet the plan puts 0.5 there (issue 17's reproduction): the scaling form
    must notice and fall back to the log domain."""
    cost = torch.tensor([[[0, 0.4], [0.4, 0.75]]], dtype=torch.float64)
    plan = hf.sinkhorn(cost, eps=1e-3, n_iters=100, backend="cpp")
    expected = reference.sinkhorn(cost, eps=1e-3, n_iters=100)
    torch.testing.assert_close(plan, expected, rtol=1e-10, atol=1e-14)
    assert float(plan[0, 1, 1]) > 0.49


def test_gradient_finite_where_the_reference_is_at_eps_1e_3():
    """The scaling-form backward multiplied u v (overflowing to inf) by a kernel entry of 0: NaN."""
    cost = torch.tensor([[[1, 0.3794], [0.4668, 0]]], dtype=torch.float64)
    a = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    b = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    weight = torch.tensor([[[0.3, -1.2], [0.7, 2.0]]], dtype=torch.float64)
    for n_iters in (1, 2, 17):
        grads = [torch.autograd.grad((fn(c, x, y, eps=8.79e-4, n_iters=n_iters) * weight).sum(), (c, x, y))
                 for fn in (cpp, ref) for c, x, y in [[t.clone().requires_grad_() for t in (cost, a, b)]]]
        assert_no_nan(*grads[0])
        scale = float(weight.abs().max()) / 8.79e-4  # the size of a cost gradient: |weight| |plan| / eps
        for g, r in zip(*grads):
            assert float((g - r).abs().max()) <= 1e-10 * scale


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_mass_entries_give_zero_rows_and_columns(backend, dtype):
    skip_unless_backend(backend, "sinkhorn")
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


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_gives_an_empty_plan_and_gradient(backend):
    skip_unless_backend(backend, "sinkhorn")
    cost = torch.rand(0, 3, 4, dtype=torch.float64, requires_grad=True)
    plan = hf.sinkhorn(cost, eps=0.1, n_iters=5, backend=backend)
    assert plan.shape == (0, 3, 4)
    (grad,) = torch.autograd.grad(plan.sum(), cost, allow_unused=True)
    assert grad is None or grad.shape == (0, 3, 4)
