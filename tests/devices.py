"""The devices a test runs on: the CPU always, CUDA where a GPU is present (those cases are marked `cuda`).

Use ``@pytest.mark.parametrize("device", cpp_devices())`` for the C++ ops and ``triton_devices()`` for the
Triton kernels (the CPU only under TRITON_INTERPRET=1; CUDA only with a GPU and the interpreter off).
"""
import pytest
import torch

from helo_fast import _backend, kernels

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
HAS_CUDA = torch.cuda.is_available()


def _cuda_param():
    return pytest.param(CUDA, id="cuda", marks=[pytest.mark.cuda,
                                                pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")])


def cpp_devices(include_cpu: bool = True):
    """Parameters for the C++ (cpp) backend: cpu, then cuda (skipped without a GPU)."""
    return ([pytest.param(CPU, id="cpu")] if include_cpu else []) + [_cuda_param()]


def triton_devices():
    """Parameters for the Triton backend: cpu under the interpreter, cuda with a GPU and no interpreter."""
    if kernels.interpreter_enabled():
        return [pytest.param(CPU, id="cpu")]
    return [_cuda_param()]


def triton_module_device(op: str):
    """(device, pytestmark) for a Triton test module: the one device of triton_devices() and the marks its tests
    carry. Skips the whole module when the Triton backend cannot run ``op`` there."""
    (param,) = triton_devices()
    device = param.values[0]
    reason = _backend.unavailable_reason("triton", device, op)
    if reason is not None:
        pytest.skip(f"triton backend unavailable on {device}: {reason}", allow_module_level=True)
    return device, [pytest.mark.triton, *param.marks]


def seeded_weights(seed: int, *shape: int, device: torch.device) -> torch.Tensor:
    """float64 standard-normal weights (a loss's or an upstream gradient's) drawn on the CPU from ``seed``, then
    moved to ``device``: the same numbers on every device."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)


def skip_unless_backend(backend: str, op: str, device=CPU):
    """Skip the calling test when ``backend`` cannot run ``op`` on ``device`` (says why)."""
    reason = _backend.unavailable_reason(backend, device, op)
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable for {op} on {device}: {reason}")
