"""In-process view of the state that every credential check needs, kept fresh.

Revoked jtis, agent status and verified delegation chains are held in memory
so a check costs dictionary lookups, whatever the number of agents or revoked
credentials. Writers in this process update the view at once; every write also
lands in the `state_changes` feed, which each process polls at most every
`cache_refresh_seconds` so a revocation on one replica holds on all within 1 s.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Row

from opsgate.config import HARD_TTL_CEILING_MINUTES, Config
from opsgate.credentials.keyring import KeyRing
from opsgate.errors import DelegationError, InvalidCredential, StoreError
from opsgate.identity.keys import jwk_thumbprint, public_key_from_did
from opsgate.identity.records import Grant, Link, gate_kid, verify_chain
from opsgate.store import Store
from opsgate.store import agents as agent_rows
from opsgate.store import policies as policy_rows
from opsgate.store import state_changes as feed

ACTIVE, SUSPENDED, REVOKED = "active", "suspended", "revoked"
PRUNE_EVERY = 60.0  # seconds between clean-ups of expired revocations
POLICY_CHANGE = "policy"  # the feed entry of a publication of the policies in force

log = structlog.get_logger("opsgate.state")


@dataclass(frozen=True, slots=True)
class AgentState:
    """An agent as the hot path sees it: proven grant, status, revocation horizon."""

    did: str
    name: str
    status: str  # own status
    effective_status: str  # worst of own and every ancestor's
    grant: Grant | None  # None when the chain does not verify
    chain_error: str | None
    credentials_not_before: float | None
    ancestors: tuple[str, ...]  # root first
    jkt: str
    sponsor: str
    depth: int
    parent_did: str | None
    expires_at: float | None

    def usable_at(self, now: float) -> str | None:
        """None when credentials of this agent may be used at `now`, else a refusal
        code (an AgentUnusable one)."""
        if self.grant is None:
            return "chain_invalid"
        if self.effective_status != ACTIVE:
            return unusable_code(self.effective_status)
        if self.expires_at is not None and now >= self.expires_at:
            return "agent_expired"
        return None


def unusable_code(status: str) -> str:
    """The refusal code for an agent (or ancestor) of a status other than active; an
    unknown status counts as revoked, as the effective status does."""
    return "agent_suspended" if status == SUSPENDED else "agent_revoked"


class LiveState:
    """Caches keyed by did / jti; `refresh()` applies other processes' changes."""

    def __init__(self, store: Store, keyring: KeyRing, config: Config) -> None:
        self._store = store
        self._keyring = keyring
        self._config = config
        self._agents: dict[str, AgentState] = {}
        self._revoked: dict[str, float] = {}
        self._last_change = 0
        self._next_refresh = 0.0
        self._next_prune = 0.0
        self._next_forget = 0.0  # the in-memory half alone (refresh), on its own clock
        self._refresh_lock = threading.Lock()
        self._load_lock = threading.Lock()
        # Bumped by every invalidation, under `_agents_lock` with the cache's writes: a
        # load that overlapped one may have read the row before the change, so what it
        # read is used for its own request but never cached.
        self._agents_lock = threading.Lock()
        self._generation = 0
        # How old a view of other replicas' changes may be and still be used: the
        # promise is that a revocation anywhere holds everywhere within a second.
        self.max_age = max(1.0, 2 * config.cache_refresh_seconds)
        self._fresh_until = 0.0
        keyring.root_grace = self.max_age  # a root record read a view's age ago still holds
        # The digest of this process's policies and the one in force (published by the
        # gate that loaded last); `policy_mismatch` is what a decision checks, set here
        # on load and on refresh, never computed per decision.
        self.policy_digest: str | None = None
        self.published_policy: policy_rows.Published | None = None
        self.policy_mismatch = False
        self._mismatch_logged = False

    # -- loading ----------------------------------------------------------------

    def load(self, now: float) -> None:
        """Initial load: revocations still in force and the change-feed position."""
        horizon = now - self._config.limits.leeway_seconds
        with self._store.read() as conn:
            self._last_change = feed.position(conn)
            self._revoked = feed.revoked_since(conn, horizon)
            self._set_published(policy_rows.published(conn))
        self._next_refresh = time.monotonic() + self._config.cache_refresh_seconds
        self._fresh_until = time.monotonic() + self.max_age

    def agent(self, did: str) -> AgentState | None:
        """The agent's state, loading and verifying its chain on first use."""
        st = self._agents.get(did)
        if st is not None:
            return st
        with self._load_lock:
            st = self._agents.get(did)
            if st is None:
                generation = self._generation
                with self._store.read() as conn:
                    st, lasting = self._load_agent(conn, did)
                with self._agents_lock:
                    if st is not None and lasting and generation == self._generation:
                        self._agents[did] = st
        return st

    def _root_key(self, kid: str, now: float) -> Ed25519PublicKey | None:
        """The gate key `kid` if it may sign a root agent's record at `now`; a kid this
        view does not know is looked up again first (another replica may have just
        rotated)."""
        if self._keyring.get(kid) is None:
            self._keyring.reload()
        return self._keyring.root_key(kid, now)

    def _load_agent(self, conn: Connection, did: str) -> tuple[AgentState | None, bool]:
        """The agent's state, and whether it may be cached: not when its root record
        counted only by the grace a just-retired key keeps (it is read again next time,
        signed by the new key by then, or refused)."""
        chain_rows: list[Row[Any]] = []
        cursor: str | None = did
        while (
            cursor is not None and len(chain_rows) <= self._config.limits.max_delegation_depth + 1
        ):
            row = agent_rows.agent(conn, cursor)
            if row is None:
                break
            chain_rows.append(row)
            cursor = row.parent_did
        if not chain_rows:
            return None, False
        me = chain_rows[0]
        chain_rows.reverse()
        grant: Grant | None = None
        error: str | None = None
        lasting = True
        if cursor is not None:
            error = "delegation chain is too deep or has a missing link"
        else:
            links = [
                Link(r.did, r.name, r.parent_did, r.record, r.signature, r.signer)
                for r in chain_rows
            ]
            try:
                now = time.time()
                grant = verify_chain(
                    links,
                    gate_key=lambda kid: self._root_key(kid, now),
                    max_depth=self._config.limits.max_delegation_depth,
                )
                root = gate_kid(links[0].signer)
                lasting = root is not None and self._keyring.root_key(root, None) is not None
            except DelegationError as exc:
                error = exc.message
        order = {ACTIVE: 0, SUSPENDED: 1, REVOKED: 2}
        worst = max((r.status for r in chain_rows), key=lambda s: order.get(s, 3))
        try:
            jkt = jwk_thumbprint(public_key_from_did(did))
        except InvalidCredential:  # a malformed did simply cannot hold credentials
            jkt, grant, error = "", None, "agent id is not a valid did:key"
        return AgentState(
            did=me.did,
            name=me.name,
            status=me.status,
            effective_status=worst if worst in order else REVOKED,
            grant=grant,
            chain_error=error,
            credentials_not_before=(
                None if me.credentials_not_before is None else float(me.credentials_not_before)
            ),
            ancestors=tuple(r.did for r in chain_rows[:-1]),
            jkt=jkt,
            sponsor=me.sponsor,
            depth=int(me.depth),
            parent_did=me.parent_did,
            expires_at=None if grant is None else grant.expires_at,
        ), lasting

    # -- revocation -------------------------------------------------------------

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def add_revoked(self, jti: str, expires_at: float) -> None:
        self._revoked[jti] = expires_at

    def revoked_count(self) -> int:
        return len(self._revoked)

    def invalidate_agent(self, did: str) -> None:
        with self._agents_lock:
            self._generation += 1
            self._agents.pop(did, None)
            stale = [d for d, st in list(self._agents.items()) if did in st.ancestors]
            for d in stale:
                self._agents.pop(d, None)

    # -- the policies in force ---------------------------------------------------

    def set_policy(self, digest: str, published: policy_rows.Published | None) -> None:
        """This process's policies are now `digest`; `published`: the one in force as
        read after publishing (or comparing). Under the refresh lock, so a refresh that
        read the row before the publication cannot overwrite what was read after it."""
        with self._refresh_lock:
            self.policy_digest = digest
            self._set_published(published)

    def _set_published(self, published: policy_rows.Published | None) -> None:
        self.published_policy = published
        mismatch = self.policy_digest is not None and (
            published is None or published.digest != self.policy_digest
        )
        if mismatch != self._mismatch_logged:
            self._mismatch_logged = mismatch
            (log.warning if mismatch else log.info)(
                "policies differ from those in force: refusing every decision"
                if mismatch
                else "policies in force again",
                own=self.policy_digest,
                published=None if published is None else published.digest,
            )
        self.policy_mismatch = mismatch

    def policy_problem(self) -> str | None:
        """Why this process must not decide (its policies are not those in force), or None."""
        if not self.policy_mismatch:
            return None
        own, published = self.policy_digest or "", self.published_policy
        theirs = "none" if published is None else published.digest[:12]
        return (
            f"this gate's policies (digest {own[:12]}) differ from those in force "
            f"(digest {theirs}, loaded last by another gate): restart it with the same "
            "policy files and opsgate.yaml decision settings"
        )

    # -- the change feed ---------------------------------------------------------

    def record_change(self, conn: Connection, kind: str, subject: str, now: float) -> None:
        """Append to the change feed inside the writer's transaction."""
        feed.record(conn, kind, subject, now)

    def record_changes_raw(self, cur: Any, changes: list[tuple[str, str, float]]) -> None:
        """record_change for (kind, subject, at) entries, on a DBAPI cursor (an audit
        batch's transaction: its callbacks change rows other replicas must hear of)."""
        feed.record_on_cursor(
            cur, changes, paramstyle="qmark" if self._store.is_sqlite else "format"
        )

    def maybe_refresh(self) -> None:
        """Cheap on the hot path: one clock read unless a refresh is due.

        While another thread refreshes, the current view is used only if it is
        younger than `max_age`; past that (the database hangs or is gone) callers
        wait a bounded time for a refresh and then fail closed, so a cut-off
        replica never keeps honouring credentials revoked elsewhere.
        """
        now = time.monotonic()
        if now < self._next_refresh:
            return
        if now < self._fresh_until:
            self.refresh()
            return
        if not self._refresh_lock.acquire(timeout=self.max_age):
            raise StoreError("replica state is stale: the state database does not answer")
        try:
            if time.monotonic() >= self._fresh_until:
                self._refresh_locked()
        finally:
            self._refresh_lock.release()

    def is_fresh(self) -> bool:
        """Whether this replica's view of other replicas' changes is younger than
        `max_age` (what a readiness probe reports)."""
        return time.monotonic() < self._fresh_until

    def refresh(self, *, force: bool = False) -> None:
        if not self._refresh_lock.acquire(blocking=force):
            return  # another thread is refreshing; use the current view
        try:
            self._refresh_locked()
        finally:
            self._refresh_lock.release()

    def _refresh_locked(self) -> None:
        started = time.monotonic()
        # Bounded: a view that cannot be brought up to date within its bound must
        # fail (and refuse), not wait behind a lock and then allow.
        with self._store.read(within=self.max_age) as conn:
            rows = feed.changes_after(conn, self._last_change)
            fetched = feed.revoked_expiry(conn, [r.subject for r in rows if r.kind == "jti"])
            if any(r.kind == POLICY_CHANGE for r in rows):
                self._set_published(policy_rows.published(conn))
        self._revoked.update(fetched)
        keys_changed = False
        for r in rows:
            if r.kind == "agent":
                self.invalidate_agent(r.subject)
            elif r.kind == "key":
                keys_changed = True
        if keys_changed:
            self._keyring.reload()
        if rows:
            self._last_change = int(rows[-1].id)
        self._next_refresh = time.monotonic() + self._config.cache_refresh_seconds
        self._fresh_until = started + self.max_age
        # Its own schedule: taking the prune's turn here would leave the database's
        # expired revocations to the next writer's prune, PRUNE_EVERY later.
        if started >= self._next_forget:
            self._next_forget = started + PRUNE_EVERY
            self.forget_expired()

    def prune_due(self) -> bool:
        """True at most once per PRUNE_EVERY seconds (wall clock, this process)."""
        now = time.time()
        if now < self._next_prune:
            return False
        self._next_prune = now + PRUNE_EVERY
        return True

    def forget_expired(self) -> None:
        """Drop revocations of credentials that have expired anyway (an hour of margin).

        Housekeeping, not a decision: it uses the wall clock, never a caller's `now`,
        so an injected future time can never forget a revocation still in force.
        """
        horizon = time.time() - HARD_TTL_CEILING_MINUTES * 60
        for jti, exp in list(self._revoked.items()):
            if exp < horizon:
                self._revoked.pop(jti, None)

    def prune(self, conn: Connection) -> None:
        """forget_expired(), in the state database too (inside a writer's transaction)."""
        feed.forget_revoked_before(conn, time.time() - HARD_TTL_CEILING_MINUTES * 60)
        self.forget_expired()
