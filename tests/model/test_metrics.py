"""The six EDL measures (HELO_SPEC §9) against hand-computed values and their bounds."""

import math

import numpy as np
import pytest
import torch

from helo_fast.metrics import METRIC_NAMES, edl_metrics

Y = [0.5, 0.3, 0.2]
P = [0.25, 0.25, 0.5]


def test_hand_computed_values():
    m = edl_metrics(torch.tensor([Y], dtype=torch.float64), torch.tensor([P], dtype=torch.float64))
    assert m["chebyshev"] == pytest.approx(0.3)
    assert m["clark"] == pytest.approx(math.sqrt((0.25 / 0.75) ** 2 + (0.05 / 0.55) ** 2 + (0.3 / 0.7) ** 2))
    assert m["canberra"] == pytest.approx(0.25 / 0.75 + 0.05 / 0.55 + 0.3 / 0.7)
    assert m["kl"] == pytest.approx(0.5 * math.log(2) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.4))
    cos = (0.125 + 0.075 + 0.1) / (math.sqrt(0.25 + 0.09 + 0.04) * math.sqrt(0.0625 * 2 + 0.25))
    assert m["cosine"] == pytest.approx(cos)
    assert m["intersection"] == pytest.approx(0.25 + 0.25 + 0.2)


def test_identical_inputs_hit_the_bounds():
    y = torch.softmax(torch.randn(16, 10, generator=torch.Generator().manual_seed(0)), -1)
    m = edl_metrics(y, y.clone())
    for name in ("chebyshev", "clark", "canberra", "kl"):
        assert m[name] == pytest.approx(0.0, abs=1e-12)
    assert m["cosine"] == pytest.approx(1.0) and m["intersection"] == pytest.approx(1.0)


def test_numpy_input_per_sample_and_mean_agree():
    gen = np.random.default_rng(1)
    y, p = gen.dirichlet(np.ones(10), 8), gen.dirichlet(np.ones(10), 8)
    mean, per = edl_metrics(y, p), edl_metrics(y, p, per_sample=True)
    assert set(mean) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert per[name].shape == (8,)
        assert mean[name] == pytest.approx(float(per[name].mean()))
        assert math.isfinite(mean[name])
    assert 0 <= mean["intersection"] <= 1 and 0 <= mean["cosine"] <= 1 and mean["kl"] >= 0


def test_zero_entries_do_not_give_nan():
    m = edl_metrics(np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    assert all(math.isfinite(v) for v in m.values())
    assert m["intersection"] == 0 and m["chebyshev"] == 1
    assert m["canberra"] == 2 and m["clark"] == pytest.approx(math.sqrt(2), rel=1e-15)  # the 0/0 class counts 0
    assert m["kl"] == -math.log(torch.finfo(torch.float64).tiny)  # p = 0 is taken as the smallest normal


def kl_float64(y, p):
    """Oracle: sum over y > 0 of y log(y / p) in Python floats (p > 0 wherever y > 0)."""
    return math.fsum(yi * math.log(yi / pi) for yi, pi in zip(y, p) if yi > 0)


def test_kl_does_not_clip_small_normal_predictions():
    """p = 1e-15 is used as it is (a clip at 1e-12 gave 0.1 log(1000) = 0.69 less here)."""
    y, p = [0.1, 0.5, 0.4], [1e-15, 0.6, 0.4 - 1e-15]
    kl = edl_metrics(torch.tensor(y, dtype=torch.float64), torch.tensor(p, dtype=torch.float64))["kl"]
    assert kl == pytest.approx(kl_float64(y, p), rel=1e-14)
    assert kl == pytest.approx(0.1 * math.log(1e14) + 0.5 * math.log(0.5 / 0.6), rel=1e-12)
    p32 = torch.tensor(p, dtype=torch.float32)  # a float32 prediction counts with its float32 value
    kl32 = edl_metrics(torch.tensor(y, dtype=torch.float64), p32)["kl"]
    assert kl32 == pytest.approx(kl_float64(y, p32.double().tolist()), rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_matches_float64_for_tiny_predictions(dtype):
    """Random rows with predictions down to the dtype's smallest normal: KL equals sum y log(y/p) to rounding."""
    tiny = torch.finfo(dtype).tiny
    gen = torch.Generator().manual_seed(0)
    y = torch.softmax(torch.randn(64, 8, generator=gen, dtype=torch.float64), -1)
    p = torch.softmax(torch.randn(64, 8, generator=gen, dtype=torch.float64), -1)
    exponents = torch.randint(-int(-math.log10(tiny)), -1, (64,), generator=gen)
    p[:, 0] = 10.0 ** exponents.double()
    p[:, 1] += 1.0 - p.sum(-1)
    p = p.to(dtype)
    per = edl_metrics(y, p, per_sample=True)["kl"]
    expected = torch.tensor(
        [kl_float64(yr, pr) for yr, pr in zip(y.tolist(), p.double().tolist())], dtype=torch.float64
    )
    torch.testing.assert_close(per, expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_clips_only_below_the_smallest_normal(dtype):
    tiny = torch.finfo(dtype).tiny
    y = torch.tensor([0.25, 0.75], dtype=torch.float64)
    for p0, taken_as in ((0.0, tiny), (tiny / 8, tiny), (tiny, tiny), (tiny * 4, tiny * 4)):
        p = torch.tensor([p0, 1.0], dtype=dtype)
        assert edl_metrics(y, p)["kl"] == pytest.approx(kl_float64([0.25, 0.75], [taken_as, 1.0]), rel=1e-14)


def test_ratio_measures_are_exact_for_subnormal_pairs():
    """|y - p| / (y + p) is scale-free: a zero against the smallest subnormal is a full difference of 1."""
    m = edl_metrics(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[1.0, 5e-324]], dtype=torch.float64))
    assert m["canberra"] == 1.0 and m["clark"] == 1.0


def test_rows_must_sum_to_one():
    y = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    edl_metrics(y, y + torch.tensor([[9e-4, 0.0, 0.0]], dtype=torch.float64))  # within 1e-3: accepted
    with pytest.raises(ValueError, match="row of y_pred must sum to 1"):
        edl_metrics(y, y + torch.tensor([[2e-3, 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="row of y_true must sum to 1"):
        edl_metrics(torch.tensor([[0.5, 0.3, 0.3]]), y)
    with pytest.raises(ValueError, match="row of y_pred must sum to 1"):
        edl_metrics(y, torch.zeros(1, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_softmax_rows_are_accepted(dtype):
    """Rounding alone moves a bfloat16 softmax row's sum by up to ~3e-3: its rows are held to its eps instead."""
    logits = 3 * torch.randn(4096, 10, generator=torch.Generator().manual_seed(0))
    y = torch.softmax(logits, -1)
    p = torch.softmax(logits.to(dtype), -1)
    assert math.isfinite(edl_metrics(y, p)["kl"])


HALVES = np.full((1, 2), 0.5)


@pytest.mark.parametrize(
    "y,p,exc,match",
    [
        (np.ones((2, 3)), np.ones((2, 4)), ValueError, "shape"),
        ([0.5, 0.5], HALVES, TypeError, "y_true"),
        (HALVES, [0.5, 0.5], TypeError, "y_pred"),
        (np.array([[0.5, np.nan]]), HALVES, ValueError, "y_true must be finite"),
        (HALVES, np.array([[np.inf, 0.5]]), ValueError, "y_pred must be finite"),
        (np.array([[1.5, -0.5]]), HALVES, ValueError, "y_true must be non-negative"),
        (HALVES, np.array([[1.5, -0.5]]), ValueError, "y_pred must be non-negative"),
        (HALVES, np.array([[1.0 + 1e-12, -1e-12]]), ValueError, "y_pred must be non-negative"),
        (np.array([[1, 0]]), HALVES, TypeError, "floating-point"),
        (np.zeros((0, 3)), np.zeros((0, 3)), ValueError, "at least one row"),
        (np.zeros(0), np.zeros(0), ValueError, "must sum to 1"),
        (np.ones((1, 2, 2)) / 2, np.ones((1, 2, 2)) / 2, ValueError, "shape"),
    ],
)
def test_bad_inputs_raise(y, p, exc, match):
    with pytest.raises(exc, match=match):
        edl_metrics(y, p)
