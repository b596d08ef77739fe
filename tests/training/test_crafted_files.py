"""Crafted files of every family a user can hand helo_fast: each gives its documented error, never a crash.

Families: training checkpoints (resumed through ``helo-fast train --resume``: CheckpointError, exit 2, one
line), checkpoint bytes (``load_checked``: CheckpointError), model files (``helo-fast eval``: exit 2, one
line), DMER .mat files and WESAD questionnaire CSVs (ValueError), and pickles (tests/training/test_safe_pickle.py).
Each is a mutation of a valid file (truncated, flipped, declared sizes grown, fields of the wrong type or
shape), loaded in one child process per family with its address space capped at what it maps + 1 GiB and a
timeout (tests/support/crafted_worker.py), so a segfault, hang or huge allocation fails the case that caused it.
"""

import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from crafted import byte_mutations
from crafted_run import load_in_child
from helo_fast.cli import main
from helo_fast.training.checkpoint import MAGIC, atomic_save, load_checked, previous_path
from helo_fast.training.plain_state import split_state
from training_cases import CLI_DATA, CLI_MODEL

TRAIN = [
    "train",
    *CLI_DATA,
    *CLI_MODEL,
    "--epochs",
    "2",
    "--checkpoint-every",
    "1",
    "--batch-size",
    "8",
    "--quiet",
    "--no-baselines",
    "--threads",
    "1",
    "--max-splits",
    "1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run; ``state`` is its epoch-2 checkpoint turned back into an epoch-1 one (so a resume
    trains one epoch with the optimiser state it is given)."""
    run = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--checkpoint-dir", str(run / "base")]) == 0
    state = load_checked(str(previous_path(str(run / "base" / "checkpoint.pt"))))
    assert "model" in state and state["epoch"] == 2
    state["epoch"], state["history"] = 1, state["history"][:1]
    return run, state


def _set(state, path, value):
    """A copy of ``state`` with the entry at ``path`` (keys/indices; tuples rebuilt) set to ``value``
    (``DELETE``: removed)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(state, tuple):
        items = list(state)
        items[head] = _set(items[head], rest, value)
        return tuple(items)
    out = dict(state) if isinstance(state, dict) else list(state)
    if value is DELETE and not rest:
        del out[head]
    elif not rest:
        out[head] = value
    else:
        out[head] = _set(out[head], rest, value)
    return out


DELETE = object()
P0 = ("optimizer", "state", 0)
# name -> (path in the state, new value, text the error names)
STATE_CASES = {
    "adam-exp-avg-of-one-element": (P0 + ("exp_avg",), torch.zeros(1), "optimizer.state[0].exp_avg"),
    "adam-exp-avg-sq-float64": (P0 + ("exp_avg_sq",), None, "optimizer.state[0].exp_avg_sq"),
    "adam-step-a-vector": (P0 + ("step",), torch.zeros(3), "optimizer.state[0].step"),
    "adam-state-of-unknown-parameter": (("optimizer", "state", 10**6), None, "optimizer.state"),
    "adam-param-groups-a-dict": (("optimizer", "param_groups"), {}, "optimizer.param_groups"),
    "adam-lr-a-string": (("optimizer", "param_groups", 0, "lr"), "0.1", "optimizer.param_groups[0].lr"),
    "adam-params-list-grown": (("optimizer", "param_groups", 0, "params"), list(range(999)), "params"),
    "model-tensor-of-wrong-shape": (("model",), None, "field model."),
    "model-tensor-missing": (("model",), "drop-first", "field model must be a dict with keys"),
    "model-a-list": (("model",), [], "field model"),
    "rng-torch-short": (("rng", "torch"), torch.zeros(10, dtype=torch.uint8), "rng.torch"),
    "rng-torch-float": (("rng", "torch"), torch.zeros(5056), "rng.torch"),
    "rng-masks-empty": (("rng", "masks"), [], "rng.masks"),
    "rng-shuffle-a-string": (("rng", "shuffle"), "x", "rng.shuffle"),
    "rng-numpy-position-past-end": (("rng", "numpy", 2), 10**6, "rng.numpy"),
    "rng-numpy-short": (("rng", "numpy", 1), np.zeros(3, dtype=np.uint32), "rng.numpy[1]"),
    "rng-python-short": (("rng", "python"), (3, (1, 2), None), "rng.python"),
    "rng-python-word-too-big": (("rng", "python", 1, 0), 2**40, "rng.python"),
    "rng-numpy-bfloat16": (("rng", "numpy", 1), "bf16", "dtype torch.bfloat16"),
    "scheduler-key-missing": (("scheduler", "gamma"), DELETE, "field scheduler"),
    "scheduler-gamma-a-list": (("scheduler", "gamma"), [1], "scheduler.gamma"),
    "scaler-given-without-16-mixed": (("scaler",), {"scale": 1.0}, "field scaler"),
    "results-a-string": (("results",), "x", "field results"),
    "split-index-past-the-splits": (("split_index",), 7, "split_index"),
    "split-index-a-float": (("split_index",), 0.0, "split_index"),
    "epoch-a-string": (("epoch",), "1", "field epoch"),
    "epoch-past-the-end": (("epoch",), 99, "field epoch"),
    "history-too-short": (("history",), [], "field history"),
    "history-record-a-string": (("history", 0), "x", "history[0]"),
    "seconds-nan": (("seconds",), float("nan"), "field seconds"),
    "fingerprint-missing": (("fingerprint",), DELETE, "field fingerprint"),
    "top-level-a-list": ((), [1, 2], "not a helo_fast training checkpoint"),
    "format-missing": (("format",), DELETE, "not a helo_fast training checkpoint"),
}


def _mutated(state, name):
    path, value, _ = STATE_CASES[name]
    if name == "adam-exp-avg-sq-float64":
        value = state["optimizer"]["state"][0]["exp_avg_sq"].double()
    elif name == "adam-state-of-unknown-parameter":
        value = state["optimizer"]["state"][0]
    elif name == "model-tensor-of-wrong-shape":
        first = next(iter(state["model"]))
        path, value = ("model", first), torch.zeros(1)
    elif isinstance(value, str) and value == "drop-first":
        value = dict(list(state["model"].items())[1:])
    return _set(state, path, value)


def _save_with_bfloat16_numpy_state(state, path):
    """``state`` written with the tensor behind its numpy RNG words replaced by a bfloat16 one (valid checksum)."""
    text, tensors = split_state(state)
    doc = json.loads(text)
    ref = doc["rng"]["numpy"]["__tuple__"][1]["__ndarray__"]
    tensors[ref] = tensors[ref].to(torch.bfloat16)
    payload = safetensors.torch.save(tensors, metadata={"helo_fast_state": text})
    with open(path, "wb") as fh:
        fh.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


@pytest.fixture(scope="module")
def resumed(trained, tmp_path_factory):
    run, state = trained
    argv_files = {}
    for name in ["valid", *STATE_CASES]:
        folder = run / name
        shutil.copytree(run / "base", folder)
        os.remove(folder / "checkpoint.pt.prev")
        target = str(folder / "checkpoint.pt")
        if name == "rng-numpy-bfloat16":
            _save_with_bfloat16_numpy_state(state, target)
        else:
            atomic_save(state if name == "valid" else _mutated(state, name), target, keep_previous=False)
        argv = run / f"{name}.json"
        argv.write_text(json.dumps([*TRAIN, "--checkpoint-dir", str(folder), "--resume"]))
        argv_files[name] = (argv, target)
    return argv_files, load_in_child("cli", [a for a, _ in argv_files.values()], timeout=600)


def test_valid_mid_split_checkpoint_resumes(resumed):
    files, outcomes = resumed
    outcome = outcomes[str(files["valid"][0])]
    assert outcome["outcome"] == "ok" and outcome["detail"]["rc"] == 0, outcome


@pytest.mark.parametrize("name", sorted(STATE_CASES))
def test_malformed_but_checksummed_checkpoint_exits_2_naming_file_and_field(resumed, name):
    """Issue 25 item 2: before, a 1-element exp_avg overflowed the heap in fused Adam (rc 139) and 11 of 15
    such files gave tracebacks; now each is a CheckpointError naming the file and the field, exit 2, one line."""
    files, outcomes = resumed
    argv, target = files[name]
    outcome = outcomes[str(argv)]
    assert outcome["outcome"] == "ok", outcome
    rc, err = outcome["detail"]["rc"], outcome["detail"]["stderr"]
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("helo-fast: error: "), outcome
    assert target in lines[0] and STATE_CASES[name][2] in lines[0], lines[0]


def test_checkpoint_bytes_mutations_give_checkpoint_error(trained, tmp_path):
    """Truncated, flipped and size-grown files, and a sparse 2 GiB file (4 KiB on disk) whose header declares
    2 GiB with a valid checksum: each a CheckpointError naming the file, none read whole (child capped at
    +1 GiB; before issue 25 the sparse file was read whole, 4.4 GiB RSS, before the checksum failed)."""
    run, _ = trained
    data = (run / "base" / "checkpoint.pt.prev").read_bytes()  # the mid-split one: model, optimiser, RNG
    files = []
    for name, mutated in byte_mutations(data).items():
        files.append(tmp_path / f"{name}.pt")
        files[-1].write_bytes(mutated)
    payload = safetensors.torch.save({"t": torch.zeros(1)}, metadata={"helo_fast_state": "{}"})
    header_len = struct.unpack("<Q", payload[:8])[0]
    big = 2 << 30
    grown = json.loads(payload[8 : 8 + header_len])
    grown["t"] = {"dtype": "F32", "shape": [big // 4], "data_offsets": [0, big]}
    head = json.dumps(grown).encode()
    sparse = tmp_path / "sparse-2-gib.pt"
    with open(sparse, "wb") as fh:
        fh.write(MAGIC + hashlib.sha256(b"").hexdigest().encode() + b"\n" + struct.pack("<Q", len(head)) + head)
    os.truncate(sparse, os.path.getsize(sparse) + big)
    files.append(sparse)
    outcomes = load_in_child("checkpoint", files)
    for file in files:
        outcome = outcomes[str(file)]
        assert outcome["outcome"] == "error" and "CheckpointError" in outcome["classes"], outcome
        assert str(file) in outcome["message"], outcome


def test_temp_files_are_exclusive_cleaned_and_named(tmp_path, monkeypatch):
    """Issue 25 item 8: a planted symlink at the temp name is not followed (its target is untouched), a failed
    save leaves no temp file and names the file, and temp files of dead processes are removed at start."""
    from helo_fast.training import atomic_files

    target, path = tmp_path / "victim", str(tmp_path / "ck.pt")
    target.write_text("precious")
    planted = f"{path}.tmp-planted"
    os.symlink(target, planted)
    monkeypatch.setattr(atomic_files, "temp_path", lambda p: planted)
    with pytest.raises(OSError, match="cannot write '.*ck.pt'"):
        atomic_save({"x": 1}, path)
    assert target.read_text() == "precious" and os.path.islink(planted)
    monkeypatch.undo()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "replace", full_disk)
    with pytest.raises(OSError, match="cannot write '.*ck.pt': No space left"):
        atomic_save({"x": 1}, path)
    monkeypatch.undo()
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n and n != os.path.basename(planted)] == []
    dead = tmp_path / "checkpoint.pt.tmp-999999999-abcd"
    legacy = tmp_path / "checkpoint.pt.prev.tmp-999999999"
    mine = tmp_path / f"results.json.tmp-{os.getpid()}-ab"
    for stale in (dead, legacy, mine):
        stale.write_bytes(b"x" * 10)
    removed = atomic_files.remove_stale_temps(str(tmp_path))
    assert sorted(removed) == sorted([str(dead), str(legacy)]) and mine.exists()


MODEL_CASES = {
    "d-model-65536": (("model_config", "d_model"), 65536, "model_config.d_model"),
    "outer-iters-2-to-31": (("model_config", "outer_iters"), 2**31 - 1, "model_config.outer_iters"),
    "inner-iters-a-float": (("model_config", "inner_iters"), 2.5, "model_config.inner_iters"),
    "config-unknown-key": (("model_config", "bogus"), 1, "field model_config"),
    "config-a-list": (("model_config",), [], "field model_config"),
    "weight-of-wrong-shape": (("state_dict",), "shrink-first", "field state_dict."),
    "weights-a-list": (("state_dict",), [], "field state_dict"),
    "test-rows-past-the-data": (("test_rows",), np.array([10**6]), "field test_rows"),
    "test-rows-floats": (("test_rows",), np.array([0.5]), "field test_rows"),
    "train-rows-missing": (("train_rows",), DELETE, "field train_rows"),
    "batch-size-zero": (("batch_size",), 0, "field batch_size"),
    "dtype-unknown": (("dtype",), "float16x", "field dtype"),
    "precision-unknown": (("precision",), "fp8", "field precision"),
    "split-an-int": (("split",), 3, "field split"),
    "other-data": (("dataset_sha256",), "0" * 64, "trained on other data"),
}


def test_model_file_mutations_exit_2_naming_the_file(trained, tmp_path):
    """Issue 25 item 3: a model file may not ask for more than FILE_CONFIG_CAPS (before: d_model=65536 made
    eval allocate 7 GB, outer_iters=2**31-1 ran forever), and every field is checked (type, range, shape)."""
    run, _ = trained
    saved = load_checked(str(run / "base" / "model_0.pt"))
    argv_files = {}
    for name, (path, value, _) in MODEL_CASES.items():
        if isinstance(value, str) and value == "shrink-first":
            first = next(iter(saved["state_dict"]))
            path, value = ("state_dict", first), torch.zeros(1)
        model_file = tmp_path / f"{name}.pt"
        atomic_save(_set(saved, path, value), str(model_file), keep_previous=False)
        argv = tmp_path / f"{name}.json"
        argv.write_text(json.dumps(["eval", *CLI_DATA, "--model", str(model_file), "--quiet", "--threads", "1"]))
        argv_files[name] = (argv, str(model_file))
    outcomes = load_in_child("cli", [a for a, _ in argv_files.values()], timeout=300)
    for name, (argv, model_file) in argv_files.items():
        outcome = outcomes[str(argv)]
        assert outcome["outcome"] == "ok", (name, outcome)
        rc, lines = outcome["detail"]["rc"], outcome["detail"]["stderr"].strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("helo-fast: error: "), (name, outcome)
        assert model_file in lines[0] and MODEL_CASES[name][2] in lines[0], (name, lines[0])


def _data_files(tmp_path):
    """Mutations of a valid DMER .mat and WESAD questionnaire CSV: name -> (family, path)."""
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    good = tmp_path / "good.mat"
    savemat(
        str(good),
        {"feas": rng.normal(size=(6, 913)), "vids": np.arange(6) % 2 + 1, "dis_label": rng.random((2, 10)) + 0.1},
        do_compression=True,
    )
    files = {}
    for name, data in byte_mutations(good.read_bytes(), seed=1).items():
        files[f"mat-{name}"] = ("mat", tmp_path / f"{name}.mat", data)
    bomb = tmp_path / "bomb.mat"  # ~150 KB declaring 1.1 GB of float64 features (issue: 1 MB -> 1.9 GiB)
    savemat(
        str(bomb),
        {"feas": np.zeros((150_000, 913), dtype=np.uint8), "vids": np.ones(150_000), "dis_label": np.ones((1, 10))},
        do_compression=True,
    )
    files["mat-zlib-bomb"] = ("mat", bomb, None)
    cell = tmp_path / "cell.mat"
    savemat(str(cell), {"feas": np.array([["a"], ["b"]], dtype=object), "vids": [1], "dis_label": np.ones((1, 10))})
    files["mat-feas-a-cell"] = ("mat", cell, None)
    quest = (
        "# Subj;S2\n# ORDER;Base;TSST;Medi 1;Fun;Medi 2\n"
        + "".join("# PANAS;" + ";".join(["3"] * 24) + "\n" for _ in range(5))
    ).encode()
    for name, data in byte_mutations(quest, seed=2).items():
        files[f"csv-{name}"] = ("csv", tmp_path / f"{name}.csv", data)
    files["csv-not-numbers"] = ("csv", tmp_path / "nan.csv", quest.replace(b";3", b";x", 1))
    files["csv-long-line"] = ("csv", tmp_path / "long.csv", b"# PANAS;" + b"3;" * 200_000 + b"\n")
    for family, path, data in files.values():
        if data is not None:
            path.write_bytes(data)
    return files


def test_data_file_mutations_give_value_errors(tmp_path):
    """DMER .mat and questionnaire CSV mutations: a ValueError naming the file, or a load of checked data; never
    a crash or an allocation past the child's +1 GiB cap (before issue 25 the .mat bomb unpacked whole)."""
    files = _data_files(tmp_path)
    for family in ("mat", "csv"):
        paths = [path for f, path, _ in files.values() if f == family]
        outcomes = load_in_child(family, paths)
        for name, (f, path, _) in files.items():
            if f != family:
                continue
            outcome = outcomes[str(path)]
            assert outcome["outcome"] == "ok" or "ValueError" in outcome["classes"], (name, outcome)
            if outcome["outcome"] == "error":
                assert str(path) in outcome["message"], (name, outcome)
    assert load_in_child("mat", [files["mat-zlib-bomb"][1]])[str(files["mat-zlib-bomb"][1])]["outcome"] == "error"
