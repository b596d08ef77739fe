"""lcd_attention over its whole documented domain (README "Valid domain") against a float64 oracle.

hypothesis draws the problem: B 1-6, H 1-8, Lq and Lk 1-40, D 1-140 (HeLo's D = 32 and 128 inside); bias absent or
of every broadcastable shape, before or after the scale; residual and LayerNorm (with or without its bias) on or off;
scale default or 0.01-10; input magnitudes 0.1-3; q, k, v contiguous or heads of [B, L, H*D]; DropKey and dropout p
in [0, 0.99) with masks drawn from the generator or given; float64, float32 and bfloat16; with and without gradients.
The oracle (tests/support/lcd_attention_oracle.py) is a plain float64 transcription of the documented definition.
Outputs and gradients must be finite; float64 within 1e-10 of the oracle (relative to the largest oracle entry or the
gradient's natural size), lower precisions within tests/support/tolerance.py's rule against the reference run in the
same precision, with a floor of 8 ulps times the conditioning (1 + max |logit|, times LayerNorm's amplification
|x| / std).

Size: HELO_SWEEP=ci (default, derandomized: the same examples every run) or HELO_SWEEP=nightly (20x the examples,
a fresh draw each run), as the OT sweep.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import helo_fast as hf
from helo_fast.reference.lcd_attention import attention_masks
from devices import skip_unless_backend
from domain_sweep import sweep_settings
from lcd_attention_oracle import lcd_attention_oracle
from tolerance import assert_close_to_oracle

BIAS_KINDS = ("none", "key", "query_key", "batch", "full", "head_key")
LN_KINDS = ("none", "weight", "weight_and_bias")


def probability():
    return st.one_of(st.just(0.0), st.sampled_from([0.1, 0.5, 0.9]), st.floats(0.0, 0.99))


@st.composite
def attention_problems(draw, max_len, max_dim):
    """Parameters of one lcd_attention call (tensors come from a drawn seed, so shrinking works on the parameters)."""
    length = st.one_of(st.integers(1, 6), st.integers(1, max_len))
    return dict(
        batch=draw(st.integers(1, 6)),
        heads=draw(st.integers(1, 8)),
        lq=draw(length),
        lk=draw(length),
        dim=draw(
            st.one_of(st.integers(1, 8), st.sampled_from([32, 128][: 1 + (max_dim >= 128)]), st.integers(1, max_dim))
        ),
        bias=draw(st.sampled_from(BIAS_KINDS)),
        bias_before_scale=draw(st.booleans()),
        residual=draw(st.booleans()),
        ln=draw(st.sampled_from(LN_KINDS)),
        scale=draw(st.one_of(st.none(), st.floats(-2, 1).map(lambda e: 10.0**e))),
        magnitude=10.0 ** draw(st.floats(-1, 0.5)),
        dropkey_p=draw(probability()),
        dropout_p=draw(probability()),
        explicit_masks=draw(st.booleans()),
        head_views=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16])),
        grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def bias_shape(kind, batch, heads, lq, lk):
    return {
        "none": None,
        "key": (lk,),
        "query_key": (lq, lk),
        "batch": (batch, 1, lq, lk),
        "full": (batch, heads, lq, lk),
        "head_key": (1, heads, 1, lk),
    }[kind]


def make_inputs(p):
    """float64 tensors of the problem ``p`` (None where absent) and the explicit masks every run uses."""
    gen = torch.Generator().manual_seed(p["seed"])
    batch, heads, lq, lk, dim = p["batch"], p["heads"], p["lq"], p["lk"], p["dim"]

    def draw(*shape, magnitude=1.0):
        return magnitude * torch.randn(*shape, generator=gen, dtype=torch.float64)

    def heads_of(length, magnitude=1.0):
        """[B, H, L, D]: contiguous, or the heads of a [B, L, H*D] tensor (HeLo's layout, read in place on CPU)."""
        if p["head_views"]:
            return draw(batch, length, heads, dim, magnitude=magnitude).transpose(1, 2)
        return draw(batch, heads, length, dim, magnitude=magnitude)

    shape = bias_shape(p["bias"], batch, heads, lq, lk)
    tensors = dict(
        q=heads_of(lq, p["magnitude"]),
        k=heads_of(lk, p["magnitude"]),
        v=heads_of(lk),
        bias=draw(*shape) if shape is not None else None,
        residual=draw(batch, lq, heads * dim) if p["residual"] else None,
        ln_weight=1 + 0.3 * draw(heads * dim) if p["ln"] != "none" else None,
        ln_bias=draw(heads * dim) if p["ln"] == "weight_and_bias" else None,
    )
    mask_shape = (batch, heads, lq, lk)
    if p["explicit_masks"]:
        dropkey = torch.rand(mask_shape, generator=gen) < p["dropkey_p"]
        dropout = torch.rand(mask_shape, generator=gen) < p["dropout_p"]
    else:  # the masks the generator seeded with p["seed"] draws (the hash every backend shares)
        dropkey, dropout = attention_masks(
            mask_shape, p["dropkey_p"], p["dropout_p"], torch.Generator().manual_seed(p["seed"])
        )
    return tensors, dropkey, dropout


def upstream_weight(shape):
    """The fixed upstream gradient w of every run (the loss is sum(out * w)): standard normal, from seed 1."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


UPSTREAM_SIZE = 1.0  # the scale of upstream_weight's entries


def run(backend, p, tensors, dropkey, dropout, dtype):
    """Output and gradients (of sum(out * w), w fixed) of ``backend`` on ``tensors`` cast to ``dtype``."""
    leaves = {
        n: (t.detach().to(dtype).requires_grad_(p["grad"]) if t is not None else None) for n, t in tensors.items()
    }
    masks = (
        dict(dropkey_mask=dropkey, dropout_mask=dropout)
        if p["explicit_masks"]
        else dict(generator=torch.Generator().manual_seed(p["seed"]))
    )
    out = hf.lcd_attention(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves["bias"],
        residual=leaves["residual"],
        ln_weight=leaves["ln_weight"],
        ln_bias=leaves["ln_bias"],
        scale=p["scale"],
        dropkey_p=p["dropkey_p"],
        dropout_p=p["dropout_p"],
        bias_before_scale=p["bias_before_scale"],
        backend=backend,
        **masks,
    )
    if not p["grad"]:
        return out.detach(), {}
    weight = upstream_weight(out.shape)
    present = [n for n, t in leaves.items() if t is not None]
    grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(), [leaves[n] for n in present])
    return out.detach(), dict(zip(present, grads))


def conditioning(p, tensors, dropkey):
    """(1 + max |logit|) x LayerNorm's amplification (max |x - mean| / std of its input rows, 1 without it)."""
    with torch.no_grad():
        q, k = tensors["q"], tensors["k"]
        scale = p["scale"] if p["scale"] is not None else p["dim"] ** -0.5
        logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
        if tensors["bias"] is not None:
            logits = logits + tensors["bias"] * (scale if p["bias_before_scale"] else 1.0)
        if dropkey is not None:
            logits = logits.masked_fill(dropkey, 0.0)
        cond = 1.0 + float(logits.abs().max())
        if tensors["ln_weight"] is not None:
            pre = lcd_attention_oracle(
                q,
                k,
                tensors["v"],
                tensors["bias"],
                scale=scale,
                bias_before_scale=p["bias_before_scale"],
                dropkey_mask=dropkey,
                dropout_mask=None,
                dropout_p=0.0,
                residual=tensors["residual"],
            )
            centred = pre - pre.mean(-1, keepdim=True)
            std = (centred.pow(2).mean(-1) + 1e-5).sqrt()
            cond *= float((centred.abs().amax(-1) / std).max()) + 1.0
    return cond


def check(backend, p):
    tensors, dropkey, dropout = make_inputs(p)
    dropkey = dropkey if p["dropkey_p"] > 0 or p["explicit_masks"] else None
    dropout = dropout if p["dropout_p"] > 0 or p["explicit_masks"] else None
    scale = p["scale"] if p["scale"] is not None else p["dim"] ** -0.5
    leaves = {n: (t.clone().requires_grad_(p["grad"]) if t is not None else None) for n, t in tensors.items()}
    oracle = lcd_attention_oracle(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves["bias"],
        scale=scale,
        bias_before_scale=p["bias_before_scale"],
        dropkey_mask=dropkey,
        dropout_mask=dropout,
        dropout_p=p["dropout_p"],
        residual=leaves["residual"],
        ln_weight=leaves["ln_weight"],
        ln_bias=leaves["ln_bias"],
    )
    oracle_grads = {}
    if p["grad"]:
        weight = upstream_weight(oracle.shape)
        present = [n for n, t in leaves.items() if t is not None]
        oracle_grads = dict(zip(present, torch.autograd.grad((oracle * weight).sum(), [leaves[n] for n in present])))
    oracle = oracle.detach()
    got, grads = run(backend, p, tensors, dropkey, dropout, p["dtype"])
    assert got.dtype == p["dtype"]
    same = run("reference", p, tensors, dropkey, dropout, p["dtype"]) if p["dtype"] != torch.float64 else (None, {})
    cond = conditioning(p, tensors, dropkey)
    assert_close_to_oracle(got, oracle, same[0], cond)
    # A gradient that vanishes in exact arithmetic (q, k and bias at Lk = 1; everything behind a LayerNorm over one
    # channel) is rounding noise of the size of the call's other gradients or of the upstream gradient: a gradient
    # below 1e-3 of those is measured against that.
    natural = 1e-3 * max([float(g.abs().max()) for g in oracle_grads.values()] + [UPSTREAM_SIZE])
    for name, grad in grads.items():
        assert grad.dtype == p["dtype"], name
        assert_close_to_oracle(grad, oracle_grads[name], same[1].get(name), cond, scale=natural)


@pytest.mark.slow
@sweep_settings(25)
@given(p=attention_problems(max_len=40, max_dim=140))
def test_reference_lcd_attention_matches_oracle_over_the_domain(p):
    check("reference", p)


@pytest.mark.slow
@sweep_settings(60)
@given(p=attention_problems(max_len=40, max_dim=140))
def test_cpp_lcd_attention_matches_oracle_over_the_domain(p):
    skip_unless_backend("cpp", "lcd_attention")
    check("cpp", p)


@pytest.mark.slow
@pytest.mark.triton
@sweep_settings(15)
@given(p=attention_problems(max_len=12, max_dim=40))  # the Triton CPU interpreter takes ~0.1-1 s a call
def test_triton_lcd_attention_matches_oracle_over_the_domain(p):
    skip_unless_backend("triton", "lcd_attention")
    check("triton", p)
