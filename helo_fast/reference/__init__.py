"""Plain-PyTorch reference implementations: readable, one line per equation, the ground truth."""
from .attention import lcd_attention
from .dropout import seeded_dropout
from .ot import gromov_wasserstein, ipot, sinkhorn

__all__ = ["sinkhorn", "ipot", "gromov_wasserstein", "lcd_attention", "seeded_dropout"]
