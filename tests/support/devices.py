"""The backends and devices a test runs on: the CPU always, CUDA where a GPU is present (those cases are marked
`cuda`), Triton on the CPU under TRITON_INTERPRET=1 or on CUDA (marked `triton`).

The one backends fixture is ``fast_backend`` (tests/conftest.py): a (backend, device) pair per fast backend, cpp on
the CPU and CUDA and triton on its one device, skipped where the module's ``OP`` cannot run. Lower-level helpers:
``cpp_devices()`` / ``triton_devices()`` for a device parameter; on CPU tensors, ``backend_params(op)`` for a
``backend`` parameter over BACKENDS (the reference too), skipped where ``op`` cannot run, and ``cpu_backends(op)`` for
the names of those that can. Test files name no backend list of their own.
"""

import pytest
import torch

from helo_fast import _backend, _ext, kernels

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
HAS_CUDA = torch.cuda.is_available()
# Every backend an op has, in the order the tests parametrize them.
BACKENDS = ("reference", "cpp", "triton")


def _cuda_param():
    return pytest.param(
        CUDA, id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
    )


requires_cpp = pytest.mark.skipif(not _ext.has_cpp(), reason=f"C++ extension unavailable: {_ext.EXTENSION_ERROR}")


def cpp_devices(include_cpu: bool = True):
    """Parameters for the C++ (cpp) backend: cpu, then cuda (skipped without a GPU); both skipped without the
    extension."""
    cuda = _cuda_param()
    return ([pytest.param(CPU, id="cpu", marks=requires_cpp)] if include_cpu else []) + [
        pytest.param(CUDA, id="cuda", marks=[requires_cpp, *cuda.marks])
    ]


def triton_devices():
    """Parameters for the Triton backend: cpu under the interpreter, cuda with a GPU and no interpreter."""
    if kernels.interpreter_enabled():
        return [pytest.param(CPU, id="cpu")]
    return [_cuda_param()]


def seeded_weights(seed: int, *shape: int, device: torch.device) -> torch.Tensor:
    """float64 standard-normal weights (a loss's or an upstream gradient's) drawn on the CPU from ``seed``, then
    moved to ``device``: the same numbers on every device."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)


def skip_unless_backend(backend: str, op: str, device=CPU):
    """Skip the calling test when ``backend`` cannot run ``op`` on ``device`` (says why)."""
    reason = _backend.unavailable_reason(backend, device, op)
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable for {op} on {device}: {reason}")


def skip_on_the_triton_interpreter(backend: str, device: torch.device, big: bool = True):
    """Skip a ``big`` case of the Triton backend under the CPU interpreter (seconds per launch; on CUDA it runs)."""
    if big and backend == "triton" and device.type == "cpu":
        pytest.skip("too slow for the Triton CPU interpreter; runs on CUDA")


def cpu_backends(op=None, include_triton: bool = True):
    """Names of the backends that can run ``op`` (any op: that can run at all) on CPU tensors here: reference, then
    cpp and triton where built."""
    names = [b for b in BACKENDS if include_triton or b != "triton"]
    return [b for b in names if _backend.unavailable_reason(b, CPU, op) is None]


def backend_params(op=None, include_triton: bool = True):
    """Parameters of a ``backend`` argument on CPU tensors: reference, cpp, then triton (id: the name; triton marked
    `triton`), each skipped, saying why, where it cannot run ``op`` here (any op: where it cannot run at all)."""
    params = []
    for name in (b for b in BACKENDS if include_triton or b != "triton"):
        marks = [pytest.mark.triton] if name == "triton" else []
        reason = _backend.unavailable_reason(name, CPU, op)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=f"{name} backend unavailable for {op or 'any op'} on cpu: {reason}"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def fast_backend_params():
    """The parameters of the ``fast_backend`` fixture: (backend, device) for cpp on cpu and cuda, and triton on the
    device of ``triton_devices()``, with their marks (cuda / triton)."""
    cuda = _cuda_param()
    (triton,) = triton_backend_devices()
    return [
        pytest.param(("cpp", CPU), id="cpp-cpu"),
        pytest.param(("cpp", CUDA), id="cpp-cuda", marks=cuda.marks),
        pytest.param(("triton", triton.values[0]), id=triton.id, marks=triton.marks),
    ]


def triton_backend_devices():
    """The Triton device as a test parameter (cpu under the interpreter, else cuda), marked `triton`, with the id
    ``fast_backend`` gives it; a test skips, saying why, where the Triton backend cannot run."""
    (param,) = triton_devices()
    device = param.values[0]
    return [pytest.param(device, id=f"triton-{device.type}", marks=[pytest.mark.triton, *param.marks])]
