"""Does bf16-mixed training reach the metrics of full-precision training? (issue 19)

    python -m benchmarks.precision_accuracy [--out benchmarks/results/<machine>/PRECISION_ACCURACY.md]

Trains the fast HeLo twice on the demo's synthetic dataset and protocol (``helo_fast.cli.demo.DEMO``: same data,
splits, seed, epochs, batch size and thread count), once with ``precision="32"`` and once with
``"bf16-mixed"``, and writes both metric tables and, per metric, the relative difference
|bf16 - fp32| / |fp32| of the means over the splits. The bar is 2% on Chebyshev. Every number in the
output comes from these two runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from helo_fast.cli.demo import DEMO
from helo_fast.data import make_synthetic_dataset
from helo_fast.metrics import METRIC_NAMES
from helo_fast.models import HeLoConfig
from helo_fast.training import TrainConfig, format_table, run_experiment

PRECISIONS = ("32", "bf16-mixed")
CHEBYSHEV_BAR = 0.02  # relative


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_in(precision: str) -> tuple:
    """(summary, seconds) of the demo's training run in ``precision``."""
    dataset = make_synthetic_dataset(**DEMO["data"])
    config = TrainConfig(**DEMO["train"], quiet=True, baselines=False, precision=precision)
    tic = time.perf_counter()
    summary = run_experiment(dataset, HeLoConfig(**dataset.layout.as_config()), config)
    return summary, time.perf_counter() - tic


def relative_differences(fp32: dict, bf16: dict) -> dict:
    """|bf16 - fp32| / |fp32| of each metric's mean over the splits."""
    return {
        m: abs(bf16["helo"][m]["mean"] - fp32["helo"][m]["mean"]) / abs(fp32["helo"][m]["mean"]) for m in METRIC_NAMES
    }


def report(runs: dict) -> str:
    """Markdown: the setting, both tables, the relative differences and the verdict on the Chebyshev bar."""
    fp32, bf16 = (runs[p][0] for p in PRECISIONS)
    diffs = relative_differences(fp32["summary"], bf16["summary"])
    lines = [
        "# bf16-mixed vs full-precision training (fast HeLo)",
        "",
        f"Machine: {platform.node()}, CPU {cpu_name()}, "
        f"torch {torch.__version__}, {DEMO['train']['threads']} thread(s).",
        f"Data: `make_synthetic_dataset({', '.join(f'{k}={v}' for k, v in DEMO['data'].items())})`; "
        f"training: {', '.join(f'{k}={v}' for k, v in DEMO['train'].items())} (the demo's settings).",
        "",
    ]
    for precision in PRECISIONS:
        summary, seconds = runs[precision]
        lines += [f"## precision {precision} ({seconds:.1f} s)", "", "```", format_table(summary), "```", ""]
    lines += [
        "## Relative difference of the means, |bf16 - fp32| / |fp32|",
        "",
        "| " + " | ".join(METRIC_NAMES) + " |",
        "|" + "---|" * len(METRIC_NAMES),
        "| " + " | ".join(f"{100 * diffs[m]:.2f}%" for m in METRIC_NAMES) + " |",
        "",
        f"Chebyshev: {100 * diffs['chebyshev']:.2f}% (bar {100 * CHEBYSHEV_BAR:.0f}%): "
        f"{'within' if diffs['chebyshev'] <= CHEBYSHEV_BAR else 'NOT within'} the bar.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the markdown report here (default: print only)")
    args = parser.parse_args()
    runs = {precision: train_in(precision) for precision in PRECISIONS}
    text = report(runs)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
