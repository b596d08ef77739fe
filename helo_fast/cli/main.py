"""``helo-fast`` command line: ``train``, ``eval`` and ``demo`` (also ``python -m helo_fast``).

Errors the user can fix (missing dataset path, wrong file layout, bad option value, unusable device
or backend, output path that cannot be written) print one line ``helo-fast: error: ...`` naming the
option or file and exit with status 2, argparse's own errors included; the options are checked
before any training. Ctrl-C prints one line and exits with status 130 (the last checkpoint stays intact).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import os
import sys
from typing import List, Optional

from .._backend import BACKENDS
from .checks import (check_backend, check_data_options, check_subjects, check_writable_dir, check_writable_file,
                         option_name)
from ..data import DATASETS, PROTOCOLS, load_dataset
from ..models import HeLoConfig
from ..models.config import FAITHFUL_TO, RENAMED_KEYS
from ..training.precision import PRECISIONS, check_precision
from ..training.config import BASELINE_MODALITIES, check_train_values, resolve_device

PROG = "helo-fast"
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130   # 130 = 128 + SIGINT, the shell's status for Ctrl-C


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, ``helo-fast: error: ...`` like every other refused option."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _config_value(field: dataclasses.Field, text: str):
    kind = str(field.type)
    if "bool" in kind:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"needs true/false, got {text!r}")
    if "int" in kind:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"needs an integer, got {text!r}") from None
    if "float" in kind:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"needs a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"needs a finite number, got {text!r}")
        return value
    return text


def parse_config_overrides(items: List[str]) -> dict:
    """["d_model=64", "ot_grad=true"] -> {"d_model": 64, "ot_grad": True}, checked against HeLoConfig."""
    fields = {f.name: f for f in dataclasses.fields(HeLoConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config expects KEY=VALUE, got {item!r}")
        if key in RENAMED_KEYS:
            raise ValueError(f"--config: HeLoConfig key {key!r} was renamed to {RENAMED_KEYS[key]!r}")
        if key not in fields:
            raise ValueError(f"--config: unknown HeLoConfig field {key!r}; known: {', '.join(fields)}")
        try:
            out[key] = _config_value(fields[key], value)
        except ValueError as exc:
            raise ValueError(f"--config {key}: {exc}") from None
    return out


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="synthetic", help="default: the embedded synthetic dataset")
    g.add_argument("--data-path", help="DMER: directory of <id>.mat; WESAD: root with SX/SX.pkl")
    g.add_argument("--subjects", nargs="+", help="only these subject ids (DMER: 1 2 5; WESAD: S2 S3)")
    g.add_argument("--synthetic-subjects", type=int, default=8, help="number of synthetic subjects (>= 1)")
    g.add_argument("--synthetic-trials", type=int, default=20, help="trials per synthetic subject")
    g.add_argument("--synthetic-rows", type=int, default=5, help="rows per synthetic trial")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic dataset (>= 0)")
    g.add_argument("--window-s", type=float, default=10.0, help="WESAD window length in seconds (> 0)")


def _add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch, >= 1 (default: torch's choice); the results "
                   "depend on it, so a resumed run must use the same")
    p.add_argument("--output-json", help="write the summary here (train default: <checkpoint-dir>/results.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``helo-fast`` (sub-commands train, eval, demo)."""
    parser = _Parser(prog=PROG, description="Train and evaluate HeLo (multi-modal emotion "
                                     "distribution learning).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train HeLo under a protocol, with baselines and checkpoints")
    _add_data_args(train)
    g = train.add_argument_group("protocol and optimisation")
    g.add_argument("--protocol", choices=PROTOCOLS, default="subject-dependent")
    g.add_argument("--folds", type=int, default=5, help="kfold: number of subject-wise folds (>= 2)")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="subject-dependent: test share of each subject, in (0, 1)")
    g.add_argument("--max-splits", type=int, help="only the first N >= 1 subjects/folds (default: all)")
    g.add_argument("--epochs", type=int, default=300, help=">= 1")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size, >= 1")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, in (0, 1]")
    g.add_argument("--weight-decay", type=float, default=1e-5, help=">= 0")
    g.add_argument("--lr-gamma", type=float, default=0.99,
                   help="learning-rate factor per epoch (ExponentialLR), > 0 (> 1 grows the rate)")
    g.add_argument("--seed", type=int, default=3407, help=">= 0")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of the model and data (float64: for checks, e.g. DDP against one process)")
    g.add_argument("--precision", choices=PRECISIONS, default="32",
                   help="32; bf16-mixed: forward and loss under bfloat16 autocast (parameters, gradients and Adam "
                   "in float32); 16-mixed: float16 autocast with a gradient scaler, CUDA only")
    g = train.add_argument_group("model")
    g.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="reference: plain-PyTorch modules; cpp/triton: the fused ops; auto: the fastest built here")
    g.add_argument("--faithful-to", choices=FAITHFUL_TO, default="paper")
    g.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="set any HeLoConfig field, e.g. --config d_model=64 --config ot_grad=true")
    g = train.add_argument_group("checkpoints and baselines")
    g.add_argument("--checkpoint-dir", help="write checkpoint.pt, model_<i>.pt and results.json here")
    g.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints (>= 1)")
    g.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/checkpoint.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --checkpoint-dir (without it, or --resume, a used directory is "
                   "refused; a directory is locked while a run uses it)")
    g.add_argument("--no-save-models", action="store_true", help="do not write model_<i>.pt")
    g.add_argument("--no-baselines", action="store_true")
    g.add_argument("--baseline-modality", choices=BASELINE_MODALITIES, default="video")
    _add_common_args(train)

    ev = sub.add_parser("eval", help="re-score the model_<i>.pt files written by train on their test rows")
    _add_data_args(ev)
    ev.add_argument("--checkpoint-dir", help="evaluate every model_<i>.pt in this directory")
    ev.add_argument("--model", nargs="+", default=[], help="model files to evaluate")
    ev.add_argument("--precision", choices=PRECISIONS, help="default: the precision each model was trained in")
    _add_common_args(ev)

    demo = sub.add_parser("demo", help="short training on the synthetic dataset; prints the metrics table")
    demo.add_argument("--quiet", action="store_true")
    return parser


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
