"""opsgate's modules import each other without cycles, so each part can be read
(and tested) below the parts that use it.

The graph is built from the source with `ast`: every import statement counts,
at module level, inside functions and under `if TYPE_CHECKING:` alike (a type
import is still a dependency), and relative imports are resolved. Importing
`a.b.c` runs `a/__init__` and `a/b/__init__` first; those implicit edges are not
counted, only the module named.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "opsgate"

Graph = dict[str, set[str]]


def modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__), Alembic scripts left out."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if "migrations" in parts:  # Alembic's scripts: loaded by Alembic, not imported
            continue
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def import_graph(root: Path, package: str) -> Graph:
    """Module -> the modules of `package` it imports."""
    known = modules(root, package)

    def resolve(name: str) -> str | None:
        """The module `name` is, or the innermost one it lies in (a name in it)."""
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {name: set() for name in known}
    for name, (path, is_package) in known.items():
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if _inside(a.name, package)]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                if not _inside(source, package):
                    continue
                for alias in node.names:  # `from pkg import mod` imports the module
                    full = f"{source}.{alias.name}"
                    targets.append(full if full in known else resolve(source))
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def collapse(graph: Mapping[str, Iterable[str]], depth: int) -> Graph:
    """The graph between units of `depth` name parts (2: `opsgate.identity`, `opsgate.gate`)."""

    def unit(name: str) -> str:
        return ".".join(name.split(".")[:depth])

    out: Graph = {}
    for source, targets in graph.items():
        out.setdefault(unit(source), set())
        for target in targets:
            out.setdefault(unit(target), set())
            if unit(target) != unit(source):
                out[unit(source)].add(unit(target))
    return out


def cycle_groups(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def a_cycle(graph: Mapping[str, Iterable[str]], group: list[str]) -> list[str]:
    """One cycle through the group's first member, as a path (first == last)."""
    members = set(group)
    start = group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to `start`
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    return [*paths[node], start]
                if child in members and child not in paths:
                    paths[child] = [*paths[node], child]
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{group} is not a cycle")


def describe(graph: Mapping[str, Iterable[str]], groups: list[list[str]]) -> str:
    return "\n".join(
        f"{len(g)} in a cycle, e.g. {' -> '.join(a_cycle(graph, g))}: {', '.join(g)}"
        for g in groups
    )


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, PACKAGE)


def test_no_module_imports_itself_back(graph: Graph) -> None:
    groups = cycle_groups(graph)
    assert not groups, "import cycles between opsgate's modules:\n" + describe(graph, groups)


# Packages whose modules still import each other round a loop (module by module
# there is no cycle): a low layer (keys, key ring, live state, store) would have
# to leave `identity` and `credentials`. This set may only shrink.
KNOWN_PACKAGE_LOOP = frozenset(
    {
        "opsgate.approvals",
        "opsgate.audit",
        "opsgate.credentials",
        "opsgate.identity",
        "opsgate.operations",
        "opsgate.secrets",
        "opsgate.state",
        "opsgate.store",
        "opsgate.trust",
    }
)


def test_no_package_joins_a_cycle_between_packages(graph: Graph) -> None:
    packages = collapse(graph, 2)
    groups = cycle_groups(packages)
    beyond = [g for g in groups if not set(g) <= KNOWN_PACKAGE_LOOP]
    assert not beyond, "new import cycles between opsgate's packages:\n" + describe(
        packages, beyond
    )
    assert len(groups) <= 1


def test_the_cli_modules_share_cli_common_only(graph: Graph) -> None:
    assert "opsgate.cli" not in graph["opsgate.cli_ops"]
    assert "opsgate.cli_common" in graph["opsgate.cli_ops"]
    assert {"opsgate.cli", "opsgate.cli_ops"}.isdisjoint(graph["opsgate.cli_common"])


def test_the_gate_is_imported_by_no_part_it_wires(graph: Graph) -> None:
    parts = ("opsgate.identity", "opsgate.credentials", "opsgate.trust", "opsgate.operations")
    users = sorted(m for m, targets in graph.items() if "opsgate.gate" in targets)
    assert not [m for m in users if m.startswith(parts)], users


def test_the_clock_stands_alone(graph: Graph) -> None:
    assert graph["opsgate.clock"] == {"opsgate.errors"}
    users = {m for m, targets in graph.items() if "opsgate.credentials.manager" in targets}
    assert {"opsgate.approvals.service", "opsgate.operators"}.isdisjoint(users)


# -- the checker itself finds what it must ------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checker_finds_cycles_of_every_import_form(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import x\n",
            # relative, inside a function
            "pkg/b.py": "def f():\n    from . import c\n",
            "pkg/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.d import Y\n"
            ),
            "pkg/sub/__init__.py": "",
            "pkg/sub/d.py": "import pkg.a\n",  # plain import closes the loop
            "pkg/e.py": "from pkg import a\nimport os\n",  # outside the loop
            "pkg/migrations/env.py": "import pkg.e\n",  # Alembic's: not a module
        },
    )
    g = import_graph(tmp_path, "pkg")
    assert g["pkg.b"] == {"pkg.c"} and g["pkg.c"] == {"pkg.sub.d"}
    assert g["pkg.e"] == {"pkg.a"} and "pkg.migrations.env" not in g
    groups = cycle_groups(g)
    assert groups == [["pkg.a", "pkg.b", "pkg.c", "pkg.sub.d"]]
    assert a_cycle(g, groups[0]) == ["pkg.a", "pkg.b", "pkg.c", "pkg.sub.d", "pkg.a"]
    assert "pkg.a -> pkg.b -> pkg.c -> pkg.sub.d -> pkg.a" in describe(g, groups)


def test_the_checker_sees_cycles_between_packages_only_when_collapsed(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/x/__init__.py": "",
            "pkg/x/low.py": "",
            "pkg/x/high.py": "from pkg.y.mid import m\n",
            "pkg/y/__init__.py": "",
            "pkg/y/mid.py": "from ..x.low import n\n",
        },
    )
    g = import_graph(tmp_path, "pkg")
    assert cycle_groups(g) == []
    assert cycle_groups(collapse(g, 2)) == [["pkg.x", "pkg.y"]]
