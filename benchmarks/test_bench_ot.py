"""The OT ops at HeLo's sizes: reference (eager), torch.compile(reference), POT, cpp; fwd and fwd+bwd.

Groups: sinkhorn B=64 n=m=64 50 iterations; HeLo's GW step B=128 n=m=36 (5 outer x 20 inner IPOT);
the same GW step at B=4096 on CUDA only. float32. On CUDA the GW groups also time ``io_floor``: one
elementwise op that reads cs and ct once and writes a plan-sized result once, the fewest bytes any GW
kernel must move (issue #4 asks for the step within 2x of it at B=4096). ``saved_bytes`` (fwd+bwd rows)
is what autograd keeps for the backward. POT providers: ``pot`` loops
ot.sinkhorn(method="sinkhorn_log", stopThr=-1) over the batch (forward only, numpy); ``pot_batch`` is
ot.solve_batch(method="log_sinkhorn") on the whole batch (torch backend, so it also has a fwd+bwd). The
compile provider takes about a minute per size to compile on 2 cores, so it runs only with
HELO_BENCH_COMPILE=1.
"""
import os

import numpy as np
import pytest
import torch

import helo_fast as hf
from helo_fast import _backend, reference

from .conftest import compiled, input_sets, record, rotating, synchronized
from .memory import saved_tensor_bytes

ot = pytest.importorskip("ot")

DTYPE = torch.float32
COMPILE = os.environ.get("HELO_BENCH_COMPILE") == "1"
SINKHORN = dict(batch=64, n=64, m=64, eps=0.05, n_iters=50)
GW_SIZES = {"B=128 n=36": 128, "B=4096 n=36": 4096}
GW = dict(n=36, eps=0.1, outer_iters=5, inner_iters=20)


def skip_unavailable(provider, device, op):
    if provider == "compile" and not COMPILE:
        pytest.skip("set HELO_BENCH_COMPILE=1 for the torch.compile provider")
    if provider in ("cpp", "triton") and _backend.unavailable_reason(provider, device, op) is not None:
        pytest.skip(_backend.unavailable_reason(provider, device, op))


def timed(benchmark, fn, inputs, backward, **record_kwargs):
    """Time fn(*inputs) (no_grad) or fn(*inputs).backward(w) (inputs rotated on CUDA); record saved bytes."""
    extra = {}
    if backward:
        extra["saved_bytes"] = saved_tensor_bytes(fn, *inputs)
        weight = torch.randn_like(fn(*inputs).detach())

        def step(*args):
            for t in args:
                t.grad = None
            fn(*args).backward(weight)
    else:
        def step(*args):
            with torch.no_grad():
                return fn(*args)

    record(benchmark, pass_="fwd+bwd" if backward else "fwd", dtype=DTYPE, **record_kwargs, **extra)
    benchmark(synchronized(rotating(step, input_sets(inputs))))


# ---- sinkhorn ---------------------------------------------------------------------------------
def sinkhorn_fn(provider):
    eps, n_iters = SINKHORN["eps"], SINKHORN["n_iters"]
    if provider == "compile":
        compiled_fn = compiled(reference.sinkhorn, fullgraph=True)
        return lambda c: compiled_fn(c, eps=eps, n_iters=n_iters, check_finite=False)
    if provider == "pot":
        def pot_loop(c):
            cost = c.detach().cpu().double().numpy()
            u, v = np.full(cost.shape[1], 1 / cost.shape[1]), np.full(cost.shape[2], 1 / cost.shape[2])
            return [ot.sinkhorn(u, v, cost[i], eps, method="sinkhorn_log", numItermax=n_iters, stopThr=-1)
                    for i in range(cost.shape[0])]
        return pot_loop
    if provider == "pot_batch":
        return lambda c: ot.solve_batch(c, reg=eps, max_iter=n_iters, tol=0.0, method="log_sinkhorn",
                                        grad="autodiff").plan
    return lambda c: hf.sinkhorn(c, eps=eps, n_iters=n_iters, backend=provider, check_finite=False)


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["reference", "compile", "pot", "pot_batch", "cpp"])
def test_bench_sinkhorn(benchmark, device, provider, pass_):
    skip_unavailable(provider, device, "sinkhorn")
    backward = pass_ == "fwd+bwd"
    if provider == "pot" and backward:
        pytest.skip("POT's numpy sinkhorn has no backward")
    batch, n, m = SINKHORN["batch"], SINKHORN["n"], SINKHORN["m"]
    cost = torch.rand(batch, n, m, generator=torch.Generator().manual_seed(0), dtype=DTYPE).to(device)
    cost.requires_grad_(backward)
    timed(benchmark, sinkhorn_fn(provider), [cost], backward, op="sinkhorn", provider=provider,
          size=f"B={batch} n={n} m={m} it={SINKHORN['n_iters']}", batch=batch)


# ---- gromov_wasserstein (HeLo's OT step) --------------------------------------------------------
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
    timed(benchmark, gw_fn(provider), inputs, backward, op="gromov_wasserstein", provider=provider,
          size=f"{size} outer={GW['outer_iters']} inner={GW['inner_iters']}", batch=batch)


# ---- triton provider (owned by the Triton backend; CUDA only: the CPU interpreter is not worth timing) ----
def skip_unless_cuda_triton(device, op):
    if device.type != "cuda" or _backend.unavailable_reason("triton", device, op) is not None:
        pytest.skip("the triton provider is timed on CUDA only")


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_bench_sinkhorn_triton(benchmark, device, pass_):
    skip_unless_cuda_triton(device, "sinkhorn")
    test_bench_sinkhorn(benchmark, device, "triton", pass_)


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("size", list(GW_SIZES))
def test_bench_gromov_wasserstein_triton(benchmark, device, size, pass_):
    skip_unless_cuda_triton(device, "gromov_wasserstein")
    test_bench_gromov_wasserstein(benchmark, device, "triton", size, pass_)
