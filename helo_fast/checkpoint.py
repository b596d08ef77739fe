"""Checksummed, atomic checkpoint files.

Layout: the 8-byte magic ``HELOCKPT``, the SHA-256 of the payload as 64 hex digits, a newline,
then the ``torch.save`` payload. A truncated or corrupted file fails the checksum and raises
``CheckpointError`` naming the file. ``atomic_save`` writes a temp file and renames it over the
target, keeping the previous version as ``<path>.prev`` so a run can resume from the last good one.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from typing import Any

import torch

MAGIC = b"HELOCKPT"
_HEADER = len(MAGIC) + 64 + 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a helo_fast checkpoint."""


def previous_path(path: str) -> str:
    return f"{path}.prev"


def atomic_save(obj: Any, path: str, keep_previous: bool = True) -> None:
    """Write ``obj`` to ``path`` with a checksum (temp file + os.replace: never half-written)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        fh.flush()
        os.fsync(fh.fileno())
    if keep_previous and os.path.exists(path):
        os.replace(path, previous_path(path))
    os.replace(tmp, path)


def load_checked(path: str) -> Any:
    """Load a file written by ``atomic_save`` after verifying its checksum (CheckpointError if bad)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise CheckpointError(f"{path!r} is not a helo_fast checkpoint (no HELOCKPT header) or is truncated")
    expected, payload = data[len(MAGIC):_HEADER - 1].decode(errors="replace"), data[_HEADER:]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated (SHA-256 mismatch: "
                              f"{len(payload)} payload bytes)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def load_latest_good(path: str) -> Any:
    """``load_checked(path)``, falling back (with a warning) to ``<path>.prev`` when ``path`` is bad."""
    try:
        return load_checked(path)
    except CheckpointError as latest_error:
        if not os.path.exists(previous_path(path)):
            raise
        try:
            state = load_checked(previous_path(path))
        except CheckpointError as previous_error:
            raise CheckpointError(f"{latest_error}; the previous one is bad too: {previous_error}") from None
        warnings.warn(f"{latest_error}; resuming from the previous good checkpoint {previous_path(path)!r}")
        return state
