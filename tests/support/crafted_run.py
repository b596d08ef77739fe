"""Runs ``tests/support/crafted_worker.py`` on a batch of crafted files and returns one outcome per file."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "support", "crafted_worker.py")


def load_in_child(family, files, timeout=240, headroom_mb=1024):
    """{file: outcome dict} after loading each of ``files`` with ``family``'s loader in one capped child process.

    A file the child started but never reported (a crash, a hang past ``timeout``) gets outcome "crash" with
    the child's exit status and the tail of its stderr: the caller's assertion then names it.
    """
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "HELO_CRAFTED_HEADROOM_MB": str(headroom_mb)}
    try:
        proc = subprocess.run(
            [sys.executable, WORKER, family, *map(str, files)], capture_output=True, text=True, env=env, timeout=timeout
        )
        stdout, stderr, status = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, status = exc.stdout or "", exc.stderr or "", f"timeout after {timeout} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    outcomes = {}
    for line in stdout.splitlines():
        record = json.loads(line)
        if "start" in record:
            outcomes[record["start"]] = {"outcome": "crash", "status": status, "stderr": stderr[-2000:]}
        else:
            outcomes[record["file"]] = record
    for file in map(str, files):
        outcomes.setdefault(file, {"outcome": "not reached", "status": status, "stderr": stderr[-2000:]})
    return outcomes
