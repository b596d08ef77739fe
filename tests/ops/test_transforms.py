"""Autograd's transforms through every op and backend, against the reference under the same transform: forward mode
(torch.func.jvp, jacfwd, torch.autograd.forward_ad), second derivatives (a Hessian-vector product by
torch.autograd.grad(create_graph=True) then grad again), torch.func.grad, jacrev and vmap, on small float64 problems.

A fast backend may never answer with a silent zero or None: each transform either matches the reference to 1e-10 or
raises an error naming the op and what is unsupported (vmap's refused random draws of the dropout ops).
"""

import pytest
import torch
from torch.autograd import forward_ad

import helo_fast as hf
from helo_fast import _ops
from devices import fast_backend_params, seeded_weights, skip_on_the_triton_interpreter, skip_unless_backend

DT = torch.float64


def _draw(seed, *shape, device, positive=False):
    t = seeded_weights(seed, *shape, device=device)
    return t.abs() + 0.5 if positive else t


class Case:
    """One op call: ``inputs(device)`` -> the differentiated tensors, ``call(backend, *inputs)`` -> the output.
    ``random``: the call draws a mask seed (vmap refuses it unless randomness="same")."""

    def __init__(self, op, inputs, call, random=False):
        self.op, self.inputs, self.call, self.random = op, inputs, call, random


def _marginals(n, m, device):
    a = _draw(11, 1, n, device=device, positive=True)
    b = _draw(12, 1, m, device=device, positive=True)
    return a / a.sum(), b / b.sum()


def _ot_inputs(device):
    cost = _draw(10, 1, 3, 4, device=device).abs()
    return (cost, *_marginals(3, 4, device))


def _gw_inputs(device):
    cs, ct = _draw(13, 1, 3, 3, device=device).abs(), _draw(14, 1, 4, 4, device=device).abs()
    return ((cs + cs.mT) / 2, (ct + ct.mT) / 2, *_marginals(3, 4, device))


def _attention_inputs(device):
    q, k, v = (
        _draw(20, 1, 2, 2, 3, device=device),
        _draw(21, 1, 2, 3, 3, device=device),
        _draw(22, 1, 2, 3, 3, device=device),
    )
    bias, residual = _draw(23, 2, 3, device=device), _draw(24, 1, 2, 6, device=device)
    ln_weight, ln_bias = _draw(25, 6, device=device) + 1.0, _draw(26, 6, device=device)
    return q, k, v, bias, residual, ln_weight, ln_bias


def _attention(backend, q, k, v, bias, residual, ln_weight, ln_bias):
    return hf.lcd_attention(q, k, v, bias, residual=residual, ln_weight=ln_weight, ln_bias=ln_bias, backend=backend)


def _attention_dropout(backend, q, k, v):
    return hf.lcd_attention(
        q, k, v, dropkey_p=0.3, dropout_p=0.3, generator=torch.Generator().manual_seed(3), backend=backend
    )


CASES = {
    "sinkhorn": Case(
        "sinkhorn", _ot_inputs, lambda backend, c, a, b: hf.sinkhorn(c, a, b, eps=0.5, n_iters=4, backend=backend)
    ),
    "ipot": Case(
        "ipot",
        _ot_inputs,
        lambda backend, c, a, b: hf.ipot(c, a, b, beta=0.5, n_iters=3, grad="unrolled", backend=backend),
    ),
    "gromov_wasserstein-ipot": Case(
        "gromov_wasserstein",
        _gw_inputs,
        lambda backend, cs, ct, a, b: hf.gromov_wasserstein(
            cs, ct, a, b, eps=0.5, outer_iters=2, inner_iters=3, grad="unrolled", backend=backend
        ),
    ),
    "gromov_wasserstein-sinkhorn": Case(
        "gromov_wasserstein",
        _gw_inputs,
        lambda backend, cs, ct, a, b: hf.gromov_wasserstein(
            cs, ct, a, b, eps=0.5, outer_iters=2, inner_iters=3, solver="sinkhorn", grad="unrolled", backend=backend
        ),
    ),
    "lcd_attention": Case("lcd_attention", _attention_inputs, _attention),
    "lcd_attention-dropout": Case(
        "lcd_attention", lambda device: _attention_inputs(device)[:3], _attention_dropout, random=True
    ),
    "seeded_dropout": Case(
        "seeded_dropout",
        lambda device: (_draw(30, 2, 5, device=device),),
        lambda backend, x: hf.seeded_dropout(x, 0.4, generator=torch.Generator().manual_seed(4), backend=backend),
        random=True,
    ),
}


def _loss_weight(out):
    """Fixed weights of a nonlinear scalar loss sum(w * out**2): its Hessian has the op's second derivative in it."""
    return seeded_weights(40, *out.shape, device=out.device)


def _tangents(inputs):
    return tuple(seeded_weights(50 + i, *t.shape, device=t.device) for i, t in enumerate(inputs))


def _flat(result):
    """Every tensor of a (nested) transform result, None kept as a visible failure."""
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flat(r)]
    return [result]


def jvp(f, inputs):
    return torch.func.jvp(f, inputs, _tangents(inputs))[1]


def jacfwd(f, inputs):
    return torch.func.jacfwd(f, argnums=tuple(range(len(inputs))))(*inputs)


def forward_mode(f, inputs):
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(t, v) for t, v in zip(inputs, _tangents(inputs))]
        return forward_ad.unpack_dual(f(*duals)).tangent


def hessian_vector_product(f, inputs):
    """H v of sum(w * f(x)**2) by double backward: grad with create_graph=True, then grad of <grad, v>."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = f(*leaves)
    grads = torch.autograd.grad((_loss_weight(out) * out * out).sum(), leaves, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, _tangents(inputs)))
    return torch.autograd.grad(dot, leaves, allow_unused=True)


def gradient_penalty(f, inputs):
    """d/dx |d sum(w * f(x)**2) / dx|^2: differentiating a gradient w.r.t. the inputs (WGAN-GP style)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = f(*leaves)
    grads = torch.autograd.grad((_loss_weight(out) * out * out).sum(), leaves, create_graph=True)
    return torch.autograd.grad(sum((g * g).sum() for g in grads), leaves, allow_unused=True)


def func_grad(f, inputs):
    def loss(*xs):
        out = f(*xs)
        return (_loss_weight(out) * out * out).sum()

    return torch.func.grad(loss, argnums=tuple(range(len(inputs))))(*inputs)


def jacrev(f, inputs):
    return torch.func.jacrev(f, argnums=tuple(range(len(inputs))))(*inputs)


def vmap(f, inputs, randomness="error"):
    """f over a batch of two input sets (the inputs and all of them times 1.25: OT masses stay equal) stacked on a
    new leading dimension."""
    stacked = [torch.stack([t, t * 1.25]) for t in inputs]
    return torch.func.vmap(f, randomness=randomness)(*stacked)


def vmap_same(f, inputs):
    return vmap(f, inputs, randomness="same")


def jacfwd_same(f, inputs):
    return torch.func.jacfwd(f, argnums=tuple(range(len(inputs))), randomness="same")(*inputs)


TRANSFORMS = {
    "jvp": jvp,
    "jacfwd": jacfwd,
    "forward_ad": forward_mode,
    "hvp": hessian_vector_product,
    "gradient_penalty": gradient_penalty,
    "func_grad": func_grad,
    "jacrev": jacrev,
    "vmap": vmap,
    "vmap_same": vmap_same,
    "jacfwd_same": jacfwd_same,
}
# vmap's default randomness="error" refuses the dropout ops' seed draw: a clear error naming the op.
REFUSED = {("random", "vmap"), ("random", "jacfwd")}


def _run(case, backend, transform, device):
    inputs = case.inputs(device)
    return TRANSFORMS[transform](lambda *xs: case.call(backend, *xs), inputs)


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("fast", fast_backend_params())
def test_transform_matches_the_reference_or_says_what_is_unsupported(fast, case_name, transform):
    """Every transform of every op on every fast backend: the reference's result to 1e-10, never zeros or None."""
    backend, device = fast
    case = CASES[case_name]
    skip_unless_backend(backend, case.op, device)
    if ("random" if case.random else "", transform) in REFUSED:
        for name in ("reference", backend):
            with pytest.raises(RuntimeError, match=rf"helo_fast\.{case.op} .*randomness='error'.*randomness='same'"):
                _run(case, name, transform, device)
        return
    expected = _flat(_run(case, "reference", transform, device))
    got = _flat(_run(case, backend, transform, device))
    assert any(float(e.abs().max()) > 1e-6 for e in expected if e is not None), "a case that cannot catch zeros"
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is None:  # the reference's own None: an input the output does not depend on
            assert g is None or float(g.abs().max()) == 0.0
            continue
        assert g is not None, f"{backend} gave None where the reference gives a value"
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case_name", ["sinkhorn", "lcd_attention-dropout"])
@pytest.mark.parametrize("fast", fast_backend_params())
def test_first_order_backward_never_runs_the_reference(fast, case_name, monkeypatch):
    """Only create_graph=True takes the reference's derivative; an ordinary backward stays on the fast kernels."""
    backend, device = fast
    case = CASES[case_name]
    skip_unless_backend(backend, case.op, device)
    leaves = [t.detach().clone().requires_grad_() for t in case.inputs(device)]
    out = case.call(backend, *leaves)

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran in a first-order backward")

    monkeypatch.setitem(_ops._IMPLS, (case.op, "reference"), refuse)
    grads = torch.autograd.grad((_loss_weight(out) * out).sum(), leaves)
    assert all(g is not None for g in grads)


@pytest.mark.parametrize(
    "case_name, varied", [("sinkhorn", 1), ("ipot", 1), ("gromov_wasserstein-ipot", 2), ("lcd_attention-dropout", 3)]
)
@pytest.mark.parametrize("fast", fast_backend_params())
def test_gradgradcheck(fast, case_name, varied):
    """The second derivatives of the fast ops against finite differences of their own first derivatives, with
    respect to the first ``varied`` inputs (not the marginals: a perturbed one breaks the equal masses)."""
    backend, device = fast
    case = CASES[case_name]
    skip_unless_backend(backend, case.op, device)
    # ~20 s each under the Triton interpreter; their Triton second derivatives are swept above (hvp, penalty).
    skip_on_the_triton_interpreter(backend, device, big=varied > 1)
    inputs = case.inputs(device)
    varying = [t.detach().clone().requires_grad_() for t in inputs[:varied]]
    assert torch.autograd.gradgradcheck(lambda *xs: case.call(backend, *xs, *inputs[varied:]), varying)


def test_vmap_of_a_dropout_op_is_refused_by_name_with_randomness_different():
    x = torch.ones(2, 3, 4, dtype=DT)
    with pytest.raises(RuntimeError, match=r"helo_fast\.seeded_dropout .*randomness='different'"):
        torch.func.vmap(lambda t: hf.seeded_dropout(t, 0.5), randomness="different")(x)


def test_vmap_validates_every_sample():
    """The argument checks read the values of every vmapped sample (a negative marginal in the second one)."""
    cost = torch.rand(2, 1, 3, 3, dtype=DT)
    a = torch.full((2, 1, 3), 1 / 3, dtype=DT)
    a[1, 0] = torch.tensor([0.75, 0.5, -0.25], dtype=DT)  # total mass 1, one negative entry
    with pytest.raises(ValueError, match="a must be non-negative"):
        torch.func.vmap(lambda c, w: hf.sinkhorn(c, w, None, eps=0.5, n_iters=2, backend="reference"))(cost, a)
