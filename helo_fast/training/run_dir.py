"""One run per checkpoint directory: an exclusive lock for the whole run, and no silent overwrite of another run.

``claim_run_dir`` takes ``<dir>/.helo-fast.lock`` with ``fcntl.flock`` (released when the process ends, however it
ends) and writes its pid there; a second run on the directory gets an error naming the holder's pid. Then, unless
the run resumes or was told to overwrite, a directory that already holds a run's files is refused.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the used-directory check still applies)
    fcntl = None

LOCK_NAME = ".helo-fast.lock"
RUN_FILES = ("checkpoint.pt", "checkpoint.pt.prev", "results.json", "model_*.pt")


class RunDirError(ValueError):
    """The checkpoint directory is in use by another run, or holds a run this one was not told to replace."""


def run_files(directory: str) -> list:
    """The files of a run already in ``directory`` (checkpoints, models, summary)."""
    found = []
    for pattern in RUN_FILES:
        found += sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))
    return found


class RunDirLock:
    """The held lock on a checkpoint directory; ``release()`` (or the process's end) frees it."""

    def __init__(self, fd: Optional[int]):
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim_run_dir(directory: str, *, resume: bool, overwrite: bool, option: str = "--checkpoint-dir") -> RunDirLock:
    """Lock ``directory`` for this run (RunDirError naming the holder's pid if another run has it) and refuse it
    when it holds a run's files, unless ``resume`` or ``overwrite``."""
    os.makedirs(directory, exist_ok=True)
    lock_path = os.path.join(directory, LOCK_NAME)
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(
                lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"{option} {directory!r}: cannot open the lock file {lock_path!r}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{option} {directory!r} is in use by another helo-fast run (pid {holder}); wait for "
                "it to finish or use another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    existing = run_files(directory)
    if existing and not resume and not overwrite:
        if fd is not None:
            os.close(fd)
        raise RunDirError(
            f"{option} {directory!r} already holds a run ({os.path.basename(existing[0])}); pass "
            "--resume to continue it or --overwrite to replace it"
        )
    return RunDirLock(fd)
