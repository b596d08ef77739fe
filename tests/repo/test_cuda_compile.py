"""Compile-check every CUDA source with nvcc (sm_90) so CUDA code cannot rot on a GPU-less CI.

Linking a CUDAExtension against the CPU build of torch fails, so this only compiles to an object.
"""

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def nvcc_command(source, output):
    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"], os.path.join(ROOT, "csrc")]
    return [
        NVCC,
        "-c",
        source,
        "-o",
        output,
        "-std=c++20",
        "-O2",
        "-arch=sm_90",
        "--expt-relaxed-constexpr",
        "-DHELO_FAST_WITH_CUDA",
        "-DTORCH_EXTENSION_NAME=_C",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
    ] + [f"-I{path}" for path in includes]


def test_there_are_cuda_sources_to_check():
    assert CUDA_SOURCES, "csrc/cuda/*.cu is empty: every fused op needs a CUDA kernel"


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[os.path.basename(s) for s in CUDA_SOURCES])
def test_cuda_source_compiles(source, tmp_path):
    result = subprocess.run(nvcc_command(source, str(tmp_path / "out.o")), capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed on {os.path.basename(source)}:\n{result.stderr[-6000:]}"
