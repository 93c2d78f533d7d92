"""The layer order, written once: library modules import only from their own layer or the layers below.

Walks every ``prunelab/**/*.py`` with :mod:`ast` (no import side effects), so a new upward import, an import
circle between modules or a library module that reaches into :mod:`prunelab.cli` fails here with the offending
edge named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "prunelab"

# Top to bottom. A module may import from its own layer and any layer listed after it; never from one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("studies", "experiments"),
    ("report",),
    ("runs",),  # the run contract and results store: written by experiments, read by report
    ("stress",),
    ("recover",),
    ("prune", "export"),
    ("evaluate",),
    ("models", "data"),
    ("base",),  # top-level modules: atomic, console, errors, plotting, registry, scores, stats, table, ...
)
# Entry points that exist to sit above everything: ``python -m prunelab`` and the public facade ``prunelab.load``.
ENTRY_POINTS = {"prunelab", "prunelab.__main__"}

RANK = {package: len(LAYERS) - level for level, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "base"


def _import_graph() -> tuple[dict[str, set[str]], set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        package = module if module in packages else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if not name.startswith("prunelab"):
                    continue
                targets.add(name)
                targets.update(f"{name}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("prunelab"))
        graph[module] = {t for t in targets if t in files and t != module}
    return graph, packages


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph, _ = _import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module not in ENTRY_POINTS
        for target in targets
        if RANK[_layer(target)] > RANK[_layer(module)]
    )
    assert not upward, "upward imports (see the layer order in tests/base/test_layers.py):\n" + "\n".join(upward)


def test_library_never_imports_the_cli() -> None:
    graph, _ = _import_graph()
    offenders = sorted(
        f"{m} -> {t}" for m, ts in graph.items() if m not in ENTRY_POINTS and _layer(m) != "cli"
        for t in ts if _layer(t) == "cli"
    )
    assert not offenders, "\n".join(offenders)


def test_no_import_circles_between_modules() -> None:
    graph, packages = _import_graph()
    # A package's __init__ re-exporting its children is not a circle; edges into an __init__ are skipped.
    edges = {m: {t for t in ts if t not in packages} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                circles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize("layer", sorted(RANK))
def test_every_declared_layer_exists(layer: str) -> None:
    """A renamed package must be renamed here too, or the order above silently stops applying to it."""
    assert layer == "base" or (PACKAGE / layer).is_dir()
