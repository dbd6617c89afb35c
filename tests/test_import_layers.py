"""The package's import graph: no module cycles, and the layers stay in order.

Parses every module of ``src/nmkit`` with ``ast`` (no import is executed), counts every ``import`` /
``from ... import`` of an nmkit module anywhere in the file - module level and inside functions alike, since a
function-level import hides a cycle rather than removing it - and checks:

* no cycle between modules;
* no cycle between sub-packages except the documented back-edge ``segment -> generate`` (``segment.train``
  initialises a network from a diffusion checkpoint through ``generate.pretrain``, while ``generate`` builds
  on ``segment``'s preprocessing, losses and networks);
* the layer rules: ``io``/``errors``/``provenance``/``devices`` at the bottom; ``catalog`` below the analyses; ``serve`` and
  ``report`` may use the analyses but not the CLI; only ``cli``/``__main__``/``commands`` import ``commands``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nmkit"

#: sub-packages each layer must not import (first part of the module name below ``nmkit``)
ANALYSES = {"segment", "radiomics", "quality", "stats", "generate", "metrics", "phantoms"}
FORBIDDEN = {
    "io": ANALYSES | {"catalog", "serve", "report", "commands", "cli", "demo"},
    "errors": ANALYSES | {"io", "catalog", "serve", "report", "commands", "cli", "demo", "provenance"},
    "provenance": ANALYSES | {"io", "catalog", "serve", "report", "commands", "cli", "demo"},
    "devices": ANALYSES | {"io", "catalog", "serve", "report", "commands", "cli", "demo", "provenance"},
    "catalog": {"segment", "radiomics", "quality", "stats", "generate", "serve", "report", "commands", "cli", "demo"},
    "serve": {"commands", "cli"},
    "report": {"commands", "cli"},
}
#: every package except these must not import the CLI layer
CLI_LAYER = {"commands", "cli"}
CLI_USERS = {"commands", "cli", "__main__"}
#: package-level back-edges that are known and accepted (see the module docstring)
ALLOWED_PACKAGE_EDGES = {("segment", "generate")}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """nmkit modules imported anywhere in the file (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import nmkit.io.image.x` -> the deepest known module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph()


def test_graph_sees_function_level_imports(graph):
    """The parser must see imports inside functions, or the checks below would prove nothing."""
    assert len(graph) > 100
    assert "nmkit.generate.pretrain" in graph["nmkit.segment.train"]  # imported inside train()
    assert "nmkit.errors" in graph["nmkit.cli"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_cycles(graph):
    cycles = _cycles(graph)
    detail = ["; ".join(f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp) for comp in cycles]
    assert not cycles, "import cycles between modules:\n" + "\n".join(detail)


def test_no_package_cycles_beyond_the_known_one(graph):
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = _layer(module), _layer(target)
            if a != b and (a, b) not in ALLOWED_PACKAGE_EDGES:
                packages.setdefault(a, set()).add(b)
        packages.setdefault(_layer(module), set())
    assert not _cycles(packages), f"cycles between sub-packages: {_cycles(packages)}"


def test_layer_order(graph):
    violations = []
    for module, targets in sorted(graph.items()):
        layer = _layer(module)
        forbidden = FORBIDDEN.get(layer, set()) | (set() if layer in CLI_USERS else CLI_LAYER)
        violations += [f"{module} -> {target}" for target in sorted(targets) if _layer(target) in forbidden]
    assert not violations, "layer violations:\n" + "\n".join(violations)
