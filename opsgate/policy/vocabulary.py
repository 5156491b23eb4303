"""The fixed vocabulary a condition may read, with the static type of every name.

Conditions see a request only through these names; there is no attribute walking.
Types are bit sets so a union (``environment`` is a string or null) is one int and
checking "could these two ever be equal" is one ``&``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

STR = 1
NUM = 2
BOOL = 4
NULL = 8
LIST = 16
MAP = 32
#: What a `params.<key>` value may be at run time: any JSON value.
ANY = STR | NUM | BOOL | NULL | LIST | MAP

_TYPE_NAMES: tuple[tuple[int, str], ...] = (
    (STR, "string"),
    (NUM, "number"),
    (BOOL, "bool"),
    (NULL, "null"),
    (LIST, "list"),
    (MAP, "map"),
)


def type_name(types: int) -> str:
    """Human name of a type set, for error messages: 'string or null', 'any'."""
    if types == ANY:
        return "any"
    names = [name for bit, name in _TYPE_NAMES if types & bit]
    return " or ".join(names) if names else "nothing"


#: Condition name -> (PolicyRequest attribute, static type, what it means).
FIELDS: Mapping[str, tuple[str, int, str]] = MappingProxyType(
    {
        "action": ("action", STR, "the operation's action, e.g. 'deploy'"),
        "resource": ("resource", STR, "the resource path, e.g. 'production/app-web'"),
        "capability": ("capability", STR, "'action:resource', e.g. 'deploy:production/app-web'"),
        "environment": ("environment", STR | NULL, "target environment, null when none"),
        "destructive": ("destructive", BOOL, "whether the plan destroys data or state"),
        "findings": ("findings", LIST, "the plan's finding codes, e.g. ['DS102'] (migrations)"),
        "agent.name": ("agent_name", STR, "the requesting agent's name"),
        "agent.did": ("agent_did", STR, "the requesting agent's did:key"),
        "agent.trust_score": ("agent_trust_score", NUM, "effective trust score, 0-1000"),
        "agent.depth": ("agent_depth", NUM, "delegation depth, 0 for a root agent"),
        "agent.sponsor": ("agent_sponsor", STR, "email of the accountable human"),
        "time.hour": ("hour", NUM, "hour of the request, 0-23 (UTC)"),
        "time.weekday": ("weekday", NUM, "day of the week, 0=Monday .. 6=Sunday"),
        "time.minute": ("minute", NUM, "minute of the hour, 0-59"),
    }
)

#: Roots that take an attribute; `params.<key>` accepts any identifier key.
ROOTS = frozenset({"agent", "time", "params"})
PARAMS_ROOT = "params"

#: Literal spellings beyond Python's True/False/None, from the seed's YAML flavour.
LITERAL_NAMES: Mapping[str, object] = MappingProxyType({"true": True, "false": False, "null": None})

#: Function name -> (argument types, result type). A deliberately tiny fixed set.
FUNCTIONS: Mapping[str, tuple[tuple[int, ...], int]] = MappingProxyType(
    {
        "startswith": ((STR, STR), BOOL),
        "endswith": ((STR, STR), BOOL),
        "lower": ((STR,), STR),
        "len": ((STR | LIST,), NUM),
    }
)

# Values of these names follow the capability grammar, so a literal outside it
# (a look-alike letter, a trailing space, an upper-case letter: the gate lower-cases
# every resource) can never compare equal: a load error.
_ACTION = r"[a-z][a-z0-9_-]*"
_SEGMENT = r"[a-z0-9._-]+"
_RESOURCE = rf"{_SEGMENT}(?:/{_SEGMENT})*"
VALUE_GRAMMAR: Mapping[str, re.Pattern[str]] = MappingProxyType(
    {
        "action": re.compile(_ACTION, re.ASCII),
        "environment": re.compile(_SEGMENT, re.ASCII),
        "resource": re.compile(_RESOURCE, re.ASCII),
        "capability": re.compile(rf"{_ACTION}:{_RESOURCE}", re.ASCII),
    }
)


def describe() -> list[tuple[str, str, str]]:
    """(name, type, meaning) rows for docs and `policy explain --help`-style listings."""
    rows = [(name, type_name(t), doc) for name, (_, t, doc) in FIELDS.items()]
    rows.append(("params.<key>", "any", "an operation parameter; a missing key is null"))
    return rows


__all__ = [
    "ANY",
    "BOOL",
    "FIELDS",
    "FUNCTIONS",
    "LIST",
    "LITERAL_NAMES",
    "MAP",
    "NULL",
    "NUM",
    "ROOTS",
    "STR",
    "VALUE_GRAMMAR",
    "describe",
    "type_name",
]
