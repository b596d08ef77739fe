"""Crafted payloads for the file-safety tests: unpickling any of them writes a marker file."""

import hashlib
import os
import random


def with_header(magic: bytes, payload: bytes) -> bytes:
    """``payload`` behind a checkpoint header with a valid SHA-256 (anyone can write one)."""
    return magic + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


class WritesMarker:
    """Unpickling this runs ``exec`` to write ``path``: a stand-in for any code a crafted file could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('code ran')",)


class RunsShellCommand:
    """Unpickling this runs ``os.system("touch <path>")``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


# ----------------------------------------------------------------------------- pickles as other writers wrote them
import io  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402
import types  # noqa: E402


class LegacyPickler(pickle._Pickler):
    """Writes numpy's names as numpy 1.x did (``numpy.core.*``); with ``python2=True`` also bytes and str as
    Python 2's ``str`` (SHORT_BINSTRING/BINSTRING) and builtins as ``__builtin__``, like the public WESAD pickles."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, protocol, python2=False):
        super().__init__(file, protocol, fix_imports=True)
        self.python2 = python2

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if not module.startswith("numpy._core"):
            return super().save_global(obj, name)
        module, name = module.replace("numpy._core", "numpy.core"), name or obj.__qualname__
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    def _save_py2_str(self, obj, data):
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_bytes(self, obj):
        if not self.python2:
            return pickle._Pickler.save_bytes(self, obj)
        self._save_py2_str(obj, obj)

    def save_str(self, obj):
        if not self.python2:
            return pickle._Pickler.save_str(self, obj)
        self._save_py2_str(obj, obj.encode("latin-1"))

    dispatch[types.FunctionType] = lambda self, obj: self.save_global(obj)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def legacy_pickle(obj, protocol=2, python2=False) -> bytes:
    """``obj`` pickled as numpy 1.x (and, with ``python2``, Python 2) wrote it."""
    out = io.BytesIO()
    LegacyPickler(out, protocol, python2).dump(obj)
    return out.getvalue()


class Reduces:
    """Pickles as ``func(*args)`` followed by BUILD ``state`` (when not None): any call a crafted file can make."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def byte_mutations(data: bytes, seed: int = 0, header: int = 73):
    """The generator of crafted files: name -> mutation of ``data`` (truncations, 8 seeded byte flips, the 8 bytes
    at ``header`` (a checkpoint's safetensors header length) set to 2**40, the first JSON shape grown, trailing
    bytes)."""
    rng = random.Random(seed)
    out = {f"truncated-at-{n}": data[:n] for n in (0, 7, 72, 80, 81 + 10, len(data) // 2, len(data) - 1)}
    for i in range(8):
        at = rng.randrange(len(data))
        out[f"byte-{at}-flipped"] = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    out["header-length-2-to-40"] = data[:header] + struct.pack("<Q", 1 << 40) + data[header + 8 :]
    out["tensor-shape-grown"] = data.replace(b'"shape":[', b'"shape":[99999,', 1)
    out["trailing-garbage"] = data + b"\0" * 4096
    return out
