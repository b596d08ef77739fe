"""Crafted payloads for the file-safety tests: unpickling any of them writes a marker file."""
import hashlib
import os


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
