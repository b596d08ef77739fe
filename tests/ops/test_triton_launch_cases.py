"""Every Triton configuration a GPU run launches also runs here, under TRITON_INTERPRET=1 (or on the GPU).

The configurations are the cases of benchmarks/gpu_audit/cases.py, the list `make gpu-check` compiles for Hopper:
HeLo's call sites, the GPU benchmarks' sizes and small ragged sizes, every flag value. Block-size constexprs change
what a kernel computes (masks at ragged edges, padded reductions), so each case is compared with the reference
backend, forward and backward. The bound is loose on purpose (a wrong block-size path is off by O(1)); precision
itself is held to the tolerance table by each op's own tests.
"""

import pytest
import torch

from benchmarks.gpu_audit import cases as launch_cases
from benchmarks.gpu_audit.launches import launchable_kernels, recording
import devices

DEVICE = devices.triton_devices()[0].values[0]
pytestmark = [pytest.mark.triton, *devices.triton_devices()[0].marks]

CASES = launch_cases.cases()
# Relative to the largest reference magnitude: far above rounding, far below a wrong mask or padded sum.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.1}


def _assert_close(x, ref, rtol, what):
    assert x.shape == ref.shape, f"{what}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    assert bool(torch.isfinite(x).all()), f"{what}: NaN or inf"
    scale = max(float(ref.detach().abs().max()), 1e-30)
    err = float((x.detach().double() - ref.detach().double()).abs().max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} x {scale:.3g}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_launch_case_matches_reference(case):
    launches = []
    with recording(launches, execute=True):
        out, grads = launch_cases.run(case, DEVICE, "triton")
    assert launches, f"{case.id} launched no Triton kernel"
    ref_out, ref_grads = launch_cases.run(case, DEVICE, "reference")
    rtol = RTOL[case.dtype]
    _assert_close(out, ref_out, rtol, "output")
    assert len(grads) == len(ref_grads)
    for i, (g, ref) in enumerate(zip(grads, ref_grads)):
        _assert_close(g, ref, rtol, f"gradient {i}")


def test_every_kernel_has_a_case():
    """The case list reaches every kernel of kernels/ (the audit fails otherwise too; this says so sooner)."""
    if DEVICE.type != "cpu":
        pytest.skip("recording without running needs the interpreter's CPU tensors")
    launches = []
    with recording(launches, execute=False):
        for case in CASES:
            launch_cases.run(case, DEVICE, "triton")
    missing = set(launchable_kernels()) - {launch["kernel"] for launch in launches}
    assert not missing, f"no case of benchmarks/gpu_audit/cases.py launches {sorted(missing)}"
