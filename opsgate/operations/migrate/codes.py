"""The stable finding codes of the migration classifier, in one table.

Codes that Atlas defines keep Atlas's number and meaning (DS, MF, BC, CD, PG), so
people who know `atlas migrate lint` recognise them. Our own (OG) cover what neither
Atlas nor squawk flags: unbounded DML, TRUNCATE, data-modifying CTEs, statements the
classifier cannot see into, and the statements a migration may not contain at all.

`destructive` findings make the plan destructive (policy's `destructive`); `error`
findings refuse the migration before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    title: str
    destructive: bool = False
    severity: Severity = "warning"


_CODES = (
    # Atlas: destructive changes.
    Code("DS101", "schema dropped", destructive=True),
    Code("DS102", "table dropped", destructive=True),
    Code("DS103", "column dropped", destructive=True),
    # Atlas: data-dependent changes (might fail on existing data).
    Code("MF101", "unique index or constraint added on an existing table"),
    Code("MF102", "non-unique index replaced by a unique one"),
    Code("MF103", "non-nullable column without a default added to an existing table"),
    Code("MF104", "nullable column made non-nullable"),
    # Atlas: backward-incompatible changes.
    Code("BC101", "table renamed"),
    Code("BC102", "column renamed"),
    # Atlas: constraint deletion.
    Code("CD101", "constraint dropped (a foreign key loses its guarantee)"),
    # Atlas, PostgreSQL: locks and rewrites.
    Code("PG101", "index created without CONCURRENTLY (blocks writes while it builds)"),
    Code("PG102", "index dropped without CONCURRENTLY (blocks reads and writes)"),
    Code("PG104", "primary key added: ACCESS EXCLUSIVE lock while its index builds"),
    Code("PG105", "unique constraint added: ACCESS EXCLUSIVE lock while its index builds"),
    Code("PG301", "column type changed: may rewrite the table and its indexes"),
    Code("PG302", "column added with a volatile default or stored expression: rewrites the table"),
    Code("PG303", "column made non-nullable: full table scan under ACCESS EXCLUSIVE lock"),
    Code("PG305", "check constraint added without NOT VALID: full table scan under lock"),
    # Ours: what neither Atlas nor squawk flags.
    Code("OG101", "DELETE without a WHERE that depends on the row", destructive=True),
    Code("OG102", "UPDATE without a WHERE that depends on the row", destructive=True),
    Code("OG103", "TRUNCATE", destructive=True),
    Code("OG104", "data-modifying statement inside a WITH clause", destructive=True),
    Code("OG105", "object dropped", destructive=True),
    Code("OG106", "column type changed: every value is converted (data may be lost)", True),
    Code("OG108", "DELETE of rows matching a condition", severity="info"),
    Code("OG109", "UPDATE of rows matching a condition", severity="info"),
    Code("OG110", "foreign key added without NOT VALID: scans and locks both tables"),
    Code("OG201", "needs review: the statement could not be parsed", destructive=True),
    Code("OG202", "needs review: opaque or unrecognised statement", destructive=True),
    Code("OG301", "transaction control inside a migration file", severity="error"),
    Code(
        "OG302",
        "a statement that cannot run in a transaction must be alone in its file",
        severity="error",
    ),
    Code("OG303", "runs outside a transaction", severity="info"),
    Code("OG304", "reaches outside the target database", severity="error"),
)

CODES: dict[str, Code] = {c.code: c for c in _CODES}


def code(name: str) -> Code:
    """The catalogue entry; an unknown code is a programming error, not input."""
    return CODES[name]


__all__ = ["CODES", "Code", "Severity", "code"]
