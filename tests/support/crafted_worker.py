"""Loads crafted files in a child process with a memory cap: ``python tests/support/crafted_worker.py FAMILY FILE...``.

Imports first, then caps the address space at what the process maps now + ``HELO_CRAFTED_HEADROOM_MB``
(default 1024), then loads each file with FAMILY's loader, printing one JSON line per file:
{"file", "outcome": "ok" | "error", "type", "message"}. A crash or hang shows as a missing line (the
caller names the file that was started last: a "start" line precedes each).
"""

import json
import os
import resource
import sys


def _loaders():
    import numpy as np
    import pickle

    def check_plain(obj, depth=0):
        """Every leaf of a loaded pickle is builtin data or a plain numeric numpy object."""
        if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
            assert obj.dtype.kind in "biufc" and obj.dtype.fields is None, obj.dtype
        elif isinstance(obj, np.dtype):
            assert obj.kind in "biufc" and obj.fields is None, obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                check_plain(k, depth + 1), check_plain(v, depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            if depth < 200:
                for v in obj:
                    check_plain(v, depth + 1)
        else:
            assert isinstance(obj, (type(None), bool, int, float, complex, str, bytes, bytearray)), type(obj)

    def load_pickle(file):
        from helo_fast.data.safe_pickle import load_plain_pickle

        check_plain(load_plain_pickle(file))

    def load_checkpoint(file):
        from helo_fast.training.checkpoint import load_checked

        load_checked(file)

    def load_mat(file):
        from helo_fast.data.dmer import load_dmer_subject

        load_dmer_subject(file)

    def load_csv(file):
        from helo_fast.data.wesad import read_quest_csv

        read_quest_csv(file)

    def run_cli(file):
        """``file`` holds a JSON argv of ``helo-fast``: returns its exit status and what it wrote to stderr."""
        import contextlib
        import io
        from helo_fast.cli import main

        with open(file) as fh:
            argv = json.load(fh)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code
        return {"rc": rc, "stderr": err.getvalue()[-3000:]}

    return {
        "pickle": (load_pickle, pickle.UnpicklingError),
        "checkpoint": (load_checkpoint, None),
        "mat": (load_mat, ValueError),
        "csv": (load_csv, ValueError),
        "cli": (run_cli, None),
    }


def _cap_address_space(headroom: int) -> None:
    with open("/proc/self/status") as fh:
        mapped = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, mapped + headroom))


def main(family, files):
    import torch  # noqa: F401  (mapped before the cap: every family's loader module imports it)
    import helo_fast.training.checkpoint  # noqa: F401
    import helo_fast.training  # noqa: F401
    import scipy.io  # noqa: F401
    import scipy.io.matlab  # noqa: F401

    loader, _ = _loaders()[family]
    torch.set_num_threads(1)
    _cap_address_space(int(os.environ.get("HELO_CRAFTED_HEADROOM_MB", "1024")) << 20)
    for file in files:
        print(json.dumps({"start": file}), flush=True)
        try:
            record = {"file": file, "outcome": "ok", "detail": loader(file)}
        except BaseException as exc:  # noqa: B902  (the caller judges the class)
            record = {
                "file": file,
                "outcome": "error",
                "type": type(exc).__name__,
                "classes": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc)[:2000],
            }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
