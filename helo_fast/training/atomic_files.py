"""Writing a file atomically through an exclusive temp file, and removing temp files that killed runs left.

A temp file is ``<path>.tmp-<pid>-<random>``, created with O_CREAT | O_EXCL | O_NOFOLLOW (never an existing
file, never through a planted symlink), removed in a ``finally`` when the write fails, and renamed over
``path`` when it succeeds. ``remove_stale_temps`` deletes the temp files of processes that no longer run.
Every OSError names the file it was about.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil

_TEMP = re.compile(r".+\.tmp-(\d+)(-[0-9a-f]+)?$")  # (the suffix-less form: versions before issue 25)


def temp_path(path: str) -> str:
    """A fresh temp-file name next to ``path``."""
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _named(exc: OSError, what: str) -> OSError:
    return type(exc)(exc.errno, f"{what}: {exc.strerror or exc}") if exc.errno else OSError(f"{what}: {exc}")


def sync_dir(directory: str) -> None:
    """Make renames in ``directory`` durable across a power loss (a no-op where a directory cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_exclusive(tmp: str) -> int:
    return os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644
    )


def _write_fd(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def keep_previous(path: str, previous: str) -> None:
    """Make ``previous`` the current ``path`` without ever removing ``path`` (a hard link, or a copy)."""
    tmp, created = temp_path(previous), False
    try:
        try:
            os.link(path, tmp)  # fails on an existing name (never follows a planted link)
            created = True
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links
            fd = _open_exclusive(tmp)
            created = True
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(tmp, previous)
    except OSError as exc:
        raise _named(exc, f"cannot keep the previous version of {path!r} as {previous!r}") from None
    finally:
        if created and os.path.lexists(tmp):
            os.remove(tmp)


def write_atomic(path: str, data: bytes, previous: "str | None" = None) -> None:
    """Write ``data`` to ``path`` (temp file + os.replace: never half-written); with ``previous``, the replaced
    version is kept there. OSError (naming ``path``) when it cannot be written: no temp file is left."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp, created = temp_path(path), False
    try:
        os.makedirs(directory, exist_ok=True)
        fd = _open_exclusive(tmp)
        created = True
        _write_fd(fd, data)
        if previous is not None and os.path.exists(path):
            keep_previous(path, previous)
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, f"cannot write {path!r}") from None
    finally:
        if created and os.path.lexists(tmp):  # (never a file someone else planted at the name)
            os.remove(tmp)
    sync_dir(directory)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(directory: str) -> list:
    """Remove the temp files in ``directory`` whose writing process is gone; returns their paths."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        match = _TEMP.fullmatch(name)
        full = os.path.join(directory, name)
        if match and not _pid_running(int(match.group(1))) and not os.path.isdir(full):
            try:
                os.remove(full)
                removed.append(full)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _named(exc, f"cannot remove the stale temp file {full!r}") from None
    return removed
