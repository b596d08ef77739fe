"""Suite-wide settings: a fixed, derandomised hypothesis example budget so CI time is bounded; the one backends
fixture, ``fast_backend``; the guard that makes an OT op module fail to collect when it misses a test of the shared
suite (ot_solver_suite.py)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton tests run on the CPU interpreter (as `make test` sets it), also when one file is run alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from devices import fast_backend_params, skip_unless_backend  # noqa: E402  (imports helo_fast: after the line above)
from ot_solver_suite import shared_tests_missing  # noqa: E402

settings.register_profile("ci", max_examples=int(os.environ.get("HELO_HYPOTHESIS_EXAMPLES", "20")), deadline=None,
                          derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
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
            report.longrepr = (f"{collector.path.name} (OP = {collector.obj.OP!r}) does not collect these tests of "
                               f"ot_solver_suite.py: {', '.join(missing)}; add them to its import list")
    return report
