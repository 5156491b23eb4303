"""The deploy executor's records in the state database, behind named functions.

Three tables (see `schema`): `deploy_releases` (what digest each version of an app
is, per environment: a version never changes content), `deployments` (the journal
of a deploy while it runs, written before anything is switched, and its history
once it is finished) and `deploy_locks` (one deploy or rollback per app at a time).
They live in the gate's database, not beside the releases: an agent's deploy
writes release files, never these rows, so the evidence that a version passed
staging cannot be forged by anything a deploy puts on disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from opsgate.errors import DeployLockLost
from opsgate.store import Store, schema
from opsgate.store.processes import holder_dead, host_name

_r, _d, _l = schema.deploy_releases, schema.deployments, schema.deploy_locks


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    """A version of an app in an environment and the artifact digest it names."""

    env: str
    app: str
    version: str
    digest: str | None
    kind: str | None
    created_at: float
    last_deployed_at: float
    pruned_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """One deploy or rollback: its journal while running, its history afterwards."""

    id: int
    env: str
    app: str
    version: str
    kind: str
    backend: str
    digest: str | None
    previous_version: str | None
    status: str
    phase: str
    health: str | None
    agent_did: str
    agent_name: str
    capability: str
    approval_id: str | None
    message: str | None
    summary: str | None
    host: str
    pid: int
    started_at: float
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LockRecord:
    """Who holds an app's deploy lock, for what, and until when it may be taken over."""

    env: str
    app: str
    token: str
    holder_did: str
    holder_name: str
    capability: str
    message: str | None
    deployment_id: int | None
    host: str
    pid: int
    process_start: str
    started_at: float
    expires_at: float

    def stale(self, now: float) -> bool:
        """A holder on this host is stale once its process is gone, whatever the expiry
        says (a live holder is never overtaken); one on another host, once expired."""
        if self.host == host_name():
            return holder_dead(self.host, self.pid, self.process_start)
        return now >= self.expires_at

    def describe(self) -> str:
        what = f" ({self.message})" if self.message else ""
        return (
            f"{self.holder_name} ({self.holder_did}) for {self.capability}{what}, "
            f"pid {self.pid} on {self.host}"
        )

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        out = asdict(self)
        del out["token"], out["process_start"]
        if now is not None:
            out["stale"] = self.stale(now)
        return out


@dataclass(frozen=True, slots=True)
class LockResult:
    """`acquired`, or the live `holder`; `replaced` is a stale lock that was taken over."""

    acquired: bool
    holder: LockRecord | None = None
    replaced: LockRecord | None = None


def _release(row: Row[Any]) -> ReleaseRecord:
    return ReleaseRecord(**row._asdict())


def _deployment(row: Row[Any]) -> DeploymentRecord:
    return DeploymentRecord(**row._asdict())


def _extend_lock(conn: Any, env: str, app: str, token: str, until: float) -> bool:
    """Move the expiry of the lock `token` still holds; False when it holds none."""
    moved = conn.execute(
        update(_l)
        .where(_l.c.env == env, _l.c.app == app, _l.c.token == token)
        .values(expires_at=until)
    ).rowcount
    return bool(moved)


def _lock(row: Row[Any]) -> LockRecord:
    return LockRecord(**row._asdict())


class DeployLedger:
    """Named reads and writes of the deploy tables; each write is one transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- locks -------------------------------------------------------------------------

    def take_lock(self, lock: LockRecord, now: float) -> LockResult:
        """Take the app's lock, replacing a stale one; or name the live holder."""
        try:
            with self.store.write() as conn:
                query = select(_l).where(_l.c.env == lock.env, _l.c.app == lock.app)
                if not self.store.is_sqlite:
                    query = query.with_for_update()
                row = conn.execute(query).first()
                replaced = None
                if row is not None:
                    held = _lock(row)
                    if not held.stale(now):
                        return LockResult(False, holder=held)
                    conn.execute(
                        delete(_l).where(
                            _l.c.env == lock.env, _l.c.app == lock.app, _l.c.token == held.token
                        )
                    )
                    replaced = held
                conn.execute(insert(_l).values(**asdict(lock)))
        except IntegrityError:  # another process inserted first (PostgreSQL)
            return LockResult(False, holder=self.lock(lock.env, lock.app))
        return LockResult(True, replaced=replaced)

    def drop_lock(self, env: str, app: str, token: str) -> None:
        """Release a lock this holder took (by its token: never someone else's)."""
        with self.store.write() as conn:
            conn.execute(delete(_l).where(_l.c.env == env, _l.c.app == app, _l.c.token == token))

    def lock(self, env: str, app: str) -> LockRecord | None:
        with self.store.read() as conn:
            row = conn.execute(select(_l).where(_l.c.env == env, _l.c.app == app)).first()
        return None if row is None else _lock(row)

    def locks(self) -> list[LockRecord]:
        with self.store.read() as conn:
            rows = conn.execute(select(_l).order_by(_l.c.env, _l.c.app)).all()
        return [_lock(r) for r in rows]

    # -- the journal and history ---------------------------------------------------------

    def start(
        self,
        *,
        env: str,
        app: str,
        version: str,
        kind: str,
        backend: str,
        digest: str | None,
        previous_version: str | None,
        agent_did: str,
        agent_name: str,
        capability: str,
        approval_id: str | None,
        message: str | None,
        lock_token: str,
        pid: int,
        now: float,
    ) -> int:
        """Open a deployment's journal row (status running) and tie the lock to it."""
        with self.store.write() as conn:
            new_id = conn.execute(
                insert(_d)
                .values(
                    env=env,
                    app=app,
                    version=version,
                    kind=kind,
                    backend=backend,
                    digest=digest,
                    previous_version=previous_version,
                    status="running",
                    phase="prepare",
                    agent_did=agent_did,
                    agent_name=agent_name,
                    capability=capability,
                    approval_id=approval_id,
                    message=message,
                    host=host_name(),
                    pid=pid,
                    started_at=now,
                )
                .returning(_d.c.id)
            ).scalar_one()
            conn.execute(
                update(_l)
                .where(_l.c.env == env, _l.c.app == app, _l.c.token == lock_token)
                .values(deployment_id=new_id)
            )
        return int(new_id)

    def renew_lock(self, env: str, app: str, token: str, expires_at: float) -> bool:
        """Extend the lease of a lock this holder still holds; False once it is gone
        (taken over after its lease ran out)."""
        with self.store.write() as conn:
            return _extend_lock(conn, env, app, token, expires_at)

    def set_phase(
        self,
        deployment_id: int,
        phase: str,
        *,
        lock: tuple[str, str, str] | None = None,
        lease_until: float | None = None,
    ) -> None:
        """Journal the step about to happen; committed (durable) before it happens.

        With `lock` (env, app, token): only while that lock is still this run's, its
        lease renewed to `lease_until` in the same transaction (a fence: a run whose
        lock another host took over after its lease ran out changes nothing more, and
        the step it is about to take has a whole lease to finish in)."""
        with self.store.write() as conn:
            if lock is not None:
                env, app, token = lock
                assert lease_until is not None  # a fence always renews the lease
                if not _extend_lock(conn, env, app, token, lease_until):
                    raise DeployLockLost(
                        f"the deploy lock of {env}/{app} was taken over (its lease ran out): "
                        f"this run stops before {phase}",
                        code="deploy_lock_lost",
                    )
            conn.execute(
                update(_d)
                .where(_d.c.id == deployment_id, _d.c.status == "running")
                .values(phase=phase)
            )

    def finish(
        self,
        deployment_id: int,
        *,
        status: str,
        summary: str,
        health: str | None,
        now: float,
        lock_token: str | None = None,
        fence: tuple[str, str, str] | None = None,
        lease_until: float | None = None,
    ) -> bool:
        """Close the journal row with its result (history from now on) and, in the same
        transaction, release the lock that guarded it. A row already finished keeps its
        result (False): a later error never rewrites an outcome. With `fence` (env, app,
        token), only while that lock is still this run's (its lease renewed to
        `lease_until`): a run whose lock was taken over records nothing (DeployLockLost),
        its row being the new holder's recovery's to close."""
        with self.store.write() as conn:
            if fence is not None:
                env, app, token = fence
                assert lease_until is not None
                if not _extend_lock(conn, env, app, token, lease_until):
                    raise DeployLockLost(
                        f"the deploy lock of {env}/{app} was taken over (its lease ran out): "
                        f"this run's {status} result is not recorded",
                        code="deploy_lock_lost",
                    )
            closed = conn.execute(
                update(_d)
                .where(_d.c.id == deployment_id, _d.c.status == "running")
                .values(
                    status=status, phase="done", summary=summary, health=health, finished_at=now
                )
            ).rowcount
            if lock_token is not None:
                conn.execute(delete(_l).where(_l.c.token == lock_token))
        return bool(closed)

    def deployment(self, deployment_id: int) -> DeploymentRecord | None:
        with self.store.read() as conn:
            row = conn.execute(select(_d).where(_d.c.id == deployment_id)).first()
        return None if row is None else _deployment(row)

    def history(self, env: str, app: str, limit: int = 20) -> list[DeploymentRecord]:
        """The app's deployments in this environment, newest first."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(_d)
                .where(_d.c.env == env, _d.c.app == app)
                .order_by(_d.c.id.desc())
                .limit(limit)
            ).all()
        return [_deployment(r) for r in rows]

    def running(
        self, env: str | None = None, app: str | None = None, host: str | None = None
    ) -> list[DeploymentRecord]:
        """Journal rows not finished (live, or interrupted and not yet repaired)."""
        query = select(_d).where(_d.c.status == "running")
        if env is not None:
            query = query.where(_d.c.env == env)
        if app is not None:
            query = query.where(_d.c.app == app)
        if host is not None:
            query = query.where(_d.c.host == host)
        with self.store.read() as conn:
            rows = conn.execute(query.order_by(_d.c.id)).all()
        return [_deployment(r) for r in rows]

    def staged(
        self, env: str, app: str, version: str, digest: str | None
    ) -> DeploymentRecord | None:
        """The latest successful deployment of exactly this version and artifact."""
        return self._latest(env, app, version, digest, ("succeeded",))

    def verdict(
        self, env: str, app: str, version: str, digest: str | None
    ) -> DeploymentRecord | None:
        """The latest finished run (succeeded or failed) of exactly this version and
        artifact: what the environment last said about that release."""
        return self._latest(env, app, version, digest, ("succeeded", "failed"))

    def _latest(
        self, env: str, app: str, version: str, digest: str | None, statuses: tuple[str, ...]
    ) -> DeploymentRecord | None:
        same = _d.c.digest.is_(None) if digest is None else _d.c.digest == digest
        with self.store.read() as conn:
            row = conn.execute(
                select(_d)
                .where(
                    _d.c.env == env,
                    _d.c.app == app,
                    _d.c.version == version,
                    same,
                    _d.c.status.in_(statuses),
                )
                .order_by(_d.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _deployment(row)

    def rolled_back_from(
        self, env: str, app: str, version: str, after: int
    ) -> DeploymentRecord | None:
        """A successful rollback, later than run `after`, that moved away from `version`:
        the environment's operators judged that release bad after it passed."""
        with self.store.read() as conn:
            row = conn.execute(
                select(_d)
                .where(
                    _d.c.env == env,
                    _d.c.app == app,
                    _d.c.kind == "rollback",
                    _d.c.status == "succeeded",
                    _d.c.previous_version == version,
                    _d.c.id > after,
                )
                .order_by(_d.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _deployment(row)

    def last_successes(self, env: str, app: str) -> dict[str, int]:
        """Each version's latest successful run (its id) in this environment."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(_d.c.version, func.max(_d.c.id))
                .where(_d.c.env == env, _d.c.app == app, _d.c.status == "succeeded")
                .group_by(_d.c.version)
            ).all()
        return {str(version): int(last) for version, last in rows}

    def live(self, env: str, app: str) -> DeploymentRecord | None:
        """The latest successful deployment (what is live, by the gate's record)."""
        with self.store.read() as conn:
            row = conn.execute(
                select(_d)
                .where(_d.c.env == env, _d.c.app == app, _d.c.status == "succeeded")
                .order_by(_d.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _deployment(row)

    # -- releases ------------------------------------------------------------------------

    def release(self, env: str, app: str, version: str) -> ReleaseRecord | None:
        with self.store.read() as conn:
            row = conn.execute(
                select(_r).where(_r.c.env == env, _r.c.app == app, _r.c.version == version)
            ).first()
        return None if row is None else _release(row)

    def releases(self, env: str, app: str) -> list[ReleaseRecord]:
        """The app's releases in this environment, most recently deployed first."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(_r)
                .where(_r.c.env == env, _r.c.app == app)
                .order_by(_r.c.last_deployed_at.desc(), _r.c.version)
            ).all()
        return [_release(r) for r in rows]

    def kept_versions(self, env: str, app: str, limit: int) -> tuple[list[str], int]:
        """The newest `limit` versions not pruned, most recently deployed first, and how
        many there are in all."""
        kept = (_r.c.env == env, _r.c.app == app, _r.c.pruned_at.is_(None))
        with self.store.read() as conn:
            versions = conn.execute(
                select(_r.c.version)
                .where(*kept)
                .order_by(_r.c.last_deployed_at.desc(), _r.c.version)
                .limit(limit)
            ).all()
            count = conn.execute(select(func.count()).select_from(_r).where(*kept)).scalar_one()
        return [str(v[0]) for v in versions], int(count)

    def claim_release(
        self, env: str, app: str, version: str, digest: str | None, kind: str | None, now: float
    ) -> ReleaseRecord | None:
        """Record that `version` is `digest` (or refresh it); the other record if it is not."""
        with self.store.write() as conn:
            row = conn.execute(
                select(_r).where(_r.c.env == env, _r.c.app == app, _r.c.version == version)
            ).first()
            if row is not None:
                existing = _release(row)
                if existing.digest != digest:
                    return existing
                conn.execute(
                    update(_r)
                    .where(_r.c.env == env, _r.c.app == app, _r.c.version == version)
                    .values(last_deployed_at=now, pruned_at=None, kind=kind)
                )
                return None
            conn.execute(
                insert(_r).values(
                    env=env,
                    app=app,
                    version=version,
                    digest=digest,
                    kind=kind,
                    created_at=now,
                    last_deployed_at=now,
                    pruned_at=None,
                )
            )
        return None

    def mark_pruned(self, env: str, app: str, version: str, now: float) -> None:
        with self.store.write() as conn:
            conn.execute(
                update(_r)
                .where(_r.c.env == env, _r.c.app == app, _r.c.version == version)
                .values(pruned_at=now)
            )


__all__ = ["DeployLedger", "DeploymentRecord", "LockRecord", "LockResult", "ReleaseRecord"]
