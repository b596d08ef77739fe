"""The checks of ``helo-fast``'s options, run once, before the data is read: each raises ValueError naming the option.

``check_train_options`` and ``check_eval_options`` turn the parsed arguments into one checked whole (the run's
plan, the subjects, the device): the library objects are built here, once, with the option names in their errors,
and nothing below checks the options again. The command line turns these errors into one
``helo-fast: error: ...`` line and exit status 2, so a bad data option, an unusable device or backend, or an
output path that cannot be written is reported at once instead of after (or in the middle of) the training.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import List, Optional

import torch

from .._validation import check_int_at_least
from ..data import dataset_layout
from ..data.wesad import check_window
from ..models import HeLoConfig
from ..training.config import TrainConfig, check_train_values, resolve_device
from ..training.plan import RunPlan, plan_run
from ..training.precision import check_precision
from .parser import parse_config_overrides

WESAD_SUBJECT = re.compile(r"S\d+")


def option_name(field: str) -> str:
    """The command-line option of a ``TrainConfig``/argparse field: ``lr_gamma`` -> ``--lr-gamma``."""
    return "--" + field.replace("_", "-")


def check_subjects(dataset: str, subjects: Optional[List[str]]):
    """``--subjects`` as the loader of ``dataset`` takes them (DMER: ints; WESAD: "S2"), without repeats."""
    if subjects is None:
        return None
    if dataset == "dmer":
        parsed = []
        for subject in subjects:
            try:
                parsed.append(int(subject))
            except ValueError:
                raise ValueError(
                    f"--subjects: DMER subject ids are integers (e.g. --subjects 1 2 5), got {subject!r}"
                ) from None
    else:
        bad = [s for s in subjects if not WESAD_SUBJECT.fullmatch(s)]
        if bad:
            raise ValueError(f"--subjects: WESAD subject ids are S<number> (e.g. --subjects S2 S3), got {bad[0]!r}")
        parsed = list(subjects)
    seen = set()
    for subject in parsed:
        if subject in seen:
            raise ValueError(f"--subjects: {subject!r} is given twice")
        seen.add(subject)
    return parsed


def check_data_options(args) -> Optional[list]:
    """The data options' values: synthetic sizes, --data-seed, --window-s (the paths are checked by the loaders).

    Returns the ``--subjects`` of a DMER or WESAD dataset as its loader takes them (None: every subject)."""
    for field in ("synthetic_subjects", "synthetic_trials", "synthetic_rows"):
        check_int_at_least(option_name(field), getattr(args, field), 1)
    check_int_at_least("--data-seed", args.data_seed, 0)
    check_window(args.window_s, name="--window-s")
    return None if args.dataset == "synthetic" else check_subjects(args.dataset, args.subjects)


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable_dir(path: Optional[str], option: str) -> None:
    """``path`` is a directory, or can be created, and files can be written in it (None: nothing to check).

    Nothing is created: the nearest existing directory on the way is probed with a temporary file.
    """
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a file, not a directory")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise ValueError(f"{option} {path!r}: {existing!r} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".helo-fast-write-test-", dir=existing)
    except OSError as exc:
        raise ValueError(f"{option} {path!r}: cannot write in {existing!r} ({exc.strerror or exc})") from None
    os.close(fd)
    os.remove(probe)


def check_writable_file(path: Optional[str], option: str) -> None:
    """``path`` names a file (not a directory) in a directory that can be written (None: nothing to check)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory; name a file")
    check_writable_dir(os.path.dirname(os.path.abspath(path)), option)


def _model_config(fields: dict) -> HeLoConfig:
    """HeLoConfig(**fields); its errors can only come from --config (the other fields are choices or the data's)."""
    try:
        return HeLoConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--config: {exc}") from None


@dataclass(frozen=True)
class TrainOptions:
    """``helo-fast train``'s options, checked: the run's plan (configs, device, backends) and the --subjects."""

    plan: RunPlan
    subjects: Optional[list]


def check_train_options(args) -> TrainOptions:
    """Every option of ``helo-fast train``, checked once, in the order: the training values (``TrainConfig``), the
    data options, --config (``HeLoConfig``, for the dataset's layout), --device, --precision, --backend (every op
    of HeLo can run with it here; ``auto`` always can), then the output paths."""
    output_json = args.output_json
    if output_json is None and args.checkpoint_dir:
        output_json = os.path.join(args.checkpoint_dir, "results.json")
    cfg = TrainConfig(
        protocol=args.protocol,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_gamma=args.lr_gamma,
        seed=args.seed,
        folds=args.folds,
        test_fraction=args.test_fraction,
        max_splits=args.max_splits,
        device=args.device,
        dtype=args.dtype,
        precision=args.precision,
        threads=args.threads,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        overwrite=args.overwrite,
        save_models=not args.no_save_models,
        baselines=not args.no_baselines,
        baseline_modality=args.baseline_modality,
        quiet=args.quiet,
        output_json=output_json,
        error_names=option_name,
    )
    subjects = check_data_options(args)
    model_config = _model_config(
        {
            **dataset_layout(args.dataset).as_config(),
            "backend": args.backend,
            "faithful_to": args.faithful_to,
            **parse_config_overrides(args.config),
        }
    )
    try:
        plan = plan_run(model_config, cfg, option_name)
    except RuntimeError as exc:  # only the backends raise it: a named backend that cannot run here
        raise ValueError(f"--backend {args.backend}: {exc}") from None
    check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")
    check_writable_file(output_json, "--output-json" if args.output_json else "--checkpoint-dir")
    return TrainOptions(plan, subjects)


@dataclass(frozen=True)
class EvalOptions:
    """``helo-fast eval``'s options, checked: the device and the --subjects."""

    device: torch.device
    subjects: Optional[list]


def check_eval_options(args) -> EvalOptions:
    """Every option of ``helo-fast eval`` but the model files: --threads, the data options, --device, --precision
    (when given), --output-json."""
    check_train_values({"threads": args.threads}, option_name)
    subjects = check_data_options(args)
    device = resolve_device(args.device, "--device")
    if args.precision is not None:
        check_precision("--precision", args.precision, device)
    check_writable_file(args.output_json, "--output-json")
    return EvalOptions(device, subjects)
