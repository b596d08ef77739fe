"""The one mixed-precision policy of the ops under ``torch.autocast`` (CPU and CUDA, bfloat16 and float16).

- OT ops (sinkhorn, ipot, gromov_wasserstein): every float input is cast to float32 (float64 stays float64) and the
  op runs with autocast off, so it computes and returns float32 (as ops on autocast's float32 list do):
  low-precision OT is meaningless at HeLo's eps.
- lcd_attention: q, k, v, bias and residual are cast to the autocast dtype, the LayerNorm parameters to float32
  (as torch's own LayerNorm keeps them); every backend accumulates in float32 and returns the autocast dtype.
- seeded_dropout: no rule (autocast passes it through; it keeps the input dtype).

Like autocast itself, a rule casts only floating tensors on the autocast device that are not float64. The rules
apply at three places, all from the tables here: the public ops (``autocast_policy`` on ``functional`` and
``reference``, before validation, which needs consistent dtypes) and the dispatcher, for callers of the custom ops
themselves (``register_autocast_rule``: an Autocast-key kernel per op and device type).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Dict, Optional, Sequence

import torch

LOW = "low"  # cast to the autocast dtype (bfloat16 or float16)
FLOAT32 = "float32"  # cast to float32
DEVICE_TYPES = ("cpu", "cuda")

# Argument -> cast of each public op (argument names of helo_fast.functional / helo_fast.reference).
OT_ARGS = {"cost": FLOAT32, "cs": FLOAT32, "ct": FLOAT32, "a": FLOAT32, "b": FLOAT32}
ATTENTION_ARGS = {"q": LOW, "k": LOW, "v": LOW, "bias": LOW, "residual": LOW, "ln_weight": FLOAT32, "ln_bias": FLOAT32}


def autocast_dtype(tensor) -> Optional[torch.dtype]:
    """The dtype autocast casts to on ``tensor``'s device, or None when autocast is off there (or ``tensor`` is
    not a tensor: validation reports that)."""
    if not isinstance(tensor, torch.Tensor):
        return None
    device_type = tensor.device.type
    if device_type not in DEVICE_TYPES or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(value, kind: Optional[str], low: torch.dtype, device_type: str):
    """``value`` cast by ``kind`` (LOW, FLOAT32 or None = untouched), under autocast's eligibility rule."""
    if kind is None or not isinstance(value, torch.Tensor):
        return value
    if not value.is_floating_point() or value.dtype == torch.float64 or value.device.type != device_type:
        return value
    target = low if kind == LOW else torch.float32
    return value if value.dtype == target else value.to(target)


def autocast_policy(casts: Dict[str, str]) -> Callable:
    """Decorator of a public op whose first argument is a tensor: under autocast on that tensor's device, cast the
    arguments named in ``casts`` and run the op with autocast off; otherwise call it unchanged."""

    def decorate(fn: Callable) -> Callable:
        names = list(inspect.signature(fn).parameters)
        positions = {name: names.index(name) for name in casts if name in names}

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            low = autocast_dtype(args[0] if args else kwargs.get(names[0]))
            if low is None:
                return fn(*args, **kwargs)
            device_type = (args[0] if args else kwargs[names[0]]).device.type
            args = list(args)
            for name, index in positions.items():
                if index < len(args):
                    args[index] = _cast(args[index], casts[name], low, device_type)
                elif name in kwargs:
                    kwargs[name] = _cast(kwargs[name], casts[name], low, device_type)
            with torch.autocast(device_type, enabled=False):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


_LIBRARY = torch.library.Library("helo_fast", "IMPL")  # keeps the kernels below registered


def register_autocast_rule(qualname: str, casts: Optional[Sequence[Optional[str]]] = None) -> None:
    """Register the Autocast-key kernel of custom op ``qualname`` for every device type: under autocast it casts
    positional argument i by ``casts[i]`` (LOW, FLOAT32, None = untouched; arguments past the end untouched) and
    runs the op with autocast off. ``casts=None``: every float argument to float32 (the OT rule)."""
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default

    def kinds(count: int):
        return [FLOAT32] * count if casts is None else list(casts) + [None] * (count - len(casts))

    for device_type in DEVICE_TYPES:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)

        def kernel(_keyset, *args, device_type=device_type):
            low = torch.get_autocast_dtype(device_type)
            cast = [_cast(arg, kind, low, device_type) for arg, kind in zip(args, kinds(len(args)))]
            with torch.autocast(device_type, enabled=False):
                return op(*cast)

        _LIBRARY.impl(name, kernel, key, with_keyset=True)
