"""HeLo's Gromov-Wasserstein step: reference (eager), torch.compile(reference), cpp (triton on CUDA); fwd and fwd+bwd.

Groups: B=128 n=m=36 (5 outer x 20 inner IPOT); the same step at B=4096 on CUDA only. float32. On CUDA the groups
also time ``io_floor``: one elementwise op that reads cs and ct once and writes a plan-sized result once, the
fewest bytes any GW kernel must move (issue #4 asks for the step within 2x of it at B=4096). ``saved_bytes``
(fwd+bwd rows) is what autograd keeps for the backward. The compile provider takes about a minute per size to
compile on 2 cores, so it runs only with HELO_BENCH_COMPILE=1.
"""

import pytest
import torch

import helo_fast as hf
from helo_fast import reference

from .conftest import compiled
from .ot_timing import DTYPE, skip_unavailable, skip_unless_cuda_triton, timed

GW_SIZES = {"B=128 n=36": 128, "B=4096 n=36": 4096}
GW = dict(n=36, eps=0.1, outer_iters=5, inner_iters=20)


def gw_fn(provider):
    if provider == "io_floor":
        return torch.add  # reads cs and ct, writes B x n x m (n = m): the GW step's compulsory traffic
    kwargs = dict(eps=GW["eps"], outer_iters=GW["outer_iters"], inner_iters=GW["inner_iters"], grad="unrolled")
    if provider == "compile":
        compiled_fn = compiled(reference.gromov_wasserstein, fullgraph=True)
        return lambda cs, ct: compiled_fn(cs, ct, check_finite=False, **kwargs)
    return lambda cs, ct: hf.gromov_wasserstein(cs, ct, backend=provider, check_finite=False, **kwargs)


def structure(gen, batch, n, device):
    x = torch.randn(batch, n, 16, generator=gen)
    d = 1 - torch.nn.functional.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1)
    tau = d.amin((1, 2), keepdim=True) + 0.1 * (d.amax((1, 2), keepdim=True) - d.amin((1, 2), keepdim=True))
    return torch.relu(d - tau).to(device=device, dtype=DTYPE)


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("size", list(GW_SIZES))
@pytest.mark.parametrize("provider", ["reference", "compile", "io_floor", "cpp"])
def test_bench_gromov_wasserstein(benchmark, device, provider, size, pass_):
    skip_unavailable(provider, device, "gromov_wasserstein")
    if provider == "io_floor" and (device.type != "cuda" or pass_ != "fwd"):
        pytest.skip("the memory-traffic floor is timed for the CUDA forward only")
    batch = GW_SIZES[size]
    if batch > 128 and device.type != "cuda":
        pytest.skip("the B=4096 GW step is timed on CUDA only")
    backward = pass_ == "fwd+bwd"
    gen = torch.Generator().manual_seed(0)
    cs, ct = structure(gen, batch, GW["n"], device), structure(gen, batch, GW["n"], device)
    inputs = [cs.requires_grad_(backward), ct.requires_grad_(backward)]
    timed(
        benchmark,
        gw_fn(provider),
        inputs,
        backward,
        op="gromov_wasserstein",
        provider=provider,
        size=f"{size} outer={GW['outer_iters']} inner={GW['inner_iters']}",
        batch=batch,
    )


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("size", list(GW_SIZES))
def test_bench_gromov_wasserstein_triton(benchmark, device, size, pass_):
    skip_unless_cuda_triton(device, "gromov_wasserstein")
    test_bench_gromov_wasserstein(benchmark, device, "triton", size, pass_)
