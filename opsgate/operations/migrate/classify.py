"""Findings per statement, from the real parsers: pglast (PostgreSQL) and sqlglot (SQLite).

Pure: text in, statements with findings out. The classifier knows a fixed set of
statement shapes; anything else — a statement neither parser understands, a generic
`Command`, a `DO` block, a function body, a SET, a GRANT — is "needs review", which is
destructive. So a statement can only be called safe by being recognised as safe.

The statements returned are the exact text the runner executes, one at a time: what
was classified is what runs. A drop (or truncate, or unbounded DML) of an object
created earlier in the same file is not destructive: nothing that existed before is
lost.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, TypeVar

import pglast
import sqlglot
from pglast import ast as pg
from pglast import enums as pge
from pglast.stream import RawStream
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from opsgate.operations.migrate.codes import code
from opsgate.store.migration_target import HISTORY_TABLE, LOCK_TABLE

Dialect = Literal["postgresql", "sqlite"]
_E = TypeVar("_E", bound=IntEnum)
DIALECTS: tuple[Dialect, ...] = ("postgresql", "sqlite")
_NAME_MAX = 80


class _NoCommandFallbackWarnings(logging.Filter):
    """sqlglot logs a warning whenever it falls back to a generic Command; for us that
    is a finding (needs review), not a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_NoCommandFallbackWarnings())


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    message: str
    destructive: bool
    severity: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "destructive": self.destructive,
            "severity": self.severity,
        }


def finding(name: str, subject: str = "") -> Finding:
    c = code(name)
    message = f"{c.title}: {subject}" if subject else c.title
    return Finding(c.code, message, c.destructive, c.severity)


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a migration file: its exact text and what it was found to do."""

    index: int  # 1-based within its file
    sql: str
    kind: str  # the parser's name for it, e.g. "DropStmt" or "Drop"
    findings: tuple[Finding, ...]
    transactional: bool = True

    @property
    def destructive(self) -> bool:
        return any(f.destructive for f in self.findings)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "sql": self.sql,
            "kind": self.kind,
            "destructive": self.destructive,
            "transactional": self.transactional,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True, slots=True)
class FileAnalysis:
    statements: tuple[Statement, ...]

    @property
    def transactional(self) -> bool:
        return all(s.transactional for s in self.statements)

    @property
    def destructive(self) -> bool:
        return any(s.destructive for s in self.statements)

    @property
    def errors(self) -> tuple[tuple[Statement, Finding], ...]:
        return tuple((s, f) for s in self.statements for f in s.findings if f.severity == "error")


def classify(text: str, dialect: Dialect) -> FileAnalysis:
    """Split `text` into statements and classify each; file-level rules last."""
    if dialect == "postgresql":
        raw = list(_postgres_statements(text))
    elif dialect == "sqlite":
        raw = list(_sqlite_statements(text))
    else:  # a programming error: dialects come from validated config
        raise ValueError(f"unsupported dialect {dialect!r}")
    statements = [
        Statement(i, sql, kind, tuple(found), transactional)
        for i, (sql, kind, found, transactional) in enumerate(raw, start=1)
    ]
    # A statement that cannot run in a transaction runs alone, outside one: mixed with
    # others, a failure half-way would leave the file half-applied with no rollback.
    outside = [s for s in statements if not s.transactional]
    if outside:
        extra = finding("OG303") if len(statements) == 1 else finding("OG302")
        statements = [
            Statement(s.index, s.sql, s.kind, (*s.findings, extra), s.transactional)
            if not s.transactional
            else s
            for s in statements
        ]
    return FileAnalysis(tuple(statements))


# -- shared bookkeeping ------------------------------------------------------------------

_Raw = tuple[str, str, list[Finding], bool]


@dataclass
class _Created:
    """Objects created by earlier statements of the same file, by name as written
    (SQLite's folded to lower case): `public.t` and `t` are not taken for one table,
    since `t` resolves through the search path (a `$user` schema, made with `CREATE
    SCHEMA AUTHORIZATION CURRENT_USER`, comes before public). A name that does not
    match counts as pre-existing (the safe direction). Forgetting goes the other way:
    a drop or rename of `s.t` may be of the object created as `t` (and vice versa), so
    it forgets every relation called `t`, whatever its schema."""

    tables: set[str] = field(default_factory=set)
    columns: set[tuple[str, str]] = field(default_factory=set)
    objects: set[tuple[str, str]] = field(default_factory=set)  # (kind, name)
    constraints: dict[str, str] = field(default_factory=dict)  # name -> kind
    dropped_indexes: set[str] = field(default_factory=set)
    #: Whether a name may be recorded at all (PostgreSQL: see `_pg_countable`).
    countable: Callable[[str], bool] = lambda name: True

    def add_table(self, name: str) -> None:
        if self.countable(name):
            self.tables.add(name)

    def add_column(self, table: str, column: str) -> None:
        if self.countable(table) and self.countable(_qualify(column)):
            self.columns.add((table, column))

    def add_object(self, kind: str, name: str) -> None:
        if self.countable(_qualify(name) if kind == "schema" else name):
            self.objects.add((kind, name))

    def add_constraint(self, name: str, kind: str) -> None:
        if self.countable(_qualify(name)):
            self.constraints[name] = kind

    def forget_all(self) -> None:
        """Every name may now reach something else (a schema renamed or dropped: a
        qualified name, or the search path, now leads elsewhere): none counts."""
        self.tables.clear()
        self.columns.clear()
        self.objects.clear()
        self.constraints.clear()

    def forget_unqualified(self) -> None:
        """A new schema may be the `$user` one (named like the role, which we cannot
        know), first on the search path: an unqualified name written before may now
        resolve to another object."""

        def bare(name: str) -> bool:
            return len(_NAME_PART.findall(name)) <= 1

        self.tables = {t for t in self.tables if not bare(t)}
        self.columns = {(t, c) for t, c in self.columns if not bare(t)}
        self.objects = {(k, n) for k, n in self.objects if k == "schema" or not bare(n)}

    def has_column(self, table: str, column: str) -> bool:
        return table in self.tables or (table, column) in self.columns

    def has_relname(self, name: str) -> bool:
        """Might `name` be a table created here, in whatever schema it was written?"""
        rel = _relname(name)
        return any(_relname(t) == rel for t in self.tables)

    def forget(self, name: str) -> None:
        """The name no longer holds what this file created (dropped, renamed away, or
        a pre-existing relation renamed onto it): a later drop of it loses data. Tables,
        views, indexes and sequences share one namespace, so no relation of that name
        counts as created any more, in any schema."""
        rel = _relname(name)
        self.tables = {t for t in self.tables if _relname(t) != rel}
        self.columns = {(t, c) for t, c in self.columns if _relname(t) != rel}
        self.objects = {(k, n) for k, n in self.objects if k == "schema" or _relname(n) != rel}

    def rename(self, old: str, new: str) -> bool:
        """A relation renamed, whatever the statement called it (PostgreSQL's ALTER
        INDEX or ALTER SEQUENCE renames a table too): the new name holds what this file
        created under the old one, if it did; else nothing. True if it did."""
        table = old in self.tables
        kinds = {k for k, n in self.objects if n == old and k != "schema"}
        columns = {(new, c) for t, c in self.columns if t == old}
        self.forget(old)
        self.forget(new)
        if table:
            self.add_table(new)
            self.columns |= {(t, c) for t, c in columns if self.countable(new)}
        for k in kinds:
            self.add_object(k, new)
        return table or bool(kinds)

    def rename_column(self, table: str, old: str, new: str) -> None:
        """`new` holds the column `old` was; if that was not created here, a pre-existing
        column now answers to `new`, through whatever name its table is reached by."""
        created = self.has_column(table, old)
        self.drop_column(table, old)
        self.drop_column(table, new)
        if created:
            self.add_column(table, new)

    def drop_column(self, table: str, column: str) -> None:
        rel = _relname(table)
        self.columns = {(t, c) for t, c in self.columns if not (_relname(t) == rel and c == column)}

    def reach_existing(self) -> None:
        """Rows that existed before now hang off a table created here (an existing
        table attached as its partition, an existing table's foreign key that cascades
        from it). Partitions, inheritance and foreign keys between the new tables are
        not tracked, so a drop, truncate or DML of any of them may reach those rows:
        none counts as created here any more, nor do their columns."""
        self.tables.clear()
        self.columns.clear()


#: One part of a name made by `_qualify`: bare, or quoted with its quotes doubled.
_NAME_PART = re.compile(r'"(?:[^"]|"")*"|[^."]+')


def _qualify(*parts: str) -> str:
    """One string for a possibly qualified name; a part holding a dot or a quote is
    quoted, so the table `"public.t"` is never taken for `public.t`."""
    return ".".join('"' + p.replace('"', '""') + '"' if "." in p or '"' in p else p for p in parts)


def _relname(name: str) -> str:
    """The last part of a `_qualify`d name: the relation's own name, without a schema."""
    parts = _NAME_PART.findall(name)
    return str(parts[-1]) if parts else name


#: SQLite folds ASCII letters only (`K`, not the Kelvin sign U+212A that str.lower()
#: also turns into `k`); so does PostgreSQL for unquoted names in UTF-8.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(name: str) -> str:
    """A name as the database compares it case-insensitively: ASCII letters folded."""
    return name.translate(_ASCII_LOWER)


#: pglast cuts identifiers at 63 bytes of UTF-8, the server at 63 bytes of the
#: database's encoding (up to 4 bytes a character, or 1 for LATIN1's 'é'): a name that
#: either may cut, or a cut of a longer one, is never taken as created here.
_PG_NAME_BYTES = 60


def _pg_countable(name: str) -> bool:
    """May a PostgreSQL name count as created here? Not if some encoding could cut it
    (each non-ASCII character counted as 4 bytes), nor if it holds a non-ASCII capital:
    a single-byte server folds unquoted ones in its locale, pglast does not."""
    for part in _NAME_PART.findall(name):
        if sum(1 if ord(c) < 128 else 4 for c in part) >= _PG_NAME_BYTES:
            return False
        if any(ord(c) >= 128 and c.lower() != c for c in part):
            return False
    return True


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _shown(name: str) -> str:
    return name if len(name) <= _NAME_MAX else name[: _NAME_MAX - 3] + "..."


# -- PostgreSQL (pglast) -----------------------------------------------------------------

#: Functions a DML statement may call without "needs review": built-ins with no effect
#: outside the value they return. Anything else (pg_sleep, set_config, dblink_exec,
#: pg_terminate_backend, lo_import, a user function) could do anything.
PG_SAFE_FUNCTIONS = _words(
    """
    abs age array_agg array_length array_position array_to_string avg bit_length bool_and
    bool_or btrim cardinality ceil ceiling char_length character_length clock_timestamp
    coalesce concat concat_ws count currval date_part date_trunc decode dense_rank encode
    every extract first_value floor format gen_random_uuid generate_series initcap
    json_agg json_build_array json_build_object json_object_agg jsonb_agg jsonb_build_array
    jsonb_build_object jsonb_object_agg jsonb_set jsonb_strip_nulls lag last_value lead
    left length lower lpad ltrim make_date make_interval make_timestamp make_timestamptz
    max md5 min mod nextval now ntile nullif octet_length position power random rank
    regexp_match regexp_replace repeat replace reverse right round row_number rpad rtrim
    split_part sqrt statement_timestamp string_agg string_to_array strpos substr substring
    sum timeofday to_char to_date to_json to_jsonb to_number to_timestamp
    transaction_timestamp translate trim trunc unnest upper
    """
)

#: Defaults that do not force a table rewrite when a column is added (PG11+ stores
#: a non-volatile default in the catalogue).
_PG_STABLE_DEFAULTS = frozenset(
    {"now", "statement_timestamp", "transaction_timestamp", "current_timestamp"}
)

_PG_DML = (pg.InsertStmt, pg.UpdateStmt, pg.DeleteStmt, pg.SelectStmt)


def _pg_walk(node: Any, skip: tuple[type, ...] = ()) -> Iterator[pg.Node]:
    if isinstance(node, (list, tuple)):
        for item in node:
            yield from _pg_walk(item, skip)
    elif isinstance(node, pg.Node):
        if skip and isinstance(node, skip):
            return
        yield node
        for name in getattr(type(node), "__slots__", ()):
            yield from _pg_walk(getattr(node, name, None), skip)


def _pg_strings(items: Any) -> str:
    if isinstance(items, pg.String):
        return str(items.sval)
    if isinstance(items, pg.ObjectWithArgs):
        return _pg_strings(items.objname)
    if isinstance(items, pg.TypeName):
        return _pg_strings(items.names)
    if isinstance(items, (list, tuple)):
        parts = [str(p.sval) for p in items if isinstance(p, pg.String)]
        if len(parts) == len(items):
            return _qualify(*parts)
    return "?"


# The tables the gate keeps its own migration bookkeeping in, on every target.
_BOOKKEEPING = frozenset({HISTORY_TABLE, LOCK_TABLE})


def _bookkeeping(names: Iterator[object]) -> list[Finding]:
    """OG202 for a statement naming the gate's history or lock table (any case, any
    schema): a migration that edits them could mark others applied or skip the lock."""
    touched = sorted({str(n) for n in names if str(n or "").lower() in _BOOKKEEPING})
    return [finding("OG202", f"the gate's migration bookkeeping ({_shown(t)})") for t in touched]


def _reissues_values(options: Any) -> str | None:
    """What, among a sequence's (or an identity's) new options, can hand out a value
    again: RESTART, a negative INCREMENT (counting down through values rows hold) or
    CYCLE (wrapping around to the start); None when nothing does."""
    for o in options or ():
        if not isinstance(o, pg.DefElem):
            continue
        arg = o.arg
        if o.defname == "restart":
            return "RESTART"
        if o.defname == "cycle" and getattr(arg, "boolval", True) is not False:
            return "CYCLE"
        if o.defname == "increment":
            value = getattr(arg, "ival", None)
            if value is None:
                value = getattr(arg, "fval", "0")
            if str(value).lstrip().startswith("-"):
                return "a negative INCREMENT"
    return None


def _pg_rel(rv: pg.RangeVar | None) -> str:
    if rv is None:
        return "?"
    name = str(rv.relname)
    return _qualify(str(rv.schemaname), name) if rv.schemaname else _qualify(name)


def _pg_funcname(call: pg.FuncCall) -> str:
    parts = [str(p.sval) for p in call.funcname or () if isinstance(p, pg.String)]
    if len(parts) == 2 and parts[0] == "pg_catalog":
        parts = parts[1:]
    return ".".join(parts)


def _pg_unsafe_calls(node: Any) -> list[str]:
    return sorted(
        {
            name
            for n in _pg_walk(node)
            if isinstance(n, pg.FuncCall) and (name := _pg_funcname(n)) not in PG_SAFE_FUNCTIONS
        }
    )


def _pg_row_dependent(where: Any, target: pg.RangeVar | None, others: Any = None) -> bool:
    """Does the WHERE read a column of the target row? A predicate that does not
    (`WHERE true`, `WHERE 1 = 1`, `WHERE EXISTS (...)`) selects all rows or none.
    With other relations in scope (`USING`, `FROM`) an unqualified column may be
    theirs, so only a column qualified with the target's name (its alias, when it has
    one: the alias hides the name) counts."""
    if where is None or target is None:
        return False
    if target.alias is not None:
        names: set[tuple[str | None, ...]] = {(str(target.alias.aliasname),)}
    else:
        names = {(str(target.relname),)}
        if target.schemaname:
            names.add((str(target.schemaname), str(target.relname)))
    if not others:
        names.add(())
    taken = _pg_refnames(others)
    for n in _pg_walk(where, skip=(pg.SubLink, pg.SelectStmt)):
        if isinstance(n, pg.ColumnRef):
            fields = tuple(n.fields or ())
            qualifier = tuple(f.sval if isinstance(f, pg.String) else None for f in fields[:-1])
            if qualifier in names and not (qualifier and qualifier[-1] in taken):
                return True
    return False


def _pg_always(where: Any) -> bool:
    """The obvious tautologies (not tautologies in general): `x = x`, `x >= x`,
    `x <= x`, `x IS NOT DISTINCT FROM x`, `x IS NOT NULL` (`NOT x IS NULL`), `true`,
    under NOT NOT, an OR with any such branch or an AND of only such branches."""
    if isinstance(where, pg.BoolExpr):
        op = _enum(pge.BoolExprType, where.boolop)
        args = list(where.args or ())
        if op == pge.BoolExprType.OR_EXPR:
            return any(_pg_always(a) for a in args)
        if op == pge.BoolExprType.AND_EXPR:
            return bool(args) and all(_pg_always(a) for a in args)
        inner = args[0] if len(args) == 1 else None
        if isinstance(inner, pg.NullTest):
            return _enum(pge.NullTestType, inner.nulltesttype) == pge.NullTestType.IS_NULL
        if isinstance(inner, pg.BoolExpr) and inner.boolop == pge.BoolExprType.NOT_EXPR:
            twice = list(inner.args or ())
            return len(twice) == 1 and _pg_always(twice[0])
        return False
    if isinstance(where, pg.NullTest):
        return _enum(pge.NullTestType, where.nulltesttype) == pge.NullTestType.IS_NOT_NULL
    if isinstance(where, pg.A_Const):
        return isinstance(where.val, pg.Boolean) and bool(where.val.boolval)
    if isinstance(where, pg.A_Expr) and where.lexpr is not None and where.rexpr is not None:
        kind = _enum(pge.A_Expr_Kind, where.kind)
        operator = _pg_strings(where.name)
        same = _pg_same(where.lexpr, where.rexpr)
        if kind == pge.A_Expr_Kind.AEXPR_OP and operator in ("=", ">=", "<="):
            return same
        return kind == pge.A_Expr_Kind.AEXPR_NOT_DISTINCT and same
    return False


def _pg_same(a: Any, b: Any) -> bool:
    """The same expression, written alike (locations aside)."""
    try:
        return bool(RawStream()(a) == RawStream()(b))
    except Exception:  # noqa: BLE001 - an expression pglast cannot print: not the same
        return False


def _pg_refnames(items: Any) -> set[str]:
    """The names the relations of a USING or FROM list answer to (over-counted: any
    relation name or alias in them)."""
    found: set[str] = set()
    for n in _pg_walk(items, skip=(pg.SubLink, pg.SelectStmt)):
        if isinstance(n, pg.RangeVar):
            found.add(str(n.relname))
        if isinstance(n, pg.Alias):
            found.add(str(n.aliasname))
    return found


class _Postgres:
    def __init__(self) -> None:
        self.created = _Created(countable=_pg_countable)

    def statement(self, node: pg.Node) -> tuple[list[Finding], bool]:
        """Findings for one parsed statement, and whether it may run in a transaction."""
        handler: Callable[[Any], tuple[list[Finding], bool]] | None = getattr(
            self, "_" + type(node).__name__, None
        )
        if handler is None:
            return [finding("OG202", type(node).__name__)], _pg_transactional(node)
        found, transactional = handler(node)
        found.extend(self._cte_writes(node))
        found.extend(_bookkeeping(n.relname for n in _pg_walk(node) if isinstance(n, pg.RangeVar)))
        # A CHECK, a default or an index expression runs its functions too.
        found.extend(f for f in self._calls(node) if f not in found)
        return found, transactional

    def _cte_writes(self, node: pg.Node) -> list[Finding]:
        return [
            finding("OG104", str(n.ctename))
            for n in _pg_walk(node)
            if isinstance(n, pg.CommonTableExpr)
            and isinstance(n.ctequery, (pg.InsertStmt, pg.UpdateStmt, pg.DeleteStmt, pg.MergeStmt))
        ]

    def _calls(self, node: Any) -> list[Finding]:
        unsafe = _pg_unsafe_calls(node)
        return [finding("OG202", "calls " + _shown(", ".join(unsafe)))] if unsafe else []

    # DDL -------------------------------------------------------------------------------

    def _CreateStmt(self, node: pg.CreateStmt) -> tuple[list[Finding], bool]:
        table = _pg_rel(node.relation)
        # IF NOT EXISTS may have created nothing; a temporary table shadows the real
        # one of that name, which `public.<name>` still reaches. A partition of an
        # existing table is reached by foreign keys to its parent, and an UPDATE of
        # the parent moves existing rows into it.
        parents = [_pg_rel(r) for r in node.inhRelations or ()] if node.partbound else []
        if (
            not node.if_not_exists
            and not _pg_temp(node.relation)
            and all(p in self.created.tables for p in parents)
        ):
            self.created.add_table(table)
            for elt in node.tableElts or ():
                if isinstance(elt, pg.Constraint) and elt.conname:
                    self.created.add_constraint(str(elt.conname), _pg_contype(elt))
        else:
            self._cascades(node.tableElts)
        return [], True

    def _CreateTableAsStmt(self, node: pg.CreateTableAsStmt) -> tuple[list[Finding], bool]:
        into = node.into
        if into is not None and not node.if_not_exists and not _pg_temp(into.rel):
            self.created.add_table(_pg_rel(into.rel))
        return self._calls(node.query), True

    def _CreateSchemaStmt(self, node: pg.CreateSchemaStmt) -> tuple[list[Finding], bool]:
        if node.schemaElts:  # statements nested in the schema: not looked into
            return [finding("OG202", "CREATE SCHEMA with nested statements")], True
        self.created.forget_unqualified()
        if not node.if_not_exists and node.schemaname:
            self.created.add_object("schema", str(node.schemaname))
        return [], True

    def _ViewStmt(self, node: pg.ViewStmt) -> tuple[list[Finding], bool]:
        name = _pg_rel(node.view)
        if node.replace:  # the definition of a view not created here is lost
            if ("view", name) in self.created.objects:
                return [], True
            return [finding("OG105", f"view {_shown(name)} replaced")], True
        if not _pg_temp(node.view):
            self.created.add_object("view", name)
        return [], True

    def _IndexStmt(self, node: pg.IndexStmt) -> tuple[list[Finding], bool]:
        table = _pg_rel(node.relation)
        found: list[Finding] = []
        existing = table not in self.created.tables
        name = str(node.idxname) if node.idxname else ""
        schema = node.relation.schemaname if node.relation is not None else None
        if name:  # the index lives in its table's schema
            name = _qualify(str(schema), name) if schema else _qualify(name)
        if existing and node.unique:
            replaced = name and name in self.created.dropped_indexes
            found.append(finding("MF102" if replaced else "MF101", name or table))
        if existing and not node.concurrent:
            found.append(finding("PG101", name or table))
        if name and not node.if_not_exists:
            self.created.add_object("index", name)
        return found, not node.concurrent

    def _DropStmt(self, node: pg.DropStmt) -> tuple[list[Finding], bool]:
        kind = _enum(pge.ObjectType, node.removeType)
        found: list[Finding] = []
        # CASCADE also drops what depends on the object, which may have existed before
        # (a view re-pointed at it with CREATE OR REPLACE): as for TRUNCATE, never "new".
        cascade = _enum(pge.DropBehavior, node.behavior) == pge.DropBehavior.DROP_CASCADE
        created = _Created() if cascade else self.created
        for obj in node.objects or ():
            name = _pg_strings(obj)
            if kind == pge.ObjectType.OBJECT_TABLE:
                if name not in created.tables:
                    found.append(finding("DS102", _shown(name)))
                self.created.forget(name)
            elif kind == pge.ObjectType.OBJECT_SCHEMA:
                if ("schema", name) not in created.objects:
                    found.append(finding("DS101", _shown(name)))
                # Its names (and, for the `$user` schema, unqualified ones) now
                # resolve elsewhere.
                self.created.forget_all()
            else:
                label = kind.name.removeprefix("OBJECT_").lower().replace("_", " ")
                new = (label, name) in created.objects
                if kind == pge.ObjectType.OBJECT_INDEX:
                    self.created.dropped_indexes.add(name)
                    if not new and not node.concurrent:
                        found.append(finding("PG102", _shown(name)))
                if not new:
                    found.append(finding("OG105", f"{label} {_shown(name)}"))
                if kind in _PG_RELATIONS:
                    self.created.forget(name)
                else:
                    self.created.objects.discard((label, name))
        return found, not node.concurrent

    def _RenameStmt(self, node: pg.RenameStmt) -> tuple[list[Finding], bool]:
        kind = _enum(pge.ObjectType, node.renameType)
        t = pge.ObjectType
        table = _pg_rel(node.relation) if node.relation is not None else ""
        if kind in _PG_RELATIONS:
            # Any of these renames whatever relation has the name (ALTER INDEX renames
            # a table too); the new name stays in the old one's schema.
            schema = node.relation.schemaname if node.relation is not None else None
            newname = str(node.newname)
            new = _qualify(str(schema), newname) if schema else _qualify(newname)
            if self.created.rename(table, new) or kind in (t.OBJECT_INDEX, t.OBJECT_SEQUENCE):
                return [], True
            return [finding("BC101", f"{_shown(table)} to {_shown(newname)}")], True
        if kind == t.OBJECT_SCHEMA:
            self.created.forget_all()  # its name may now be another schema's
            return [finding("BC101", f"schema {_shown(_pg_strings(node.subname))}")], True
        if kind in (t.OBJECT_COLUMN, t.OBJECT_ATTRIBUTE):
            column = str(node.subname)
            created = self.created.has_column(table, column)
            self.created.rename_column(table, column, str(node.newname))
            if created:
                return [], True
            return [finding("BC102", f"{_shown(table)}.{_shown(column)}")], True
        if kind in (
            t.OBJECT_TABCONSTRAINT,
            t.OBJECT_TRIGGER,
            t.OBJECT_TYPE,
            t.OBJECT_DOMAIN,
        ):
            return [], True
        return [finding("OG202", f"rename of {kind.name.removeprefix('OBJECT_').lower()}")], True

    def _AlterTableStmt(self, node: pg.AlterTableStmt) -> tuple[list[Finding], bool]:
        table = _pg_rel(node.relation)
        existing = table not in self.created.tables
        found: list[Finding] = []
        transactional = True
        at = pge.AlterTableType
        for cmd in node.cmds or ():
            sub = at(cmd.subtype)
            column = str(cmd.name) if cmd.name else ""
            if sub == at.AT_AddColumn:
                found.extend(self._add_column(table, existing, cmd.def_, cmd.missing_ok))
            elif sub == at.AT_DropColumn:
                if not self.created.has_column(table, column):
                    found.append(finding("DS103", f"{_shown(table)}.{_shown(column)}"))
                self.created.drop_column(table, column)
            elif sub == at.AT_AlterColumnType:
                if not self.created.has_column(table, column):
                    found.append(finding("PG301", f"{_shown(table)}.{_shown(column)}"))
                    found.append(finding("OG106", f"{_shown(table)}.{_shown(column)}"))
                using = getattr(cmd.def_, "raw_default", None)
                found.extend(self._calls(using))
            elif sub == at.AT_SetNotNull:
                if not self.created.has_column(table, column):
                    found.append(finding("MF104", f"{_shown(table)}.{_shown(column)}"))
                    found.append(finding("PG303", f"{_shown(table)}.{_shown(column)}"))
            elif sub == at.AT_AddConstraint:
                found.extend(self._add_constraint(table, existing, cmd.def_))
            elif sub == at.AT_DropConstraint:
                kind = self.created.constraints.get(column)
                if kind is None:
                    found.append(finding("CD101", f"{_shown(column)} on {_shown(table)}"))
            elif sub in (at.AT_SetIdentity, at.AT_AddIdentity) and not self.created.has_column(
                table, column
            ):
                # Like ALTER SEQUENCE ... RESTART: later inserts may take keys rows hold.
                opts = cmd.def_ if isinstance(cmd.def_, (list, tuple)) else ()
                if _reissues_values(opts) or sub == at.AT_AddIdentity:
                    found.append(finding("OG202", f"identity of {_shown(table)}.{_shown(column)}"))
            elif sub == at.AT_AttachPartition:
                self._attach(existing, cmd.def_)
            elif sub == at.AT_DetachPartition and getattr(cmd.def_, "concurrent", False):
                transactional = False
            elif sub not in _PG_PLAIN_ALTERS:
                found.append(finding("OG202", sub.name.removeprefix("AT_")))
        return found, transactional

    def _attach(self, existing: bool, cmd: Any) -> None:
        part = getattr(cmd, "name", None)
        name = _pg_rel(part) if isinstance(part, pg.RangeVar) else "?"
        if name not in self.created.tables:
            # A drop, truncate or DELETE of the parent (or of whatever reaches it) now
            # reaches existing rows.
            self.created.reach_existing()
        elif existing:
            # Foreign keys to the existing parent now cascade into the new partition,
            # and an UPDATE of the parent moves existing rows into it.
            self.created.forget(name)

    def _cascades(self, node: Any) -> None:
        """A foreign key on a table that is not new, whose ON DELETE or ON UPDATE
        changes its rows (CASCADE, SET NULL, SET DEFAULT), referencing a table created
        here: a DELETE, UPDATE or TRUNCATE ... CASCADE of the new table now changes
        existing rows."""
        for n in _pg_walk(node):
            if (
                isinstance(n, pg.Constraint)
                and _enum(pge.ConstrType, n.contype) == pge.ConstrType.CONSTR_FOREIGN
                and {n.fk_del_action, n.fk_upd_action} & {"c", "n", "d"}
                and self.created.has_relname(_pg_rel(n.pktable))
            ):
                self.created.reach_existing()

    def _add_column(
        self, table: str, existing: bool, col: Any, missing_ok: bool = False
    ) -> list[Finding]:
        if not isinstance(col, pg.ColumnDef):
            return [finding("OG202", "ADD COLUMN")]
        name = str(col.colname)
        if not missing_ok:  # IF NOT EXISTS may have added nothing: the column pre-exists
            self.created.add_column(table, name)
        if not existing:
            return []
        self._cascades(col)
        found: list[Finding] = []
        cons = [c for c in col.constraints or () if isinstance(c, pg.Constraint)]
        kinds = {_enum(pge.ConstrType, c.contype) for c in cons}
        ct = pge.ConstrType
        default = next((c.raw_expr for c in cons if c.contype == ct.CONSTR_DEFAULT), None)
        if (ct.CONSTR_NOTNULL in kinds or ct.CONSTR_PRIMARY in kinds) and default is None:
            found.append(finding("MF103", f"{_shown(table)}.{_shown(name)}"))
        if ct.CONSTR_UNIQUE in kinds or ct.CONSTR_PRIMARY in kinds:
            found.append(finding("MF101", f"{_shown(table)}.{_shown(name)}"))
        if ct.CONSTR_FOREIGN in kinds:
            found.append(finding("OG110", f"{_shown(table)}.{_shown(name)}"))
        if ct.CONSTR_GENERATED in kinds or ct.CONSTR_IDENTITY in kinds:
            found.append(finding("PG302", f"{_shown(table)}.{_shown(name)}"))
        elif default is not None:
            calls = {_pg_funcname(n) for n in _pg_walk(default) if isinstance(n, pg.FuncCall)}
            if calls - _PG_STABLE_DEFAULTS:
                found.append(finding("PG302", f"{_shown(table)}.{_shown(name)}"))
            found.extend(self._calls(default))
        return found

    def _add_constraint(self, table: str, existing: bool, con: Any) -> list[Finding]:
        if not isinstance(con, pg.Constraint):
            return [finding("OG202", "ADD CONSTRAINT")]
        kind = _pg_contype(con)
        if con.conname:
            self.created.add_constraint(str(con.conname), kind)
        if not existing:
            return []
        self._cascades(con)
        name = _shown(str(con.conname or table))
        ct = pge.ConstrType
        contype = _enum(pge.ConstrType, con.contype)
        if contype == ct.CONSTR_PRIMARY and not con.indexname:
            return [finding("PG104", name)]
        if contype in (ct.CONSTR_UNIQUE, ct.CONSTR_EXCLUSION):
            found = [finding("MF101", name)]
            if not con.indexname:
                found.append(finding("PG105", name))
            return found
        if contype == ct.CONSTR_CHECK and not con.skip_validation:
            return [finding("PG305", name)]
        if contype == ct.CONSTR_FOREIGN and not con.skip_validation:
            return [finding("OG110", name)]
        return []

    # DML -------------------------------------------------------------------------------

    def _InsertStmt(self, node: pg.InsertStmt) -> tuple[list[Finding], bool]:
        found = self._calls(node)
        table = _pg_rel(node.relation)
        conflict = node.onConflictClause
        upsert = pge.OnConflictAction.ONCONFLICT_UPDATE
        if (
            conflict is not None
            and _enum(pge.OnConflictAction, conflict.action) == upsert
            and table not in self.created.tables
        ):
            # An upsert updates the existing rows it meets: the rows listed in VALUES,
            # or whatever a query yields (all of them, for `SELECT ... FROM <table>`).
            listed = isinstance(node.selectStmt, pg.SelectStmt) and node.selectStmt.valuesLists
            found.insert(0, finding("OG109" if listed else "OG102", _shown(table)))
        return found, True

    def _SelectStmt(self, node: pg.SelectStmt) -> tuple[list[Finding], bool]:
        found = self._calls(node)
        into = node.intoClause
        if into is not None and not _pg_temp(into.rel):
            self.created.add_table(_pg_rel(into.rel))
        return found, True

    def _UpdateStmt(self, node: pg.UpdateStmt) -> tuple[list[Finding], bool]:
        table = _pg_rel(node.relation)
        found = self._calls(node)
        if table not in self.created.tables:
            bounded = not _pg_always(node.whereClause) and _pg_row_dependent(
                node.whereClause, node.relation, node.fromClause
            )
            found.insert(0, finding("OG109" if bounded else "OG102", _shown(table)))
        return found, True

    def _DeleteStmt(self, node: pg.DeleteStmt) -> tuple[list[Finding], bool]:
        table = _pg_rel(node.relation)
        found = self._calls(node)
        if table not in self.created.tables:
            bounded = not _pg_always(node.whereClause) and _pg_row_dependent(
                node.whereClause, node.relation, node.usingClause
            )
            found.insert(0, finding("OG108" if bounded else "OG101", _shown(table)))
        return found, True

    def _TruncateStmt(self, node: pg.TruncateStmt) -> tuple[list[Finding], bool]:
        names = [_pg_rel(r) for r in node.relations or ()]
        cascade = _enum(pge.DropBehavior, node.behavior) == pge.DropBehavior.DROP_CASCADE
        lost = [n for n in names if cascade or n not in self.created.tables]
        return ([finding("OG103", _shown(", ".join(lost)))] if lost else []), True

    # Plain statements with nothing to flag -------------------------------------------

    def _plain(self, node: pg.Node) -> tuple[list[Finding], bool]:
        return [], True

    _CommentStmt = _plain

    def _owned_by(self, options: Any) -> None:
        """A sequence made owned by a column is dropped with its table (or column): a
        table it is handed to (maybe a pre-existing one) no longer counts as created."""
        for o in options or ():
            if isinstance(o, pg.DefElem) and o.defname == "owned_by":
                parts = o.arg if isinstance(o.arg, (list, tuple)) else ()
                names = [str(p.sval) for p in parts if isinstance(p, pg.String)]
                if names != ["none"]:
                    if len(names) >= 2:
                        self.created.forget(_qualify(*names[:-1]))
                    else:
                        self.created.reach_existing()

    def _CreateSeqStmt(self, node: pg.CreateSeqStmt) -> tuple[list[Finding], bool]:
        self._owned_by(node.options)
        return [], True

    def _AlterSeqStmt(self, node: pg.AlterSeqStmt) -> tuple[list[Finding], bool]:
        self._owned_by(node.options)
        reissue = _reissues_values(node.options)
        if reissue:  # later inserts may take keys rows already hold
            return [finding("OG202", f"{reissue} of sequence {_pg_rel(node.sequence)}")], True
        return [], True

    _CreateEnumStmt = _plain
    _CompositeTypeStmt = _plain
    _CreateDomainStmt = _plain
    _CreateRangeStmt = _plain
    _RefreshMatViewStmt = _plain

    def _AlterEnumStmt(self, node: pg.AlterEnumStmt) -> tuple[list[Finding], bool]:
        if node.oldVal:  # every stored 'old' now reads 'new': a change to existing rows
            name = _shown(_pg_strings(node.typeName))
            return [finding("OG202", f"RENAME VALUE of enum {name}")], True
        return [], True

    def _TransactionStmt(self, node: pg.TransactionStmt) -> tuple[list[Finding], bool]:
        kind = _enum(pge.TransactionStmtKind, node.kind).name.removeprefix("TRANS_STMT_")
        return [finding("OG301", kind)], True


def _enum(kind: type[_E], value: Any) -> _E:
    """pglast's enum fields are typed optional; the parser always sets them."""
    return kind(value)


def _pg_temp(rv: pg.RangeVar | None) -> bool:
    schema = str(rv.schemaname or "") if rv is not None else ""
    return rv is not None and (
        rv.relpersistence == "t" or schema == "pg_temp" or schema.startswith("pg_temp_")
    )


#: Kinds of object that share a schema's one namespace of relations: a rename of any
#: of them may be of a table (ALTER INDEX renames one), a drop of one frees its name.
_PG_RELATIONS = frozenset(
    {
        pge.ObjectType.OBJECT_TABLE,
        pge.ObjectType.OBJECT_VIEW,
        pge.ObjectType.OBJECT_MATVIEW,
        pge.ObjectType.OBJECT_FOREIGN_TABLE,
        pge.ObjectType.OBJECT_INDEX,
        pge.ObjectType.OBJECT_SEQUENCE,
    }
)


def _pg_contype(con: pg.Constraint) -> str:
    return _enum(pge.ConstrType, con.contype).name.removeprefix("CONSTR_").lower()


_PG_PLAIN_ALTERS = frozenset(
    {
        pge.AlterTableType.AT_DropNotNull,
        pge.AlterTableType.AT_ColumnDefault,
        pge.AlterTableType.AT_ValidateConstraint,
        pge.AlterTableType.AT_SetStatistics,
        pge.AlterTableType.AT_SetStorage,
        pge.AlterTableType.AT_SetCompression,
        pge.AlterTableType.AT_AddIdentity,
        pge.AlterTableType.AT_SetIdentity,
        pge.AlterTableType.AT_DropIdentity,
        pge.AlterTableType.AT_AttachPartition,
        pge.AlterTableType.AT_DetachPartition,
        pge.AlterTableType.AT_ClusterOn,
        pge.AlterTableType.AT_DropCluster,
        pge.AlterTableType.AT_SetRelOptions,
        pge.AlterTableType.AT_ResetRelOptions,
    }
)


def _pg_transactional(node: pg.Node) -> bool:
    """Statements PostgreSQL refuses inside a transaction block."""
    if isinstance(
        node,
        (
            pg.VacuumStmt,
            pg.CreatedbStmt,
            pg.DropdbStmt,
            pg.AlterSystemStmt,
            pg.CreateTableSpaceStmt,
            pg.DropTableSpaceStmt,
        ),
    ):
        return False
    if isinstance(node, pg.ReindexStmt):
        return not any(
            isinstance(p, pg.DefElem) and p.defname == "concurrently" for p in node.params or ()
        )
    return True


def _postgres_statements(text: str) -> Iterator[_Raw]:
    walker = _Postgres()
    try:
        parsed = [(_pg_slice(text, r), r.stmt) for r in pglast.parse_sql(text)]
    except pglast.parser.ParseError:
        # Split with PostgreSQL's own scanner, then parse one by one, so only the
        # statements the parser rejects become "needs review".
        parsed = []
        try:
            parts = list(pglast.split(text, with_parser=False, only_slices=True))
        except pglast.parser.ParseError:  # not even scannable (an unterminated quote)
            parts = [slice(0, len(text))] if text.strip() else []
        for part in parts:
            sql = text[part]
            try:
                nodes = pglast.parse_sql(sql)
            except pglast.parser.ParseError:
                parsed.append((sql, None))
                continue
            # One slice of the scanner must be one statement for the parser too.
            parsed.append((sql, nodes[0].stmt if len(nodes) == 1 else None))
    for sql, node in parsed:
        if node is None:
            yield sql.strip(), "unparsed", [finding("OG201")], True
            continue
        found, transactional = walker.statement(node)
        yield sql.strip(), type(node).__name__, found, transactional


def _pg_slice(text: str, raw: pg.RawStmt) -> str:
    start = raw.stmt_location or 0
    length = raw.stmt_len or (len(text) - start)  # 0 means "to the end"
    return text[start : start + length]


# -- SQLite (sqlglot) --------------------------------------------------------------------

#: SQLite functions a DML statement may call without "needs review" (load_extension,
#: fts3_tokenizer, and anything unknown could do more than compute a value).
SQLITE_SAFE_FUNCTIONS = _words(
    """
    abs avg char coalesce count date datetime group_concat hex ifnull iif instr julianday
    length like lower ltrim max min nullif printf quote random replace round rtrim
    strftime string_agg substr substring sum time total trim typeof unhex unicode upper
    json json_array json_extract json_object json_group_array json_group_object
    row_number rank dense_rank lag lead first_value last_value ntile concat concat_ws
    if case cast
    """
)


def _sqlite_chunks(text: str) -> Iterator[str]:
    """Statement boundaries as SQLite itself sees them (`complete_statement`): a
    semicolon inside a string, a comment or a trigger body does not end a statement."""
    start = 0
    pos = text.find(";")
    while pos != -1:
        if sqlite3.complete_statement(text[start : pos + 1]):
            yield text[start : pos + 1]
            start = pos + 1
        pos = text.find(";", pos + 1)
    tail = text[start:]
    if tail.strip():
        yield tail


def _sqlite_empty(chunk: str) -> bool:
    """Only comments and whitespace (per sqlglot's tokenizer): not a statement."""
    try:
        tokens = sqlglot.tokenize(chunk, read="sqlite")
    except Exception:  # noqa: BLE001 - any tokenizer failure: a statement, to be reviewed
        return False
    return all(t.token_type == sqlglot.TokenType.SEMICOLON for t in tokens)


def _sqlite_statements(text: str) -> Iterator[_Raw]:
    if "\x00" in text:  # SQLite cannot split it (complete_statement refuses NUL): review it
        yield text.strip() or text, "unparsed", [finding("OG201", "NUL character")], True
        return
    walker = _Sqlite()
    for chunk in _sqlite_chunks(text):
        if _sqlite_empty(chunk):
            continue
        sql = chunk.strip()
        try:
            trees = [
                t for t in sqlglot.parse(sql, read="sqlite", error_level=ErrorLevel.RAISE) if t
            ]
        except Exception:  # noqa: BLE001 - sqlglot fails on some garbage with any error
            # (an AttributeError for '{:'): whatever it is, the statement is reviewed.
            yield sql, "unparsed", [finding("OG201")], True
            continue
        if len(trees) != 1:  # sqlglot and SQLite disagree on where statements end
            yield sql, "unparsed", [finding("OG201")], True
            continue
        tree: Any = trees[0]
        if tree.args.get("concurrently"):  # sqlglot reads PostgreSQL syntax SQLite refuses
            yield sql, "unparsed", [finding("OG201", "not SQLite syntax")], True
            continue
        if isinstance(tree, exp.Command):
            yield sql, "Command", [finding("OG201", _shown(str(tree.this).upper()))], True
            continue
        found, transactional = walker.statement(tree, sql)
        yield sql, type(tree).__name__, found, transactional


def _sq_parts(node: exp.Expression | None) -> list[str]:
    """SQLite names are case-insensitive (`JUNK` is `junk`), so they are compared folded."""
    if node is None:
        return ["?"]
    if isinstance(node, exp.Schema):
        node = node.this
    if isinstance(node, exp.Table):
        parts = [p for p in (node.args.get("db"), node.args.get("this")) if p is not None]
        return [_fold(p.name) for p in parts]
    return [_fold(node.name)] if hasattr(node, "name") else ["?"]


def _sq_name(node: exp.Expression | None) -> str:
    return _qualify(*_sq_parts(node))


def _sq_temp(tree: exp.Create) -> bool:
    """A TEMP object (or one made in the `temp` schema) shadows the main one of that
    name, which `main.<name>` still reaches, and is gone at the end of the session."""
    props = tree.args.get("properties")
    if isinstance(props, exp.Properties) and any(
        isinstance(p, exp.TemporaryProperty) for p in props.expressions
    ):
        return True
    parts = _sq_parts(tree.this)
    return len(parts) > 1 and parts[0] in ("temp", "temporary")


def _sq_funcname(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return _fold(str(node.name))
    return _fold(node.sql_name())


def _sq_row_dependent(tree: exp.Expression, text: str) -> bool:
    """Does the WHERE read a column of the target row? As for PostgreSQL, with other
    tables in scope (UPDATE ... FROM) only a column qualified with the target's name
    (or alias) counts. And SQLite reads a double-quoted name that is no column as a
    string (`WHERE "nope" = "nope"` is true), so an unqualified one counts only bare,
    `backquoted` or [bracketed]."""
    where = tree.args.get("where")
    target = tree.this
    if where is None or not isinstance(target, exp.Table):
        return False
    others = [
        v
        for k in ("from", "from_", "using", "joins")
        if isinstance(v := tree.args.get(k), (exp.Expression, list)) and v
    ]
    parts = _sq_parts(target)
    # An alias hides the table's own name.
    names: set[tuple[str, ...]] = (
        {(_fold(target.alias),)} if target.alias else {(parts[-1],), tuple(parts)}
    )
    if not others:
        names.add(())
    taken = {
        _fold(n.name)
        for o in others
        for item in (o if isinstance(o, list) else [o])
        for n in item.walk()
        if isinstance(n, (exp.Table, exp.TableAlias))
    }
    for node in where.walk(prune=lambda n: isinstance(n, (exp.Subquery, exp.Select))):
        if not isinstance(node, exp.Column):
            continue
        qualifier = tuple(_fold(p.name) for p in node.parts[:-1])
        if qualifier not in names or (qualifier and qualifier[-1] in taken):
            continue
        if qualifier or _sq_bare(node.this, text):
            return True
    return False


def _sq_always(where: Any) -> bool:
    """As `_pg_always`, for sqlglot's tree (`x IS x` is SQLite's IS NOT DISTINCT FROM;
    a non-zero number is true)."""
    node = where.this if isinstance(where, exp.Where) else where
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Or):
        return _sq_always(node.this) or _sq_always(node.expression)
    if isinstance(node, exp.And):
        return _sq_always(node.this) and _sq_always(node.expression)
    if isinstance(node, exp.Not):
        inner = node.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if isinstance(inner, exp.Is) and isinstance(inner.expression, exp.Null):
            return True
        return isinstance(inner, exp.Not) and _sq_always(inner.this)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Literal) and node.is_number:
        try:
            return float(node.this) != 0
        except ValueError:
            return False
    if isinstance(node, (exp.EQ, exp.GTE, exp.LTE, exp.NullSafeEQ, exp.Is)):
        left, right = node.this, node.expression
        return (
            isinstance(left, exp.Expression)
            and isinstance(right, exp.Expression)
            and (_fold(left.sql("sqlite")) == _fold(right.sql("sqlite")))
        )
    return False


def _sq_bare(ident: Any, text: str) -> bool:
    """An identifier that is surely a name: unquoted, or quoted otherwise than with
    double quotes (sqlglot keeps only "quoted", so the text says how)."""
    if not isinstance(ident, exp.Identifier):
        return False
    if not ident.quoted:
        return True
    start = ident.meta.get("start")
    return isinstance(start, int) and text[start : start + 1] in ("`", "[")


class _Sqlite:
    def __init__(self) -> None:
        self.created = _Created()
        self.sql = ""  # the statement being classified, as parsed

    def statement(self, tree: exp.Expression, sql: str = "") -> tuple[list[Finding], bool]:
        self.sql = sql
        handler = getattr(self, "_" + type(tree).__name__, None)
        if handler is None:
            return [finding("OG202", type(tree).__name__)], True
        found: list[Finding]
        found, transactional = handler(tree)
        found.extend(_bookkeeping(t.name for t in tree.find_all(exp.Table)))
        found.extend(
            finding("OG104", cte.alias_or_name)
            for cte in tree.find_all(exp.CTE)
            if isinstance(cte.this, (exp.Insert, exp.Update, exp.Delete, exp.Merge))
        )
        # A CHECK or a default runs its functions too.
        found.extend(f for f in self._calls(tree) if f not in found)
        return found, transactional

    def _calls(self, tree: exp.Expression) -> list[Finding]:
        unsafe = sorted(
            {
                name
                for f in tree.find_all(exp.Func)
                # sqlglot models AND / OR / XOR as functions too: operators, not calls.
                if not isinstance(f, exp.Connector)
                and (name := _sq_funcname(f)) not in SQLITE_SAFE_FUNCTIONS
            }
        )
        return [finding("OG202", "calls " + _shown(", ".join(unsafe)))] if unsafe else []

    def _Create(self, tree: exp.Create) -> tuple[list[Finding], bool]:
        kind = str(tree.args.get("kind") or "").upper()
        exists = bool(tree.args.get("exists"))
        temp = _sq_temp(tree)
        props = tree.args.get("properties")
        virtual = isinstance(props, exp.Properties) and props.find(exp.VirtualProperty)
        if kind == "TABLE" and virtual:
            # Its module owns more than the name (FTS5 drops `<name>_content` and the
            # like by name on DROP TABLE, whatever now holds them): never new, reviewed.
            return [finding("OG202", f"CREATE VIRTUAL TABLE {_shown(_sq_name(tree.this))}")], True
        if tree.args.get("replace"):  # not SQLite: refused there, reviewed here
            return [finding("OG201", f"CREATE OR REPLACE {kind}")], True
        if kind == "TABLE":
            name = _sq_name(tree.this)
            if not exists and not temp:
                self.created.add_table(name)
            query = tree.args.get("expression")
            return (self._calls(query) if query is not None else []), True
        if kind == "INDEX":
            index = tree.this
            table = _sq_name(index.args.get("table")) if isinstance(index, exp.Index) else "?"
            name = _qualify(_fold(index.name)) if isinstance(index, exp.Index) else ""
            found = []
            if tree.args.get("unique") and table not in self.created.tables:
                replaced = name and name in self.created.dropped_indexes
                found.append(finding("MF102" if replaced else "MF101", name or table))
            if name and not exists and not temp:
                self.created.add_object("index", name)
            return found, True
        if kind == "VIEW":
            if not exists and not temp:
                self.created.add_object("view", _sq_name(tree.this))
            return [], True
        return [finding("OG202", f"CREATE {kind}")], True

    def _Drop(self, tree: exp.Drop) -> tuple[list[Finding], bool]:
        kind = str(tree.args.get("kind") or "").upper()
        found: list[Finding] = []
        for table in tree.args.get("tables") or [tree.this]:
            name = _sq_name(table)
            if kind == "TABLE":
                if name not in self.created.tables:
                    found.append(finding("DS102", _shown(name)))
                self.created.forget(name)
            elif kind in ("SCHEMA", "DATABASE"):
                found.append(finding("DS101", _shown(name)))
            else:
                label = kind.lower()
                if label == "index":
                    self.created.dropped_indexes.add(name)
                if (label, name) not in self.created.objects:
                    found.append(finding("OG105", f"{label} {_shown(name)}"))
                if label in ("index", "view"):  # one namespace with tables
                    self.created.forget(name)
                else:
                    self.created.objects.discard((label, name))
        return found, True

    def _Alter(self, tree: exp.Alter) -> tuple[list[Finding], bool]:
        if str(tree.args.get("kind") or "").upper() != "TABLE":
            return [finding("OG202", "ALTER")], True
        table = _sq_name(tree.this)
        existing = table not in self.created.tables
        found: list[Finding] = []
        for action in tree.args.get("actions") or ():
            if isinstance(action, exp.ColumnDef):
                column = _fold(action.name)
                if not action.args.get("exists"):  # IF NOT EXISTS: it may pre-exist
                    self.created.add_column(table, column)
                cons = [c.args.get("kind") for c in action.args.get("constraints") or ()]
                not_null = any(
                    isinstance(c, exp.NotNullColumnConstraint) and not c.args.get("allow_null")
                    for c in cons
                )
                default = next(
                    (c for c in cons if isinstance(c, exp.DefaultColumnConstraint)), None
                )
                if existing and not_null and default is None:
                    found.append(finding("MF103", f"{_shown(table)}.{_shown(column)}"))
                if existing and any(isinstance(c, exp.UniqueColumnConstraint) for c in cons):
                    found.append(finding("MF101", f"{_shown(table)}.{_shown(column)}"))
                if existing:
                    self._cascades(action)
            elif isinstance(action, exp.Drop) and str(action.args.get("kind")).upper() == "COLUMN":
                for col in action.args.get("tables") or [action.this]:
                    column = _fold(col.name) if col is not None else "?"
                    if not self.created.has_column(table, column):
                        found.append(finding("DS103", f"{_shown(table)}.{_shown(column)}"))
                    self.created.drop_column(table, column)
            elif isinstance(action, exp.AlterRename):
                # The table stays in its schema: `temp.x` renamed to y is `temp.y`.
                newname = _sq_parts(action.this)[-1]
                new = _qualify(*_sq_parts(tree.this)[:-1], newname)
                if not self.created.rename(table, new):
                    found.append(finding("BC101", f"{_shown(table)} to {_shown(newname)}"))
            elif isinstance(action, exp.RenameColumn):
                old = _fold(action.this.name) if action.this is not None else "?"
                new_col = action.args.get("to")
                if not self.created.has_column(table, old):
                    found.append(finding("BC102", f"{_shown(table)}.{_shown(old)}"))
                self.created.rename_column(table, old, _fold(new_col.name) if new_col else "?")
            else:
                found.append(finding("OG202", f"ALTER TABLE {type(action).__name__}"))
        return found, True

    def _cascades(self, column: exp.ColumnDef) -> None:
        """As for PostgreSQL: a column of an existing table that references a table
        created here with ON DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT lets a
        change to the new table change existing rows."""
        for ref in column.find_all(exp.Reference):
            options = [" ".join(str(o).upper().split()) for o in ref.args.get("options") or ()]
            acts = any(
                o.startswith("ON ") and not o.endswith(("RESTRICT", "NO ACTION")) for o in options
            )
            if acts and self.created.has_relname(_sq_name(ref.this)):
                self.created.reach_existing()

    def _Insert(self, tree: exp.Insert) -> tuple[list[Finding], bool]:
        found = self._calls(tree)
        table = _sq_name(tree.this)
        conflict = tree.args.get("conflict")
        updates = str(tree.args.get("alternative") or "").upper() == "REPLACE" or (
            isinstance(conflict, exp.OnConflict)
            and "UPDATE" in str(conflict.args.get("action") or "").upper()
        )
        if updates and table not in self.created.tables:
            # An upsert (or OR REPLACE) overwrites the existing rows it meets.
            listed = isinstance(tree.args.get("expression"), exp.Values)
            found.insert(0, finding("OG109" if listed else "OG102", _shown(table)))
        return found, True

    def _Select(self, tree: exp.Select) -> tuple[list[Finding], bool]:
        return self._calls(tree), True

    def _Union(self, tree: exp.Union) -> tuple[list[Finding], bool]:
        return self._calls(tree), True

    def _Update(self, tree: exp.Update) -> tuple[list[Finding], bool]:
        return self._dml(tree, "OG109", "OG102"), True

    def _Delete(self, tree: exp.Delete) -> tuple[list[Finding], bool]:
        return self._dml(tree, "OG108", "OG101"), True

    def _dml(self, tree: exp.Expression, bounded: str, unbounded: str) -> list[Finding]:
        table = _sq_name(tree.this)
        found = self._calls(tree)
        if table not in self.created.tables:
            row = not _sq_always(tree.args.get("where")) and _sq_row_dependent(tree, self.sql)
            found.insert(0, finding(bounded if row else unbounded, _shown(table)))
        return found

    def _TruncateTable(self, tree: exp.TruncateTable) -> tuple[list[Finding], bool]:
        names = [_sq_name(t) for t in tree.expressions]
        lost = [n for n in names if n not in self.created.tables]
        return ([finding("OG103", _shown(", ".join(lost)))] if lost else []), True

    def _Transaction(self, tree: exp.Expression) -> tuple[list[Finding], bool]:
        return [finding("OG301", type(tree).__name__.upper())], True

    _Commit = _Transaction
    _Rollback = _Transaction

    def _Attach(self, tree: exp.Expression) -> tuple[list[Finding], bool]:
        return [finding("OG304", type(tree).__name__.upper())], True

    _Detach = _Attach


__all__ = [
    "DIALECTS",
    "PG_SAFE_FUNCTIONS",
    "SQLITE_SAFE_FUNCTIONS",
    "Dialect",
    "FileAnalysis",
    "Finding",
    "Statement",
    "classify",
]
