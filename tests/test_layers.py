"""Dependencies point one way: from the stages down to their building blocks.

Every module's imports are read with `ast`, those inside functions included (an import hidden in a
function is still a dependency), and two things are checked:

- no import cycle between modules;
- every import between layers points down. A layer is a subpackage or top-level module; where one
  subpackage holds both a building block and a stage (`data.records` and `data.prepare`, `eval.metrics`
  and `eval.evaluate`, `benchmarks.task` and `benchmarks.runner`), its modules are placed one by one.

Imports of third-party libraries are not checked (optional heavy ones are imported lazily on purpose).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module belongs to the layer of the longest name here that is it or a package above it
# ("codetune" itself only by exact name: the package's public API sits on top of everything).
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["codetune.errors", "codetune.config", "codetune.manifest", "codetune.progress",
                    "codetune.pyparse", "codetune.devices", "codetune.sandbox"]),
    ("records and formats", ["codetune.data.records", "codetune.data.format"]),
    ("metrics", ["codetune.eval"]),
    ("models", ["codetune.models"]),
    ("benchmark tasks", ["codetune.benchmarks"]),
    ("data steps", ["codetune.data"]),
    ("generation", ["codetune.generation"]),
    ("benchmark runner", ["codetune.benchmarks.runner"]),
    ("training", ["codetune.training"]),
    ("stages", ["codetune.eval.evaluate", "codetune.eval.select", "codetune.translate", "codetune.complete"]),
    ("self-training", ["codetune.selftraining"]),
    ("serve", ["codetune.serve"]),
    ("cli", ["codetune.cli", "codetune.__main__", "codetune"]),
]  # fmt: skip


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((SRC / "codetune").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imports_of(name: str, is_package: bool, source: str, known: set[str]) -> dict[str, int]:
    """The codetune modules that module `name` imports (at any depth of its code, functions included),
    each with the line of one such import."""
    package = name if is_package else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import codetune.x.y` of a module: x.y; of a name: x
                target = target.rpartition(".")[0]
            if target.startswith("codetune") and target != name:
                found.setdefault(target, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    files = module_files()
    return {
        name: imports_of(name, path.name == "__init__.py", path.read_text(encoding="utf-8"), set(files))
        for name, path in files.items()
    }


def layer_of(module: str) -> int:
    best, rank = "", -1
    for i, (_, names) in enumerate(LAYERS):
        for prefix in names:
            exact = module == prefix
            inside = prefix != "codetune" and module.startswith(prefix + ".")
            if (exact or inside) and len(prefix) > len(best):
                best, rank = prefix, i
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return rank


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50  # really read the package
    assert cycles(graph) == []


def test_every_layer_names_modules_that_exist() -> None:
    modules = set(module_files())
    assert [name for _, names in LAYERS for name in names if name not in modules] == []


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, targets in import_graph().items():
        for target, line in targets.items():
            if layer_of(target) > layer_of(module):
                upward.append(
                    f"{module}:{line} imports {target} "
                    f"({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})"
                )
    assert upward == []


def test_the_check_sees_what_it_must() -> None:
    """Function-level and relative imports count; an upward import and a cycle are caught."""
    source = "import os\n\ndef f():\n    from codetune.serve import app\n\nfrom . import records\n"
    known = {"codetune.serve", "codetune.serve.app", "codetune.data", "codetune.data.records"}
    found = imports_of("codetune.data.steps", False, source, known)
    assert found == {"codetune.serve.app": 4, "codetune.data.records": 6}
    assert layer_of("codetune.serve.app") > layer_of("codetune.data.steps")
    assert (
        layer_of("codetune.data.records")
        < layer_of("codetune.data.steps")
        == layer_of("codetune.data.prepare")
    )
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
