"""The package layout holds: no import cycle among the project's modules, and imports point one way,
``workflows -> pipeline -> tiles``.

Imports are read from the source with :mod:`ast`, not by importing anything, and every import counts:
module-level, inside a function (a lazy import is still a dependency, and still a cycle when the other side
imports back), and under ``if TYPE_CHECKING:``. ``from a.b import c`` is an edge to ``a.b.c`` where ``c`` is a
submodule, else to ``a.b``. Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``; those
implicit edges are not drawn, since a package's ``__init__`` importing its own submodules is no cycle in
practice (``tiles/__init__.py`` re-exports ``tiles.grid``).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tiles", "pipeline", "workflows")

# What each package may not import: project packages above it, and (tiles) the heavy libraries, so that its
# tests need neither GDAL nor a model nor a cluster.
FORBIDDEN = {
    "tiles": ("pipeline", "workflows", "rasterio", "torch", "dask", "distributed"),
    "pipeline": ("workflows",),
    "workflows": (),
}


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module under ``packages`` by dotted name (a package by its own name, for its ``__init__``)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a (possibly relative) ``from`` import names."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imported_names(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """Every absolute module name ``module`` imports anywhere in its source: project modules resolved to the
    most precise module that exists, other libraries as written."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in modules else base)
    return names


def _project_module(name: str, modules: Mapping[str, Path]) -> str | None:
    """The project module ``name`` runs: itself, or the closest enclosing package that exists."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (self-imports dropped)."""
    modules = project_modules(root, packages)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {_project_module(name, modules) for name in imported_names(module, path, modules)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def tangles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted: the sets of modules that
    all reach each other through imports (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
    return sorted(components)


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per tangle, as a closed path ``[a, b, ..., a]``: a shortest one from the tangle's first
    module back to itself, so that a report reads as a loop to break."""
    return [_loop(component[0], set(component), graph) for component in tangles(graph)]


def describe_cycles(graph: Mapping[str, set[str]], packages: Iterable[str] = PACKAGES) -> list[str]:
    """A line per tangle touching ``packages``: one loop, and every module of the tangle if there are more."""
    lines = []
    for component in tangles(graph):
        if not any(m.split(".")[0] in packages for m in component):
            continue
        line = " -> ".join(_loop(component[0], set(component), graph))
        if len(component) > 2:
            line += f"  (tangle of {len(component)}: {', '.join(component)})"
        lines.append(line)
    return lines


def _loop(first: str, component: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest import path from ``first`` back to itself inside ``component`` (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parents[path[-1]])
                    return [*reversed(path), first]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{first}: not on a cycle")  # a component of two or more always has one


def layering_violations(root: Path) -> list[str]:
    """``module imports name`` for each import a package's :data:`FORBIDDEN` list refuses."""
    modules = project_modules(root)
    found = []
    for module, path in modules.items():
        forbidden = FORBIDDEN[module.split(".")[0]]
        for name in sorted(imported_names(module, path, modules)):
            if name.split(".")[0] in forbidden:
                found.append(f"{module} imports {name}")
    return sorted(found)


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(REPO)
    found = [c for c in tangles(graph) if any(m.split(".")[0] == package for m in c)]
    assert not found, "import cycle(s):\n" + "\n".join(describe_cycles(graph, [package]))


def test_imports_point_one_way() -> None:
    """tiles imports nothing from pipeline or workflows (nor rasterio, torch, Dask); pipeline nothing from
    workflows."""
    assert layering_violations(REPO) == []


def test_every_package_is_seen() -> None:
    """The checks above read real modules (a wrong root would make them pass on nothing)."""
    modules = project_modules(REPO)
    assert {"tiles.grid", "pipeline.models.contract", "pipeline.models.loader"} <= set(modules)
    assert "pipeline.models.contract" in import_graph(REPO)["pipeline.models.loader"]


# ----------------------------------------------------------------------------- the checker on fake trees


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


def test_a_function_level_import_closes_a_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/models/__init__.py": "",
        "pipeline/models/a.py": "from pipeline.models.b import thing\n",
        "pipeline/models/b.py": "def f():\n    from pipeline.models import a\n    return a\n",
        "pipeline/models/c.py": "import pipeline.models.a\n",
    })
    assert find_cycles(import_graph(root, ["pipeline"])) == [["pipeline.models.a", "pipeline.models.b",
                                                               "pipeline.models.a"]]


def test_relative_imports_and_package_reexports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "tiles/__init__.py": "from tiles.grid import plan\n",
        "tiles/grid.py": "from . import blend\n",
        "tiles/blend.py": "from .grid import plan\n",
    })
    graph = import_graph(root, ["tiles"])
    assert graph == {"tiles": {"tiles.grid"}, "tiles.grid": {"tiles.blend"}, "tiles.blend": {"tiles.grid"}}
    assert find_cycles(graph) == [["tiles.blend", "tiles.grid", "tiles.blend"]]


def test_a_forbidden_lazy_import_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "tiles/__init__.py": "",
        "tiles/grid.py": "def f():\n    import torch.nn\n",
        "pipeline/__init__.py": "",
        "pipeline/run.py": "if True:\n    from workflows import scene\n",
        "workflows/__init__.py": "",
        "workflows/scene.py": "from pipeline import run\n",
    })
    assert layering_violations(root) == ["pipeline.run imports workflows.scene", "tiles.grid imports torch.nn"]


if __name__ == "__main__":  # check another checkout: python tests/test_layout.py /path/to/tree
    tree = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    problems = describe_cycles(import_graph(tree)) + layering_violations(tree)
    print("\n".join(problems) or "no import cycle, imports point one way")
    sys.exit(1 if problems else 0)
