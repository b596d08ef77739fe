"""Suite-wide settings: a fixed, derandomised hypothesis example budget so CI time is bounded; the one backends
fixture, ``fast_backend``."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton tests run on the CPU interpreter (as `make test` sets it), also when one file is run alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from devices import fast_backend_params, skip_unless_backend  # noqa: E402  (imports helo_fast: after the line above)

settings.register_profile("ci", max_examples=int(os.environ.get("HELO_HYPOTHESIS_EXAMPLES", "20")), deadline=None,
                          derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(params=fast_backend_params())
def fast_backend(request):
    """(backend, device) of a fast backend that runs the test module's ``OP`` (skipped, saying why, where it cannot)."""
    backend, device = request.param
    skip_unless_backend(backend, request.module.OP, device)
    return backend, device
