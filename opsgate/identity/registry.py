"""Agents: registration by the operator, delegation by a parent, status changes that cascade."""

from __future__ import annotations

import builtins
import math
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from opsgate import capabilities as caps
from opsgate.boundary import typed_errors
from opsgate.clock import to_epoch
from opsgate.config import Config
from opsgate.credentials.keyring import KeyRing
from opsgate.credentials.manager import AUDIT_WAIT_SECONDS, revocation_cutoff
from opsgate.environments import Environments
from opsgate.errors import (
    AgentError,
    CapabilityError,
    ConfigError,
    DelegationError,
    EmailInvalid,
    InvalidCredential,
    OperatorInvalid,
    StatusInvalid,
    UnusableAgentChange,
    check_operator,
    check_reason,
    encodable,
    safe_text,
    secret_shaped,
    shown,
)
from opsgate.identity import keys
from opsgate.identity.records import RECORD_VERSION, gate_kid, record_bytes
from opsgate.state import ACTIVE, REVOKED, SUSPENDED, AgentState, LiveState, unusable_code
from opsgate.store import Store, gate_keys
from opsgate.store import agents as agent_rows

if TYPE_CHECKING:
    from opsgate.audit.log import AuditLog
    from opsgate.credentials.handle import CredentialHandle
    from opsgate.credentials.manager import CredentialManager

AGENT_KEY_DIR = "agent-keys"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\Z")
CASCADE_PREFIX = "cascade from "
# Refusals that are attempts to widen access (charged as policy violations),
# as opposed to plain mistakes such as a malformed capability string.
ESCALATION_CODES = frozenset(
    {
        "delegation_not_covered",
        "capability_unrestricted",
        "depth_exceeded",
        "outlives_parent",
        "trust_above_parent",
        "scope_not_covered",
    }
)


def check_email(value: object, what: str = "sponsor") -> str:
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value):
        raise EmailInvalid(
            f"{what} must be an email address, got {shown(value)}", code="invalid_email"
        )
    return value.lower()


# An agent lives at most a century: longer is a mistake, not a policy.
MAX_AGENT_TTL_SECONDS = 100 * 365.25 * 86_400


def _ttl_seconds(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = math.inf if isinstance(ttl, int) and ttl > MAX_AGENT_TTL_SECONDS else float(ttl)
    else:
        raise DelegationError("ttl must be a timedelta or a number of seconds", code="ttl_invalid")
    if math.isnan(seconds) or seconds <= 0:
        raise DelegationError("ttl must be positive", code="ttl_invalid")
    if seconds > MAX_AGENT_TTL_SECONDS:
        raise DelegationError("ttl must be at most 100 years", code="ttl_invalid")
    return seconds


def _check_trust(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise AgentError(
            f"trust_score must be an integer 0-1000, got {value!r}", code="trust_score_invalid"
        )
    return value


def _check_name(name: object) -> None:
    """An agent's name: the grammar, and never the shape of a secret (a token pasted
    as a name would be listed in clear to everyone who lists agents)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise AgentError(
            f"agent name {shown(name)} must be 1-64 letters, digits, '.', '_' or '-'",
            code="invalid_name",
        )
    if secret_shaped(name):
        raise AgentError(
            "agent name has the shape of a secret (a token or a credential); not shown",
            code="invalid_name",
        )


class AgentHost(Protocol):
    """What an Agent handle asks of the gate it came from (a Gate is one)."""

    @property
    def agents(self) -> AgentRegistry: ...

    @property
    def credential_manager(self) -> CredentialManager: ...

    @property
    def state(self) -> LiveState: ...

    def trust_score(self, did: str) -> int: ...

    def effective_trust(self, did: str) -> int: ...


@typed_errors
class Agent:
    """A handle on a registered agent. Identity fields are fixed; status and trust are live."""

    def __init__(self, gate: AgentHost, state: AgentState) -> None:
        self._gate = gate
        self.did = state.did
        self.name = state.name
        self.sponsor = state.sponsor
        self.parent_did = state.parent_did
        self.depth = state.depth
        grant = state.grant
        self.capabilities: list[str] = list(grant.capabilities) if grant else []
        self.expires_at: datetime | None = (
            None if state.expires_at is None else datetime.fromtimestamp(state.expires_at, UTC)
        )
        self.created_at: datetime | None = (
            None if grant is None else datetime.fromtimestamp(grant.issued_at, UTC)
        )

    @property
    def status(self) -> str:
        return self._gate.agents.state(self.did).effective_status

    @property
    def trust_score(self) -> int:
        return self._gate.trust_score(self.did)

    @property
    def effective_trust(self) -> int:
        return self._gate.effective_trust(self.did)

    def delegate(
        self,
        name: str,
        capabilities: list[str],
        ttl: timedelta | float | None = None,
        *,
        trust_score: int | None = None,
        sponsor: str | None = None,
        did: str | None = None,
        now: datetime | float | None = None,
        requested_by: str | None = None,
    ) -> Agent:
        """Create a child agent holding a subset of this agent's grants (`requested_by`:
        the operator doing it for this agent, see `AgentRegistry.delegate`)."""
        return self._gate.agents.delegate(
            self.did,
            name,
            capabilities,
            ttl=ttl,
            trust_score=trust_score,
            sponsor=sponsor,
            did=did,
            now=now,
            requested_by=requested_by,
        )

    def credential(self, scope: list[str], ttl_minutes: float | None = None) -> CredentialHandle:
        """A self-renewing credential for `scope` (renewed before 1/3 of its life is left)."""
        from opsgate.credentials.handle import CredentialHandle

        gate = self._gate
        return CredentialHandle(
            self.did,
            self.name,
            scope,
            ttl_minutes,
            issue=gate.credential_manager.issue_credential,
            state=gate.state,
            private_key=gate.agents.private_key,
        )

    def to_dict(self) -> dict[str, Any]:
        st = self._gate.agents.state(self.did)
        return {
            "did": self.did,
            "name": self.name,
            "sponsor": self.sponsor,
            "parent_did": self.parent_did,
            "depth": self.depth,
            "capabilities": self.capabilities,
            "status": st.status,
            "effective_status": st.effective_status,
            "trust_score": self.trust_score,
            "effective_trust": self.effective_trust,
            "chain_valid": st.grant is not None,
            "chain_error": st.chain_error,
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
        }

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, did={self.did!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Agent) and other.did == self.did

    def __hash__(self) -> int:
        return hash(self.did)


@typed_errors
class AgentRegistry:
    """Creates agents, verifies and caches their chains, and changes their status."""

    def __init__(
        self,
        *,
        gate_id: str,
        handle: Callable[[AgentState], Agent],
        effective_trust: Callable[[str], int],
        on_refusal: Callable[[str, str, float], None],
        config: Config,
        store: Store,
        keyring: KeyRing,
        state: LiveState,
        audit: AuditLog,
        state_dir: Path,
        default_trust: int,
    ) -> None:
        self._gate_id = gate_id
        self._handle = handle
        self._effective_trust = effective_trust
        # Called with (did, reason, now) when a delegation tries to widen access.
        self._on_refusal = on_refusal
        self._config = config
        self._environments = Environments.from_config(config)
        self._store = store
        self._keyring = keyring
        self._state = state
        self._audit = audit
        self._key_dir = state_dir / AGENT_KEY_DIR
        self._default_trust = default_trust

    # -- lookup -------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """A did, or the did of the agent with this name."""
        if not isinstance(ref, str) or not ref:
            raise AgentError("agent must be named by its name or did", code="agent_not_found")
        if len(ref) > 256 or "\x00" in ref or encodable(ref) is not ref:
            # No agent has such a name or did, and the database could not even be asked.
            raise AgentError(f"no agent {shown(ref)}", code="agent_not_found")
        if ref.startswith("did:"):
            return ref
        with self._store.read() as conn:
            did = agent_rows.did_by_name(conn, ref)
        if did is None:
            raise AgentError(f"no agent named {shown(ref)}", code="agent_not_found")
        return did

    def state(self, ref: str) -> AgentState:
        st = self._state.agent(self.resolve(ref))
        if st is None:
            raise AgentError(f"no agent {shown(ref)}", code="agent_not_found")
        return st

    def get(self, ref: str) -> Agent:
        return self._handle(self.state(ref))

    def list(self, *, status: str | None = None) -> list[Agent]:
        if status is not None and status not in (ACTIVE, SUSPENDED, REVOKED):
            raise StatusInvalid(
                f"status must be {ACTIVE}, {SUSPENDED} or {REVOKED}, got {shown(status)}",
                code="status_invalid",
            )
        with self._store.read() as conn:
            dids = agent_rows.dids(conn, status)
        return [self.get(d) for d in dids]

    def descendants(self, conn: Connection, did: str, *, lock: bool = False) -> builtins.list[str]:
        """Every agent below `did`. With `lock`, each level's rows are locked as they
        are found (PostgreSQL), so no child can be added under them meanwhile: level
        by level and by did within a level, the (depth, did) order every transaction
        that locks several agents' rows follows (audit batches included)."""
        out: list[str] = []
        frontier = [did]
        if lock:
            agent_rows.lock(conn, did)
        while frontier:
            frontier = [d for d in agent_rows.children(conn, frontier, lock=lock) if d not in out]
            out.extend(frontier)
        return out

    def private_key(self, did: str) -> Ed25519PrivateKey:
        """The agent's private key held in the state dir; only ever the key of `did`."""
        path = self._key_path(did)
        if not path.exists():
            raise AgentError(
                f"the private key of {shown(did)} is not held here", code="key_not_held"
            )
        key = keys.read_private_key(path)
        if keys.did_from_public_key(key.public_key()) != did:
            raise ConfigError(
                f"private key file '{path.name}' does not hold the key of {shown(did)}",
                code="key_invalid",
            )
        return key

    def export_key(
        self,
        ref: str,
        path: Path,
        *,
        by: str,
        force: bool = False,
        reason: str | None = None,
        now: datetime | float | None = None,
    ) -> str:
        """Write the agent's private key to `path` (0600, never over an existing file)
        for moving it to the agent's own machine; returns the agent's did.

        Once: a second export is refused unless `force` with a `reason`, both
        audited (who, why, how many times), never the key. The gate keeps its copy:
        it signs the agent's delegations. A stolen export is the agent's identity,
        so export only to where the agent runs, and rotate (re-register) if in doubt.
        """
        t = to_epoch(now)
        reason = check_reason(reason)
        actor = f"operator:{check_operator(by)}"
        did = self.resolve(ref)
        state = self.state(did)
        if force and (not isinstance(reason, str) or not reason.strip()):
            raise AgentError("a forced export needs a reason (audited)", code="reason_required")
        key = self.private_key(did)  # key_not_held before anything is written
        if os.path.lexists(path):
            raise AgentError(
                f"'{path.name}' already exists; the key is never written over a file",
                code="output_exists",
            )
        written = False
        try:
            with self._store.write() as conn:
                before = agent_rows.key_exports(conn, did)
                if before is not None and not force:
                    raise AgentError(
                        f"the key of agent {state.name!r} was already exported; pass --force "
                        "with a --reason to export it again",
                        code="key_already_exported",
                    )
                exports = 1 if before is None else before + 1
                agent_rows.record_key_export(conn, did, exports, t, first=before is None)
                self._audit.append_in(
                    conn,
                    "agent.key_exported",
                    actor=actor,
                    at=t,
                    agent=did,
                    name=state.name,
                    exports=exports,
                    forced=force or None,
                    reason=safe_text(reason) if reason is not None else None,
                )
                # Last inside the transaction: a file that cannot be written records
                # nothing, and a record that cannot commit takes the file back.
                keys.write_private_key(path, key)
                written = True
        except BaseException:
            if written:
                path.unlink(missing_ok=True)
            raise
        return did

    def _key_path(self, did: str) -> Path:
        """The key file of an Ed25519 did:key, named by its base58 part. Anything else is
        bad_did: a did read from the database could otherwise name any path (an absolute
        one, or `../gate-keys/<kid>`), and export-key would copy out that file."""
        keys.public_key_from_did(did)
        return self._key_dir / f"{did.rsplit(':', 1)[-1]}.pem"

    # -- creation -------------------------------------------------------------------

    def _new_identity(self, did: object) -> tuple[str, Ed25519PrivateKey | None]:
        if did is None:
            private = keys.generate()
            return keys.did_from_public_key(private.public_key()), private
        if not isinstance(did, str):
            raise AgentError("did must be a did:key string", code="bad_did")
        try:
            keys.public_key_from_did(did)
        except InvalidCredential as exc:
            raise AgentError(f"{shown(did)} is not an Ed25519 did:key", code="bad_did") from exc
        return did, None

    def register(
        self,
        name: str,
        capabilities: builtins.list[str],
        sponsor: str,
        trust_score: int | None = None,
        *,
        ttl: timedelta | float | None = None,
        did: str | None = None,
        now: datetime | float | None = None,
        actor: str = "operator",
    ) -> Agent:
        """Register a root agent (depth 0); its grant record is signed by the gate key.
        `actor` is the operator who asked (`operator:<name>`), named in the audit."""
        t = to_epoch(now)
        if not isinstance(actor, str) or not actor.strip():
            raise OperatorInvalid("actor must name the operator", code="operator_invalid")
        _check_name(name)
        sponsor = check_email(sponsor)
        parsed = self._check_grants(capabilities)
        self._check_environments(parsed)
        score = self._default_trust if trust_score is None else self._startable(trust_score)
        seconds = _ttl_seconds(ttl)
        did, private = self._new_identity(did)
        kid, gate_key = self._keyring.signer()
        record = {
            "v": RECORD_VERSION,
            "kind": "registration",
            "gate": self._gate_id,
            "did": did,
            "name": name,
            "sponsor": sponsor,
            "capabilities": [str(c) for c in parsed],
            "depth": 0,
            "issued_at": t,
            "expires_at": None if seconds is None else t + seconds,
        }
        body = record_bytes(record)
        signature = keys.b64url(gate_key.sign(body))
        self._insert(
            did,
            private,
            record,
            body,
            signature,
            f"gate:{kid}",
            None,
            score,
            t,
            "agent.registered",
            requested_by=actor,
        )
        return self.get(did)

    def _check_grants(self, capabilities: object) -> tuple[caps.Capability, ...]:
        if (
            isinstance(capabilities, str)
            or not isinstance(capabilities, (list, tuple))
            or not capabilities
        ):
            raise CapabilityError(
                "capabilities must be a non-empty list", code="capability_malformed"
            )
        if len(capabilities) > self._config.limits.max_capabilities_per_agent:
            raise CapabilityError("too many capabilities", code="capability_malformed")
        # Canonical (one case, environment aliases resolved) before anything compares
        # or signs them; an undeclared environment is refused by _check_environments.
        parsed = [
            self._environments.resolve(c).capability
            for c in caps.parse_all(capabilities, grant=True)
        ]
        seen: list[caps.Capability] = []
        for c in parsed:
            if c not in seen:
                seen.append(c)
        return tuple(seen)

    def _check_environments(self, grants: tuple[caps.Capability, ...]) -> None:
        """A grant's environment must be declared (CapabilityError environment_undeclared)."""
        for c in grants:
            self._environments.resolve(c).check()

    def delegate(
        self,
        parent_ref: str,
        name: str,
        capabilities: builtins.list[str],
        *,
        ttl: timedelta | float | None = None,
        trust_score: int | None = None,
        sponsor: str | None = None,
        did: str | None = None,
        now: datetime | float | None = None,
        requested_by: str | None = None,
    ) -> Agent:
        """Create a child whose every grant is covered by the parent's, signed by the parent.

        `requested_by` names an operator delegating on the parent's behalf (the CLI, the
        HTTP API): the act is the operator's, audited with the operator as actor, and a
        refusal is the operator's mistake, charged to no agent. Without it the parent is
        asking itself, and a grant beyond its own is an escalation attempt.
        """
        if requested_by is not None and (
            not isinstance(requested_by, str) or not requested_by.strip()
        ):
            raise OperatorInvalid("requested_by must name the operator", code="operator_invalid")
        t = to_epoch(now)
        parent = self.state(parent_ref)
        try:
            return self._delegate(
                parent, name, capabilities, ttl, trust_score, sponsor, did, t, requested_by
            )
        except (DelegationError, CapabilityError) as exc:
            self._audit.append(
                "delegation.refused",
                actor=parent.did if requested_by is None else safe_text(requested_by),
                agent=None if requested_by is None else parent.did,
                at=t,
                child=safe_text(name),
                capabilities=[safe_text(c) for c in capabilities][:64]
                if isinstance(capabilities, (list, tuple))
                else None,
                code=exc.code,
                reason=exc.message,
            )
            if requested_by is None and exc.code in ESCALATION_CODES:
                self._on_refusal(parent.did, exc.message, t)
            raise

    def _delegate(
        self,
        parent: AgentState,
        name: str,
        capabilities: builtins.list[str],
        ttl: timedelta | float | None,
        trust_score: int | None,
        sponsor: str | None,
        did: str | None,
        t: float,
        requested_by: str | None,
    ) -> Agent:
        refusal = parent.usable_at(t)
        if refusal is not None:
            raise DelegationError(
                f"agent {parent.name!r} cannot delegate ({refusal.replace('_', ' ')})", code=refusal
            )
        assert parent.grant is not None
        _check_name(name)
        depth = parent.depth + 1
        limit = self._config.limits.max_delegation_depth
        if depth > limit:
            raise DelegationError(
                f"delegating from {parent.name!r} would exceed the maximum depth of {limit}",
                code="depth_exceeded",
            )
        parsed = self._check_grants(capabilities)
        for cap in parsed:
            if not caps.covered_by_any(parent.grant.parsed, cap):
                raise DelegationError(
                    f"capability {shown(str(cap))} is not covered by the grants of {parent.name!r}",
                    code="delegation_not_covered",
                )
        self._check_environments(parsed)
        seconds = _ttl_seconds(ttl)
        expires = parent.expires_at if seconds is None else t + seconds
        if parent.expires_at is not None and (expires is None or expires > parent.expires_at):
            raise DelegationError(
                f"a child of {parent.name!r} cannot outlive it", code="outlives_parent"
            )
        parent_trust = self._effective_trust(parent.did)
        if trust_score is None:
            score = parent_trust
        else:
            score = self._startable(trust_score)
            if score > parent_trust:
                raise DelegationError(
                    f"trust_score {score} is above the parent's trust of {parent_trust}",
                    code="trust_above_parent",
                )
        child_sponsor = parent.sponsor if sponsor is None else check_email(sponsor)
        private_parent = self.private_key(parent.did)
        did, private = self._new_identity(did)
        record = {
            "v": RECORD_VERSION,
            "kind": "delegation",
            "parent": parent.did,
            "did": did,
            "name": name,
            "sponsor": child_sponsor,
            "capabilities": [str(c) for c in parsed],
            "depth": depth,
            "issued_at": t,
            "expires_at": expires,
        }
        body = record_bytes(record)
        signature = keys.b64url(private_parent.sign(body))
        self._insert(
            did,
            private,
            record,
            body,
            signature,
            parent.did,
            parent.did,
            score,
            t,
            "agent.delegated",
            requested_by=requested_by,
        )
        return self.get(did)

    def _insert(
        self,
        did: str,
        private: Ed25519PrivateKey | None,
        record: dict[str, Any],
        body: bytes,
        signature: str,
        signer: str,
        parent_did: str | None,
        score: int,
        t: float,
        event: str,
        *,
        requested_by: str | None = None,
    ) -> None:
        """Store a new agent and its audit event; the actor is the operator who asked
        (`requested_by`), else the parent that delegated."""
        if private is not None:
            keys.write_private_key(self._key_path(did), private)
        try:
            with self._store.write() as conn:
                self._audit.hold_head(conn)
                kid = gate_kid(signer)
                if kid is not None and not gate_keys.lock_tip(conn, kid):
                    # A rotation committed first: it signed the roots it found again,
                    # and a record signed by the key it retired would not count.
                    raise ConfigError(
                        "the gate key was rotated meanwhile (by another replica); try again",
                        code="key_rotated_concurrently",
                    )
                if agent_rows.name_or_did_taken(conn, record["name"], did):
                    raise AgentError(
                        f"an agent named {record['name']!r} already exists", code="agent_exists"
                    )
                if parent_did is not None:
                    self._check_lineage_active(conn, parent_did)
                agent_rows.insert(
                    conn,
                    did=did,
                    name=record["name"],
                    sponsor=record["sponsor"],
                    parent_did=parent_did,
                    depth=record["depth"],
                    created_at=t,
                    expires_at=record["expires_at"],
                    status=ACTIVE,
                    trust_score=score,
                    initial_trust=score,
                    record=body.decode("utf-8"),
                    signature=signature,
                    signer=signer,
                    updated_at=t,
                )
                self._state.record_change(conn, "agent", did, t)
                self._audit.append_in(
                    conn,
                    event,
                    actor=safe_text(requested_by) if requested_by else parent_did or "operator",
                    at=t,
                    parent=parent_did if requested_by else None,
                    agent=did,
                    name=record["name"],
                    sponsor=record["sponsor"],
                    capabilities=record["capabilities"],
                    depth=record["depth"],
                    expires_at=record["expires_at"],
                    trust_score=score,
                )
        except IntegrityError as exc:
            self._drop_key(did, private)
            raise AgentError(
                f"an agent named {record['name']!r} already exists", code="agent_exists"
            ) from exc
        except ConfigError as exc:
            self._drop_key(did, private)
            if exc.code == "key_rotated_concurrently":
                self._keyring.reload()  # so that trying again signs with the new key
            raise
        except BaseException:
            self._drop_key(did, private)
            raise
        self._state.invalidate_agent(did)

    def _check_lineage_active(self, conn: Connection, parent_did: str) -> None:
        """In the inserting transaction (after the audit head, in the global lock order):
        the parent and every ancestor are still active in the database. The parent was
        checked from this replica's view, which can be a refresh old, or older where
        nothing refreshes it: a suspension made through another replica meanwhile must
        stop the delegation, not leave an active child under a suspended parent. The
        parent's row stays locked until the child is in, so a suspension that follows
        finds the child and cascades to it."""
        agent_rows.lock(conn, parent_did)
        parent = self._state.agent(parent_did)
        lineage = [*(parent.ancestors if parent is not None else ()), parent_did]
        active = set(agent_rows.with_status(conn, lineage, [ACTIVE]))
        for did in lineage:
            if did not in active:
                status = agent_rows.status(conn, did) or REVOKED
                code = unusable_code(status)
                raise DelegationError(
                    f"agent {shown(parent_did)} cannot delegate ({code.replace('_', ' ')})",
                    code=code,
                )

    def _startable(self, trust_score: object) -> int:
        """A new agent's score: valid, and not one that would have it suspended."""
        score = _check_trust(trust_score)
        floor = self._config.trust.suspend_below
        if score < floor:
            raise AgentError(
                f"trust_score {score} is below the suspension threshold {floor}: "
                "such an agent could not act",
                code="trust_score_invalid",
            )
        return score

    def _drop_key(self, did: str, private: Ed25519PrivateKey | None) -> None:
        if private is not None:
            self._key_path(did).unlink(missing_ok=True)

    # -- status -----------------------------------------------------------------------

    def _set_status(
        self,
        ref: str,
        status: str,
        *,
        reason: str | None,
        event: str,
        actor: str,
        now: datetime | float | None,
        changed_before: bool = False,
    ) -> builtins.list[str]:
        """`changed_before`: the root's status was changed already, in the transaction
        of the score change that caused it (see TrustEngine): it counts as changed."""
        reason = check_reason(reason)  # before anything is read or written, on any database
        t = to_epoch(now)
        root = self.state(ref)
        if root.status == REVOKED:
            raise UnusableAgentChange(
                f"agent {root.name!r} is revoked for good", code="agent_revoked"
            )
        # Commits without waiting for the audit head (a stalled replica may hold it):
        # the event is deferred in this transaction and chained right after.
        with self._store.write() as conn:
            below = self.descendants(conn, root.did, lock=True)
            # The root row is locked now: its status as read here is current, unlike the
            # view checked above (another replica may have revoked it meanwhile).
            was = agent_rows.status(conn, root.did)
            if was == REVOKED and status != REVOKED:
                raise UnusableAgentChange(
                    f"agent {root.name!r} is revoked for good", code="agent_revoked"
                )
            # Suspension and revocation also revoke every credential issued so far.
            nb = revocation_cutoff(conn, [root.did, *below], t) if status != ACTIVE else t
            if status == ACTIVE:
                parent = root.parent_did
                if parent is not None and agent_rows.status(conn, parent) != ACTIVE:
                    raise AgentError(
                        f"agent {root.name!r} cannot be reinstated while its parent is not active",
                        code="parent_inactive",
                    )
                # Reinstate the agent and the descendants that were suspended because of it.
                agent_rows.set_status(conn, [root.did], ACTIVE, reason, t)
                affected = [root.did]
                changed = [root.did] if was != ACTIVE else []
                if below:
                    res = agent_rows.suspended_by(conn, below, CASCADE_PREFIX + root.did)
                    # A descendant whose own score fell below the threshold meanwhile
                    # stays suspended, now on its own account, until it is reinstated.
                    floor = self._config.trust.suspend_below
                    cascaded = [r[0] for r in res if r[1] >= floor]
                    own = [r[0] for r in res if r[1] < floor]
                    if own:
                        agent_rows.set_status_reason(conn, own, f"trust below {floor}", t)
                    if cascaded:
                        agent_rows.set_status(conn, cascaded, ACTIVE, reason, t)
                    affected += cascaded
                    changed += cascaded
            else:
                affected = [root.did, *below]
                changed = [root.did] if was != status or changed_before else []
                agent_rows.set_status(
                    conn, [root.did], status, reason, t, credentials_not_before=nb
                )
                if below:
                    # Only agents that were active are suspended "by cascade", so reinstating
                    # this one never lifts a suspension that had its own reason.
                    cascade_from = [ACTIVE, SUSPENDED] if status == REVOKED else [ACTIVE]
                    changed += agent_rows.with_status(conn, below, cascade_from)
                    agent_rows.cascade_status(
                        conn, below, cascade_from, status, CASCADE_PREFIX + root.did
                    )
                    agent_rows.cut_credentials(conn, below, nb, t)
            for did in affected:
                self._state.record_change(conn, "agent", did, t)
            self._audit.defer_in(
                conn,
                event,
                actor=actor,
                at=t,
                agent=root.did,
                name=root.name,
                affected=changed,
                # Suspension and revocation cut the credentials of the whole subtree,
                # also of descendants whose status was already what it is now.
                credentials_revoked=None if status == ACTIVE else affected,
                reason=reason,
            )
        for did in affected:
            self._state.invalidate_agent(did)
        self._audit.flush_deferred(wait=AUDIT_WAIT_SECONDS)
        return changed

    def suspend(
        self,
        ref: str,
        *,
        reason: str | None = None,
        actor: str = "operator",
        now: datetime | float | None = None,
        changed_before: bool = False,
    ) -> builtins.list[str]:
        """Suspend an agent and its descendants; their live credentials stop working.

        Returns the agents whose status changed (one already suspended or revoked is
        not counted, though its credentials are cut again). `changed_before`: the
        agent was suspended already, in its score change's transaction; this cascades
        that suspension and records it, the agent counted as changed."""
        return self._set_status(
            ref,
            SUSPENDED,
            reason=reason,
            event="agent.suspended",
            actor=actor,
            now=now,
            changed_before=changed_before,
        )

    def reinstate(
        self, ref: str, *, reason: str, actor: str = "operator", now: datetime | float | None = None
    ) -> builtins.list[str]:
        """Reinstate a suspended agent (and descendants suspended by cascade from it).

        Returns the agents whose status changed."""
        if not isinstance(reason, str) or not reason.strip():
            raise AgentError("reinstating an agent needs a reason", code="reason_required")
        return self._set_status(
            ref, ACTIVE, reason=reason, event="agent.reinstated", actor=actor, now=now
        )

    def revoke(
        self,
        ref: str,
        *,
        reason: str | None = None,
        actor: str = "operator",
        now: datetime | float | None = None,
    ) -> builtins.list[str]:
        """Revoke an agent and its descendants for good. Returns the agents whose
        status changed (one revoked before is not counted)."""
        return self._set_status(
            ref, REVOKED, reason=reason, event="agent.revoked", actor=actor, now=now
        )

    def initial_trust(self, did: str) -> tuple[int, float]:
        with self._store.read() as conn:
            found = agent_rows.initial_trust(conn, did)
        if found is None:
            raise AgentError(f"no agent {shown(did)}", code="agent_not_found")
        return found

    def stored_trust(self, did: str) -> int:
        score = agent_rows.stored_score(self._store, did)
        if score is None:
            raise AgentError(f"no agent {shown(did)}", code="agent_not_found")
        return score
