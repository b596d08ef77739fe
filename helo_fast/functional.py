"""Public fused ops: validate the inputs once, pick the backend, run it.

Each op takes ``backend="auto" | "reference" | "cpp" | "triton"`` (see ``_backend.choose_backend``)
and ``check_finite=True`` (NaN/inf inputs raise ValueError; False skips that check for speed).
Under torch.autocast the OT ops and lcd_attention follow the policy of ``_autocast`` (applied before validation).
"""
from __future__ import annotations

from . import _backend, _ops, reference
from ._autocast import ATTENTION_ARGS, OT_ARGS, autocast_policy
from ._validation import device_of, validate_attention, validate_dropout, validate_gromov, validate_ot


@autocast_policy(OT_ARGS)
def sinkhorn(cost, a=None, b=None, *, eps, n_iters, grad="unrolled", backend="auto", check_finite=True):
    """Batched log-domain entropic OT; see ``helo_fast.reference.sinkhorn`` for the semantics.

    cost: [B, n, m]; a: [B, n], b: [B, m] (None = uniform). Returns the plan [B, n, m].
    """
    backend = _backend.choose_backend(backend, device_of("cost", cost), "sinkhorn")
    if backend == "reference":
        return reference.sinkhorn(cost, a, b, eps=eps, n_iters=n_iters, grad=grad, check_finite=check_finite)
    a, b = validate_ot(cost, a, b, reg_name="eps", reg=eps, n_iters_name="n_iters", n_iters=n_iters, grad=grad,
                       check_finite_values=check_finite)
    return _ops.get("sinkhorn", backend)(cost, a, b, eps=eps, n_iters=n_iters, grad=grad)


@autocast_policy(OT_ARGS)
def ipot(cost, a=None, b=None, *, beta, n_iters, grad="none", backend="auto", check_finite=True):
    """Batched log-domain IPOT (HELO_SPEC §4.5); see ``helo_fast.reference.ipot``.

    cost: [B, n, m]; a: [B, n], b: [B, m] (None = uniform). Returns the plan [B, n, m].
    """
    backend = _backend.choose_backend(backend, device_of("cost", cost), "ipot")
    if backend == "reference":
        return reference.ipot(cost, a, b, beta=beta, n_iters=n_iters, grad=grad, check_finite=check_finite)
    a, b = validate_ot(cost, a, b, reg_name="beta", reg=beta, n_iters_name="n_iters", n_iters=n_iters, grad=grad,
                       check_finite_values=check_finite)
    return _ops.get("ipot", backend)(cost, a, b, beta=beta, n_iters=n_iters, grad=grad)


@autocast_policy(OT_ARGS)
def gromov_wasserstein(cs, ct, a=None, b=None, *, eps=0.1, outer_iters=5, inner_iters=20, solver="ipot", grad="none",
                       backend="auto", check_finite=True):
    """HeLo's whole GW step fused; see ``helo_fast.reference.gromov_wasserstein``.

    cs: [B, n, n], ct: [B, m, m]; a: [B, n], b: [B, m] (None = uniform). Returns the plan [B, n, m].
    """
    backend = _backend.choose_backend(backend, device_of("cs", cs), "gromov_wasserstein")
    if backend == "reference":
        return reference.gromov_wasserstein(cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters,
                                            solver=solver, grad=grad, check_finite=check_finite)
    a, b = validate_gromov(cs, ct, a, b, eps=eps, outer_iters=outer_iters, inner_iters=inner_iters, solver=solver,
                           grad=grad, check_finite_values=check_finite)
    return _ops.get("gromov_wasserstein", backend)(cs, ct, a, b, eps=eps, outer_iters=outer_iters,
                                                   inner_iters=inner_iters, solver=solver, grad=grad)


@autocast_policy(ATTENTION_ARGS)
def lcd_attention(q, k, v, bias=None, *, scale=None, dropkey_p=0.0, dropout_p=0.0, residual=None, ln_weight=None,
                  ln_bias=None, ln_eps=1e-5, bias_before_scale=True, generator=None, dropkey_mask=None,
                  dropout_mask=None, backend="auto", check_finite=True):
    """Fused small-sequence attention; see ``helo_fast.reference.lcd_attention`` for the semantics.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; bias broadcastable to [B, H, Lq, Lk]; residual [B, Lq, H*D];
    ln_weight, ln_bias [H*D]. Returns [B, Lq, H*D].
    """
    kwargs = dict(dropkey_p=dropkey_p, dropout_p=dropout_p, residual=residual, ln_weight=ln_weight, ln_bias=ln_bias,
                  ln_eps=ln_eps, bias_before_scale=bias_before_scale, generator=generator,
                  dropkey_mask=dropkey_mask, dropout_mask=dropout_mask)
    backend = _backend.choose_backend(backend, device_of("q", q), "lcd_attention")
    if backend == "reference":
        return reference.lcd_attention(q, k, v, bias, scale=scale, check_finite=check_finite, **kwargs)
    scale = validate_attention(q, k, v, bias, residual, ln_weight, ln_bias, scale=scale, dropkey_p=dropkey_p,
                               dropout_p=dropout_p, ln_eps=ln_eps, dropkey_mask=dropkey_mask,
                               dropout_mask=dropout_mask, check_finite_values=check_finite)
    return _ops.get("lcd_attention", backend)(q, k, v, bias, scale=scale, **kwargs)


def seeded_dropout(x, p, *, generator=None, training=True, backend="auto"):
    """Dropout whose mask is a function of (seed, element index); see ``helo_fast.reference.seeded_dropout``.

    x: any shape (at most 2**32 elements); p in [0, 1). Returns x * 1/(1-p) where kept and 0 where dropped, same
    shape and dtype; x itself when ``training`` is False or p = 0. One seed is drawn from ``generator`` per call
    (the default CPU generator when None), so every backend gives the same mask for the same generator state.
    """
    backend = _backend.choose_backend(backend, device_of("x", x), "seeded_dropout")
    if backend == "reference" and training:
        return reference.seeded_dropout(x, p, generator=generator)  # validates its inputs itself
    p = validate_dropout(x, p)
    if not training or p == 0.0:
        return x
    return _ops.get("seeded_dropout", backend)(x, p, generator=generator)

