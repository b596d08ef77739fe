"""Golden outputs of a restructuring: one SHA-256 over every public op's outputs on every CPU backend.

Runs sinkhorn, ipot, gromov_wasserstein (both solvers), lcd_attention (with and without DropKey/dropout,
residual + LayerNorm) and seeded_dropout, forward and backward, in float32 and float64 (plus bfloat16 for the
attention and dropout), on the reference, cpp and Triton (interpreter, tiny shapes) backends, with fixed seeds;
then a few HeLo training steps (reference and fast, DropKey/dropout on). A change that must not change numbers
must leave the printed hash unchanged. Only the public API is used, so the script outlives internal renames.

    TRITON_INTERPRET=1 python tests/support/golden_outputs.py [--verbose]
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys

import torch

import helo_fast
from helo_fast.models import HeLo, HeLoConfig
from helo_fast.training.step import make_optimizer, train_step

VERBOSE = "--verbose" in sys.argv
_digest = hashlib.sha256()


def record(label, *tensors):
    part = hashlib.sha256()
    for t in tensors:
        if t is None:
            part.update(b"none")
            continue
        t = t.detach().contiguous().cpu().reshape(-1)
        part.update(str((t.dtype, tuple(t.shape))).encode())
        part.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    _digest.update(label.encode())
    _digest.update(part.digest())
    if VERBOSE:
        print(f"{part.hexdigest()[:16]}  {label}")


def backends():
    names = ["reference"]
    for name in ("cpp", "triton"):
        if helo_fast._backend.unavailable_reason(name, torch.device("cpu")) is None:
            names.append(name)
    return names


def grads_of(out, inputs):
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad((out * weight).sum(), leaves)


def marginals(g, batch, n, dtype):
    w = torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.1
    return (w / w.sum(-1, keepdim=True)).to(dtype)


def ot_ops(backend, dtype):
    g = torch.Generator().manual_seed(1)
    batch, n, m = 2, 5, 4
    for name, kwargs in (("sinkhorn", dict(eps=0.3, n_iters=7)), ("ipot", dict(beta=0.2, n_iters=6))):
        op = getattr(helo_fast, name)
        cost = torch.rand(batch, n, m, generator=g, dtype=torch.float64).to(dtype)
        a, b = marginals(g, batch, n, dtype), marginals(g, batch, m, dtype)
        plan = op(cost, None, None, backend=backend, grad="none", **kwargs)
        record(f"{name}/{backend}/{dtype}/uniform", plan)
        leaves = [t.clone().requires_grad_() for t in (cost, a, b)]
        plan = op(*leaves, backend=backend, grad="unrolled", **kwargs)
        record(f"{name}/{backend}/{dtype}/unrolled", plan, *grads_of(plan, leaves))
    for solver in ("ipot", "sinkhorn"):
        cs = torch.rand(batch, n, n, generator=g, dtype=torch.float64).to(dtype)
        ct = torch.rand(batch, m, m, generator=g, dtype=torch.float64).to(dtype)
        cs, ct = (cs + cs.transpose(1, 2)) / 2, (ct + ct.transpose(1, 2)) / 2
        a, b = marginals(g, batch, n, dtype), marginals(g, batch, m, dtype)
        kwargs = dict(eps=0.15, outer_iters=3, inner_iters=4, solver=solver)
        plan = helo_fast.gromov_wasserstein(cs, ct, backend=backend, grad="none", **kwargs)
        record(f"gw/{solver}/{backend}/{dtype}/uniform", plan)
        leaves = [t.clone().requires_grad_() for t in (cs, ct, a, b)]
        plan = helo_fast.gromov_wasserstein(*leaves, backend=backend, grad="unrolled", **kwargs)
        record(f"gw/{solver}/{backend}/{dtype}/unrolled", plan, *grads_of(plan, leaves))


def attention_op(backend, dtype):
    g = torch.Generator().manual_seed(2)
    batch, heads, lq, lk, dim = 2, 2, 3, 5, 4

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    for case in ("plain", "masks", "ln_residual"):
        q, k, v = rand(batch, heads, lq, dim), rand(batch, heads, lk, dim), rand(batch, heads, lk, dim)
        bias = rand(batch, 1, lq, lk)
        kwargs = {}
        extra = []
        if case == "masks":
            kwargs = dict(dropkey_p=0.3, dropout_p=0.25, generator=torch.Generator().manual_seed(11))
        if case == "ln_residual":
            residual = rand(batch, lq, heads * dim)
            ln_w = (1 + 0.1 * torch.randn(heads * dim, generator=g, dtype=torch.float64)).to(
                torch.float32 if dtype == torch.bfloat16 else dtype
            )
            ln_b = (0.1 * torch.randn(heads * dim, generator=g, dtype=torch.float64)).to(ln_w.dtype)
            extra = [residual, ln_w, ln_b]
            kwargs = dict(dropkey_p=0.2, generator=torch.Generator().manual_seed(12))
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias, *extra)]
        if extra:
            kwargs.update(residual=leaves[4], ln_weight=leaves[5], ln_bias=leaves[6])
        out = helo_fast.lcd_attention(*leaves[:4], backend=backend, **kwargs)
        record(f"attention/{case}/{backend}/{dtype}", out, *grads_of(out, leaves))


def dropout_op(backend, dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 37, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    out = helo_fast.seeded_dropout(x, 0.3, generator=torch.Generator().manual_seed(5), backend=backend)
    record(f"dropout/{backend}/{dtype}", out, *grads_of(out, [x]))


def model_steps(backend):
    fields = {f.name for f in dataclasses.fields(HeLoConfig)}
    # Config keys under their names after issue 20, or before it (the same numbers either way).
    keys = dict(dropkey_p=0.3, dropout_p=0.2, outer_iters=2, inner_iters=3)
    old_names = dict(dropkey_p="p_dropkey", dropout_p="dropout", outer_iters="gw_outer", inner_iters="ot_iters")
    keys = {(k if k in fields else old_names[k]): v for k, v in keys.items()}
    config = HeLoConfig(
        n_channels=3,
        band_features=2,
        gsr_features=4,
        ppg_features=3,
        video_features=6,
        n_classes=4,
        d_model=8,
        n_heads=2,
        ffn_dim=6,
        head_hidden=8,
        backend=backend,
        **keys,
    )
    torch.manual_seed(0)
    model = HeLo(config, mask_seed=123)
    optimizer = make_optimizer(model)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, config.n_features, generator=g)
    y = torch.softmax(torch.randn(5, config.n_classes, generator=g), -1)
    for step in range(3):
        loss, parts = train_step(model, optimizer, x, y)
        record(f"model/{backend}/step{step}", loss, parts["kl"], parts["corr"])
    record(f"model/{backend}/params", *[p for _, p in sorted(model.state_dict().items())])


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for backend in backends():
        for dtype in (torch.float32, torch.float64):
            ot_ops(backend, dtype)
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            attention_op(backend, dtype)
            dropout_op(backend, dtype)
    for backend in backends():
        model_steps(backend)
    print("backends:", ",".join(backends()))
    print("golden sha256:", _digest.hexdigest())


if __name__ == "__main__":
    main()
