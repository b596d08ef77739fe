"""Random lcd_attention inputs shared by the attention tests (C++ and Triton backends): HeLo's shapes and odd ones,
the inputs of one case, and one run of the op with its gradients."""

import torch

import helo_fast as hf

# HeLo's call sites (HELO_SPEC §3, §4.8, §6) and odd shapes: (batch, heads, lq, lk, dim, bias shape).
HELO_SHAPES = {
    "ca": (3, 4, 18, 18, 32, None),
    "transformer": (2, 4, 36, 36, 32, None),
    "lcd_ca": (3, 1, 10, 10, 128, (10, 10)),
}
ODD_SHAPES = {
    "lq_ne_lk_d6": (2, 3, 5, 7, 6, (1, 3, 5, 7)),
    "batch1_d5": (1, 2, 4, 3, 5, (4, 3)),
    "full_bias_d33": (2, 2, 3, 9, 33, (2, 2, 3, 9)),
    "tiny_lk2_d3": (1, 1, 1, 2, 3, None),
    "lq1_d5": (3, 2, 1, 4, 5, (1, 2, 1, 4)),
    "lq9_lk3_d2": (2, 1, 9, 3, 2, (9, 3)),
}


def attention_case(
    seed,
    batch,
    heads,
    lq,
    lk,
    dim,
    bias_shape=None,
    *,
    residual=True,
    ln=True,
    ln_bias=True,
    dtype=torch.float64,
    device="cpu",
):
    """Random inputs as a dict of the tensor arguments of lcd_attention (None where absent).

    q [B, H, Lq, D], k/v [B, H, Lk, D], bias ``bias_shape``, residual [B, Lq, H*D], ln_weight/ln_bias [H*D],
    drawn in float64 from ``seed`` and then cast, so every dtype sees the same values.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    hd = heads * dim
    return dict(
        q=rand(batch, heads, lq, dim),
        k=rand(batch, heads, lk, dim),
        v=rand(batch, heads, lk, dim),
        bias=rand(*bias_shape) if bias_shape is not None else None,
        residual=rand(batch, lq, hd) if residual else None,
        ln_weight=1 + 0.3 * rand(hd) if ln else None,
        ln_bias=rand(hd) if ln and ln_bias else None,
    )


def op_args(**named):
    """The arguments of the lcd_attention ops (C++ and Triton, forward; a backward's after grad_out) in their one
    order, helo_fast._ops.lcd_attention.OP_ARGS, from keywords; absent ones None."""
    from helo_fast._ops.lcd_attention import OP_ARGS

    unknown = set(named) - set(OP_ARGS)
    assert not unknown, f"not arguments of the lcd_attention ops: {sorted(unknown)}"
    return tuple(named.get(name) for name in OP_ARGS)


def run_attention(backend, tensors, *, seed=0, grad_weight=None, **kwargs):
    """Output, gradients of (out * grad_weight).sum() w.r.t. every tensor given, next draw of the generator (a CPU
    generator, as a training loop passes one on any device)."""
    inputs = {name: (t.clone().requires_grad_(True) if t is not None else None) for name, t in tensors.items()}
    gen = torch.Generator().manual_seed(seed)
    out = hf.lcd_attention(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["bias"],
        residual=inputs["residual"],
        ln_weight=inputs["ln_weight"],
        ln_bias=inputs["ln_bias"],
        generator=gen,
        backend=backend,
        **kwargs,
    )
    if grad_weight is None:
        grad_weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    (out * grad_weight.to(device=out.device, dtype=out.dtype)).sum().backward()
    grads = {name: t.grad for name, t in inputs.items() if t is not None}
    return out.detach(), grads, int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
