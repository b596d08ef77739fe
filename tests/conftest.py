"""Suite-wide settings: a fixed, derandomised hypothesis example budget so CI time is bounded; the one backends
fixture, ``fast_backend``; the guard that makes an OT op module fail to collect when it misses a test of the shared
suite (support/ot_solver_suite.py).

Where a new test goes (the folders mirror the code):
- ops/: one op's behaviour in ``ops/test_<op>.py``, for each public op of helo_fast (sinkhorn, ipot,
  gromov_wasserstein, lcd_attention, seeded_dropout, sinkhorn_cost, gromov_wasserstein_cost); one property across the
  ops in ``ops/test_<property>.py`` (autocast, convergence, determinism, domain_sweep, float64_bound, interrupt,
  openmp_runtime, peers, random_problems, transforms, triton_launch_cases, validation).
- model/: the HeLo model, its fast modules, metrics.  training/: the training loop, checkpoints, precision, data.
- cli/: the ``helo-fast`` command line.  repo/: checks of the repository itself (docs, builds, benchmarks, audits).
- support/: helpers only (devices, tolerance, oracles, cases, crafted files, subprocess workers), on sys.path through
  pyproject's ``pythonpath``; test files import them (``from devices import ...``) and never import each other."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton tests run on the CPU interpreter (as `make test` sets it), also when one file is run alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from devices import fast_backend_params, skip_unless_backend  # noqa: E402  (imports helo_fast: after the line above)
from ot_solver_suite import shared_tests_missing  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("HELO_HYPOTHESIS_EXAMPLES", "20")),
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


@pytest.fixture(params=fast_backend_params())
def fast_backend(request):
    """(backend, device) of a fast backend that runs the test module's ``OP`` (skipped, saying why, where it cannot)."""
    backend, device = request.param
    skip_unless_backend(backend, request.module.OP, device)
    return backend, device


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Fail the collection of an op module that does not collect every test of the shared OT suite (a test left out
    of its import list would otherwise never run for that op). Checks what the module collected, before any -k or
    node-id selection, so it holds however the tests are chosen."""
    report = yield
    if isinstance(collector, pytest.Module) and report.passed:
        missing = shared_tests_missing(collector.obj, [getattr(item, "function", None) for item in report.result])
        if missing:
            report.outcome = "failed"
            report.longrepr = (
                f"{collector.path.name} (OP = {collector.obj.OP!r}) does not collect these tests of "
                f"ot_solver_suite.py: {', '.join(missing)}; add them to its import list"
            )
    return report
