"""``env_report()``: versions and which backends are available here (and why not)."""

from __future__ import annotations

import platform
from typing import Dict


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError:
        return "not installed"
    return getattr(module, "__version__", "unknown")


def env_report() -> Dict[str, object]:
    """Versions (python, torch, triton, numpy, POT), devices, and each backend's availability.

    Takes no arguments and raises nothing: a backend that cannot be used here is reported, not raised.

    Returns:
        A dict: "helo_fast", "python", "platform", "torch", "torch_cuda", "cuda_available", "cuda_device",
        "cpu_threads", "triton", "numpy", "POT" (versions; "not installed" where absent), and "backends", which maps
        each backend and device (e.g. "cpp[cpu]") to "available" or the reason it is not.

    Example:
        >>> import helo_fast
        >>> report = helo_fast.env_report()
        >>> sorted(report["backends"])[:1]
        ['cpp[cpu]']
    """
    import torch

    from . import __version__
    from ._backend import backend_report

    return {
        "helo_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "POT": _version("ot"),
        "backends": backend_report(),
    }
