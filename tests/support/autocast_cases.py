"""Inputs, calls and the 2x-reference-error check of the autocast tests (tests/ops/test_autocast.py)."""

import pytest
import torch

import helo_fast as hf
from lcd_attention_cases import attention_case
from ot_cases import ot_problem
from tolerance import assert_within_reference_error

LOW_DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="f16")]
ATTENTION_ARGS = ("q", "k", "v", "bias", "residual", "ln_weight", "ln_bias")
MASKS = {"p0": {}, "seeded": dict(dropkey_p=0.5, dropout_p=0.3)}


def value_and_grads(fn, inputs, weight, autocast=None):
    """fn(*inputs) (under ``autocast`` = (device type, dtype) when given) and the gradients of
    sum(out * weight) w.r.t. every floating input (computed outside autocast, as training does)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None for t in inputs]
    if autocast is None:
        out = fn(*leaves)
    else:
        with torch.autocast(autocast[0], dtype=autocast[1]):
            out = fn(*leaves)
    wrt = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad((out.double() * weight).sum(), wrt)
    return out.detach(), grads


def assert_backend_within_reference_error(fn, inputs, weight, device, dtype, backend, out_dtype):
    """``fn(backend, *inputs)`` under autocast vs the reference under the same autocast (2x rule, against float64)."""
    out, grads = value_and_grads(lambda *x: fn(backend, *x), inputs, weight, (device.type, dtype))
    ref, ref_grads = value_and_grads(lambda *x: fn("reference", *x), inputs, weight, (device.type, dtype))
    ref64, ref_grads64 = value_and_grads(
        lambda *x: fn("reference", *x), [t.double() if t is not None else None for t in inputs], weight
    )
    assert out.dtype == out_dtype
    assert_within_reference_error(out.cpu(), ref64.cpu(), ref.cpu())
    given = [t for t in inputs if t is not None]
    for grad, ref_grad, ref_grad64, t in zip(grads, ref_grads, ref_grads64, given):
        assert grad.dtype == t.dtype  # autograd brings every gradient back to its input's dtype
        assert_within_reference_error(grad.cpu(), ref_grad64.cpu(), ref_grad.cpu())


def ot_call(op):
    """(backend, *tensors) -> plan of the public op ``op`` with grad="unrolled" (HeLo-like eps)."""
    if op == "gromov_wasserstein":
        return lambda backend, cs, ct, a, b: hf.gromov_wasserstein(
            cs, ct, a, b, eps=0.1, outer_iters=3, inner_iters=10, grad="unrolled", backend=backend
        )
    fn, reg = (hf.sinkhorn, "eps") if op == "sinkhorn" else (hf.ipot, "beta")
    return lambda backend, cost, a, b: fn(cost, a, b, n_iters=15, grad="unrolled", backend=backend, **{reg: 0.1})


def ot_inputs(op, device, seed=0, gw_size=36):
    """float64 inputs of ``op``: costs (gromov_wasserstein: structure matrices, n = m = ``gw_size``, HeLo's 36 by
    default), then the marginals a, b."""
    if op != "gromov_wasserstein":
        return list(ot_problem(seed, 3, 7, 5, device=device))
    gen = torch.Generator().manual_seed(seed)
    cs, ct = (torch.rand(2, gw_size, gw_size, generator=gen, dtype=torch.float64) for _ in range(2))
    _, a, b = ot_problem(seed, 2, gw_size, gw_size)
    return [t.to(device) for t in (cs + cs.transpose(1, 2), ct + ct.transpose(1, 2), a, b)]


def low_precision_costs(inputs, dtype):
    """The costs (structure matrices) in ``dtype`` and uniform marginals (None), as HeLo calls the ops: non-uniform
    marginals rounded to bfloat16 differ in mass by ~1e-3 (float32 ones by ~1e-8 once in float64), which
    validation refuses."""
    *costs, _, _ = inputs
    return [t.to(dtype) for t in costs] + [None, None]


def attention_call(backend, q, k, v, bias, residual, ln_weight, ln_bias, **masks):
    return hf.lcd_attention(
        q,
        k,
        v,
        bias,
        residual=residual,
        ln_weight=ln_weight,
        ln_bias=ln_bias,
        backend=backend,
        generator=torch.Generator().manual_seed(11),
        **masks,
    )


def attention_inputs(shape, qkv_dtype, device, seed=0):
    """HeLo-like attention inputs of ``shape`` = (batch, heads, lq, lk, dim, bias shape): q, k, v in ``qkv_dtype``
    (what Linear layers give under autocast: the autocast dtype), bias, residual and LayerNorm parameters in float32
    (activations and parameters)."""
    batch, heads, lq, lk, dim, bias_shape = shape
    tensors = attention_case(seed, batch, heads, lq, lk, dim, bias_shape, device=device)
    return [
        tensors[n].to(qkv_dtype if n in ("q", "k", "v") else torch.float32) if tensors[n] is not None else None
        for n in ATTENTION_ARGS
    ]
