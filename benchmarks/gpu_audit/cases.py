"""The Triton launches a GPU run makes, as calls of the public ops (``backend="triton"``): one list for the audit
(which compiles what these calls launch, for Hopper) and for tests/ops/test_triton_launch_cases.py (which runs every
call under TRITON_INTERPRET=1 and compares it with the reference backend).

Sizes come from where the GPU uses them: HeLo's call sites (derived from ``HeLoConfig()``), the GPU benchmark suites
(their size tables, imported), and small ragged sizes like the tests' (block sizes 16 and 32, masked edges). Flags
cover every value of every launcher choice at least once (bias before / after the scale, no / hashed / explicit
masks, with and without residual and LayerNorm, histories saved or not, both GW solvers); the audit fails on a
constexpr value that no case reaches (benchmarks/gpu_audit/launches.py).

Each case is ``Case(op, label, dtype, make)``: ``make(device, dtype)`` returns ``(fn, inputs)``, where ``fn(*inputs,
backend=...)`` returns the op's output; a case whose inputs require grad is also run backward (the backward kernels).
Batch is 2 everywhere: the batch only sets the grid, never a specialization.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

import helo_fast as hf
from helo_fast.models import HeLoConfig

BATCH = 2
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    label: str
    dtype: torch.dtype
    make: Callable

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}-{str(self.dtype).removeprefix('torch.')}"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape, dtype, device, grad: bool, seed: int = 0):
    t = torch.rand(*shape, generator=_gen(seed), dtype=torch.float64).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


# ---- the OT ops ------------------------------------------------------------------------------------------------
def _ot_case(op: str, n: int, m: int, grad: bool, n_iters: int):
    def make(device, dtype):
        cost = _rand(BATCH, n, m, dtype=dtype, device=device, grad=grad)
        a = _rand(BATCH, n, dtype=torch.float64, device="cpu", grad=False, seed=1) + 0.5
        # Non-uniform marginals where the dtype can hold a total mass of 1 (bf16 / fp16 rounding cannot): uniform.
        a = (a / a.sum(-1, keepdim=True)).to(device=device, dtype=dtype) if dtype not in LOW_PRECISION else None
        mode = "unrolled" if grad else "none"
        if op == "sinkhorn":
            return (
                lambda c, w, backend: hf.sinkhorn(c, w, eps=0.5, n_iters=n_iters, grad=mode, backend=backend),
                (cost, a),
            )
        return (lambda c, w, backend: hf.ipot(c, w, beta=0.5, n_iters=n_iters, grad=mode, backend=backend), (cost, a))

    return make


def _ot_tol_case(op: str, n: int, m: int, grad: bool):
    """A call with ``tol`` (the kernels that stop each problem at its own count; a tol no problem reaches)."""

    def make(device, dtype):
        cost = _rand(BATCH, n, m, dtype=dtype, device=device, grad=grad)
        mode = "unrolled" if grad else "none"
        reg = {"eps": 0.5} if op == "sinkhorn" else {"beta": 0.5}
        return (
            lambda c, backend: _quiet(getattr(hf, op), c, n_iters=12, tol=1e-300, grad=mode, backend=backend, **reg),
            (cost,),
        )

    return make


def _quiet(fn, *args, **kwargs):
    """``fn`` without its OTConvergenceWarning (the audit's tol cases stop at the cap on purpose)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hf.OTConvergenceWarning)
        return fn(*args, **kwargs)


def _gw_case(n: int, m: int, solver: str, grad: bool, outer: int, inner: int):
    def make(device, dtype):
        cs = _rand(BATCH, n, n, dtype=dtype, device=device, grad=grad, seed=2)
        ct = _rand(BATCH, m, m, dtype=dtype, device=device, grad=grad, seed=3)
        mode = "unrolled" if grad else "none"
        return (
            lambda x, y, backend: hf.gromov_wasserstein(
                x, y, eps=0.5, outer_iters=outer, inner_iters=inner, solver=solver, grad=mode, backend=backend
            ),
            (cs, ct),
        )

    return make


# ---- lcd_attention ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Attention:
    heads: int
    lq: int
    lk: int
    dim: int
    bias: tuple | None = None  # bias shape (broadcast to [B, H, Lq, Lk]) or None
    bias_before_scale: bool = True
    masks: str = "none"  # "none", "hash" (drawn from a seed) or "tensor" (explicit bool masks)
    residual: bool = True
    ln: str = "weight+bias"  # "none", "weight" or "weight+bias"
    grad: bool = True


def _attention_case(spec: Attention):
    def make(device, dtype):
        h, lq, lk, d = spec.heads, spec.lq, spec.lk, spec.dim
        grad = spec.grad
        q = _rand(BATCH, h, lq, d, dtype=dtype, device=device, grad=grad, seed=4) - 0.5
        k = _rand(BATCH, h, lk, d, dtype=dtype, device=device, grad=grad, seed=5) - 0.5
        v = _rand(BATCH, h, lk, d, dtype=dtype, device=device, grad=grad, seed=6) - 0.5
        extra = {}
        if spec.bias is not None:
            extra["bias"] = _rand(*spec.bias, dtype=dtype, device=device, grad=grad, seed=7)
        if spec.residual:
            extra["residual"] = _rand(BATCH, lq, h * d, dtype=dtype, device=device, grad=grad, seed=8)
        param_dtype = torch.float32 if dtype in LOW_PRECISION else dtype
        if spec.ln != "none":
            extra["ln_weight"] = _rand(h * d, dtype=param_dtype, device=device, grad=grad, seed=9) + 0.5
        if spec.ln == "weight+bias":
            extra["ln_bias"] = _rand(h * d, dtype=param_dtype, device=device, grad=grad, seed=10)
        options = dict(bias_before_scale=spec.bias_before_scale)
        if spec.masks == "hash":
            options.update(dropkey_p=0.3, dropout_p=0.2)
        elif spec.masks == "tensor":
            shape = (BATCH, h, lq, lk)
            options.update(
                dropkey_p=0.3,
                dropout_p=0.2,
                dropkey_mask=(torch.rand(shape, generator=_gen(11)) < 0.3).to(device),
                dropout_mask=(torch.rand(shape, generator=_gen(12)) < 0.2).to(device),
            )
        names = list(extra)

        def fn(q, k, v, *tensors, backend):
            kwargs = dict(zip(names, tensors))
            bias = kwargs.pop("bias", None)
            # A fresh generator per call: every backend draws the same seed, hence the same hashed masks.
            return hf.lcd_attention(q, k, v, bias, generator=_gen(13), backend=backend, **kwargs, **options)

        return fn, (q, k, v, *extra.values())

    return make


def _dropout_case(shape):
    def make(device, dtype):
        x = _rand(*shape, dtype=dtype, device=device, grad=True, seed=14) - 0.5
        return (lambda t, backend: hf.seeded_dropout(t, 0.3, generator=_gen(15), backend=backend), (x,))

    return make


# ---- the list --------------------------------------------------------------------------------------------------
def helo_attention_sites(cfg: HeLoConfig | None = None):
    """HeLo's three lcd_attention call sites (training: hashed DropKey and dropout, residual, LayerNorm)."""
    cfg = cfg or HeLoConfig()
    n, d, c = cfg.n_channels, cfg.d_model, cfg.n_classes
    return {
        "ca": Attention(cfg.n_heads, n, n, d // cfg.n_heads, masks="hash"),
        "transformer": Attention(cfg.n_heads, cfg.n_tokens, cfg.n_tokens, d // cfg.n_heads, masks="hash"),
        "lcd_ca": Attention(cfg.lcd_heads, c, c, d // cfg.lcd_heads, bias=(1, c, c), masks="hash"),
    }


def _benchmark_sizes():
    """The GPU benchmark suites' sizes (their own tables), so a benchmark never launches an unaudited kernel."""
    from benchmarks import test_bench_lcd_attention, test_bench_seeded_dropout, test_bench_sinkhorn

    attention = {
        name: Attention(h, lq, lk, d, bias=bias, bias_before_scale=before)
        for name, (h, lq, lk, d, bias, before) in test_bench_lcd_attention.SHAPES.items()
    }
    sink = test_bench_sinkhorn.SINKHORN
    dropout = {name: (128, *shape) for name, shape in test_bench_seeded_dropout.SHAPES.items()}
    return attention, (sink["n"], sink["m"], sink["n_iters"]), dropout


def cases() -> list[Case]:
    """Every Triton launch configuration of a GPU run, as op calls (see the module docstring)."""
    cfg = HeLoConfig()
    gw_n = cfg.n_tokens
    bench_attention, (sink_n, sink_m, sink_iters), bench_dropout = _benchmark_sizes()
    out: list[Case] = []

    def add(op, label, make, dtypes=(torch.float32,)):
        out.extend(Case(op, label, dtype, make) for dtype in dtypes)

    high = (torch.float32, torch.float64)
    every_dtype = high + LOW_PRECISION
    for op in ("sinkhorn", "ipot"):
        add(op, "5x11-grad", _ot_case(op, 5, 11, True, 4), high)  # ragged, blocks 16 x 16
        add(op, "4x8-grad", _ot_case(op, 4, 8, True, 4), LOW_PRECISION)  # 1/n exact in bf16 / fp16
        add(op, "20x33-nograd", _ot_case(op, 20, 33, False, 4), high)  # 32 x 64
        add(op, f"{gw_n}x{gw_n}-grad", _ot_case(op, gw_n, gw_n, True, cfg.inner_iters))
        add(op, f"{sink_n}x{sink_m}-grad", _ot_case(op, sink_n, sink_m, True, sink_iters))
        add(op, f"{sink_n}x{sink_m}-nograd", _ot_case(op, sink_n, sink_m, False, sink_iters))
        add(op, "5x11-tol-grad", _ot_tol_case(op, 5, 11, True), high)  # tol=: per-problem stopping
        add(op, "20x33-tol-nograd", _ot_tol_case(op, 20, 33, False), high)
        add(op, f"{gw_n}x{gw_n}-tol-grad", _ot_tol_case(op, gw_n, gw_n, True))
    for solver in ("ipot", "sinkhorn"):
        add("gromov_wasserstein", f"{solver}-6x9-grad", _gw_case(6, 9, solver, True, 2, 3), high)
        add("gromov_wasserstein", f"{solver}-4x8-grad", _gw_case(4, 8, solver, True, 2, 3), LOW_PRECISION)
        add("gromov_wasserstein", f"{solver}-6x9-nograd", _gw_case(6, 9, solver, False, 2, 3))
        for grad in (True, False):
            add(
                "gromov_wasserstein",
                f"{solver}-helo-{'grad' if grad else 'nograd'}",
                _gw_case(gw_n, gw_n, solver, grad, cfg.outer_iters, cfg.inner_iters),
            )
    small = dict(heads=2, lq=5, lk=7, dim=8)
    for label, spec in {
        "plain": Attention(**small, residual=False, ln="none"),
        "bias-after-scale-tensor-masks": Attention(
            **small, bias=(BATCH, 1, 5, 7), bias_before_scale=False, masks="tensor", ln="weight"
        ),
        "bias-before-scale-hash": Attention(**small, bias=(5, 7), masks="hash"),
        "eval-no-grad": Attention(**small, masks="none", grad=False),
    }.items():
        add("lcd_attention", label, _attention_case(spec), every_dtype)
    for label, spec in helo_attention_sites(cfg).items():
        add("lcd_attention", f"helo-{label}", _attention_case(spec))
        add("lcd_attention", f"helo-{label}-eval", _attention_case(dataclasses.replace(spec, masks="none", grad=False)))
    for label, spec in bench_attention.items():
        add("lcd_attention", f"bench-{label}", _attention_case(spec))
    add("seeded_dropout", "3x7", _dropout_case((3, 7)), every_dtype)  # numel not a multiple of 16
    for label, shape in bench_dropout.items():
        add("seeded_dropout", f"bench-{label}", _dropout_case(shape), every_dtype)
    add("mask_hash", "5x9", _mask_hash_case((5, 9)))  # the tests' hash parity kernel
    return out


def _mask_hash_case(shape):
    def make(device, dtype):
        def fn(backend):
            from helo_fast import _rng

            if backend == "reference":
                return _rng.hash_uniform(17, shape, _rng.STREAM_DROPOUT, device=device)
            from helo_fast.kernels import mask_hash

            return mask_hash.hash_uniform(17, shape, _rng.STREAM_DROPOUT, device=device)

        return fn, ()

    return make


def run(case: Case, device, backend: str):
    """Run ``case`` on ``backend``: (output, input gradients) -- the gradients of a fixed random weighting."""
    fn, inputs = case.make(device, case.dtype)
    out = fn(*inputs, backend=backend)
    needs_grad = [t for t in inputs if t is not None and t.requires_grad]
    if not needs_grad:
        return out, []
    weight = torch.randn(out.shape, generator=_gen(16), dtype=torch.float64).to(device=device, dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), needs_grad)
    return out, list(grads)


def describe() -> str:
    """One line per case (for the audit's log)."""
    return "\n".join(case.id for case in cases())
