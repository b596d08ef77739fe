"""Which Triton kernels a call launches, with which arguments: a recorder around every kernel of ``kernels/``.

A launch is recorded as ``{"kernel": "<module>.<name>", "args": [...], "kwargs": {...}}`` with each argument
encoded by ``encode`` (a tensor as its dtype and whether its address is 16-byte aligned; numbers as themselves), so
that a process with the interpreter off can rebuild arguments that Triton specializes exactly as it would the real
ones (``decode``). ``record_cases`` runs the cases of benchmarks/gpu_audit/cases.py under TRITON_INTERPRET=1 with
the kernels replaced by the recorder (nothing runs: outputs stay uninitialised, which no launcher reads).

Run as ``python -m benchmarks.gpu_audit.launches OUT.json`` (sets TRITON_INTERPRET=1 itself).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys

KERNEL_MODULES = ("sinkhorn", "ipot", "gromov_wasserstein", "lcd_attention", "seeded_dropout", "mask_hash")


def launchable_kernels() -> dict:
    """{"<module>.<name>": kernel object} for every module-level Triton kernel of kernels/ named ``*_kernel``
    (the ``@triton.jit`` helpers they call are compiled into them)."""
    from triton.runtime.jit import KernelInterface

    found = {}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"helo_fast.kernels.{module_name}")
        for name, obj in vars(module).items():
            if isinstance(obj, KernelInterface) and name.endswith("_kernel"):
                found[f"{module_name}.{name}"] = obj
    return found


def encode(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "aligned": value.data_ptr() % 16 == 0}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a kernel argument of type {type(value).__name__}")


def decode(value):
    """A stand-in argument that Triton specializes like the recorded one (a small CPU tensor for a tensor)."""
    import torch

    if isinstance(value, dict) and "tensor" in value:
        t = torch.zeros(64, dtype=getattr(torch, value["tensor"]))
        return t if value["aligned"] else t[1:]
    return value


@contextlib.contextmanager
def recording(sink: list, execute: bool):
    """Within the block every kernel of ``launchable_kernels()`` appends its launches to ``sink`` and runs only if
    ``execute``."""
    kernels = launchable_kernels()
    originals = {}
    for name, kernel in kernels.items():
        originals[name] = kernel.__dict__.get("run")

        def run(*args, _name=name, _original=kernel.run, **kwargs):
            launch_kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
            sink.append(
                {
                    "kernel": _name,
                    "args": [encode(a) for a in args],
                    "kwargs": {k: encode(v) for k, v in launch_kwargs.items()},
                }
            )
            return _original(*args, **kwargs) if execute else None

        kernel.run = run
    try:
        yield
    finally:
        for name, kernel in kernels.items():
            if originals[name] is None:
                del kernel.run
            else:
                kernel.run = originals[name]


def record_cases() -> list:
    """[{"case": id, "launches": [...]}] for every case (recorded, not executed)."""
    import torch

    from benchmarks.gpu_audit import cases as case_list

    out = []
    for case in case_list.cases():
        sink: list = []
        with recording(sink, execute=False):
            case_list.run(case, torch.device("cpu"), "triton")
        out.append({"case": case.id, "launches": sink})
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.gpu_audit.launches OUT.json", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.gpu_audit.launches", *argv])
    records = record_cases()
    with open(argv[0], "w") as f:
        json.dump(records, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
