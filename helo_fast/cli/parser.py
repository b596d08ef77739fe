"""The argument parser of ``helo-fast`` (sub-commands train, eval, demo) and the ``--config KEY=VALUE`` overrides.

argparse's own errors are one line, ``helo-fast: error: ...``, and exit with status 2 like every refused option.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import List

from .._backend import BACKENDS
from ..data import DATASETS, PROTOCOLS
from ..models import HeLoConfig
from ..models.config import FAITHFUL_TO, RENAMED_KEYS
from ..training.config import BASELINE_MODALITIES
from ..training.precision import PRECISIONS

PROG = "helo-fast"
EXIT_USAGE = 2


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
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch, >= 1 (default: torch's choice); the results "
        "depend on it, so a resumed run must use the same",
    )
    p.add_argument("--output-json", help="write the summary here (train default: <checkpoint-dir>/results.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``helo-fast`` (sub-commands train, eval, demo)."""
    parser = _Parser(prog=PROG, description="Train and evaluate HeLo (multi-modal emotion distribution learning).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train HeLo under a protocol, with baselines and checkpoints")
    _add_data_args(train)
    g = train.add_argument_group("protocol and optimisation")
    g.add_argument("--protocol", choices=PROTOCOLS, default="subject-dependent")
    g.add_argument("--folds", type=int, default=5, help="kfold: number of subject-wise folds (>= 2)")
    g.add_argument(
        "--test-fraction", type=float, default=0.2, help="subject-dependent: test share of each subject, in (0, 1)"
    )
    g.add_argument("--max-splits", type=int, help="only the first N >= 1 subjects/folds (default: all)")
    g.add_argument("--epochs", type=int, default=300, help=">= 1")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size, >= 1")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, in (0, 1]")
    g.add_argument("--weight-decay", type=float, default=1e-5, help=">= 0")
    g.add_argument(
        "--lr-gamma",
        type=float,
        default=0.99,
        help="learning-rate factor per epoch (ExponentialLR), > 0 (> 1 grows the rate)",
    )
    g.add_argument("--seed", type=int, default=3407, help=">= 0")
    g.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="dtype of the model and data (float64: for checks, e.g. DDP against one process)",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="32; bf16-mixed: forward and loss under bfloat16 autocast (parameters, gradients and Adam "
        "in float32); 16-mixed: float16 autocast with a gradient scaler, CUDA only",
    )
    g = train.add_argument_group("model")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="reference: plain-PyTorch modules; cpp/triton: the fused ops; auto: the fastest built here",
    )
    g.add_argument("--faithful-to", choices=FAITHFUL_TO, default="paper")
    g.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any HeLoConfig field, e.g. --config d_model=64 --config ot_grad=true",
    )
    g = train.add_argument_group("checkpoints and baselines")
    g.add_argument("--checkpoint-dir", help="write checkpoint.pt, model_<i>.pt and results.json here")
    g.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints (>= 1)")
    g.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/checkpoint.pt")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --checkpoint-dir (without it, or --resume, a used directory is "
        "refused; a directory is locked while a run uses it)",
    )
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
