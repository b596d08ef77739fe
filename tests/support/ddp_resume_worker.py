"""Run by test_distributed under torchrun: a tiny run with DropKey/dropout on (the defaults), optionally
stopped right after the checkpoint of an epoch (as a kill there would), or resumed from it.

Usage: torchrun ... ddp_resume_worker.py CHECKPOINT_DIR OUTPUT_JSON [--stop-after EPOCH] [--resume]
"""

import argparse
import glob
import os
import sys

from helo_fast.data import make_synthetic_dataset
from helo_fast.models import HeLoConfig
from helo_fast.training import TrainConfig, run_experiment
from training_cases import LAYOUT  # this file's folder is on sys.path: torchrun runs it as a script


class Stop(Exception):
    pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("output_json")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    data = make_synthetic_dataset(n_subjects=2, trials_per_subject=6, rows_per_trial=4, layout=LAYOUT, seed=1)
    model = HeLoConfig(
        **LAYOUT.as_config(), d_model=16, n_heads=2, ffn_dim=16, head_hidden=16, outer_iters=2, inner_iters=3
    )
    cfg = TrainConfig(
        epochs=3,
        batch_size=8,
        seed=2,
        device="cpu",
        threads=1,
        quiet=True,
        baselines=False,
        max_splits=1,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=1,
        resume=args.resume,
        output_json=args.output_json,
    )

    def stop(split, done, record):
        if done == args.stop_after:
            raise Stop

    try:
        run_experiment(data, model, cfg, on_epoch_end=stop)
    except Stop:
        pass
    # The run destroyed its process group, joining gloo's threads: one still alive could take the GIL while the
    # interpreter finalizes, which aborts the process (it did, now and then, under DistributedDataParallel).
    left = [name for name in thread_names() if "gloo" in name]
    if left:
        sys.exit(f"rank {os.environ.get('RANK')}: gloo threads outlived the run: {left}")


def thread_names():
    """This process's thread names (Linux); empty elsewhere."""
    return [open(path).read().strip() for path in glob.glob("/proc/self/task/*/comm")]


if __name__ == "__main__":
    main()
