"""Loads the C++ extension helo_fast._C if it was built, and remembers why not otherwise."""

from __future__ import annotations

try:
    from . import _C  # noqa: F401  (importing registers the torch.ops.helo_fast kernels)

    EXTENSION_ERROR = None
except ImportError as exc:  # the package still works on the reference (and Triton) path
    _C = None
    EXTENSION_ERROR = f"helo_fast._C could not be imported ({exc}); build it with `make build`"


def has_cpp() -> bool:
    """True when the C++ extension (CPU kernels) is importable."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the C++ extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.cuda_built())
