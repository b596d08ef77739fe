"""benchmarks/gpu_session.sh --dry-run: the GPU session script runs end to end on a CPU-only machine (no
nvidia-smi, Triton under the interpreter, a handful of tests and one benchmark), so the script itself is never what
fails on a lent GPU; its summary names every phase, counts tests per file and stays under its character limit."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_session.sh")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_dry_run_ends_with_a_compact_summary(tmp_path):
    # Without pytest's own variables: under pytest-xdist (PYTEST_XDIST_WORKER) the script's pytest runs would take
    # themselves for xdist workers, and pytest-benchmark then disables every benchmark (no JSON, no medians).
    outer = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    env = dict(
        outer,
        OUT=str(tmp_path),
        PY=sys.executable,
        TEST_WORKERS="0",
        DEADLINE="150",
        TEST_LIMIT="90",
        BENCH_LIMIT="25",
        BENCH_SUITES="seeded_dropout sinkhorn",
        SUMMARY_LIMIT="3000",
    )
    result = subprocess.run(
        ["bash", SCRIPT, "--dry-run", "build", "test", "bench"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:] + out[-3000:]
    summary = out[out.index("=== summary") :]
    assert len(summary) <= 3000
    for phase in ("build", "test", "bench-seeded_dropout", "bench-sinkhorn"):
        assert f"phase {phase}:" in summary, summary
    assert "tests/ops/test_triton_launch_cases.py: 2 passed, 0 failed" in summary, summary
    assert "benchmarks bench-seeded_dropout (median):" in summary and " ms" in summary, summary
    assert (tmp_path / "test.log").exists() and (tmp_path / "test.xml").exists()


def test_summary_is_cut_at_its_limit(tmp_path):
    from benchmarks.gpu_session_summary import summary

    cases = "".join(
        f'<testcase classname="tests.test_x" name="test_{i}" file="tests/test_x.py">'
        f'<failure message="boom"/></testcase>'
        for i in range(2000)
    )
    (tmp_path / "test.xml").write_text(f'<testsuites><testsuite>{cases}</testsuite></testsuites>')
    (tmp_path / "phases.tsv").write_text("test\t124\t300\n")
    text = summary(str(tmp_path), 1200)
    assert len(text) <= 1200 and "cut at 1200 characters" in text
    assert "phase test: TIMEOUT after 300s" in text and "FAIL tests/test_x.py: 0 passed, 2000 failed" in text
