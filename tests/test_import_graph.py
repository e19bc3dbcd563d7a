"""The package's import graph, read from the source with ``ast``: no cycles, a leaf registry.

What is checked, precisely:

- Nodes: every module of ``tilesegment`` (``pkg/__init__.py`` is the node ``pkg``).
- Edges: every ``import tilesegment.x`` / ``from tilesegment.x import y`` /
  ``from .x import y`` / ``from . import x`` anywhere in a module: at module level AND inside
  functions, classes and ``try``/``if`` blocks, with relative imports resolved. ``from P
  import y`` is an edge to ``P.y`` when ``P/y.py`` (or ``P/y/__init__.py``) exists, else to
  ``P``. Imports under ``if TYPE_CHECKING:`` are left out: they never run. Implicit imports
  of parent packages (``import a.b.c`` runs ``a/b/__init__.py`` first) are not edges: they
  cannot close a cycle that the explicit edges do not show, since a package's
  ``__init__`` is itself a node with its own edges.
- The module-level graph (the imports that run when a module is imported) of the whole
  package is acyclic.
- The whole graph (function-level edges too) has no cycle through a module of
  ``tilesegment.models``.
- ``tilesegment.models.registry`` imports no module of ``tilesegment.models`` at all (no
  model code, no plugin loader), so it can be imported from anywhere without a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tilesegment"
ROOT = PACKAGE.name


def package_root(path: Path) -> Path:
    """The folder holding the top package of ``path``."""
    while (path.parent / "__init__.py").exists():
        path = path.parent
    return path.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(package_root(path)).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, module_level_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (only those run when the module is imported
    with ``module_level_only``: none inside a function), except under
    ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if module_level_only and isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(package: Path = PACKAGE, module_level_only: bool = False,
                 ) -> dict[str, set[str]]:
    """``{module: {tilesegment modules it imports}}`` for every module under ``package``;
    ``module_level_only``: only the imports that run when the module itself is imported."""
    files = {_module_name(p): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")),
                                  module_level_only):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            for alias in node.names:
                child = f"{parent}.{alias.name}"
                targets.add(child if child in files else parent)
        graph[name] = {t for t in targets if t in files and t != name}
        # ``import tilesegment.a.b`` names a module; anything else outside the package is dropped
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each a set of modules
    that import one another, directly or not), sorted; ``[]`` for an acyclic graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The reader itself: relative, function-level and ``from pkg import submodule`` imports
    make edges; ``TYPE_CHECKING`` imports do not; a two-module cycle is found."""
    pkg = tmp_path / "tilesegment"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import g\n")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tilesegment.other\n"
        "def g():\n    try:\n        from tilesegment.sub import leaf\n    except ImportError:\n"
        "        pass\n")
    (pkg / "other.py").write_text("import tilesegment.top\n")
    graph = import_graph(pkg)
    assert graph == {"tilesegment": set(), "tilesegment.sub": {"tilesegment.sub.leaf"},
                     "tilesegment.sub.leaf": {"tilesegment.top"},
                     "tilesegment.top": {"tilesegment.sub.leaf"},
                     "tilesegment.other": {"tilesegment.top"}}
    assert cycles(graph) == [["tilesegment.sub.leaf", "tilesegment.top"]]
    assert cycles(import_graph(pkg, module_level_only=True)) == []
    assert import_graph(pkg, module_level_only=True)["tilesegment.top"] == set()


def test_no_module_level_import_cycle():
    """Importing any module of the package never re-enters a half-initialised one."""
    graph = import_graph(module_level_only=True)
    assert len(graph) > 30
    assert cycles(graph) == []


def test_models_take_part_in_no_import_cycle():
    """With function-level imports too, no cycle passes through ``tilesegment.models``:
    the registry, the model modules and the plugin loader import one another one way only.
    (Cycles elsewhere in the package are the business of the modules concerned.)"""
    graph = import_graph()
    assert "tilesegment.models.registry" in graph
    through_models = [c for c in cycles(graph)
                      if any(m.startswith("tilesegment.models") for m in c)]
    assert through_models == []


def test_the_registry_is_a_leaf():
    """The registry imports nothing of ``tilesegment.models``: not the model modules, not
    the plugin loader, not even the spec (only under ``TYPE_CHECKING``)."""
    imported = import_graph()["tilesegment.models.registry"]
    assert imported <= {"tilesegment.errors"}, imported


def with_registry_loads(graph: dict[str, set[str]], package: Path = PACKAGE,
                        ) -> dict[str, set[str]]:
    """``graph`` plus the imports the writer registry makes by name: each ``"module:Class"``
    value of its ``BUILTIN`` dict (loaded with ``importlib`` on first use) is an edge of
    ``tilesegment.write.registry``, which ``ast`` alone does not see."""
    registry = "tilesegment.write.registry"
    tree = ast.parse((package / "write" / "registry.py").read_text(encoding="utf-8"))
    loaded: set[str] = set()
    for node in ast.walk(tree):
        target = (node.target if isinstance(node, ast.AnnAssign)
                  else node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "BUILTIN" and isinstance(
                node.value, ast.Dict):
            loaded |= {v.value.partition(":")[0] for v in node.value.values
                       if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    return {**graph, registry: graph.get(registry, set()) | (loaded & set(graph))}


def write_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """The import cycles (function-level imports and the registry's loads included) that
    pass through a module of ``tilesegment.write``."""
    graph = with_registry_loads(import_graph(package), package)
    return [c for c in cycles(graph) if any(m.startswith("tilesegment.write") for m in c)]


def test_write_takes_part_in_no_import_cycle():
    """With function-level imports and the registry's loads by name, no cycle passes through
    ``tilesegment.write``: the writers use the leaf checks (``write.integrity``), never the
    package or ``write.verify``, which sit above the registry (the cycle ``write`` →
    ``geotiff_output`` → ``verify`` → ``write`` is gone)."""
    graph = with_registry_loads(import_graph())
    loads = graph["tilesegment.write.registry"]
    assert {"tilesegment.write.zarr_output", "tilesegment.write.geotiff_output"} <= loads
    assert write_cycles() == []
    for writer in ("zarr_output", "geotiff_output", "base", "integrity", "stores"):
        imported = graph[f"tilesegment.write.{writer}"]
        assert not imported & {"tilesegment.write", "tilesegment.write.verify",
                               "tilesegment.write.registry"}, (writer, imported)
