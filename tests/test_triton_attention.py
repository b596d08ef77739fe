"""The Triton fused attention (lcd_attention) against the reference: outputs, gradients, masks.

Every test runs on the one device ``triton_devices()`` gives: the CPU under the Triton interpreter
(TRITON_INTERPRET=1, set by the Makefile when there is no GPU; set here when no Triton kernel was
imported yet), so shapes stay small, or CUDA with a GPU and the interpreter off. Inputs and masks are
drawn on the CPU from seeded generators (the same numbers on every device) and then moved; the
reference runs on the same device, and both draw their mask seeds from the same CPU generator. The
HeLo shapes run on CUDA only.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "helo_fast.kernels.triton_utils" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import helo_fast as hf  # noqa: E402
from helo_fast import _rng, reference  # noqa: E402
from attention_cases import attention_case  # noqa: E402
from devices import CUDA, seeded_weights, triton_module_device  # noqa: E402
from tolerance import assert_float64_close, assert_no_nan, assert_within_reference_error  # noqa: E402

# cpu under the interpreter, else cuda (marked `cuda`, skipped without a GPU)
DEVICE, _MARKS = triton_module_device("lcd_attention")

from helo_fast.kernels import mask_hash as triton_mask_hash  # noqa: E402

pytestmark = _MARKS

TENSOR_ARGS = ("q", "k", "v", "bias", "residual", "ln_weight", "ln_bias")


def case(seed, batch, heads, lq, lk, dim, *, bias_shape=None, residual=False, ln=False, **kwargs):
    """attention_case (drawn on the CPU, then moved to DEVICE unless ``device`` is given) without residual and
    LayerNorm unless asked for."""
    kwargs.setdefault("device", DEVICE)
    return attention_case(seed, batch, heads, lq, lk, dim, bias_shape, residual=residual, ln=ln, **kwargs)


def weights(seed, *shape):
    return seeded_weights(seed, *shape, device=DEVICE)


def bool_mask(gen, shape, p):
    """A bool mask [B, H, Lq, Lk], True with probability ``p``, drawn on the CPU from ``gen``, on DEVICE."""
    return (torch.rand(*shape, generator=gen) < p).to(DEVICE)


def run(backend, tensors, *, seed=0, grad_weight=None, **kwargs):
    """Output, gradients of (out * grad_weight).sum() w.r.t. every tensor given, next draw of the generator."""
    inputs = {name: (t.clone().requires_grad_(True) if t is not None else None) for name, t in tensors.items()}
    gen = torch.Generator().manual_seed(seed)
    fn = reference.lcd_attention if backend == "reference" else hf.lcd_attention
    extra = {} if backend == "reference" else {"backend": backend}
    out = fn(inputs["q"], inputs["k"], inputs["v"], inputs["bias"], residual=inputs["residual"],
             ln_weight=inputs["ln_weight"], ln_bias=inputs["ln_bias"], generator=gen, **kwargs, **extra)
    present = [name for name in TENSOR_ARGS if inputs[name] is not None]
    weight = grad_weight if grad_weight is not None else torch.ones_like(out)
    grads = torch.autograd.grad((out * weight).sum(), [inputs[name] for name in present])
    return out.detach(), dict(zip(present, grads)), torch.randint(0, 2**31 - 1, (1,), generator=gen)


CONFIGS = {
    # HeLo's LCD-CA (one head, correlation bias before scaling) at a small D.
    "lcd": (dict(batch=2, heads=1, lq=5, lk=5, dim=16, bias_shape=(2, 1, 5, 5), residual=True, ln=True),
            dict(dropkey_p=0.5, dropout_p=0.5)),
    "self_attention": (dict(batch=2, heads=4, lq=6, lk=6, dim=4, residual=True, ln=True),
                       dict(dropkey_p=0.5, dropout_p=0.5)),
    "cross_bias_after_scale": (dict(batch=1, heads=3, lq=5, lk=7, dim=3, bias_shape=(7,)),
                               dict(dropkey_p=0.3, bias_before_scale=False)),
    "dropout_only_ln_no_bias": (dict(batch=3, heads=2, lq=1, lk=4, dim=5, bias_shape=(1, 2, 1, 4), residual=True,
                                     ln=True, ln_bias=False), dict(dropout_p=0.4, scale=0.7)),
    "tiny": (dict(batch=1, heads=1, lq=1, lk=1, dim=1), dict()),
    "odd_sizes": (dict(batch=2, heads=1, lq=9, lk=3, dim=2, bias_shape=(9, 3), ln=True),
                  dict(dropkey_p=0.5, bias_before_scale=False)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float64_output_gradients_and_generator_equal_reference(name):
    shape_kwargs, op_kwargs = CONFIGS[name]
    tensors = case(len(name), **shape_kwargs)
    weight = weights(5, shape_kwargs["batch"], shape_kwargs["lq"], shape_kwargs["heads"] * shape_kwargs["dim"])
    out, grads, next_draw = run("triton", tensors, seed=11, grad_weight=weight, **op_kwargs)
    ref_out, ref_grads, ref_next_draw = run("reference", tensors, seed=11, grad_weight=weight, **op_kwargs)
    # Masks drawn from a different seed or hash would move the output by O(1), far beyond 1e-10.
    assert_float64_close(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        assert_float64_close(grads[key], ref_grads[key])
    assert torch.equal(next_draw, ref_next_draw), "the generator was advanced differently from the reference"


@pytest.mark.parametrize("seed", [0, 1, 977, 2**31 - 2])
@pytest.mark.parametrize("stream", [_rng.STREAM_DROPKEY, _rng.STREAM_DROPOUT])
def test_in_kernel_hash_is_bit_identical_to_rng(seed, stream):
    shape = (3, 4, 37, 41)
    assert torch.equal(triton_mask_hash.hash_uniform(seed, shape, stream, device=DEVICE),
                       _rng.hash_uniform(seed, shape, stream, device=DEVICE))


def test_explicit_masks_override_probabilities():
    tensors = case(3, 2, 2, 4, 5, 3, bias_shape=(2, 2, 4, 5), residual=True, ln=True)
    gen = torch.Generator().manual_seed(8)
    dropkey_mask = bool_mask(gen, (2, 2, 4, 5), 0.5)
    dropout_mask = bool_mask(gen, (2, 2, 4, 5), 0.3)
    both = dict(dropkey_mask=dropkey_mask, dropout_mask=dropout_mask)
    # Both masks given (no seed drawn), or one given and the other drawn from the generator.
    for kwargs in (dict(dropkey_p=0.0, dropout_p=0.3, **both), dict(dropkey_p=0.5, dropout_p=0.3, **both),
                   dict(dropkey_p=0.5, dropout_p=0.3, dropkey_mask=dropkey_mask)):
        out, grads, next_draw = run("triton", tensors, seed=2, **kwargs)
        ref_out, ref_grads, ref_next_draw = run("reference", tensors, seed=2, **kwargs)
        assert_float64_close(out, ref_out)
        for key in grads:
            assert_float64_close(grads[key], ref_grads[key])
        assert torch.equal(next_draw, ref_next_draw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fully_masked_row_is_finite_and_equals_reference(dtype):
    tensors = case(4, 1, 2, 3, 4, 2, dtype=dtype)
    mask = torch.zeros(1, 2, 3, 4, dtype=torch.bool, device=DEVICE)
    mask[0, 1, 2] = True
    out, grads, _ = run("triton", tensors, dropkey_mask=mask)
    ref_out, ref_grads, _ = run("reference", tensors, dropkey_mask=mask)
    assert_no_nan(out, *grads.values())
    if dtype == torch.float32:  # -1e12 swamps every float32 logit: uniform weights (in float64 it does not)
        assert torch.allclose(out[0, 2, 2:], tensors["v"][0, 1].mean(0), atol=1e-6)
    else:
        assert_float64_close(out, ref_out)


@pytest.mark.parametrize("name", ["lcd", "self_attention"])
def test_float32_within_reference_error(name):
    shape_kwargs, op_kwargs = CONFIGS[name]
    shape_kwargs = dict(shape_kwargs, batch=8)
    if "bias_shape" in shape_kwargs:
        shape_kwargs["bias_shape"] = (8, *shape_kwargs["bias_shape"][1:])
    tensors64 = case(21, **shape_kwargs)
    tensors32 = {key: (t.float() if t is not None else None) for key, t in tensors64.items()}
    weight = weights(6, 8, shape_kwargs["lq"], shape_kwargs["heads"] * shape_kwargs["dim"])
    got = run("triton", tensors32, seed=4, grad_weight=weight.float(), **op_kwargs)
    ref64 = run("reference", tensors64, seed=4, grad_weight=weight, **op_kwargs)
    ref32 = run("reference", tensors32, seed=4, grad_weight=weight.float(), **op_kwargs)
    assert_within_reference_error(got[0], ref64[0], ref32[0])
    for key in got[1]:
        assert_within_reference_error(got[1][key], ref64[1][key], ref32[1][key])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_within_reference_error(dtype):
    # Computed in float32 inside the kernel; output and gradients returned in the input dtype.
    shape_kwargs, op_kwargs = CONFIGS["lcd"]
    tensors64 = case(22, **shape_kwargs)
    tensors_half = {key: (t.to(dtype) if t is not None else None) for key, t in tensors64.items()}
    got = run("triton", tensors_half, seed=3, **op_kwargs)
    ref64 = run("reference", tensors64, seed=3, **op_kwargs)
    ref_half = run("reference", tensors_half, seed=3, **op_kwargs)
    assert got[0].dtype == dtype
    assert_within_reference_error(got[0], ref64[0], ref_half[0])
    for key in got[1]:
        assert got[1][key].dtype == dtype
        assert_within_reference_error(got[1][key], ref64[1][key], ref_half[1][key])


@pytest.mark.slow
def test_gradcheck_float64_with_fixed_seed():
    # The custom op directly, with a fixed seed tensor, so every gradcheck evaluation draws the same masks.
    tensors = case(9, 1, 2, 2, 3, 1, bias_shape=(3,), residual=True, ln=True)
    names = [n for n in TENSOR_ARGS if tensors[n] is not None]
    seed = torch.tensor([12345])  # on the CPU, as lcd_attention passes it (the launcher moves it)

    def fn(*args):
        t = dict(zip(names, args))
        return torch.ops.helo_fast.triton_lcd_attention_fwd(t["q"], t["k"], t["v"], t["bias"], t["residual"],
                                                           t["ln_weight"], t["ln_bias"], None, None, seed, 0.6,
                                                           0.3, 0.3, 1e-5, True)

    assert torch.autograd.gradcheck(fn, [tensors[n].clone().requires_grad_(True) for n in names])


@pytest.mark.slow
def test_opcheck_custom_ops():
    tensors = case(10, 2, 2, 3, 4, 2, bias_shape=(4,), residual=True, ln=True)
    t = {key: (x.clone().requires_grad_(True) if x is not None else None) for key, x in tensors.items()}
    seed = torch.tensor([7])  # on the CPU, as lcd_attention passes it
    mask = bool_mask(torch.Generator().manual_seed(1), (2, 2, 3, 4), 0.5)
    ops = torch.ops.helo_fast
    args = (t["q"], t["k"], t["v"], t["bias"], t["residual"], t["ln_weight"], t["ln_bias"], mask, None, seed, 0.5,
            0.0, 0.3, 1e-5, False)
    torch.library.opcheck(ops.triton_lcd_attention_fwd, args)
    out = ops.triton_lcd_attention_fwd(*args)
    bwd_args = (torch.randn_like(out), *[x.detach() if x is not None else None for x in args[:6]], mask, None, seed,
                0.5, 0.0, 0.3, 1e-5, False)
    torch.library.opcheck(ops.triton_lcd_attention_bwd, bwd_args)


@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_fullgraph_traces_the_triton_op():
    tensors = case(12, 2, 2, 3, 4, 2, bias_shape=(2, 1, 3, 4), residual=True, ln=True)
    q = tensors["q"].clone().requires_grad_(True)

    def fn(q):
        return hf.lcd_attention(q, tensors["k"], tensors["v"], tensors["bias"], residual=tensors["residual"],
                                ln_weight=tensors["ln_weight"], ln_bias=tensors["ln_bias"], backend="triton",
                                check_finite=False).pow(2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected, got = fn(q), compiled(q)
    assert_float64_close(got, expected)
    assert_float64_close(torch.autograd.grad(got, q)[0], torch.autograd.grad(expected, q)[0])


# ----------------------------------------------------------------------------- CUDA, HeLo sizes

HELO_SHAPES = {
    "physiological_cross_attention": (dict(batch=128, heads=4, lq=18, lk=18, dim=32, residual=True, ln=True),
                                      dict(dropkey_p=0.5, dropout_p=0.5)),
    "transformer_self_attention": (dict(batch=128, heads=4, lq=36, lk=36, dim=32, residual=True, ln=True),
                                   dict(dropkey_p=0.5, dropout_p=0.5)),
    "lcd_cross_attention": (dict(batch=128, heads=1, lq=10, lk=10, dim=128, bias_shape=(128, 1, 10, 10),
                                 residual=True, ln=True), dict(dropkey_p=0.5, dropout_p=0.5)),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(HELO_SHAPES))
def test_cuda_helo_shapes_within_reference_error(name):
    shape_kwargs, op_kwargs = HELO_SHAPES[name]
    tensors64 = case(31, **shape_kwargs, device=CUDA)  # CUDA whatever DEVICE (also under a forced interpreter)
    tensors32 = {key: (t.float() if t is not None else None) for key, t in tensors64.items()}
    got = run("triton", tensors32, seed=4, **op_kwargs)
    ref64 = run("reference", tensors64, seed=4, **op_kwargs)
    ref32 = run("reference", tensors32, seed=4, **op_kwargs)
    assert_within_reference_error(got[0], ref64[0], ref32[0])
    for key in got[1]:
        assert_within_reference_error(got[1][key], ref64[1][key], ref32[1][key])
    got64 = run("triton", tensors64, seed=4, **op_kwargs)
    assert_float64_close(got64[0], ref64[0])
