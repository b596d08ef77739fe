"""sinkhorn at HeLo-like sizes: reference (eager), torch.compile(reference), POT, cpp (triton on CUDA); fwd and fwd+bwd.

Group: B=64 n=m=64, 50 iterations, float32. ``saved_bytes`` (fwd+bwd rows) is what autograd keeps for the
backward. POT providers: ``pot`` loops ot.sinkhorn(method="sinkhorn_log", stopThr=-1) over the batch (forward
only, numpy); ``pot_batch`` is ot.solve_batch(method="log_sinkhorn") on the whole batch (torch backend, so it also
has a fwd+bwd). The compile provider takes about a minute to compile on 2 cores, so it runs only with
HELO_BENCH_COMPILE=1.
"""

import numpy as np
import pytest
import torch

import helo_fast as hf
from helo_fast import reference

from .conftest import compiled
from .ot_timing import DTYPE, skip_unavailable, skip_unless_cuda_triton, timed

ot = pytest.importorskip("ot")

SINKHORN = dict(batch=64, n=64, m=64, eps=0.05, n_iters=50)


def sinkhorn_fn(provider):
    eps, n_iters = SINKHORN["eps"], SINKHORN["n_iters"]
    if provider == "compile":
        compiled_fn = compiled(reference.sinkhorn, fullgraph=True)
        return lambda c: compiled_fn(c, eps=eps, n_iters=n_iters, check_finite=False)
    if provider == "pot":

        def pot_loop(c):
            cost = c.detach().cpu().double().numpy()
            u, v = np.full(cost.shape[1], 1 / cost.shape[1]), np.full(cost.shape[2], 1 / cost.shape[2])
            return [
                ot.sinkhorn(u, v, cost[i], eps, method="sinkhorn_log", numItermax=n_iters, stopThr=-1)
                for i in range(cost.shape[0])
            ]

        return pot_loop
    if provider == "pot_batch":
        return lambda c: (
            ot.solve_batch(c, reg=eps, max_iter=n_iters, tol=0.0, method="log_sinkhorn", grad="autodiff").plan
        )
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
    timed(
        benchmark,
        sinkhorn_fn(provider),
        [cost],
        backward,
        op="sinkhorn",
        provider=provider,
        size=f"B={batch} n={n} m={m} it={SINKHORN['n_iters']}",
        batch=batch,
    )


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_bench_sinkhorn_triton(benchmark, device, pass_):
    skip_unless_cuda_triton(device, "sinkhorn")
    test_bench_sinkhorn(benchmark, device, "triton", pass_)
