"""The fast HeLo (fused modules of helo_fast.nn) against the reference HeLo with the same weights."""

import copy

import pytest
import torch

import helo_fast as hf
from helo_fast import _backend
from helo_fast import nn as fast_nn
from helo_fast.models import HeLo, HeLoConfig, helo_loss
from helo_fast.reference import modules as reference_modules
from devices import CPU, CUDA, cpp_devices, cpu_backends
from tolerance import assert_float64_close, assert_within_reference_error

# Model-size tests run the backends that serve both fused ops on CPU (Triton's interpreter is too
# slow for a whole model; its ops are covered op by op).
BACKENDS = [
    b
    for b in cpu_backends("lcd_attention", include_triton=False)
    if b != "reference" and b in cpu_backends("gromov_wasserstein", include_triton=False)
] + ["auto"]
NO_MASKS = dict(dropkey_p=0.0, dropout_p=0.0)
CUDA_MARKS = cpp_devices(include_cpu=False)[0].marks
# (backend, device) of the model parity tests: BACKENDS on cpu, then cpp, triton and auto on cuda.
BACKEND_DEVICES = [pytest.param(b, CPU, id=b) for b in BACKENDS] + [
    pytest.param(b, CUDA, id=f"{b}-cuda", marks=CUDA_MARKS) for b in ("cpp", "triton", "auto")
]
SMALL = dict(
    n_channels=6,
    band_features=5,
    gsr_features=6,
    ppg_features=7,
    video_features=12,
    n_classes=5,
    d_model=16,
    n_heads=2,
    ffn_dim=8,
    head_hidden=16,
    **NO_MASKS,
)


def pair(config, backend, dtype=torch.float32, seed=0, device=CPU):
    """(reference model, fast model) with identical weights (initialised on the CPU) on ``device``."""
    if backend == "triton" and (reason := _backend.unavailable_reason(backend, device, "lcd_attention")):
        pytest.skip(reason)
    torch.manual_seed(seed)
    ref = HeLo(config, backend="reference", mask_seed=seed).to(device, dtype)
    fast = copy.deepcopy(ref)
    hf.convert(fast, backend)
    return ref, fast


def batch(config, size=6, dtype=torch.float32, seed=1, device=CPU):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, config.n_features, generator=gen, dtype=dtype)
    y = torch.softmax(2 * torch.randn(size, config.n_classes, generator=gen, dtype=dtype), dim=-1)
    return x.to(device), y.to(device)


def forward_backward(model, x, y):
    model.zero_grad()
    out = model(x)
    loss, _ = helo_loss(out, y)
    loss.backward()
    return out.probs.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("faithful_to", ["paper", "release"])
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_fast_model_matches_reference_in_float64(backend, device, faithful_to):
    config = HeLoConfig(**SMALL, faithful_to=faithful_to)
    ref, fast = pair(config, backend, torch.float64, device=device)
    x, y = batch(config, dtype=torch.float64, device=device)
    ref_probs, ref_grads = forward_backward(ref, x, y)
    fast_probs, fast_grads = forward_backward(fast, x, y)
    assert_float64_close(fast_probs, ref_probs)
    assert ref_grads.keys() == fast_grads.keys() and len(ref_grads) > 10
    for name in ref_grads:
        assert_float64_close(fast_grads[name], ref_grads[name], rtol=1e-9)


@pytest.mark.parametrize("faithful_to", ["paper", "release"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_model_matches_reference_in_training_mode_with_every_mask_on(backend, faithful_to):
    """DropKey, attention dropout and the FFN dropout all draw from the model's mask generator (one counter-hash
    seed per call), so with the same mask_seed the fast and reference models drop the same entries; in release
    mode they also draw the same per-sample label embeddings [B, C, d] (a per-sample LCD-CA bias [B, 1, C, C])."""
    config = HeLoConfig(**{**SMALL, "dropkey_p": 0.3, "dropout_p": 0.4, "faithful_to": faithful_to})
    ref, fast = pair(config, backend, torch.float64)
    assert type(fast.encoder.dropout) is fast_nn.FusedDropout
    x, y = batch(config, dtype=torch.float64)
    ref_probs, ref_grads = forward_backward(ref.train(), x, y)
    fast_probs, fast_grads = forward_backward(fast.train(), x, y)
    no_masks_probs, _ = forward_backward(copy.deepcopy(ref).eval(), x, y)
    assert not torch.allclose(ref_probs, no_masks_probs), "the masks must change the output"
    assert_float64_close(fast_probs, ref_probs)
    for name in ref_grads:
        assert_float64_close(fast_grads[name], ref_grads[name], rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_fast_model_matches_reference_in_float32_default_size(backend, device):
    config = HeLoConfig(**NO_MASKS)
    ref64, fast = pair(config, backend, torch.float64, device=device)
    fast = fast.float()
    ref32 = copy.deepcopy(ref64).float()
    x, y = batch(config, size=4, dtype=torch.float64, device=device)
    probs64, grads64 = forward_backward(ref64, x, y)
    probs32, grads32 = forward_backward(ref32, x.float(), y.float())
    fast_probs, fast_grads = forward_backward(fast, x.float(), y.float())
    assert_within_reference_error(fast_probs, probs64, probs32)
    for name in ("head.4.weight", "lcd_attention.q_proj.weight", "physio_attention.norm.weight", "label_embedding"):
        assert_within_reference_error(fast_grads[name], grads64[name], grads32[name])


@pytest.mark.parametrize("backend", BACKENDS)
def test_twenty_training_steps_follow_the_same_loss_trajectory(backend):
    config = HeLoConfig(**SMALL)
    ref, fast = pair(config, backend, torch.float64)
    x, y = batch(config, size=8, dtype=torch.float64)
    trajectories = []
    for model in (ref, fast):
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(20):
            optimiser.zero_grad()
            loss, _ = helo_loss(model(x), y)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        trajectories.append(torch.tensor(losses, dtype=torch.float64))
    assert trajectories[0][-1] < trajectories[0][0]  # it trains
    assert_float64_close(trajectories[1], trajectories[0], rtol=1e-8)


def test_convert_revert_round_trip_keeps_weights_and_outputs():
    config = HeLoConfig(**SMALL)
    torch.manual_seed(0)
    model = HeLo(config, backend="reference", mask_seed=0).double().eval()
    x, _ = batch(config, dtype=torch.float64)
    keys, before = list(model.state_dict()), model(x).probs
    assert hf.convert(model) is model
    assert isinstance(model.physio_attention, fast_nn.LCDAttention)
    assert isinstance(model.ot, fast_nn.FusedGromovWasserstein)
    assert list(model.state_dict()) == keys
    assert_float64_close(model(x).probs, before)
    hf.revert(model)
    assert type(model.physio_attention) is reference_modules.LCDAttention and not hasattr(model.ot, "backend")
    assert torch.equal(model(x).probs, before)


def test_state_dicts_load_across_reference_and_fast_models():
    config = HeLoConfig(**SMALL)
    torch.manual_seed(0)
    ref = HeLo(config, backend="reference", mask_seed=0).double().eval()
    torch.manual_seed(1)
    fast = HeLo(config, backend="auto", mask_seed=0).double().eval()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x, _ = batch(config, dtype=torch.float64)
    assert_float64_close(fast(x).probs, ref(x).probs)
    torch.manual_seed(2)
    ref_again = HeLo(config, backend="reference", mask_seed=0).double().eval()
    ref_again.load_state_dict(fast.state_dict(), strict=True)
    assert torch.equal(ref_again(x).probs, ref(x).probs)


def test_fast_modules_share_constructor_arguments_with_reference_modules():
    fast = fast_nn.LCDAttention(16, 2, ln_eps=1e-6, bias_before_scale=False, backend="reference")
    ref = reference_modules.LCDAttention(16, 2, ln_eps=1e-6, bias_before_scale=False)
    assert list(fast.state_dict()) == list(ref.state_dict())
    sink = fast_nn.FusedSinkhorn(eps=0.1, n_iters=10)
    cost = torch.rand(2, 4, 5, dtype=torch.float64)
    assert_float64_close(sink(cost), reference_modules.Sinkhorn(eps=0.1, n_iters=10)(cost))
    with pytest.raises(ValueError, match="backend must be one of"):
        fast_nn.FusedGromovWasserstein(backend="gpu")


def test_convert_does_not_touch_other_models():
    config = HeLoConfig(**SMALL)
    first, second = HeLo(config, backend="reference"), HeLo(config, backend="reference")
    hf.convert(first)
    assert type(second.physio_attention) is reference_modules.LCDAttention


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_fast_model_forward_fullgraph():
    config = HeLoConfig(**SMALL)
    torch.manual_seed(0)
    model = HeLo(config, backend="auto", mask_seed=0).eval()
    x, _ = batch(config)
    expected = model(x).probs
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(x).probs, expected, atol=1e-6)
    hf.revert(model)  # converting after compile: the compiled module follows (recompiles)
    assert torch.allclose(compiled(x).probs, expected, atol=1e-5)


@pytest.mark.parametrize(
    "make,args",
    [
        (lambda backend: fast_nn.LCDAttention(8, 2, backend=backend), lambda: (torch.randn(2, 3, 8),)),
        (
            lambda backend: fast_nn.FusedGromovWasserstein(backend=backend),
            lambda: (torch.rand(2, 4, 4), torch.rand(2, 4, 4)),
        ),
        (lambda backend: fast_nn.FusedSinkhorn(eps=0.1, n_iters=3, backend=backend), lambda: (torch.rand(2, 4, 5),)),
        (lambda backend: fast_nn.FusedDropout(0.5, backend=backend), lambda: (torch.rand(2, 4),)),
    ],
)
def test_fused_modules_run_their_backend_not_the_reference(make, args, monkeypatch):
    """Each fused module must reach helo_fast.functional with its backend (not silently the reference op)."""
    from helo_fast import _ops

    calls = []
    monkeypatch.setattr(_ops, "get", lambda op, backend: calls.append((op, backend)) or (lambda *a, **k: "sentinel"))
    monkeypatch.setattr("helo_fast._backend.choose_backend", lambda requested, device, op: "cpp")
    assert make("cpp")(*args()) == "sentinel"
    assert len(calls) == 1 and calls[0][1] == "cpp"
