"""Training precision, ``--precision 32 | bf16-mixed | 16-mixed`` (the names Lightning uses).

- ``"32"``: the model's dtype end to end (float32, or float64 with ``--dtype float64``).
- ``"bf16-mixed"``: forward and loss under ``torch.autocast(bfloat16)``; parameters, gradients and Adam stay float32.
- ``"16-mixed"``: ``torch.autocast(float16)`` and a gradient scaler (float16 overflows where bfloat16 does not), on
  CUDA only: on a CPU float16 matmuls gain little over float32, so it is refused there (use bf16-mixed).

What the custom ops do under autocast: ``helo_fast._autocast``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager, Optional

import torch

from .._validation import check_choice

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_warned_slow_bf16 = False  # slow_bf16_reason's warning is given once per process


def native_cpu_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 core, AVX512-BF16 or AMX-BF16)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def slow_bf16_reason(device: torch.device) -> Optional[str]:
    """Why bf16-mixed is slower than float32 on ``device``: a CPU without native bfloat16, where every bfloat16
    matmul is emulated (measured 5.5x slower than float32 for a HeLo training step on an AVX2 AMD EPYC Zen 2).
    None elsewhere (CUDA, or a CPU with native bfloat16)."""
    if torch.device(device).type != "cpu" or native_cpu_bf16():
        return None
    return (
        "this CPU has no native bfloat16 (AVX512-BF16 or AMX-BF16; torch.ops.mkldnn."
        "_is_mkldnn_bf16_supported() is False), so bfloat16 is emulated and float32 (--precision 32) is "
        "several times faster here"
    )


def check_precision(name: str, precision: str, device: torch.device, dtype: str = "float32") -> str:
    """Raise ValueError naming ``name`` unless ``precision`` can train here: one of PRECISIONS, 16-mixed on CUDA
    only, a mixed precision only for a float32 model (autocast leaves float64 alone). Warns (once per process)
    where bf16-mixed is slower than float32 (slow_bf16_reason)."""
    check_choice(name, precision, PRECISIONS)
    if precision == "16-mixed" and device.type != "cuda":
        raise ValueError(
            f"{name} 16-mixed (float16 autocast with a gradient scaler) runs on CUDA devices only, "
            f"not on {device.type} (float16 matmuls on a CPU gain little over float32); use "
            f"{name} bf16-mixed"
        )
    if precision != "32" and dtype != "float32":
        raise ValueError(
            f"{name} {precision} needs a float32 model (autocast leaves {dtype} as it is), got dtype {dtype}"
        )
    global _warned_slow_bf16
    if precision == "bf16-mixed" and not _warned_slow_bf16:
        reason = slow_bf16_reason(device)
        if reason is not None:
            _warned_slow_bf16 = True
            warnings.warn(f"{name} bf16-mixed: {reason}", stacklevel=2)
    return precision


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The autocast context of ``precision`` on ``device`` (nothing for "32")."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for 16-mixed, None otherwise (bfloat16 has float32's exponent range: nothing to scale)."""
    return torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
