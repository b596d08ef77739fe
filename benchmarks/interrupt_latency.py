"""How fast Ctrl-C stops a long C++ OT call: seconds from SIGINT to the KeyboardInterrupt, per call and thread count.

The tests (tests/ops/test_interrupt.py) check only that a call stops long before it would have ended, so that a busy
machine cannot fail them; the latency itself (documented as about 0.1 s, docs/ops.md) is measured here:

    python -m benchmarks.interrupt_latency [--repeats 5]

Prints one line per call and thread count: the median and the worst latency over the repeats.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import threading
import time

import torch

import helo_fast as hf

DELAY_S = 0.3  # how long each call runs before the signal


def _sinkhorn():
    hf.sinkhorn(torch.rand(2, 64, 64), eps=0.1, n_iters=10**8)


def _ipot():
    hf.ipot(torch.rand(2, 64, 64), beta=0.1, n_iters=10**8)


def _gromov():
    hf.gromov_wasserstein(torch.rand(2, 36, 36), torch.rand(2, 36, 36), inner_iters=10**8)


CALLS = {"sinkhorn": _sinkhorn, "ipot": _ipot, "gromov_wasserstein": _gromov}


def stop_latency(call) -> float:
    """Seconds from a SIGINT sent DELAY_S into call() to the KeyboardInterrupt it raises."""
    sent = []

    def send():
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(DELAY_S, send)
    timer.start()
    try:
        call()
    except KeyboardInterrupt:
        return time.monotonic() - sent[0]
    finally:
        timer.cancel()
        timer.join()
    raise RuntimeError("the call ended without being interrupted")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, call in CALLS.items():
            latencies = [stop_latency(call) for _ in range(args.repeats)]
            print(
                f"{name:20s} threads={threads}  median {statistics.median(latencies) * 1e3:7.1f} ms  "
                f"worst {max(latencies) * 1e3:7.1f} ms"
            )


if __name__ == "__main__":
    main()
