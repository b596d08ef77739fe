"""HeLo model, config and loss (HELO_SPEC §2-§8)."""
import types

import pytest
import torch
import torch.nn.functional as F

from helo_fast.models import RELEASE_DEFECTS, HeLo, HeLoConfig, helo_loss
from helo_fast.models.helo import label_correlation, sparsify
from helo_fast.reference import modules as reference_modules
from helo_fast.train import evaluate

SMALL = dict(n_channels=4, band_features=5, gsr_features=6, ppg_features=7, video_features=12, n_classes=6,
             d_model=16, n_heads=2, ffn_dim=8, head_hidden=16)


def small_model(seed=0, **changes):
    torch.manual_seed(seed)
    return HeLo(HeLoConfig(**{**SMALL, **changes}), mask_seed=seed)


def inputs(batch=5, seed=1, config=None):
    config = config or HeLoConfig(**SMALL)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.n_features, generator=g)
    y = torch.softmax(2 * torch.randn(batch, config.n_classes, generator=g), dim=-1)
    return x, y


def test_default_parameter_count():
    model = HeLo()
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - 4.05e6) / 4.05e6 < 0.01, total
    video = sum(p.numel() for p in model.video_tokenizer.parameters())
    assert abs(video - 3.54e6) / 3.54e6 < 0.01, video
    assert model.config.n_features == 913


def test_shapes_and_distribution():
    model = small_model()
    x, _ = inputs(batch=5)
    out = model(x)
    assert out.probs.shape == (5, 6) and out.log_probs.shape == (5, 6) and out.label_correlation.shape == (6, 6)
    assert torch.isfinite(out.probs).all()
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 45\]"):
        model(torch.randn(5, 37))


def test_config_validation_and_release_defaults():
    assert not any(getattr(HeLoConfig(), flag) for flag in RELEASE_DEFECTS)
    release = HeLoConfig(faithful_to="release")
    assert all(getattr(release, flag) for flag in RELEASE_DEFECTS)
    assert release.kl_reduction == "sum" and HeLoConfig().kl_reduction == "batchmean"
    assert not HeLoConfig(faithful_to="release", dropkey_in_eval=False).dropkey_in_eval   # explicit flag wins
    with pytest.raises(ValueError, match="faithful_to"):
        HeLoConfig(faithful_to="paper2")
    with pytest.raises(ValueError, match="d_model"):
        HeLoConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="p_dropkey"):
        HeLoConfig(p_dropkey=1.0)


def test_eval_is_deterministic_in_paper_mode_and_training_is_not():
    model = small_model()
    x, _ = inputs()
    model.eval()
    assert model.mask_probabilities() == (0.0, 0.0)
    with torch.no_grad():
        assert torch.equal(model(x).probs, model(x).probs)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x).probs, model(x).probs)


def test_paper_predictions_do_not_depend_on_the_batch():
    model = small_model().eval()
    x, _ = inputs(batch=6)
    x[3:] *= 10.0   # other samples with very different distance graphs
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]).probs, model(x).probs[:1], rtol=1e-5, atol=1e-6)


# --- one test per release defect (HELO_SPEC §8) ------------------------------------------------
def test_flag_resample_label_embedding():
    x, y = inputs()
    for flag in (False, True):
        model = small_model(resample_label_embedding=flag)
        first, second = model.current_label_embedding(), model.current_label_embedding()
        assert torch.equal(first, second) is (not flag)
        loss, _ = helo_loss(model(x), y)
        loss.backward()
        if flag:   # re-drawn every forward, never trained
            assert model.label_embedding.grad is None
            assert not torch.equal(first, model.label_embedding)
        else:
            assert model.label_embedding.grad is not None and model.label_embedding.grad.abs().sum() > 0


def test_flag_normalize_label_axis():
    emb = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    paper, release = label_correlation(emb), label_correlation(emb, over_label_axis=True)
    torch.testing.assert_close(torch.diagonal(paper), torch.ones(6))          # rows unit along d: cosine
    unit = emb / emb.norm(dim=0, keepdim=True)
    torch.testing.assert_close(release, unit @ unit.t())
    assert (paper - release).abs().max() > 1e-2
    x, _ = inputs()
    for flag in (False, True):
        model = small_model(normalize_label_axis=flag).eval()
        torch.testing.assert_close(model(x).label_correlation, label_correlation(model.label_embedding, flag))


def test_flag_dropkey_in_eval():
    x, _ = inputs()
    for flag in (False, True):
        model = small_model(dropkey_in_eval=flag).eval()
        assert model.mask_probabilities() == ((0.5 if flag else 0.0), 0.0)   # dropout stays off in eval
        with torch.no_grad():
            assert torch.equal(model(x).probs, model(x).probs) is (not flag)


def test_flag_eval_first_sample_only():
    model = small_model().eval()
    x, y = inputs(batch=7)
    with torch.no_grad():
        probs = model(x).probs
    from helo_fast.metrics import edl_metrics
    all_rows = evaluate(model, x, y, batch_size=3, first_sample_only=False)
    first_only = evaluate(model, x, y, batch_size=3, first_sample_only=True)
    assert all_rows == pytest.approx(edl_metrics(y, probs))
    assert first_only == pytest.approx(edl_metrics(y[[0, 3, 6]], probs[[0, 3, 6]]))
    assert small_model(faithful_to="release").config.eval_first_sample_only


def test_flag_batch_threshold():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(3, 5, 5, generator=g)
    d[1] = d[1] * 3 + 1
    per_sample = sparsify(d, 0.1)
    for b in range(3):
        tau = d[b].min() + 0.1 * (d[b].max() - d[b].min())
        torch.testing.assert_close(per_sample[b], torch.relu(d[b] - tau))
    tau_all = d.min() + 0.1 * (d.max() - d.min())
    torch.testing.assert_close(sparsify(d, 0.1, over_batch=True), torch.relu(d - tau_all))
    # in the model: with the flag, a sample's prediction depends on the rest of its batch
    model = small_model(batch_threshold=True).eval()
    x, _ = inputs(batch=6)
    x[3:] *= 10.0
    with torch.no_grad():
        assert (model(x[:1]).probs - model(x).probs[:1]).abs().max() > 1e-6


@pytest.mark.parametrize("flag, mode, batch", [("eval_first_sample_only", "eval", 5), ("batch_threshold", "eval", 1),
                                               ("dropkey_in_eval", "train", 5)])
def test_flags_leave_everything_else_alone(flag, mode, batch):
    """Where a flag's behaviour is not exercised, the model computes exactly what paper mode does."""
    x, _ = inputs(batch=batch)
    paper, flagged = small_model(), small_model(**{flag: True})
    flagged.load_state_dict(paper.state_dict())
    for model in (paper, flagged):
        model.train(mode == "train")
    torch.manual_seed(3)   # FFN dropout (global RNG) in train mode
    expected = paper(x).probs
    torch.manual_seed(3)
    torch.testing.assert_close(flagged(x).probs, expected, rtol=0, atol=0)


# --- loss ---------------------------------------------------------------------------------------
def test_loss_terms():
    model = small_model()
    x, y = inputs(batch=4)
    out = model(x)
    total, parts = helo_loss(out, y, kl_reduction="batchmean", lambda_corr=1.0)
    kl = (y * (y.log() - out.log_probs)).sum(-1)
    torch.testing.assert_close(parts["kl"], kl.mean())
    dn = y / y.norm(dim=-1, keepdim=True)
    corr = ((out.label_correlation[None] - dn[:, :, None] * dn[:, None, :]) ** 2).mean()
    torch.testing.assert_close(parts["corr"], corr)
    torch.testing.assert_close(total, kl.mean() + corr)
    total_sum, parts_sum = helo_loss(out, y, kl_reduction="sum", lambda_corr=0.5)
    torch.testing.assert_close(parts_sum["kl"], kl.sum())
    torch.testing.assert_close(total_sum, kl.sum() + 0.5 * corr)
    with pytest.raises(ValueError, match="kl_reduction"):
        helo_loss(out, y, kl_reduction="mean")
    with pytest.raises(ValueError, match="target must have shape"):
        helo_loss(out, y[:, :5])


def test_corr_loss_trains_the_label_embedding():
    model = small_model()
    x, y = inputs()
    out = model(x)
    _, parts = helo_loss(out, y)
    corr = F.mse_loss(out.label_correlation[None].expand(len(y), -1, -1),
                      F.normalize(y, dim=-1)[:, :, None] * F.normalize(y, dim=-1)[:, None, :])
    corr.backward()
    assert model.label_embedding.grad.abs().sum() > 0


def test_ot_grad_option():
    x, y = inputs()
    grads = {}
    for flag in (False, True):
        model = small_model(ot_grad=flag).eval()
        assert model.ot.grad == ("unrolled" if flag else "none")
        loss, _ = helo_loss(model(x), y)
        loss.backward()
        grads[flag] = model.video_tokenizer.weight.grad.clone()
    assert torch.isfinite(grads[True]).all()
    assert (grads[True] - grads[False]).abs().max() > 0   # the plan's gradient reaches the tokenisers


def test_modules_are_swappable_in_one_place():
    calls = {"attention": 0, "ot": 0}

    class CountingAttention(reference_modules.LCDAttention):
        def forward(self, *args, **kwargs):
            calls["attention"] += 1
            return super().forward(*args, **kwargs)

    class CountingOT(reference_modules.GromovWasserstein):
        def forward(self, *args, **kwargs):
            calls["ot"] += 1
            return super().forward(*args, **kwargs)

    reference = small_model()
    swapped_ns = types.SimpleNamespace(LCDAttention=CountingAttention, GromovWasserstein=CountingOT)
    torch.manual_seed(0)
    swapped = HeLo(HeLoConfig(**SMALL), modules=swapped_ns, mask_seed=0)
    assert list(swapped.state_dict()) == list(reference.state_dict())
    swapped.load_state_dict(reference.state_dict())
    x, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(swapped.eval()(x).probs, reference.eval()(x).probs)
    assert calls == {"attention": 3, "ot": 1}
    keys = set(reference.state_dict())
    assert {"physio_attention.q_proj.weight", "physio_attention.norm.weight", "encoder.self_attn.v_proj.weight",
            "lcd_attention.k_proj.weight", "label_embedding"} <= keys
