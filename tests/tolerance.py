"""The one tolerance table of the test suite.

Rule (DEVELOPERS.md): an op's error against a float64 reference may be at most 2x the error of the
reference itself run in the same precision; float64 paths agree to 1e-10 relative. NaN never passes.
"""
import torch

FLOAT64_RTOL = 1e-10
# Floor for the low-precision rule when the reference happens to be exact, in units of the dtype's eps.
EPS_FLOOR = {torch.float32: 8.0, torch.float16: 8.0, torch.bfloat16: 8.0}


def max_abs_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.detach().double() - ref.detach().double()).abs().max())


def assert_no_nan(*tensors):
    for t in tensors:
        assert bool(torch.isfinite(t).all()), "result contains NaN or inf"


def assert_float64_close(x: torch.Tensor, ref: torch.Tensor, rtol: float = FLOAT64_RTOL):
    """float64 paths agree to ``rtol`` relative (to the largest reference magnitude)."""
    assert_no_nan(x, ref)
    assert x.shape == ref.shape, f"shape {tuple(x.shape)} != reference {tuple(ref.shape)}"
    scale = max(float(ref.detach().abs().max()), 1e-300)
    err = max_abs_err(x, ref)
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} x {scale:.3g}"


def assert_within_reference_error(x: torch.Tensor, ref64: torch.Tensor, ref_same_precision: torch.Tensor):
    """Error of ``x`` vs the float64 reference <= 2x the error of the reference run in x's dtype."""
    assert_no_nan(x, ref64, ref_same_precision)
    assert x.shape == ref64.shape, f"shape {tuple(x.shape)} != reference {tuple(ref64.shape)}"
    if x.dtype == torch.float64:
        return assert_float64_close(x, ref64)
    scale = max(float(ref64.detach().abs().max()), 1e-30)
    floor = EPS_FLOOR[x.dtype] * torch.finfo(x.dtype).eps * scale
    err, ref_err = max_abs_err(x, ref64), max_abs_err(ref_same_precision, ref64)
    assert err <= max(2.0 * ref_err, floor), f"error {err:.3g} > 2 x reference's own error {ref_err:.3g}"
