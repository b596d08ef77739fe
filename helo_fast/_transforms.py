"""What the ops need to know about autograd's transforms: torch.func (vmap, grad, jvp, jacrev, jacfwd, ...) and
forward-mode AD (torch.autograd.forward_ad).

The fast backends (cpp, triton) are custom ops with a reverse-mode formula only: no forward-mode (jvp) rule, no
vmap rule, no functorch-level autograd. So the public ops run the reference (plain PyTorch, which every transform
differentiates exactly) whenever a call is made inside a torch.func transform or an input carries a forward-mode
tangent (``needs_reference``). Outside those, nothing changes: the check is two attribute reads.

Host-side value checks (finiteness, signs, masses) read tensor values; under vmap a tensor is a batched wrapper
whose ``.item()`` torch refuses, so the checks read the plain tensor underneath (``plain``): every vmapped
sample at once, so a check holds for all of them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch._C import _functorch
from torch.autograd import forward_ad


def _has_tangent(t) -> bool:
    return isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None


def needs_reference(*tensors) -> bool:
    """Whether a call with these inputs (None allowed) must run the reference instead of a fast backend: it is
    made inside a torch.func transform, or some input has a forward-mode tangent (torch.autograd.forward_ad).
    False while torch.compile traces (dynamo inlines torch.func itself; the compiled fast ops are the contract)."""
    if torch.compiler.is_compiling():
        return False
    if _functorch.peek_interpreter_stack() is not None:
        return True
    return forward_ad._current_level >= 0 and any(_has_tangent(t) for t in tensors)


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` without torch.func's wrappers (vmap's batched tensor, grad/jvp's tracking tensors): the values a
    host-side check may read. Under vmap it holds every vmapped sample (the batch dimension somewhere)."""
    while _functorch.is_functorch_wrapped_tensor(t):
        t = _functorch.get_unwrapped(t)
    return t


def _vmap_randomness() -> Optional[str]:
    """The randomness mode of the innermost enclosing vmap ("error", "same", "different"), or None outside vmap."""
    for interpreter in reversed(_functorch.get_interpreter_stack() or []):
        if interpreter.key() == _functorch.TransformType.Vmap:
            mode = _functorch.CVmapInterpreterPtr(interpreter).randomness()
            return {
                _functorch.RandomnessType.Error: "error",
                _functorch.RandomnessType.Same: "same",
                _functorch.RandomnessType.Different: "different",
            }[mode]
    return None


def check_random_draw_allowed(op: str) -> None:
    """Raise RuntimeError naming ``op`` when it is about to draw its one mask seed inside a vmap (also the vmap of
    jacfwd / jacrev) that does not allow it. randomness="same" works (one seed: the same mask for every vmapped
    sample, as vmap defines it); "error" (vmap's default) and "different" (one mask per sample, which the single
    seed of a call cannot give) are refused."""
    if torch.compiler.is_compiling():
        return
    mode = _vmap_randomness()
    if mode is None or mode == "same":
        return
    raise RuntimeError(
        f"helo_fast.{op} draws one random seed per call for its mask, which torch.func.vmap (also the vmap inside "
        f"jacfwd/jacrev) with randomness={mode!r} does not support: pass randomness='same' (the same mask for every "
        f"vmapped sample), pass explicit masks / p=0, or call {op} on the whole batch outside vmap"
    )
