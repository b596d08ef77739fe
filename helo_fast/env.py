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

    Returns a dict; ``backends`` maps e.g. "cpp[cpu]" to "available" or the reason it is not.
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
