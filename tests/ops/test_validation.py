"""Every validation rule: the wrong input raises a clear error naming the argument, on every backend.

The last section: the value checks under torch.compile(fullgraph=True), compiled into the graph
(torch._assert_async), so negative marginals, unequal masses, NaN costs, an eps too small for the costs and attention
inputs that would overflow are refused by a compiled call too (RuntimeError with the eager message, without the
values), on every backend; valid inputs give the eager result. One compilation per (op, backend): every case has the
same shapes."""

import math

import pytest
import torch

import helo_fast as hf
from helo_fast import _backend, _ext
from devices import CPU, backend_params, skip_unless_backend

BACKENDS = ["reference", "auto"]


def ot_inputs(batch=2, n=3, m=4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, n, m, generator=gen, dtype=dtype)


OT_CASES = [
    (dict(cost="not a tensor"), TypeError, "cost must be a torch.Tensor"),
    (dict(cost=torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, "cost must have dtype"),
    (dict(cost=torch.rand(3, 4)), ValueError, r"cost must be a 3-D tensor"),
    (dict(cost=torch.rand(2, 0, 4)), ValueError, r"cost must have shape \[B, n, m\]"),
    (dict(eps=0.0), ValueError, "eps must be a finite float > 0"),
    (dict(eps=-1.0), ValueError, "eps must be a finite float > 0"),
    (dict(eps=math.nan), ValueError, "eps must be a finite float > 0"),
    (dict(eps="0.1"), TypeError, "eps must be a float > 0"),
    (dict(n_iters=0), ValueError, "n_iters must be an int >= 1"),
    (dict(n_iters=2.0), TypeError, "n_iters must be an int >= 1"),
    (dict(grad="implicit!"), ValueError, "grad must be one of"),
    (dict(a=torch.full((2, 4), 0.25, dtype=torch.float64)), ValueError, r"a must have shape \[B, n\]"),
    (dict(b=torch.full((2, 3), 1 / 3, dtype=torch.float64)), ValueError, r"b must have shape \[B, m\]"),
    (dict(a=torch.tensor([[0.5, 0.7, -0.2]] * 2, dtype=torch.float64)), ValueError, "a must be non-negative"),
    (dict(a=torch.full((2, 3), 0.5, dtype=torch.float64)), ValueError, "equal total mass"),
    (dict(a=torch.full((2, 3), 1 / 3, dtype=torch.float32)), TypeError, "a must have the dtype of cost"),
    (dict(cost=torch.tensor([[[math.nan, 1.0]]], dtype=torch.float64)), ValueError, "cost contains NaN or inf"),
    (dict(cost=torch.tensor([[[math.inf, 1.0]]], dtype=torch.float64)), ValueError, "cost contains NaN or inf"),
    # issue 17: NaN/inf marginals, regularisations below the documented floor, iteration counts past int32, meta
    (dict(a=torch.tensor([[math.nan, 0.5, 0.5]] * 2, dtype=torch.float64)), ValueError, "a contains NaN or inf"),
    (dict(b=torch.tensor([[math.inf, 0, 0, 0]] * 2, dtype=torch.float64)), ValueError, "b contains NaN or inf"),
    (dict(eps=1e-100), ValueError, r"eps = 1e-100 is too small for costs of magnitude"),
    (dict(eps=1e-320), ValueError, r"eps must be >= 2.225e-308 \(the smallest normal float64 number\)"),
    (dict(eps=1e-40, cost=ot_inputs(dtype=torch.float32)), ValueError, "eps must be >= 1.175e-38"),
    (dict(n_iters=2**63), ValueError, "n_iters must be an int <= 2147483647"),
    (dict(cost=torch.empty(2, 3, 4, device="meta")), ValueError, "cost is a meta tensor"),
    # issue 25: the mass check is relative, so unequal masses far below 1 are refused too
    (
        dict(a=torch.full((2, 3), 1e-6 / 3, dtype=torch.float64), b=torch.full((2, 4), 5e-6 / 4, dtype=torch.float64)),
        ValueError,
        r"equal total mass per batch entry \(within 1e-10, relative\); got .* = 0\.8",
    ),
    (
        dict(
            a=torch.full((2, 3), 1e-9 / 3, dtype=torch.float64), b=torch.full((2, 4), 1.001e-9 / 4, dtype=torch.float64)
        ),
        ValueError,
        "equal total mass",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change,exc,match", OT_CASES)
def test_sinkhorn_and_ipot_reject_bad_input(change, exc, match, backend):
    args = dict(cost=ot_inputs(), a=None, b=None, eps=0.1, n_iters=3, grad="none")
    args.update(change)
    with pytest.raises(exc, match=match):
        hf.sinkhorn(
            args["cost"],
            args["a"],
            args["b"],
            eps=args["eps"],
            n_iters=args["n_iters"],
            grad=args["grad"],
            backend=backend,
        )
    with pytest.raises(exc, match=match.replace("eps", "beta")):
        hf.ipot(
            args["cost"],
            args["a"],
            args["b"],
            beta=args["eps"],
            n_iters=args["n_iters"],
            grad=args["grad"],
            backend=backend,
        )


def test_check_finite_false_skips_the_scan():
    cost = ot_inputs()
    cost[0, 0, 0] = math.nan
    plan = hf.sinkhorn(cost, eps=0.1, n_iters=2, grad="none", backend="reference", check_finite=False)
    assert bool(plan.isnan().any())  # the caller opted out: garbage in, garbage out


def gw_inputs():
    gen = torch.Generator().manual_seed(0)
    return (
        torch.rand(2, 3, 3, generator=gen, dtype=torch.float64),
        torch.rand(2, 4, 4, generator=gen, dtype=torch.float64),
    )


GW_CASES = [
    (dict(cs=torch.rand(2, 3, 4, dtype=torch.float64)), ValueError, r"cs must have shape \[B, n, n\]"),
    (dict(ct=torch.rand(2, 4, 5, dtype=torch.float64)), ValueError, r"ct must have shape \[B, m, m\]"),
    (dict(ct=torch.rand(3, 4, 4, dtype=torch.float64)), ValueError, "ct must have the batch size of cs"),
    (dict(ct=torch.rand(2, 4, 4, dtype=torch.float32)), TypeError, "ct must have the dtype of cs"),
    (dict(eps=0.0), ValueError, "eps must be a finite float > 0"),
    (dict(outer_iters=0), ValueError, "outer_iters must be an int >= 1"),
    (dict(inner_iters=0), ValueError, "inner_iters must be an int >= 1"),
    (dict(solver="emd"), ValueError, "solver must be one of"),
    (dict(a=torch.full((2, 4), 0.25, dtype=torch.float64)), ValueError, r"a must have shape \[B, n\]"),
    (dict(b=torch.full((2, 4), 0.5, dtype=torch.float64)), ValueError, "equal total mass"),
    (dict(cs=torch.full((2, 3, 3), math.nan, dtype=torch.float64)), ValueError, "cs contains NaN or inf"),
    (dict(eps=1e-100), ValueError, "eps = 1e-100 is too small for costs of magnitude"),
    (dict(inner_iters=2**63), ValueError, "inner_iters must be an int <= 2147483647"),
    (dict(outer_iters=2**40), ValueError, "outer_iters must be an int <= 2147483647"),
    (dict(a=torch.tensor([[math.nan, 0.5, 0.5]] * 2, dtype=torch.float64)), ValueError, "a contains NaN or inf"),
    (dict(ct=torch.empty(2, 4, 4, dtype=torch.float64, device="meta")), ValueError, "ct is a meta tensor"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change,exc,match", GW_CASES)
def test_gromov_rejects_bad_input(change, exc, match, backend):
    cs, ct = gw_inputs()
    args = dict(cs=cs, ct=ct, a=None, b=None, eps=0.1, outer_iters=2, inner_iters=2, solver="ipot")
    args.update(change)
    with pytest.raises(exc, match=match):
        hf.gromov_wasserstein(args.pop("cs"), args.pop("ct"), args.pop("a"), args.pop("b"), backend=backend, **args)


def attention_inputs(batch=2, heads=2, lq=3, lk=4, dim=5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, lq, dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, heads, lk, dim, generator=gen, dtype=dtype)
    v = torch.randn(batch, heads, lk, dim, generator=gen, dtype=dtype)
    return q, k, v


ATTENTION_CASES = [
    (dict(q=torch.randn(2, 3, 5, dtype=torch.float64)), ValueError, "q must be a 4-D tensor"),
    (dict(q=torch.randn(2, 2, 3, 5).to(torch.int32)), TypeError, "q must have dtype"),
    (dict(k=torch.randn(2, 2, 4, 6, dtype=torch.float64)), ValueError, r"k must have shape \[B, H, Lk, D\]"),
    (dict(v=torch.randn(2, 2, 5, 5, dtype=torch.float64)), ValueError, r"v must have shape \[B, H, Lk, D\]"),
    (dict(k=torch.randn(2, 2, 4, 5, dtype=torch.float32)), TypeError, "k must have the dtype of q"),
    (dict(bias=torch.randn(3, 4, dtype=torch.float32)), TypeError, "bias must have the dtype of q"),
    (dict(bias=torch.randn(2, 4, dtype=torch.float64)), ValueError, "bias must be broadcastable"),
    (dict(residual=torch.randn(2, 3, 9, dtype=torch.float64)), ValueError, r"residual must have shape \[B, Lq, H\*D\]"),
    (dict(ln_bias=torch.randn(10, dtype=torch.float64)), ValueError, "ln_bias needs ln_weight"),
    (dict(ln_weight=torch.randn(9, dtype=torch.float64)), ValueError, r"ln_weight must have shape \[H\*D\]"),
    (
        dict(ln_weight=torch.randn(10, dtype=torch.float32)),
        TypeError,
        r"ln_weight must have the dtype of q \(torch"
        r"\.float64\), got torch\.float32",
    ),
    (dict(dropkey_mask=torch.zeros(2, 2, 3, 4)), TypeError, "dropkey_mask must have dtype"),
    (dict(dropout_mask=torch.zeros(2, 2, 3, 3, dtype=torch.bool)), ValueError, r"dropout_mask must have shape"),
    (dict(dropkey_p=1.0), ValueError, r"dropkey_p must be in \[0, 1\)"),
    (dict(dropout_p=-0.1), ValueError, r"dropout_p must be in \[0, 1\)"),
    (dict(scale=0.0), ValueError, "scale must be a finite float > 0"),
    (dict(ln_eps=0.0), ValueError, "ln_eps must be a finite float > 0"),
    (dict(q=torch.full((2, 2, 3, 5), math.inf, dtype=torch.float64)), ValueError, "q contains NaN or inf"),
    (dict(ln_weight=torch.full((10,), math.nan, dtype=torch.float64)), ValueError, "ln_weight contains NaN or inf"),
    (
        dict(ln_weight=torch.ones(10, dtype=torch.float64), ln_bias=torch.full((10,), -math.inf, dtype=torch.float64)),
        ValueError,
        "ln_bias contains NaN or inf",
    ),
    (dict(q=torch.empty(2, 2, 3, 5, dtype=torch.float64, device="meta")), ValueError, "q is a meta tensor"),
    # issue 25: finite inputs whose logits or LayerNorm variance would overflow the compute dtype (NaN out)
    (
        dict(q=torch.full((2, 2, 3, 5), 1e20), k=torch.full((2, 2, 4, 5), 1e20), v=torch.ones(2, 2, 4, 5)),
        ValueError,
        r"inputs of lcd_attention are too large for torch\.float32: \(D max\|q\| max\|k\| \+ max\|bias\|\)",
    ),
    (
        dict(
            q=torch.ones(2, 2, 3, 5),
            k=torch.ones(2, 2, 4, 5),
            v=torch.ones(2, 2, 4, 5),
            bias=torch.full((3, 4), 3e38),
            scale=2.0,
        ),
        ValueError,
        "too large for torch.float32",
    ),
    (
        dict(
            q=torch.ones(2, 2, 3, 5),
            k=torch.ones(2, 2, 4, 5),
            v=torch.ones(2, 2, 4, 5),
            residual=torch.full((2, 3, 10), 1e20),
            ln_weight=torch.ones(10),
        ),
        ValueError,
        r"too large for torch\.float32: .*bounding the LayerNorm variance's sum",
    ),
    (
        dict(
            q=torch.ones(2, 2, 3, 5, dtype=torch.float64),
            k=torch.ones(2, 2, 4, 5, dtype=torch.float64),
            v=torch.full((2, 2, 4, 5), 1e308, dtype=torch.float64),
            residual=torch.full((2, 3, 10), 1.7e308, dtype=torch.float64),
        ),
        ValueError,
        r"too large for torch\.float64: .*bounding the output",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change,exc,match", ATTENTION_CASES)
def test_lcd_attention_rejects_bad_input(change, exc, match, backend):
    q, k, v = attention_inputs()
    args = dict(q=q, k=k, v=v, bias=None)
    args.update(change)
    with pytest.raises(exc, match=match):
        hf.lcd_attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("bias"), backend=backend, **args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lcd_attention_half_inputs_take_float32_layer_norm_parameters_only(dtype, backend):
    """float16/bfloat16 q may come with float32 LayerNorm parameters (as torch.autocast leaves them); no other
    mix of dtypes."""
    q, k, v = attention_inputs(dtype=dtype)
    out = hf.lcd_attention(q, k, v, ln_weight=torch.ones(10), ln_bias=torch.zeros(10), backend=backend)
    assert out.dtype == dtype
    with pytest.raises(
        TypeError,
        match=r"ln_bias must have the dtype of q \(torch\.\w+\) or float32, got "
        r"torch\.float64",
    ):
        hf.lcd_attention(
            q, k, v, ln_weight=torch.ones(10), ln_bias=torch.zeros(10, dtype=torch.float64), backend=backend
        )


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        hf.sinkhorn(ot_inputs(), eps=0.1, n_iters=2, backend="cuda")


def test_missing_extension_explicit_backend_raises_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "EXTENSION_ERROR", "helo_fast._C could not be imported (test)")
    with pytest.raises(RuntimeError, match=r"backend='cpp' is unavailable for sinkhorn on cpu: helo_fast._C could not"):
        hf.sinkhorn(ot_inputs(), eps=0.1, n_iters=2, backend="cpp")
    assert _backend.choose_backend("auto", torch.device("cpu"), "sinkhorn") == "reference"
    assert "helo_fast._C could not be imported" in hf.env_report()["backends"]["cpp[cpu]"]


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = _backend.unavailable_reason("triton", torch.device("cpu"))
    assert reason is not None and ("TRITON_INTERPRET=1" in reason or "triton is not installed" in reason)


def test_triton_warp_counts_follow_helo_triton_num_warps(monkeypatch):
    pytest.importorskip("triton")
    from helo_fast.kernels import triton_utils

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert [c.num_warps for c in triton_utils.num_warps_configs()] == [1, 2, 4, 8]
    monkeypatch.setenv("HELO_TRITON_NUM_WARPS", "2,4")
    assert [c.num_warps for c in triton_utils.num_warps_configs()] == [2, 4]
    monkeypatch.setenv("HELO_TRITON_NUM_WARPS", "four")
    with pytest.raises(ValueError, match="HELO_TRITON_NUM_WARPS must be"):
        triton_utils.num_warps_configs()


# Under torch.compile(fullgraph=True).

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
