"""Checking the sizes a pickle declares against the file before anything is read or allocated.

CPython's unpickler allocates the size a counted opcode declares (``BINBYTES8``, ``BYTEARRAY8``,
``BINUNICODE8``, ...) before reading the data, so a 12-byte file declaring 4 GiB allocates 4 GiB.
``check_declared_sizes`` walks the opcodes without reading their data (it seeks over it) and refuses
any count larger than what is left in the file; ``BoundedReader`` then never reads past the size the
file had when it was checked.
"""

from __future__ import annotations

import pickle
import pickletools
import struct
from typing import BinaryIO

# pickletools' codes for arguments whose length is stored in front of them: (struct format, width).
_COUNTS = {
    pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1),
    pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
    pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4),
    pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8),
}
_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_TWO_LINE_ARGS = ("GLOBAL", "INST")  # module and name, each on its own line


def _truncated(what: str, at: int) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"the pickle is truncated ({what} at byte {at})")


def check_declared_sizes(fh: BinaryIO, size: int) -> None:
    """Walk the opcodes of the pickle in ``fh`` (``size`` bytes) up to STOP, seeking over counted data.

    Raises ``pickle.UnpicklingError`` for an unknown opcode, a missing STOP, or a declared count (or
    frame length) larger than the bytes left in the file. Leaves ``fh`` wherever the walk stopped.
    """
    while True:
        at = fh.tell()
        code = fh.read(1)
        if not code:
            raise _truncated("no STOP opcode", at)
        op = _OPCODES.get(code)
        if op is None:
            raise pickle.UnpicklingError(f"unknown pickle opcode {code!r} at byte {at}")
        if op.name == "STOP":
            return
        arg = op.arg
        if arg is None:
            continue
        if arg.n >= 0:
            raw = fh.read(arg.n)
            if len(raw) < arg.n:
                raise _truncated(f"{op.name}'s argument", at)
            if op.name == "FRAME":
                _check_count(op.name, struct.unpack("<Q", raw)[0], at, size - fh.tell())
        elif arg.n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if op.name in _TWO_LINE_ARGS else 1):
                if not fh.readline().endswith(b"\n"):
                    raise _truncated(f"{op.name}'s argument", at)
        else:
            fmt, width = _COUNTS[arg.n]
            raw = fh.read(width)
            if len(raw) < width:
                raise _truncated(f"{op.name}'s length", at)
            count = struct.unpack(fmt, raw)[0]
            _check_count(op.name, count, at, size - fh.tell())
            fh.seek(count, 1)


def _check_count(name: str, count: int, at: int, left: int) -> None:
    if count < 0 or count > left:
        raise pickle.UnpicklingError(f"{name} at byte {at} declares {count} bytes but only {left} are left in the file")


class BoundedReader:
    """The file-like object the unpickler reads: ``fh`` cut at ``size`` bytes (no read may ask for more)."""

    def __init__(self, fh: BinaryIO, size: int):
        self._fh, self._size = fh, size

    def _left(self) -> int:
        return max(0, self._size - self._fh.tell())

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(self._left() if n is None or n < 0 else min(n, self._left()))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        return self._fh.readinto(view[: self._left()])

    def readline(self, limit: int = -1) -> bytes:
        return self._fh.readline(self._left() if limit is None or limit < 0 else min(limit, self._left()))
