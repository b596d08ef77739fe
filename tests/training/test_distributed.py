"""Two processes with DistributedDataParallel (gloo, CPU) give the single-process result for the same global batch."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One xdist worker runs them one after another: each starts two ranks on fixed ports.
pytestmark = pytest.mark.xdist_group("torchrun")
# Dropout/DropKey off (each rank draws its own masks); a batch size that leaves uneven shards and a short last batch.
# float64: HeLo's float32 gradient carries ~1e-4 relative rounding error (GW and the cosine graphs amplify it; the
# reference and the fused model alike), so a float32 DDP run, whose sums are ordered differently, drifts from the
# single-process run by about that much within a few Adam steps. In float64 the two agree to ~1e-12.
ARGS = [
    "train",
    "--synthetic-subjects",
    "2",
    "--synthetic-trials",
    "6",
    "--synthetic-rows",
    "5",
    "--dtype",
    "float64",
    "--protocol",
    "kfold",
    "--folds",
    "2",
    "--max-splits",
    "1",
    "--epochs",
    "2",
    "--batch-size",
    "7",
    "--config",
    "dropkey_p=0",
    "--config",
    "dropout_p=0",
    "--config",
    "d_model=32",
    "--no-baselines",
    "--quiet",
    "--threads",
    "1",
    "--device",
    "cpu",
]


def run(command, tmp_path, name):
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command + ARGS + ["--output-json", str(out), "--checkpoint-dir", str(tmp_path / name)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    single, _ = run([sys.executable, "-m", "helo_fast"], tmp_path, "single")
    ddp, stdout = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port on localhost, so parallel runs on one machine cannot collide
            "--nproc-per-node",
            "2",
            "-m",
            "helo_fast",
        ],
        tmp_path,
        "ddp",
    )
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert stdout.count("HeLo ") == 1  # rank 0 alone prints the table
    assert sorted(os.listdir(tmp_path / "ddp")) == [
        ".helo-fast.lock",
        "checkpoint.pt",
        "checkpoint.pt.prev",
        "model_0.pt",
    ]
    for metric, value in single["summary"]["helo"].items():
        assert ddp["summary"]["helo"][metric]["mean"] == pytest.approx(value["mean"], rel=1e-9), metric
    losses = [[h["train_loss"] for h in run_["splits"][0]["history"]] for run_ in (single, ddp)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)


@pytest.mark.slow
def test_two_process_resume_with_masks_on_continues_bit_for_bit(tmp_path):
    """Each rank draws its own DropKey/dropout masks; a resume restores each rank's own mask-generator state."""
    worker = os.path.join(ROOT, "tests", "support", "ddp_resume_worker.py")

    def torchrun(name, *options):
        env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            worker,
            str(tmp_path / name),
            str(tmp_path / f"{name}.json"),
            *options,
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    torchrun("straight")
    torchrun("resumed", "--stop-after", "1")
    assert not (tmp_path / "resumed.json").exists()
    torchrun("resumed", "--resume")
    straight, resumed = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("straight", "resumed"))
    assert resumed["world_size"] == 2
    assert resumed["splits"][0]["history"] == straight["splits"][0]["history"]
