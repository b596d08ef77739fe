"""The HeLo model (HELO_SPEC §2-§6) built from swappable attention and OT modules.

``module_classes`` is the one place that decides which attention / OT modules HeLo is built from;
the reference modules (``helo_fast.reference.modules``) are the default and a fast implementation
with the same constructor arguments and ``state_dict`` keys can be passed as ``modules=``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_int_at_least
from ..nn import convert
from ..reference import modules as reference_modules
from .config import HeLoConfig


class HeLoOutput(NamedTuple):
    """probs, log_probs: [B, C] predicted distribution; label_correlation: R_hat [C, C], or one per sample
    [B, C, C] when the label embedding is re-drawn per sample (``resample_label_embedding``, release defect)."""

    probs: torch.Tensor
    log_probs: torch.Tensor
    label_correlation: torch.Tensor


def module_classes(config: HeLoConfig, modules=None):
    """The attention and OT module classes HeLo is built from: ``(LCDAttention, GromovWasserstein)``.

    ``modules``: any namespace with those two names (None = the reference modules). HeLo is always
    built from these and then, unless its backend is "reference", converted in place to the fused
    modules of ``helo_fast.nn`` (same parameters and state_dict keys).
    """
    modules = reference_modules if modules is None else modules
    return modules.LCDAttention, modules.GromovWasserstein


def cosine_distance_graph(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, n, d] -> D [B, n, n] with D[i, k] = 1 - cos(h_i, h_k) (HELO_SPEC §4.1), in at least float32.

    Under autocast too: D is the OT step's cost, and bfloat16's ~4e-3 rounding of the cosines moves HeLo's GW plan
    (beta = 0.1) by ~10%; in float32 the plan keeps the precision of the tokens.
    """
    with torch.autocast(tokens.device.type, enabled=False):
        unit = F.normalize(tokens.to(torch.promote_types(tokens.dtype, torch.float32)), dim=-1)
        return 1.0 - unit @ unit.transpose(1, 2)


def sparsify(distance: torch.Tensor, ratio: float, over_batch: bool = False) -> torch.Tensor:
    """relu(D - tau), tau = min(D) + ratio (max(D) - min(D)) per sample, or over the whole batch
    when ``over_batch`` (the release's behaviour). distance [B, n, n] -> [B, n, n]."""
    flat = distance.reshape(1 if over_batch else distance.shape[0], -1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    tau = (low + ratio * (high - low)).view(-1, 1, 1)
    return torch.relu(distance - tau)


def label_correlation(label_embedding: torch.Tensor, over_label_axis: bool = False) -> torch.Tensor:
    """R_hat = norm(L_e) norm(L_e)^T, rows normalised along d (HELO_SPEC §5), or along the label
    axis when ``over_label_axis`` (the release's defect). label_embedding [..., C, d] -> [..., C, C]
    (the parameter [C, d] -> [C, C]; the release's per-sample draws [B, C, d] -> [B, C, C])."""
    unit = F.normalize(label_embedding, dim=-2 if over_label_axis else -1)
    return unit @ unit.transpose(-1, -2)


class TransformerEncoderLayer(nn.Module):
    """Post-LN encoder layer (HELO_SPEC §4.8): x = LN(x + MHSA(x)), then LN(x + Dropout(W2 GELU(W1 x))),
    FFN d -> ffn_dim -> d with ONE dropout, after the second linear layer (none after the GELU), as the
    paper and the release have it.

    The FFN's dropout draws its masks from the model's mask generator, like the attentions' dropout
    (``SeededDropout``: the counter hash of helo_fast._rng, one fused pass in the fast model)."""

    def __init__(self, config: HeLoConfig, attention_cls):
        super().__init__()
        self.self_attn = attention_cls(config.d_model, config.n_heads, ln_eps=config.ln_eps, bias_before_scale=True)
        self.linear1 = nn.Linear(config.d_model, config.ffn_dim)
        self.linear2 = nn.Linear(config.ffn_dim, config.d_model)
        self.dropout = reference_modules.SeededDropout(config.dropout_p)
        self.norm = nn.LayerNorm(config.d_model, eps=config.ln_eps)

    def forward(self, x: torch.Tensor, *, dropkey_p: float, dropout_p: float, generator=None) -> torch.Tensor:
        """x: [B, L, d] -> [B, L, d]."""
        x = self.self_attn(x, None, dropkey_p=dropkey_p, dropout_p=dropout_p, generator=generator)
        ffn = self.linear2(F.gelu(self.linear1(x)))
        return self.norm(x + self.dropout(ffn, generator))


class HeLo(nn.Module):
    """HeLo: physiological + behavioural features -> a distribution over C emotions.

    forward(x [B, F]) -> HeLoOutput(probs [B, C], log_probs [B, C], label_correlation [C, C] or [B, C, C]),
    F = ``config.n_features`` columns in the order eeg | gsr | ppg | video.
    DropKey and attention-weight dropout draw their masks from ``self.mask_generator`` (a CPU
    torch.Generator seeded from ``mask_seed``, or from the global RNG when None).
    ``backend`` (default ``config.backend``, "auto"): "reference" keeps the plain-PyTorch modules;
    "cpp" / "triton" / "auto" run the fused modules of ``helo_fast.nn`` with the same weights.

    Args:
        config: a ``HeLoConfig`` (None: the defaults, HELO_SPEC's DMER model of about 4.05 M parameters).
        backend: None (``config.backend``), "auto", "reference", "cpp" or "triton".
        modules: None, or a namespace with ``LCDAttention`` and ``GromovWasserstein`` classes taking the reference
            modules' constructor arguments and state_dict keys, used instead of them (see ``module_classes``).
        mask_seed: int seed of ``mask_generator`` (None: drawn from torch's global RNG). The same seed gives the
            reference and the fast model the same DropKey and dropout masks.

    forward(x): x [B, F] float features (the dtype of the parameters, or any float dtype under
    torch.autocast). In training mode DropKey and dropout are on; in eval mode they are off (paper mode), so
    predictions are deterministic.

    Raises:
        ValueError: a config or backend that is not valid; in forward, an input not of shape [B,
            config.n_features], or what the ops raise.

    Example:
        >>> import torch
        >>> from helo_fast.models import HeLo, HeLoConfig
        >>> model = HeLo(HeLoConfig(), mask_seed=0).eval()
        >>> out = model(torch.randn(4, 913))
        >>> out.probs.shape, out.label_correlation.shape
        (torch.Size([4, 10]), torch.Size([10, 10]))
    """

    def __init__(
        self,
        config: Optional[HeLoConfig] = None,
        backend: Optional[str] = None,
        *,
        modules=None,
        mask_seed: Optional[int] = None,
    ):
        super().__init__()
        config = HeLoConfig() if config is None else config
        if backend is not None:
            config = dataclasses.replace(config, backend=backend)
        self.config = config
        attention_cls, ot_cls = module_classes(config, modules)
        d, n = config.d_model, config.n_channels
        # §2 tokenisers
        self.eeg_tokenizer = nn.Linear(config.band_features, d)
        self.gsr_tokenizer = nn.Linear(config.gsr_features, n * d)
        self.ppg_tokenizer = nn.Linear(config.ppg_features, n * d)
        self.video_tokenizer = nn.Linear(config.video_features, config.n_tokens * d)
        # §3 physiological fusion (one CA shared by both calls)
        self.physio_attention = attention_cls(d, config.n_heads, ln_eps=config.ln_eps, bias_before_scale=True)
        self.physio_proj = nn.Linear(d, d)
        # §4 OT and the shared transformer layer
        self.ot = ot_cls(
            eps=config.beta,
            outer_iters=config.outer_iters,
            inner_iters=config.inner_iters,
            solver=config.ot_solver,
            grad="unrolled" if config.ot_grad else "none",
        )
        self.encoder = TransformerEncoderLayer(config, attention_cls)
        # §5-§6 labels
        self.label_embedding = nn.Parameter(torch.rand(config.n_classes, d))
        self.token_reduction = nn.Linear(2 * config.n_tokens, config.n_classes)
        self.lcd_attention = attention_cls(d, config.lcd_heads, ln_eps=config.ln_eps, bias_before_scale=True)
        self.head = nn.Sequential(
            nn.Linear(config.n_classes * d, config.head_hidden),
            nn.ReLU(),
            nn.Linear(config.head_hidden, config.head_hidden),
            nn.ReLU(),
            nn.Linear(config.head_hidden, config.n_classes),
        )
        if mask_seed is None:
            mask_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.mask_generator = torch.Generator().manual_seed(mask_seed)
        if config.backend != "reference":
            convert(self, config.backend)

    def mask_probabilities(self):
        """(dropkey_p, dropout_p) for the attentions now: zero in eval mode, except DropKey under
        ``dropkey_in_eval`` (release defect)."""
        cfg = self.config
        dropkey_p = cfg.dropkey_p if (self.training or cfg.dropkey_in_eval) else 0.0
        dropout_p = cfg.dropout_p if self.training else 0.0
        return dropkey_p, dropout_p

    def current_label_embedding(self, batch: int) -> torch.Tensor:
        """L_e for a batch of ``batch`` samples: the parameter [C, d], or (release defect) a fresh uniform [0,1)
        draw for each sample [B, C, d] on every call, the release's torch.rand(B, C, d) (from ``mask_generator``)."""
        check_int_at_least("batch", batch, 0)
        if self.config.resample_label_embedding:
            fresh = torch.rand((batch, *self.label_embedding.shape), generator=self.mask_generator)
            return fresh.to(self.label_embedding.device, self.label_embedding.dtype)
        return self.label_embedding

    def tokenize(self, x: torch.Tensor):
        """x [B, F] -> (E, G, P [B, N, d], H_b [B, 2N, d]) (HELO_SPEC §2)."""
        cfg = self.config
        if x.dim() != 2 or x.shape[1] != cfg.n_features:
            raise ValueError(
                f"x must have shape [B, {cfg.n_features}] (eeg|gsr|ppg|video features), got {tuple(x.shape)}"
            )
        cols, batch, n, d = cfg.feature_slices(), x.shape[0], cfg.n_channels, cfg.d_model
        eeg = self.eeg_tokenizer(x[:, cols["eeg"]].reshape(batch, n, cfg.band_features))
        gsr = self.gsr_tokenizer(x[:, cols["gsr"]]).view(batch, n, d)
        ppg = self.ppg_tokenizer(x[:, cols["ppg"]]).view(batch, n, d)
        video = self.video_tokenizer(x[:, cols["video"]]).view(batch, cfg.n_tokens, d)
        return eeg, gsr, ppg, video

    def forward(self, x: torch.Tensor) -> HeLoOutput:
        """x [B, F] -> HeLoOutput(probs [B, C], log_probs [B, C], label_correlation [C, C] or [B, C, C])."""
        cfg = self.config
        batch = x.shape[0]
        dropkey_p, dropout_p = self.mask_probabilities()
        masks = dict(dropkey_p=dropkey_p, dropout_p=dropout_p, generator=self.mask_generator)
        eeg, gsr, ppg, h_b = self.tokenize(x)
        # §3: Z1 = CA(E, G), Z2 = CA(E, P) in one call (the module is shared)
        z = self.physio_attention(torch.cat([eeg, eeg]), torch.cat([gsr, ppg]), **masks)
        h_p = self.physio_proj(torch.cat(z.split(batch), dim=1))
        # §4: GW plan between the sparsified intra-modal graphs, then H_p <- Gamma H_p
        c_s = sparsify(cosine_distance_graph(h_p), cfg.sparsify_ratio, cfg.batch_threshold)
        c_t = sparsify(cosine_distance_graph(h_b), cfg.sparsify_ratio, cfg.batch_threshold)
        plan = self.ot(c_s, c_t)
        h_p = plan @ h_p
        fused = self.encoder(torch.cat([h_p, h_b]), **masks)
        fused = torch.cat(fused.split(batch), dim=1)  # [B, 4N, d]
        # §5-§6: label correlation as an additive bias of LCD-CA
        label_emb = self.current_label_embedding(batch)  # [C, d], or [B, C, d] per sample
        r_hat = label_correlation(label_emb, cfg.normalize_label_axis)  # [C, C], or [B, C, C] per sample
        reduced = self.token_reduction(fused.transpose(1, 2)).transpose(1, 2)  # [B, C, d]
        queries = label_emb.expand(batch, -1, -1)
        out = self.lcd_attention(queries, reduced, r_hat.unsqueeze(-3), **masks)  # bias shared by the heads
        logits = self.head(out.flatten(1))
        # At least float32 (under autocast on CPU log_softmax would keep bfloat16: 3 digits of each probability).
        log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        return HeLoOutput(log_probs.exp(), log_probs, r_hat)

    def extra_repr(self) -> str:
        return f"faithful_to={self.config.faithful_to!r}, backend={self.config.backend!r}"
