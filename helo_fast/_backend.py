"""The one backend chooser: which implementation serves an op for tensors on a given device."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from . import _ext
from . import kernels

BACKENDS = ("auto", "reference", "cpp", "triton")

# Which fast backend `auto` prefers on CUDA tensors, per op (the faster in benchmarks/results;
# cpp until GPU measurements say otherwise).
AUTO_CUDA_PREFERENCE: Dict[str, Tuple[str, ...]] = {
    "sinkhorn": ("cpp", "triton"),
    "ipot": ("cpp", "triton"),
    "gromov_wasserstein": ("cpp", "triton"),
    "lcd_attention": ("cpp", "triton"),
    "seeded_dropout": ("cpp", "triton"),
}


def unavailable_reason(backend: str, device: torch.device, op: Optional[str] = None) -> Optional[str]:
    """None when ``backend`` can run ``op`` on ``device``, else a sentence saying what is missing."""
    from . import _ops  # registry of implemented (op, backend) pairs

    if backend == "reference":
        return None
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if backend == "cpp":
        if not _ext.has_cpp():
            return _ext.EXTENSION_ERROR
        if device.type == "cuda" and not _ext.has_cuda_kernels():
            return "helo_fast._C was built without CUDA kernels (torch without CUDA, or no nvcc at build time)"
        if device.type not in ("cpu", "cuda"):
            return f"the cpp backend runs on cpu and cuda tensors, not {device.type}"
    elif backend == "triton":
        if kernels.TRITON_ERROR is not None:
            return kernels.TRITON_ERROR
        if device.type == "cpu" and not kernels.interpreter_enabled():
            return "the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU, slowly)"
        if device.type not in ("cpu", "cuda"):
            return f"the triton backend runs on cuda tensors, not {device.type}"
    else:
        return f"unknown backend {backend!r}; expected one of {BACKENDS}"
    if op is not None and not _ops.has_impl(op, backend):
        return f"the {backend} backend has no implementation of {op} yet"
    return None


def choose_backend(requested: str, device: torch.device, op: str) -> str:
    """Resolve ``requested`` ("auto" or a backend name) for ``op`` on ``device``.

    "auto": on CUDA the preferred available fast backend, on CPU cpp, else reference.
    An explicitly requested backend that cannot run raises RuntimeError saying what is missing.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    if requested != "auto":
        reason = unavailable_reason(requested, device, op)
        if reason is not None:
            raise RuntimeError(f"backend={requested!r} is unavailable for {op} on {device}: {reason}")
        return requested
    candidates = AUTO_CUDA_PREFERENCE[op] if device.type == "cuda" else ("cpp",)
    for backend in candidates:
        if unavailable_reason(backend, device, op) is None:
            return backend
    return "reference"


def backend_report() -> Dict[str, str]:
    """For env_report: each backend -> 'available' or the reason it is not (on cpu and cuda)."""
    report = {"reference": "available"}
    for backend in ("cpp", "triton"):
        for device in ("cpu", "cuda"):
            reason = unavailable_reason(backend, torch.device(device))
            report[f"{backend}[{device}]"] = "available" if reason is None else reason
    return report
