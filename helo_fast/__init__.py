"""helo_fast: the HeLo emotion-distribution-learning model with fused OT and attention kernels.

Public ops (``helo_fast.functional``): sinkhorn, ipot, gromov_wasserstein, lcd_attention, seeded_dropout;
sinkhorn_cost and gromov_wasserstein_cost (the converged OT / GW values as losses). With ``tol`` the OT ops stop each
problem at convergence (``OTInfo``, ``GWInfo``, ``OTConvergenceWarning``, ``OTConvergenceError``).
Reference (plain PyTorch) versions: ``helo_fast.reference``. Metrics: ``helo_fast.metrics``.
Drop-in modules: ``helo_fast.nn``; ``convert(model)`` / ``revert(model)`` swap them in and out.
The model: ``helo_fast.models.HeLo``. ``env_report()`` says which backends are available here and why not.
"""

__version__ = "0.1.0"

from ._convergence import GWInfo, OTConvergenceError, OTConvergenceWarning, OTInfo
from .env import env_report
from .functional import (
    gromov_wasserstein,
    gromov_wasserstein_cost,
    ipot,
    lcd_attention,
    seeded_dropout,
    sinkhorn,
    sinkhorn_cost,
)
from .metrics import edl_metrics
from .nn import convert, revert

__all__ = [
    "sinkhorn",
    "ipot",
    "gromov_wasserstein",
    "lcd_attention",
    "seeded_dropout",
    "sinkhorn_cost",
    "gromov_wasserstein_cost",
    "OTInfo",
    "GWInfo",
    "OTConvergenceWarning",
    "OTConvergenceError",
    "edl_metrics",
    "env_report",
    "convert",
    "revert",
    "__version__",
]
