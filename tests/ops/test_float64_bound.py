"""The README's float64 bound of sinkhorn and ipot as a function of R = max|C|/eps (beta for IPOT): relative to the
largest plan entry, every backend's float64 plan is within FLOAT64_BOUND_ULPS x eps64 x (1 + R) of a 50-digit oracle
(IPOT: times n_iters), at R from 1 to the documented limit 1/eps64 = 4.5e15. (1e-10 therefore holds up to R ~ 1e5.)

Two cost families: uniform in [0, R] (sparse plans at large R) and in [0.9 R, R] (every entry of the plan
moderate, the largest cancellations in the exponents). Measured (HELO_FLOAT64_BOUND_REPORT=1 -s prints them; the
README's table): at most 1.1 x eps64 (1 + R) for Sinkhorn and 5.8 x for IPOT (at R = 1, 30 iterations; <= 0.7 x
from R = 100 on).
"""

import os

import pytest
import torch

import helo_fast as hf
from devices import CPU, backend_params, skip_on_the_triton_interpreter, skip_unless_backend

mpmath = pytest.importorskip("mpmath")
import ot_oracle_mp  # noqa: E402  (needs mpmath)

EPS64 = torch.finfo(torch.float64).eps
FLOAT64_BOUND_ULPS = 4.0
RATIOS = [1.0, 1e2, 1e4, 1e6, 1e8, 1e10, 1e12, 1e14, 1.0 / EPS64]
N, M, N_ITERS = 5, 6, 30


def problem(seed, ratio, family):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(1, N, M, generator=gen, dtype=torch.float64)
    if family == "narrow":
        cost = 0.9 + 0.1 * cost
    cost = cost / cost.max() * ratio  # eps = 1: max|C| / eps = ratio
    a = torch.rand(1, N, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(1, M, generator=gen, dtype=torch.float64) + 0.1
    return cost, a / a.sum(), b / b.sum()


def solve(op, backend, cost, a, b):
    if op == "sinkhorn":
        return hf.sinkhorn(cost, a, b, eps=1.0, n_iters=N_ITERS, grad="none", backend=backend)[0]
    return hf.ipot(cost, a, b, beta=1.0, n_iters=N_ITERS, backend=backend)[0]


def oracle(op, cost, a, b):
    fn = ot_oracle_mp.sinkhorn if op == "sinkhorn" else ot_oracle_mp.ipot
    kwargs = {"eps": 1.0} if op == "sinkhorn" else {"beta": 1.0}
    return fn(cost[0].tolist(), a[0].tolist(), b[0].tolist(), n_iters=N_ITERS, **kwargs)


@pytest.mark.parametrize("family", ["uniform", "narrow"])
@pytest.mark.parametrize("op", ["sinkhorn", "ipot"])
@pytest.mark.parametrize("backend", backend_params())
def test_float64_error_grows_as_eps64_times_max_cost_over_eps(backend, op, family):
    skip_unless_backend(backend, op, CPU)
    skip_on_the_triton_interpreter(backend, CPU, big=family == "narrow")  # one family is enough there
    worst = []
    for ratio in RATIOS:
        bound = FLOAT64_BOUND_ULPS * EPS64 * (1.0 + ratio) * (N_ITERS if op == "ipot" else 1)
        errors = []
        for seed in range(3):
            cost, a, b = problem(seed, ratio, family)
            plan = solve(op, backend, cost, a, b)
            assert bool(torch.isfinite(plan).all())
            errors.append(ot_oracle_mp.relative_error(plan, oracle(op, cost, a, b)))
        assert max(errors) <= bound, f"R = {ratio:.3g}: relative error {max(errors):.3g} > {bound:.3g}"
        worst.append((ratio, max(errors)))
    if os.environ.get("HELO_FLOAT64_BOUND_REPORT"):
        print(
            f"\n{backend} {op} {family}: "
            + ", ".join(f"R={r:.0e}: {e:.2g} ({e / (EPS64 * (1 + r)):.2f})" for r, e in worst)
        )
