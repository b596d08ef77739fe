"""Issue 30's measurements, run once (a script, not a timed test): stopping each problem at convergence against a
batch-wide tolerance and against running every problem to the slowest one's count, and the backward of
grad="implicit" against the unrolled one at equal accuracy.

    .venv/bin/python benchmarks/ot_convergence.py [--batch 64] [--size 32] [--threads 1]

(One thread by default: on a shared 2-core machine torch's 2-thread elementwise ops wait on a busy core; the
implicit backward's ~1 ms of small ops measured ~300 ms there.)

1. A mixed-difficulty batch: cost U[0, 1] scaled per problem by 10**U(0, 2) at eps = 1, i.e. effective eps from 1
   to 0.01 (two decades); tol = 1e-6 (sum_j |sum_i P_ij - b_j|), float64. Rows: helo_fast cpp with tol (each
   problem stops on its own); helo_fast cpp with exactly the slowest problem's count for all (what a fixed-count
   or vmapped solver runs); POT 0.9.7 ``ot.batch.solve_batch`` (log_sinkhorn, torch backend; its batch-wide stop is
   on the change of the dual variables, so its violation is reported too); POT ``ot.sinkhorn`` (sinkhorn_log) one
   problem at a time with stopThr = tol.
2. Backward at eps_eff = 0.02 for every problem: implicit (tol 1e-9) against unrolled at T iterations; the error
   of the unrolled gradient w.r.t. cost relative to the implicit one, what autograd saves, and the backward time.
"""

import argparse
import time
import warnings

import torch

import helo_fast as hf
from memory import saved_tensor_bytes


def timed(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def violation(plan, b):
    return (plan.sum(1) - b).abs().sum(-1)


def stopping(batch, size, tol):
    gen = torch.Generator().manual_seed(0)
    scale = 10.0 ** (2 * torch.rand(batch, 1, 1, generator=gen, dtype=torch.float64))
    cost = torch.rand(batch, size, size, generator=gen, dtype=torch.float64) * scale
    a = torch.full((batch, size), 1.0 / size, dtype=torch.float64)
    b = a.clone()
    cap = 100000
    seconds, (plan, info) = timed(
        lambda: hf.sinkhorn(cost, a, b, eps=1.0, n_iters=cap, tol=tol, return_info=True, backend="cpp")
    )
    counts = info.iterations
    print(f"mixed batch B={batch} n=m={size} float64, eps_eff 1..0.01, tol={tol:g}")
    print(
        f"  counts: min {int(counts.min())} median {int(counts.median())} max {int(counts.max())}, "
        f"sum {int(counts.sum())}; max violation {float(info.violation.max()):.2e}"
    )
    print(f"  hf cpp, per-problem stop:        {seconds * 1e3:9.1f} ms  ({int(counts.sum())} problem-iterations)")
    slowest = int(counts.max())
    s_fixed, fixed = timed(lambda: hf.sinkhorn(cost, a, b, eps=1.0, n_iters=slowest, grad="none", backend="cpp"))
    print(
        f"  hf cpp, all to the slowest count: {s_fixed * 1e3:9.1f} ms  ({slowest * batch} problem-iterations, "
        f"max violation {float(violation(fixed, b).max()):.2e})"
    )
    try:
        import ot.batch

        s_pot, res = timed(
            lambda: ot.batch.solve_batch(
                cost, reg=1.0, a=a, b=b, max_iter=cap, tol=tol, method="log_sinkhorn", grad="detach"
            ),
            repeats=1,
        )
        pot_plan = res.plan
        print(
            f"  POT ot.batch (batch-wide tol):   {s_pot * 1e3:9.1f} ms  ({res.log['n_iter']} iterations for every "
            f"problem, max violation {float(violation(pot_plan, b).max()):.2e}; its stop: change of the potentials)"
        )
    except ImportError:
        print("  POT ot.batch: not installed")
    import ot

    start = time.perf_counter()
    for k in range(batch):
        ot.sinkhorn(
            a[k].numpy(), b[k].numpy(), cost[k].numpy(), 1.0, method="sinkhorn_log", numItermax=cap, stopThr=tol
        )
    print(f"  POT sinkhorn_log per problem:    {(time.perf_counter() - start) * 1e3:9.1f} ms")


def backward(batch, size):
    gen = torch.Generator().manual_seed(1)
    cost = torch.rand(batch, size, size, generator=gen, dtype=torch.float64)
    weight = torch.randn(batch, size, size, generator=gen, dtype=torch.float64)
    eps = 0.02

    def run(**kwargs):
        c = cost.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hf.OTConvergenceWarning)
            plan = hf.sinkhorn(c, eps=eps, backend="cpp", **kwargs)
        loss = (plan * weight).sum()
        start = time.perf_counter()
        loss.backward()
        return time.perf_counter() - start, c.grad

    def saved(**kwargs):
        return saved_tensor_bytes(lambda: hf.sinkhorn(cost.clone().requires_grad_(), eps=eps, backend="cpp", **kwargs))

    implicit = dict(n_iters=100000, tol=1e-9, grad="implicit")
    t_imp, g_imp = min((run(**implicit) for _ in range(3)), key=lambda r: r[0])
    print(
        f"backward B={batch} n=m={size} float64 eps={eps}: implicit (tol 1e-9) {t_imp * 1e3:.1f} ms, saves "
        f"{saved(**implicit) / 1e6:.2f} MB"
    )
    for iters in (100, 300, 1000, 3000):
        unrolled = dict(n_iters=iters, grad="unrolled")
        t_unr, g_unr = min((run(**unrolled) for _ in range(2)), key=lambda r: r[0])
        error = float((g_unr - g_imp).norm() / g_imp.norm())
        print(
            f"  unrolled T={iters:5d}: {t_unr * 1e3:8.1f} ms, saves {saved(**unrolled) / 1e6:7.2f} MB, "
            f"relative error vs implicit {error:.1e}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}")
    stopping(args.batch, args.size, 1e-6)
    backward(args.batch, args.size)
