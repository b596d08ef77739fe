"""seeded_dropout (HeLo's FFN dropout, masks from the counter hash of helo_fast._rng): the fast backends (cpp on the
CPU and CUDA, triton; the ``fast_backend`` fixture) against the reference bit for bit, the mask statistics, gradients,
validation and the modules, and a hypothesis sweep of the documented domain against a plain oracle."""

import math

import pytest
import torch

import helo_fast as hf
from hypothesis import given
from hypothesis import strategies as st

from helo_fast import _rng
from helo_fast import nn as fast_nn
from helo_fast.reference import modules as reference_modules
from helo_fast.reference.seeded_dropout import seeded_dropout as reference_dropout
from cpu_isa import run_under_isa
from devices import CPU, backend_params, cpp_devices, requires_cpp, seeded_weights, skip_unless_backend
from domain_sweep import sweep_settings

OP = "seeded_dropout"

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# HeLo's FFN dropout (B = 128: [2B, 2N, d]), the FFN's hidden width [2B, 2N, ffn_dim] (not under the Triton
# interpreter: too slow), odd sizes, one element, nothing.
HELO_SHAPES = [(256, 36, 64), (256, 36, 128)]
SHAPES = HELO_SHAPES + [(3, 37, 129), (2, 1025), (1,), (0, 5), (0, 4)]


def seed_tensor(value):
    """A mask seed as the ops take it: an int64 CPU tensor of one element."""
    return torch.tensor([value], dtype=torch.int64)


def draw(shape, dtype, seed=0, device=CPU):
    """Standard-normal values drawn on the CPU from ``seed`` (the same numbers on every device), in ``dtype``."""
    return seeded_weights(seed, *shape, device=device).to(dtype)


def dropout_pair(x, p, backend, seed=7):
    """(backend's output, reference's output), each drawing its mask seed from a generator seeded ``seed``."""
    out = hf.seeded_dropout(x, p, generator=torch.Generator().manual_seed(seed), backend=backend)
    ref = reference_dropout(x, p, generator=torch.Generator().manual_seed(seed))
    return out, ref


def skip_if_interpreted(backend, device, shape):
    if backend == "triton" and device.type == "cpu" and shape in HELO_SHAPES:
        pytest.skip("HeLo-sized inputs are not run under the Triton interpreter (too slow)")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_matches_reference_bit_for_bit(fast_backend, dtype, shape, p):
    """Same generator state -> the same mask, and kept values x * 1/(1-p) rounded as PyTorch rounds them."""
    backend, device = fast_backend
    skip_if_interpreted(backend, device, shape)
    x = draw(shape, dtype, device=device)
    out, ref = dropout_pair(x, p, backend)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out, ref)


@requires_cpp
@pytest.mark.slow
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_cpp_narrower_instruction_sets_match_reference(isa):
    """The kernel is compiled for the baseline x86-64 and for AVX2 and picked at run time: each variant here."""
    run_under_isa(
        isa,
        (
            "import torch, helo_fast as hf\n"
            "from helo_fast.reference.seeded_dropout import seeded_dropout\n"
            "for dtype in (torch.float32, torch.float64, torch.bfloat16):\n"
            "    x = torch.randn(3, 37, 129, generator=torch.Generator().manual_seed(0)).to(dtype)\n"
            "    out = hf.seeded_dropout(x, 0.3, generator=torch.Generator().manual_seed(2), backend='cpp')\n"
            "    assert torch.equal(out, seeded_dropout(x, 0.3, generator=torch.Generator().manual_seed(2))), dtype\n"
        ),
    )


@requires_cpp
@pytest.mark.parametrize("device", cpp_devices())
def test_cpp_non_contiguous_input_and_non_finite_values(device):
    """A transposed view is dropped in its logical (row-major) order; dropped inf/NaN become 0 as in the reference."""
    x = draw((33, 40), torch.float32, device=device).t()
    x[0, :4] = torch.tensor([math.inf, -math.inf, math.nan, -0.0])
    out, ref = dropout_pair(x, 0.5, "cpp")
    assert out.is_contiguous() and torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())


@requires_cpp
@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_mask_rate_and_unbiasedness(device, p):
    """The drop rate is p within 5 binomial standard deviations, and E[out] = x (mean of out / x is 1)."""
    n = 1 << 20
    x = torch.full((n,), 3.0, device=device)
    out = hf.seeded_dropout(x, p, generator=torch.Generator().manual_seed(11), backend="cpp")
    rate = float((out == 0).double().mean())
    assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / n)
    kept = out[out != 0]
    assert torch.equal(kept, torch.full_like(kept, 3.0 / (1 - p)))
    assert abs(float(out.double().mean()) / 3.0 - 1.0) <= 5 * math.sqrt(p / (1 - p) / n)


@requires_cpp
def test_masks_differ_between_seeds_and_repeat_for_the_same_seed():
    x = torch.ones(4096)
    first = torch.ops.helo_fast.seeded_dropout_fwd(x, seed_tensor(1), 0.5)
    assert torch.equal(first, torch.ops.helo_fast.seeded_dropout_fwd(x, seed_tensor(1), 0.5))
    assert not torch.equal(first, torch.ops.helo_fast.seeded_dropout_fwd(x, seed_tensor(2), 0.5))


@pytest.mark.parametrize("backend", backend_params(OP, include_triton=False))
def test_identity_at_p0_and_in_eval(backend):
    x = draw((5, 6), torch.float32)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert hf.seeded_dropout(x, 0.0, generator=gen, backend=backend) is x
    assert hf.seeded_dropout(x, 0.7, generator=gen, training=False, backend=backend) is x
    assert torch.equal(gen.get_state(), state), "no seed is drawn when nothing is dropped"


@pytest.mark.parametrize("layout, p, seed", [("contiguous", 0.4, 5), ("transposed", 0.3, 8)])
def test_gradient_is_the_same_mask_times_the_scale(fast_backend, layout, p, seed):
    backend, device = fast_backend
    if layout == "contiguous":
        x = draw((7, 9), torch.float64, device=device).requires_grad_(True)
    else:
        x = draw((6, 70), torch.float64, device=device).t().requires_grad_(True)  # non-contiguous
    weight = draw(tuple(x.shape), torch.float64, seed=1, device=device)
    out = hf.seeded_dropout(x, p, generator=torch.Generator().manual_seed(seed), backend=backend)
    (out * weight).sum().backward()
    ref = reference_dropout(x.detach(), p, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out.detach(), ref)
    assert torch.equal(x.grad, torch.where(ref != 0, weight * (1.0 / (1.0 - p)), 0.0))


@requires_cpp
def test_gradcheck_and_double_backward_float64():
    x = draw((4, 5), torch.float64).requires_grad_(True)

    def fn(t):
        return torch.ops.helo_fast.seeded_dropout_fwd(t, seed_tensor(17), 0.3)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("shape, p, seed", [((6, 11), 0.25, 9), ((5, 7), 0.4, 12)], ids=["6x11", "5x7"])
def test_opcheck(fast_backend, shape, p, seed):
    backend, device = fast_backend
    op = torch.ops.helo_fast.seeded_dropout_fwd if backend == "cpp" else torch.ops.helo_fast.triton_seeded_dropout_fwd
    x = draw(shape, torch.float32, device=device)
    torch.library.opcheck(op, (x, seed_tensor(seed), p))
    torch.library.opcheck(op, (x.clone().requires_grad_(), seed_tensor(seed), p))


@pytest.mark.parametrize("backend", backend_params(OP, include_triton=False))
def test_bad_inputs_raise_before_any_kernel(backend):
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        hf.seeded_dropout([1.0, 2.0], 0.5, backend=backend)
    with pytest.raises(TypeError, match="x must have dtype"):
        hf.seeded_dropout(torch.ones(3, dtype=torch.int64), 0.5, backend=backend)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        hf.seeded_dropout(x, 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        hf.seeded_dropout(x, -0.1, backend=backend)
    with pytest.raises(TypeError, match="p must be a float"):
        hf.seeded_dropout(x, True, backend=backend)
    with pytest.raises(ValueError, match="at most 2\\*\\*32 elements"):
        hf.seeded_dropout(torch.zeros(1).expand(2**32 + 1), 0.5, backend=backend)  # a view: no memory


def test_reference_module_is_an_nn_dropout_with_no_state():
    module = reference_modules.SeededDropout(0.3)
    assert isinstance(module, torch.nn.Dropout) and module.p == 0.3
    assert module.state_dict() == {}
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        reference_modules.SeededDropout(1.0)


@pytest.mark.parametrize("backend", [*backend_params(OP, include_triton=False), "auto"])
def test_fused_module_matches_reference_module_and_converts_back(backend):
    x = draw((8, 16), torch.float32)
    fast = fast_nn.FusedDropout(0.5, backend=backend)
    ref = reference_modules.SeededDropout(0.5)
    assert torch.equal(fast(x, torch.Generator().manual_seed(2)), ref(x, torch.Generator().manual_seed(2)))
    assert fast.eval()(x) is x
    holder = torch.nn.Sequential(reference_modules.SeededDropout(0.5))
    hf.convert(holder, backend)
    assert type(holder[0]) is fast_nn.FusedDropout and holder[0].backend == backend
    hf.revert(holder)
    assert type(holder[0]) is reference_modules.SeededDropout


@requires_cpp
@pytest.mark.slow
@pytest.mark.compile
def test_compile_fullgraph_forward_and_backward_without_recompiling_per_seed():
    x = draw((5, 8), torch.float32).requires_grad_(True)
    seed = seed_tensor(21)
    weight = draw((5, 8), torch.float32, seed=1)

    def fn(t):
        return torch.ops.helo_fast.seeded_dropout_fwd(t * 2.0, seed, 0.5)

    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    expected = fn(x)
    (grad_expected,) = torch.autograd.grad((expected * weight).sum(), x)
    out = compiled(x)
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    assert torch.equal(out, expected)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-6, atol=0)
    seed.fill_(22)  # a new seed is a new value of the same graph input: the same compiled graph, new masks
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = compiled(x)
    assert torch.equal(again, fn(x)) and not torch.equal(again, out)


# ---- the documented domain (README "Valid domain"): any float tensor, p in [0, 1), any generator state -------------
@st.composite
def dropout_problems(draw, max_numel):
    """Shape (0 to 4 dims, empty included), a layout (contiguous, transposed or strided view), p, dtype, seed."""
    shape = draw(st.lists(st.integers(0, 40), min_size=0, max_size=4).filter(lambda s: math.prod(s) <= max_numel))
    return dict(
        shape=tuple(shape),
        layout=draw(st.sampled_from(["contiguous", "transposed", "strided"])),
        p=draw(st.one_of(st.just(0.0), st.floats(0.0, 0.999), st.sampled_from([0.1, 0.5, 0.9]))),
        dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**63 - 1)),
        grad=draw(st.booleans()),
    )


def view_of(base, layout):
    """``base`` itself, its transpose (of the last two dims), or every other element of its last dim."""
    if layout == "transposed" and base.dim() >= 2:
        return base.transpose(-1, -2)
    if layout == "strided" and base.dim() >= 1:
        return base[..., ::2]
    return base


def normal(shape, dtype, seed):
    """Standard-normal values of any shape (0-dim included) in ``dtype``, drawn in float64 from ``seed``."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def check_against_oracle(backend, problem):
    base = normal(problem["shape"], problem["dtype"], seed=problem["seed"] % 1000)
    x = view_of(base, problem["layout"]).detach().requires_grad_(problem["grad"])
    p = problem["p"]
    out = hf.seeded_dropout(x, p, generator=torch.Generator().manual_seed(problem["seed"]), backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    # The oracle: the documented mask (the counter hash of the seed the generator gives first, row-major over x's
    # shape) and x * 1/(1 - p) where kept, in x's dtype; the backends must match it bit for bit.
    if p == 0.0:
        expected = x.detach()
    else:
        seed = torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(problem["seed"]))
        dropped = _rng.hash_uniform(int(seed), x.shape, _rng.STREAM_DROPOUT) < torch.tensor(p, dtype=torch.float32)
        expected = torch.where(dropped, torch.zeros((), dtype=x.dtype), x.detach() * (1.0 / (1.0 - p)))
    assert torch.equal(out.detach(), expected)
    if problem["grad"] and x.numel():
        upstream = normal(x.shape, x.dtype, seed=3)
        (grad,) = torch.autograd.grad(out, x, upstream)
        if p == 0.0:
            assert torch.equal(grad, upstream)
        else:
            assert torch.equal(grad, torch.where(dropped, torch.zeros((), dtype=x.dtype), upstream * (1.0 / (1.0 - p))))


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params(OP, include_triton=False))
@sweep_settings(60)
@given(problem=dropout_problems(max_numel=200_000))
def test_matches_oracle_over_the_domain(backend, problem):
    check_against_oracle(backend, problem)


@pytest.mark.slow
@pytest.mark.triton
@sweep_settings(20)
@given(problem=dropout_problems(max_numel=5_000))  # the Triton CPU interpreter: small tensors
def test_triton_matches_oracle_over_the_domain(problem):
    skip_unless_backend("triton", OP)
    check_against_oracle("triton", problem)
