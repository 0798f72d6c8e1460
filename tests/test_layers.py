"""The layers of src/dicomcommit: every module has one, no import goes up, and imports form no cycle.

Imports are read from the source with ``ast`` (nothing is imported): top-level ones, those
inside functions and under ``if TYPE_CHECKING:``, relative ones resolved against the
importing module, and ``importlib.import_module("dicomcommit...")`` with a literal name.
``import a.b`` and ``from a.b import name`` count as importing ``a.b`` (a package counts as
its ``__init__``); ``from a import b`` counts as importing ``a.b`` when that is a module.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

PACKAGE = "dicomcommit"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# The layers, lowest first: a module may import modules of its own layer and of lower ones,
# never of a higher one. "x.*" stands for the package x (its __init__) and every module below
# it; a plain name for that module alone. Names that do not exist (yet) are fine here; a
# module that matches no entry fails test_every_module_has_a_layer: place new modules here
# deliberately.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "primitives",
        (
            "dicomcommit.errors",
            "dicomcommit.layout",
            "dicomcommit._faults",
            "dicomcommit._fs",
            "dicomcommit._gc",
            "dicomcommit._version",
            "dicomcommit.hashing",
            "dicomcommit.naming",
            "dicomcommit.scanning",
            "dicomcommit.synthetic",
            "dicomcommit.checks",
            "dicomcommit.locations",
            "dicomcommit.dicom.*",
        ),
    ),
    ("archives/manifests", ("dicomcommit.archives.*", "dicomcommit.manifests.*")),
    ("staging", ("dicomcommit.staging.*",)),
    ("committing", ("dicomcommit.committing.*",)),
    ("review", ("dicomcommit.review.*",)),
    ("receiving", ("dicomcommit.receiving.*",)),
    ("cli", ("dicomcommit.cli.*",)),
    ("api", ("dicomcommit", "dicomcommit.__main__")),
)

# Packages of one layer that must not import each other, although the layer allows it.
SEPARATE: tuple[frozenset[str], ...] = (frozenset({"dicomcommit.archives", "dicomcommit.manifests"}),)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}
    assert PACKAGE in found, f"no {SOURCE / '__init__.py'}"
    return found


def _resolve(name: str) -> str:
    """The module an import of *name* loads, as this test counts it: *name* itself when it is
    a module; else the nearest enclosing module (``from a import thing``: ``a``)."""
    known = modules()
    candidate = name
    while candidate and candidate not in known:
        candidate = candidate.rpartition(".")[0]
    return candidate or name


def _ours(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _imported_names(importer: str, path: Path) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of each import in the module *importer*, relative ones resolved."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(tree):  # every node: inside functions and `if TYPE_CHECKING:` too
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                up = node.level - 1
                assert up < len(parts), f"{path}:{node.lineno}: relative import beyond the top-level package"
                base = ".".join(parts[: len(parts) - up])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                # `from a import b`: the module a.b when there is one, else the name b of a
                yield (submodule if submodule in modules() else base), node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield node.args[0].value, node.lineno


@cache
def imports() -> tuple[Import, ...]:
    """Every import of a dicomcommit module by a dicomcommit module (self-imports left out)."""
    found: dict[tuple[str, str], Import] = {}
    for importer, path in modules().items():
        for name, line in _imported_names(importer, path):
            if not _ours(name):
                continue
            imported = _resolve(name)
            if imported != importer:
                found.setdefault((importer, imported), Import(importer, imported, line))
    return tuple(found.values())


def layer_of(module: str) -> int | None:
    """The index of *module*'s layer in LAYERS; None when no entry matches it."""
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith(".*"):
                package = pattern.removesuffix(".*")
                if module == package or module.startswith(package + "."):
                    return index
            elif module == pattern:
                return index
    return None


def _separate_package(module: str) -> str | None:
    """The package of SEPARATE that *module* is in (or is), if any."""
    for group in SEPARATE:
        for package in group:
            if module == package or module.startswith(package + "."):
                return package
    return None


def _describe(layer: int | None) -> str:
    return "no layer" if layer is None else f"layer {layer}"


def test_the_source_is_found_and_read() -> None:
    found = modules()
    assert len(found) > 10, sorted(found)
    # the reader sees a top-level import, so an empty graph is not a silent pass
    assert any(i.importer == PACKAGE for i in imports()), imports()


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(module for module in modules() if layer_of(module) is None)
    assert not unplaced, "modules in no layer (place them in LAYERS, tests/test_layers.py):\n  " + "\n  ".join(unplaced)


def test_no_import_goes_up_a_layer_or_across_separate_packages() -> None:
    wrong: list[str] = []
    for imp in sorted(imports(), key=lambda i: (i.importer, i.imported)):
        low, high = layer_of(imp.importer), layer_of(imp.imported)
        where = f"{modules()[imp.importer].relative_to(SOURCE.parent)}:{imp.line}"
        if low is None or high is None:
            if low is not None:  # an unplaced importer is reported by test_every_module_has_a_layer
                wrong.append(f"{imp.importer} -> {imp.imported} ({_describe(low)} -> {_describe(high)}) at {where}")
            continue
        if high > low:
            wrong.append(f"{imp.importer} -> {imp.imported} (layer {low} -> layer {high}) at {where}")
            continue
        mine, theirs = _separate_package(imp.importer), _separate_package(imp.imported)
        if mine is not None and theirs is not None and mine != theirs:
            wrong.append(
                f"{imp.importer} -> {imp.imported} (layer {low} -> layer {high}: {mine} and {theirs} "
                f"must not import each other) at {where}"
            )
    legend = ", ".join(f"{i} {name}" for i, (name, _) in enumerate(LAYERS))
    assert not wrong, f"imports against the layers (lowest first: {legend}):\n  " + "\n  ".join(wrong)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of *graph*, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """A shortest cycle through the first of *members* (one strongly connected component)."""
    start, inside = members[0], set(members)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & inside):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start} in {members}")


def test_module_imports_form_no_cycle() -> None:
    graph: dict[str, set[str]] = {module: set() for module in modules()}
    for imp in imports():
        if imp.imported in graph:
            graph[imp.importer].add(imp.imported)
    lines = {(i.importer, i.imported): i.line for i in imports()}
    cycles: list[str] = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        cycle = _shortest_cycle(graph, component)
        steps = ", ".join(f"{modules()[a].relative_to(SOURCE.parent)}:{lines[a, b]}" for a, b in pairwise(cycle))
        cycles.append(f"{' -> '.join(cycle)}  (imports at {steps}; in the cycle: {', '.join(component)})")
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    (component,) = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert component == ["a", "b", "c"]
    assert _shortest_cycle(graph, component) == ["a", "b", "c", "a"]
    assert _shortest_cycle({"a": {"b"}, "b": {"a"}}, ["a", "b"]) == ["a", "b", "a"]
