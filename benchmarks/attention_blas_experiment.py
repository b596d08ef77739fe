"""Experiment (issue 26 item 3): lcd_attention's six tile products through the vendor BLAS (sgemm_/dgemm_ of
PyTorch's MKL, one call per (batch, head) tile) against the hand-written tiles, per instruction-set tier.

    HELO_FAST_CPU_ISA=avx2 .venv/bin/python -m benchmarks.attention_blas_experiment [--masks 0,1,2,4,8,16,32,63]

HF_BLAS_MASK picks the products that go to the BLAS: 1 S = Q Kᵀ, 2 O = W V, 4 dP = dO Vᵀ, 8 dV = Wᵀ dO, 16 dQ = dS K,
32 dK = dSᵀ Q (63: all); HF_ROWDOTS=0|1 forces the transposed / row-dot form of the Aᵀ-products (default: the
use_row_dots choice). float32 (DTYPE), 1 thread, CPU time (process_time: robust to other jobs on a shared machine),
B=128, forward+backward, masks interleaved round by round; the factor is the median of per-round time ratios
(> 1: faster than mask 0).
"""
import argparse
import os
import statistics
import time

import torch

import helo_fast as hf

from .test_bench_lcd_attention import SHAPES, make_inputs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="ca,transformer,lcd_ca")
    parser.add_argument("--masks", default="0,1,2,4,8,16,32,63")
    parser.add_argument("--env", default="HF_BLAS_MASK", help="the variable the values of --masks go to")
    parser.add_argument("--p", type=float, default=0.0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    masks = args.masks.split(",")
    for shape in args.shapes.split(","):
        inputs = {k: (v.detach().to(dtype).requires_grad_() if v is not None else None)
                  for k, v in make_inputs(shape, 128, torch.device("cpu"), True).items()}
        kw = dict(bias_before_scale=SHAPES[shape][5], dropkey_p=args.p, dropout_p=args.p, check_finite=False,
                  residual=inputs["residual"], ln_weight=inputs["ln_weight"], ln_bias=inputs["ln_bias"])
        q = inputs["q"]
        grad = torch.randn(q.shape[0], q.shape[2], q.shape[1] * q.shape[3], dtype=dtype)

        def step():
            for t in inputs.values():
                if t is not None:
                    t.grad = None
            hf.lcd_attention(inputs["q"], inputs["k"], inputs["v"], inputs["bias"], backend="cpp", **kw).backward(grad)

        times = {m: [] for m in masks}
        for m in masks:
            os.environ[args.env] = m
            step()
            step()
        for r in range(args.rounds):
            for m in masks[r % len(masks):] + masks[:r % len(masks)]:
                os.environ[args.env] = m
                tic = time.process_time()
                for _ in range(10):
                    step()
                times[m].append((time.process_time() - tic) / 10 * 1e3)
        base = times[masks[0]]
        print(f"{os.environ.get('HELO_FAST_CPU_ISA', 'best')} {shape} p={args.p} {args.dtype}: " + "  ".join(
            f"{m}: {statistics.median(t):.3f} ms x{statistics.median(b / a for a, b in zip(t, base)):.2f}"
            for m, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
