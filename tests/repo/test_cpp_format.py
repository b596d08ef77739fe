"""The C++/CUDA sources are laid out by clang-format with the repository's .clang-format (as the .py files are by
ruff format, checked in `make lint`). Pinned to clang-format 14, Debian 12's: other versions lay out differently,
so the check skips (naming the package) where that version is not installed. `make format` applies both."""

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLANG_FORMAT = "clang-format-14"
SOURCES = sorted(
    path
    for pattern in ("*.h", "*.cpp", "*.cuh", "*.cu")
    for path in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True)
)


def test_the_sources_are_found():
    assert len(SOURCES) > 20 and os.path.isfile(os.path.join(ROOT, ".clang-format"))


@pytest.mark.skipif(shutil.which(CLANG_FORMAT) is None, reason=f"{CLANG_FORMAT} not installed (Debian: {CLANG_FORMAT})")
def test_csrc_is_clang_formatted():
    result = subprocess.run([CLANG_FORMAT, "--dry-run", "--Werror", *SOURCES], capture_output=True, text=True)
    assert result.returncode == 0, "run `make format`:\n" + result.stderr[-6000:]
