"""Stopping the OT ops at convergence (``tol=``): the one definition of the test, the per-problem report, and the
warning / error when a problem hits its iteration cap. Shared by every backend and the reference.

The test (every backend computes the same numbers):
- sinkhorn: the L1 norm of the column-marginal error, sum_j |sum_i P_ij - b_j| (the rows are exact after each
  iteration's row update), in units of mass;
- ipot: the L1 norm of the row-marginal error, sum_i |sum_j T_ij - a_i| (its columns are exact);
- gromov_wasserstein: the outer loop stops when the L1 norm of the plan's change, sum_ij |Gamma_k - Gamma_k-1|,
  is at most ``tol``; each inner solve stops on its own solver's test with the same ``tol``.
A Sinkhorn or IPOT problem is checked after every ``CHECK_EVERY``-th iteration and after the cap (``n_iters``), and
stops at the first check where its violation is <= tol; each problem of a batch stops on its own. The GW outer test
runs after every outer iteration.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

CHECK_EVERY = 10  # as POT's sinkhorn_log (which checks when ii % 10 == 0)


class OTInfo(NamedTuple):
    """Per problem of a ``sinkhorn`` / ``ipot`` call with ``tol`` (``return_info=True``).

    iterations: [B] int64, the iterations run (a multiple of CHECK_EVERY, or the cap ``n_iters``).
    violation: [B] the final marginal violation (float64 for float64 inputs, else float32).
    converged: [B] bool, violation <= tol.
    """

    iterations: torch.Tensor
    violation: torch.Tensor
    converged: torch.Tensor


class GWInfo(NamedTuple):
    """Per problem of a ``gromov_wasserstein`` call with ``tol`` (``return_info=True``).

    iterations: [B] int64, the outer iterations run.
    inner_iterations: [B] int64, the inner iterations run, summed over the outer iterations.
    violation: [B] the last outer iteration's plan change (L1).
    inner_violation: [B] the last inner solve's marginal violation.
    converged: [B] bool, violation <= tol and inner_violation <= tol.
    """

    iterations: torch.Tensor
    inner_iterations: torch.Tensor
    violation: torch.Tensor
    inner_violation: torch.Tensor
    converged: torch.Tensor


class OTConvergenceWarning(UserWarning):
    """Some problem of an OT call with ``tol`` reached its iteration cap before the tolerance."""


class OTConvergenceError(RuntimeError):
    """``strict=True``: some problem of an OT call with ``tol`` reached its iteration cap before the tolerance."""


def is_check_point(k: int, n_iters: int) -> bool:
    """Whether iteration ``k`` (1-based) of at most ``n_iters`` is followed by the convergence test."""
    return k % CHECK_EVERY == 0 or k == n_iters


class StopState(NamedTuple):
    """The reference solvers' per-problem stopping state: which problems still run [B] bool, the iteration each
    stopped at [B] int64 (the cap until it stops), and its last measured violation [B]."""

    active: torch.Tensor
    iterations: torch.Tensor
    violation: torch.Tensor

    @classmethod
    def start(cls, batch: int, n_iters: int, dtype: torch.dtype, device: torch.device) -> "StopState":
        return cls(
            torch.ones(batch, dtype=torch.bool, device=device),
            torch.full((batch,), n_iters, dtype=torch.int64, device=device),
            torch.zeros(batch, dtype=dtype, device=device),
        )

    def checked(self, k: int, current: torch.Tensor, tol: float) -> "StopState":
        """After the test at iteration ``k``: running problems record ``current`` [B]; those <= tol stop at k."""
        done = self.active & (current <= tol)
        return StopState(
            self.active & ~done,
            torch.where(done, k, self.iterations),
            torch.where(self.active, current, self.violation),
        )


def report(op: str, info, *, tol: float, cap: str, strict: bool, implicit: bool = False) -> None:
    """Warn once (OTConvergenceWarning), or raise OTConvergenceError with ``strict``, when some problem of ``info``
    did not converge. ``cap`` names the iteration cap in the message (e.g. "n_iters=100")."""
    failed = ~info.converged
    if info.converged.numel() == 0 or not bool(failed.any()):
        return
    count, total = int(failed.sum()), info.converged.numel()
    worst = float(info.violation.masked_fill(~failed, 0).max())
    message = (
        f"helo_fast.{op}: {count} of {total} problems did not reach tol={tol:g} within {cap} (largest "
        f"violation {worst:.3g}); raise the cap or tol, or pass strict=True to make this an error"
    )
    if implicit:
        message += "; grad='implicit' assumes converged plans, so their gradients are inexact"
    if strict:
        raise OTConvergenceError(message.split("; raise")[0] + " (strict=True)")
    warnings.warn(message, OTConvergenceWarning, stacklevel=3)
