"""The CPU sources compile, warning-free, with the compilers a user may have besides the host's GCC: clang
(`CC=clang CXX=clang++` builds; the ISA tiers use target attributes clang honours, no GCC-only builtins) and GCC for
aarch64 (Graviton, Apple silicon under Linux: the x86 dispatch compiles out, the kernels take their 16-byte tier).
Clang compiles each op source to an object at -O3 as setup.py builds it (-fopenmp-simd, the teams on torch's libgomp:
csrc/parallel.h), -Wall -Werror, so that its optimiser's warnings fail too (-Wpass-failed: an `omp simd` loop it could
not vectorise); the cross GCC runs a syntax and template-instantiation check (-fsyntax-only -Wall -Werror). A compiler
that is not installed is skipped with the package that provides it (Debian: clang, g++-aarch64-linux-gnu)."""

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
# compiler -> the Debian package that provides it
COMPILERS = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "clang++": "clang"}
# compiler -> how it compiles: clang as setup.py builds with it where torch runs on libgomp (openmp_flags), to an
# object at -O3 so that the vectoriser runs (~10-40 s a source on one core here); the cross GCC's syntax check only.
MODES = {
    "aarch64-linux-gnu-g++": ["-fopenmp", "-fsyntax-only"],
    "clang++": ["-fopenmp-simd", "-DHELO_FAST_GOMP_TEAM", "-O3", "-c", "-o", os.devnull],
}


def missing_reason(compiler: str):
    """Why ``compiler`` cannot run the check here, or None."""
    if shutil.which(compiler) is None:
        return f"{compiler} not installed (Debian: apt-get install {COMPILERS[compiler]})"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("compiler", list(COMPILERS))
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: os.path.relpath(path, ROOT))
def test_cpu_sources_compile_warning_free(compiler, source):
    reason = missing_reason(compiler)
    if reason is not None:
        pytest.skip(reason)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    command = [compiler, "-std=c++20", *MODES[compiler], "-Wall", "-Werror", *includes, source]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-6000:]
