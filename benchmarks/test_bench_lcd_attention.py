"""lcd_attention at HeLo's three call sites: reference (eager), torch.compile(reference), SDPA, cpp.

All providers compute the same function with DropKey/dropout off (p = 0): SDPA has no DropKey, so a
timing with masks would not compare like with like. SDPA's provider is SDPA with the bias as attn_mask,
then the residual add and F.layer_norm. The compile provider takes about a minute per shape to compile on
2 cores, so it runs only with HELO_BENCH_COMPILE=1.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import helo_fast as hf
from helo_fast import _backend, reference

from .conftest import compiled, input_sets, record, rotating, synchronized
from .memory import saved_tensor_bytes

DTYPE = torch.float32
# name -> (heads, lq, lk, dim, bias shape, bias_before_scale)
SHAPES = {
    "ca": (4, 18, 18, 32, None, True),
    "transformer": (4, 36, 36, 32, None, True),
    "lcd_ca": (1, 10, 10, 128, (10, 10), True),
}
BATCHES = (128, 4096)
PROVIDERS = ["reference", "sdpa", "cpp"] + (["compile"] if os.environ.get("HELO_BENCH_COMPILE") == "1" else [])


def make_inputs(shape, batch, device, requires_grad):
    heads, lq, lk, dim, bias_shape, _ = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)

    def rand(*size):
        return torch.randn(*size, generator=gen, dtype=DTYPE).to(device).requires_grad_(requires_grad)

    return dict(
        q=rand(batch, heads, lq, dim),
        k=rand(batch, heads, lk, dim),
        v=rand(batch, heads, lk, dim),
        bias=rand(*bias_shape) if bias_shape is not None else None,
        residual=rand(batch, lq, heads * dim),
        ln_weight=rand(heads * dim),
        ln_bias=rand(heads * dim),
    )


def sdpa_attention(q, k, v, bias, *, residual, ln_weight, ln_bias, bias_before_scale):
    """The same function from stock ops: SDPA (bias as attn_mask), residual add, layer_norm."""
    batch, heads, lq, dim = q.shape
    scale = dim**-0.5
    mask = None if bias is None else (bias * scale if bias_before_scale else bias)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    out = out.transpose(1, 2).reshape(batch, lq, heads * dim) + residual
    return F.layer_norm(out, (heads * dim,), ln_weight, ln_bias)


def provider_fn(provider, bias_before_scale):
    if provider == "sdpa":
        return lambda q, k, v, bias, **kw: sdpa_attention(q, k, v, bias, bias_before_scale=bias_before_scale, **kw)
    if provider == "compile":
        compiled_fn = compiled(reference.lcd_attention, fullgraph=True)
        return lambda q, k, v, bias, **kw: compiled_fn(
            q, k, v, bias, bias_before_scale=bias_before_scale, check_finite=False, **kw
        )
    return lambda q, k, v, bias, **kw: hf.lcd_attention(
        q, k, v, bias, bias_before_scale=bias_before_scale, backend=provider, check_finite=False, **kw
    )


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_lcd_attention(benchmark, device, provider, shape, batch, pass_):
    if provider == "cpp" and _backend.unavailable_reason("cpp", device, "lcd_attention") is not None:
        pytest.skip(_backend.unavailable_reason("cpp", device, "lcd_attention"))
    backward = pass_ == "fwd+bwd"
    inputs = make_inputs(shape, batch, device, requires_grad=backward)
    fn = provider_fn(provider, SHAPES[shape][5])
    names = list(inputs)

    def call(*tensors):
        t = dict(zip(names, tensors))
        return fn(
            t["q"], t["k"], t["v"], t["bias"], residual=t["residual"], ln_weight=t["ln_weight"], ln_bias=t["ln_bias"]
        )

    extra = {}
    if backward:
        q = inputs["q"]
        grad = torch.randn(q.shape[0], q.shape[2], q.shape[1] * q.shape[3], dtype=DTYPE, device=device)
        extra["saved_bytes"] = saved_tensor_bytes(call, *inputs.values())

        def step(*tensors):
            for t in tensors:
                if t is not None:
                    t.grad = None
            call(*tensors).backward(grad)
    else:

        def step(*tensors):
            with torch.no_grad():
                return call(*tensors)

    record(
        benchmark,
        op="lcd_attention",
        provider=provider,
        pass_=pass_,
        size=f"{shape} B={batch}",
        batch=batch,
        dtype=DTYPE,
        **extra,
    )
    benchmark(synchronized(rotating(step, input_sets(list(inputs.values())))))


# ---- triton provider (owned by the Triton backend; CUDA only: the CPU interpreter is not worth timing) ----
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bench_lcd_attention_triton(benchmark, device, shape, batch, pass_):
    if device.type != "cuda" or _backend.unavailable_reason("triton", device, "lcd_attention") is not None:
        pytest.skip("the triton provider is timed on CUDA only")
    test_bench_lcd_attention(benchmark, device, "triton", shape, batch, pass_)
