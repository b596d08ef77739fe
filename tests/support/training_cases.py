"""Small training problems the training, checkpoint and command-line tests share: a small feature layout and model,
the command-line arguments of a tiny synthetic run, an epoch hook that interrupts a run where asked, and the
``one_thread`` fixture of in-process runs."""

import pytest
import torch

from helo_fast.data import FeatureLayout
from helo_fast.models import HeLoConfig

# A small feature layout (4 EEG channels, 10 classes) for runs on make_synthetic_dataset(layout=LAYOUT).
LAYOUT = FeatureLayout(n_channels=4, band_features=5, gsr_features=8, ppg_features=8, video_features=32, n_classes=10)
SMALL_MODEL = dict(d_model=16, n_heads=2, ffn_dim=16, head_hidden=32)
# A tiny DMER-shaped model for CLI runs (the data there is the default 913-column layout).
CLI_MODEL = [
    "--config",
    "d_model=16",
    "--config",
    "n_heads=2",
    "--config",
    "ffn_dim=8",
    "--config",
    "head_hidden=16",
    "--config",
    "outer_iters=1",
    "--config",
    "inner_iters=2",
]
CLI_DATA = ["--synthetic-subjects", "2", "--synthetic-trials", "3", "--synthetic-rows", "4"]


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is as fast and does not stall when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(**changes) -> HeLoConfig:
    """The HeLoConfig of SMALL_MODEL on LAYOUT, with ``changes`` (HeLoConfig fields) applied."""
    return HeLoConfig(**LAYOUT.as_config(), **{**SMALL_MODEL, **changes})


class Interrupt(Exception):
    """Raised by interrupt_at's hook: stands in for a run killed at the end of an epoch."""


def interrupt_at(split: int, epoch: int):
    """An ``on_epoch_end`` hook for run_experiment that raises Interrupt once split ``split`` has done ``epoch``
    epochs."""

    def hook(split_index, done, record):
        if (split_index, done) == (split, epoch):
            raise Interrupt

    return hook
