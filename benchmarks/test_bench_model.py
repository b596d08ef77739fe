"""One HeLo training step (forward, backward, Adam) at the default size: reference eager,
torch.compile(reference) (HELO_BENCH_COMPILE=1; its first call, the compile, is reported apart as first_call_s), and
the fast model (fused ops, backend "auto"), each in
full precision ("32") and bf16-mixed (autocast; "16-mixed" too on CUDA), as ``helo-fast train --precision`` runs it."""

import time

import pytest
import torch

from benchmarks.conftest import COMPILE, DEVICE, compiled, record, synchronized
from helo_fast._backend import choose_backend
from helo_fast.cli.step_timing import synthetic_batch
from helo_fast.models import HeLo, HeLoConfig
from helo_fast.training.precision import grad_scaler, slow_bf16_reason
from helo_fast.training.step import make_optimizer, train_step

BATCHES = [128, 1024]
PRECISIONS = ["32", "bf16-mixed"] + (["16-mixed"] if DEVICE.type == "cuda" else [])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("provider", ["reference", "compile", "fast"])
def test_bench_training_step(benchmark, device, provider, precision, batch):
    if provider == "compile" and not COMPILE:
        pytest.skip("set HELO_BENCH_COMPILE=1 for the torch.compile provider")
    if precision == "bf16-mixed" and slow_bf16_reason(device) is not None:
        pytest.skip(f"bf16-mixed not timed: {slow_bf16_reason(device)}")
    config = HeLoConfig()
    torch.manual_seed(0)
    model = HeLo(config, backend="reference" if provider != "fast" else "auto", mask_seed=0).to(device).train()
    optimizer = make_optimizer(model)
    scaler = grad_scaler(precision, device)
    x, y = synthetic_batch(config, batch, device=device)
    # dynamic=False: with symbolic shapes, inductor (torch 2.13, CPU) vectorises the reference's int64 mask hash
    # (helo_fast/_rng.py) as float and the generated C++ does not compile. .config reaches the wrapped model.
    step_model = compiled(model, dynamic=False) if provider == "compile" else model
    # The fast model is reported under the backend "auto" picked here (cpp on CPU when built).
    label = choose_backend("auto", device, "gromov_wasserstein") if provider == "fast" else provider
    record(
        benchmark,
        op="helo_training_step",
        provider=label,
        pass_="fwd+bwd+adam",
        size=f"B={batch} default config",
        batch=batch,
        dtype=torch.float32,
        precision=precision,
    )
    step = synchronized(lambda: train_step(step_model, optimizer, x, y, precision=precision, scaler=scaler))
    # The first call (torch.compile's compile, the kernels' first-touch allocations) is reported apart from the
    # steady steps that pytest-benchmark times.
    tic = time.perf_counter()
    step()
    benchmark.extra_info["first_call_s"] = time.perf_counter() - tic
    benchmark.pedantic(step, rounds=5 if batch <= 128 else 3, warmup_rounds=1)
