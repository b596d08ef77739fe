"""Every public op under torch.autocast (bfloat16 and float16; CPU, and CUDA where a GPU is present), on the
reference and cpp backends and (last section) the Triton backend, against the policy of helo_fast._autocast:

- OT ops compute in float32 and return float32 whatever the input dtype;
- lcd_attention casts q, k, v, bias, residual to the autocast dtype and the LayerNorm parameters to float32,
  computes in float32 and returns the autocast dtype;
- seeded_dropout keeps the input dtype and its result.

Each backend's result (and gradients) must be within 2x the error of the reference in the same autocast setting,
both measured against the float64 reference on the same inputs (tests/support/tolerance.py).
"""

import pytest
import torch

import helo_fast as hf
from helo_fast import _backend, _ext
from autocast_cases import (
    ATTENTION_ARGS,
    LOW_DTYPES,
    MASKS,
    assert_backend_within_reference_error,
    attention_call,
    attention_inputs,
    low_precision_costs,
    ot_call,
    ot_inputs,
    value_and_grads,
)
from devices import backend_params, cpp_devices, seeded_weights, triton_devices
from lcd_attention_cases import op_args
from ot_cases import ot_problem

BACKENDS = backend_params(include_triton=False)
# HeLo's three attentions (B reduced): (batch, heads, lq, lk, dim, bias shape).
ATTENTION_SHAPES = {
    "ca": (3, 4, 18, 18, 32, None),
    "transformer": (2, 4, 36, 36, 32, None),
    "lcd_ca": (3, 1, 10, 10, 128, (1, 10, 10)),
}


# ----------------------------------------------------------------------------------------------- OT ops
@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("op", ["sinkhorn", "ipot", "gromov_wasserstein"])
def test_ot_ops_compute_in_float32_under_autocast(op, dtype, backend, device):
    """Low-precision inputs under autocast: the same plan as the op on their float32 copies without autocast."""
    inputs = low_precision_costs(ot_inputs(op, device), dtype)
    call = ot_call(op)
    with torch.autocast(device.type, dtype=dtype):
        plan = call(backend, *inputs)
    assert plan.dtype == torch.float32
    assert torch.equal(plan, call(backend, *[t.float() if t is not None else None for t in inputs]))


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("op", ["sinkhorn", "ipot", "gromov_wasserstein"])
def test_ot_ops_on_float32_inputs_are_unchanged_by_autocast(op, dtype, backend, device):
    inputs = low_precision_costs(ot_inputs(op, device, seed=1), torch.float32)
    call = ot_call(op)
    with torch.autocast(device.type, dtype=dtype):
        plan = call(backend, *inputs)
    assert torch.equal(plan, call(backend, *inputs))


@pytest.mark.skipif(not _ext.has_cpp(), reason="no C++ extension")
@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("input_dtype", ["low", torch.float32], ids=["low_inputs", "f32_inputs"])
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("op", ["sinkhorn", "ipot", "gromov_wasserstein"])
def test_cpp_ot_ops_within_reference_error_under_autocast(op, dtype, input_dtype, device):
    inputs = low_precision_costs(ot_inputs(op, device, seed=2), dtype if input_dtype == "low" else input_dtype)
    probe = ot_call(op)("reference", *[t.double() if t is not None else None for t in inputs])
    weight = seeded_weights(3, *probe.shape, device=device)
    assert_backend_within_reference_error(ot_call(op), inputs, weight, device, dtype, "cpp", torch.float32)


# ----------------------------------------------------------------------------------------------- lcd_attention


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("name", list(ATTENTION_SHAPES))
def test_attention_casts_inputs_and_returns_the_autocast_dtype(name, dtype, backend, device):
    """Under autocast: the result of the op on q, k, v, bias, residual in the autocast dtype and LayerNorm parameters
    in float32, without autocast; gradients in each input's dtype."""
    inputs = attention_inputs(ATTENTION_SHAPES[name], torch.float32, device)
    out, grads = value_and_grads(
        lambda *x: attention_call(backend, *x, **MASKS["seeded"]), inputs, torch.ones(()), (device.type, dtype)
    )
    assert out.dtype == dtype
    cast = [
        t.to(dtype) if n not in ("ln_weight", "ln_bias") and t is not None else t
        for n, t in zip(ATTENTION_ARGS, inputs)
    ]
    assert torch.equal(out, attention_call(backend, *cast, **MASKS["seeded"]))
    assert [g.dtype for g in grads] == [t.dtype for t in inputs if t is not None]


@pytest.mark.skipif(not _ext.has_cpp(), reason="no C++ extension")
@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("masks", list(MASKS))
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("name", list(ATTENTION_SHAPES))
def test_cpp_attention_within_reference_error_under_autocast(name, dtype, masks, device):
    inputs = attention_inputs(ATTENTION_SHAPES[name], dtype, device, seed=4)
    batch, heads, lq, _, dim, _ = ATTENTION_SHAPES[name]
    weight = seeded_weights(5, batch, lq, heads * dim, device=device)
    call = lambda backend, *x: attention_call(backend, *x, **MASKS[masks])  # noqa: E731
    assert_backend_within_reference_error(call, inputs, weight, device, dtype, "cpp", dtype)


@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_half_attention_is_the_float32_computation_rounded_once(dtype, backend, device):
    """Half-precision inputs (float32 LayerNorm parameters): the output is the float32 computation on the same values
    rounded once to the half dtype, bit for bit (the kernels' own rounding of float32 to bfloat16 is torch's); the
    gradients within one unit of the half dtype's last place of it (the two instantiations of the C++ backward sum
    in float32 in different orders, which moves a few roundings)."""
    inputs = attention_inputs(ATTENTION_SHAPES["transformer"], dtype, device, seed=6)
    low = [
        t.to(dtype) if t is not None and n not in ("ln_weight", "ln_bias") else t
        for n, t in zip(ATTENTION_ARGS, inputs)
    ]
    as32 = [t.float() if t is not None else None for t in low]
    masks = MASKS["seeded"]
    weight = torch.ones(())
    out, grads = value_and_grads(lambda *x: attention_call(backend, *x, **masks), low, weight)
    out32, grads32 = value_and_grads(lambda *x: attention_call(backend, *x, **masks), as32, weight)
    assert out.dtype == dtype and torch.equal(out, out32.to(dtype))
    for grad, grad32 in zip(grads, grads32):
        # One unit in the last place, and near 0 the float32 summation noise itself (8 float32 eps of the largest
        # gradient), which float16's subnormals resolve.
        info, noise = torch.finfo(grad.dtype), 8 * torch.finfo(torch.float32).eps * float(grad32.abs().max())
        torch.testing.assert_close(
            grad.float(), grad32.to(grad.dtype).float(), rtol=info.eps, atol=info.tiny * info.eps + noise
        )


@pytest.mark.skipif(not _ext.has_cpp(), reason="no C++ extension")
@pytest.mark.parametrize("ln", [True, False])
def test_cpp_bfloat16_output_keeps_nan(ln):
    q, k, v, bias, residual, ln_weight, ln_bias = attention_inputs(
        ATTENTION_SHAPES["ca"], torch.bfloat16, torch.device("cpu"), seed=2
    )
    v = v.clone()
    v[0, 0, 0, 0] = float("nan")
    out = hf.lcd_attention(
        q,
        k,
        v,
        residual=residual.bfloat16(),
        ln_weight=ln_weight if ln else None,
        ln_bias=ln_bias if ln else None,
        check_finite=False,
        backend="cpp",
    )
    ref = hf.lcd_attention(
        q,
        k,
        v,
        residual=residual.bfloat16(),
        ln_weight=ln_weight if ln else None,
        ln_bias=ln_bias if ln else None,
        check_finite=False,
        backend="reference",
    )
    assert torch.isnan(out).any() and torch.equal(torch.isnan(out), torch.isnan(ref))


# ----------------------------------------------------------------------------------------------- seeded_dropout
@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_seeded_dropout_keeps_dtype_and_result_under_autocast(dtype, input_dtype, backend, device):
    x = seeded_weights(0, 64, 36, 16, device=device).to(input_dtype).requires_grad_()
    with torch.autocast(device.type, dtype=dtype):
        out = hf.seeded_dropout(x, 0.5, generator=torch.Generator().manual_seed(3), backend=backend)
    assert out.dtype == input_dtype
    plain = hf.seeded_dropout(x, 0.5, generator=torch.Generator().manual_seed(3), backend=backend)
    assert torch.equal(out, plain)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.dtype == input_dtype and torch.equal(grad, (plain != 0).to(input_dtype) * 2)


# ----------------------------------------------------------------------------------------------- the custom ops
@pytest.mark.skipif(not _ext.has_cpp(), reason="no C++ extension")
@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_cpp_ot_op_autocast_kernel_casts_to_float32(dtype, device):
    """torch.ops.helo_fast.*_fwd called directly under autocast with mixed dtypes: every input in float32."""
    cost, a, b = ot_problem(7, 2, 6, 5, device=device)
    with torch.autocast(device.type, dtype=dtype):
        plan, _, _ = torch.ops.helo_fast.ipot_fwd(cost.to(dtype), a.float(), b.to(dtype), 0.1, 10, False)
    expected, _, _ = torch.ops.helo_fast.ipot_fwd(
        cost.to(dtype).float(), a.float(), b.to(dtype).float(), 0.1, 10, False
    )
    assert plan.dtype == torch.float32 and torch.equal(plan, expected)


@pytest.mark.skipif(not _ext.has_cpp(), reason="no C++ extension")
@pytest.mark.parametrize("device", cpp_devices())
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_cpp_attention_op_autocast_kernels_cast_by_argument(dtype, device):
    """lcd_attention_fwd/_bwd called directly under autocast with float32 tensors: q, k, v, bias, residual (and
    grad_out) in the autocast dtype, LayerNorm parameters and the saved statistics in float32."""
    q, k, v, bias, residual, ln_weight, ln_bias = attention_inputs(ATTENTION_SHAPES["ca"], torch.float32, device)
    scalars = dict(
        scale=0.25,
        dropkey_p=0.0,
        dropout_p=0.0,
        ln_eps=1e-5,
        bias_before_scale=True,
        seed=torch.zeros(1, dtype=torch.int64),
    )
    args = op_args(q=q, k=k, v=v, bias=bias, residual=residual, ln_weight=ln_weight, ln_bias=ln_bias, **scalars)
    with torch.autocast(device.type, dtype=dtype):
        out, mean, rstd, prob, ln_input = torch.ops.helo_fast.lcd_attention_fwd(*args, -1e12, True)
        grads = torch.ops.helo_fast.lcd_attention_bwd(
            torch.ones_like(out, dtype=torch.float32), *args, -1e12, mean, rstd, prob, ln_input
        )
    low = [t.to(dtype) for t in (q, k, v, residual)]
    low_args = op_args(q=low[0], k=low[1], v=low[2], residual=low[3], ln_weight=ln_weight, ln_bias=ln_bias, **scalars)
    expected = torch.ops.helo_fast.lcd_attention_fwd(*low_args, -1e12, True)
    assert out.dtype == dtype and prob.dtype == torch.float32
    assert torch.equal(out, expected[0]) and torch.equal(prob, expected[3])
    expected_grads = torch.ops.helo_fast.lcd_attention_bwd(torch.ones_like(out), *low_args, -1e12, *expected[1:])
    assert [g.dtype for g in grads[:3]] == [dtype] * 3 and grads[5].dtype == grads[6].dtype == torch.float32
    for got, want in zip(grads, expected_grads):
        assert torch.equal(got, want)


@pytest.mark.compile
@pytest.mark.skipif(not _ext.has_cpp(), reason="no C++ extension")
def test_torch_compile_fullgraph_under_autocast_matches_eager():
    q, k, v, bias, residual, ln_weight, ln_bias = attention_inputs(
        ATTENTION_SHAPES["ca"], torch.float32, torch.device("cpu")
    )
    cost = low_precision_costs(ot_inputs("sinkhorn", torch.device("cpu")), torch.bfloat16)[0]

    def fn(q):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = hf.lcd_attention(
                q, k, v, bias, residual=residual, ln_weight=ln_weight, ln_bias=ln_bias, check_finite=False
            )
            plan = hf.sinkhorn(cost, eps=0.5, n_iters=5, check_finite=False)
        return out, plan

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    (out, plan), (expected_out, expected_plan) = compiled(q), fn(q)
    assert out.dtype == torch.bfloat16 and plan.dtype == torch.float32
    assert torch.equal(out, expected_out) and torch.equal(plan, expected_plan)


# ----------------------------------------------------------------------------------------------- Triton
# On the one device of triton_devices(): the CPU under the Triton interpreter (slow, so the shapes are small) or CUDA
# with a GPU.
(_TRITON,) = triton_devices()
TRITON_DEVICE = _TRITON.values[0]
_TRITON_UNAVAILABLE = _backend.unavailable_reason("triton", TRITON_DEVICE, "lcd_attention")
TRITON_SHAPE = (2, 2, 5, 7, 8, (5, 7))  # (batch, heads, lq, lk, dim, bias shape)


def triton_case(test):
    """Marks a Triton test (triton, and cuda where it runs on CUDA); skipped where the Triton backend cannot run."""
    for mark in (
        pytest.mark.triton,
        *_TRITON.marks,
        pytest.mark.skipif(
            _TRITON_UNAVAILABLE is not None,
            reason=f"triton backend unavailable on {TRITON_DEVICE}: {_TRITON_UNAVAILABLE}",
        ),
    ):
        test = mark(test)
    return test


@triton_case
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("op", ["sinkhorn", "ipot", "gromov_wasserstein"])
def test_triton_ot_ops_in_float32_and_within_reference_error(op, dtype):
    inputs = low_precision_costs(ot_inputs(op, TRITON_DEVICE, seed=2, gw_size=6), dtype)
    call = ot_call(op)
    with torch.autocast(TRITON_DEVICE.type, dtype=dtype):
        plan = call("triton", *inputs)
    assert plan.dtype == torch.float32
    assert torch.equal(plan, call("triton", *[t.float() if t is not None else None for t in inputs]))
    weight = seeded_weights(3, *plan.shape, device=TRITON_DEVICE)
    assert_backend_within_reference_error(call, inputs, weight, TRITON_DEVICE, dtype, "triton", torch.float32)


@triton_case
@pytest.mark.parametrize("masks", list(MASKS))
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_triton_attention_policy_and_within_reference_error(dtype, masks):
    inputs = attention_inputs(TRITON_SHAPE, torch.float32, TRITON_DEVICE, seed=4)
    call = lambda backend, *x: attention_call(backend, *x, **MASKS[masks])  # noqa: E731
    out, grads = value_and_grads(lambda *x: call("triton", *x), inputs, torch.ones(()), (TRITON_DEVICE.type, dtype))
    cast = [
        t.to(dtype) if n not in ("ln_weight", "ln_bias") and t is not None else t
        for n, t in zip(ATTENTION_ARGS, inputs)
    ]
    assert out.dtype == dtype and torch.equal(out, call("triton", *cast))
    assert [g.dtype for g in grads] == [t.dtype for t in inputs]
    batch, heads, lq, _, dim, _ = TRITON_SHAPE
    weight = seeded_weights(5, batch, lq, heads * dim, device=TRITON_DEVICE)
    assert_backend_within_reference_error(call, cast[:5] + inputs[5:], weight, TRITON_DEVICE, dtype, "triton", dtype)


@triton_case
@pytest.mark.parametrize("low_input", [False, True], ids=["f32_input", "low_input"])
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_triton_seeded_dropout_keeps_dtype_and_result(dtype, low_input):
    x = seeded_weights(0, 4, 9, 16, device=TRITON_DEVICE).to(dtype if low_input else torch.float32)
    with torch.autocast(TRITON_DEVICE.type, dtype=dtype):
        out = hf.seeded_dropout(x, 0.5, generator=torch.Generator().manual_seed(3), backend="triton")
    assert out.dtype == x.dtype
    assert torch.equal(out, hf.seeded_dropout(x, 0.5, generator=torch.Generator().manual_seed(3), backend="triton"))


@triton_case
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_triton_custom_op_autocast_kernels_cast_by_argument(dtype):
    """helo_fast::triton_* called directly under autocast: the OT op in float32, the attention's q, k, v in the
    autocast dtype and its LayerNorm parameters in float32."""
    (cost, _, _) = ot_inputs("sinkhorn", TRITON_DEVICE)[:3]
    marginals = [torch.full((3, s), 1.0 / s, device=TRITON_DEVICE) for s in (7, 5)]
    with torch.autocast(TRITON_DEVICE.type, dtype=dtype):
        plan = torch.ops.helo_fast.triton_sinkhorn_fwd(cost.to(dtype), *marginals, 0.1, 5, False)[0]
    assert plan.dtype == torch.float32
    q, k, v, bias, residual, ln_weight, ln_bias = attention_inputs(TRITON_SHAPE, torch.float32, TRITON_DEVICE)
    scalars = dict(scale=0.3, dropkey_p=0.0, dropout_p=0.0, ln_eps=1e-5, bias_before_scale=True)
    with torch.autocast(TRITON_DEVICE.type, dtype=dtype):
        out = torch.ops.helo_fast.triton_lcd_attention_fwd(
            *op_args(q=q, k=k, v=v, bias=bias, residual=residual, ln_weight=ln_weight, ln_bias=ln_bias, **scalars)
        )
    low = dict(zip(("q", "k", "v", "bias", "residual"), (t.to(dtype) for t in (q, k, v, bias, residual))))
    assert out.dtype == dtype
    assert torch.equal(
        out,
        torch.ops.helo_fast.triton_lcd_attention_fwd(*op_args(**low, ln_weight=ln_weight, ln_bias=ln_bias, **scalars)),
    )


@triton_case
@pytest.mark.slow
def test_triton_opcheck_attention_ops_with_float32_layer_norm_parameters():
    """The mix autocast passes (bfloat16 activations, float32 LayerNorm parameters; their gradients in float32)."""
    q, k, v, bias, residual, ln_weight, ln_bias = attention_inputs(TRITON_SHAPE, torch.float32, TRITON_DEVICE, seed=8)
    low = {
        n: t.to(torch.bfloat16).requires_grad_()
        for n, t in zip(("q", "k", "v", "bias", "residual"), (q, k, v, bias, residual))
    }
    args = op_args(
        **low,
        ln_weight=ln_weight.requires_grad_(),
        ln_bias=ln_bias.requires_grad_(),
        seed=torch.tensor([7]),
        scale=0.3,
        dropkey_p=0.0,
        dropout_p=0.2,
        ln_eps=1e-5,
        bias_before_scale=True,
    )
    ops = torch.ops.helo_fast
    torch.library.opcheck(ops.triton_lcd_attention_fwd, args)
    out = ops.triton_lcd_attention_fwd(*args)
    bwd_args = (torch.ones_like(out), *[x.detach() if isinstance(x, torch.Tensor) else x for x in args])
    grads = ops.triton_lcd_attention_bwd(*bwd_args)
    assert [g.dtype for g in grads[5:]] == [torch.float32] * 2
    torch.library.opcheck(ops.triton_lcd_attention_bwd, bwd_args)
