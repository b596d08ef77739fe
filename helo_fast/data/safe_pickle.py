"""Reading pickles of numpy arrays without running code from the file.

``pickle.load`` calls whatever callable the file names, so a crafted file runs code before any
check. ``load_plain_pickle`` admits only what a data pickle such as WESAD's ``SX.pkl`` needs:
numpy arrays (written by numpy 1.x or 2.x, any pickle protocol), numpy dtypes and scalars, and the
builtin containers and scalars. Any other name in the file raises ``UnsafePickleError`` before it is
called.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_LATIN1_NAMES = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Pickles of bytes written with protocol < 3 call _codecs.encode(text, "latin1"); admit only that codec.
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(f"_codecs.encode is admitted only for latin-1 text, got encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_names() -> Dict[Tuple[str, str], Callable]:
    names: Dict[Tuple[str, str], Callable] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): _latin1_encode}
    # numpy 1.x wrote numpy.core.*, numpy 2.x writes numpy._core.*; both resolve to this numpy's functions.
    for package in ("numpy.core", "numpy._core"):
        names[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        names[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        names[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    for module in ("builtins", "__builtin__"):  # Python 2 pickles name the builtins module __builtin__
        for kind in (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool):
            names[(module, kind.__name__)] = kind
    return names


ALLOWED_NAMES = _allowed_names()


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something other than numpy arrays, dtypes or builtin containers/scalars.

    ``reason`` says what was refused; ``file`` (when known) is named in the message too.
    """

    def __init__(self, reason: str, file: Optional[str] = None):
        super().__init__(reason if file is None else f"{file!r}: {reason}")
        self.reason, self.file = reason, file


class PlainDataUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` resolves only the names in ``ALLOWED_NAMES``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_NAMES[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"it references {module}.{name}, which is not a numpy array, dtype or builtin "
                                    "container/scalar; unpickling it could run code") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("it uses persistent ids, which a plain data pickle does not")


def load_plain_pickle(file: str) -> Any:
    """Unpickle ``file`` admitting only numpy arrays, dtypes and builtin containers/scalars.

    Python 2 pickles (such as the public WESAD release) are read with ``encoding="latin1"``.
    Raises ``UnsafePickleError`` (naming ``file``) for anything else, before calling it; other
    unpickling errors propagate as they are.
    """
    try:
        with open(file, "rb") as fh:  # streamed: a WESAD subject's pickle is about 1 GB
            return PlainDataUnpickler(fh, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(exc.reason, file) from None
