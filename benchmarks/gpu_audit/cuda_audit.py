"""Compile csrc/cuda/*.cu with nvcc for Hopper (and Blackwell where nvcc knows it) and read ptxas' resource report.

The command is tests/repo/test_cuda_compile.py's (torch's CPU headers, no link) plus ``-Xptxas -v`` and one -gencode per
architecture. Each kernel instantiation (one per storage dtype) gives one row: registers, stack frame, spill
stores / loads, static shared memory. Kernels take their shared memory dynamically; its host-side cap is the
launcher's (48 KiB in ot_device.cuh and lcd_attention.cu), well under Hopper's 227 KiB.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NVCC = shutil.which("nvcc")


def supported_archs() -> list[int]:
    """90, and 100 where this nvcc lists compute_100."""
    if NVCC is None:
        return []
    listed = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True).stdout
    return [90] + ([100] if "compute_100" in listed else [])


def nvcc_command(source: str, output: str, archs) -> list[str]:
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"], os.path.join(ROOT, "csrc")]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [
        NVCC,
        "-c",
        source,
        "-o",
        output,
        "-std=c++20",
        "-O2",
        *gencode,
        "--expt-relaxed-constexpr",
        "-Xptxas",
        "-v",
        "-DHELO_FAST_WITH_CUDA",
        "-DTORCH_EXTENSION_NAME=_C",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
        *[f"-I{path}" for path in includes],
    ]


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def _demangle(names):
    cxxfilt = shutil.which("cu++filt") or shutil.which("c++filt")
    if cxxfilt is None or not names:
        return dict(zip(names, names))
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else dict(zip(names, names))


def _short(demangled: str) -> tuple[str, str]:
    """('sinkhorn.cu kernel name', 'template arguments') from a demangled signature."""
    head = demangled.replace("(anonymous namespace)::", "").split("(")[0]
    name = re.sub(r"<.*", "", head).split("::")[-1].split()[-1]
    targs = re.search(r"<(.*)>", head)
    types = targs.group(1) if targs else ""
    for long, short in (("c10::BFloat16", "bf16"), ("c10::Half", "fp16"), ("double", "fp64"), ("float", "fp32")):
        types = types.replace(long, short)
    return name, types.replace(" ", "")


def parse_ptxas(text: str, source: str) -> list[dict]:
    """Rows (kernel, config, arch, registers, stack, spill_stores, spill_loads, shared) from ptxas -v output."""
    rows, current = [], None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = dict(mangled=m.group(1), arch=int(m.group(2)), stack=0, spill_stores=0, spill_loads=0)
            rows.append(current)
        elif current is not None and (m := _FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            current.update(registers=int(m.group(1)), shared=int(m.group(2) or 0))
    names = _demangle(sorted({r["mangled"] for r in rows}))
    for row in rows:
        name, types = _short(names[row.pop("mangled")])
        row.update(kernel=f"{os.path.basename(source)}:{name}", config=f"<{types}> sm_{row['arch']}")
    return rows


def compile_source(source: str, archs, workdir: str) -> list[dict]:
    """Compile one .cu; its rows, or one row with ``error``."""
    out = os.path.join(workdir, os.path.basename(source) + ".o")
    result = subprocess.run(nvcc_command(source, out, archs), capture_output=True, text=True)
    if result.returncode != 0:
        return [
            dict(kernel=os.path.basename(source), config="nvcc", arch=0, error=f"nvcc failed:\n{result.stderr[-4000:]}")
        ]
    rows = parse_ptxas(result.stdout + result.stderr, source)
    if not rows:
        return [
            dict(
                kernel=os.path.basename(source),
                config="nvcc",
                arch=0,
                error="ptxas reported no kernel (is -Xptxas -v passed through?)",
            )
        ]
    return rows
