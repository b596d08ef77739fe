"""``helo-fast`` command line: ``train``, ``eval`` and ``demo`` (also ``python -m helo_fast``).

Errors the user can fix (missing dataset path, wrong file layout, bad option value, unusable device
or backend, output path that cannot be written) print one line ``helo-fast: error: ...`` naming the
option or file and exit with status 2, argparse's own errors included; the options are checked
before any training. Ctrl-C prints one line and exits with status 130 (the last checkpoint stays intact).
"""

from __future__ import annotations

import glob
import os
import sys
from typing import List, Optional

import torch

from ..data import load_dataset
from ..training import evaluate_saved_models, format_table, run_plan, write_json
from ..training.checkpoint import previous_path
from ..training.experiment import CHECKPOINT_NAME
from .checks import check_eval_options, check_train_options
from .parser import EXIT_USAGE, PROG, build_parser

EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's status for Ctrl-C


def dataset_from_args(args, subjects: Optional[list]):
    """The EmotionDataset named by the data options (``subjects``: the checked --subjects); ValueError /
    FileNotFoundError for bad ones."""
    if args.dataset == "synthetic":
        if args.data_path or args.subjects:
            raise ValueError(
                "--data-path and --subjects are for --dataset dmer or wesad; the synthetic dataset is "
                "generated (see --synthetic-subjects)"
            )
        return load_dataset(
            "synthetic",
            n_subjects=args.synthetic_subjects,
            trials_per_subject=args.synthetic_trials,
            rows_per_trial=args.synthetic_rows,
            seed=args.data_seed,
        )
    if not args.data_path:
        raise ValueError(f"--dataset {args.dataset} needs --data-path")
    if not os.path.exists(args.data_path):
        raise FileNotFoundError(f"--data-path {args.data_path!r} does not exist")
    if args.dataset == "dmer":
        return load_dataset("dmer", args.data_path, subjects=subjects)
    return load_dataset("wesad", args.data_path, subjects=subjects, window_s=args.window_s)


def cmd_train(args) -> int:
    """``helo-fast train``: run the protocol, print the table, write the JSON summary."""
    options = check_train_options(args)  # every option, before the data is read and before any training
    summary = run_plan(dataset_from_args(args, options.subjects), options.plan)
    output_json = options.plan.train_config.output_json
    if summary["rank"] == 0:  # under torchrun, rank 0 alone prints and writes
        print(format_table(summary))
        if output_json:
            print(f"summary written to {output_json}")
    return 0


def cmd_eval(args) -> int:
    """``helo-fast eval``: re-score saved model_<i>.pt files on their test rows."""
    options = check_eval_options(args)
    files = list(args.model)
    if args.checkpoint_dir:
        if not os.path.isdir(args.checkpoint_dir):
            raise FileNotFoundError(f"--checkpoint-dir {args.checkpoint_dir!r} is not a directory")
        files += sorted(glob.glob(os.path.join(args.checkpoint_dir, "model_*.pt")))
    if not files:
        raise ValueError("nothing to evaluate: pass --checkpoint-dir with model_<i>.pt files or --model FILE")
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"model file {file!r} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = evaluate_saved_models(dataset_from_args(args, options.subjects), files, options.device, args.precision)
    print(format_table(summary))
    if args.output_json:
        write_json(summary, args.output_json)
    return 0


def cmd_demo(args) -> int:
    """``helo-fast demo``: see ``demo.run_demo``."""
    from .demo import run_demo

    run_demo(quiet=args.quiet)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``helo-fast`` and ``python -m helo_fast``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"train": cmd_train, "eval": cmd_eval, "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except (OSError, ValueError) as exc:  # FileNotFoundError, PermissionError, CheckpointError, bad values
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted{_checkpoint_note(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _checkpoint_note(args) -> str:
    """Where an interrupted train run can continue from (checkpoints are replaced atomically, so intact)."""
    if args.command != "train" or not args.checkpoint_dir:
        return ""
    path = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)
    if os.path.exists(path) or os.path.exists(previous_path(path)):
        return f"; the last checkpoint, {path}, is intact: continue with the same options and --resume"
    return "; no checkpoint was written yet"


if __name__ == "__main__":
    sys.exit(main())
