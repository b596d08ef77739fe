"""Nested training state <-> (JSON text, flat dict of tensors), for checkpoints that load no code.

``split_state`` walks a state made of None, bool, int, float, str, list, tuple, dict (any of these
as keys), ``torch.Tensor``, ``numpy.ndarray`` and numpy scalars. Tensors and arrays go to a flat
``{name: tensor}`` dict (written with safetensors); everything else becomes JSON in which a
tensor is a reference ``{"__tensor__": name}``. ``join_state`` rebuilds the state from the two and
creates nothing but those types, so reading a state cannot run code.

Tagged JSON objects (one key each) keep what JSON cannot say: tuples, dicts with non-string keys
(an optimiser's ``state`` is keyed by int), non-finite floats and numpy arrays.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Tuple

import numpy as np
import torch

_TENSOR, _NDARRAY, _TUPLE, _DICT, _FLOAT = "__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__"
_TAGS = (_TENSOR, _NDARRAY, _TUPLE, _DICT, _FLOAT)
# Tensor dtypes a numpy array can have (what split_state writes for one): not bfloat16 or the float8s.
_NUMPY_DTYPES = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float16,
    torch.float32,
    torch.float64,
)


class StateFormatError(ValueError):
    """The JSON/tensor pair does not describe a state written by ``split_state``."""


def _to_plain(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        # A fresh contiguous CPU copy: safetensors refuses views and tensors sharing storage.
        tensors[name] = obj.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        return {_TENSOR: name}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot store a numpy array of dtype {obj.dtype} in a checkpoint (numbers and bools only)")
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {_NDARRAY: name}
    if isinstance(obj, list):
        return [_to_plain(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        return {_TUPLE: [_to_plain(v, tensors) for v in obj]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS):
            return {k: _to_plain(v, tensors) for k, v in obj.items()}
        return {_DICT: [[_to_plain(k, tensors), _to_plain(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (plain data and tensors only)")


def split_state(state: Any) -> Tuple[str, Dict[str, torch.Tensor]]:
    """``state`` -> (JSON text, {name: tensor}); TypeError for a value of another type."""
    tensors: Dict[str, torch.Tensor] = {}
    return json.dumps(_to_plain(state, tensors), allow_nan=False, separators=(",", ":")), tensors


def _tensor(name: Any, tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    if not isinstance(name, str) or name not in tensors:
        raise StateFormatError(f"reference to a missing tensor {name!r}")
    return tensors[name]


def _from_plain(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_from_plain(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        raise StateFormatError(f"unexpected JSON value of type {type(obj).__name__}")
    if len(obj) != 1 or next(iter(obj)) not in _TAGS:
        return {k: _from_plain(v, tensors) for k, v in obj.items()}
    tag, value = next(iter(obj.items()))
    if tag == _TENSOR:
        return _tensor(value, tensors)
    if tag == _NDARRAY:
        tensor = _tensor(value, tensors)
        if tensor.dtype not in _NUMPY_DTYPES:
            raise StateFormatError(
                f"numpy array {value!r} has dtype {tensor.dtype}, which numpy has not (numbers and bools only)"
            )
        return tensor.numpy()
    if tag == _FLOAT:
        if value not in ("nan", "inf", "-inf"):
            raise StateFormatError(f"bad non-finite float {value!r}")
        return float(value)
    if not isinstance(value, list):
        raise StateFormatError(f"{tag} must hold a list")
    if tag == _TUPLE:
        return tuple(_from_plain(v, tensors) for v in value)
    pairs = [_from_plain(pair, tensors) for pair in value]
    if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise StateFormatError(f"{_DICT} must hold [key, value] pairs")
    try:
        return {k: v for k, v in pairs}
    except TypeError as exc:  # an unhashable key
        raise StateFormatError(f"bad dict key: {exc}") from None


def join_state(text: str, tensors: Dict[str, torch.Tensor]) -> Any:
    """The state ``split_state`` was given, rebuilt from its JSON text and tensors (StateFormatError if bad)."""
    try:
        return _from_plain(json.loads(text), tensors)
    except RecursionError:
        raise StateFormatError("the state is nested too deeply") from None
    except StateFormatError:
        raise
    except ValueError as exc:
        raise StateFormatError(f"the state is not valid JSON ({exc})") from None
