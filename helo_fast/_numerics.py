"""Dtype rules and constants shared by every backend (reference, C++ registration, Triton): one home, so that the
fast paths import nothing from ``helo_fast.reference``."""

from __future__ import annotations

import torch

LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)

DROPKEY_VALUE = -1e12  # finite on purpose: a fully masked row gets uniform weights, never NaN


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute (and accumulate) in for inputs of ``dtype``: float64 stays float64, float32 and the
    low-precision dtypes (float16, bfloat16) run in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dropkey_value(dtype: torch.dtype) -> float:
    """The logit a DropKey-dropped key gets: -1e12, or half the most negative finite value of ``dtype`` where -1e12
    would overflow (float16)."""
    return max(DROPKEY_VALUE, torch.finfo(dtype).min / 2)
