"""`make test` runs under pytest-xdist with --dist loadgroup, and the tests that time things or start torchrun
(test_interrupt, test_distributed) rely on their xdist_group keeping them on one worker, one after another. pytest
9.2 silently broke that grouping (pytest-xdist issue #1386: tests spread over workers as if unmarked); this checks the
installed pair still groups."""

import os
import subprocess
import sys
import textwrap

GROUPED = textwrap.dedent('''
    import os
    import pytest

    pytestmark = pytest.mark.xdist_group("one_worker")

    @pytest.mark.parametrize("i", range(8))
    def test_records_its_worker(i):
        with open(os.environ["WORKER_LOG"], "a") as f:
            f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
''')


def test_xdist_group_keeps_a_group_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    env = {**os.environ, "WORKER_LOG": str(tmp_path / "workers")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "no:cacheprovider",
            "test_grouped.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workers = (tmp_path / "workers").read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, f"one group ran on workers {sorted(set(workers))}"
