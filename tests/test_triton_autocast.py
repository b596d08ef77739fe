"""The Triton backend under torch.autocast (bfloat16, float16): the policy of helo_fast._autocast and the 2x rule
against the reference in the same autocast setting (see test_autocast_ops.py for the reference and cpp backends).

Runs on the one device of ``triton_devices()``: the CPU under the Triton interpreter (slow, so the shapes are small)
or CUDA with a GPU.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "helo_fast.kernels.sinkhorn" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import helo_fast as hf  # noqa: E402
from autocast_cases import (ATTENTION_ARGS, LOW_DTYPES, MASKS, assert_backend_within_reference_error,  # noqa: E402
                            attention_call, attention_inputs, low_precision_costs, ot_call, ot_inputs,
                            value_and_grads)
from devices import seeded_weights, triton_module_device  # noqa: E402

DEVICE, _MARKS = triton_module_device("lcd_attention")
pytestmark = _MARKS
SHAPE = (2, 2, 5, 7, 8, (5, 7))  # (batch, heads, lq, lk, dim, bias shape)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("op", ["sinkhorn", "ipot", "gromov_wasserstein"])
def test_ot_ops_in_float32_and_within_reference_error(op, dtype):
    inputs = low_precision_costs(ot_inputs(op, DEVICE, seed=2, gw_size=6), dtype)
    call = ot_call(op)
    with torch.autocast(DEVICE.type, dtype=dtype):
        plan = call("triton", *inputs)
    assert plan.dtype == torch.float32
    assert torch.equal(plan, call("triton", *[t.float() if t is not None else None for t in inputs]))
    weight = seeded_weights(3, *plan.shape, device=DEVICE)
    assert_backend_within_reference_error(call, inputs, weight, DEVICE, dtype, "triton", torch.float32)


@pytest.mark.parametrize("masks", list(MASKS))
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_attention_policy_and_within_reference_error(dtype, masks):
    inputs = attention_inputs(SHAPE, torch.float32, DEVICE, seed=4)
    call = lambda backend, *x: attention_call(backend, *x, **MASKS[masks])  # noqa: E731
    out, grads = value_and_grads(lambda *x: call("triton", *x), inputs, torch.ones(()), (DEVICE.type, dtype))
    cast = [t.to(dtype) if n not in ("ln_weight", "ln_bias") and t is not None else t
            for n, t in zip(ATTENTION_ARGS, inputs)]
    assert out.dtype == dtype and torch.equal(out, call("triton", *cast))
    assert [g.dtype for g in grads] == [t.dtype for t in inputs]
    batch, heads, lq, _, dim, _ = SHAPE
    weight = seeded_weights(5, batch, lq, heads * dim, device=DEVICE)
    assert_backend_within_reference_error(call, cast[:5] + inputs[5:], weight, DEVICE, dtype, "triton", dtype)


@pytest.mark.parametrize("low_input", [False, True], ids=["f32_input", "low_input"])
@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_seeded_dropout_keeps_dtype_and_result(dtype, low_input):
    x = seeded_weights(0, 4, 9, 16, device=DEVICE).to(dtype if low_input else torch.float32)
    with torch.autocast(DEVICE.type, dtype=dtype):
        out = hf.seeded_dropout(x, 0.5, generator=torch.Generator().manual_seed(3), backend="triton")
    assert out.dtype == x.dtype
    assert torch.equal(out, hf.seeded_dropout(x, 0.5, generator=torch.Generator().manual_seed(3), backend="triton"))


@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_custom_op_autocast_kernels_cast_by_argument(dtype):
    """helo_fast::triton_* called directly under autocast: the OT op in float32, the attention's q, k, v in the
    autocast dtype and its LayerNorm parameters in float32."""
    (cost, _, _) = ot_inputs("sinkhorn", DEVICE)[:3]
    with torch.autocast(DEVICE.type, dtype=dtype):
        plan = torch.ops.helo_fast.triton_sinkhorn_fwd(cost.to(dtype), *(torch.full((3, s), 1.0 / s, device=DEVICE)
                                                                         for s in (7, 5)), 0.1, 5, False)[0]
    assert plan.dtype == torch.float32
    q, k, v, bias, residual, ln_weight, ln_bias = attention_inputs(SHAPE, torch.float32, DEVICE)
    args = (None, None, None, 0.3, 0.0, 0.0, 1e-5, True)
    with torch.autocast(DEVICE.type, dtype=dtype):
        out = torch.ops.helo_fast.triton_lcd_attention_fwd(q, k, v, bias, residual, ln_weight, ln_bias, *args)
    low = [t.to(dtype) for t in (q, k, v, bias, residual)]
    assert out.dtype == dtype
    assert torch.equal(out, torch.ops.helo_fast.triton_lcd_attention_fwd(*low, ln_weight, ln_bias, *args))


@pytest.mark.slow
def test_opcheck_attention_ops_with_float32_layer_norm_parameters():
    """The mix autocast passes (bfloat16 activations, float32 LayerNorm parameters; their gradients in float32)."""
    q, k, v, bias, residual, ln_weight, ln_bias = attention_inputs(SHAPE, torch.float32, DEVICE, seed=8)
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v, bias, residual)]
    args = (*low, ln_weight.requires_grad_(), ln_bias.requires_grad_(), None, None, torch.tensor([7]), 0.3, 0.0,
            0.2, 1e-5, True)
    ops = torch.ops.helo_fast
    torch.library.opcheck(ops.triton_lcd_attention_fwd, args)
    out = ops.triton_lcd_attention_fwd(*args)
    bwd_args = (torch.ones_like(out), *[x.detach() for x in args[:6]], None, None, *args[9:])
    grads = ops.triton_lcd_attention_bwd(*bwd_args)
    assert [g.dtype for g in grads[5:]] == [torch.float32] * 2
    torch.library.opcheck(ops.triton_lcd_attention_bwd, bwd_args)
