"""Random lcd_attention inputs shared by the attention tests (C++ and Triton backends)."""
import torch


def attention_case(seed, batch, heads, lq, lk, dim, bias_shape=None, *, residual=True, ln=True, ln_bias=True,
                   dtype=torch.float64, device="cpu"):
    """Random inputs as a dict of the tensor arguments of lcd_attention (None where absent).

    q [B, H, Lq, D], k/v [B, H, Lk, D], bias ``bias_shape``, residual [B, Lq, H*D], ln_weight/ln_bias [H*D],
    drawn in float64 from ``seed`` and then cast, so every dtype sees the same values.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    hd = heads * dim
    return dict(q=rand(batch, heads, lq, dim), k=rand(batch, heads, lk, dim), v=rand(batch, heads, lk, dim),
                bias=rand(*bias_shape) if bias_shape is not None else None,
                residual=rand(batch, lq, hd) if residual else None,
                ln_weight=1 + 0.3 * rand(hd) if ln else None, ln_bias=rand(hd) if ln and ln_bias else None)


def op_args(**named):
    """The arguments of the lcd_attention ops (C++ and Triton, forward; a backward's after grad_out) in their one
    order, helo_fast._ops.lcd_attention.OP_ARGS, from keywords; absent ones None."""
    from helo_fast._ops.lcd_attention import OP_ARGS

    unknown = set(named) - set(OP_ARGS)
    assert not unknown, f"not arguments of the lcd_attention ops: {sorted(unknown)}"
    return tuple(named.get(name) for name in OP_ARGS)
