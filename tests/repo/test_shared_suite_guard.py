"""The guard of the shared OT suite (tests/conftest.py, ot_solver_suite.shared_tests_missing): an op module that runs
the suite but misses one of its tests fails to collect, naming the test; a module that does not run the suite is left
alone. Checked on a scratch test directory that uses the real conftest and suite."""

import os

import pytest

import ot_solver_suite

pytest_plugins = ["pytester"]

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT_DIR = os.path.join(TESTS_DIR, "support")
SHARED = sorted(name for name in vars(ot_solver_suite) if name.startswith("test_"))


def op_module(op, names):
    """Source of a test module for ``op`` that imports the solver fixture and the shared tests ``names``."""
    return f"OP = {op!r}\nfrom ot_solver_suite import solver, {', '.join(names)}  # noqa: F401\n"


@pytest.fixture
def scratch(pytester, monkeypatch):
    """A pytester directory with tests/conftest.py's text as its conftest, the test helpers importable."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([SUPPORT_DIR, os.path.dirname(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    )
    with open(os.path.join(TESTS_DIR, "conftest.py")) as f:
        pytester.makeconftest(f.read())
    return pytester


def test_a_module_missing_a_shared_test_fails_to_collect_naming_it(scratch):
    scratch.makepyfile(test_ipot=op_module("ipot", [n for n in SHARED if n != "test_opcheck"]))
    result = scratch.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        ["*test_ipot.py (OP = 'ipot') does not collect these tests of ot_solver_suite.py: test_opcheck;*"]
    )


def test_a_module_with_every_shared_test_and_one_outside_the_suite_collect(scratch):
    scratch.makepyfile(
        test_sinkhorn=op_module("sinkhorn", SHARED), test_ot_other="OP = 'sinkhorn'\n\ndef test_own():\n    pass\n"
    )
    result = scratch.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-2000:]
    assert not [line for line in result.outlines if "does not collect" in line]
