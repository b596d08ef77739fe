"""Checksummed, atomic checkpoint files that load no code.

Layout: the 8-byte magic ``HELOCKP2``, the SHA-256 of the payload as 64 hex digits, a newline,
then the payload: a safetensors file holding every tensor of the state, with the rest of the state
(numbers, strings, lists, dicts: see ``helo_fast._plain_state``) as JSON in its metadata. Loading
parses JSON and raw tensor bytes only: nothing in a file, crafted or not, is executed.

A truncated or corrupted file fails the checksum and raises ``CheckpointError`` naming the file; so
does a file of the pickle format that earlier versions wrote (magic ``HELOCKPT``). ``atomic_save``
writes a temp file and renames it over the target, keeping the previous version as ``<path>.prev``
(a hard link made before the rename, so ``<path>`` itself exists at every instant).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import warnings
from typing import Any, Dict

import safetensors
import safetensors.torch

from ._plain_state import StateFormatError, join_state, split_state

MAGIC = b"HELOCKP2"
LEGACY_MAGIC = b"HELOCKPT"   # earlier versions: a torch.save pickle after the same header
_HEADER = len(MAGIC) + 64 + 1
_STATE_KEY = "helo_fast_state"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a helo_fast checkpoint."""


def previous_path(path: str) -> str:
    """Where ``atomic_save`` keeps the version of ``path`` it replaced."""
    return f"{path}.prev"


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sync_dir(directory: str) -> None:
    # Makes the renames durable across a power loss; not every platform can open a directory.
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


def _keep_previous(path: str) -> None:
    """Make ``<path>.prev`` the current ``path`` without ever removing ``path``."""
    tmp = f"{previous_path(path)}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(path, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, tmp)
    os.replace(tmp, previous_path(path))


def encode(obj: Any) -> bytes:
    """The bytes ``atomic_save`` writes for ``obj`` (header + safetensors payload)."""
    text, tensors = split_state(obj)
    payload = safetensors.torch.save(tensors, metadata={_STATE_KEY: text})
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def atomic_save(obj: Any, path: str, keep_previous: bool = True) -> None:
    """Write ``obj`` to ``path`` with a checksum (temp file + os.replace: never half-written).

    ``obj``: nested dicts/lists/tuples of None, bool, int, float, str, tensors and numpy arrays
    (TypeError for anything else). With ``keep_previous`` the replaced version stays as ``<path>.prev``.
    """
    data = encode(obj)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    _write_synced(tmp, data)
    if keep_previous and os.path.exists(path):
        _keep_previous(path)
    os.replace(tmp, path)
    _sync_dir(directory)


def _safetensors_metadata(payload: bytes) -> Dict[str, str]:
    (size,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + size])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError("no metadata in the safetensors header")
    return metadata


def decode(data: bytes, path: str) -> Any:
    """The object in checkpoint bytes ``data`` read from ``path`` (named in every CheckpointError)."""
    if data.startswith(LEGACY_MAGIC):
        raise CheckpointError(f"{path!r} was written by an earlier helo_fast version, as a pickle, which this version "
                              "does not load (unpickling a file can run code in it); start a fresh run with this "
                              "version (see the README, Checkpoints)")
    if len(data) < _HEADER + 8 or not data.startswith(MAGIC):
        raise CheckpointError(f"{path!r} is not a helo_fast checkpoint (no {MAGIC.decode()} header) or is truncated")
    expected, payload = data[len(MAGIC):_HEADER - 1].decode(errors="replace"), data[_HEADER:]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated (SHA-256 mismatch: "
                              f"{len(payload)} payload bytes)")
    try:
        tensors = safetensors.torch.load(payload)
        text = _safetensors_metadata(payload)[_STATE_KEY]
        return join_state(text, tensors)
    except (safetensors.SafetensorError, StateFormatError, ValueError, KeyError, struct.error) as exc:
        raise CheckpointError(f"{path!r} has a valid checksum but is not a helo_fast checkpoint payload "
                              f"({type(exc).__name__}: {exc})") from None


def load_checked(path: str) -> Any:
    """Load a file written by ``atomic_save`` after verifying its checksum (CheckpointError if bad)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as fh:
        data = fh.read()
    return decode(data, path)


def load_latest_good(path: str) -> Any:
    """``load_checked(path)``, falling back (with a warning) to ``<path>.prev`` when ``path`` is missing or bad.

    A file of an earlier version's format is not "bad" but refused: its CheckpointError is raised as is.
    """
    try:
        return load_checked(path)
    except CheckpointError as latest_error:
        if not os.path.exists(previous_path(path)) or _is_legacy(path):
            raise
        try:
            state = load_checked(previous_path(path))
        except CheckpointError as previous_error:
            raise CheckpointError(f"{latest_error}; the previous one is bad too: {previous_error}") from None
        warnings.warn(f"{latest_error}; resuming from the previous good checkpoint {previous_path(path)!r}")
        return state


def _is_legacy(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC
    except OSError:
        return False
