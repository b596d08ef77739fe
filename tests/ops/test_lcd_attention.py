"""The fused attention (lcd_attention) on every backend against the reference: outputs, gradients, masks.

Tests that take the ``fast_backend`` fixture run cpp on the CPU and CUDA and Triton on its device (the CPU under the
Triton interpreter, or CUDA); inputs and masks are drawn on the CPU from seeded generators (the same numbers on every
device) and moved, and the reference runs on the same device. Then what only one backend has: the C++ op's layouts,
statistics of many draws, instruction-set variants, inductor; the Triton op's in-kernel hash and its custom ops.
"""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import helo_fast as hf
from helo_fast import _rng
from helo_fast.reference.lcd_attention import attention_masks
from lcd_attention_cases import HELO_SHAPES, ODD_SHAPES, attention_case, op_args, run_attention as run
from cpu_isa import run_under_isa
from devices import CPU, CUDA, backend_params, requires_cpp, skip_unless_backend, triton_backend_devices
from tolerance import assert_float64_close, assert_no_nan, assert_within_reference_error

OP = "lcd_attention"

TENSOR_ARGS = ("q", "k", "v", "bias", "residual", "ln_weight", "ln_bias")

case = attention_case


def explicit_masks(shape, seed, p=0.4, device=CPU):
    """Bool DropKey/dropout masks [B, H, Lq, Lk] with key 0 never DropKey-masked (no fully masked row)."""
    gen = torch.Generator().manual_seed(seed)
    dropkey = torch.rand(shape, generator=gen) < p
    dropkey[..., 0] = False
    return dropkey.to(device), (torch.rand(shape, generator=gen) < p).to(device)


MASK_MODES = ("p0", "explicit", "seeded")


def mask_kwargs(mode, shape, seed=5, device=CPU):
    if mode == "p0":
        return {}
    if mode == "explicit":
        dropkey, dropout = explicit_masks(shape, seed, device=device)
        return dict(dropkey_mask=dropkey, dropout_mask=dropout, dropout_p=0.4)
    return dict(dropkey_p=0.5, dropout_p=0.3)


# ----------------------------------------------------------------------------------------------- every fast backend


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("name", list(HELO_SHAPES) + list(ODD_SHAPES))
def test_float64_output_and_gradients_match_reference(fast_backend, name, mode):
    backend, device = fast_backend
    batch, heads, lq, lk, dim, bias_shape = {**HELO_SHAPES, **ODD_SHAPES}[name]
    tensors = case(1, batch, heads, lq, lk, dim, bias_shape, device=device)
    kwargs = mask_kwargs(mode, (batch, heads, lq, lk), device=device)
    out, grads, next_draw = run(backend, tensors, seed=7, **kwargs)
    ref_out, ref_grads, ref_next_draw = run("reference", tensors, seed=7, **kwargs)
    # Masks drawn from a different seed or hash would move the output by O(1), far beyond 1e-10.
    assert_float64_close(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for arg in grads:
        assert grads[arg].shape == tensors[arg].shape, arg
        assert_float64_close(grads[arg], ref_grads[arg])
    assert next_draw == ref_next_draw, f"{backend} must draw from the generator exactly like the reference"


@pytest.mark.parametrize("bias_before_scale", [True, False])
@pytest.mark.parametrize("parts", ["bare", "bias", "residual_ln", "all_no_ln_bias"])
def test_float64_optional_parts_and_bias_order_match_reference(fast_backend, parts, bias_before_scale):
    backend, device = fast_backend
    bias_shape = (1, 2, 1, 6) if parts in ("bias", "all_no_ln_bias") else None
    residual = parts in ("residual_ln", "all_no_ln_bias")
    tensors = case(
        2,
        2,
        2,
        4,
        6,
        8,
        bias_shape,
        residual=residual,
        ln=parts != "bare" and parts != "bias",
        ln_bias=parts != "all_no_ln_bias",
        device=device,
    )
    kwargs = dict(dropkey_p=0.3, dropout_p=0.2, bias_before_scale=bias_before_scale, scale=0.7)
    out, grads, _ = run(backend, tensors, seed=3, **kwargs)
    ref_out, ref_grads, _ = run("reference", tensors, seed=3, **kwargs)
    assert_float64_close(out, ref_out)
    for arg in grads:
        assert_float64_close(grads[arg], ref_grads[arg])


@pytest.mark.parametrize("parts", ["residual_ln", "ln_no_bias"])
def test_float64_gradients_with_a_large_ln_eps_match_reference(fast_backend, parts):
    """ln_eps far from the default 1e-5 (LayerNorm inputs of variance ~1e-2, so eps moves every gradient by O(1)):
    every backward gets the op's ln_eps, none a constant."""
    backend, device = fast_backend
    tensors = case(4, 2, 2, 3, 5, 4, (3, 5), ln_bias=parts == "residual_ln", device=device)
    tensors = {name: (0.1 * t if name in ("v", "residual") else t) for name, t in tensors.items()}
    kwargs = dict(dropkey_p=0.3, dropout_p=0.2, ln_eps=1e-2)
    out, grads, _ = run(backend, tensors, seed=4, **kwargs)
    ref_out, ref_grads, _ = run("reference", tensors, seed=4, **kwargs)
    default_eps_out, default_eps_grads, _ = run("reference", tensors, seed=4, **{**kwargs, "ln_eps": 1e-5})
    assert (default_eps_out - ref_out).abs().max() > 1e-3  # the case is sensitive to ln_eps
    assert_float64_close(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for arg in grads:
        if arg != "ln_bias":  # (the sum of grad_out, whatever eps)
            assert (default_eps_grads[arg] - ref_grads[arg]).abs().max() > 1e-6, arg
        assert_float64_close(grads[arg], ref_grads[arg])


def test_every_layer_takes_the_arguments_in_the_public_order():
    """One argument order for lcd_attention: the public function's (its generator drawn into a seed) in the
    reference, the C++ schema, the Triton custom ops and the Triton launchers, forward and backward."""
    import inspect

    from helo_fast import _ext, kernels, reference
    from helo_fast._ops.lcd_attention import OP_ARGS

    def names(fn, drop=()):
        return tuple("seed" if n == "generator" else n for n in inspect.signature(fn).parameters if n not in drop)

    assert names(hf.lcd_attention, drop=("backend", "check_finite")) == OP_ARGS
    assert names(reference.lcd_attention, drop=("check_finite",)) == OP_ARGS
    schemas = {}
    if _ext.has_cpp():
        schemas.update(cpp_fwd=torch.ops.helo_fast.lcd_attention_fwd, cpp_bwd=torch.ops.helo_fast.lcd_attention_bwd)
    if kernels.TRITON_ERROR is None:
        from helo_fast.kernels import lcd_attention as launcher

        schemas.update(
            triton_fwd=torch.ops.helo_fast.triton_lcd_attention_fwd,
            triton_bwd=torch.ops.helo_fast.triton_lcd_attention_bwd,
        )
        assert names(launcher.lcd_attention_fwd) == OP_ARGS
        assert names(launcher.lcd_attention_bwd) == ("grad_out",) + OP_ARGS
    for layer, op in schemas.items():
        args = tuple(a.name for a in op.default._schema.arguments)
        expected = OP_ARGS if layer.endswith("fwd") else ("grad_out",) + OP_ARGS
        assert args[: len(expected)] == expected, (layer, args)


def test_one_query_key_and_channel_matches_reference(fast_backend):
    # B = H = Lq = Lk = D = 1 without residual and LayerNorm: the output is v, whatever q and k.
    backend, device = fast_backend
    tensors = case(6, 1, 1, 1, 1, 1, residual=False, ln=False, device=device)
    out, grads, _ = run(backend, tensors, seed=1, dropout_p=0.5)
    ref_out, ref_grads, _ = run("reference", tensors, seed=1, dropout_p=0.5)
    assert_float64_close(out, ref_out)
    assert_float64_close(grads["v"], ref_grads["v"])
    assert float(grads["q"].abs().max()) == 0 and float(grads["k"].abs().max()) == 0


def test_explicit_masks_override_probabilities(fast_backend):
    backend, device = fast_backend
    tensors = case(3, 2, 2, 4, 5, 3, (2, 2, 4, 5), device=device)
    gen = torch.Generator().manual_seed(8)
    dropkey_mask = (torch.rand(2, 2, 4, 5, generator=gen) < 0.5).to(device)
    dropout_mask = (torch.rand(2, 2, 4, 5, generator=gen) < 0.3).to(device)
    both = dict(dropkey_mask=dropkey_mask, dropout_mask=dropout_mask)
    # Both masks given (no seed drawn), or one given and the other drawn from the generator.
    for kwargs in (
        dict(dropkey_p=0.0, dropout_p=0.3, **both),
        dict(dropkey_p=0.5, dropout_p=0.3, **both),
        dict(dropkey_p=0.5, dropout_p=0.3, dropkey_mask=dropkey_mask),
    ):
        out, grads, next_draw = run(backend, tensors, seed=2, **kwargs)
        ref_out, ref_grads, ref_next_draw = run("reference", tensors, seed=2, **kwargs)
        assert_float64_close(out, ref_out)
        for key in grads:
            assert_float64_close(grads[key], ref_grads[key])
        assert next_draw == ref_next_draw


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("name", ["ca", "lcd_ca", "lq_ne_lk_d6", "full_bias_d33", "transformer"])
def test_float32_within_reference_error(fast_backend, name, mode):
    backend, device = fast_backend
    batch, heads, lq, lk, dim, bias_shape = {**HELO_SHAPES, **ODD_SHAPES}[name]
    tensors64 = case(4, batch, heads, lq, lk, dim, bias_shape, device=device)
    tensors32 = {n: (t.float() if t is not None else None) for n, t in tensors64.items()}
    kwargs = mask_kwargs(mode, (batch, heads, lq, lk), device=device)
    out, grads, _ = run(backend, tensors32, seed=11, **kwargs)
    ref32, ref_grads32, _ = run("reference", tensors32, seed=11, **kwargs)
    ref64, ref_grads64, _ = run("reference", tensors64, seed=11, **kwargs)
    assert out.dtype == torch.float32
    assert_within_reference_error(out, ref64, ref32)
    for arg in grads:
        assert_within_reference_error(grads[arg], ref_grads64[arg], ref_grads32[arg])


# The second shape takes the kernels' row-dot path for Q Kᵀ (D large against Lk) with packed bfloat16 tiles.
@pytest.mark.parametrize("shape", [(2, 4, 18, 18, 32), (3, 1, 10, 10, 128)])
def test_bfloat16_forward_within_reference_error(fast_backend, shape):
    backend, device = fast_backend
    tensors64 = case(6, *shape, device=device)
    tensors16 = {n: (t.bfloat16() if t is not None else None) for n, t in tensors64.items()}

    def forward(backend_, t):
        return hf.lcd_attention(
            t["q"],
            t["k"],
            t["v"],
            t["bias"],
            residual=t["residual"],
            ln_weight=t["ln_weight"],
            ln_bias=t["ln_bias"],
            backend=backend_,
        )

    out = forward(backend, tensors16)
    assert out.dtype == torch.bfloat16
    assert_within_reference_error(out, forward("reference", tensors64), forward("reference", tensors16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_and_gradients_within_reference_error(fast_backend, dtype):
    # Computed in float32 inside the kernel; output and gradients returned in the input dtype. HeLo's LCD-CA (one
    # head, correlation bias before scaling) at a small D.
    backend, device = fast_backend
    tensors64 = case(22, 2, 1, 5, 5, 16, (2, 1, 5, 5), device=device)
    tensors_half = {key: (t.to(dtype) if t is not None else None) for key, t in tensors64.items()}
    kwargs = dict(dropkey_p=0.5, dropout_p=0.5)
    got = run(backend, tensors_half, seed=3, **kwargs)
    ref64 = run("reference", tensors64, seed=3, **kwargs)
    ref_half = run("reference", tensors_half, seed=3, **kwargs)
    assert got[0].dtype == dtype
    assert_within_reference_error(got[0], ref64[0], ref_half[0])
    for key in got[1]:
        assert got[1][key].dtype == dtype
        assert_within_reference_error(got[1][key], ref64[1][key], ref_half[1][key])


def gradcheck_inputs(bias_shape, residual, ln, ln_bias=True):
    tensors = case(8, 2, 2, 3, 4, 3, bias_shape, residual=residual, ln=ln, ln_bias=ln_bias)
    return {n: (t.requires_grad_(True) if t is not None else None) for n, t in tensors.items()}


@requires_cpp
@pytest.mark.parametrize("bias_before_scale", [True, False])
@pytest.mark.parametrize(
    "bias_shape,residual,ln",
    [(None, False, False), ((3, 4), True, True), ((2, 1, 3, 4), False, True), ((2, 2, 3, 4), True, False)],
)
def test_gradcheck_float64(bias_shape, residual, ln, bias_before_scale):
    t = gradcheck_inputs(bias_shape, residual, ln)
    names = [n for n in TENSOR_ARGS if t[n] is not None]
    dropkey, dropout = explicit_masks((2, 2, 3, 4), 12)

    def fn(*args):
        kw = dict(zip(names, args))
        return hf.lcd_attention(
            kw["q"],
            kw["k"],
            kw["v"],
            kw.get("bias"),
            residual=kw.get("residual"),
            ln_weight=kw.get("ln_weight"),
            ln_bias=kw.get("ln_bias"),
            bias_before_scale=bias_before_scale,
            dropkey_mask=dropkey,
            dropout_mask=dropout,
            dropout_p=0.25,
            backend="cpp",
        )

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names))


@requires_cpp
def test_gradcheck_float64_seeded_masks():
    t = gradcheck_inputs((3, 4), True, True, ln_bias=False)
    names = [n for n in TENSOR_ARGS if t[n] is not None]
    kwargs = dict(dropkey_p=0.3, dropout_p=0.3)
    dropkey, _ = attention_masks((2, 2, 3, 4), 0.3, 0.3, torch.Generator().manual_seed(21))
    assert not bool(dropkey.all(-1).any()), "a fully masked row makes finite differences meaningless"

    def fn(*args):
        kw = dict(zip(names, args))
        return hf.lcd_attention(
            kw["q"],
            kw["k"],
            kw["v"],
            kw["bias"],
            residual=kw["residual"],
            ln_weight=kw["ln_weight"],
            generator=torch.Generator().manual_seed(21),
            backend="cpp",
            **kwargs,
        )

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names))


def test_gradcheck_float64_seeded_masks_small(fast_backend):
    # Every backend (the Triton interpreter takes ~0.1 s a call, so a small problem); a fresh generator with the
    # same seed per evaluation, so every gradcheck evaluation draws the same masks.
    backend, device = fast_backend
    tensors = case(9, 1, 2, 2, 3, 1, (3,), device=device)
    names = [n for n in TENSOR_ARGS if tensors[n] is not None]

    def fn(*args):
        t = dict(zip(names, args))
        return hf.lcd_attention(
            t["q"],
            t["k"],
            t["v"],
            t["bias"],
            residual=t["residual"],
            ln_weight=t["ln_weight"],
            ln_bias=t["ln_bias"],
            scale=0.6,
            dropkey_p=0.3,
            dropout_p=0.3,
            generator=torch.Generator().manual_seed(12345),
            backend=backend,
        )

    assert torch.autograd.gradcheck(fn, [tensors[n].clone().requires_grad_(True) for n in names])


def test_seeded_masks_are_bit_identical_to_the_reference_hash(fast_backend):
    # With v = identity rows and no LayerNorm, the output exposes the dropout-scaled weights exactly.
    backend, device = fast_backend
    batch, heads, lq, lk = 3, 2, 5, 7
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(batch, heads, lq, 4, generator=gen), torch.randn(batch, heads, lk, 4, generator=gen)
    q, k = q.repeat(1, 1, 1, 2), k.repeat(1, 1, 1, 2)  # D = 8 >= Lk
    v = torch.zeros(batch, heads, lk, 8)
    v[..., :lk] = torch.eye(lk)
    out = (
        hf.lcd_attention(
            q.to(device),
            k.to(device),
            v.to(device),
            dropkey_p=0.5,
            dropout_p=0.5,
            generator=torch.Generator().manual_seed(31),
            backend=backend,
        )
        .view(batch, lq, heads, 8)
        .transpose(1, 2)[..., :lk]
        .cpu()
    )
    dropkey, dropout = attention_masks((batch, heads, lq, lk), 0.5, 0.5, torch.Generator().manual_seed(31))
    assert torch.equal(out == 0, dropout | (dropkey & ~dropkey.all(-1, keepdim=True)))


@requires_cpp
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


@requires_cpp
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropkey_rate_is_p(p):
    # Lk = 2 with equal logits (q = 0) and v = (0, 1): out = 1 iff only key 0 is masked (probability p(1-p)).
    batch, heads, lq = 64, 4, 32
    q, k = torch.zeros(batch, heads, lq, 1), torch.randn(batch, heads, 2, 1)
    v = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1).expand(batch, heads, 2, 1)
    out = hf.lcd_attention(q, k, v, dropkey_p=p, generator=torch.Generator().manual_seed(2), backend="cpp")
    rate, expected, n = float((out == 1).double().mean()), p * (1 - p), out.numel()
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


@requires_cpp
def test_dropout_is_unbiased():
    # The same problem repeated over the batch gets independent masks; their mean output is the p = 0 output.
    reps, heads, lq, lk, dim = 4000, 2, 3, 5, 4
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, heads, length, dim, generator=gen, dtype=torch.float64) for length in (lq, lk, lk))
    expected = hf.lcd_attention(q, k, v, backend="cpp")[0]
    out = hf.lcd_attention(
        q.expand(reps, -1, -1, -1),
        k.expand(reps, -1, -1, -1),
        v.expand(reps, -1, -1, -1),
        dropout_p=0.5,
        generator=torch.Generator().manual_seed(4),
        backend="cpp",
    )
    mean, sem = out.mean(0), out.std(0) / math.sqrt(reps)
    assert bool(((mean - expected).abs() < 5 * sem + 1e-12).all())
    assert not torch.allclose(out[0], expected), "dropout must change single draws"


@pytest.mark.parametrize("backend", backend_params("lcd_attention"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fully_masked_row_gets_uniform_weights_in_every_dtype(dtype, backend):
    """Issue 17: float32 gave uniform weights and float64 the unmasked attention (x - 1e12 keeps x's digits in
    float64). DropKey now replaces a dropped logit, so a row with every key dropped averages v, in every dtype and
    backend; its logits' gradient still flows (the softmax backward at uniform weights), as the release's additive
    -1e12 gives in float32."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    mask = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = hf.lcd_attention(*leaves, dropkey_mask=mask, backend=backend)
    assert_no_nan(out)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(out[0, 1, 4:8], v[0, 1].mean(0), **tol)
    dq, dk = torch.autograd.grad(
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(dtype)).sum(), leaves[:2]
    )
    assert float(dq[0, 1, 1].abs().max()) > 0  # the fully dropped row's logits still get a gradient
    if dtype != torch.bfloat16:
        torch.testing.assert_close(out, hf.lcd_attention(q, k, v, dropkey_mask=mask, backend="reference"))


@pytest.mark.parametrize("backend", backend_params("lcd_attention"))
def test_empty_batch_gives_an_empty_output(backend):
    q, k, v = (torch.randn(0, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = hf.lcd_attention(
        q,
        k,
        v,
        residual=torch.zeros(0, 3, 8, dtype=torch.float64),
        ln_weight=torch.ones(8, dtype=torch.float64),
        backend=backend,
    )
    assert out.shape == (0, 3, 8)


@pytest.mark.parametrize("dim", [5, 32])  # 32: whole vectors, where a contiguous head is read in place
def test_non_contiguous_inputs_match_reference(fast_backend, dim):
    """q, k as HeLo passes them (heads of [B, L, H*D], read in place by the CPU kernels); v and the rest with a
    non-unit column stride (copied first)."""
    backend, device = fast_backend
    gen = torch.Generator().manual_seed(5)
    batch, heads, lq, lk = 2, 3, 4, 6

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)

    q = draw(batch, lq, heads, dim).transpose(1, 2)
    k = draw(batch, lk, heads, dim).transpose(1, 2)
    v = draw(batch, heads, dim, lk).transpose(2, 3)
    bias = draw(lk, lq).t()
    residual = draw(batch, heads * dim, lq).transpose(1, 2)
    tensors = dict(q=q, k=k, v=v, bias=bias, residual=residual, ln_weight=None, ln_bias=None)
    assert not any(t.is_contiguous() for t in (q, k, v, bias, residual))
    out, grads, _ = run(backend, tensors, dropkey_p=0.3, dropout_p=0.3)
    ref_out, ref_grads, _ = run("reference", tensors, dropkey_p=0.3, dropout_p=0.3)
    assert_float64_close(out, ref_out)
    for arg in grads:
        assert_float64_close(grads[arg], ref_grads[arg])


@requires_cpp
def test_gradients_of_head_views_come_back_in_the_inputs_layout():
    """The CPU backward writes dq, dk, dv with the strides of q, k, v (heads of [B, L, H*D]), so autograd's
    transpose/view backward needs no copy; the fake kernel reports the same strides (what torch.compile plans)."""
    gen = torch.Generator().manual_seed(6)
    batch, heads, lq, lk, dim = 2, 3, 4, 5, 8

    def heads_of(length):
        return torch.randn(batch, length, heads, dim, generator=gen, dtype=torch.float64).transpose(1, 2)

    q, k, v = heads_of(lq), heads_of(lk), heads_of(lk)
    residual = torch.randn(batch, lq, heads * dim, generator=gen, dtype=torch.float64)
    args = op_args(
        q=q,
        k=k,
        v=v,
        scale=0.5,
        dropkey_p=0.0,
        dropout_p=0.0,
        residual=residual,
        ln_eps=1e-5,
        bias_before_scale=True,
        seed=torch.tensor([3]),
    ) + (-1e12,)
    out, mean, rstd, prob, ln_input = torch.ops.helo_fast.lcd_attention_fwd(*args, True)
    bwd_args = (torch.randn_like(out),) + args + (mean, rstd, prob, ln_input)
    grads = torch.ops.helo_fast.lcd_attention_bwd(*bwd_args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.helo_fast.lcd_attention_bwd(
            *(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in bwd_args)
        )
    for grad, fake_grad, x in zip(grads[:3], fake[:3], (q, k, v)):
        assert grad.stride() == x.stride() == fake_grad.stride()
    torch.library.opcheck(torch.ops.helo_fast.lcd_attention_bwd, bwd_args)
    # (The values in this layout: test_non_contiguous_inputs_match_reference.)


def op_samples():
    """Arguments of lcd_attention_fwd without save_for_backward (the op's arguments, then dropkey_value)."""
    t = case(9, 2, 2, 3, 4, 5, (3, 4))
    dropkey, dropout = explicit_masks((2, 2, 3, 4), 3)
    scalars = dict(
        scale=0.4, dropkey_p=0.3, dropout_p=0.2, ln_eps=1e-5, bias_before_scale=True, seed=torch.tensor([17])
    )
    full = op_args(**t, **scalars) + (-1e12,)
    bare = op_args(
        q=t["q"],
        k=t["k"],
        v=t["v"],
        scale=0.5,
        dropkey_p=0.0,
        dropout_p=0.3,
        ln_eps=1e-5,
        bias_before_scale=False,
        seed=torch.tensor([0]),
        dropkey_mask=dropkey,
        dropout_mask=dropout,
    ) + (-1e12,)
    # bfloat16 activations with float32 LayerNorm parameters, as torch.autocast passes them
    low = {n: t[n].bfloat16() for n in ("q", "k", "v", "bias", "residual")}
    mixed = op_args(**low, ln_weight=t["ln_weight"].float(), ln_bias=t["ln_bias"].float(), **scalars) + (-1e12,)
    return [full, bare, mixed]


@requires_cpp
@pytest.mark.parametrize("sample", [0, 1, 2])
def test_opcheck_forward_and_backward_ops(sample):
    args = op_samples()[sample]
    fwd_args = tuple(
        a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    )
    for save in (True, False):
        torch.library.opcheck(torch.ops.helo_fast.lcd_attention_fwd, fwd_args + (save,))
    out, mean, rstd, prob, ln_input = torch.ops.helo_fast.lcd_attention_fwd(*args, True)
    bwd_args = (torch.randn_like(out),) + args + (mean, rstd, prob, ln_input)
    torch.library.opcheck(torch.ops.helo_fast.lcd_attention_bwd, bwd_args)
    # The differentiable backward (create_graph=True): the reference's vjp, the kernels' gradients in float64.
    vjp_args = (bwd_args[0],) + fwd_args[:-1]
    torch.library.opcheck(torch.ops.helo_fast.lcd_attention_reference_vjp, vjp_args)
    if args[0].dtype != torch.float64:  # the bfloat16 sample: opcheck only
        return
    kernel_grads = torch.ops.helo_fast.lcd_attention_bwd(*bwd_args)
    reference_grads = torch.ops.helo_fast.lcd_attention_reference_vjp(*vjp_args)
    assert len(reference_grads) == 7 and any(g.numel() for g in reference_grads)
    for i, (reference_grad, kernel_grad) in enumerate(zip(reference_grads, kernel_grads)):
        if reference_grad.numel():  # empty: an absent input
            torch.testing.assert_close(reference_grad, kernel_grad, rtol=1e-10, atol=1e-12, msg=f"gradient {i}")


@requires_cpp
def test_backward_fills_no_zero_gradients_for_the_saved_outputs():
    """The forward's saved outputs (mean, rstd, the [B, H, Lq, Lk] weights, the LayerNorm input) get no gradient:
    autograd must not materialize zero tensors of their shapes for the backward (memsets of the weights' size)."""
    t = case(5, 2, 3, 6, 7, 4, None)
    leaves = [t[n].requires_grad_(True) for n in ("q", "k", "v", "residual")]
    out = hf.lcd_attention(t["q"], t["k"], t["v"], None, residual=t["residual"], backend="cpp")
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.autograd.grad(out.sum(), leaves)
    filled = [e.input_shapes for e in prof.events() if e.name in ("aten::zeros", "aten::zero_", "aten::fill_")]
    assert [2, 3, 6, 7] not in [shape for shapes in filled for shape in shapes], filled


@requires_cpp
def test_no_grad_forward_saves_nothing():
    args = op_samples()[0]
    _, _, _, prob, ln_input = torch.ops.helo_fast.lcd_attention_fwd(*args, False)
    assert prob.numel() == 0 and ln_input.numel() == 0


def _differentiable_inputs(args):
    """The op's arguments with its floating-point tensors (q, k, v, bias, residual, LayerNorm parameters) as leaves."""
    return tuple(
        a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    )


@requires_cpp
@pytest.mark.parametrize("sample", [0, 1])
def test_forward_that_saved_nothing_recomputes_for_its_backward(sample):
    """The op called directly with save_for_backward=False on inputs that need gradients: its autograd recomputes
    what the forward would have saved, and the gradients are those of a saving forward."""
    args = _differentiable_inputs(op_samples()[sample])
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = {}
    for save in (True, False):
        out = torch.ops.helo_fast.lcd_attention_fwd(*args, save)[0]
        grads[save] = torch.autograd.grad((out * out).sum(), leaves)
    for saved, recomputed in zip(grads[True], grads[False]):
        assert float(saved.abs().max()) > 0
        torch.testing.assert_close(recomputed, saved, rtol=0, atol=0)


@requires_cpp
def test_gradients_only_for_the_inputs_that_need_them():
    """bias, residual and LayerNorm parameters present but not requiring gradients: only q, k, v get one, and it is
    the one they get when everything requires a gradient."""
    args = op_samples()[0]
    every = _differentiable_inputs(args)
    out = torch.ops.helo_fast.lcd_attention_fwd(*every, True)[0]
    full = torch.autograd.grad(out.sum(), every[:3])
    some = tuple(a.detach().clone().requires_grad_(True) if i < 3 else a for i, a in enumerate(args))
    assert some[3] is not None and not some[3].requires_grad
    out = torch.ops.helo_fast.lcd_attention_fwd(*some, True)[0]
    got = torch.autograd.grad(out.sum(), some[:3])
    for g, e in zip(got, full):
        assert float(e.abs().max()) > 0
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@requires_cpp
def test_op_refuses_forward_mode_ad_by_name():
    """torch.ops.helo_fast.lcd_attention_fwd itself has no jvp rule: a tangent gets an error naming the op (the public
    helo_fast.lcd_attention runs the reference for it: tests/ops/test_transforms.py)."""
    from torch.autograd import forward_ad

    args = op_samples()[0]
    with forward_ad.dual_level():
        dual_v = forward_ad.make_dual(args[2], torch.randn_like(args[2]))
        with pytest.raises(NotImplementedError, match=r"helo_fast::lcd_attention_fwd has no forward-mode AD"):
            torch.ops.helo_fast.lcd_attention_fwd(*args[:2], dual_v, *args[3:], True)


def test_forward_without_gradients_matches_reference_and_tracks_nothing(fast_backend):
    # Without any input needing a gradient the wrapper calls the kernel below autograd.
    backend, device = fast_backend
    tensors = case(12, 2, 4, 18, 18, 32, (18, 18), device=device)
    kwargs = dict(residual=tensors["residual"], ln_weight=tensors["ln_weight"], ln_bias=tensors["ln_bias"])
    ref = hf.lcd_attention(tensors["q"], tensors["k"], tensors["v"], tensors["bias"], backend="reference", **kwargs)
    out = hf.lcd_attention(tensors["q"], tensors["k"], tensors["v"], tensors["bias"], backend=backend, **kwargs)
    assert not out.requires_grad and out.grad_fn is None
    assert_float64_close(out, ref)
    q = tensors["q"].clone().requires_grad_(True)
    with torch.no_grad():
        out_no_grad = hf.lcd_attention(q, tensors["k"], tensors["v"], tensors["bias"], backend=backend, **kwargs)
    assert not out_no_grad.requires_grad
    assert_float64_close(out_no_grad, ref)


@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_aot_eager_fullgraph_traces_the_op(fast_backend):
    backend, device = fast_backend
    tensors = case(12, 2, 2, 3, 4, 2, (2, 1, 3, 4), device=device)
    q = tensors["q"].clone().requires_grad_(True)

    def fn(q):
        return (
            hf.lcd_attention(
                q,
                tensors["k"],
                tensors["v"],
                tensors["bias"],
                residual=tensors["residual"],
                ln_weight=tensors["ln_weight"],
                ln_bias=tensors["ln_bias"],
                backend=backend,
                check_finite=False,
            )
            .pow(2)
            .sum()
        )

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected, got = fn(q), compiled(q)
    assert_float64_close(got, expected)
    assert_float64_close(torch.autograd.grad(got, q)[0], torch.autograd.grad(expected, q)[0])


@requires_cpp
@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    tensors = case(10, 2, 1, 10, 10, 16, (10, 10), dtype=torch.float32)
    dropkey, dropout = explicit_masks((2, 1, 10, 10), 4)

    def fn(q, k, v, bias, residual, ln_weight, ln_bias):
        return hf.lcd_attention(
            q,
            k,
            v,
            bias,
            residual=residual,
            ln_weight=ln_weight,
            ln_bias=ln_bias,
            dropkey_mask=dropkey,
            dropout_mask=dropout,
            dropout_p=0.5,
            backend="cpp",
        )

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


@requires_cpp
@pytest.mark.compile
@pytest.mark.slow
def test_torch_compile_seeded_masks_do_not_recompile_per_seed():
    """The seed reaches the op as a tensor: a new draw is a new value of the same graph input, not a new graph."""
    tensors = case(11, 2, 1, 10, 10, 16, (10, 10), dtype=torch.float32)

    def fn(gen, q, k, v, bias, residual, ln_weight, ln_bias):
        return hf.lcd_attention(
            q,
            k,
            v,
            bias,
            residual=residual,
            ln_weight=ln_weight,
            ln_bias=ln_bias,
            dropkey_p=0.3,
            dropout_p=0.5,
            generator=gen,
            backend="cpp",
        )

    args = [tensors[n] for n in TENSOR_ARGS]
    compiled = torch.compile(fn, dynamic=False)
    gen, eager_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    first = compiled(gen, *args)
    torch.testing.assert_close(first, fn(eager_gen, *args))
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = compiled(gen, *args)
    torch.testing.assert_close(second, fn(eager_gen, *args))
    assert not torch.equal(first, second)


@requires_cpp
@pytest.mark.parametrize(
    "change,error,match",
    [
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
    ],
)
def test_bad_inputs_raise_before_the_kernel(change, error, match):
    gen = torch.Generator().manual_seed(0)
    kwargs = dict(
        q=torch.randn(2, 2, 3, 5, generator=gen),
        k=torch.randn(2, 2, 4, 5, generator=gen),
        v=torch.randn(2, 2, 4, 5, generator=gen),
        bias=None,
        residual=None,
        ln_weight=torch.randn(10, generator=gen),
        ln_bias=None,
    )
    kwargs.update(change)
    with pytest.raises(error, match=match):
        hf.lcd_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), kwargs.pop("bias"), backend="cpp", **kwargs)


@requires_cpp
def test_op_rejects_inconsistent_shapes():
    q, k = torch.randn(2, 2, 3, 5), torch.randn(2, 2, 4, 5)
    with pytest.raises(RuntimeError, match="k and v must be"):
        torch.ops.helo_fast.lcd_attention_fwd(
            *op_args(
                q=q,
                k=k,
                v=torch.randn(2, 2, 4, 6),
                scale=0.5,
                dropkey_p=0.0,
                dropout_p=0.0,
                ln_eps=1e-5,
                bias_before_scale=True,
                seed=torch.tensor([0]),
            ),
            -1e12,
            False,
        )


# HeLo's batch on CUDA (the CPU runs the same shapes at a small batch above).
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(HELO_SHAPES) + ["lq_ne_lk_d6"])
def test_helo_batch_on_cuda_matches_reference(fast_backend, name, dtype):
    backend, device = fast_backend
    if device != CUDA:
        pytest.skip("runs on CUDA only")
    _, heads, lq, lk, dim, bias_shape = {**HELO_SHAPES, **ODD_SHAPES}[name]
    tensors64 = case(12, 128, heads, lq, lk, dim, bias_shape, device=device)
    same_precision = {n: (t.to(dtype) if t is not None else None) for n, t in tensors64.items()}
    kwargs = dict(dropkey_p=0.5, dropout_p=0.3)
    out, grads, next_draw = run(backend, same_precision, seed=13, **kwargs)
    ref64, ref_grads64, ref_next_draw = run("reference", tensors64, seed=13, **kwargs)
    assert next_draw == ref_next_draw
    if dtype == torch.float64:
        assert_float64_close(out, ref64)
        for arg in grads:
            assert_float64_close(grads[arg], ref_grads64[arg])
        return
    ref_low, ref_grads_low, _ = run("reference", same_precision, seed=13, **kwargs)
    assert_within_reference_error(out, ref64, ref_low)
    for arg in grads:
        assert_within_reference_error(grads[arg], ref_grads64[arg], ref_grads_low[arg])


@requires_cpp
@pytest.mark.slow
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_every_cpu_instruction_set_variant_matches_reference(isa):
    # The kernels are compiled per instruction set and picked at run time; this machine would only run the
    # widest, so a subprocess caps the choice with HELO_FAST_CPU_ISA.
    script = (
        "import torch, helo_fast as hf\n"
        "from tolerance import assert_float64_close\n"
        "from lcd_attention_cases import HELO_SHAPES, ODD_SHAPES, attention_case as case, run_attention as run\n"
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


# ------------------------------------------------------------------------------------------------ the Triton op only


@pytest.mark.parametrize("device", triton_backend_devices())
@pytest.mark.parametrize("seed", [0, 1, 977, 2**31 - 2])
@pytest.mark.parametrize("stream", [_rng.STREAM_DROPKEY, _rng.STREAM_DROPOUT])
def test_triton_in_kernel_hash_is_bit_identical_to_rng(seed, stream, device):
    skip_unless_backend("triton", OP, device)
    from helo_fast.kernels import mask_hash as triton_mask_hash

    shape = (3, 4, 37, 41)
    assert torch.equal(
        triton_mask_hash.hash_uniform(seed, shape, stream, device=device),
        _rng.hash_uniform(seed, shape, stream, device=device),
    )


@pytest.mark.slow
@pytest.mark.parametrize("device", triton_backend_devices())
def test_triton_opcheck_custom_ops(device):
    skip_unless_backend("triton", OP, device)
    tensors = case(10, 2, 2, 3, 4, 2, (4,), device=device)
    t = {key: (x.clone().requires_grad_(True) if x is not None else None) for key, x in tensors.items()}
    seed = torch.tensor([7])  # on the CPU, as lcd_attention passes it
    mask = (torch.rand(2, 2, 3, 4, generator=torch.Generator().manual_seed(1)) < 0.5).to(device)
    ops = torch.ops.helo_fast
    args = op_args(
        **t, scale=0.5, dropkey_p=0.0, dropout_p=0.3, ln_eps=1e-5, bias_before_scale=False, seed=seed, dropkey_mask=mask
    )
    torch.library.opcheck(ops.triton_lcd_attention_fwd, args)
    out = ops.triton_lcd_attention_fwd(*args)
    bwd_args = (torch.randn_like(out), *[x.detach() if isinstance(x, torch.Tensor) else x for x in args])
    torch.library.opcheck(ops.triton_lcd_attention_bwd, bwd_args)
