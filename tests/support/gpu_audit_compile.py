"""Compile recorded Triton launches for sm_90 and sm_100, for tests/repo/test_gpu_audit.py (regression tests of kernels
the audit once found not compiling).

Run as ``python -m tests.support.gpu_audit_compile LAUNCHES.json`` (with TRITON_INTERPRET=0), where the file holds the
launches of benchmarks/gpu_audit/launches.recording: compiles each launch at its first autotune config in a child
process (an assertion inside Triton aborts its process: the row then says so) and prints one JSON row per compile.
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"


def main(path: str) -> int:
    from benchmarks.gpu_audit.launches import launchable_kernels
    from benchmarks.gpu_audit.triton_audit import specializations
    from benchmarks.gpu_audit.worker import run_jobs

    kernels = launchable_kernels()
    with open(path) as f:
        launches = json.load(f)
    payloads = []
    for launch in launches:
        for arch in (90, 100):
            job = specializations(launch, kernels[launch["kernel"]], arch)[0]
            payloads.append(
                dict(
                    kind="triton", key="", job=job.__dict__, row=dict(kernel=job.kernel, config=job.config(), arch=arch)
                )
            )
    for row in run_jobs(payloads, workers=1, timeout=600):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
