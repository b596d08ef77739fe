"""Compile jobs in a child process with a memory cap and a per-job time limit (a pathological kernel can make ptxas
take minutes and many GiB: that is a finding, reported as a compile error, never a hung or swapped-out CI machine).

``run_jobs(payloads, ...)`` splits the jobs over ``workers`` children (``python -m benchmarks.gpu_audit.worker``),
each compiling its share in order and printing one JSON row per job; a job over ``timeout`` seconds gets its child
killed (with its ptxas) and an error row, and a new child takes the rest.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time

MEMORY_CAP = 4 << 30  # bytes of address space per child (ptxas included); a compile needing more is a finding


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _start(payloads):
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONUNBUFFERED="1")
    env.pop("HELO_TRITON_NUM_WARPS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.gpu_audit.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_limit_memory,
    )
    proc.stdin.write(json.dumps(payloads))
    proc.stdin.close()
    return proc


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_jobs(payloads: list[dict], workers: int, timeout: float, on_row=None) -> list[dict]:
    """Rows for ``payloads`` (each {"kind": "triton" | "cuda", ...}), in input order."""
    rows: list = [None] * len(payloads)
    queues = [list(range(i, len(payloads), workers)) for i in range(workers)]
    active = {}  # fd -> [proc, queue, position, started, buffer]
    for queue in queues:
        if queue:
            proc = _start([payloads[i] for i in queue])
            active[proc.stdout.fileno()] = [proc, queue, 0, time.monotonic(), ""]
    while active:
        ready, _, _ = select.select(list(active), [], [], 1.0)
        for fd in ready:
            state = active[fd]
            chunk = os.read(fd, 1 << 16).decode()
            if not chunk:  # the child ended: anything left unanswered failed with it
                proc, queue, pos = state[0], state[1], state[2]
                proc.wait()
                for index in queue[pos:]:
                    rows[index] = dict(
                        payloads[index]["row"],
                        error=f"compile worker exited ({proc.returncode}),"
                        f" e.g. out of memory (cap {MEMORY_CAP >> 30} GiB)",
                    )
                    pos += 1
                del active[fd]
                continue
            state[4] += chunk
            while "\n" in state[4]:
                line, state[4] = state[4].split("\n", 1)
                index = state[1][state[2]]
                rows[index] = json.loads(line)
                if on_row:
                    on_row(rows[index])
                state[2] += 1
                state[3] = time.monotonic()
        now = time.monotonic()
        for fd in list(active):
            proc, queue, pos, started, _ = active[fd]
            if pos < len(queue) and now - started > timeout:
                _kill(proc)
                index = queue[pos]
                rows[index] = dict(payloads[index]["row"], error=f"compile took over {timeout:.0f} s (killed)")
                if on_row:
                    on_row(rows[index])
                del active[fd]
                rest = queue[pos + 1 :]
                if rest:
                    new = _start([payloads[i] for i in rest])
                    active[new.stdout.fileno()] = [new, rest, 0, time.monotonic(), ""]
    return rows


def _compile(payload: dict) -> dict:
    if payload["kind"] == "triton":
        from benchmarks.gpu_audit.triton_audit import Job, compile_job

        job = Job(**{k: tuple(tuple(x) for x in v) if isinstance(v, list) else v for k, v in payload["job"].items()})
        return compile_job(job)
    from benchmarks.gpu_audit.cuda_audit import compile_source

    return {"rows": compile_source(payload["source"], payload["archs"], payload["workdir"])}


def main() -> int:
    for payload in json.loads(sys.stdin.read()):
        try:
            row = _compile(payload)
        except Exception as exc:
            row = dict(payload["row"], error=f"{type(exc).__name__}: {exc}")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
