"""HeLo model, config and loss (HELO_SPEC §2-§8)."""

import types

import pytest
import torch
import torch.nn.functional as F

from helo_fast import _rng
from helo_fast.models import RELEASE_DEFECTS, HeLo, HeLoConfig, helo_loss
from helo_fast.models.helo import label_correlation, sparsify
from helo_fast.reference import modules as reference_modules
from helo_fast.training.step import evaluate
from devices import cpu_backends

SMALL = dict(
    n_channels=4,
    band_features=5,
    gsr_features=6,
    ppg_features=7,
    video_features=12,
    n_classes=6,
    d_model=16,
    n_heads=2,
    ffn_dim=8,
    head_hidden=16,
)


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
    assert not HeLoConfig(faithful_to="release", dropkey_in_eval=False).dropkey_in_eval  # explicit flag wins
    with pytest.raises(ValueError, match="faithful_to"):
        HeLoConfig(faithful_to="paper2")
    with pytest.raises(ValueError, match="d_model"):
        HeLoConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="dropkey_p"):
        HeLoConfig(dropkey_p=1.0)


@pytest.mark.parametrize(
    "old, new",
    [("p_dropkey", "dropkey_p"), ("dropout", "dropout_p"), ("gw_outer", "outer_iters"), ("ot_iters", "inner_iters")],
)
def test_config_refuses_a_renamed_key_naming_the_new_one(old, new):
    with pytest.raises(ValueError, match=f"HeLoConfig key '{old}' was renamed to '{new}'"):
        HeLoConfig(**{old: 1})


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
    x[3:] *= 10.0  # other samples with very different distance graphs
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]).probs, model(x).probs[:1], rtol=1e-5, atol=1e-6)


# --- one test per release defect (HELO_SPEC §8) ------------------------------------------------
def test_flag_resample_label_embedding():
    x, y = inputs()
    for flag in (False, True):
        model = small_model(resample_label_embedding=flag)
        first, second = model.current_label_embedding(5), model.current_label_embedding(5)
        assert first.shape == ((5, 6, 16) if flag else (6, 16))  # release: one draw per sample
        assert torch.equal(first, second) is (not flag)
        loss, _ = helo_loss(model(x), y)
        loss.backward()
        if flag:  # re-drawn every forward, never trained
            assert model.label_embedding.grad is None
            assert not torch.equal(first, model.label_embedding)
        else:
            assert model.label_embedding.grad is not None and model.label_embedding.grad.abs().sum() > 0


def test_release_label_embedding_is_drawn_per_sample():
    """The release draws torch.rand(B, C, d) on every forward: each sample's LCD-CA queries are its own draw,
    and its R_hat [C, C], the LCD-CA bias and the correlation loss's prediction, comes from that draw."""
    model = small_model(faithful_to="release", dropkey_in_eval=False).eval()  # no masks: the draw is all that varies
    with pytest.raises(ValueError, match="batch"):
        model.current_label_embedding(-1)
    x, y = inputs(batch=5)
    x[1] = x[0]
    seen = {}
    model.lcd_attention.register_forward_pre_hook(lambda module, args: seen.update(queries=args[0], bias=args[2]))
    draws = torch.Generator().set_state(model.mask_generator.get_state())
    with torch.no_grad():
        out = model(x)
    queries, r_hat = seen["queries"], out.label_correlation
    assert torch.equal(queries, torch.rand(5, 6, 16, generator=draws))  # the forward's only draw from the generator
    assert r_hat.shape == (5, 6, 6)
    for b in range(5):
        torch.testing.assert_close(r_hat[b], label_correlation(queries[b], over_label_axis=True), rtol=0, atol=0)
    assert torch.equal(seen["bias"], r_hat.unsqueeze(1))
    assert (r_hat[0] - r_hat[1]).abs().max() > 1e-3
    assert (out.probs[0] - out.probs[1]).abs().max() > 1e-6  # the same row, two draws
    _, parts = helo_loss(out, y)
    dn = F.normalize(y, dim=-1)
    torch.testing.assert_close(parts["corr"], (r_hat - dn[:, :, None] * dn[:, None, :]).square().mean())
    with pytest.raises(ValueError, match="label_correlation"):
        helo_loss(out._replace(label_correlation=r_hat[:4]), y)


def test_flag_normalize_label_axis():
    emb = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    paper, release = label_correlation(emb), label_correlation(emb, over_label_axis=True)
    torch.testing.assert_close(torch.diagonal(paper), torch.ones(6))  # rows unit along d: cosine
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
        assert model.mask_probabilities() == ((0.5 if flag else 0.0), 0.0)  # dropout stays off in eval
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


@pytest.mark.parametrize(
    "flag, mode, batch",
    [("eval_first_sample_only", "eval", 5), ("batch_threshold", "eval", 1), ("dropkey_in_eval", "train", 5)],
)
def test_flags_leave_everything_else_alone(flag, mode, batch):
    """Where a flag's behaviour is not exercised, the model computes exactly what paper mode does."""
    x, _ = inputs(batch=batch)
    paper, flagged = small_model(), small_model(**{flag: True})
    flagged.load_state_dict(paper.state_dict())
    for model in (paper, flagged):
        model.train(mode == "train")  # masks in train mode: both draw from mask_seed 0
    torch.testing.assert_close(flagged(x).probs, paper(x).probs, rtol=0, atol=0)


# --- dropout sites (HELO_SPEC §3, §4.8, §6) -----------------------------------------------------
# Every random mask the spec puts in a forward, as {(module, kind): [p of each call]}: DropKey and weight dropout
# in the three attentions (the physiological CA runs Z1 and Z2 as one call, the encoder's self-attention both
# streams as one call) and ONE FFN dropout, after the encoder's second linear layer. Nothing else.
SITES_IN_TRAINING = {
    ("physio_attention", "dropkey"): [0.3],
    ("physio_attention", "weight dropout"): [0.4],
    ("encoder.self_attn", "dropkey"): [0.3],
    ("encoder.self_attn", "weight dropout"): [0.4],
    ("encoder.dropout", "dropout"): [0.4],
    ("lcd_attention", "dropkey"): [0.3],
    ("lcd_attention", "weight dropout"): [0.4],
}
SITES_IN_RELEASE_EVAL = {
    (name, "dropkey"): [0.3] for name in ("physio_attention", "encoder.self_attn", "lcd_attention")
}


def count_dropout_sites(model, x, monkeypatch):
    """One forward of ``model`` on x [B, F] -> (sites {(module name, kind): [p of each call]},
    seeds {module name: mask seeds drawn inside it}, the FFN dropout's input is linear2's output).

    A site is an attention call with dropkey_p / dropout_p > 0 or a SeededDropout call in training mode;
    seeds are counted where the ops draw them (``_rng.draw_seed_tensor``), so a mask drawn outside a
    listed site shows up too; a torch dropout call anywhere is counted under ("torch", "dropout")."""
    sites, seeds, stack, seen = {}, {}, [], {}

    def enter(module, args, kwargs):
        name = names[module]
        stack.append(name)
        if isinstance(module, reference_modules.LCDAttention):
            for kind, key in (("dropkey", "dropkey_p"), ("weight dropout", "dropout_p")):
                if kwargs.get(key, 0.0) > 0:
                    sites.setdefault((name, kind), []).append(kwargs[key])
        if isinstance(module, reference_modules.SeededDropout) and module.training and module.p > 0:
            sites.setdefault((name, "dropout"), []).append(module.p)
            seen["dropout input"] = args[0]

    def leave(module, args, output):
        stack.pop()
        if module is model.encoder.linear2:
            seen["linear2 output"] = output

    def draw_seed_tensor(generator=None):
        seeds[stack[-1]] = seeds.get(stack[-1], 0) + 1
        return real_draw(generator)

    def torch_dropout(*args, **kwargs):
        sites.setdefault(("torch", "dropout"), []).append(kwargs.get("p", args[1] if len(args) > 1 else 0.5))
        return real_dropout(*args, **kwargs)

    names = {module: name for name, module in model.named_modules()}
    real_draw, real_dropout = _rng.draw_seed_tensor, F.dropout
    handles = [
        h for m in names for h in (m.register_forward_pre_hook(enter, with_kwargs=True), m.register_forward_hook(leave))
    ]
    try:
        with monkeypatch.context() as patch, torch.no_grad():
            patch.setattr(_rng, "draw_seed_tensor", draw_seed_tensor)
            patch.setattr(F, "dropout", torch_dropout)
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sites, seeds, seen.get("dropout input") is seen.get("linear2 output") is not None


@pytest.mark.parametrize("faithful_to", ["paper", "release"])
@pytest.mark.parametrize("backend", cpu_backends("lcd_attention", include_triton=False))
def test_dropout_sites_match_the_spec(backend, faithful_to, monkeypatch):
    """Counted in one forward of the reference and the fast model: the spec's sites, each called once, each
    drawing one mask seed; the FFN's only dropout sits on the second linear layer's output."""
    model = HeLo(
        HeLoConfig(**SMALL, dropkey_p=0.3, dropout_p=0.4, faithful_to=faithful_to), backend=backend, mask_seed=0
    )
    x, _ = inputs()
    sites, seeds, ffn_dropout_after_linear2 = count_dropout_sites(model.train(), x, monkeypatch)
    assert sites == SITES_IN_TRAINING
    assert seeds == {name: 1 for name, _ in SITES_IN_TRAINING}
    assert ffn_dropout_after_linear2
    sites, seeds, _ = count_dropout_sites(model.eval(), x, monkeypatch)
    assert sites == (SITES_IN_RELEASE_EVAL if faithful_to == "release" else {})  # DropKey in eval: release defect
    assert seeds == {name: 1 for name, _ in sites}


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
    corr = F.mse_loss(
        out.label_correlation[None].expand(len(y), -1, -1),
        F.normalize(y, dim=-1)[:, :, None] * F.normalize(y, dim=-1)[:, None, :],
    )
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
    assert (grads[True] - grads[False]).abs().max() > 0  # the plan's gradient reaches the tokenisers


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
    assert {
        "physio_attention.q_proj.weight",
        "physio_attention.norm.weight",
        "encoder.self_attn.v_proj.weight",
        "lcd_attention.k_proj.weight",
        "label_embedding",
    } <= keys
