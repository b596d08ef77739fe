"""The value checks under torch.compile(fullgraph=True): compiled into the graph (torch._assert_async), so negative
marginals, unequal masses, NaN costs, an eps too small for the costs and attention inputs that would overflow are
refused by a compiled call too (RuntimeError with the eager message, without the values), on every backend; valid
inputs give the eager result. One compilation per (op, backend): every case has the same shapes."""

import math

import pytest
import torch

import helo_fast as hf
from devices import CPU, backend_params, skip_unless_backend

DT = torch.float64


def _ot_case(change):
    gen = torch.Generator().manual_seed(0)
    args = dict(
        cost=torch.rand(2, 3, 4, generator=gen, dtype=DT),
        a=torch.full((2, 3), 1 / 3, dtype=DT),
        b=torch.full((2, 4), 1 / 4, dtype=DT),
    )
    args.update(change)
    return args["cost"], args["a"], args["b"]


OT_BAD = [
    (dict(a=torch.tensor([[0.5, 0.7, -0.2]] * 2, dtype=DT)), "a must be non-negative"),
    (dict(a=torch.full((2, 3), 0.5, dtype=DT)), "equal total mass"),
    (dict(a=torch.full((2, 3), 1e-6 / 3, dtype=DT), b=torch.full((2, 4), 5e-6 / 4, dtype=DT)), "equal total mass"),
    (dict(a=torch.zeros(2, 3, dtype=DT), b=torch.zeros(2, 4, dtype=DT)), "a must have positive total mass"),
    (dict(cost=torch.full((2, 3, 4), math.nan, dtype=DT)), "cost contains NaN or inf"),
    (dict(a=torch.tensor([[math.nan, 0.5, 0.5]] * 2, dtype=DT)), "a contains NaN or inf"),
    (dict(cost=torch.full((2, 3, 4), 1e20, dtype=DT)), r"too small for .*costs.*: max\|cost\| / eps must be <="),
]


@pytest.mark.parametrize("backend", backend_params("sinkhorn"))
def test_compiled_sinkhorn_refuses_what_eager_refuses(backend):
    torch._dynamo.reset()
    fn = torch.compile(
        lambda c, a, b: hf.sinkhorn(c, a, b, eps=0.1, n_iters=3, backend=backend),
        fullgraph=True,
        backend="aot_eager",
        dynamic=False,
    )
    good = _ot_case({})
    torch.testing.assert_close(fn(*good), hf.sinkhorn(*good, eps=0.1, n_iters=3, backend=backend), rtol=1e-12, atol=0)
    for change, match in OT_BAD:
        with pytest.raises(ValueError, match=match):
            hf.sinkhorn(*_ot_case(change), eps=0.1, n_iters=3, backend=backend)
        with pytest.raises(RuntimeError, match=match):
            fn(*_ot_case(change))


def test_inductor_keeps_the_checks():
    """The default compiler (inductor) too: its CPU code raises from the compiled assertion."""
    skip_unless_backend("cpp", "ipot", CPU)
    torch._dynamo.reset()
    fn = torch.compile(
        lambda c, a, b: hf.ipot(c, a, b, beta=0.1, n_iters=3, backend="cpp"), fullgraph=True, dynamic=False
    )
    good = _ot_case({})
    torch.testing.assert_close(fn(*good), hf.ipot(*good, beta=0.1, n_iters=3, backend="cpp"), rtol=1e-12, atol=0)
    for change, match in OT_BAD:
        with pytest.raises(RuntimeError, match=match.replace("eps", "beta")):
            fn(*_ot_case(change))


@pytest.mark.parametrize("backend", backend_params("gromov_wasserstein"))
def test_compiled_gromov_wasserstein_refuses_what_eager_refuses(backend):
    torch._dynamo.reset()
    fn = torch.compile(
        lambda cs, ct, a, b: hf.gromov_wasserstein(
            cs, ct, a, b, eps=0.1, outer_iters=2, inner_iters=2, backend=backend
        ),
        fullgraph=True,
        backend="aot_eager",
        dynamic=False,
    )
    gen = torch.Generator().manual_seed(1)
    cs, ct = torch.rand(2, 3, 3, generator=gen, dtype=DT), torch.rand(2, 4, 4, generator=gen, dtype=DT)
    a, b = torch.full((2, 3), 1 / 3, dtype=DT), torch.full((2, 4), 1 / 4, dtype=DT)
    torch.testing.assert_close(
        fn(cs, ct, a, b), hf.gromov_wasserstein(cs, ct, a, b, eps=0.1, outer_iters=2, inner_iters=2, backend=backend)
    )
    cases = [
        ((cs, ct, a, torch.full((2, 4), 0.5, dtype=DT)), "equal total mass"),
        ((cs, ct, -a, b), "a must be non-negative"),
        ((cs.clone().fill_(math.inf), ct, a, b), "cs contains NaN or inf"),
        ((cs * 1e10, ct, a, b), r"too small for .*costs"),
    ]
    for args, match in cases:
        with pytest.raises(RuntimeError, match=match):
            fn(*args)


@pytest.mark.parametrize("backend", backend_params("lcd_attention"))
def test_compiled_lcd_attention_refuses_what_eager_refuses(backend):
    torch._dynamo.reset()
    fn = torch.compile(
        lambda q, k, v, r: hf.lcd_attention(q, k, v, residual=r, ln_weight=torch.ones(8), backend=backend),
        fullgraph=True,
        backend="aot_eager",
        dynamic=False,
    )
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 3, 4, generator=gen) for _ in range(3))
    r = torch.randn(1, 3, 8, generator=gen)
    torch.testing.assert_close(
        fn(q, k, v, r), hf.lcd_attention(q, k, v, residual=r, ln_weight=torch.ones(8), backend=backend)
    )
    cases = [
        ((q.clone().fill_(math.nan), k, v, r), "q contains NaN or inf"),
        ((q * 1e20, k * 1e20, v, r), r"too large for torch\.float32: \(D max\|q\| max\|k\|"),
        ((q, k, v, r * 1e20), "bounding the LayerNorm variance's sum"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            hf.lcd_attention(*args[:3], residual=args[3], ln_weight=torch.ones(8), backend=backend)
        with pytest.raises(RuntimeError, match=match):
            fn(*args)
