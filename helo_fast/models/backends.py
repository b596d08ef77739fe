"""Which backend each custom op of HeLo runs on: the one answer training, its fingerprint and the demo use."""

from __future__ import annotations

from typing import Dict

import torch

from .._backend import choose_backend

# The custom ops a HeLo forward/backward runs (the fused modules' ops; HeLo's OT step is one gromov_wasserstein call,
# whose inner solver runs inside it).
HELO_OPS = ("lcd_attention", "gromov_wasserstein", "seeded_dropout")


def op_backends(backend: str, device: torch.device) -> Dict[str, str]:
    """The backend each op of HeLo resolves to for ``backend`` (a ``HeLoConfig.backend``) on ``device``.

    Returns {op: "reference" | "cpp" | "triton"} for the ops of ``HELO_OPS``; raises RuntimeError, saying what is
    missing, when ``backend`` names a backend that cannot run one of them here (see ``_backend.choose_backend``).
    """
    return {op: choose_backend(backend, device, op) for op in HELO_OPS}
