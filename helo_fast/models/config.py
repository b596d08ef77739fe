"""``HeLoConfig``: every size and switch of the HeLo model (HELO_SPEC §2-§8), with the paper's defaults.

``faithful_to="paper"`` (default) computes the paper's intent; ``faithful_to="release"`` turns on each
defect of the authors' release (HELO_SPEC §8). Each defect also has its own flag; a flag left at
``None`` takes its default from ``faithful_to``, a flag given explicitly always wins.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Dict, Optional

from ..data.dataset import FeatureLayout
from .._backend import BACKENDS
from .._validation import check_choice, check_int_at_least, check_positive, check_probability

FAITHFUL_TO = ("paper", "release")
KL_REDUCTIONS = ("batchmean", "sum")

# Keys renamed by issue 20 (one name per concept, the op arguments' names): old -> new. An old key is refused with
# a ValueError naming the new one (HeLoConfig(...), --config, a saved config), never silently ignored.
RENAMED_KEYS: Dict[str, str] = {
    "p_dropkey": "dropkey_p",
    "dropout": "dropout_p",
    "gw_outer": "outer_iters",
    "ot_iters": "inner_iters",
}


def check_renamed_keys(keys) -> None:
    """Raise ValueError for the first old HeLoConfig key among ``keys`` (see ``RENAMED_KEYS``)."""
    for key in keys:
        if key in RENAMED_KEYS:
            raise ValueError(f"HeLoConfig key {key!r} was renamed to {RENAMED_KEYS[key]!r}")


# The defects of the release (HELO_SPEC §8): flag name -> what it does when True.
RELEASE_DEFECTS: Dict[str, str] = {
    "resample_label_embedding": "label embedding re-drawn uniform [0,1) on every forward, one draw per sample "
    "[B, C, d] (so R_hat is [B, C, C]), never trained",
    "normalize_label_axis": "R_hat normalises L_e over the label axis instead of the feature axis",
    "dropkey_in_eval": "DropKey stays on in eval mode (predictions are random)",
    "eval_first_sample_only": "evaluation scores only the first sample of each test batch",
    "batch_threshold": "sparsification threshold min/max taken over the whole mini-batch",
}


@dataclass
class HeLoConfig:
    """All sizes and switches of HeLo. Defaults are HELO_SPEC's (DMER, about 4.05 M parameters).

    Inputs: a row of ``n_channels*band_features + gsr_features + ppg_features + video_features``
    features (default 90 + 28 + 27 + 768 = 913) in that column order.
    """

    # inputs (HELO_SPEC §1-§2)
    n_channels: int = 18  # N: EEG channels = tokens per physiological stream
    band_features: int = 5  # features per EEG channel
    gsr_features: int = 28
    ppg_features: int = 27
    video_features: int = 768
    n_classes: int = 10  # C
    # widths
    d_model: int = 128  # d
    n_heads: int = 4  # physiological cross-attention and transformer heads
    lcd_heads: int = 1  # LCD-CA heads (one head of size d)
    ffn_dim: int = 64
    head_hidden: int = 128
    ln_eps: float = 1e-5
    # OT (HELO_SPEC §4)
    outer_iters: int = 5  # GW rounds of cost linearisation
    inner_iters: int = 20  # IPOT / Sinkhorn iterations per round
    beta: float = 0.1
    sparsify_ratio: float = 0.1  # tau = min + ratio * (max - min)
    ot_solver: str = "ipot"
    ot_grad: bool = False  # False: detached plan (as the release); True: unrolled gradient
    # regularisation
    dropkey_p: float = 0.5
    dropout_p: float = 0.5
    # loss (HELO_SPEC §7)
    lambda_corr: float = 1.0
    kl_reduction: Optional[str] = None  # None -> "batchmean" (paper) / "sum" (release)
    # implementation
    backend: str = "auto"  # "reference": plain-PyTorch modules; else the fused modules of helo_fast.nn
    faithful_to: str = "paper"
    # release defects (None -> default from faithful_to)
    resample_label_embedding: Optional[bool] = None
    normalize_label_axis: Optional[bool] = None
    dropkey_in_eval: Optional[bool] = None
    eval_first_sample_only: Optional[bool] = None
    batch_threshold: Optional[bool] = None

    def __post_init__(self):
        check_choice("faithful_to", self.faithful_to, FAITHFUL_TO)
        release = self.faithful_to == "release"
        for name in RELEASE_DEFECTS:
            if getattr(self, name) is None:
                setattr(self, name, release)
            elif not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool or None, got {type(getattr(self, name)).__name__}")
        if self.kl_reduction is None:
            self.kl_reduction = "sum" if release else "batchmean"
        check_choice("kl_reduction", self.kl_reduction, KL_REDUCTIONS)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("ot_solver", self.ot_solver, ("ipot", "sinkhorn"))
        for name in (
            "n_channels",
            "band_features",
            "gsr_features",
            "ppg_features",
            "video_features",
            "n_classes",
            "d_model",
            "n_heads",
            "lcd_heads",
            "ffn_dim",
            "head_hidden",
            "outer_iters",
            "inner_iters",
        ):
            check_int_at_least(name, getattr(self, name), 1)
        for name in ("beta", "ln_eps"):
            check_positive(name, getattr(self, name))
        for name in ("dropkey_p", "dropout_p"):
            check_probability(name, getattr(self, name))
        if not 0.0 <= self.sparsify_ratio < 1.0:
            raise ValueError(f"sparsify_ratio must be in [0, 1), got {self.sparsify_ratio}")
        if self.lambda_corr < 0:
            raise ValueError(f"lambda_corr must be >= 0, got {self.lambda_corr}")
        if self.d_model % self.n_heads or self.d_model % self.lcd_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                f"and lcd_heads ({self.lcd_heads})"
            )

    @property
    def n_tokens(self) -> int:
        """Tokens per stream after fusion: 2N (H_p and H_b)."""
        return 2 * self.n_channels

    @property
    def n_features(self) -> int:
        """Width of one input row (913 for DMER)."""
        return self.layout().n_features

    def layout(self) -> FeatureLayout:
        """The input-row layout this config expects (see ``helo_fast.data.FeatureLayout``)."""
        return FeatureLayout(
            n_channels=self.n_channels,
            band_features=self.band_features,
            gsr_features=self.gsr_features,
            ppg_features=self.ppg_features,
            video_features=self.video_features,
            n_classes=self.n_classes,
        )

    def feature_slices(self) -> Dict[str, slice]:
        """Column ranges of the four blocks of an input row: eeg, gsr, ppg, video."""
        return self.layout().block_slices()

    def to_dict(self) -> dict:
        """Plain dict (resolved flags) for checkpoints and JSON; ``HeLoConfig(**d)`` rebuilds it."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "HeLoConfig":
        """A copy with ``changes`` applied (release flags keep their resolved values unless changed)."""
        return dataclasses.replace(self, **changes)


_dataclass_init = HeLoConfig.__init__


@functools.wraps(_dataclass_init)
def _init_refusing_renamed_keys(self, *args, **kwargs):
    check_renamed_keys(kwargs)
    _dataclass_init(self, *args, **kwargs)


HeLoConfig.__init__ = _init_refusing_renamed_keys
