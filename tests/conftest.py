"""Suite-wide settings: a fixed, derandomised hypothesis example budget so CI time is bounded."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=int(os.environ.get("HELO_HYPOTHESIS_EXAMPLES", "20")), deadline=None,
                          derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")
