"""Triton kernels and launchers, one file per op (installed as ``helo_fast.kernels``).

Importable without Triton: ``TRITON_ERROR`` then says why the Triton backend is unavailable.
"""

from __future__ import annotations

import os

try:
    import triton  # noqa: F401

    TRITON_ERROR = None
except ImportError as exc:
    TRITON_ERROR = f"triton is not installed ({exc})"


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET=1, i.e. Triton kernels run on CPU tensors (slow; for tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"
