"""Plain-PyTorch reference implementations: readable, one line per equation, the ground truth.

Under torch.autocast the OT ops follow ``helo_fast._autocast``'s rule (float32 inputs, autocast off); it is
applied here so that the op files (``reference/sinkhorn.py``, ``ipot.py``, ``gromov_wasserstein.py``) stay the plain
iterations.
"""

from .._autocast import OT_ARGS, autocast_policy
from . import gromov_wasserstein as _gromov_wasserstein
from . import ipot as _ipot
from . import sinkhorn as _sinkhorn
from .lcd_attention import lcd_attention
from .seeded_dropout import seeded_dropout

sinkhorn = autocast_policy(OT_ARGS)(_sinkhorn.sinkhorn)
ipot = autocast_policy(OT_ARGS)(_ipot.ipot)
gromov_wasserstein = autocast_policy(OT_ARGS)(_gromov_wasserstein.gromov_wasserstein)
# The iterations on validated inputs with tol (plan, potentials, per-problem counts): sinkhorn_cost's reference solver.
sinkhorn_solve = _sinkhorn.solve
# The outer loop on validated inputs with tol (plan, per-problem counts): gromov_wasserstein_cost's reference solver.
gromov_wasserstein_solve = _gromov_wasserstein.solve

__all__ = ["sinkhorn", "ipot", "gromov_wasserstein", "lcd_attention", "seeded_dropout"]
