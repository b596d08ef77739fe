"""The CMake build for C++ users (libtorch via find_package(Torch)) builds and its ctest passes."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None, reason="cmake/ninja not on PATH")
def test_cmake_build_and_ctest():
    result = subprocess.run(["make", "-s", "ctest", f"PY={sys.executable}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"make ctest failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "100% tests passed" in result.stdout
