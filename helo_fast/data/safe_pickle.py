"""Reading pickles of plain numeric numpy arrays without running code or trusting the file.

``pickle.load`` calls whatever callable the file names with whatever arguments it holds, so a crafted
file runs code, builds an object-dtype array over bytes it chose (every element a pointer: a
segfault), gives a dtype fields at arbitrary offsets, or asks for a huge allocation. ``load_plain_pickle``
admits only what a data pickle such as WESAD's ``SX.pkl`` holds, checked when each object is built:

- numpy arrays and scalars of plain numeric dtypes (kind ``b``, ``i``, ``u``, ``f`` or ``c``; either
  byte order; no fields, subarrays or objects), written by numpy 1.x or 2.x, Python 2 or 3, any
  protocol; an array's data must be exactly ``shape x itemsize`` bytes of the file;
- builtin scalars, strings, bytes and containers (dict, list, tuple, set, frozenset, complex).

No real numpy object exists while the file is read: the names the file may call return stand-ins
that check their arguments and state (the dtype's and the array's ``__setstate__`` included) and are
turned into arrays, scalars and dtypes once the whole file has been read. ``numpy.ndarray`` and
``numpy.dtype`` are never called as the file asks (an ndarray over a buffer, or one from NEWOBJ over
uninitialised memory, is refused). Sizes: every size the file declares is checked against the file's
size before it is read (``pickle_sizes``), and what the admitted calls allocate in total is capped at
``2 x file size + 1 MiB`` (a file can hold each byte of its arrays once; protocol < 3 pickles pass it
through one latin-1 copy), so a small file cannot allocate much memory however it repeats its data.
Anything else raises ``UnsafePickleError`` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .pickle_sizes import BoundedReader, check_declared_sizes

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

NUMERIC_KINDS = "biufc"
MAX_NDIM = 32  # numpy 1.x's limit (2.x allows 64)
MAX_DEPTH = 100  # containers nested deeper than this are refused (WESAD's are 4 deep)
BUDGET_FACTOR, BUDGET_SLACK = 2, 1 << 20
_LATIN1_NAMES = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")
_DTYPE_SPEC = re.compile(r"[biufc](1|2|4|8|16|32)")  # what numpy writes: kind + item size
_BYTE_ORDERS = ("<", ">", "=", "|")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than plain numeric numpy arrays and builtin data.

    ``reason`` says what was refused; ``file`` (when known) is named in the message too.
    """

    def __init__(self, reason: str, file: Optional[str] = None):
        super().__init__(reason if file is None else f"{file!r}: {reason}")
        self.reason, self.file = reason, file


def _plain_dtype(spec: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    if not isinstance(spec, str) or not _DTYPE_SPEC.fullmatch(spec):
        raise UnsafePickleError(f"numpy dtype {spec!r} is not a plain numeric dtype (bool, int, uint, float, complex)")
    try:
        return np.dtype(spec)
    except TypeError:  # e.g. f32: no such type
        raise UnsafePickleError(f"numpy dtype {spec!r} does not exist") from None


class _PendingDtype:
    """What the file's ``numpy.dtype(spec, align, copy)`` gets: a checked spec; its state (the byte order)
    comes with BUILD and is checked too. ``dtype()`` is the real dtype, made on first use."""

    __slots__ = ("_base", "_order", "_dtype", "_stated")

    def __new__(cls, spec: Any = None, align: Any = False, copy: Any = True):  # REDUCE, NEWOBJ and INST alike
        if align not in (0, 1) or copy not in (0, 1):
            raise UnsafePickleError(f"numpy.dtype({spec!r}, {align!r}, {copy!r}): align and copy must be bools")
        self = object.__new__(cls)
        self._base, self._order, self._dtype, self._stated = _plain_dtype(spec), "=", None, False
        return self

    def __setstate__(self, state: Any) -> None:
        if self._dtype is not None or self._stated:
            raise UnsafePickleError("the file sets a dtype's state twice, or after the dtype was used")
        # numpy writes (3, order, subarray, names, fields, elsize, alignment, flags[, metadata]).
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise UnsafePickleError(f"a numpy dtype state must be numpy's 8- or 9-tuple, got {_brief(state)}")
        order, subarray, names, fields, elsize, alignment, flags = state[1:8]
        metadata = state[8] if len(state) == 9 else None
        if subarray is not None or names is not None or fields is not None or metadata is not None:
            raise UnsafePickleError(
                "the file gives a numpy dtype a subarray, fields or metadata: only plain numeric dtypes are admitted"
            )
        if order not in _BYTE_ORDERS or (order == "|" and self._base.itemsize != 1):
            raise UnsafePickleError(f"bad byte order {order!r} for numpy dtype {self._base}")
        if elsize not in (-1, self._base.itemsize) or alignment not in (-1, self._base.alignment) or flags != 0:
            raise UnsafePickleError(
                f"the file gives numpy dtype {self._base} item size {elsize!r}, alignment "
                f"{alignment!r} and flags {flags!r}; a plain numeric dtype has -1, -1, 0"
            )
        self._order, self._stated = order, True

    def dtype(self) -> np.dtype:
        if self._dtype is None:
            dtype = self._base if self._order in "=|" else self._base.newbyteorder(self._order)
            if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype or dtype.hasobject:
                raise UnsafePickleError(f"numpy dtype {dtype} is not a plain numeric dtype")  # never: spec checked
            self._dtype = dtype
        return self._dtype


class _NdarrayCalled:
    """What the file gets for the name ``numpy.ndarray``: only an argument of numpy's ``_reconstruct``.

    Calling it (``ndarray(shape, dtype, buffer)``: an array over memory the file chooses) or NEWOBJ of it
    (an array over uninitialised memory) is refused."""

    def __new__(cls, *args, **kwargs):
        raise UnsafePickleError(
            "the file calls numpy.ndarray itself (REDUCE or NEWOBJ), which builds an array over "
            "memory the file chooses or over uninitialised memory; numpy's own pickles "
            "call _reconstruct or _frombuffer"
        )


class _Pending:
    """A numpy array or scalar under construction; ``value()`` is the real object once it is complete."""

    __slots__ = ("_value",)
    __hash__ = None  # like an ndarray: a set or dict key would be refused anyway

    def __init__(self, value: Any = None):
        self._value = value

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("the file sets the state (BUILD) of a finished numpy array or scalar")

    def value(self) -> Any:
        if self._value is None:
            raise UnsafePickleError("a numpy array from _reconstruct never got its state (BUILD)")
        return self._value


class _PendingScalar(_Pending):
    __slots__ = ()
    __hash__ = object.__hash__  # numpy scalars may be set members and dict keys


class _PendingArray(_Pending):
    """What the file's ``_reconstruct(ndarray, ...)`` gets; its BUILD state is checked, then the array made."""

    __slots__ = ("_builder",)

    def __init__(self, builder: "_Builder"):
        super().__init__()
        self._builder = builder

    def __setstate__(self, state: Any) -> None:
        if self._value is not None:
            super().__setstate__(state)
        self._value = self._builder.array_from_state(state)


def _brief(obj: Any) -> str:
    text = repr(obj) if isinstance(obj, (int, float, str, type(None))) else type(obj).__name__
    return text if len(text) < 60 else text[:57] + "..."


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1_NAMES:
        raise UnsafePickleError(
            f"text must be str encoded as latin-1 (as Python 2 and protocol < 3 pickles write "
            f"bytes), got {_brief(text)} and encoding {encoding!r}"
        )
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise UnsafePickleError("text encoded as latin-1 holds a character above U+00FF") from None


class _Builder:
    """The callables one load hands out for the names it admits; it counts the bytes they allocate."""

    def __init__(self, budget: int):
        self.budget = budget

    def charge(self, nbytes: int, what: str) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise UnsafePickleError(
                f"{what} would take the memory the file may ask for past its cap (2 x file "
                "size + 1 MiB): the file repeats its data"
            )

    def raw_bytes(self, data: Any, what: str) -> bytes:
        """Array or scalar data: bytes, bytearray, or latin-1 text (Python 2's str read with encoding=latin1)."""
        if isinstance(data, str):
            data = _latin1(data)
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(f"{what}'s data must be bytes, got {_brief(data)}")
        return data

    @staticmethod
    def _shape(shape: Any) -> Tuple[int, ...]:
        if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
            raise UnsafePickleError(
                f"a numpy array's shape must be a tuple of at most {MAX_NDIM} ints >= 0, got {_brief(shape)}"
            )
        return shape

    def _checked(self, shape: Any, dtype: Any, data: Any, what: str) -> Tuple[Tuple[int, ...], np.dtype, Any]:
        if not isinstance(dtype, _PendingDtype):
            raise UnsafePickleError(f"{what}'s dtype must come from numpy.dtype, got {_brief(dtype)}")
        shape, dtype = self._shape(shape), dtype.dtype()
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        data = self.raw_bytes(data, what)
        if len(data) != nbytes:
            raise UnsafePickleError(
                f"{what} of shape {shape} and dtype {dtype} needs {nbytes} bytes of data, the file gives {len(data)}"
            )
        self.charge(nbytes, what)
        return shape, dtype, data

    def array_from_state(self, state: Any) -> np.ndarray:
        """ndarray.__setstate__'s state (version, shape, dtype, is_fortran, data), checked, -> the array."""
        if isinstance(state, tuple) and len(state) == 4:
            state = (1,) + state
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1 or state[3] not in (0, 1):
            raise UnsafePickleError(
                f"a numpy array state must be (1, shape, dtype, is_fortran, data), got {_brief(state)}"
            )
        shape, dtype, data = self._checked(state[1], state[2], state[4], "a numpy array")
        array = _multiarray._reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__((1, shape, dtype, bool(state[3]), data))
        return array

    # ---- the names the file may call (see PlainDataUnpickler.find_class)
    def reconstruct(self, cls: Any, shape: Any = (0,), typecode: Any = b"b") -> _PendingArray:
        if cls is not _NdarrayCalled:
            raise UnsafePickleError(f"_reconstruct builds only numpy.ndarray (no subclass), got {_brief(cls)}")
        return _PendingArray(self)

    def frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> _Pending:
        if order not in ("C", "F"):
            raise UnsafePickleError(f"_frombuffer's order must be 'C' or 'F', got {_brief(order)}")
        shape, dtype, data = self._checked(shape, dtype, buffer, "a numpy array")
        return _Pending(_numeric._frombuffer(data, dtype, shape, order))

    def scalar(self, dtype: Any, data: Any = None) -> _PendingScalar:
        if not isinstance(dtype, _PendingDtype):
            raise UnsafePickleError(f"a numpy scalar's dtype must come from numpy.dtype, got {_brief(dtype)}")
        _, real, data = self._checked((), dtype, data, "a numpy scalar")
        return _PendingScalar(_multiarray.scalar(real, bytes(data)))

    def codecs_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        data = _latin1(text, encoding)  # protocol < 3 pickles write bytes as _codecs.encode(text, "latin1")
        self.charge(len(data), "_codecs.encode")
        return data

    def _bytes_like(self, kind: type, args: tuple) -> Any:
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
            data = args[0]
        elif len(args) == 2 and isinstance(args[0], str):
            data = _latin1(*args)
        else:  # bytes(n) / bytearray(n) would allocate n bytes
            raise UnsafePickleError(
                f"{kind.__name__}() is admitted with bytes or latin-1 text only, got "
                f"{', '.join(_brief(a) for a in args)}"
            )
        self.charge(len(data), kind.__name__)
        return kind(data)

    def make_bytes(self, *args: Any) -> bytes:
        return self._bytes_like(bytes, args)

    def make_bytearray(self, *args: Any) -> bytearray:
        return self._bytes_like(bytearray, args)

    def _collection(self, kind: type, args: tuple) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
            raise UnsafePickleError(
                f"{kind.__name__}() is admitted with a list, tuple or set only, got "
                f"{', '.join(_brief(a) for a in args)}"
            )
        items = args[0] if args else ()
        self.charge(len(items), kind.__name__)
        return kind(items)

    def make_set(self, *args: Any) -> set:
        return self._collection(set, args)

    def make_frozenset(self, *args: Any) -> frozenset:
        return self._collection(frozenset, args)

    @staticmethod
    def make_complex(*args: Any) -> complex:
        if len(args) > 2 or not all(type(a) in (int, float) for a in args):
            raise UnsafePickleError(
                f"complex() is admitted with two real numbers only, got {', '.join(_brief(a) for a in args)}"
            )
        return complex(*args)


def _admitted_names() -> Dict[Tuple[str, str], str]:
    """(module, name) the file may name -> the _Builder method (or stand-in) it gets."""
    names = {("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype", ("_codecs", "encode"): "codecs_encode"}
    # numpy 1.x wrote numpy.core.*, numpy 2.x writes numpy._core.*
    for package in ("numpy.core", "numpy._core"):
        names[(f"{package}.multiarray", "_reconstruct")] = "reconstruct"
        names[(f"{package}.multiarray", "scalar")] = "scalar"
        names[(f"{package}.numeric", "_frombuffer")] = "frombuffer"
    for module in ("builtins", "__builtin__"):  # Python 2 pickles name the builtins module __builtin__
        for kind in ("bytes", "bytearray", "set", "frozenset", "complex"):
            names[(module, kind)] = f"make_{kind}"
    return names


ADMITTED_NAMES = _admitted_names()


class PlainDataUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` resolves only ``ADMITTED_NAMES``, to checking stand-ins.

    ``load()`` returns the raw result, stand-ins included: use ``load_plain_pickle``, which checks the
    file's sizes first and turns the stand-ins into numpy objects.
    """

    def __init__(self, file, budget: int):
        super().__init__(file, encoding="latin1")  # Python 2 pickles (the public WESAD release)
        self._builder = _Builder(budget)

    def find_class(self, module: str, name: str) -> Any:
        what = ADMITTED_NAMES.get((module, name))
        if what is None:
            raise UnsafePickleError(
                f"it references {module}.{name}, which is not a numpy array, dtype or builtin "
                "container/scalar; unpickling it could run code"
            )
        if what == "ndarray":
            return _NdarrayCalled
        if what == "dtype":
            return _PendingDtype
        return getattr(self._builder, what)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("it uses persistent ids, which a plain data pickle does not")


_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _materialize(obj: Any, seen: Dict[int, Any], depth: int = 0) -> Any:
    """``obj`` with every stand-in replaced by its numpy object (shared and cyclic containers kept so)."""
    kind = type(obj)
    if kind in _ATOMS:
        return obj
    if kind in (_Pending, _PendingArray, _PendingScalar):
        return obj.value()
    if kind is _PendingDtype:
        return obj.dtype()
    if depth >= MAX_DEPTH:
        raise UnsafePickleError(f"containers nested more than {MAX_DEPTH} deep")
    if id(obj) in seen:
        return seen[id(obj)]
    step = lambda value: _materialize(value, seen, depth + 1)  # noqa: E731
    if kind is list:
        seen[id(obj)] = obj
        obj[:] = [step(v) for v in obj]
    elif kind is dict:
        seen[id(obj)] = obj
        items = [(step(k), step(v)) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
    elif kind is set:
        seen[id(obj)] = obj
        items = [step(v) for v in obj]
        obj.clear()
        obj.update(items)
    elif kind in (tuple, frozenset):
        obj = seen[id(obj)] = kind(step(v) for v in obj)
    else:  # a callable the file named, left in the data
        raise UnsafePickleError(f"the file leaves a {kind.__name__} in its data, not an array or builtin value")
    return obj


def load_plain_pickle(file: str) -> Any:
    """Unpickle ``file`` admitting only plain numeric numpy arrays, dtypes, scalars and builtin data.

    Python 2 pickles (such as the public WESAD release) are read with ``encoding="latin1"``.
    Raises ``UnsafePickleError`` (naming ``file``) for anything refused, before it is built, and
    ``pickle.UnpicklingError`` (naming ``file``) for a malformed or truncated file; ``OSError`` if it
    cannot be opened. Sizes are checked against the file's size before anything is allocated.
    """
    with open(file, "rb") as fh:  # streamed: a WESAD subject's pickle is about 1 GB
        size = os.fstat(fh.fileno()).st_size
        try:
            check_declared_sizes(fh, size)
            fh.seek(0)
            unpickler = PlainDataUnpickler(BoundedReader(fh, size), BUDGET_FACTOR * size + BUDGET_SLACK)
            return _materialize(unpickler.load(), {})
        except UnsafePickleError as exc:
            raise UnsafePickleError(exc.reason, file) from None
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(f"{file!r}: {exc}") from None
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            EOFError,
            RecursionError,
            OverflowError,
        ) as exc:  # the unpickler's own errors for a malformed stream
            raise pickle.UnpicklingError(f"{file!r}: not a valid pickle ({type(exc).__name__}: {exc})") from None
