"""Operators of the HTTP API: named humans or automation holding an operator token.

An operator registers, delegates, suspends and reinstates agents and reads the
audit log over HTTP. Tokens are random, shown once, stored only as SHA-256,
compared in constant time, expire (`operators.token_ttl_days`) and rotate at
once; every change is audited. The CLI on the gate's host stays the operator's
root of trust: it creates operators, the HTTP API never does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opsgate.boundary import typed_errors
from opsgate.clock import to_epoch
from opsgate.errors import OperatorError, TokenTtlInvalid, safe_text, shown
from opsgate.store import Store
from opsgate.store import operators as operator_rows

if TYPE_CHECKING:
    from opsgate.audit.log import AuditLog

TOKEN_PREFIX = "opsg_op_"  # noqa: S105 - a prefix that makes leaked tokens greppable
DAY = 86_400.0
_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}\Z")


def _hash_token(token: str) -> str:
    # surrogatepass: a presented token with a lone surrogate hashes (and never matches).
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    created_at: float
    token_issued_at: float
    token_expires_at: float
    disabled_at: float | None = None

    def status(self, now: float) -> str:
        if self.disabled_at is not None:
            return "disabled"
        return "expired" if now >= self.token_expires_at else "active"

    def to_dict(self, now: float) -> dict[str, Any]:
        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, UTC).isoformat()

        return {
            "operator": self.name,
            "status": self.status(now),
            "created_at": iso(self.created_at),
            "token_issued_at": iso(self.token_issued_at),
            "token_expires_at": iso(self.token_expires_at),
        }


def _operator(row: Any) -> Operator:
    return Operator(
        name=row.name,
        created_at=float(row.created_at),
        token_issued_at=float(row.token_issued_at),
        token_expires_at=float(row.token_expires_at),
        disabled_at=None if row.disabled_at is None else float(row.disabled_at),
    )


@typed_errors
class OperatorService:
    """`gate.operators`: add, list, rotate and authenticate operator tokens."""

    def __init__(self, *, store: Store, audit: AuditLog, token_ttl_days: int) -> None:
        self._store = store
        self._audit = audit
        self._token_ttl_days = token_ttl_days

    @staticmethod
    def _name(name: object) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise OperatorError(
                f"operator name {shown(name)} must be 1-64 lowercase letters, digits, '.', '_', "
                "'@' or '-'",
                code="operator_name_invalid",
            )
        return name

    def _ttl_seconds(self, ttl_days: object) -> float:
        if ttl_days is None:
            return self._token_ttl_days * DAY
        if isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= 3650:
            raise TokenTtlInvalid(
                f"token lifetime must be whole days from 1 to 3650, got "
                f"{ttl_days if type(ttl_days) is int else shown(ttl_days)}",
                code="token_ttl_invalid",
            )
        return ttl_days * DAY

    def add(
        self,
        name: str,
        *,
        ttl_days: int | None = None,
        actor: str = "operator",
        now: datetime | float | None = None,
    ) -> str:
        """Register an operator; returns the token, shown once and stored only hashed."""
        t = to_epoch(now)
        who = self._name(name)
        expires = t + self._ttl_seconds(ttl_days)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._store.write() as conn:
            if operator_rows.exists(conn, who):
                raise OperatorError(
                    f"operator {who!r} already exists; rotate their token instead",
                    code="operator_exists",
                )
            operator_rows.insert(conn, who, _hash_token(token), t, expires)
            self._audit.append_in(
                conn,
                "operator.added",
                actor=safe_text(actor),
                at=t,
                operator=who,
                token_expires_at=expires,
            )
        return token

    def rotate(
        self,
        name: str,
        *,
        ttl_days: int | None = None,
        actor: str = "operator",
        now: datetime | float | None = None,
    ) -> str:
        """Replace an operator's token; the old one stops working at once."""
        t = to_epoch(now)
        who = self._name(name)
        expires = t + self._ttl_seconds(ttl_days)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._store.write() as conn:
            if not operator_rows.replace_token(conn, who, _hash_token(token), t, expires):
                raise OperatorError(f"no operator {who!r}", code="operator_not_found")
            self._audit.append_in(
                conn,
                "operator.token_rotated",
                actor=safe_text(actor),
                at=t,
                operator=who,
                token_expires_at=expires,
            )
        return token

    def revoke(self, name: str, *, now: datetime | float | None = None) -> None:
        """Disable an operator's token at once (a rotation re-enables the operator)."""
        t = to_epoch(now)
        who = self._name(name)
        with self._store.write() as conn:
            if not operator_rows.disable(conn, who, t):
                raise OperatorError(f"no operator {who!r}", code="operator_not_found")
            self._audit.append_in(conn, "operator.revoked", actor="operator", at=t, operator=who)

    def get(self, name: str) -> Operator:
        who = self._name(name)
        with self._store.read() as conn:
            row = operator_rows.operator(conn, who)
        if row is None:
            raise OperatorError(f"no operator {who!r}", code="operator_not_found")
        return _operator(row)

    def list_operators(self) -> list[Operator]:
        with self._store.read() as conn:
            return [_operator(r) for r in operator_rows.operators(conn)]

    def authenticate(
        self, name: object, token: object, *, now: datetime | float | None = None
    ) -> str:
        """The operator's name when `token` is theirs, active and unexpired; else
        OperatorError. Unknown names cost the same comparison as known ones."""
        t = to_epoch(now)
        row = None
        if isinstance(name, str) and _NAME.match(name):
            with self._store.read() as conn:
                row = operator_rows.credentials(conn, name)
        presented = _hash_token(token) if isinstance(token, str) else ""
        expected = row[0] if row is not None and row[1] is None else "x" * 64
        if not hmac.compare_digest(presented, expected) or row is None:
            raise OperatorError(
                "operator could not be authenticated", code="operator_unauthenticated"
            )
        if t >= row[2]:  # only after the token matched: an expiry tells a guesser nothing
            raise OperatorError(
                f"the token of operator {name!r} has expired; rotate it (opsgate operators rotate)",
                code="operator_token_expired",
            )
        return str(name)
