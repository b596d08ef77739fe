"""Compile recorded Triton launches for a GPU this machine does not have, and read what the compiler did.

``specializations`` turns recorded launches (benchmarks/gpu_audit/launches.py) into the compile jobs a GPU would
run: Triton's own binder (the code its launcher runs) gives the signature, the constexprs and the alignment /
divisibility attributes; every autotune config of the kernel gives one job each (num_warps, num_stages).
``compile_job`` compiles one job to a cubin and reports registers, spills (stack frame, local memory), shared
memory and the input precision of each fp32 ``tl.dot`` (read in the TTGIR). Needs TRITON_INTERPRET unset or 0.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import tempfile
import time

# Hopper and Blackwell: at most 227 KiB of shared memory per block (the opt-in maximum; Triton raises the limit
# itself above 48 KiB).
SHARED_LIMIT = {90: 227 * 1024, 100: 227 * 1024}


@dataclasses.dataclass(frozen=True)
class Job:
    kernel: str  # "<module>.<name>"
    signature: tuple  # ((arg, type), ...)
    constexprs: tuple  # ((arg, value), ...) incl. Triton's own (ints equal to 1)
    attrs: tuple  # ((arg, attr), ...): divisibility by 16
    options: tuple  # ((num_warps, w), (num_stages, s))
    arch: int  # 90 (sm_90, Hopper), 100 (sm_100, Blackwell)

    def config(self) -> str:
        """Short description: the kernel's own constexprs, pointer dtypes and the autotune options."""
        own = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.constexprs if k.isupper()]
        dtypes = sorted({t.lstrip("*") for _, t in self.signature if t.startswith("*")})
        opts = dict(self.options)
        ints = dict(self.signature)
        div16 = [k for k, _ in self.attrs if ints.get(k) in ("i32", "i64")]
        strides = sum(k.startswith("stride") for k in div16)
        div16 = [k for k in div16 if not k.startswith("stride")] + ([f"{strides} strides"] if strides else [])
        ones = [k for k, v in self.constexprs if not k.isupper() and v == 1]
        spec = (f" %16:{','.join(div16)}" if div16 else "") + (f" =1:{','.join(ones)}" if ones else "")
        return f"{'/'.join(dtypes)} {' '.join(own)}{spec} w{opts['num_warps']} sm_{self.arch}"


def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return GPUTarget("cuda", arch, 32), make_backend(GPUTarget("cuda", arch, 32))


def _jit_function(kernel):
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def autotune_configs(kernel, named_args: dict, kwargs: dict) -> list[dict]:
    """The launch options a launch can pick: the autotune configs its ``early_config_prune`` keeps (as
    ``Autotuner.prune_configs`` does), or Triton's defaults for a kernel without autotuning."""
    from triton.runtime.autotuner import Autotuner

    if not isinstance(kernel, Autotuner):
        return [{}]
    configs = kernel.configs
    if len(configs) > 1 and kernel.early_config_prune:
        configs = kernel.early_config_prune(configs, named_args, **kwargs)
    return [dict(c.all_kwargs()) for c in configs]


def specializations(launch: dict, kernel, arch: int) -> list[Job]:
    """The compile jobs of one recorded launch on sm_<arch>: one per autotune config."""
    from triton.runtime.jit import create_function_from_signature

    from benchmarks.gpu_audit.launches import decode

    target, backend = _backend(arch)
    jit = _jit_function(kernel)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    args = [decode(a) for a in launch["args"]]
    jobs = []
    launch_kwargs = {k: decode(v) for k, v in launch["kwargs"].items()}
    for config in autotune_configs(kernel, dict(zip(jit.arg_names, args)), launch_kwargs):
        kwargs = {**launch_kwargs, **config}
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization, options)
        names = list(jit.arg_names)
        jobs.append(
            Job(
                kernel=launch["kernel"],
                signature=tuple(signature.items()),
                constexprs=tuple((names[path[0]], value) for path, value in sorted(constexprs.items())),
                attrs=tuple((names[path[0]], str(value)) for path, value in sorted(attrs.items())),
                options=(("num_warps", options.num_warps), ("num_stages", options.num_stages)),
                arch=arch,
            )
        )
    return jobs


def _tool(name: str) -> str:
    import triton.backends.nvidia as nvidia

    return os.path.join(os.path.dirname(nvidia.__file__), "bin", name)


_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_DOT = re.compile(r"(?:tt\.dot|ttng\.warp_group_dot)\s+(.*)$")


def dot_precisions(ttgir: str) -> list[str]:
    """The input precision of each dot with float32 operands in a TTGIR module ("ieee", "tf32", "tf32x3", ...).
    Triton prints the attribute only when it is not IEEE (checked on Triton 3.8: ``input_precision="ieee"`` prints
    none, the default ``tf32`` prints ``inputPrecision = tf32``)."""
    out = []
    for line in ttgir.splitlines():
        match = _DOT.search(line)
        if match is None or "xf32" not in line.split(":")[-1].split("->")[0]:
            continue
        precision = re.search(r"inputPrecision\s*=\s*(\w+)", match.group(1))
        out.append(precision.group(1) if precision else "ieee")
    return out


def resources_of(cubin: bytes) -> dict:
    """Registers, stack frame, static shared and local memory of the one kernel in ``cubin`` (cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    match = _RESOURCE.search(text)
    if match is None:
        raise RuntimeError(f"no resource line in cuobjdump's output:\n{text}")
    regs, stack, _shared, local = (int(g) for g in match.groups())
    return dict(registers=regs, stack=stack, local=local)


def compile_job(job: Job) -> dict:
    """Compile ``job`` (a kernel of kernels/, by name); see ``compile_jit``."""
    from benchmarks.gpu_audit.launches import launchable_kernels

    return compile_jit(_jit_function(launchable_kernels()[job.kernel]), job)


def compile_jit(jit, job: Job) -> dict:
    """Compile ``jit`` as ``job`` says and return its row: registers, stack, local, shared (bytes Triton asks for),
    the fp32 dot precisions, seconds, or ``error``."""
    import triton
    from triton.compiler import ASTSource

    start = time.perf_counter()
    names = list(jit.arg_names)
    row = dict(kernel=job.kernel, config=job.config(), arch=job.arch)
    try:
        src = ASTSource(
            jit,
            dict(job.signature),
            {(names.index(k),): v for k, v in job.constexprs},
            {(names.index(k),): ast.literal_eval(attr) for k, attr in job.attrs},
        )
        target, _ = _backend(job.arch)
        compiled = triton.compile(src, target=target, options=dict(job.options))
        row.update(
            resources_of(compiled.asm["cubin"]),
            shared=int(compiled.metadata.shared),
            dots=dot_precisions(compiled.asm["ttgir"]),
        )
    except Exception as exc:  # a compile error is a finding, reported in the table
        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row
