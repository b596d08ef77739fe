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

from ..data import load_dataset
from ..models import HeLoConfig
from ..training.config import check_train_values, resolve_device
from ..training.precision import check_precision
from .checks import (check_backend, check_data_options, check_subjects, check_writable_dir, check_writable_file,
                     option_name)
from .parser import EXIT_USAGE, PROG, build_parser, parse_config_overrides

EXIT_INTERRUPTED = 130   # 128 + SIGINT, the shell's status for Ctrl-C


def dataset_from_args(args):
    """The EmotionDataset named by the data options; ValueError/FileNotFoundError for bad ones."""
    if args.dataset == "synthetic":
        if args.data_path or args.subjects:
            raise ValueError("--data-path and --subjects are for --dataset dmer or wesad; the synthetic dataset is "
                             "generated (see --synthetic-subjects)")
        return load_dataset("synthetic", n_subjects=args.synthetic_subjects, trials_per_subject=args.synthetic_trials,
                            rows_per_trial=args.synthetic_rows, seed=args.data_seed)
    if not args.data_path:
        raise ValueError(f"--dataset {args.dataset} needs --data-path")
    if not os.path.exists(args.data_path):
        raise FileNotFoundError(f"--data-path {args.data_path!r} does not exist")
    subjects = check_subjects(args.dataset, args.subjects)
    if args.dataset == "dmer":
        return load_dataset("dmer", args.data_path, subjects=subjects)
    return load_dataset("wesad", args.data_path, subjects=subjects, window_s=args.window_s)


def _model_config(fields: dict) -> HeLoConfig:
    """HeLoConfig(**fields); its errors can only come from --config (the other fields are choices or the data's)."""
    try:
        return HeLoConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--config: {exc}") from None


def _check_common_options(args):
    """--threads, --device and the data options of train and eval; returns the device."""
    check_train_values({"threads": args.threads}, option_name)
    check_data_options(args)
    if args.dataset != "synthetic":
        check_subjects(args.dataset, args.subjects)
    return resolve_device(args.device, "--device")


def cmd_train(args) -> int:
    """``helo-fast train``: run the protocol, print the table, write the JSON summary."""
    from ..training.distributed import local_device
    from ..training import TrainConfig, format_table, run_experiment

    # Every option is checked before the data is read and before any training.
    check_train_values(vars(args), option_name)
    device = _check_common_options(args)
    model_options = {"backend": args.backend, "faithful_to": args.faithful_to, **parse_config_overrides(args.config)}
    _model_config(model_options)   # the --config values, checked before the dataset is loaded
    check_backend(args.backend, local_device(device))
    check_precision("--precision", args.precision, local_device(device), args.dtype)
    check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")
    output_json = args.output_json or (os.path.join(args.checkpoint_dir, "results.json") if args.checkpoint_dir else None)
    check_writable_file(output_json, "--output-json" if args.output_json else "--checkpoint-dir")

    dataset = dataset_from_args(args)
    model_config = _model_config({**dataset.layout.as_config(), **model_options})
    cfg = TrainConfig(protocol=args.protocol, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, lr_gamma=args.lr_gamma, seed=args.seed, folds=args.folds,
                      test_fraction=args.test_fraction, max_splits=args.max_splits, device=args.device,
                      dtype=args.dtype, precision=args.precision, threads=args.threads,
                      checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume,
                      overwrite=args.overwrite,
                      save_models=not args.no_save_models, baselines=not args.no_baselines,
                      baseline_modality=args.baseline_modality, quiet=args.quiet, output_json=output_json)
    summary = run_experiment(dataset, model_config, cfg)
    if summary["rank"] == 0:  # under torchrun, rank 0 alone prints and writes
        print(format_table(summary))
        if output_json:
            print(f"summary written to {output_json}")
    return 0


def cmd_eval(args) -> int:
    """``helo-fast eval``: re-score saved model_<i>.pt files on their test rows."""
    import torch

    from ..training import evaluate_saved_models, format_table, write_json

    device = _check_common_options(args)
    if args.precision is not None:
        check_precision("--precision", args.precision, device)
    check_writable_file(args.output_json, "--output-json")
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
    summary = evaluate_saved_models(dataset_from_args(args), files, str(device), args.precision)
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
    from ..training.checkpoint import previous_path
    from ..training.experiment import CHECKPOINT_NAME

    if args.command != "train" or not args.checkpoint_dir:
        return ""
    path = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)
    if os.path.exists(path) or os.path.exists(previous_path(path)):
        return f"; the last checkpoint, {path}, is intact: continue with the same options and --resume"
    return "; no checkpoint was written yet"


if __name__ == "__main__":
    sys.exit(main())
