"""Training loop, protocols, checkpoints/resume, baselines (the command line: tests/cli/test_cli.py)."""

import os

import pytest
import torch

from helo_fast.data import make_synthetic_dataset
from helo_fast.training import TrainConfig, experiment, format_table, run_experiment, step
from helo_fast.training.checkpoint import load_checked
from training_cases import LAYOUT, Interrupt, interrupt_at, one_thread, small_config  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_short_run_lowers_loss_and_beats_training_mean():
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=40, rows_per_trial=5, layout=LAYOUT, seed=0)
    summary = run_experiment(
        data, small_config(), TrainConfig(epochs=20, batch_size=16, seed=0, quiet=True, device="cpu")
    )
    history = summary["splits"][0]["history"]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["train_kl"] != history[-1]["kl"]  # training loss parts and test metrics are kept apart
    helo, mean = summary["summary"]["helo"], summary["summary"]["mean"]
    assert helo["chebyshev"]["mean"] < mean["chebyshev"]["mean"] - 0.05
    assert helo["kl"]["mean"] < mean["kl"]["mean"] - 0.1
    assert helo["intersection"]["mean"] > mean["intersection"]["mean"] + 0.05
    assert set(summary["summary"]) == {"helo", "mlp", "mean"}
    table = format_table(summary)
    assert "HeLo" in table and "train mean" in table and "MLP (video)" in table and "±" in table


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    data = make_synthetic_dataset(n_subjects=2, trials_per_subject=8, rows_per_trial=4, layout=LAYOUT, seed=3)
    model_config = small_config()

    def config(folder, resume=False):
        return TrainConfig(
            epochs=4,
            batch_size=8,
            seed=11,
            quiet=True,
            device="cpu",
            checkpoint_dir=str(folder),
            checkpoint_every=2,
            resume=resume,
        )

    straight = run_experiment(data, model_config, config(tmp_path / "a"))
    # interrupted after epoch 3 of split 0 (last checkpoint: epoch 2, so epoch 3 is redone) ...
    with pytest.raises(Interrupt):
        run_experiment(data, model_config, config(tmp_path / "b"), on_epoch_end=interrupt_at(0, 3))
    # ... and again after epoch 2 of split 1
    with pytest.raises(Interrupt):
        run_experiment(data, model_config, config(tmp_path / "b", resume=True), on_epoch_end=interrupt_at(1, 2))
    resumed = run_experiment(data, model_config, config(tmp_path / "b", resume=True))
    assert resumed["summary"] == straight["summary"]
    for a, b in zip(straight["splits"], resumed["splits"]):
        for ha, hb in zip(a["history"], b["history"]):
            assert {k: v for k, v in ha.items()} == {k: v for k, v in hb.items()}
    assert not any(name.endswith(".tmp") or ".tmp-" in name for name in os.listdir(tmp_path / "b"))
    # a checkpoint from a different run is refused
    with pytest.raises(ValueError, match="different run"):
        run_experiment(
            data,
            model_config,
            TrainConfig(
                epochs=5,
                batch_size=8,
                seed=11,
                quiet=True,
                device="cpu",
                checkpoint_dir=str(tmp_path / "b"),
                resume=True,
            ),
        )


def test_bf16_mixed_resume_matches_uninterrupted_run(tmp_path):
    """A bf16-mixed run stopped and resumed continues bit for bit; a resume in another precision is refused."""
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=8, rows_per_trial=4, layout=LAYOUT, seed=3)

    def config(folder, resume=False, precision="bf16-mixed"):
        return TrainConfig(
            epochs=3,
            batch_size=8,
            seed=11,
            quiet=True,
            device="cpu",
            checkpoint_dir=str(folder),
            checkpoint_every=1,
            resume=resume,
            baselines=False,
            precision=precision,
        )

    straight = run_experiment(data, small_config(), config(tmp_path / "a"))
    with pytest.raises(Interrupt):
        run_experiment(data, small_config(), config(tmp_path / "b"), on_epoch_end=interrupt_at(0, 2))
    with pytest.raises(ValueError, match=r"different run \(train.precision: checkpoint 'bf16-mixed', this run '32'\)"):
        run_experiment(data, small_config(), config(tmp_path / "b", resume=True, precision="32"))
    resumed = run_experiment(data, small_config(), config(tmp_path / "b", resume=True))
    assert resumed["splits"][0]["history"] == straight["splits"][0]["history"]
    fp32 = run_experiment(data, small_config(), config(tmp_path / "c", precision="32"))
    assert fp32["splits"][0]["history"] != straight["splits"][0]["history"]  # autocast was on


def test_train_step_under_bf16_mixed_keeps_parameters_and_gradients_float32():
    from helo_fast.models import HeLo

    torch.manual_seed(0)
    model = HeLo(small_config(), mask_seed=0)
    optimizer = step.make_optimizer(model)
    x, y = torch.randn(6, LAYOUT.n_features), torch.softmax(torch.randn(6, LAYOUT.n_classes), -1)
    loss, parts = step.train_step(model, optimizer, x, y, precision="bf16-mixed")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None
    )
    assert not torch.is_autocast_enabled("cpu")


def test_fused_adam_is_the_default_adam_up_to_rounding():
    """make_optimizer's fused Adam takes the default (for-loop) Adam's step, rounded differently in an ulp or so
    (an update of lr = 1e-3 done differently would move parameters by ~1e-3)."""
    from helo_fast.models import HeLo

    x, y = torch.randn(8, LAYOUT.n_features), torch.softmax(torch.randn(8, LAYOUT.n_classes), -1)
    params = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = HeLo(small_config(dropkey_p=0.0, dropout_p=0.0), mask_seed=0)
        optimizer = (
            step.make_optimizer(model)
            if fused
            else torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5, foreach=False)
        )
        assert optimizer.defaults["fused"] is (True if fused else None)
        step.train_step(model, optimizer, x, y)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    tolerance = 4 * torch.finfo(torch.float32).eps * float(params[1].abs().max())
    assert float((params[0] - params[1]).abs().max()) <= tolerance


def test_16_mixed_is_refused_on_cpu():
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=4, rows_per_trial=4, layout=LAYOUT, seed=0)
    with pytest.raises(ValueError, match="precision 16-mixed .* runs on CUDA devices only, not on cpu"):
        run_experiment(data, small_config(), TrainConfig(epochs=1, quiet=True, device="cpu", precision="16-mixed"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_16_mixed_on_cuda_trains_with_a_grad_scaler_and_resumes_bit_for_bit(tmp_path):
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=8, rows_per_trial=4, layout=LAYOUT, seed=3)

    def config(folder, resume=False):
        return TrainConfig(
            epochs=3,
            batch_size=8,
            seed=11,
            quiet=True,
            device="cuda",
            checkpoint_dir=str(folder),
            checkpoint_every=1,
            resume=resume,
            baselines=False,
            precision="16-mixed",
        )

    straight = run_experiment(data, small_config(), config(tmp_path / "a"))
    with pytest.raises(Interrupt):
        run_experiment(data, small_config(), config(tmp_path / "b"), on_epoch_end=interrupt_at(0, 2))
    state = load_checked(str(tmp_path / "b" / experiment.CHECKPOINT_NAME))
    assert state["scaler"]["scale"] > 0
    resumed = run_experiment(data, small_config(), config(tmp_path / "b", resume=True))
    assert resumed["splits"][0]["history"] == straight["splits"][0]["history"]


def test_release_mode_scores_first_sample_of_each_batch():
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=5, rows_per_trial=4, layout=LAYOUT, seed=0)
    summary = run_experiment(
        data,
        small_config(faithful_to="release"),
        TrainConfig(epochs=1, batch_size=2, seed=0, quiet=True, device="cpu", baselines=False),
    )
    assert summary["model_config"]["eval_first_sample_only"] and summary["model_config"]["kl_reduction"] == "sum"
    assert torch.isfinite(torch.tensor(list(summary["splits"][0]["helo"].values()))).all()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dtype", "float16", "dtype must be one of"),
        ("precision", "bf16", "precision must be one of"),
        ("protocol", "nope", "protocol must be one of"),
        ("epochs", 0, "epochs must be an int >= 1"),
    ],
)
def test_train_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_divergence_is_reported_naming_the_learning_rate(monkeypatch):
    make_optimizer = step.make_optimizer

    def poisoned_after_first_step(model, lr, weight_decay):
        optimizer = make_optimizer(model, lr, weight_decay)
        # What a far too large step leaves behind.
        optimizer.register_step_post_hook(lambda *_: next(model.parameters()).data.fill_(float("nan")))
        return optimizer

    monkeypatch.setattr(experiment, "make_optimizer", poisoned_after_first_step)
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=4, rows_per_trial=4, layout=LAYOUT, seed=0)
    with pytest.raises(
        experiment.TrainingDiverged,
        match=r"diverged in subject .*, epoch 1: .*lower the learning rate "
        r"\(lr = 0.001",
    ):
        run_experiment(
            data, small_config(), TrainConfig(epochs=2, batch_size=4, quiet=True, device="cpu", baselines=False)
        )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_splits", 0, "max_splits must be an int >= 1"),
        ("threads", -1, "threads must be an int >= 1"),
        ("lr_gamma", 0.0, "lr_gamma must be a finite float > 0"),
        ("lr", float("nan"), "lr must be a finite float > 0"),
        ("lr", 1e9, r"lr must be in \(0, 1\]"),
        ("folds", 1, "folds must be an int >= 2"),
        ("weight_decay", -1e-5, "weight_decay must be a finite float >= 0"),
        ("test_fraction", 0.0, "test_fraction must be a finite float > 0"),
        ("seed", -1, "seed must be an int >= 0"),
    ],
)
def test_train_config_rejects_values_that_were_accepted_silently(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", "device 'foo' is not a device"),
        ("meta", "training runs on cpu or cuda, not meta"),
        ("cuda:99", "cuda:99"),
    ],
)
def test_bad_device_is_refused_before_training(device, message):
    data = make_synthetic_dataset(n_subjects=1, trials_per_subject=4, rows_per_trial=4, layout=LAYOUT, seed=0)
    with pytest.raises(ValueError, match=message):
        run_experiment(data, small_config(), TrainConfig(epochs=1, quiet=True, device=device))
