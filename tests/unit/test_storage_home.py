"""Storage has one home: outside `opsgate/store/` no module composes SQL or runs a
statement on a connection or cursor. Domain modules call the store's named
functions and may name a `Connection` (the transaction they pass along), nothing
more of SQLAlchemy's.

The scan reads the source with `ast`. The one `.execute(` that may appear outside
the store is the gate's own one path (`Gate.execute`, what an agent, the SDK, the
HTTP route or the MCP backend calls, and `ProofRequest.execute`, the proof of such a
call), recognised by its receiver's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "opsgate"
STATEMENT_CALLS = {"execute", "executemany", "executescript", "exec_driver_sql"}
# Receivers of `.execute(` that are the gate's operation API, not a database's.
ONE_PATH = {"gate", "_gate", "backend", "ProofRequest"}
# What a domain module may import from SQLAlchemy: names of things, not SQL.
ALLOWED_SQLALCHEMY = {"Connection", "Row", "IntegrityError", "make_url"}


def _outside_store() -> list[Path]:
    return [p for p in sorted(ROOT.rglob("*.py")) if "store" not in p.relative_to(ROOT).parts[:1]]


def _receiver(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def statement_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of each call that runs a statement on something not the one path."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in STATEMENT_CALLS:
            continue
        if node.func.attr == "execute" and _receiver(node.func.value) in ONE_PATH:
            continue
        found.append((node.lineno, ast.unparse(node.func)))
    return found


def sql_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [
                (node.lineno, f"{node.module}.{a.name}")
                for a in node.names
                if a.name not in ALLOWED_SQLALCHEMY
            ]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sqlalchemy")]
    return found


def test_no_statement_runs_outside_the_store() -> None:
    offenders = []
    for path in _outside_store():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{path.relative_to(ROOT)}:{n}: {t}" for n, t in statement_calls(tree)]
    assert offenders == []


def test_no_sql_is_composed_outside_the_store() -> None:
    offenders = []
    for path in _outside_store():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{path.relative_to(ROOT)}:{n}: {t}" for n, t in sql_imports(tree)]
    assert offenders == []


def test_the_scan_finds_what_it_looks_for() -> None:
    """The scan itself: a statement on a connection, a cursor or a driver, and SQL
    built with SQLAlchemy, are found; the gate's own execute is not."""
    code = (
        "from sqlalchemy import select, Connection\n"
        "import sqlalchemy\n"
        "conn.execute(select(t))\n"
        "cur.executemany('INSERT', rows)\n"
        "self.store.conn.exec_driver_sql('DELETE FROM x')\n"
        "gate.execute(token, op)\n"
        "self._gate.execute(token, op)\n"
        "ProofRequest.execute(op, None)\n"
    )
    tree = ast.parse(code)
    assert [n for n, _ in statement_calls(tree)] == [3, 4, 5]
    assert sql_imports(tree) == [(1, "sqlalchemy.select"), (2, "sqlalchemy")]
