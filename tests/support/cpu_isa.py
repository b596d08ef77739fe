"""Run a test script under a capped CPU instruction set (HELO_FAST_CPU_ISA) in a subprocess.

The C++ kernels are compiled per instruction set and picked at run time; a test process would only run
the widest one this machine has, so each narrower variant runs in its own interpreter."""

import os
import subprocess
import sys

SUPPORT_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(SUPPORT_DIR))


def run_under_isa(isa: str, script: str) -> None:
    """Run ``script`` (Python source, importing from tests/support/) with HELO_FAST_CPU_ISA=isa; fail on a non-zero
    exit."""
    env = dict(
        os.environ,
        HELO_FAST_CPU_ISA=isa,
        PYTHONPATH=os.pathsep.join([SUPPORT_DIR, ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=SUPPORT_DIR)
    assert result.returncode == 0, result.stderr[-4000:]
