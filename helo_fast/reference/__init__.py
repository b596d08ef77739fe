"""Plain-PyTorch reference implementations: readable, one line per equation, the ground truth.

Under torch.autocast the OT ops follow ``helo_fast._autocast``'s rule (float32 inputs, autocast off); it is
applied here so that ``reference.ot`` stays the plain iterations.
"""
from .._autocast import OT_ARGS, autocast_policy
from . import ot as _ot
from .attention import lcd_attention
from .dropout import seeded_dropout

sinkhorn = autocast_policy(OT_ARGS)(_ot.sinkhorn)
ipot = autocast_policy(OT_ARGS)(_ot.ipot)
gromov_wasserstein = autocast_policy(OT_ARGS)(_ot.gromov_wasserstein)

__all__ = ["sinkhorn", "ipot", "gromov_wasserstein", "lcd_attention", "seeded_dropout"]
