"""tests/ops follows the rule at the top of tests/conftest.py: a file per public op or per property named there."""

import ast
import os
import re

import helo_fast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rule_names(kind: str) -> set:
    """The names the conftest rule lists in the parentheses after ``ops/test_<kind>.py``."""
    with open(os.path.join(ROOT, "tests", "conftest.py")) as f:
        doc = " ".join(ast.get_docstring(ast.parse(f.read())).split())
    listed = re.search(r"``ops/test_<" + kind + r">\.py``,? [^(]*\(([^)]*)\)", doc)
    assert listed, f"tests/conftest.py's docstring lists no ops/test_<{kind}>.py names"
    return {name.strip() for name in listed.group(1).split(",")}


def test_every_ops_file_is_an_op_or_a_listed_property():
    ops, properties = rule_names("op"), rule_names("property")
    assert ops <= set(dir(helo_fast)), f"the rule names ops helo_fast does not export: {ops - set(dir(helo_fast))}"
    assert not ops & properties
    names = os.listdir(os.path.join(ROOT, "tests", "ops"))
    files = {name[len("test_") : -len(".py")] for name in names if name.startswith("test_") and name.endswith(".py")}
    assert files - ops - properties == set(), "tests/ops files outside the conftest rule (add them to its list)"
    assert (ops | properties) - files == set(), "the conftest rule lists files tests/ops does not have"
