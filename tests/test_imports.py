"""No import cycle in the effnet package, and every module imports on its own.

A cycle between two modules works only while something else happens to import them in the right
order, and the usual way around it, an import deferred into a function, hides the cycle instead of
removing it. Two checks:

- static: the import graph read from the sources with `ast` has no cycle. Module-level imports
  count, and so do imports deferred into a function, except in a module that imports no heavy
  library (torch, lightning, timm) at module level: there deferring is how it stays light
  (`python train.py --help` imports no torch), not a way around a cycle. Imports under
  `if TYPE_CHECKING:` only feed annotations and do not count.
- at run time: interpreters that import every module alone, each in its own random order.
"""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ROOT

SRC = ROOT / "src"
PACKAGE = "effnet"
HEAVY = frozenset({"torch", "torchvision", "torchmetrics", "lightning", "timm"})
ORDERS = 1  # passes over every module, each importing one module at a time in a different order


def module_names() -> list[str]:
    """Every module of the package, from the files of this checkout (not an installed copy)."""
    names = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def module_path(name: str) -> Path:
    path = SRC.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@dataclass
class Imports:
    """What importing one module imports (`top`) and what its functions import when they run
    (`deferred`), each effnet module with the line that imports it; `external`: the top-level
    names of the other libraries it imports at module level."""

    top: dict[str, int] = field(default_factory=dict)
    deferred: dict[str, int] = field(default_factory=dict)
    external: set[str] = field(default_factory=set)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def read_imports(name: str, modules: set[str]) -> Imports:
    path = module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found = Imports()

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: package.count(".") + 2 - node.level]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        # `from package import module` imports that module too
        return [base, *(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)]

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for stmt in child.orelse:
                    visit_one(stmt, deferred)
            else:
                visit_one(child, deferred)

    def visit_one(node: ast.AST, deferred: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in targets(node):
                # a package is imported before its modules, so an import of its own package is no edge
                if target in modules and target not in ancestors and target != name:
                    (found.deferred if deferred else found.top).setdefault(target, node.lineno)
                elif not target.startswith(f"{PACKAGE}.") and target != PACKAGE and not deferred:
                    found.external.add(target.split(".")[0])
            return
        visit(node, deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def import_graph() -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line"}, as the module docstring says which imports count."""
    names = module_names()
    imports = {n: read_imports(n, set(names)) for n in names}
    heavy = {n: bool(imports[n].external & HEAVY) for n in names}
    changed = True
    while changed:  # heavy also through the effnet modules it imports
        changed = False
        for n in names:
            if not heavy[n] and any(heavy[t] for t in imports[n].top):
                heavy[n] = changed = True
    graph = {}
    for n in names:
        edges = {**imports[n].top, **(imports[n].deferred if heavy[n] else {})}
        where = module_path(n).relative_to(ROOT)
        graph[n] = {target: f"{where}:{line}" for target, line in edges.items()}
    return graph


def loops(graph: dict[str, dict[str, str]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or not (Tarjan's strongly connected
    components of more than one module)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(groups, key=min)


def cycle(group: set[str], graph: dict[str, dict[str, str]]) -> list[str]:
    """The shortest closed path through the group's first module (breadth first)."""
    start = min(group)
    paths, queue = {start: [start]}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                return [*paths[v], start]
            if w in group and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise ValueError(f"{sorted(group)} is no loop")


def describe(group: set[str], graph: dict[str, dict[str, str]]) -> str:
    """The cycle, each import with its line, then the other imports between the group's modules."""
    path = cycle(group, graph)
    steps = list(zip(path, path[1:], strict=False))
    others = sorted((a, b) for a in group for b in graph[a] if b in group and (a, b) not in steps)
    lines = [f"  {a} -> {b}  ({graph[a][b]})" for a, b in steps]
    if others:
        lines += ["  and between them:", *(f"  {a} -> {b}  ({graph[a][b]})" for a, b in others)]
    return "\n".join(lines)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "effnet.data.folders" in graph["effnet.data.scan"]  # the graph is read
    found = loops(graph)
    assert not found, "import cycle(s):\n" + "\n\n".join(describe(g, graph) for g in found)


def test_the_cycle_check_names_the_modules_and_lines():
    graph = {
        "a": {"b": "a.py:3", "c": "a.py:4"},
        "b": {"c": "b.py:5"},
        "c": {"a": "c.py:9"},
        "d": {"a": "d.py:1"},
        "e": {},
    }
    assert loops(graph) == [{"a", "b", "c"}] and cycle({"a", "b", "c"}, graph) == ["a", "c", "a"]
    assert describe({"a", "b", "c"}, graph) == (
        "  a -> c  (a.py:4)\n  c -> a  (c.py:9)\n  and between them:\n  a -> b  (a.py:3)\n  b -> c  (b.py:5)"
    )
    assert loops({"a": {"b": ""}, "b": {}}) == []


# Each module is imported with no other effnet module loaded (they are all dropped from sys.modules
# after each), as a fresh interpreter would, without paying for torch's import again each time. One
# interpreter runs every order: torch's import is most of the time, and the machine may have 2 cores.
IMPORT_EACH = r"""
import importlib, json, sys, traceback
failed = 0
for order in json.loads(sys.argv[1]):
    for name in order:
        try:
            importlib.import_module(name)
        except Exception:
            failed += 1
            print(f"--- import {name} alone:", file=sys.stderr)
            traceback.print_exc()
        for loaded in [m for m in sys.modules if m == "effnet" or m.startswith("effnet.")]:
            del sys.modules[loaded]
sys.exit(failed)
"""


def test_every_module_imports_alone_in_any_order():
    names = module_names()
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    orders = [rng.sample(names, len(names)) for _ in range(ORDERS)]
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, json.dumps(orders)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"orders drawn with random.Random({seed}):\n{done.stdout}{done.stderr}"
