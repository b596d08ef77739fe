"""Builds helo_fast with its C++ extension helo_fast._C.

CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) are always built; CUDA kernels (csrc/cuda/*.cu) only where
the installed torch has CUDA and nvcc is found. Install with `pip install --no-build-isolation -e .`
(an isolated build would download another torch). HELO_FAST_NO_EXTENSION=1 skips the extension;
HELO_FAST_NATIVE=1 compiles for this machine's CPU (-march=native).
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(glob.glob(pattern, root_dir=ROOT))


def extension_modules():
    if os.environ.get("HELO_FAST_NO_EXTENSION") == "1":
        return []
    cxx_flags = ["-O3", "-fopenmp", "-std=c++20"]
    if os.environ.get("HELO_FAST_NATIVE") == "1":
        cxx_flags.append("-march=native")
    cpp_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        return [
            cpp_extension.CUDAExtension(
                "helo_fast._C",
                cpp_sources + sources("csrc/cuda/*.cu"),
                define_macros=[("HELO_FAST_WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        cpp_extension.CppExtension(
            "helo_fast._C", cpp_sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"]
        )
    ]


setup(
    packages=find_packages(include=["helo_fast", "helo_fast.*"]) + ["helo_fast.kernels"],
    package_dir={"helo_fast.kernels": "kernels"},
    ext_modules=extension_modules(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
