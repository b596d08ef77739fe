"""Toy Triton kernels with one known defect each, for tests/repo/test_gpu_audit.py: the audit must flag each.

Run as ``python -m tests.support.gpu_audit_toys`` (with TRITON_INTERPRET=0): prints one JSON row per toy, as the audit's
compile step makes them (benchmarks/gpu_audit/triton_audit.compile_jit).
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def clean_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    tile = tl.load(x_ptr + r[:, None] * BLOCK + r[None, :])
    tl.store(out_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(tile, tile, input_precision="ieee"))


@triton.jit
def tf32_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    tile = tl.load(x_ptr + r[:, None] * BLOCK + r[None, :])
    tl.store(out_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(tile, tile))  # Triton's default: TF32


@triton.jit
def spilling_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    # Four live [BLOCK, BLOCK] float32 tiles on one warp: at BLOCK=64, 512 values per thread.
    r = tl.arange(0, BLOCK)
    offs = r[:, None] * BLOCK + r[None, :]
    a = tl.load(x_ptr + offs)
    b = tl.load(x_ptr + offs + 1)
    c = tl.load(x_ptr + offs + 2)
    d = tl.load(x_ptr + offs + 3)
    tl.store(out_ptr + offs, tl.sum(a * b, axis=1)[:, None] + tl.sum(c * d, axis=0)[None, :] + a * d + b * c)


@triton.jit
def big_shared_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    # [16, BLOCK] x [BLOCK, 16] float16 dot: both operands staged in shared memory, 2 x 16 x 4096 x 2 B = 256 KiB.
    r = tl.arange(0, 16)
    k = tl.arange(0, BLOCK)
    a = tl.load(x_ptr + r[:, None] * BLOCK + k[None, :]).to(tl.float16)
    b = tl.load(x_ptr + k[:, None] * 16 + r[None, :]).to(tl.float16)
    tl.store(out_ptr + r[:, None] * 16 + r[None, :], tl.dot(a, b))


TOYS = {  # name -> (kernel, BLOCK, num_warps)
    "clean": (clean_kernel, 16, 4),
    "tf32": (tf32_kernel, 16, 4),
    "spilling": (spilling_kernel, 64, 1),
    "big_shared": (big_shared_kernel, 4096, 4),
}


def main() -> int:
    from benchmarks.gpu_audit.triton_audit import Job, compile_jit

    for name, (kernel, block, warps) in TOYS.items():
        job = Job(
            kernel=name,
            signature=(("x_ptr", "*fp32"), ("out_ptr", "*fp32"), ("BLOCK", "constexpr")),
            constexprs=(("BLOCK", block),),
            attrs=(),
            options=(("num_warps", warps), ("num_stages", 1)),
            arch=90,
        )
        print(json.dumps(compile_jit(kernel, job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
