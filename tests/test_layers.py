"""The package's shape: a module may import only from its own layer or those below, and no import cycle exists.

Imports are read from the source (including the lazy ones inside functions), so a violation fails here before it
can hide behind an import that happens to run late.
"""

from __future__ import annotations

import ast
from pathlib import Path

import steerlab

ROOT = Path(steerlab.__file__).parent

# Lowest first. A unit is a top-level module or a subpackage of steerlab.
LAYERS: list[set[str]] = [
    {"errors", "progress", "_version"},
    {"models"},
    {"core"},
    {"data"},
    {"interop"},
    {"runtime"},
    {"methods"},
    {"finetune"},
    {"experiment"},
    {"psr"},
    {"conditional"},
    {"files"},
    {"suite"},
    {"serve"},
    {"cli"},
    {"__init__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(("steerlab", *parts))] = path
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 or parts[1] == "__init__" else parts[1]


def _imports(path: Path, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("steerlab"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steerlab"):
            names.add(node.module)
            # `from steerlab.cli import psr` imports the module steerlab.cli.psr
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    known = _modules()
    # `from steerlab import x` runs the package's __init__, the top of the stack.
    names = {"steerlab.__init__" if name == "steerlab" else name for name in names}
    return {name for name in names if name in known and name != module}


def _graph() -> dict[str, set[str]]:
    return {module: _imports(path, module) for module, path in _modules().items()}


def test_every_module_has_a_layer() -> None:
    assert {_unit(module) for module in _modules()} <= set(RANK)


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(f"{module} imports {target}" for module, targets in _graph().items() for target in targets
                    if RANK[_unit(target)] > RANK[_unit(module)])
    assert upward == []


def test_no_import_cycle() -> None:
    graph = {module: {t for t in targets if not t.endswith("__init__")} for module, targets in _graph().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    # The checker itself can fail: upward imports in a written module, a lazy one included, are found.
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from steerlab.cli.common import ints\n    from steerlab import steer\n")
    found = _imports(source, "steerlab.core.probe")
    assert found == {"steerlab.cli.common", "steerlab.__init__"}
    assert all(RANK[_unit(target)] > RANK["core"] for target in found)
