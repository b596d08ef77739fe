"""The reference ops against independent peers: POT, a direct transcription of HELO_SPEC §4, SDPA."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helo_fast import reference
from helo_fast._rng import bernoulli_mask, hash_uniform
from ot_oracle import gw_transcription, ipot_transcription
from tolerance import assert_float64_close, assert_no_nan

ot = pytest.importorskip("ot")


def random_marginal(gen, batch, size):
    w = torch.rand(batch, size, generator=gen, dtype=torch.float64) + 0.05
    return w / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("n,m", [(5, 7), (9, 4), (1, 3), (6, 6)])
def test_sinkhorn_equals_pot_sinkhorn_log(n, m):
    gen = torch.Generator().manual_seed(n * 100 + m)
    batch, eps, n_iters = 3, 0.07, 37
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64)
    a, b = random_marginal(gen, batch, n), random_marginal(gen, batch, m)
    plan = reference.sinkhorn(cost, a, b, eps=eps, n_iters=n_iters)
    for i in range(batch):
        expected = ot.sinkhorn(
            a[i].numpy(), b[i].numpy(), cost[i].numpy(), eps, method="sinkhorn_log", numItermax=n_iters, stopThr=-1
        )
        assert_float64_close(plan[i], torch.from_numpy(np.asarray(expected)))


@pytest.mark.parametrize("n,m", [(6, 6), (5, 8), (1, 4)])
def test_ipot_equals_spec_transcription(n, m):
    gen = torch.Generator().manual_seed(7 + n + m)
    cost = torch.rand(2, n, m, generator=gen, dtype=torch.float64)
    plan = reference.ipot(cost, beta=0.1, n_iters=20)
    for i in range(2):
        assert_float64_close(plan[i], ipot_transcription(cost[i], 0.1, 20))


def structure_matrix(gen, batch, n):
    x = torch.randn(batch, n, 4, generator=gen, dtype=torch.float64)
    d = 1 - F.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1)
    return d


@pytest.mark.parametrize("n,m", [(6, 6), (7, 5)])
def test_gromov_equals_spec_transcription(n, m):
    gen = torch.Generator().manual_seed(11 + n * m)
    cs, ct = structure_matrix(gen, 2, n), structure_matrix(gen, 2, m)
    plan = reference.gromov_wasserstein(cs, ct, eps=0.1, outer_iters=5, inner_iters=20)
    for i in range(2):
        assert_float64_close(plan[i], gw_transcription(cs[i], ct[i], 0.1, 5, 20))


def test_gromov_plan_meets_marginals_and_sinkhorn_solver_runs():
    gen = torch.Generator().manual_seed(3)
    cs, ct = structure_matrix(gen, 3, 8), structure_matrix(gen, 3, 8)
    # Each solver ends on its column (ipot) or row (sinkhorn) update, which that marginal then meets exactly.
    for solver, exact_dim, other_dim in (("ipot", -2, -1), ("sinkhorn", -1, -2)):
        plan = reference.gromov_wasserstein(cs, ct, eps=0.1, solver=solver, inner_iters=50)
        assert_no_nan(plan)
        assert torch.allclose(plan.sum(exact_dim), torch.full((3, 8), 1 / 8, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(plan.sum(other_dim), torch.full((3, 8), 1 / 8, dtype=torch.float64), atol=1e-3)


def test_ipot_log_domain_survives_small_beta():
    gen = torch.Generator().manual_seed(5)
    cost = 1e3 * torch.rand(2, 6, 6, generator=gen, dtype=torch.float64)
    plan = reference.ipot(cost, beta=1e-3, n_iters=20)
    assert_no_nan(plan)
    assert torch.allclose(plan.sum(-2), torch.full((2, 6), 1 / 6, dtype=torch.float64), atol=1e-12)
    # The plain-domain transcription underflows to 0/0 here.
    assert not bool(torch.isfinite(ipot_transcription(cost[0], 1e-3, 20)).all())


def test_grad_none_detaches_and_unrolled_differentiates():
    gen = torch.Generator().manual_seed(1)
    cost = torch.rand(2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert not reference.ipot(cost, beta=0.1, n_iters=5).requires_grad
    assert not reference.sinkhorn(cost, eps=0.1, n_iters=5, grad="none").requires_grad
    assert torch.autograd.gradcheck(lambda c: reference.sinkhorn(c, eps=0.3, n_iters=4), (cost,))
    assert torch.autograd.gradcheck(lambda c: reference.ipot(c, beta=0.3, n_iters=4, grad="unrolled"), (cost,))


@pytest.mark.parametrize("bias_shape,bias_before_scale", [(None, True), ((1, 1, 7, 9), True), ((2, 3, 7, 9), False)])
def test_lcd_attention_at_p0_equals_sdpa_residual_layernorm(bias_shape, bias_before_scale):
    gen = torch.Generator().manual_seed(13)
    batch, heads, lq, lk, dim = 2, 3, 7, 9, 5
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64) for length in (lq, lk, lk))
    bias = None if bias_shape is None else torch.randn(bias_shape, generator=gen, dtype=torch.float64)
    residual = torch.randn(batch, lq, heads * dim, generator=gen, dtype=torch.float64)
    weight = torch.randn(heads * dim, generator=gen, dtype=torch.float64)
    shift = torch.randn(heads * dim, generator=gen, dtype=torch.float64)
    scale = dim**-0.5
    out = reference.lcd_attention(
        q, k, v, bias, residual=residual, ln_weight=weight, ln_bias=shift, bias_before_scale=bias_before_scale
    )
    mask = None if bias is None else (bias * scale if bias_before_scale else bias)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    expected = F.layer_norm(
        residual + attn.transpose(1, 2).reshape(batch, lq, heads * dim), (heads * dim,), weight, shift
    )
    assert_float64_close(out, expected)


def test_lcd_attention_fully_masked_row_is_uniform_not_nan():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 3, 4, generator=gen) for _ in range(3))
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1] = True
    out = reference.lcd_attention(q, k, v, dropkey_mask=mask)
    assert_no_nan(out)
    assert torch.allclose(out[0, 1], v[0, 0].mean(0), atol=1e-6)


def test_lcd_attention_seeded_masks_follow_generator():
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 5, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    kwargs = dict(dropkey_p=0.5, dropout_p=0.3)
    first = reference.lcd_attention(q, k, v, generator=torch.Generator().manual_seed(9), **kwargs)
    again = reference.lcd_attention(q, k, v, generator=torch.Generator().manual_seed(9), **kwargs)
    other = reference.lcd_attention(q, k, v, generator=torch.Generator().manual_seed(10), **kwargs)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_hash_masks_have_the_requested_rate_and_differ_per_stream():
    u = hash_uniform(123, (64, 64, 16), stream=0)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    for p in (0.1, 0.5):
        rate = float(bernoulli_mask(123, (64, 64, 16), p, stream=0).double().mean())
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / u.numel())
    assert not torch.equal(bernoulli_mask(1, (100,), 0.5, 0), bernoulli_mask(1, (100,), 0.5, 1))
