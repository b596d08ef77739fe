"""The GPU audit (benchmarks/gpu_audit, `make gpu-check`) flags what it promises to: toy kernels with one defect each
(spills, TF32 dot, shared memory over Hopper's limit) compiled for sm_90, ptxas reports, coverage gaps, and the
autotune pruning that the launchers and the audit share."""

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.gpu_audit import __main__ as audit
from benchmarks.gpu_audit import cuda_audit, triton_audit
from helo_fast.kernels import triton_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _has_ptxas():
    try:
        return os.path.exists(triton_audit._tool("ptxas"))
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _has_ptxas(), reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_toy_kernels_are_flagged():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.gpu_audit_toys"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {row["kernel"]: row for row in map(json.loads, out.stdout.splitlines())}
    assert audit.failures_of(rows["clean"]) == []
    assert audit.failures_of(rows["tf32"]) == ["fp32 dot not IEEE"]
    assert any(f.startswith("spills") for f in audit.failures_of(rows["spilling"]))
    assert any(f.startswith("shared") for f in audit.failures_of(rows["big_shared"]))


def test_compile_errors_and_allowances():
    row = dict(kernel="sinkhorn._sinkhorn_fwd_kernel", config="fp32 w4 sm_90", arch=90, error="RuntimeError: x")
    assert audit.failures_of(row) == ["compile error"]
    ok = dict(
        kernel="sinkhorn._sinkhorn_fwd_kernel",
        config="fp32",
        arch=90,
        registers=40,
        stack=0,
        local=0,
        shared=512,
        dots=["ieee"],
    )
    assert audit.failures_of(ok) == []
    budget = audit.ALLOWANCES["sinkhorn._sinkhorn_bwd_kernel"][0]
    within = dict(ok, kernel="sinkhorn._sinkhorn_bwd_kernel", stack=budget)
    assert audit.failures_of(within) == []
    assert audit.failures_of(dict(within, stack=budget + 8))  # beyond the budget
    assert audit.failures_of(dict(ok, stack=8))  # a kernel with no allowance may not spill at all


def test_dot_precision_is_read_from_ttgir():
    ieee = "%c = tt.dot %a, %b, %cst : tensor<16x16xf32, #a> * tensor<16x16xf32, #b> -> tensor<16x16xf32, #m>"
    tf32 = (
        "%c = tt.dot %a, %b, %cst, inputPrecision = tf32 : tensor<16x16xf32, #a> * tensor<16x16xf32, #b> -> "
        "tensor<16x16xf32, #m>"
    )
    f64 = "%c = tt.dot %a, %b, %cst : tensor<16x16xf64, #a> * tensor<16x16xf64, #b> -> tensor<16x16xf64, #m>"
    assert triton_audit.dot_precisions("\n".join([ieee, tf32, f64])) == ["ieee", "tf32"]


def test_ptxas_report_is_parsed():
    text = """ptxas info    : Compiling entry function '_Z6kernelIfEvPT_' for 'sm_90'
ptxas info    : Function properties for _Z6kernelIfEvPT_
    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 8 bytes cumulative stack size
"""
    (row,) = cuda_audit.parse_ptxas(text, "x.cu")
    assert (row["registers"], row["stack"], row["spill_stores"], row["arch"]) == (40, 8, 8, 90)
    assert row["kernel"] == "x.cu:kernel" and "fp32" in row["config"]
    assert audit.failures_of(dict(row, kernel="x.cu:kernel"))


def test_coverage_gaps_are_reported():
    kernels = {"k.a_kernel": None, "k.b_kernel": None}
    launch = {"kernel": "k.a_kernel", "args": [], "kwargs": {"SAVE": True, "NEW_MODE": 1, "BLOCK_N": 16, "SOLVER": 0}}
    problems = audit.coverage_problems([{"case": "c", "launches": [launch]}], kernels)
    text = "\n".join(problems)
    assert "k.b_kernel: no case launches it" in text
    assert "SAVE only ever [True]" in text
    assert "NEW_MODE has no declared domain" in text
    assert "SOLVER reaches [0]" in text
    assert "BLOCK_N" not in text


@pytest.mark.parametrize(
    "blocks, dtype, need",
    [
        ((16, 16), torch.float32, 1),
        ((64, 64), torch.float32, 4),
        ((32, 64), torch.float64, 4),
        ((64, 64, 128), torch.float32, 8),
    ],
)
def test_prune_num_warps(blocks, dtype, need):
    """Warp counts that would leave over 32 registers' worth of the largest tile per thread are never launched (at
    64 x 128 float32 on one warp ptxas ran minutes in over 13 GiB, and fewer warps than these spilled)."""
    import triton

    configs = [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8)]
    kwargs = {f"BLOCK_{i}": b for i, b in enumerate(blocks)}
    kept = triton_utils.prune_num_warps(configs, {"x": torch.empty(1, dtype=dtype)}, **kwargs)
    assert [c.num_warps for c in kept] == [w for w in (1, 2, 4, 8) if w >= need]


def test_autotuned_kernels_prune_with_the_shared_rule():
    """Every autotuned kernel prunes with triton_utils.prune_num_warps (the attention kernels with a smaller tile
    budget per thread), the function the audit also calls."""
    import functools

    from triton.runtime.autotuner import Autotuner

    from benchmarks.gpu_audit.launches import launchable_kernels

    tuned = {name: k for name, k in launchable_kernels().items() if isinstance(k, Autotuner)}
    assert tuned
    for name, kernel in tuned.items():
        prune = kernel.early_config_prune
        if isinstance(prune, functools.partial):
            assert prune.func is triton_utils.prune_num_warps and set(prune.keywords) == {"tile_bytes_per_thread"}
            assert name.startswith("lcd_attention."), name
        else:
            assert prune is triton_utils.prune_num_warps, name


def test_attention_gets_16_warps_for_helo_tiles():
    """HeLo's 64 x 128 float32 attention tiles spilled 8-14 KiB per thread on 8 warps (gpu-check): 16 at least,
    and 16 only where needed; the OT kernels keep the shared rule."""
    import triton

    from benchmarks.gpu_audit.launches import launchable_kernels

    kernels = launchable_kernels()
    configs = [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8, 16)]
    args = {"q": torch.empty(1)}
    for name in ("lcd_attention._lcd_attention_fwd_kernel", "lcd_attention._lcd_attention_bwd_kernel"):
        kept = kernels[name].early_config_prune(configs, args, BLOCK_Q=64, BLOCK_K=64, BLOCK_C=128)
        assert [c.num_warps for c in kept] == [16], name
    kept = kernels["sinkhorn._sinkhorn_fwd_kernel"].early_config_prune(configs, args, BLOCK_N=64, BLOCK_M=128)
    assert [c.num_warps for c in kept] == [8]  # 128 B of the largest tile per thread; never more warps than needed
    small = kernels["lcd_attention._lcd_attention_fwd_kernel"].early_config_prune(
        configs, args, BLOCK_Q=16, BLOCK_K=16, BLOCK_C=16
    )
    assert [c.num_warps for c in small] == [1, 2, 4, 8]


def _record_attention_launches(dtype):
    """The Triton launches (forward and backward) of the audit's small attention case with explicit masks."""
    from benchmarks.gpu_audit import cases as case_list
    from benchmarks.gpu_audit.launches import recording

    (case,) = [c for c in case_list.cases() if c.id == f"lcd_attention-bias-after-scale-tensor-masks-{dtype}"]
    sink: list = []
    with recording(sink, execute=False):
        case_list.run(case, torch.device("cpu"), "triton")
    assert sorted(launch["kernel"] for launch in sink) == [
        "lcd_attention._lcd_attention_bwd_kernel",
        "lcd_attention._lcd_attention_fwd_kernel",
    ]
    return sink


@pytest.mark.parametrize("dtype, mask_dtype", [("float64", "int32"), ("float32", "uint8"), ("bfloat16", "uint8")])
def test_attention_masks_reach_the_kernel_wide_enough(dtype, mask_dtype):
    """Triton 3.8 sizes a tl.dot's MMA operands from the narrowest load feeding them and cannot lower float64 ones
    fed by a uint8 load (MMAv2.cpp asserts): float64 attention reads its explicit masks as int32, others as uint8."""
    for launch in _record_attention_launches(dtype):
        names = list(_kernel_arg_names(launch["kernel"]))
        args = dict(zip(names, launch["args"]))
        assert args["dropkey_mask_ptr"]["tensor"] == mask_dtype
        assert args["dropout_mask_ptr"]["tensor"] == mask_dtype


def _kernel_arg_names(name):
    from benchmarks.gpu_audit.launches import launchable_kernels

    kernel = launchable_kernels()[name]
    while not hasattr(kernel, "arg_names"):
        kernel = kernel.fn
    return kernel.arg_names


@pytest.mark.slow
@pytest.mark.skipif(not _has_ptxas(), reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_float64_attention_with_explicit_masks_compiles(tmp_path):
    """Regression: the float64 attention kernels with explicit masks aborted Triton's sm_90 / sm_100 lowering."""
    path = tmp_path / "launches.json"
    path.write_text(json.dumps(_record_attention_launches("float64")))
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.gpu_audit_compile", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(map(json.loads, out.stdout.splitlines()))
    assert len(rows) == 4  # forward and backward, sm_90 and sm_100
    for row in rows:
        assert "error" not in row, (row["config"], row["error"][-500:])
        assert "fp64" in row["config"] and "DROPKEY_MODE=2 DROPOUT_MODE=2" in row["config"]
