"""Checksummed checkpoints: corruption and truncation are detected; resume falls back to the last good one."""
import os

import pytest
import torch

from helo_fast.checkpoint import CheckpointError, atomic_save, load_checked, load_latest_good, previous_path
from helo_fast.data import make_synthetic_dataset
from helo_fast.train import TrainConfig, run_experiment
from test_train import LAYOUT, Interrupt, _interrupt_at, small_config


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
        return TrainConfig(epochs=4, batch_size=8, seed=5, quiet=True, device="cpu", checkpoint_dir=str(folder),
                           checkpoint_every=1, resume=resume, baselines=False)

    straight = run_experiment(data, small_config(), config(tmp_path / "a"))
    with pytest.raises(Interrupt):  # checkpoints after epochs 1, 2, 3; the one of epoch 3 gets damaged
        run_experiment(data, small_config(), config(tmp_path / "b"), on_epoch_end=_interrupt_at(0, 3))
    latest = str(tmp_path / "b" / "checkpoint.pt")
    open(latest, "r+b").truncate(os.path.getsize(latest) - 100)
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        resumed = run_experiment(data, small_config(), config(tmp_path / "b", resume=True))
    assert resumed["summary"] == straight["summary"]
