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


@pytest.mark.parametrize("y,p,exc,match", [
    (np.ones((2, 3)), np.ones((2, 4)), ValueError, "shape"),
    ([0.5, 0.5], np.ones(2), TypeError, "y_true"),
    (np.array([[0.5, np.nan]]), np.ones((1, 2)), ValueError, "finite"),
    (np.array([[1.5, -0.5]]), np.ones((1, 2)), ValueError, "non-negative"),
    (np.array([[1, 0]]), np.ones((1, 2)), TypeError, "floating-point"),
])
def test_bad_inputs_raise(y, p, exc, match):
    with pytest.raises(exc, match=match):
        edl_metrics(y, p)
