"""Checks of ``helo-fast`` options that run before any training: each raises ValueError naming the option.

The command line turns these errors into one ``helo-fast: error: ...`` line and exit status 2, so a
bad data option, an unusable device or backend, or an output path that cannot be written is
reported at once instead of after (or in the middle of) the training.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import List, Optional

import torch

from .._validation import check_int_at_least
from ..data.wesad import check_window

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
                raise ValueError(f"--subjects: DMER subject ids are integers (e.g. --subjects 1 2 5), "
                                 f"got {subject!r}") from None
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


def check_data_options(args) -> None:
    """The data options' values: synthetic sizes, --data-seed, --window-s (the paths are checked by the loaders)."""
    for field in ("synthetic_subjects", "synthetic_trials", "synthetic_rows"):
        check_int_at_least(option_name(field), getattr(args, field), 1)
    check_int_at_least("--data-seed", args.data_seed, 0)
    check_window(args.window_s, name="--window-s")


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


def check_backend(backend: str, device: torch.device) -> None:
    """Every op of HeLo can run with ``--backend`` on ``device`` (``auto`` always can)."""
    from ..training.fingerprint import model_backends

    try:
        model_backends(backend, device)
    except RuntimeError as exc:
        raise ValueError(f"--backend {backend}: {exc}") from None
