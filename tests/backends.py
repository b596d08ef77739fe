"""Which backends can run an op on CPU tensors here (for tests parametrised over backends)."""
import torch

from helo_fast import _backend


def cpu_backends(op: str, include_triton: bool = True):
    """Backends that can run ``op`` on CPU tensors here: reference, then cpp and triton where built."""
    names = ["reference", "cpp"] + (["triton"] if include_triton else [])
    return [b for b in names if _backend.unavailable_reason(b, torch.device("cpu"), op) is None]
