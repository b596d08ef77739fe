"""The CPU sources compile, warning-free, with the compilers a user may have besides the host's GCC: clang
(`CC=clang CXX=clang++` builds; the ISA tiers use target attributes clang honours, no GCC-only builtins) and GCC for
aarch64 (Graviton, Apple silicon under Linux: the x86 dispatch compiles out, the kernels take their 16-byte tier).
A syntax and template-instantiation check (-fsyntax-only -Wall -Werror) of each op source; a compiler that is not
installed is skipped with the package that provides it (Debian: clang libomp-dev, g++-aarch64-linux-gnu)."""

import glob
import os
import shutil
import subprocess

import pytest
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The op sources (the Python binding, module.cpp and python_interrupt.cpp, needs the target's Python headers).
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))) + [
    os.path.join(ROOT, "csrc", name) for name in ("schema.cpp", "interrupt.cpp", "build_info.cpp")
]
# compiler -> the Debian packages that provide it (and, for clang, the OpenMP header ATen includes)
COMPILERS = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "clang++": "clang libomp-dev"}


def missing_reason(compiler: str):
    """Why ``compiler`` cannot run the check here, or None."""
    if shutil.which(compiler) is None:
        return f"{compiler} not installed (Debian: apt-get install {COMPILERS[compiler]})"
    if compiler == "clang++":
        probe = subprocess.run(
            [compiler, "-fopenmp", "-x", "c++", "-fsyntax-only", "-"],
            input="#include <omp.h>\n",
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            return f"clang++ finds no omp.h (Debian: apt-get install {COMPILERS[compiler]})"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("compiler", list(COMPILERS))
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: os.path.relpath(path, ROOT))
def test_cpu_sources_compile_warning_free(compiler, source):
    reason = missing_reason(compiler)
    if reason is not None:
        pytest.skip(reason)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    command = [compiler, "-std=c++20", "-fopenmp", "-fsyntax-only", "-Wall", "-Werror", *includes, source]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-6000:]
