"""Checksummed, atomic checkpoint files that load no code.

Layout: the 8-byte magic ``HELOCKP2``, the SHA-256 of the payload as 64 hex digits, a newline,
then the payload: a safetensors file holding every tensor of the state, with the rest of the state
(numbers, strings, lists, dicts: see ``plain_state``) as JSON in its metadata. Loading
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
import struct
import warnings
from typing import Any, BinaryIO, Dict, Optional

import safetensors
import safetensors.torch

from .plain_state import StateFormatError, join_state, split_state
from .atomic_files import write_atomic

MAGIC = b"HELOCKP2"
LEGACY_MAGIC = b"HELOCKPT"  # earlier versions: a torch.save pickle after the same header
_HEADER = len(MAGIC) + 64 + 1
_STATE_KEY = "helo_fast_state"
MAX_CHECKPOINT_BYTES = 1 << 30  # default cap on a file's size (a default-config HeLo model file is ~17 MB)
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on its JSON header
_CHUNK = 1 << 20
_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a helo_fast checkpoint."""


def previous_path(path: str) -> str:
    """Where ``atomic_save`` keeps the version of ``path`` it replaced."""
    return f"{path}.prev"


def encode(obj: Any) -> bytes:
    """The bytes ``atomic_save`` writes for ``obj`` (header + safetensors payload)."""
    text, tensors = split_state(obj)
    payload = safetensors.torch.save(tensors, metadata={_STATE_KEY: text})
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def atomic_save(obj: Any, path: str, keep_previous: bool = True) -> None:
    """Write ``obj`` to ``path`` with a checksum (temp file + os.replace: never half-written).

    ``obj``: nested dicts/lists/tuples of None, bool, int, float, str, tensors and numpy arrays
    (TypeError for anything else). With ``keep_previous`` the replaced version stays as ``<path>.prev``.
    The temp file is exclusive and removed on failure (see ``atomic_files``); OSError names ``path``.
    """
    write_atomic(path, encode(obj), previous_path(path) if keep_previous else None)


def _safetensors_metadata(payload: bytes) -> Dict[str, str]:
    (size,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + size])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError("no metadata in the safetensors header")
    return metadata


def _check_header(data: bytes, size: int, path: str) -> None:
    if data.startswith(LEGACY_MAGIC):
        raise CheckpointError(
            f"{path!r} was written by an earlier helo_fast version, as a pickle, which this version "
            "does not load (unpickling a file can run code in it); start a fresh run with this "
            "version (see the README, Checkpoints)"
        )
    if size < _HEADER + 8 or not data.startswith(MAGIC):
        raise CheckpointError(f"{path!r} is not a helo_fast checkpoint (no {MAGIC.decode()} header) or is truncated")


def _declared_payload_size(header: bytes, header_len: int, path: str) -> int:
    """The payload size a safetensors header declares (8 + header + tensor bytes), each entry checked."""
    try:
        entries = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path!r}: its safetensors header is not valid JSON ({exc})") from None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path!r}: its safetensors header is not a JSON object")
    spans = []
    for name, entry in entries.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(entry, dict)
            and entry.get("dtype") in _ITEMSIZE
            and isinstance(entry.get("shape"), list)
            and all(type(d) is int and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(type(o) is int and o >= 0 for o in entry["data_offsets"])
        )
        if not ok:
            raise CheckpointError(
                f"{path!r}: tensor {name!r} of its safetensors header must have a known dtype, a "
                "shape of ints >= 0 and two data offsets"
            )
        nbytes = _ITEMSIZE[entry["dtype"]]
        for d in entry["shape"]:
            nbytes *= d
        begin, end = entry["data_offsets"]
        if end - begin != nbytes:
            raise CheckpointError(
                f"{path!r}: tensor {name!r} declares shape {entry['shape']} of {entry['dtype']} "
                f"({nbytes} bytes) over {end - begin} bytes of data"
            )
        spans.append((begin, end))
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            raise CheckpointError(f"{path!r}: its tensors' data overlap or leave gaps (at byte {begin})")
        position = end
    return 8 + header_len + position


def _hash_stream(fh: BinaryIO, digest, remaining: int, path: str, into: Optional[memoryview] = None) -> None:
    position = 0
    while position < remaining:
        n = min(_CHUNK, remaining - position)
        chunk = fh.read(n) if into is None else None
        if into is not None:
            got = fh.readinto(into[position : position + n])
            chunk = into[position : position + got]
        if not chunk:
            raise CheckpointError(f"checkpoint {path!r} is truncated (it shrank while being read)")
        digest.update(chunk)
        position += len(chunk)


def read_checked(path: str, max_bytes: int = MAX_CHECKPOINT_BYTES) -> bytes:
    """The payload of checkpoint ``path`` after every size it declares and its SHA-256 are verified.

    Sizes come first: the file may not exceed ``max_bytes``, and the safetensors header's tensors must account
    for exactly the payload. The checksum is then computed in chunks (constant memory), and only a file that
    passes is read into memory (and hashed again, in case it changed in between). CheckpointError names ``path``.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(_HEADER + 8)
            _check_header(head, size, path)
            if size > max_bytes:
                raise CheckpointError(
                    f"checkpoint {path!r} is {size} bytes, more than the {max_bytes} bytes a "
                    "checkpoint of this run may have"
                )
            payload_size = size - _HEADER
            (header_len,) = struct.unpack("<Q", head[_HEADER:])
            if header_len > min(MAX_HEADER_BYTES, payload_size - 8):
                raise CheckpointError(
                    f"checkpoint {path!r} is corrupt or truncated: it declares a header of "
                    f"{header_len} bytes and holds {payload_size - 8} after the header length"
                )
            header = fh.read(header_len)
            declared = _declared_payload_size(header, header_len, path)
            if declared != payload_size:
                raise CheckpointError(
                    f"checkpoint {path!r} is corrupt or truncated: it declares {declared} payload "
                    f"bytes but holds {payload_size}"
                )
            expected = head[len(MAGIC) : _HEADER - 1].decode(errors="replace")
            digest = hashlib.sha256(head[_HEADER:] + header)
            _hash_stream(fh, digest, payload_size - 8 - header_len, path)
            if digest.hexdigest() != expected:
                raise CheckpointError(
                    f"checkpoint {path!r} is corrupt or truncated (SHA-256 mismatch: {payload_size} payload bytes)"
                )
            fh.seek(_HEADER)
            payload = bytearray(payload_size)
            digest = hashlib.sha256()
            _hash_stream(fh, digest, payload_size, path, memoryview(payload))
            if digest.hexdigest() != expected:
                raise CheckpointError(f"checkpoint {path!r} changed while being read (SHA-256 mismatch)")
            return bytes(payload)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read checkpoint {path!r}: {exc.strerror or exc}") from None


def decode(data: bytes, path: str) -> Any:
    """The object in checkpoint bytes ``data`` read from ``path`` (named in every CheckpointError)."""
    _check_header(data[: _HEADER + 8], len(data), path)
    expected, payload = data[len(MAGIC) : _HEADER - 1].decode(errors="replace"), data[_HEADER:]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CheckpointError(
            f"checkpoint {path!r} is corrupt or truncated (SHA-256 mismatch: {len(payload)} payload bytes)"
        )
    return _decode_payload(payload, path)


def _decode_payload(payload: bytes, path: str) -> Any:
    try:
        tensors = safetensors.torch.load(payload)
        text = _safetensors_metadata(payload)[_STATE_KEY]
        return join_state(text, tensors)
    except (safetensors.SafetensorError, StateFormatError, ValueError, KeyError, struct.error) as exc:
        raise CheckpointError(
            f"{path!r} has a valid checksum but is not a helo_fast checkpoint payload ({type(exc).__name__}: {exc})"
        ) from None


def load_checked(path: str, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Any:
    """Load a file written by ``atomic_save`` after verifying its sizes and checksum (CheckpointError if bad;
    see ``read_checked``)."""
    return _decode_payload(read_checked(path, max_bytes), path)


def load_latest_good(path: str, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Any:
    """``load_checked(path)``, falling back (with a warning) to ``<path>.prev`` when ``path`` is missing or bad.

    A file of an earlier version's format is not "bad" but refused: its CheckpointError is raised as is.
    """
    try:
        return load_checked(path, max_bytes)
    except CheckpointError as latest_error:
        if not os.path.exists(previous_path(path)) or _is_legacy(path):
            raise
        try:
            state = load_checked(previous_path(path), max_bytes)
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
