"""seeded_dropout at HeLo's FFN dropout (B = 128 and 1024: [2B, 36, 128] after the second Linear, p = 0.5) and at
the FFN's hidden width ([2B, 36, 64], a second size; HeLo has no dropout there): reference (the counter hash in
PyTorch ops), torch.compile(reference) (HELO_BENCH_COMPILE=1), the peer ``torch_dropout`` (``F.dropout``: the same
distribution from torch's own Bernoulli draws, so different masks), cpp, and triton on CUDA. Forward, and
forward+backward."""

import pytest
import torch
import torch.nn.functional as F

import helo_fast as hf
from helo_fast import _backend, reference

from .conftest import COMPILE, DEVICE, compiled, input_sets, record, rotating, synchronized

DTYPE = torch.float32
P = 0.5
SHAPES = {"ffn_hidden": (36, 64), "ffn_out": (36, 128)}
BATCHES = (128, 1024)
PROVIDERS = ["reference", "torch_dropout", "cpp", "triton"] + (["compile"] if COMPILE else [])


def provider_fn(provider):
    if provider == "torch_dropout":
        return lambda x, gen: F.dropout(x, P, training=True)
    if provider == "compile":
        compiled_fn = compiled(reference.seeded_dropout, fullgraph=False, dynamic=False)
        return lambda x, gen: compiled_fn(x, P, generator=gen)
    if provider == "reference":
        return lambda x, gen: reference.seeded_dropout(x, P, generator=gen)
    return lambda x, gen: hf.seeded_dropout(x, P, generator=gen, backend=provider)


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_seeded_dropout(benchmark, provider, shape, batch, pass_):
    if provider in ("cpp", "triton") and (reason := _backend.unavailable_reason(provider, DEVICE, "seeded_dropout")):
        pytest.skip(reason)
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("the triton provider is timed on CUDA only")
    backward = pass_ == "fwd+bwd"
    x = torch.randn(2 * batch, *SHAPES[shape], generator=torch.Generator().manual_seed(0), dtype=DTYPE).to(DEVICE)
    x.requires_grad_(backward)
    grad = torch.randn_like(x)
    fn, gen = provider_fn(provider), torch.Generator().manual_seed(1)

    def step(t):
        if backward:
            t.grad = None
            fn(t, gen).backward(grad)
        else:
            with torch.no_grad():
                fn(t, gen)

    record(
        benchmark,
        op="seeded_dropout",
        provider=provider,
        pass_=pass_,
        size=f"{shape} B={batch} p={P}",
        batch=batch,
        dtype=DTYPE,
    )
    benchmark(synchronized(rotating(step, input_sets([x]))))
