"""The size of the hypothesis domain sweeps (tests/ops/test_domain_sweep.py, tests/ops/test_seeded_dropout.py):
HELO_SWEEP=ci (default: derandomized, the same examples every run, within CI's budget) or HELO_SWEEP=nightly (20x the
examples, a fresh draw each run; failures are kept in .hypothesis/ and replayed first)."""

import os

from hypothesis import HealthCheck, settings

SWEEP = os.environ.get("HELO_SWEEP", "ci")
if SWEEP not in ("ci", "nightly"):
    raise ValueError(f"HELO_SWEEP must be 'ci' or 'nightly', got {SWEEP!r}")
SCALE = 1 if SWEEP == "ci" else 20


def sweep_settings(examples: int):
    """hypothesis settings for ``examples`` examples at the CI size (SCALE times that at the nightly size)."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SWEEP == "ci",
        database=None if SWEEP == "ci" else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
