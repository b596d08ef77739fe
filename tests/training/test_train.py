"""Training loop, protocols, checkpoints/resume, baselines and the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.io import savemat

from helo_fast.cli import main
from helo_fast.data import make_synthetic_dataset
from helo_fast.training import TrainConfig, experiment, format_table, run_experiment, step
from helo_fast.training.checkpoint import load_checked
from training_cases import CLI_DATA, CLI_MODEL, LAYOUT, Interrupt, interrupt_at, small_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is as fast and does not stall when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_bf16_mixed_command_line_and_eval_in_the_trained_precision(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *CLI_DATA,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                *CLI_MODEL,
                "--checkpoint-dir",
                str(out),
                "--quiet",
                "--no-baselines",
                "--precision",
                "bf16-mixed",
                "--max-splits",
                "1",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["train_config"]["precision"] == "bf16-mixed"
    for precision, json_name in ((None, "same.json"), ("32", "fp32.json")):
        extra = [] if precision is None else ["--precision", precision]
        assert (
            main(
                [
                    "eval",
                    *CLI_DATA,
                    "--checkpoint-dir",
                    str(out),
                    "--output-json",
                    str(tmp_path / json_name),
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
    same = json.loads((tmp_path / "same.json").read_text())["splits"][0]["helo"]
    fp32 = json.loads((tmp_path / "fp32.json").read_text())["splits"][0]["helo"]
    assert same == pytest.approx(results["splits"][0]["helo"], rel=1e-6)
    assert fp32 != same


def test_train_and_eval_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            *CLI_DATA,
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--protocol",
            "kfold",
            "--folds",
            "2",
            *CLI_MODEL,
            "--checkpoint-dir",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "HeLo" in printed and "train mean" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "kfold" and results["n_splits"] == 2
    assert sorted(os.listdir(out)) == [
        ".helo-fast.lock",
        "checkpoint.pt",
        "checkpoint.pt.prev",
        "model_0.pt",
        "model_1.pt",
        "results.json",
    ]
    assert (
        main(["eval", *CLI_DATA, "--checkpoint-dir", str(out), "--output-json", str(tmp_path / "e.json"), "--quiet"])
        == 0
    )
    assert main(["eval", "--synthetic-subjects", "3", "--checkpoint-dir", str(out), "--quiet"]) == 2
    assert "pass the dataset options used for training" in capsys.readouterr().err
    evaluated = json.loads((tmp_path / "e.json").read_text())
    for split_train, split_eval in zip(results["splits"], evaluated["splits"]):
        assert split_eval["helo"] == pytest.approx(split_train["helo"], rel=1e-6)


def test_command_line_errors(tmp_path, capsys):
    assert main(["train", "--dataset", "dmer", "--data-path", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--dataset", "wesad", "--quiet"]) == 2
    assert "needs --data-path" in capsys.readouterr().err
    savemat(
        str(tmp_path / "4.mat"), {"feas": np.zeros((3, 10)), "vids": np.ones((3, 1)), "dis_label": np.ones((1, 10))}
    )
    assert main(["train", "--dataset", "dmer", "--data-path", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "4.mat" in err and "'feas' must have shape" in err
    assert main(["train", *CLI_DATA, "--config", "bogus=1", "--quiet"]) == 2
    assert "unknown HeLoConfig field 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--protocol", "holdout"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["train", *CLI_DATA, "--resume", "--quiet"]) == 2
    assert "--resume needs a --checkpoint-dir" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "helo_fast", "train", "--bogus"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.returncode == 2 and "--bogus" in proc.stderr


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


def test_eval_matches_data_by_content_not_by_path(tmp_path, capsys):
    """Issue 25 item 9: eval refuses edited data with the same rows (before: re-scored silently) and accepts the
    same data under another path spelling (before: refused, the path was part of the name it compared)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "dmer"
    data.mkdir()
    for subject in (1, 2):
        savemat(
            str(data / f"{subject}.mat"),
            {"feas": rng.normal(size=(12, 913)), "vids": np.arange(12) % 3 + 1, "dis_label": rng.random((3, 10)) + 0.1},
        )
    out = tmp_path / "run"
    dmer = ["--dataset", "dmer", "--data-path"]
    assert (
        main(
            [
                "train",
                *dmer,
                str(data),
                *CLI_MODEL,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--quiet",
                "--no-baselines",
                "--max-splits",
                "1",
                "--checkpoint-dir",
                str(out),
            ]
        )
        == 0
    )
    assert main(["eval", *dmer, str(data) + "/./", "--checkpoint-dir", str(out), "--quiet"]) == 0
    capsys.readouterr()
    savemat(
        str(data / "2.mat"),
        {"feas": rng.normal(size=(12, 913)), "vids": np.arange(12) % 3 + 1, "dis_label": rng.random((3, 10)) + 0.1},
    )
    assert main(["eval", *dmer, str(data), "--checkpoint-dir", str(out), "--quiet"]) == 2
    assert "trained on other data" in capsys.readouterr().err


def test_train_decides_each_option_once(tmp_path, capsys):
    """Issue 29 item 2: `helo-fast train` checks each option once, at the edge, and the library objects it builds
    do not check again (before: check_train_values ran 3 times, resolve_device, check_precision, check_subjects
    and HeLoConfig twice, and the backend of each of HeLo's ops was resolved twice)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "dmer"
    data.mkdir()
    for subject in (1, 2):
        savemat(
            str(data / f"{subject}.mat"),
            {"feas": rng.normal(size=(12, 913)), "vids": np.arange(12) % 3 + 1, "dis_label": rng.random((3, 10)) + 0.1},
        )
    watched = {
        "check_train_values",
        "resolve_device",
        "check_precision",
        "check_subjects",
        "choose_backend",
        "__post_init__",
    }
    calls = {}

    def count(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_name in watched and "helo_fast" in code.co_filename:
            where = "HeLoConfig" if code.co_filename.endswith(os.path.join("models", "config.py")) else code.co_name
            calls[where] = calls.get(where, 0) + 1

    argv = [
        "train",
        "--dataset",
        "dmer",
        "--data-path",
        str(data),
        "--subjects",
        "1",
        "2",
        *CLI_MODEL,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--quiet",
        "--no-baselines",
        "--max-splits",
        "1",
        "--backend",
        "reference",
        "--checkpoint-dir",
        str(tmp_path / "run"),
    ]
    sys.setprofile(count)
    try:
        status = main(argv)
    finally:
        sys.setprofile(None)
    assert status == 0, capsys.readouterr().err
    for name in ("check_train_values", "resolve_device", "check_precision", "check_subjects", "HeLoConfig"):
        assert calls.get(name) == 1, (name, calls)
    # One resolution per op of HeLo (the reference backend runs no op that resolves its own), for the checks,
    # the fingerprint and the training alike.
    assert calls.get("choose_backend") == 3, calls
