"""Checkpoints: plain data and tensors only (nothing in a file runs), corruption and truncation detected,
resume falls back to the last good one, a resume that would change the numbers is refused."""

import io
import os
import pickle
import random

import numpy as np
import pytest
import safetensors.torch
import torch

from helo_fast.data import make_synthetic_dataset
from helo_fast.training import TrainConfig, plan_run, run_experiment
from helo_fast.training.checkpoint import (
    LEGACY_MAGIC,
    MAGIC,
    CheckpointError,
    atomic_save,
    load_checked,
    load_latest_good,
    previous_path,
)
from helo_fast.training.fingerprint import fingerprint_differences, run_fingerprint
from crafted import WritesMarker, with_header
from training_cases import LAYOUT, Interrupt, interrupt_at, small_config


def test_round_trip_and_previous_version_kept(tmp_path):
    path = str(tmp_path / "ck.pt")
    atomic_save({"step": 1, "w": torch.arange(4.0)}, path)
    atomic_save({"step": 2, "w": torch.arange(5.0)}, path)
    assert load_checked(path)["step"] == 2 and load_checked(previous_path(path))["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", "ck.pt.prev"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_damaged_file_raises_clear_error(tmp_path, damage):
    path = str(tmp_path / "ck.pt")
    atomic_save({"w": torch.randn(100)}, path)
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF
    else:
        data[:8] = b"NOTACKPT"
    open(path, "wb").write(bytes(data))
    match = "not a helo_fast checkpoint" if damage == "header" else "corrupt or truncated"
    with pytest.raises(CheckpointError, match=match):
        load_checked(path)


def test_latest_bad_falls_back_to_previous_good_with_warning(tmp_path):
    path = str(tmp_path / "ck.pt")
    atomic_save({"step": 1}, path)
    atomic_save({"step": 2}, path)
    open(path, "r+b").truncate(30)
    with pytest.warns(UserWarning, match="resuming from the previous good checkpoint"):
        assert load_latest_good(path)["step"] == 1
    open(previous_path(path), "r+b").truncate(5)
    with pytest.raises(CheckpointError, match="the previous one is bad too"):
        load_latest_good(path)


@pytest.mark.slow
def test_resume_after_a_corrupt_checkpoint_matches_uninterrupted_run(tmp_path):
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=8, rows_per_trial=4, layout=LAYOUT, seed=3)

    def config(folder, resume=False):
        return TrainConfig(
            epochs=4,
            batch_size=8,
            seed=5,
            quiet=True,
            device="cpu",
            checkpoint_dir=str(folder),
            checkpoint_every=1,
            resume=resume,
            baselines=False,
        )

    straight = run_experiment(data, small_config(), config(tmp_path / "a"))
    with pytest.raises(Interrupt):  # checkpoints after epochs 1, 2, 3; the one of epoch 3 gets damaged
        run_experiment(data, small_config(), config(tmp_path / "b"), on_epoch_end=interrupt_at(0, 3))
    latest = str(tmp_path / "b" / "checkpoint.pt")
    open(latest, "r+b").truncate(os.path.getsize(latest) - 100)
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        resumed = run_experiment(data, small_config(), config(tmp_path / "b", resume=True))
    assert resumed["summary"] == straight["summary"]


# --- format: plain data and tensors only ------------------------------------------------------------
def test_state_types_round_trip(tmp_path):
    path = str(tmp_path / "ck.pt")
    state = {
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
            "param_groups": [{"betas": (0.9, 0.999), "foreach": None, "params": [0]}],
        },
        "numpy": ("MT19937", np.arange(624, dtype=np.uint32), 3, 0, 0.0),
        "rows": np.array([4, 1], dtype=np.int64),
        "python": (3, tuple(range(5)), None),
        "floats": [float("nan"), float("inf"), -0.5, np.float32(2.5)],
        "half": torch.ones(3, dtype=torch.bfloat16),
        "view": torch.arange(10.0)[::2],
        "empty": torch.zeros(0, 4),
        "__tuple__": "a key that looks like a tag",
        "nested": {1.5: "float key", (1, 2): "tuple key"},
    }
    atomic_save(state, path)
    loaded = load_checked(path)
    assert loaded["optimizer"]["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])
    assert loaded["optimizer"]["param_groups"] == [{"betas": (0.9, 0.999), "foreach": None, "params": [0]}]
    assert loaded["numpy"][0] == "MT19937" and loaded["numpy"][1].dtype == np.uint32
    assert np.array_equal(loaded["numpy"][1], state["numpy"][1]) and loaded["rows"].tolist() == [4, 1]
    assert loaded["python"] == (3, (0, 1, 2, 3, 4), None)
    assert np.isnan(loaded["floats"][0]) and loaded["floats"][1:] == [float("inf"), -0.5, 2.5]
    assert loaded["half"].dtype == torch.bfloat16 and loaded["view"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert loaded["empty"].shape == (0, 4) and loaded["__tuple__"] == state["__tuple__"]
    assert loaded["nested"] == state["nested"]
    atomic_save({"numpy": np.random.get_state(), "python": random.getstate()}, path)
    rngs = load_checked(path)
    np.random.set_state(rngs["numpy"])  # the RNG states restore as they were saved
    random.setstate(rngs["python"])


@pytest.mark.parametrize("value", [object(), {1, 2}, np.array(["text"]), lambda: 0])
def test_values_that_are_not_plain_data_are_refused(tmp_path, value):
    with pytest.raises(TypeError, match="cannot store"):
        atomic_save({"x": value}, str(tmp_path / "ck.pt"))
    assert not os.path.exists(tmp_path / "ck.pt")


def crafted_checkpoints(tmp_path, marker):
    """Files with valid SHA-256 headers whose payload would run code if it were unpickled."""
    pickled = pickle.dumps({"format": "helo_fast-train-v2", "x": WritesMarker(marker)})
    buffer = io.BytesIO()
    torch.save({"x": WritesMarker(marker)}, buffer)
    return {
        "legacy-pickle": with_header(LEGACY_MAGIC, pickled),
        "legacy-torch-save": with_header(LEGACY_MAGIC, buffer.getvalue()),
        "pickle-under-new-header": with_header(MAGIC, pickled),
        "torch-save-under-new-header": with_header(MAGIC, buffer.getvalue()),
    }


@pytest.mark.parametrize(
    "kind", ["legacy-pickle", "legacy-torch-save", "pickle-under-new-header", "torch-save-under-new-header"]
)
def test_crafted_checkpoint_never_runs_code(tmp_path, kind):
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(crafted_checkpoints(tmp_path, marker)[kind])
    # A pickle under the new header is refused at its sizes (a pickle is no safetensors header) before it is read.
    match = "earlier helo_fast version" if kind.startswith("legacy") else "corrupt or truncated: it declares a header"
    with pytest.raises(CheckpointError, match=match) as error:
        load_checked(str(path))
    assert str(path) in str(error.value)
    atomic_save({"step": 1}, previous_path(str(path)), keep_previous=False)
    if kind.startswith("legacy"):  # an old-format file is refused, not skipped in favour of .prev
        with pytest.raises(CheckpointError, match="earlier helo_fast version"):
            load_latest_good(str(path))
    assert not marker.exists()


def test_crafted_json_state_builds_only_plain_data(tmp_path):
    path = str(tmp_path / "ck.pt")
    for text in ('{"__tensor__": "missing"}', '{"__dict__": [[[1], 2]]}', '{"__float__": "1e400"}', "[" * 100000):
        payload = safetensors.torch.save({}, metadata={"helo_fast_state": text})
        open(path, "wb").write(with_header(MAGIC, payload))
        with pytest.raises(CheckpointError, match="not a helo_fast checkpoint payload"):
            load_checked(path)


# --- recovery ----------------------------------------------------------------------------------------
def test_checkpoint_exists_at_every_instant_of_atomic_save(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pt")
    atomic_save({"step": 1}, path)
    atomic_save({"step": 2}, path)
    real_replace = os.replace

    def killed_before_installing_the_new_file(src, dst):
        if dst == path:
            raise KeyboardInterrupt  # stands for a kill at this instant
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_installing_the_new_file)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 3}, path)
    monkeypatch.undo()
    assert load_checked(path)["step"] == 2 and load_checked(previous_path(path))["step"] == 2


def test_missing_checkpoint_with_previous_falls_back(tmp_path):
    path = str(tmp_path / "ck.pt")
    atomic_save({"step": 1}, path)
    os.replace(path, previous_path(path))  # what a kill between an earlier version's two renames left
    with pytest.warns(UserWarning, match="does not exist; resuming from the previous good checkpoint"):
        assert load_latest_good(path)["step"] == 1


def test_resume_when_only_the_previous_checkpoint_is_left(tmp_path):
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=6, rows_per_trial=4, layout=LAYOUT, seed=3)

    def config(folder, resume=False):
        return TrainConfig(
            epochs=3,
            batch_size=8,
            seed=5,
            quiet=True,
            device="cpu",
            checkpoint_dir=str(folder),
            checkpoint_every=1,
            resume=resume,
            baselines=False,
        )

    straight = run_experiment(data, small_config(), config(tmp_path / "a"))
    with pytest.raises(Interrupt):
        run_experiment(data, small_config(), config(tmp_path / "b"), on_epoch_end=interrupt_at(0, 2))
    latest = str(tmp_path / "b" / "checkpoint.pt")
    os.replace(latest, previous_path(latest))  # killed between the renames: the epoch-2 checkpoint is .prev only
    with pytest.warns(UserWarning, match="resuming from the previous good checkpoint"):
        resumed = run_experiment(data, small_config(), config(tmp_path / "b", resume=True))
    assert resumed["splits"][0]["history"] == straight["splits"][0]["history"]


def test_resume_with_another_thread_count_is_refused(tmp_path):
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=6, rows_per_trial=4, layout=LAYOUT, seed=3)

    def config(threads, resume=False):
        return TrainConfig(
            epochs=2,
            batch_size=8,
            seed=5,
            quiet=True,
            device="cpu",
            threads=threads,
            baselines=False,
            checkpoint_dir=str(tmp_path),
            checkpoint_every=1,
            resume=resume,
        )

    with pytest.raises(Interrupt):
        run_experiment(data, small_config(), config(1), on_epoch_end=interrupt_at(0, 1))
    with pytest.raises(ValueError, match=r"different run \(environment.threads: checkpoint 1, this run 2\)"):
        run_experiment(data, small_config(), config(2, resume=True))
    with pytest.raises(ValueError, match=r"model.dropout_p: checkpoint 0.5, this run 0.25"):
        run_experiment(data, small_config(dropout_p=0.25), config(1, resume=True))
    other_data = make_synthetic_dataset(n_subjects=1, trials_per_subject=6, rows_per_trial=4, layout=LAYOUT, seed=4)
    with pytest.raises(ValueError, match=r"dataset.sha256: checkpoint '[0-9a-f]+', this run '[0-9a-f]+'"):
        run_experiment(other_data, small_config(), config(1, resume=True))
    resumed = run_experiment(data, small_config(), config(1, resume=True))
    assert [h["epoch"] for h in resumed["splits"][0]["history"]] == [1, 2]


def test_fingerprint_names_each_difference_of_the_environment():
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=2, rows_per_trial=2, layout=LAYOUT, seed=0)
    cfg = TrainConfig(device="cpu")
    one = run_fingerprint(data, plan_run(small_config(), cfg), world_size=1)
    two = run_fingerprint(data, plan_run(small_config(backend="reference"), cfg), world_size=2)
    differences = fingerprint_differences(two, one)
    assert "environment.world_size: checkpoint 2, this run 1" in differences
    assert "model.backend: checkpoint 'reference', this run 'auto'" in differences
    assert fingerprint_differences(one, one) == []
