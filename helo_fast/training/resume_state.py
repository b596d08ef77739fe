"""Checking a loaded training checkpoint field by field before any of it is used.

A checkpoint's checksum says only that the file is the one written; anyone can write a file with a valid
checksum. Before ``--resume`` loads a state into the model, the fused Adam optimiser (which writes ``numel``
elements of each state tensor: a 1-element ``exp_avg`` overflows the heap), the scheduler, the scaler and the
random generators, every field is compared with what this run expects: tensors by shape and dtype, numbers and
strings by type, containers by keys and length, RNG states by type, size and range. A mismatch is a
``CheckpointError`` naming the file and the field.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from .checkpoint import CheckpointError
from ..metrics import METRIC_NAMES

_MT_WORDS = 624  # Mersenne Twister state words (numpy's and Python's generators)


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"a {value.dtype} {type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of {len(value)} entries"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"


class StateChecker:
    """Raises ``CheckpointError`` naming ``path`` and the field for the first value unlike the expected one."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, field: str, expected: str, value: Any) -> None:
        raise CheckpointError(f"checkpoint {self.path!r}: field {field} must be {expected}, got {_describe(value)}")

    def like(self, value: Any, template: Any, field: str) -> None:
        """``value`` has ``template``'s structure: same dict keys, list/tuple lengths, scalar types, tensor shapes
        and dtypes (a float where the template holds None is accepted: an optional number)."""
        if isinstance(template, (torch.Tensor, np.ndarray)):
            if (
                type(value) is not type(template)
                or tuple(value.shape) != tuple(template.shape)
                or value.dtype != template.dtype
            ):
                self.fail(field, _describe(template), value)
        elif isinstance(template, dict):
            if not isinstance(value, dict) or set(value) != set(template):
                self.fail(field, f"a dict with keys {sorted(map(str, template))}", value)
            for key, sub in template.items():
                self.like(value[key], sub, f"{field}.{key}")
        elif isinstance(template, (list, tuple)):
            if type(value) is not type(template) or len(value) != len(template):
                self.fail(field, _describe(template), value)
            for i, (v, t) in enumerate(zip(value, template)):
                self.like(v, t, f"{field}[{i}]")
        elif template is None:
            if value is not None and type(value) is not float:
                self.fail(field, "None or a float", value)
        elif type(value) is not type(template):
            self.fail(field, f"a {type(template).__name__}", value)

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if type(value) is not int or not low <= value <= high:
            self.fail(field, f"an int in [{low}, {high}]", value)
        return value

    def number(self, value: Any, field: str, finite: bool = False) -> None:
        if type(value) not in (int, float) or (finite and not math.isfinite(value)):
            self.fail(field, "a finite number" if finite else "a number", value)

    def metrics(self, value: Any, field: str) -> None:
        if not isinstance(value, dict) or not all(m in value for m in METRIC_NAMES):
            self.fail(field, f"a dict of the metrics {list(METRIC_NAMES)}", value)
        for metric in METRIC_NAMES:
            self.number(value[metric], f"{field}.{metric}")

    def records(self, value: Any, field: str, length: Optional[int] = None) -> None:
        """A list (of ``length`` entries) of dicts of str -> number: per-epoch history records."""
        if not isinstance(value, list) or (length is not None and len(value) != length):
            self.fail(field, "a list" + ("" if length is None else f" of {length} records"), value)
        for i, record in enumerate(value):
            if not isinstance(record, dict) or not all(isinstance(k, str) for k in record):
                self.fail(f"{field}[{i}]", "a dict of str -> number", record)
            for key, number in record.items():
                self.number(number, f"{field}[{i}].{key}")


def check_run_state(state: Any, path: str, *, n_splits: int, epochs: int) -> None:
    """The fields of a training checkpoint the run reads before building a model (format, fingerprint, results,
    split_index, epoch, and with a mid-split ``model`` also history and seconds)."""
    check = StateChecker(path)
    if not isinstance(state, dict):
        check.fail("(top level)", "a dict", state)
    for key, kind in (("format", str), ("fingerprint", dict), ("results", list), ("split_index", int), ("epoch", int)):
        if key not in state or type(state[key]) is not kind:
            check.fail(key, f"a {kind.__name__}", state.get(key))
    split_index = check.integer(state["split_index"], "split_index", 0, n_splits)
    check.integer(state["epoch"], "epoch", 0, epochs)
    if len(state["results"]) != split_index:
        check.fail("results", f"a list of {split_index} finished splits (split_index)", state["results"])
    for i, result in enumerate(state["results"]):
        where = f"results[{i}]"
        if not isinstance(result, dict) or not isinstance(result.get("split"), str):
            check.fail(where, "a dict with a 'split' name", result)
        for key in ("train_rows", "test_rows"):
            check.integer(result.get(key), f"{where}.{key}", 0, 2**62)
        check.number(result.get("train_seconds"), f"{where}.train_seconds")
        check.records(result.get("history"), f"{where}.history")
        for model in ("helo", "mean", "mlp"):
            if model in result or model == "helo":
                check.metrics(result.get(model), f"{where}.{model}")
    if "model" in state:
        check.records(state.get("history"), "history", state["epoch"])
        check.number(state.get("seconds"), "seconds", finite=True)
        if split_index >= n_splits:
            check.fail("split_index", f"< {n_splits} in a checkpoint taken within a split", split_index)


def _adam_state_template(optimizer: torch.optim.Optimizer) -> dict:
    """What fused Adam keeps per parameter: a float32 scalar ``step`` and two moments shaped like the parameter."""
    template = {}
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            like = torch.empty(p.shape, dtype=p.dtype)
            template[index] = {"step": torch.zeros((), dtype=torch.float32), "exp_avg": like, "exp_avg_sq": like}
            if group.get("amsgrad"):
                template[index]["max_exp_avg_sq"] = like
            index += 1
    return template


def _on_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _check_generator_states(check: StateChecker, rng: Any, template: dict) -> None:
    check.like(rng, template, "rng")
    name, words, pos, has_gauss, _ = rng["numpy"]
    if name != "MT19937" or not 0 <= pos <= _MT_WORDS or has_gauss not in (0, 1):
        check.fail("rng.numpy", f"('MT19937', {_MT_WORDS} words, position 0..{_MT_WORDS}, 0 or 1, float)", rng["numpy"])
    version, words, _ = rng["python"]
    if version != 3 or not all(type(w) is int and 0 <= w < 2**32 for w in words[:-1]) or not 0 < words[-1] <= _MT_WORDS:
        check.fail("rng.python", f"random.getstate()'s (3, {_MT_WORDS + 1} ints, None or float)", rng["python"])


def check_split_state(
    state: dict,
    path: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rng_template: dict,
) -> None:
    """The mid-split fields (model, optimizer, scheduler, scaler, rng) against the fresh objects of this split.

    ``rng_template``: ``rng_state`` of this run's generators (its values are ignored, its types and sizes
    are the expected ones)."""
    check = StateChecker(path)
    check.like(state.get("model"), _on_cpu(model.state_dict()), "model")
    saved = state.get("optimizer")
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        check.fail("optimizer", "a dict with keys ['param_groups', 'state']", saved)
    check.like(saved["param_groups"], fresh["param_groups"], "optimizer.param_groups")
    template = _adam_state_template(optimizer)
    if not isinstance(saved["state"], dict) or not set(saved["state"]) <= set(template):
        check.fail("optimizer.state", f"a dict keyed by parameter indices 0..{len(template) - 1}", saved["state"])
    for index, entry in saved["state"].items():
        check.like(entry, template[index], f"optimizer.state[{index}]")
    check.like(state.get("scheduler"), scheduler.state_dict(), "scheduler")
    if scaler is None:
        if state.get("scaler") is not None:
            check.fail("scaler", "None (this run uses no gradient scaler)", state.get("scaler"))
    else:
        check.like(state.get("scaler"), scaler.state_dict(), "scaler")
    _check_generator_states(check, state.get("rng"), _on_cpu(rng_template))
