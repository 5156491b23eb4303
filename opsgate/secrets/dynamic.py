"""Dynamic database credentials: a short-lived PostgreSQL user per migration run.

A target with a `vault_role` gets its user from the database secrets engine, never
from config: `MigrationExecutor(config, credentials=database_credentials(gate))`.
For each use the gate

1. creates a child token of its own with an explicit, non-renewable TTL — the
   lease is tied to it, so even if the gate dies mid-run Vault drops the user when
   that TTL ends (Vault's default lease is 32 days; nothing here relies on it);
2. asks `<database_mount>/creds/<role>` for a user with that child token;
3. renews the lease to exactly that TTL (the role's `VALID UNTIL` follows) and
   refuses a lease that comes back longer;
4. records the lease id, user name and TTL in the audit (never the password);
5. revokes the lease (synchronously) and the child token when the run ends,
   success or failure, and audits that too.

The TTL is `lease_ttl_seconds` from the target's config, cut to what the asking
credential has left (`RunContext.credential_ttl`): a user never outlives the agent's
right to use it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.engine import make_url

from opsgate.config import DatabaseTarget
from opsgate.errors import ConfigError, OpsgateError, SecretError
from opsgate.secrets.vault import VaultSession

if TYPE_CHECKING:
    from opsgate.audit.log import AuditLog
    from opsgate.operations.migrate.executor import Purpose, TargetCredentials

log = structlog.get_logger("opsgate.secrets")
#: A lease shorter than this is refused: the run would lose its user mid-statement.
MIN_LEASE_SECONDS = 10


class VaultDatabaseCredentials:
    """`TargetCredentials` that lease a user for targets with a `vault_role` and use
    the configured URL (the `fallback`) for the others."""

    def __init__(
        self,
        session: VaultSession,
        *,
        audit: AuditLog | None = None,
        fallback: TargetCredentials | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from opsgate.operations.migrate.executor import ConfigCredentials

        self._session = session
        self._audit = audit
        self._fallback: TargetCredentials = fallback or ConfigCredentials()
        self._clock = clock

    def __repr__(self) -> str:
        return f"VaultDatabaseCredentials({self._session!r})"

    def lease_ttl(self, target: DatabaseTarget, max_ttl: float | None) -> int:
        """Seconds the leased user may live: the configured TTL, cut to `max_ttl`."""
        ttl = target.lease_ttl_seconds
        if max_ttl is not None:
            ttl = min(ttl, math.floor(max_ttl))
        if ttl < MIN_LEASE_SECONDS:
            raise SecretError(
                f"the credential has {max(ttl, 0)}s left, too little for a database lease "
                f"(at least {MIN_LEASE_SECONDS}s): renew it first",
                code="lease_ttl_too_short",
            )
        return ttl

    def _record(self, event: str, **fields: Any) -> None:
        if self._audit is None:
            return
        try:
            self._audit.append(event, actor="gate", at=self._clock(), **fields)
        except OpsgateError as exc:  # the lease is bounded by its TTL either way
            log.error("lease event not audited", event_type=event, code=exc.code)

    @contextmanager
    def url(
        self,
        database: str,
        target: DatabaseTarget,
        *,
        purpose: Purpose,
        agent: str | None,
        max_ttl: float | None = None,
    ) -> Iterator[str]:
        role = target.vault_role
        if role is None:
            with self._fallback.url(
                database,
                target,
                purpose=purpose,
                agent=agent,
                max_ttl=max_ttl,
            ) as url:
                yield url
            return
        base = make_url(target.url.get_secret_value())
        if base.get_backend_name() != "postgresql":
            raise ConfigError(
                f"database {database!r}: vault_role needs a postgresql target",
                code="database_url",
            )
        ttl = self.lease_ttl(target, max_ttl)
        session = self._session
        mount = session.cfg.database_mount
        parent = session.client()
        answer = session.call(
            lambda: parent.auth.token.create(
                ttl=f"{ttl}s",
                explicit_max_ttl=f"{ttl}s",
                renewable=False,
                display_name=f"opsgate-{database}",
                meta={"database": database, "purpose": purpose},
            )
        )
        child = session.new_client(answer["auth"]["client_token"])
        lease_id: str | None = None
        try:
            creds = session.call(
                lambda: child.secrets.database.generate_credentials(name=role, mount_point=mount)
            )
            lease_id = str(creds["lease_id"])
            renewed = session.call(lambda: child.sys.renew_lease(lease_id=lease_id, increment=ttl))
            granted = int(renewed.get("lease_duration") or 0)
            if not 0 < granted <= ttl:
                raise SecretError(
                    f"vault granted a {granted}s lease for {database!r}, not at most {ttl}s",
                    code="lease_ttl_refused",
                )
            data = creds.get("data") or {}
            username, password = str(data["username"]), str(data["password"])
            self._record(
                "secrets.lease_issued",
                database=database,
                role=role,
                lease_id=lease_id,
                username=username,
                ttl=granted,
                purpose=purpose,
                agent=agent,
            )
            yield base.set(username=username, password=password).render_as_string(
                hide_password=False
            )
        finally:
            self._release(database, child, lease_id)

    def _release(self, database: str, child: Any, lease_id: str | None) -> None:
        """Revoke the lease (synchronously: the user is gone when this returns) and
        the child token; a failure is audited, the TTL still ends both."""
        if lease_id is not None:
            try:
                self._session.call(lambda: child.sys.revoke_lease(lease_id=lease_id))
                self._record("secrets.lease_revoked", database=database, lease_id=lease_id)
            except OpsgateError as exc:
                self._record(
                    "secrets.lease_revoke_failed",
                    database=database,
                    lease_id=lease_id,
                    code=exc.code,
                )
        with contextlib.suppress(Exception):  # revoking the token revokes what is left
            child.auth.token.revoke_self()
        with contextlib.suppress(Exception):
            child.adapter.close()


def database_credentials(gate: Any) -> TargetCredentials:
    """The credentials provider for `gate`'s database targets: leased users where a
    target names a `vault_role`, the configured URL elsewhere."""
    from opsgate.operations.migrate.executor import ConfigCredentials

    session = gate.secrets.vault
    if session is None:
        return ConfigCredentials()
    return VaultDatabaseCredentials(session, audit=gate.audit)


__all__ = ["MIN_LEASE_SECONDS", "VaultDatabaseCredentials", "database_credentials"]
