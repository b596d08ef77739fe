"""The documentation stays true to the tree: every path it names exists, nothing points outside the
repository, the README stays short, and every public op documents each of its arguments with a runnable example."""

import doctest
import inspect
import os
import re
import subprocess

import pytest

import helo_fast
import helo_fast._ops
import helo_fast.env
import helo_fast.functional
import helo_fast.metrics
import helo_fast.models.helo
import helo_fast.nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
TOP_LEVEL = ("helo_fast/", "csrc/", "kernels/", "benchmarks/", "tests/", "docs/")
ROOT_FILES = ("Makefile", "setup.py", "CMakeLists.txt", "pyproject.toml", "requirements.txt", "README.md")
# References to files a user of the repository does not have (the team's design folder, scratch space).
OUTSIDE = re.compile(r"\.\./shared|shared[/]design|HELO_SPEC\.md|METHOD\.md|/work/|/tmp/|/home/")


def doc_files():
    """README.md and every Markdown file under docs/."""
    files = [os.path.join(ROOT, "README.md")]
    files += sorted(os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md"))
    return files


def named_paths(text):
    """The repository paths a Markdown text names: `code` spans that start with a top-level folder or are a
    root file (placeholders such as <machine> or {a,b} skipped)."""
    paths = []
    for span in re.findall(r"`([^`\n]+)`", text):
        span = span.strip().rstrip(".,;:")
        if any(c in span for c in "<>{}* ()=") or "://" in span:
            continue
        if span.startswith(TOP_LEVEL) or span in ROOT_FILES:
            paths.append(span)
    return paths


def links(text):
    """The relative link targets of a Markdown text (images included), without their #anchors."""
    return [
        target.split("#")[0]
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if "://" not in target and not target.startswith("#")
    ]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_path_and_link_in_the_docs_exists(path):
    text = open(path, encoding="utf-8").read()
    missing = [p for p in named_paths(text) if not os.path.exists(os.path.join(ROOT, p))]
    here = os.path.dirname(path)
    for target in links(text):
        resolved = os.path.normpath(os.path.join(here, target))
        assert resolved.startswith(ROOT + os.sep), f"{target} points outside the repository"
        if not os.path.exists(resolved):
            missing.append(target)
    assert not missing, f"{os.path.relpath(path, ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_the_docs_name_no_path_outside_the_repository(path):
    text = open(path, encoding="utf-8").read()
    assert not OUTSIDE.findall(text)


def test_no_tracked_source_or_doc_points_at_the_design_folder():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked.stdout.split():
        if name.endswith((".py", ".md", ".h", ".cpp", ".cu", ".cuh", ".txt", ".toml", ".sh")) and os.path.exists(
            os.path.join(ROOT, name)
        ):
            text = open(os.path.join(ROOT, name), encoding="utf-8", errors="replace").read()
            if re.search(r"\.\./shared|shared[/]design|HELO_SPEC\.md|METHOD\.md", text):
                offenders.append(name)
    assert offenders == []


def test_readme_is_under_300_lines_and_links_the_docs():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) < 300
    for name in ("architecture.md", "ops.md", "performance.md", "gpu.md"):
        assert f"(docs/{name})" in text
    summary = text.split("<!-- performance-summary:begin -->")[1].split("<!-- performance-summary:end -->")[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    assert 0 < len(rows) <= 15


def test_the_op_index_has_a_row_for_every_public_op():
    text = open(os.path.join(DOCS, "architecture.md"), encoding="utf-8").read()
    index = text.split("## Op index")[1].split("\n## ")[0].split("\n\n")[1]  # the first table of the section
    rows = [line.split("|")[1].strip().strip("`") for line in index.splitlines() if line.startswith("| `")]
    assert sorted(rows) == sorted(helo_fast._ops.OPS)


KERNEL_BODY_BACKENDS = ["reference", "C++ CPU", "CUDA", "Triton"]


def _defines(path, name):
    """Whether the file ``path`` defines ``name``: a Python def or class; a C++/CUDA function (after its return
    type: a name, its parameters, a body; a call in an ``if`` does not count), struct or class."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    if path.endswith(".py"):
        return re.search(rf"^\s*(def|class)\s+{name}\b", text, re.M) is not None
    function = rf"[\w>*&)]\s+{name}\s*\((?:[^;{{}}]|\{{\}})*\)\s*(const\s*)?\{{"  # also with `= {}` defaults
    return bool(re.search(function, text) or re.search(rf"\b(struct|class)\s+{name}\b", text))


def _kernel_body_errors(cell):
    """What is wrong with one cell of the kernel-body table: it names no file, a file that does not exist, a function
    before any file, or a function its file does not define. Each `code` span is a path (a file all the names after
    it belong to) or a function name."""
    errors, current = [], None
    for span in re.findall(r"`([^`]+)`", cell):
        if span.startswith(TOP_LEVEL):
            current = span
            if not os.path.isfile(os.path.join(ROOT, span)):
                errors.append(f"{span} does not exist")
                current = None
        elif current is None:
            errors.append(f"{span} named before its file")
        elif not _defines(current, span):
            errors.append(f"{current} does not define {span}")
    if not re.search(r"`(" + "|".join(re.escape(top) for top in TOP_LEVEL) + ")", cell):
        errors.append("no file named")
    return errors


def test_the_kernel_body_table_names_existing_files_and_the_functions_they_define():
    header = open(os.path.join(DOCS, "architecture.md"), encoding="utf-8").read().split("| op | kernel body: ")[1]
    assert ["kernel body: " + b for b in KERNEL_BODY_BACKENDS] == [
        "kernel body: " + cell.strip() for cell in header.split("\n")[0].strip("| ").split("| kernel body: ")
    ]
    rows = _table("Op index", 1)
    assert sorted(row[0].strip("`") for row in rows) == sorted(helo_fast._ops.OPS)
    errors = {
        (row[0], backend): _kernel_body_errors(cell)
        for row in rows
        for backend, cell in zip(KERNEL_BODY_BACKENDS, row[1:], strict=True)
    }
    assert {where: e for where, e in errors.items() if e} == {}


PUBLIC_OPS = [getattr(helo_fast, name) for name in helo_fast.__all__ if inspect.isfunction(getattr(helo_fast, name))]
MODULES = [
    helo_fast.nn.LCDAttention,
    helo_fast.nn.FusedGromovWasserstein,
    helo_fast.nn.FusedSinkhorn,
    helo_fast.nn.FusedDropout,
    helo_fast.nn.SinkhornLoss,
    helo_fast.nn.GromovWassersteinLoss,
    helo_fast.models.helo.HeLo,
]


@pytest.mark.parametrize("obj", PUBLIC_OPS + MODULES, ids=lambda o: o.__name__)
def test_public_api_documents_every_argument_and_gives_an_example(obj):
    doc = inspect.getdoc(obj) or ""
    assert ">>> " in doc, "no example"
    signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    for name in signature.parameters:
        if name != "self":
            assert re.search(rf"^\s+{name}:", doc, re.M), f"argument {name} is not documented"
    if not inspect.isclass(obj):
        assert "Returns:" in doc


@pytest.mark.parametrize(
    "module",
    [helo_fast.functional, helo_fast.metrics, helo_fast.env, helo_fast.nn, helo_fast.models.helo],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _table(section, index=0):
    """The rows of the ``index``-th table of ``## section`` in docs/architecture.md, as lists of cell texts."""
    text = open(os.path.join(DOCS, "architecture.md"), encoding="utf-8").read()
    body = text.split(f"## {section}\n")[1].split("\n## ")[0]
    tables = [block.strip() for block in body.split("\n\n") if block.strip().startswith("|")]
    rows = [line.split("|")[1:-1] for line in tables[index].splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def _layers():
    """{path named in the layer table: its layer}; a path ending in / stands for every module under it."""
    layers = {}
    for layer, files, _ in _table("Layers"):
        for span in re.findall(r"`([^`]+)`", files):
            if span.startswith(("helo_fast/", "kernels/", "csrc/")):
                layers[span] = int(layer)
    return layers


def _modules():
    """Every Python module of the package: helo_fast/**.py and kernels/**.py (installed as helo_fast.kernels)."""
    found = []
    for top in ("helo_fast", "kernels"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            found += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names if n.endswith(".py")]
    return sorted(found)


def _layer_of(path, layers):
    owners = [p for p in layers if path == p or (p.endswith("/") and path.startswith(p))]
    return layers[max(owners, key=len)] if owners else None


def test_the_layer_table_names_every_module_and_only_modules_that_exist():
    layers = _layers()
    assert [p for p in layers if not os.path.exists(os.path.join(ROOT, p))] == []
    assert [m for m in _modules() if _layer_of(m, layers) is None] == []
    packages = {package.strip("`"): re.findall(r"`([^`/]+\.py)`", modules) for package, modules in _table("Layers", 1)}
    for package, names in packages.items():
        on_disk = sorted(n for n in os.listdir(os.path.join(ROOT, package)) if n.endswith(".py") and n != "__init__.py")
        assert sorted(names) == on_disk, package


def _imported_paths(path):
    """The package modules (repository paths) that module ``path`` imports, lazily imported ones included."""
    import ast

    parts = path[:-3].split("/")
    package = (["helo_fast"] if parts[0] == "kernels" else []) + parts[:-1]  # the package a relative import starts at
    names = []
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (package[: len(package) - node.level + 1] if node.level else []) + (node.module or "").split(".")
            base = [b for b in base if b]
            names += [base + [alias.name] for alias in node.names]  # a submodule, else a name of ``base``
    paths = []
    for name in names:
        if not name or name[0] != "helo_fast":
            continue
        if name[:2] == ["helo_fast", "_C"]:  # the compiled extension, built from csrc/
            paths.append("csrc/")
            continue
        relative = (["kernels"] + name[2:]) if name[1:2] == ["kernels"] else name
        while relative:
            for candidate in ("/".join(relative) + ".py", "/".join(relative) + "/__init__.py"):
                if os.path.exists(os.path.join(ROOT, candidate)):
                    paths.append(candidate)
                    break
            else:
                relative = relative[:-1]
                continue
            break
    return sorted(set(paths))


@pytest.mark.parametrize("module", _modules())
def test_no_module_imports_a_higher_layer(module):
    layers = _layers()
    mine = _layer_of(module, layers)
    upward = [(p, _layer_of(p, layers)) for p in _imported_paths(module) if _layer_of(p, layers) > mine]
    assert upward == [], f"{module} (layer {mine}) imports higher layers"
