"""The Gate: the one path every privileged operation goes through.

execute(credential, operation)
  1 authenticate   credential_manager.verify
  2 plan           executor.plan (pure)
  3 authorize      authz.authorize: scope ⊆ grants ⊆ delegation chain
  4 decide         policy + trust thresholds
  5 approve        approvals bound to the plan digest
  6 audit          the attempt, durably (fail closed)
  7 execute        executor.run
  8 audit+score    outcome, trust engine, anomaly detectors
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from opsgate import capabilities as caps
from opsgate.audit.log import AuditLog
from opsgate.authz import AuthzRequest, authorize, environment_of
from opsgate.config import Config, load_config
from opsgate.credentials.keyring import KeyRing
from opsgate.credentials.manager import CredentialManager, to_epoch
from opsgate.decision import Decision
from opsgate.errors import (
    ConfigError,
    InvalidCredential,
    OperationError,
)
from opsgate.identity import keys
from opsgate.identity.registry import Agent, AgentRegistry
from opsgate.operations.base import Executor, Operation, Outcome, Plan
from opsgate.state import LiveState
from opsgate.store import Store, schema

DEFAULT_STATE_DIR = ".opsgate"


def resolve_state_dir(state_dir: str | os.PathLike[str] | None) -> Path:
    if state_dir is None:
        state_dir = os.environ.get("OPSGATE_STATE_DIR") or DEFAULT_STATE_DIR
    return Path(state_dir).expanduser().resolve()


class Gate:
    """One gate per state directory (or per replica on a shared PostgreSQL)."""

    def __init__(self, state_dir: Path, config: Config, store: Store) -> None:
        self.state_dir = state_dir
        self.config = config
        self.store = store
        now = time.time()
        store.migrate()
        self.keyring = KeyRing(store, state_dir)
        self.keyring.reload()
        with store.write() as conn:
            gate_id = store.meta_get(conn, "gate_id")
            if gate_id is None:
                gate_id = f"opsgate:{uuid.uuid4()}"
                conn.execute(insert(schema.gate_meta).values(key="gate_id", value=gate_id))
            new_kid = self.keyring.ensure_current(conn, now)
        self.gate_id = gate_id
        if new_kid is not None:
            self.keyring.reload()
        self.state = LiveState(store, self.keyring, config)
        self.audit = AuditLog(
            store,
            gate_id=gate_id,
            signer=self._audit_signer,
            check_signature=self._check_gate_signature,
            public_jwk=lambda kid: keys.public_jwk(self.keyring.public(kid), kid),  # type: ignore[arg-type]
        )
        if new_kid is not None:
            with store.write() as conn:
                self.state.record_change(conn, "key", new_kid, now)
                self.audit.append_in(conn, "gate.key_created", actor="gate", at=now, kid=new_kid)
        self.state.load(now)
        self.agents = AgentRegistry(
            self,
            config=config,
            store=store,
            keyring=self.keyring,
            state=self.state,
            audit=self.audit,
            state_dir=state_dir,
            default_trust=config.trust.default_score,
        )
        self.credential_manager = CredentialManager(
            config=config,
            store=store,
            keyring=self.keyring,
            state=self.state,
            audit=self.audit,
            agents=self.agents,
            issuer=gate_id,
        )
        self.policies: Any = None
        self.trust_approvers: tuple[str, ...] = ()
        self._executors: dict[str, Executor] = {}

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        policies: str | os.PathLike[str] | list[str] | None = None,
        database_url: str | None = None,
        **config_overrides: Any,
    ) -> Gate:
        """Open (creating on first use) the gate whose state lives in `state_dir`."""
        path = resolve_state_dir(state_dir)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create state dir '{path}': {exc.strerror}") from exc
        overrides = dict(config_overrides)
        if database_url is not None:
            overrides["database_url"] = database_url
        config = load_config(path, overrides)
        gate = cls(path, config, Store.for_state_dir(path, config.database_url))
        policy_source = policies if policies is not None else config.policies
        if policy_source is not None:
            gate.load_policies(policy_source)
        return gate

    def load_policies(self, source: str | os.PathLike[str] | list[str]) -> None:
        from opsgate.policy import load_policies

        self.policies = load_policies(source, limits=self.config.limits)

    def close(self) -> None:
        self.store.dispose()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ------------------------------------------------------------------------

    def _audit_signer(self) -> tuple[str, Any]:
        kid, key = self.keyring.signer()
        return kid, lambda payload: keys.b64url(key.sign(payload))

    def _check_gate_signature(self, kid: str, payload: bytes, signature: str) -> bool:
        public = self.keyring.public(kid)
        if public is None:
            return False
        try:
            return keys.verify_signature(public, keys.b64url_decode(signature), payload)
        except ValueError:
            return False

    def jwks(self, now: datetime | float | None = None) -> dict[str, list[dict[str, str]]]:
        """The public keys that verify this gate's credentials (RFC 7517 JWK Set)."""
        return self.keyring.jwks(to_epoch(now))

    def rotate_keys(self, now: datetime | float | None = None) -> str:
        """Sign new credentials with a fresh key; the old one stays published until its tokens expire."""
        t = to_epoch(now)
        with self.store.write() as conn:
            new, old = self.keyring.rotate(conn, t)
            self.state.record_change(conn, "key", new, t)
            self.audit.append_in(conn, "gate.key_rotated", actor="gate", at=t, kid=new, retired=old)
        self.keyring.reload()
        return new

    # -- identity ----------------------------------------------------------------------

    def register_agent(
        self,
        name: str,
        capabilities: list[str],
        sponsor: str,
        trust_score: int | None = None,
        *,
        ttl: timedelta | float | None = None,
        did: str | None = None,
        now: datetime | float | None = None,
    ) -> Agent:
        """Register a root agent (the operator's act); returns its handle."""
        return self.agents.register(
            name, capabilities, sponsor, trust_score, ttl=ttl, did=did, now=now
        )

    # -- trust ---------------------------------------------------------------------------

    def trust_score(self, did: str) -> int:
        return self.agents.stored_trust(self.agents.resolve(did))

    def effective_trust(self, did: str) -> int:
        st = self.agents.state(did)
        return min(self.trust_score(d) for d in (*st.ancestors, st.did))

    # -- the one path --------------------------------------------------------------------

    def _authenticate(self, token: object, t: float, proof: str | None, context: str) -> Any:
        try:
            return self.credential_manager.verify(token, now=t, proof=proof, proof_context=context)
        except InvalidCredential as exc:
            self._on_credential_refused(exc, t)
            raise

    def _on_credential_refused(self, exc: InvalidCredential, t: float) -> None:
        """Feed misuse of a genuine credential to trust (hooked by the trust engine)."""

    def _decide(
        self,
        claims: Any,
        cap: caps.Capability,
        t: float,
        *,
        environment: str | None,
        destructive: bool = False,
        params: dict[str, Any] | None = None,
    ) -> Decision:
        agent = self.state.agent(claims.sub)
        assert agent is not None  # verify() checked it
        when = datetime.fromtimestamp(t, UTC)
        return authorize(
            AuthzRequest(
                agent=agent,
                trust=self.effective_trust(agent.did),
                scope=claims.parsed_scope,
                capability=cap,
                environment=environment,
                destructive=destructive,
                params=params or {},
                hour=when.hour,
                weekday=when.weekday(),
                minute=when.minute,
            ),
            self.policies,
            self.config.trust,
            self.trust_approvers,
        )

    def authorize(
        self,
        token: str,
        capability: str,
        *,
        now: datetime | float | None = None,
        proof: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Decision:
        """Decide whether the credential may exercise `capability` now. Audited.

        Raises InvalidCredential when the token does not verify and
        CapabilityError for a malformed capability; otherwise returns a Decision.
        """
        t = to_epoch(now)
        claims = self._authenticate(token, t, proof, capability)
        cap = caps.parse_request(capability)
        decision = self._decide(claims, cap, t, environment=environment_of(cap), params=params)
        self.audit.append(
            "authorize",
            actor=claims.sub,
            at=t,
            jti=claims.jti,
            capability=capability,
            decision=decision.effect,
            reasons=list(decision.reasons),
            errors=list(decision.errors) or None,
        )
        self._after_decision(claims.sub, decision, t, capability)
        return decision

    def _after_decision(self, did: str, decision: Decision, t: float, capability: str) -> None:
        """Feed refusals to trust (hooked by the trust engine)."""

    def register_executor(self, action: str, executor: Executor) -> None:
        caps.parse_request(f"{action}:x")  # the action must be a valid capability action
        self._executors[action] = executor

    def plan(self, operation: Operation) -> Plan:
        executor = self._executors.get(operation.action)
        if executor is None:
            raise OperationError(
                f"no executor is registered for action {operation.action!r}",
                code="executor_missing",
            )
        plan = executor.plan(operation)
        if plan.capability != operation.capability:
            caps.parse_request(plan.capability)
        return plan

    def execute(
        self,
        token: str,
        operation: Operation,
        *,
        now: datetime | float | None = None,
        proof: str | None = None,
    ) -> Outcome:
        """Run `operation` through the one path (authenticate → ... → audit+score)."""
        t = to_epoch(now)
        claims = self._authenticate(token, t, proof, operation.capability)
        plan = self.plan(operation)
        cap = caps.parse_request(plan.capability)
        decision = self._decide(
            claims,
            cap,
            t,
            environment=plan.environment,
            destructive=plan.destructive,
            params=operation.params,
        )
        attempt = self.audit.append(
            "operation.attempt",
            actor=claims.sub,
            at=t,
            jti=claims.jti,
            capability=plan.capability,
            digest=plan.digest,
            decision=decision.effect,
            reasons=list(decision.reasons),
        )
        if decision.effect != "allow":
            self._after_decision(claims.sub, decision, t, plan.capability)
            raise OperationError(
                f"operation {plan.capability!r} refused: {'; '.join(decision.reasons)}",
                code="operation_denied" if decision.effect == "deny" else "approval_required",
                decision=decision,
            )
        executor = self._executors[operation.action]
        outcome = executor.run(plan)
        done = self.audit.append(
            "operation.outcome",
            actor=claims.sub,
            at=time.time(),
            attempt_seq=attempt.seq,
            capability=plan.capability,
            digest=plan.digest,
            outcome=outcome.status,
            summary=outcome.summary,
        )
        return Outcome(
            outcome.status, outcome.summary, outcome.detail, outcome.failure_kind, done.seq
        )
