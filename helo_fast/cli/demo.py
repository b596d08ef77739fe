"""``python -m helo_fast demo`` (``make demo``): a short training of HeLo on the synthetic dataset.

Trains the default-size HeLo with the fused modules (``backend="auto"``) on a small DMER-shaped
synthetic dataset under the subject-dependent protocol, prints the metrics table beside the two
baselines, then measures one training step of the reference model and of the fast model (same
config, batch size and thread count, in this run) and prints the speed-up. ``DEMO`` holds every size.
"""

from __future__ import annotations

import time

import torch

from ..data import make_synthetic_dataset
from ..models import HeLoConfig
from ..training import TrainConfig, format_table, plan_run, run_plan
from .step_timing import median_step_seconds

DEMO = {
    "data": dict(n_subjects=3, trials_per_subject=40, rows_per_trial=5, seed=0),
    # One thread: these tensors are small, and two threads stall badly when the CPU is shared
    # (measured on a busy 2-core machine: ~20 s with one thread, 60-180 s with two).
    "train": dict(protocol="subject-dependent", epochs=20, batch_size=32, seed=3407, device="cpu", threads=1),
}


def run_demo(quiet: bool = False) -> dict:
    """Run the demo and print the table; returns the run's summary (see ``training.run_experiment``)."""
    tic = time.perf_counter()
    dataset = make_synthetic_dataset(**DEMO["data"])
    model_config = HeLoConfig(**dataset.layout.as_config())
    train_config = TrainConfig(**DEMO["train"], quiet=True)
    plan = plan_run(model_config, train_config)  # the device, and the backend each op gets (printed below)
    if not quiet:
        print(
            f"HeLo demo: {dataset.name}, {len(dataset)} rows x {dataset.features.shape[1]} features, "
            f"{len(dataset.subject_ids)} subjects; {train_config.protocol}, {train_config.epochs} epochs, "
            f"batch {train_config.batch_size}, backend {model_config.backend}",
            flush=True,
        )
    summary = run_plan(dataset, plan)
    seconds = sum(split["train_seconds"] for split in summary["splits"])
    print(format_table(summary))
    batch = train_config.batch_size
    reference_s = median_step_seconds(model_config, "reference", batch)
    fast_s = median_step_seconds(model_config, model_config.backend, batch)
    summary["step_seconds"] = {"reference": reference_s, "fast": fast_s, "batch_size": batch}
    ops = plan.backends
    print(
        f"Training step (forward + backward + Adam), B={batch}, {torch.get_num_threads()} CPU thread(s): "
        f"reference {reference_s * 1e3:.1f} ms, fast {fast_s * 1e3:.1f} ms "
        f"(attention: {ops['lcd_attention']}, OT: {ops['gromov_wasserstein']}) -> "
        f"speed-up {reference_s / fast_s:.2f}x"
    )
    if not quiet:
        print(
            f"HeLo training time: {seconds:.1f} s ({model_config.backend} backend); "
            f"total demo time {time.perf_counter() - tic:.1f} s"
        )
    return summary
