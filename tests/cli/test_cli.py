"""The ``helo-fast`` command line. The real ``python -m helo_fast`` entry point, in subprocesses: every bad option
exits with status 2 and one ``helo-fast: error:`` line naming the option (before any training), crafted files never
run, Ctrl-C exits 130 with the last checkpoint intact, also in the middle of a long OT call. Then ``main()`` in
process: train and eval end to end (also in bf16-mixed), the errors of bad data and options, eval matching data by
content, each option checked once."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from scipy.io import savemat

from crafted import WritesMarker, with_header
from helo_fast import _ext
from helo_fast.cli import main
from helo_fast.training.checkpoint import LEGACY_MAGIC, load_checked, previous_path
from sigint import default_sigint_in_child, sigint_raises_keyboard_interrupt  # noqa: F401  (a fixture)
from training_cases import CLI_DATA, CLI_MODEL, one_thread  # noqa: F401  (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = ["train", *CLI_DATA, *CLI_MODEL, "--epochs", "1", "--quiet", "--no-baselines", "--threads", "1"]


def run_cli(args, cwd, env=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "helo_fast", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(cwd),
        timeout=timeout,
    )


# id -> (argv, extra environment, text the error line must contain); "{tmp}" is the fixture's directory.
CASES = {
    "device-cuda": (TRAIN + ["--device", "cuda"], {}, "--device 'cuda': no CUDA device"),
    "device-foo": (TRAIN + ["--device", "foo"], {}, "--device 'foo' is not a device"),
    "device-meta": (TRAIN + ["--device", "meta"], {}, "--device 'meta': training runs on cpu or cuda"),
    "threads-negative": (TRAIN + ["--threads", "-1"], {}, "--threads must be an int >= 1"),
    "threads-zero": (TRAIN + ["--threads", "0"], {}, "--threads must be an int >= 1"),
    "backend-triton": (
        TRAIN + ["--backend", "triton", "--device", "cpu"],
        {"TRITON_INTERPRET": "0"},
        "--backend triton: ",
    ),
    "checkpoint-dir-is-file": (
        TRAIN + ["--checkpoint-dir", "{tmp}/a_file"],
        {},
        "--checkpoint-dir '{tmp}/a_file' is a file",
    ),
    "checkpoint-dir-unwritable": (
        TRAIN + ["--checkpoint-dir", "/proc/self/helo-run"],
        {},
        "--checkpoint-dir '/proc/self/helo-run': cannot write",
    ),
    "checkpoint-dir-read-only": (TRAIN + ["--checkpoint-dir", "{tmp}/read_only/run"], {}, "cannot write in"),
    "output-json-is-dir": (TRAIN + ["--output-json", "{tmp}"], {}, "--output-json '{tmp}' is a directory"),
    "results-json-is-dir": (TRAIN + ["--checkpoint-dir", "{tmp}"], {}, "--checkpoint-dir '{tmp}/results.json'"),
    "max-splits-zero": (TRAIN + ["--max-splits", "0"], {}, "--max-splits must be an int >= 1"),
    "max-splits-negative": (TRAIN + ["--max-splits", "-1"], {}, "--max-splits must be an int >= 1"),
    "lr-gamma-zero": (TRAIN + ["--lr-gamma", "0"], {}, "--lr-gamma must be a finite float > 0"),
    "lr-gamma-negative": (TRAIN + ["--lr-gamma", "-0.5"], {}, "--lr-gamma must be a finite float > 0"),
    "lr-huge": (TRAIN + ["--lr", "1e9"], {}, "--lr must be in (0, 1]"),
    "lr-nan": (TRAIN + ["--lr", "nan"], {}, "--lr must be a finite float > 0"),
    "weight-decay-negative": (TRAIN + ["--weight-decay", "-1"], {}, "--weight-decay must be a finite float >= 0"),
    "folds-one": (TRAIN + ["--folds", "1"], {}, "--folds must be an int >= 2"),
    "test-fraction-one": (TRAIN + ["--test-fraction", "1"], {}, "--test-fraction must be in [0, 1)"),
    "seed-negative": (TRAIN + ["--seed", "-3"], {}, "--seed must be an int >= 0"),
    "epochs-not-int": (TRAIN + ["--epochs", "x"], {}, "argument --epochs: invalid int value"),
    "protocol-unknown": (TRAIN + ["--protocol", "holdout"], {}, "argument --protocol: invalid choice"),
    "window-zero": (TRAIN + ["--window-s", "0"], {}, "--window-s must be a finite float > 0"),
    "window-nan": (TRAIN + ["--window-s", "nan"], {}, "--window-s must be a finite float > 0"),
    "synthetic-subjects-zero": (TRAIN + ["--synthetic-subjects", "0"], {}, "--synthetic-subjects must be an int"),
    "subjects-not-int": (
        TRAIN + ["--dataset", "dmer", "--data-path", "{tmp}/dmer", "--subjects", "abc"],
        {},
        "--subjects: DMER subject ids are integers",
    ),
    "subjects-twice": (
        TRAIN + ["--dataset", "wesad", "--data-path", "{tmp}", "--subjects", "S2", "S2"],
        {},
        "--subjects: 'S2' is given twice",
    ),
    "config-nan": (TRAIN + ["--config", "lambda_corr=nan"], {}, "--config lambda_corr: needs a finite number"),
    "config-not-int": (TRAIN + ["--config", "d_model=1.5"], {}, "--config d_model: needs an integer"),
    "config-out-of-range": (TRAIN + ["--config", "beta=0"], {}, "--config: beta must be a finite float > 0"),
    "config-renamed-key": (
        TRAIN + ["--config", "p_dropkey=0.3"],
        {},
        "--config: HeLoConfig key 'p_dropkey' was renamed to 'dropkey_p'",
    ),
    "resume-without-dir": (TRAIN + ["--resume"], {}, "--resume needs a --checkpoint-dir"),
    "resume-nothing-there": (TRAIN + ["--resume", "--checkpoint-dir", "{tmp}/empty"], {}, "--resume: no checkpoint at"),
    "resume-old-format": (
        TRAIN + ["--resume", "--checkpoint-dir", "{tmp}/legacy"],
        {},
        "'{tmp}/legacy/checkpoint.pt' was written by an earlier helo_fast version",
    ),
    "eval-old-format": (
        ["eval", *CLI_DATA, "--model", "{tmp}/legacy_model.pt", "--quiet"],
        {},
        "'{tmp}/legacy_model.pt' was written by an earlier helo_fast version",
    ),
    "eval-output-json-is-dir": (
        ["eval", *CLI_DATA, "--model", "{tmp}/a_file", "--output-json", "{tmp}"],
        {},
        "--output-json '{tmp}' is a directory",
    ),
    "eval-threads-zero": (
        ["eval", *CLI_DATA, "--model", "{tmp}/a_file", "--threads", "0"],
        {},
        "--threads must be an int >= 1",
    ),
    "precision-unknown": (TRAIN + ["--precision", "bf16"], {}, "argument --precision: invalid choice: 'bf16'"),
    "precision-16-mixed-on-cpu": (
        TRAIN + ["--precision", "16-mixed", "--device", "cpu"],
        {},
        "--precision 16-mixed (float16 autocast with a gradient scaler) runs on CUDA devices only, not on cpu",
    ),
    "precision-mixed-float64": (
        TRAIN + ["--precision", "bf16-mixed", "--dtype", "float64"],
        {},
        "--precision bf16-mixed needs a float32 model",
    ),
    "eval-precision-16-mixed-on-cpu": (
        ["eval", *CLI_DATA, "--model", "{tmp}/a_file", "--precision", "16-mixed", "--device", "cpu"],
        {},
        "--precision 16-mixed (float16 autocast",
    ),
}


def _make_files(tmp):
    """The files the cases name; the crafted ones would write {tmp}/marker if their payload ever ran."""
    (tmp / "a_file").write_text("")
    for folder in ("legacy", "empty", "dmer", "results.json", "read_only"):
        (tmp / folder).mkdir()
    (tmp / "read_only").chmod(0o500)
    marker = WritesMarker(tmp / "marker")
    (tmp / "legacy" / "checkpoint.pt").write_bytes(with_header(LEGACY_MAGIC, pickle.dumps({"state": marker})))
    (tmp / "legacy_model.pt").write_bytes(with_header(LEGACY_MAGIC, pickle.dumps(marker)))


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """Every case's subprocess, started together (three at a time) so the module takes seconds, not minutes."""
    tmp = tmp_path_factory.mktemp("cli")
    _make_files(tmp)
    fill = lambda text: text.replace("{tmp}", str(tmp))  # noqa: E731
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(run_cli, [fill(a) for a in argv], tmp, env) for name, (argv, env, _) in CASES.items()
        }
        results = {name: (future.result(), fill(CASES[name][2])) for name, future in futures.items()}
    (tmp / "read_only").chmod(0o700)
    return results, tmp


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_option_exits_2_with_one_line_naming_it(refused, case):
    results, tmp = refused
    proc, expected = results[case]
    if case == "device-cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    if case == "checkpoint-dir-read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories (checkpoint-dir-unwritable covers an unwritable one)")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("helo-fast: error: "), proc.stderr
    assert expected in lines[0]
    assert proc.stdout == ""  # refused before any training (which prints the table)
    assert not (tmp / "marker").exists()


def test_resume_with_another_thread_count_is_refused(tmp_path):
    before = torch.get_num_threads()
    try:
        assert main(TRAIN + ["--checkpoint-dir", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(before)
    proc = run_cli([*TRAIN, "--checkpoint-dir", str(tmp_path / "run"), "--resume", "--threads", "2"], tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "was written by a different run (environment.threads: checkpoint 1, this run 2)" in proc.stderr


def test_resume_with_another_precision_is_refused(tmp_path):
    before = torch.get_num_threads()
    try:
        assert main(TRAIN + ["--checkpoint-dir", str(tmp_path / "run"), "--precision", "bf16-mixed"]) == 0
    finally:
        torch.set_num_threads(before)
    proc = run_cli([*TRAIN, "--checkpoint-dir", str(tmp_path / "run"), "--resume"], tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "was written by a different run (train.precision: checkpoint 'bf16-mixed', this run '32')" in proc.stderr


def test_ctrl_c_exits_130_with_one_line_and_the_checkpoint_intact(tmp_path):
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "helo_fast",
        *TRAIN,
        "--epochs",
        "100000",
        "--checkpoint-every",
        "1",
        "--checkpoint-dir",
        str(run),
    ]
    # Warnings the training may print are not this test's subject: the interrupt's own output is.
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tmp_path),
        preexec_fn=default_sigint_in_child,
    )
    try:
        deadline = time.monotonic() + 900
        while not os.path.exists(previous_path(str(run / "checkpoint.pt"))):  # two checkpoints written
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        f"helo-fast: interrupted; the last checkpoint, {run / 'checkpoint.pt'}, "
        "is intact: continue with the same options and --resume"
    ]
    state = load_checked(str(run / "checkpoint.pt"))
    assert state["format"] == "helo_fast-train-v2" and state["epoch"] >= 1


# Runs the real entry point, printing a line when the first OT call of the training starts.
CLI_WATCHING_OT = """
import sys
from helo_fast import cli
from helo_fast._ops import gromov_wasserstein as gromov_wasserstein_ops

def watch(frame, event, arg):
    if event == "call" and frame.f_code is gromov_wasserstein_ops.gromov_wasserstein_cpp.__code__:
        sys.setprofile(None)
        print("ot call", flush=True)

sys.setprofile(watch)
sys.exit(cli.main(sys.argv[1:]))
"""
DELAY_S = 0.5  # how long the OT call runs before the signal


# One xdist worker runs the Ctrl-C tests that time a signal one after another (tests/ops/test_interrupt.py's group).
@pytest.mark.skipif(not _ext.has_cpp(), reason=_ext.EXTENSION_ERROR or "")
@pytest.mark.xdist_group("timing")
@pytest.mark.usefixtures("sigint_raises_keyboard_interrupt")
@pytest.mark.slow
def test_ctrl_c_during_an_ot_call_of_the_cli_exits_130(tmp_path):
    argv = [
        sys.executable,
        "-c",
        CLI_WATCHING_OT,
        "train",
        *CLI_DATA,
        *CLI_MODEL,
        "--config",
        f"inner_iters={10**9}",
        "--epochs",
        "1",
        "--quiet",
        "--no-baselines",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tmp_path),
        preexec_fn=default_sigint_in_child,
    )
    try:
        assert proc.stdout.readline() == "ot call\n", proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(DELAY_S)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
        stopped = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["helo-fast: interrupted"]
    # inner_iters=10**9 runs for days: stopping within minutes (the interpreter's exit included) on any machine shows
    # the call was stopped, not finished.
    assert stopped - sent < 120


def test_a_used_checkpoint_dir_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    """Issue 25 item 7: a run into a directory holding another run's files exits 2 with one line (before, a
    1-epoch run replaced a finished run's five files without a word); --overwrite replaces it."""
    run = [
        "train",
        *CLI_DATA,
        *CLI_MODEL,
        "--epochs",
        "1",
        "--quiet",
        "--no-baselines",
        "--max-splits",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "run"),
    ]
    assert main(run) == 0
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--overwrite" in err[0], err
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert main([*run, "--overwrite"]) == 0


def test_a_locked_checkpoint_dir_is_refused_naming_the_holder(tmp_path, capsys):
    """Issue 25 item 7: two runs on one directory (before: both wrote, leaving a mix): the second one exits 2
    naming the pid that holds the directory's lock."""
    from helo_fast.training.run_dir import claim_run_dir

    lock = claim_run_dir(str(tmp_path / "run"), resume=False, overwrite=False)
    try:
        assert (
            main(
                ["train", *CLI_DATA, *CLI_MODEL, "--epochs", "1", "--quiet", "--checkpoint-dir", str(tmp_path / "run")]
            )
            == 2
        )
    finally:
        lock.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"in use by another helo-fast run (pid {os.getpid()})" in err[0], err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# In-process runs of main() (they were test_train.py's; one thread each, as there).


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "helo_fast", "train", "--bogus"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.returncode == 2 and "--bogus" in proc.stderr


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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
