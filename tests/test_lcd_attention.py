"""The C++ fused attention (lcd_attention, backend="cpp") against the reference: outputs, gradients, masks."""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import helo_fast as hf
from helo_fast import _ext
from helo_fast.reference.lcd_attention import attention_masks
from attention_cases import attention_case
from cpu_isa import run_under_isa
from devices import skip_unless_backend
from tolerance import assert_float64_close, assert_no_nan, assert_within_reference_error

pytestmark = pytest.mark.skipif(not _ext.has_cpp(), reason=f"C++ extension unavailable: {_ext.EXTENSION_ERROR}")

TENSOR_ARGS = ("q", "k", "v", "bias", "residual", "ln_weight", "ln_bias")
# HeLo's call sites (HELO_SPEC §3, §4.8, §6) and odd shapes: (batch, heads, lq, lk, dim, bias shape).
HELO_SHAPES = {
    "ca": (3, 4, 18, 18, 32, None),
    "transformer": (2, 4, 36, 36, 32, None),
    "lcd_ca": (3, 1, 10, 10, 128, (10, 10)),
}
ODD_SHAPES = {
    "lq_ne_lk_d6": (2, 3, 5, 7, 6, (1, 3, 5, 7)),
    "batch1_d5": (1, 2, 4, 3, 5, (4, 3)),
    "full_bias_d33": (2, 2, 3, 9, 33, (2, 2, 3, 9)),
}


case = attention_case


def run(backend, tensors, *, seed=0, grad_weight=None, **kwargs):
    """Output, gradients of (out * grad_weight).sum() w.r.t. every tensor given, next draw of the generator."""
    inputs = {name: (t.clone().requires_grad_(True) if t is not None else None) for name, t in tensors.items()}
    gen = torch.Generator().manual_seed(seed)
    out = hf.lcd_attention(inputs["q"], inputs["k"], inputs["v"], inputs["bias"], residual=inputs["residual"],
                           ln_weight=inputs["ln_weight"], ln_bias=inputs["ln_bias"], generator=gen, backend=backend,
                           **kwargs)
    if grad_weight is None:
        grad_weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    (out * grad_weight.to(out.dtype)).sum().backward()
    grads = {name: t.grad for name, t in inputs.items() if t is not None}
    return out.detach(), grads, int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def explicit_masks(shape, seed, p=0.4):
    """Bool DropKey/dropout masks [B, H, Lq, Lk] with key 0 never DropKey-masked (no fully masked row)."""
    gen = torch.Generator().manual_seed(seed)
    dropkey = torch.rand(shape, generator=gen) < p
    dropkey[..., 0] = False
    return dropkey, torch.rand(shape, generator=gen) < p


MASK_MODES = ("p0", "explicit", "seeded")


def mask_kwargs(mode, shape, seed=5):
    if mode == "p0":
        return {}
    if mode == "explicit":
        dropkey, dropout = explicit_masks(shape, seed)
        return dict(dropkey_mask=dropkey, dropout_mask=dropout, dropout_p=0.4)
    return dict(dropkey_p=0.5, dropout_p=0.3)


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("name", list(HELO_SHAPES) + list(ODD_SHAPES))
def test_float64_output_and_gradients_match_reference(name, mode):
    batch, heads, lq, lk, dim, bias_shape = {**HELO_SHAPES, **ODD_SHAPES}[name]
    tensors = case(1, batch, heads, lq, lk, dim, bias_shape)
    kwargs = mask_kwargs(mode, (batch, heads, lq, lk))
    out, grads, next_draw = run("cpp", tensors, seed=7, **kwargs)
    ref_out, ref_grads, ref_next_draw = run("reference", tensors, seed=7, **kwargs)
    assert_float64_close(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for arg in grads:
        assert grads[arg].shape == tensors[arg].shape, arg
        assert_float64_close(grads[arg], ref_grads[arg])
    assert next_draw == ref_next_draw, "cpp must draw from the generator exactly like the reference"


@pytest.mark.parametrize("bias_before_scale", [True, False])
@pytest.mark.parametrize("parts", ["bare", "bias", "residual_ln", "all_no_ln_bias"])
def test_float64_optional_parts_and_bias_order_match_reference(parts, bias_before_scale):
    bias_shape = (1, 2, 1, 6) if parts in ("bias", "all_no_ln_bias") else None
    residual = parts in ("residual_ln", "all_no_ln_bias")
    tensors = case(2, 2, 2, 4, 6, 8, bias_shape, residual=residual, ln=parts != "bare" and parts != "bias",
                   ln_bias=parts != "all_no_ln_bias")
    kwargs = dict(dropkey_p=0.3, dropout_p=0.2, bias_before_scale=bias_before_scale, scale=0.7)
    out, grads, _ = run("cpp", tensors, seed=3, **kwargs)
    ref_out, ref_grads, _ = run("reference", tensors, seed=3, **kwargs)
    assert_float64_close(out, ref_out)
    for arg in grads:
        assert_float64_close(grads[arg], ref_grads[arg])


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("name", ["ca", "lcd_ca", "lq_ne_lk_d6", "full_bias_d33", "transformer"])
def test_float32_within_reference_error(name, mode):
    batch, heads, lq, lk, dim, bias_shape = {**HELO_SHAPES, **ODD_SHAPES}[name]
    tensors64 = case(4, batch, heads, lq, lk, dim, bias_shape)
    tensors32 = {n: (t.float() if t is not None else None) for n, t in tensors64.items()}
    kwargs = mask_kwargs(mode, (batch, heads, lq, lk))
    out, grads, _ = run("cpp", tensors32, seed=11, **kwargs)
    ref32, ref_grads32, _ = run("reference", tensors32, seed=11, **kwargs)
    ref64, ref_grads64, _ = run("reference", tensors64, seed=11, **kwargs)
    assert out.dtype == torch.float32
    assert_within_reference_error(out, ref64, ref32)
    for arg in grads:
        assert_within_reference_error(grads[arg], ref_grads64[arg], ref_grads32[arg])


# The second shape takes the kernels' row-dot path for Q Kᵀ (D large against Lk) with packed bfloat16 tiles.
@pytest.mark.parametrize("shape", [(2, 4, 18, 18, 32), (3, 1, 10, 10, 128)])
def test_bfloat16_forward_within_reference_error(shape):
    tensors64 = case(6, *shape)
    tensors16 = {n: (t.bfloat16() if t is not None else None) for n, t in tensors64.items()}

    def forward(backend, t):
        return hf.lcd_attention(t["q"], t["k"], t["v"], t["bias"], residual=t["residual"], ln_weight=t["ln_weight"],
                                ln_bias=t["ln_bias"], backend=backend)

    out = forward("cpp", tensors16)
    assert out.dtype == torch.bfloat16
    assert_within_reference_error(out, forward("reference", tensors64), forward("reference", tensors16))


def gradcheck_inputs(bias_shape, residual, ln, ln_bias=True):
    tensors = case(8, 2, 2, 3, 4, 3, bias_shape, residual=residual, ln=ln, ln_bias=ln_bias)
    return {n: (t.requires_grad_(True) if t is not None else None) for n, t in tensors.items()}


@pytest.mark.parametrize("bias_before_scale", [True, False])
@pytest.mark.parametrize("bias_shape,residual,ln", [(None, False, False), ((3, 4), True, True),
                                                    ((2, 1, 3, 4), False, True), ((2, 2, 3, 4), True, False)])
def test_gradcheck_float64(bias_shape, residual, ln, bias_before_scale):
    t = gradcheck_inputs(bias_shape, residual, ln)
    names = [n for n in TENSOR_ARGS if t[n] is not None]
    dropkey, dropout = explicit_masks((2, 2, 3, 4), 12)

    def fn(*args):
        kw = dict(zip(names, args))
        return hf.lcd_attention(kw["q"], kw["k"], kw["v"], kw.get("bias"), residual=kw.get("residual"),
                                ln_weight=kw.get("ln_weight"), ln_bias=kw.get("ln_bias"),
                                bias_before_scale=bias_before_scale, dropkey_mask=dropkey, dropout_mask=dropout,
                                dropout_p=0.25, backend="cpp")

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names))


def test_gradcheck_float64_seeded_masks():
    t = gradcheck_inputs((3, 4), True, True, ln_bias=False)
    names = [n for n in TENSOR_ARGS if t[n] is not None]
    kwargs = dict(dropkey_p=0.3, dropout_p=0.3)
    dropkey, _ = attention_masks((2, 2, 3, 4), 0.3, 0.3, torch.Generator().manual_seed(21))
    assert not bool(dropkey.all(-1).any()), "a fully masked row makes finite differences meaningless"

    def fn(*args):
        kw = dict(zip(names, args))
        return hf.lcd_attention(kw["q"], kw["k"], kw["v"], kw["bias"], residual=kw["residual"],
                                ln_weight=kw["ln_weight"], generator=torch.Generator().manual_seed(21),
                                backend="cpp", **kwargs)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names))


def test_seeded_masks_are_bit_identical_to_the_reference_hash():
    # With v = identity rows and no LayerNorm, the output exposes the dropout-scaled weights exactly.
    batch, heads, lq, lk = 3, 2, 5, 7
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(batch, heads, lq, 4, generator=gen), torch.randn(batch, heads, lk, 4, generator=gen)
    q, k = q.repeat(1, 1, 1, 2), k.repeat(1, 1, 1, 2)  # D = 8 >= Lk
    v = torch.zeros(batch, heads, lk, 8)
    v[..., :lk] = torch.eye(lk)
    out = hf.lcd_attention(q, k, v, dropkey_p=0.5, dropout_p=0.5, generator=torch.Generator().manual_seed(31),
                           backend="cpp").view(batch, lq, heads, 8).transpose(1, 2)[..., :lk]
    dropkey, dropout = attention_masks((batch, heads, lq, lk), 0.5, 0.5, torch.Generator().manual_seed(31))
    assert torch.equal(out == 0, dropout | (dropkey & ~dropkey.all(-1, keepdim=True)))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate_is_p(p):
    # Lk = 1: the single weight is 1, so an output is 0 exactly where dropout dropped it, else 1/(1-p).
    batch, heads, lq = 64, 4, 32
    q, k = torch.randn(batch, heads, lq, 2), torch.randn(batch, heads, 1, 2)
    v = torch.ones(batch, heads, 1, 2)
    out = hf.lcd_attention(q, k, v, dropout_p=p, generator=torch.Generator().manual_seed(1), backend="cpp")
    dropped = out == 0
    assert bool((out[~dropped] - 1 / (1 - p)).abs().max() < 1e-6)
    n = dropped.numel()
    assert abs(float(dropped.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropkey_rate_is_p(p):
    # Lk = 2 with equal logits (q = 0) and v = (0, 1): out = 1 iff only key 0 is masked (probability p(1-p)).
    batch, heads, lq = 64, 4, 32
    q, k = torch.zeros(batch, heads, lq, 1), torch.randn(batch, heads, 2, 1)
    v = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1).expand(batch, heads, 2, 1)
    out = hf.lcd_attention(q, k, v, dropkey_p=p, generator=torch.Generator().manual_seed(2), backend="cpp")
    rate, expected, n = float((out == 1).double().mean()), p * (1 - p), out.numel()
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


def test_dropout_is_unbiased():
    # The same problem repeated over the batch gets independent masks; their mean output is the p = 0 output.
    reps, heads, lq, lk, dim = 4000, 2, 3, 5, 4
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, heads, length, dim, generator=gen, dtype=torch.float64) for length in (lq, lk, lk))
    expected = hf.lcd_attention(q, k, v, backend="cpp")[0]
    out = hf.lcd_attention(q.expand(reps, -1, -1, -1), k.expand(reps, -1, -1, -1), v.expand(reps, -1, -1, -1),
                           dropout_p=0.5, generator=torch.Generator().manual_seed(4), backend="cpp")
    mean, sem = out.mean(0), out.std(0) / math.sqrt(reps)
    assert bool(((mean - expected).abs() < 5 * sem + 1e-12).all())
    assert not torch.allclose(out[0], expected), "dropout must change single draws"


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fully_masked_row_gets_uniform_weights_in_every_dtype(dtype, backend):
    """Issue 17: float32 gave uniform weights and float64 the unmasked attention (x - 1e12 keeps x's digits in
    float64). DropKey now replaces a dropped logit, so a row with every key dropped averages v, in every dtype and
    backend; its logits' gradient still flows (the softmax backward at uniform weights), as the release's additive
    -1e12 gives in float32."""
    skip_unless_backend(backend, "lcd_attention")
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    mask = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = hf.lcd_attention(*leaves, dropkey_mask=mask, backend=backend)
    assert_no_nan(out)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(out[0, 1, 4:8], v[0, 1].mean(0), **tol)
    dq, dk = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(dtype)).sum(),
                                 leaves[:2])
    assert float(dq[0, 1, 1].abs().max()) > 0  # the fully dropped row's logits still get a gradient
    if dtype != torch.bfloat16:
        torch.testing.assert_close(out, hf.lcd_attention(q, k, v, dropkey_mask=mask, backend="reference"))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_empty_batch_gives_an_empty_output(backend):
    skip_unless_backend(backend, "lcd_attention")
    q, k, v = (torch.randn(0, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = hf.lcd_attention(q, k, v, residual=torch.zeros(0, 3, 8, dtype=torch.float64),
                           ln_weight=torch.ones(8, dtype=torch.float64), backend=backend)
    assert out.shape == (0, 3, 8)


@pytest.mark.parametrize("dim", [5, 32])  # 32: whole vectors, where a contiguous head is read in place
def test_non_contiguous_inputs_match_reference(dim):
    """q, k as HeLo passes them (heads of [B, L, H*D], read in place by the CPU kernels); v and the rest with a
    non-unit column stride (copied first)."""
    gen = torch.Generator().manual_seed(5)
    batch, heads, lq, lk = 2, 3, 4, 6
    q = torch.randn(batch, lq, heads, dim, generator=gen, dtype=torch.float64).transpose(1, 2)
    k = torch.randn(batch, lk, heads, dim, generator=gen, dtype=torch.float64).transpose(1, 2)
    v = torch.randn(batch, heads, dim, lk, generator=gen, dtype=torch.float64).transpose(2, 3)
    bias = torch.randn(lk, lq, generator=gen, dtype=torch.float64).t()
    residual = torch.randn(batch, heads * dim, lq, generator=gen, dtype=torch.float64).transpose(1, 2)
    tensors = dict(q=q, k=k, v=v, bias=bias, residual=residual, ln_weight=None, ln_bias=None)
    assert not any(t.is_contiguous() for t in (q, k, v, bias, residual))
    out, grads, _ = run("cpp", tensors, dropkey_p=0.3, dropout_p=0.3)
    ref_out, ref_grads, _ = run("reference", tensors, dropkey_p=0.3, dropout_p=0.3)
    assert_float64_close(out, ref_out)
    for arg in grads:
        assert_float64_close(grads[arg], ref_grads[arg])


def test_gradients_of_head_views_come_back_in_the_inputs_layout():
    """The CPU backward writes dq, dk, dv with the strides of q, k, v (heads of [B, L, H*D]), so autograd's
    transpose/view backward needs no copy; the fake kernel reports the same strides (what torch.compile plans)."""
    gen = torch.Generator().manual_seed(6)
    batch, heads, lq, lk, dim = 2, 3, 4, 5, 8

    def heads_of(length):
        return torch.randn(batch, length, heads, dim, generator=gen, dtype=torch.float64).transpose(1, 2)

    q, k, v = heads_of(lq), heads_of(lk), heads_of(lk)
    residual = torch.randn(batch, lq, heads * dim, generator=gen, dtype=torch.float64)
    args = (q, k, v, None, residual, None, None, None, None, 0.5, 0.0, 0.0, -1e12, 1e-5, True, torch.tensor([3]))
    out, mean, rstd, prob, ln_input = torch.ops.helo_fast.lcd_attention_fwd(*args, True)
    bwd_args = (torch.randn_like(out),) + args[:9] + (mean, rstd, prob, ln_input) + args[9:13] + args[14:]
    grads = torch.ops.helo_fast.lcd_attention_bwd(*bwd_args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.helo_fast.lcd_attention_bwd(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                       for a in bwd_args))
    for grad, fake_grad, x in zip(grads[:3], fake[:3], (q, k, v)):
        assert grad.stride() == x.stride() == fake_grad.stride()
    torch.library.opcheck(torch.ops.helo_fast.lcd_attention_bwd, bwd_args)
    # (The values in this layout: test_non_contiguous_inputs_match_reference.)


def op_samples():
    t = case(9, 2, 2, 3, 4, 5, (3, 4))
    dropkey, dropout = explicit_masks((2, 2, 3, 4), 3)
    full = (t["q"], t["k"], t["v"], t["bias"], t["residual"], t["ln_weight"], t["ln_bias"], None, None,
            0.4, 0.3, 0.2, -1e12, 1e-5, True, torch.tensor([17]))
    bare = (t["q"], t["k"], t["v"], None, None, None, None, dropkey, dropout, 0.5, 0.0, 0.3, -1e12, 1e-5, False,
            torch.tensor([0]))
    # bfloat16 activations with float32 LayerNorm parameters, as torch.autocast passes them
    low = tuple(t[n].bfloat16() for n in ("q", "k", "v", "bias", "residual"))
    mixed = low + (t["ln_weight"].float(), t["ln_bias"].float()) + full[7:]
    return [full, bare, mixed]


@pytest.mark.parametrize("sample", [0, 1, 2])
def test_opcheck_forward_and_backward_ops(sample):
    args = op_samples()[sample]
    fwd_args = tuple(a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
    for save in (True, False):
        torch.library.opcheck(torch.ops.helo_fast.lcd_attention_fwd, fwd_args + (save,))
    out, mean, rstd, prob, ln_input = torch.ops.helo_fast.lcd_attention_fwd(*args, True)
    bwd_args = (torch.randn_like(out),) + args[:9] + (mean, rstd, prob, ln_input) + args[9:13] + args[14:]
    torch.library.opcheck(torch.ops.helo_fast.lcd_attention_bwd, bwd_args)


def test_no_grad_forward_saves_nothing():
    args = op_samples()[0]
    _, _, _, prob, ln_input = torch.ops.helo_fast.lcd_attention_fwd(*args, False)
    assert prob.numel() == 0 and ln_input.numel() == 0


def test_forward_without_gradients_matches_reference_and_tracks_nothing():
    # Without any input needing a gradient the wrapper calls the kernel below autograd.
    tensors = case(12, 2, 4, 18, 18, 32, (18, 18))
    kwargs = dict(residual=tensors["residual"], ln_weight=tensors["ln_weight"], ln_bias=tensors["ln_bias"])
    ref = hf.lcd_attention(tensors["q"], tensors["k"], tensors["v"], tensors["bias"], backend="reference", **kwargs)
    out = hf.lcd_attention(tensors["q"], tensors["k"], tensors["v"], tensors["bias"], backend="cpp", **kwargs)
    assert not out.requires_grad and out.grad_fn is None
    assert_float64_close(out, ref)
    q = tensors["q"].clone().requires_grad_(True)
    with torch.no_grad():
        out_no_grad = hf.lcd_attention(q, tensors["k"], tensors["v"], tensors["bias"], backend="cpp", **kwargs)
    assert not out_no_grad.requires_grad
    assert_float64_close(out_no_grad, ref)


@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    tensors = case(10, 2, 1, 10, 10, 16, (10, 10), dtype=torch.float32)
    dropkey, dropout = explicit_masks((2, 1, 10, 10), 4)

    def fn(q, k, v, bias, residual, ln_weight, ln_bias):
        return hf.lcd_attention(q, k, v, bias, residual=residual, ln_weight=ln_weight, ln_bias=ln_bias,
                                dropkey_mask=dropkey, dropout_mask=dropout, dropout_p=0.5, backend="cpp")

    args = [tensors[n].clone().requires_grad_(True) for n in TENSOR_ARGS]
    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(*args)
    out.sum().backward()
    eager_args = [tensors[n].clone().requires_grad_(True) for n in TENSOR_ARGS]
    eager = fn(*eager_args)
    eager.sum().backward()
    torch.testing.assert_close(out, eager)
    for a, b in zip(args, eager_args):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_seeded_masks_do_not_recompile_per_seed():
    """The seed reaches the op as a tensor: a new draw is a new value of the same graph input, not a new graph."""
    tensors = case(11, 2, 1, 10, 10, 16, (10, 10), dtype=torch.float32)

    def fn(gen, q, k, v, bias, residual, ln_weight, ln_bias):
        return hf.lcd_attention(q, k, v, bias, residual=residual, ln_weight=ln_weight, ln_bias=ln_bias,
                                dropkey_p=0.3, dropout_p=0.5, generator=gen, backend="cpp")

    args = [tensors[n] for n in TENSOR_ARGS]
    compiled = torch.compile(fn, dynamic=False)
    gen, eager_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    first = compiled(gen, *args)
    torch.testing.assert_close(first, fn(eager_gen, *args))
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = compiled(gen, *args)
    torch.testing.assert_close(second, fn(eager_gen, *args))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("change,error,match", [
    (dict(k=torch.randn(2, 2, 4, 6)), ValueError, "k must have shape"),
    (dict(bias=torch.randn(5, 4)), ValueError, "bias must be broadcastable"),
    (dict(residual=torch.randn(2, 3, 5)), ValueError, "residual must have shape"),
    (dict(ln_weight=torch.randn(7)), ValueError, "ln_weight must have shape"),
    (dict(q=torch.randn(2, 2, 3, 5, dtype=torch.float64)), TypeError, "must have the dtype of q"),
    (dict(dropkey_mask=torch.zeros(2, 2, 3, 4)), TypeError, "dropkey_mask must have dtype"),
    (dict(dropout_mask=torch.zeros(2, 2, 3, 3, dtype=torch.bool)), ValueError, "dropout_mask must have shape"),
    (dict(dropout_p=1.0), ValueError, "dropout_p must be in"),
    (dict(dropkey_p=-0.1), ValueError, "dropkey_p must be in"),
    (dict(ln_bias=torch.randn(10), ln_weight=None), ValueError, "ln_bias needs ln_weight"),
    (dict(scale=0.0), ValueError, "scale must be"),
    (dict(q=torch.full((2, 2, 3, 5), float("nan"))), ValueError, "q contains NaN"),
])
def test_bad_inputs_raise_before_the_kernel(change, error, match):
    gen = torch.Generator().manual_seed(0)
    kwargs = dict(q=torch.randn(2, 2, 3, 5, generator=gen), k=torch.randn(2, 2, 4, 5, generator=gen),
                  v=torch.randn(2, 2, 4, 5, generator=gen), bias=None, residual=None,
                  ln_weight=torch.randn(10, generator=gen), ln_bias=None)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        hf.lcd_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), kwargs.pop("bias"), backend="cpp",
                         **kwargs)


def test_op_rejects_inconsistent_shapes():
    q, k = torch.randn(2, 2, 3, 5), torch.randn(2, 2, 4, 5)
    with pytest.raises(RuntimeError, match="k and v must be"):
        torch.ops.helo_fast.lcd_attention_fwd(q, k, torch.randn(2, 2, 4, 6), None, None, None, None, None, None,
                                              0.5, 0.0, 0.0, -1e12, 1e-5, True, torch.tensor([0]), False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not _ext.has_cuda_kernels(), reason="needs CUDA and the CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(HELO_SHAPES) + ["lq_ne_lk_d6"])
def test_cuda_matches_reference(name, dtype):
    batch, heads, lq, lk, dim, bias_shape = {**HELO_SHAPES, **ODD_SHAPES}[name]
    tensors64 = case(12, batch, heads, lq, lk, dim, bias_shape)
    on_cuda = {n: (t.to("cuda", dtype) if t is not None else None) for n, t in tensors64.items()}
    same_precision = {n: (t.to(dtype) if t is not None else None) for n, t in tensors64.items()}
    kwargs = dict(dropkey_p=0.5, dropout_p=0.3)
    out, grads, next_draw = run("cpp", on_cuda, seed=13, **kwargs)
    ref64, ref_grads64, ref_next_draw = run("reference", tensors64, seed=13, **kwargs)
    assert next_draw == ref_next_draw
    if dtype == torch.float64:
        assert_float64_close(out.cpu(), ref64)
        for arg in grads:
            assert_float64_close(grads[arg].cpu(), ref_grads64[arg])
        return
    ref_low, ref_grads_low, _ = run("reference", same_precision, seed=13, **kwargs)
    assert_within_reference_error(out.cpu(), ref64, ref_low)
    for arg in grads:
        assert_within_reference_error(grads[arg].cpu(), ref_grads64[arg], ref_grads_low[arg])


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_every_cpu_instruction_set_variant_matches_reference(isa):
    # The kernels are compiled per instruction set and picked at run time; this machine would only run the
    # widest, so a subprocess caps the choice with HELO_FAST_CPU_ISA.
    script = (
        "import torch, helo_fast as hf\n"
        "from tolerance import assert_float64_close\n"
        "from test_lcd_attention import case, run, ODD_SHAPES, HELO_SHAPES\n"
        "for name in ('lcd_ca', 'full_bias_d33', 'lq_ne_lk_d6'):\n"
        "    b, h, lq, lk, d, bias = {**HELO_SHAPES, **ODD_SHAPES}[name]\n"
        "    t = case(3, b, h, lq, lk, d, bias)\n"
        "    out, grads, _ = run('cpp', t, seed=5, dropkey_p=0.3, dropout_p=0.3)\n"
        "    ref, ref_grads, _ = run('reference', t, seed=5, dropkey_p=0.3, dropout_p=0.3)\n"
        "    assert_float64_close(out, ref)\n"
        "    for arg in grads:\n"
        "        assert_float64_close(grads[arg], ref_grads[arg])\n"
        "    t32 = {n: (x.float() if x is not None else None) for n, x in t.items()}\n"
        "    out32, _, _ = run('cpp', t32, seed=5)\n"
        "    ref32, _, _ = run('reference', t32, seed=5)\n"
        "    torch.testing.assert_close(out32, ref32, rtol=1e-4, atol=1e-4)\n"
    )
    run_under_isa(isa, script)
