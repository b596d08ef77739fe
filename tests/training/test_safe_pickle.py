"""The restricted unpickler of WESAD pickles: plain numeric numpy data only, checked while it is built.

Each crafted file is loaded in a child process with a memory cap (tests/support/crafted_worker.py), so a segfault,
a hang or a huge allocation fails the test instead of killing pytest. Before issue 25 the unpickler called
numpy.ndarray / numpy.dtype as the file asked: an object array over raw bytes (segfault), dtype fields at
arbitrary offsets, NEWOBJ arrays over uninitialised memory and 1 GiB from a tiny file all got through.
"""

import codecs
import pickle
import struct
import warnings

import numpy as np
import pytest

from crafted import Reduces, byte_mutations, legacy_pickle
from crafted_run import load_in_child
from helo_fast.data.safe_pickle import UnsafePickleError, load_plain_pickle

try:
    from numpy._core import multiarray, numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray, numeric

F8_STATE = (3, "<", None, None, None, -1, -1, 0)


def _dtype(spec, state=F8_STATE):
    return Reduces(np.dtype, (spec, False, True), state)


def _array(shape, dtype, data, fortran=False):
    """What numpy writes for an array: _reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype, F, data)."""
    return Reduces(multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, fortran, data))


# NEWOBJ numpy.ndarray((1 << 20,)): an array over 1 MiB of uninitialised heap memory
NEWOBJ_NDARRAY = b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x10\x00\x85\x81."


def _nested(depth):
    """Lists nested ``depth`` deep, as raw opcodes (pickle.dumps itself would recurse too deep)."""
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."


class _Repeated:
    """The same memoized 1 MiB text encoded 300 times: 300 MiB from a file of about 1 MiB."""

    def __reduce__(self):
        text = "x" * (1 << 20)
        return frozenset, ([Reduces(codecs.encode, (text, "latin1")) for _ in range(300)],)


# name -> (object or raw bytes, protocol, text the refusal names)
REFUSED = {
    "issue-object-array-over-bytes": (
        Reduces(np.ndarray, ((1,), np.dtype("O"), b"\x41" * 8)),
        2,
        "'O8' is not a plain numeric dtype",
    ),
    "ndarray-over-a-buffer": (Reduces(np.ndarray, ((2,), _dtype("f8"), b"\x00" * 16)), 2, "calls numpy.ndarray itself"),
    "newobj-ndarray": (NEWOBJ_NDARRAY, None, "calls numpy.ndarray itself"),
    "dtype-fields-at-negative-offset": (
        _dtype("f8", (3, "<", None, ("a",), {"a": (np.dtype("f8"), -8)}, 8, 1, 0)),
        2,
        "subarray, fields or metadata",
    ),
    "dtype-state-with-huge-elsize": (_dtype("f8", (3, "<", None, None, None, 1 << 40, -1, 0)), 2, "item size"),
    "dtype-object": (_dtype("O8"), 4, "not a plain numeric dtype"),
    "dtype-void": (_dtype("V16"), 4, "not a plain numeric dtype"),
    "dtype-set-twice": (Reduces(Reduces, (np.dtype, ("f8", 0, 1), F8_STATE), F8_STATE), 2, "Reduces"),
    "object-array-via-reconstruct": (_array((1,), _dtype("O8"), [1]), 2, "not a plain numeric dtype"),
    "array-data-short-of-its-shape": (_array((1 << 30,), _dtype("f8"), b""), 2, "needs 8589934592 bytes"),
    "array-data-longer-than-its-shape": (_array((1,), _dtype("f8"), b"\x00" * 16), 4, "needs 8 bytes"),
    "array-negative-shape": (_array((-1,), _dtype("f8"), b""), 4, "shape must be a tuple"),
    "array-subclass": (Reduces(multiarray._reconstruct, (np.matrix, (0,), b"b")), 2, "numpy.matrix"),
    "reconstruct-of-a-set": (Reduces(multiarray._reconstruct, (set, (0,), b"b")), 2, "_reconstruct builds only"),
    "frombuffer-object": (
        Reduces(numeric._frombuffer, (b"\x00" * 8, _dtype("O8"), (1,), "C")),
        5,
        "not a plain numeric dtype",
    ),
    "frombuffer-short": (
        Reduces(numeric._frombuffer, (b"\x00" * 8, _dtype("f8"), (1 << 28,), "C")),
        5,
        "needs 2147483648 bytes",
    ),
    "scalar-object": (Reduces(multiarray.scalar, (_dtype("O8"), 0)), 2, "not a plain numeric dtype"),
    "scalar-short": (Reduces(multiarray.scalar, (_dtype("f8"), b"\x00")), 4, "needs 8 bytes"),
    "bytearray-of-1-gib": (Reduces(bytearray, (1 << 30,)), 2, "admitted with bytes or latin-1 text only"),
    "bytes-of-1-gib": (Reduces(bytes, (1 << 30,)), 4, "admitted with bytes or latin-1 text only"),
    "repeated-data-past-the-cap": (_Repeated(), 2, "past its cap"),
    "deep-nesting": (_nested(5000), None, "nested more than 100 deep"),
    "codecs-rot13": (Reduces(codecs.encode, ("text", "rot13")), 2, "encoded as latin-1"),
    "builtin-eval": (Reduces(eval, ("1+1",)), 2, ".eval, which is not"),
    "callable-left-in-data": (Reduces(frozenset, ([np.dtype],)), 4, "leaves a type in its data"),
    # 12 bytes that ask CPython's unpickler to allocate 4 GiB before reading (BINBYTES8, BYTEARRAY8, BINUNICODE8)
    "binbytes8-declares-4-gib": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 32) + b".", None, "declares 4294967296"),
    "bytearray8-declares-4-gib": (b"\x80\x05\x96" + struct.pack("<Q", 1 << 32) + b".", None, "declares 4294967296"),
    "binunicode8-declares-4-gib": (b"\x80\x04\x8d" + struct.pack("<Q", 1 << 32) + b".", None, "declares"),
    "frame-declares-4-gib": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 32) + b"N.", None, "declares"),
    "no-stop": (b"\x80\x02N", None, "truncated"),
}


def _write(path, obj, protocol):
    path.write_bytes(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=protocol))
    return path


@pytest.fixture(scope="module")
def refused_outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pickles")
    files = {name: _write(tmp / f"{name}.pkl", obj, protocol) for name, (obj, protocol, _) in REFUSED.items()}
    return files, load_in_child("pickle", list(files.values()))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_crafted_pickle_is_refused_naming_the_file(refused_outcomes, name):
    files, outcomes = refused_outcomes
    outcome = outcomes[str(files[name])]
    assert outcome["outcome"] == "error", outcome
    assert "UnpicklingError" in outcome["classes"], outcome
    assert str(files[name]) in outcome["message"] and REFUSED[name][2] in outcome["message"], outcome


def test_the_dtype_proxy_is_never_a_real_dtype_while_loading(tmp_path):
    """A dtype's BUILD state is checked before any real dtype exists (the sneaky path of the issue)."""
    file = _write(
        tmp_path / "x.pkl",
        _array((2,), _dtype("f8", (3, ">", None, None, None, -1, -1, 0)), np.arange(2, dtype=">f8").tobytes()),
        2,
    )
    loaded = load_plain_pickle(str(file))
    assert loaded.dtype == pickle.loads(file.read_bytes()).dtype and loaded.tolist() == [0.0, 1.0]
    file = _write(tmp_path / "y.pkl", _dtype("f8", (3, "|", None, None, None, -1, -1, 0)), 2)
    with pytest.raises(UnsafePickleError, match="byte order '|'"):
        load_plain_pickle(str(file))


ARRAYS = {
    "f8": np.linspace(0, 1, 7),
    "f4-big-endian": np.arange(6, dtype=">f4").reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "i2": np.arange(5, dtype=np.int16),
    "bool": np.array([True, False]),
    "c16": np.array([1 + 2j]),
    "empty": np.zeros((0, 3)),
    "u1": np.frombuffer(bytes(range(256)), dtype=np.uint8),
    "f2": np.ones(3, dtype=np.float16),
}
RECORD = {
    "signal": {"chest": dict(ARRAYS)},
    "label": np.arange(4, dtype=np.int32),
    "subject": "S2",
    "scalars": (np.float64(2.5), np.int64(-3), np.bool_(True)),
    "dtype": np.dtype("<u4"),
    "bytes": b"\x00\xff",
    "set": {1, 2},
    "frozen": frozenset({3}),
    "complex": 1 + 2j,
    "bytearray": bytearray(b"ab"),
    "empty": b"",
}


@pytest.mark.parametrize(
    "writer", ["numpy2-p2", "numpy2-p4", "numpy2-p5", "numpy1-p2", "numpy1-p4", "numpy1-p5", "python2-numpy1-p2"]
)
def test_real_pickles_load_unchanged(tmp_path, writer):
    """numpy 1.x and 2.x names, Python 2 (str as latin-1) and 3, protocols 2, 4 and 5: every plain array loads."""
    protocol = int(writer[-1])
    if writer.startswith("numpy2"):
        data = pickle.dumps(RECORD, protocol=protocol)
    else:
        python2 = writer.startswith("python2")  # (Python 2 pickled bytearray as (text, "latin-1"): left out)
        data = legacy_pickle({**RECORD, "bytearray": b"ab"} if python2 else RECORD, protocol, python2=python2)
        assert b"numpy.core" in data and b"numpy._core" not in data
    (tmp_path / "r.pkl").write_bytes(data)
    loaded = load_plain_pickle(str(tmp_path / "r.pkl"))
    with warnings.catch_warnings():  # numpy 2 warns about numpy.core names
        warnings.simplefilter("ignore")
        reference = pickle.loads(data, encoding="latin1")  # numpy's own unpickling of our trusted file
    for name, array in ARRAYS.items():
        got, expected = loaded["signal"]["chest"][name], reference["signal"]["chest"][name]
        assert type(got) is np.ndarray and got.dtype == expected.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
    assert loaded["signal"]["chest"]["fortran"].flags.f_contiguous
    assert loaded["scalars"] == RECORD["scalars"] and type(loaded["scalars"][0]) is np.float64
    assert loaded["dtype"] == np.dtype("<u4") and loaded["subject"] == "S2"
    assert loaded["set"] == {1, 2} and loaded["frozen"] == frozenset({3}) and loaded["complex"] == 1 + 2j
    # Python 2's str is text here (read as latin-1), as pickle.load(encoding="latin1") gives it
    expected_bytes = "\x00\xff" if writer.startswith("python2") else b"\x00\xff"
    assert loaded["bytes"] == expected_bytes and loaded["bytearray"] == reference["bytearray"]


def test_shared_and_cyclic_containers_survive(tmp_path):
    shared = [np.arange(3)]
    cyclic = [1]
    cyclic.append(cyclic)
    (tmp_path / "c.pkl").write_bytes(pickle.dumps({"a": shared, "b": shared, "c": cyclic, "t": (shared,)}, 4))
    loaded = load_plain_pickle(str(tmp_path / "c.pkl"))
    assert loaded["a"] is loaded["b"] is loaded["t"][0] and type(loaded["a"][0]) is np.ndarray
    assert loaded["c"][1] is loaded["c"]


def test_mutated_pickles_give_unpickling_errors_or_plain_data(tmp_path):
    """The generator's sweep of the pickle family: truncations, byte flips, grown sizes and garbage after valid
    pickles of every writer; each loads plain numeric data or raises UnpicklingError naming the file, in a child
    capped at +1 GiB (no crash, hang or huge allocation)."""
    sources = {
        "p2": pickle.dumps(RECORD, protocol=2),
        "p5": pickle.dumps(RECORD, protocol=5),
        "py2": legacy_pickle({**RECORD, "bytearray": b"ab"}, 2, python2=True),
    }
    files = []
    for source, data in sources.items():
        for seed in range(3):
            for name, mutated in byte_mutations(data, seed=seed).items():
                files.append(tmp_path / f"{source}-{seed}-{name}.pkl")
                files[-1].write_bytes(mutated)
    outcomes = load_in_child("pickle", files)
    for file in files:
        outcome = outcomes[str(file)]
        assert outcome["outcome"] == "ok" or "UnpicklingError" in outcome["classes"], outcome
        assert outcome["outcome"] == "ok" or str(file) in outcome["message"], outcome
