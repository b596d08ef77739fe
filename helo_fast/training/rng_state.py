"""Every random state a run depends on, saved in its checkpoints and restored on resume (``--resume`` continues
bit for bit): torch's, CUDA's, each rank's mask generator, the shuffling generator, numpy's and Python's."""

from __future__ import annotations

import random
from typing import List, Optional

import numpy as np
import torch


def rng_state(mask_states: List[torch.Tensor], shuffle: Optional[torch.Generator]) -> dict:
    """Every RNG state a run depends on; ``mask_states``: each rank's mask-generator state, in rank order
    (the other generators are drawn from identically on every rank)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "masks": list(mask_states),
        "shuffle": None if shuffle is None else shuffle.get_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(
    state: dict, mask_generator: Optional[torch.Generator], shuffle: Optional[torch.Generator], rank: int = 0
) -> None:
    """Restore what ``rng_state`` saved (the generators in place; ``mask_generator`` gets rank ``rank``'s state)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if mask_generator is not None:
        mask_generator.set_state(state["masks"][rank])
    if shuffle is not None and state["shuffle"] is not None:
        shuffle.set_state(state["shuffle"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
