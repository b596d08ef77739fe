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


# ---- the OT ops: how much a log-domain solve amplifies rounding -------------------------------------------------
# A plan is exp of (f_i + g_j - C_ij) / eps (Sinkhorn) or of log T_N = N (-C / eps) + sums of log scalings (IPOT):
# quantities of magnitude 1 + max|C|/eps, resp. n_iters times that, whose rounding (eps_dtype each) lands in the
# exponent. ot_condition is that magnitude (times the outer iterations of GW); the reference run in the same
# precision carries an error of order eps_dtype * condition, and one sample of it can be luckily small, so the
# low-precision rule takes max(2 x the reference's own error, COND_FLOOR x eps_dtype x condition x scale).
COND_FLOOR = 8.0
# float64 gradients are held to FLOAT64_RTOL where the condition is at most this (they are then sums of terms whose
# rounding stays below 1e-12); beyond it only finiteness and GROSS_RTOL (a wrong formula, not rounding) are checked.
WELL_CONDITIONED = 1e4
GROSS_RTOL = 1e-3


def ot_condition(op: str, max_scaled_cost: float, n_iters: int, outer_iters: int = 1) -> float:
    """Rounding amplification of a log-domain solve: 1 + max|C|/eps for Sinkhorn, n_iters (1 + max|C|/eps) for IPOT,
    times outer_iters for a GW step whose inner solver is ``op``."""
    base = 1.0 + max_scaled_cost
    return (base if op == "sinkhorn" else n_iters * base) * outer_iters


def assert_close_to_oracle(
    x: torch.Tensor,
    oracle: torch.Tensor,
    ref_same_precision,
    condition: float,
    scale: float = 0.0,
    well_conditioned: bool = True,
):
    """``x`` against the float64 ``oracle``, errors measured against max(max|oracle|, scale) (scale: the natural
    size of a gradient that vanishes in exact arithmetic). float64: FLOAT64_RTOL where well_conditioned, else
    GROSS_RTOL. Lower precision: max(2 x the error of ``ref_same_precision``, COND_FLOOR eps condition size).
    Returns (error, bound)."""
    assert_no_nan(x)
    assert x.shape == oracle.shape, f"shape {tuple(x.shape)} != oracle {tuple(oracle.shape)}"
    size = max(float(oracle.detach().abs().max()) if oracle.numel() else 0.0, scale, 1e-300)
    err = max_abs_err(x, oracle) if x.numel() else 0.0
    if x.dtype == torch.float64:
        rtol = FLOAT64_RTOL if well_conditioned else GROSS_RTOL
        assert err <= rtol * size, f"max abs error {err:.3g} > {rtol:g} x {size:.3g} (condition {condition:.3g})"
        return err, rtol * size
    assert_no_nan(ref_same_precision)
    ref_err = max_abs_err(ref_same_precision, oracle) if x.numel() else 0.0
    floor = COND_FLOOR * torch.finfo(x.dtype).eps * condition * size
    bound = max(2.0 * ref_err, floor)
    if not well_conditioned:
        bound = max(bound, GROSS_RTOL * size)
    assert err <= bound, (
        f"error {err:.3g} > max(2 x reference's own error {ref_err:.3g}, floor {floor:.3g}) (condition {condition:.3g})"
    )
    return err, bound
