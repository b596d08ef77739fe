"""benchmarks/precision_accuracy.py: the relative differences and the verdict come from the two runs' summaries."""

from benchmarks import precision_accuracy
from helo_fast.metrics import METRIC_NAMES


def summary(chebyshev):
    means = {m: 0.5 for m in METRIC_NAMES}
    means["chebyshev"] = chebyshev
    return {
        "summary": {"helo": {m: {"mean": v, "std": 0.0} for m, v in means.items()}},
        "models": {"helo": "HeLo"},
        "n_splits": 1,
    }


def test_relative_differences_of_the_means():
    diffs = precision_accuracy.relative_differences(summary(0.20)["summary"], summary(0.21)["summary"])
    assert abs(diffs["chebyshev"] - 0.05) < 1e-12
    assert all(diffs[m] == 0.0 for m in METRIC_NAMES if m != "chebyshev")


def test_report_says_whether_chebyshev_is_within_the_bar():
    within = precision_accuracy.report({"32": (summary(0.200), 1.0), "bf16-mixed": (summary(0.203), 1.0)})
    outside = precision_accuracy.report({"32": (summary(0.200), 1.0), "bf16-mixed": (summary(0.210), 1.0)})
    assert "Chebyshev: 1.50% (bar 2%): within the bar." in within
    assert "Chebyshev: 5.00% (bar 2%): NOT within the bar." in outside
