"""Builds helo_fast with its C++ extension helo_fast._C.

CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) are always built; CUDA kernels (csrc/cuda/*.cu) only where
the installed torch has CUDA and nvcc is found. Install with `pip install --no-build-isolation -e .`
(an isolated build would download another torch). HELO_FAST_NO_EXTENSION=1 skips the extension;
HELO_FAST_NATIVE=1 compiles for this machine's CPU (-march=native). The kernels' threads run on torch's OpenMP
runtime with any compiler (see openmp_flags); HELO_FAST_OPENMP=compiler forces the compiler's own runtime instead.
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(glob.glob(pattern, root_dir=ROOT))


def torch_libgomp():
    """The path of the GNU libgomp this process loaded with torch (Linux wheels), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libgomp" in line}
    except OSError:
        return None
    return min(paths) if paths else None


def openmp_flags():
    """(compile flags, link flags, macros) for the kernels' OpenMP. GCC: -fopenmp, whose runtime is torch's libgomp.
    Another compiler (clang: LLVM's libomp) would bring a second runtime whose idle threads busy-wait against
    libgomp's: where torch runs on libgomp, only `omp simd` (-fopenmp-simd) and the kernels' teams started on
    torch's libgomp by csrc/parallel.h (HELO_FAST_GOMP_TEAM)."""
    libgomp = torch_libgomp()
    compiler = cpp_extension.get_cxx_compiler()
    if (
        os.environ.get("HELO_FAST_OPENMP") == "compiler"
        or libgomp is None
        or cpp_extension.check_compiler_is_gcc(compiler)
    ):
        return ["-fopenmp"], ["-fopenmp"], []
    return ["-fopenmp-simd"], [libgomp], [("HELO_FAST_GOMP_TEAM", None)]


def extension_modules():
    if os.environ.get("HELO_FAST_NO_EXTENSION") == "1":
        return []
    omp_compile, omp_link, omp_macros = openmp_flags()
    cxx_flags = ["-O3", *omp_compile, "-std=c++20"]
    if os.environ.get("HELO_FAST_NATIVE") == "1":
        cxx_flags.append("-march=native")
    cpp_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        return [
            cpp_extension.CUDAExtension(
                "helo_fast._C",
                cpp_sources + sources("csrc/cuda/*.cu"),
                define_macros=[("HELO_FAST_WITH_CUDA", None), *omp_macros],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
                extra_link_args=omp_link,
            )
        ]
    return [
        cpp_extension.CppExtension(
            "helo_fast._C",
            cpp_sources,
            define_macros=omp_macros,
            extra_compile_args=cxx_flags,
            extra_link_args=omp_link,
        )
    ]


setup(
    packages=find_packages(include=["helo_fast", "helo_fast.*"]) + ["helo_fast.kernels"],
    package_dir={"helo_fast.kernels": "kernels"},
    ext_modules=extension_modules(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
