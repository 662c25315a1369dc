"""The package's shape: stages import only stages below them, no circle, small modules.

Every ``latentqa`` module belongs to one stage (:data:`STAGES`, lowest first). A module
may import modules of its own stage or of lower stages, never of a higher one, and the
import graph (function-level imports included) has no circle. These tests read the
source with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "latentqa"
MAX_LINES = 400

STAGES: list[tuple[str, list[str]]] = [
    (
        "foundation",
        [
            "errors",
            "embedded",
            "json_files",
            "typed_config",
            "package_data",
            "plots",
            "outdir",
            "questions",
            "conditions",
            "schedule",
        ],
    ),
    ("models", ["devices", "gguf_cache", "models", "layers"]),
    ("target", ["handle", "chat"]),
    ("read and write", ["capture", "patch"]),
    ("decoder", ["decoder"]),
    ("generation", ["generation"]),
    ("data", ["data"]),
    ("reader", ["reader", "scoring", "answering", "picks"]),
    ("train", ["train"]),
    ("steer", ["steer"]),
    ("evaluate", ["evals"]),
    ("serve", ["server"]),
    ("command line", ["cli", "__init__"]),
]
"""Stages, lowest first: a module's stage is that of its first dotted component under
``latentqa`` (``decoder.folder`` -> ``decoder``; the package's own ``__init__`` is the
top, since it re-exports the public API)."""

INDEPENDENT = [("train", "steer")]
"""Stages that share no code directly: what both need lives in a lower stage."""

RANK = {name: rank for rank, (_, names) in enumerate(STAGES) for name in names}


def module_files() -> dict[str, Path]:
    """``latentqa.x.y`` -> its file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def stage_key(module: str) -> str:
    parts = module.split(".")
    return "__init__" if parts == ["latentqa", "__init__"] or len(parts) == 1 else parts[1]


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``module`` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `from m import function` -> m
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    if "latentqa" in modules:  # the package's __init__
        modules["latentqa.__init__"] = modules.pop("latentqa")
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_stage(graph):
    missing = sorted({stage_key(m) for m in graph} - set(RANK))
    assert not missing, f"give these a stage in STAGES: {missing}"


def test_no_module_imports_a_higher_stage(graph):
    upward = [
        f"{module} ({STAGES[RANK[stage_key(module)]][0]}) imports {target} "
        f"({STAGES[RANK[stage_key(target)]][0]})"
        for module, targets in graph.items()
        for target in targets
        if RANK[stage_key(target)] > RANK[stage_key(module)]
    ]
    assert not upward, "\n".join(sorted(upward))


def test_independent_stages_do_not_import_each_other(graph):
    crossing = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        for pair in INDEPENDENT
        if {stage_key(module), stage_key(target)} == set(pair)
    ]
    assert not crossing, "\n".join(sorted(crossing))


def test_no_import_circle(graph):
    # Tarjan's strongly connected components: any component of 2+ modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_modules_stay_small():
    long = {
        str(path.relative_to(SRC)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    # The checks above pass vacuously if the graph is empty or misread: build a tiny
    # package with one upward import and one circle and check both are found.
    root = tmp_path / "latentqa"
    (root / "evals").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "evals" / "__init__.py").write_text("")
    (root / "errors.py").write_text("from latentqa.evals.x import f\n")
    (root / "evals" / "x.py").write_text("from latentqa.errors import E\n\ndef f(): ...\n")
    modules = {
        "latentqa.errors": root / "errors.py",
        "latentqa.evals.x": root / "evals" / "x.py",
    }
    assert imports_of("latentqa.errors", modules["latentqa.errors"], modules) == {
        "latentqa.evals.x"
    }
    assert imports_of("latentqa.evals.x", modules["latentqa.evals.x"], modules) == {
        "latentqa.errors"
    }
    assert RANK[stage_key("latentqa.evals.x")] > RANK[stage_key("latentqa.errors")]
