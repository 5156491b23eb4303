"""Issue, verify and revoke short-lived credentials (Ed25519-signed JWTs bound to the agent's key).

Verification raises `InvalidCredential` with a stable code and never returns
False. A credential seen before skips the signature check (kept in a bounded
cache keyed by the exact token), but expiry, revocation and the agent's state
are checked on every use. Costs are dictionary lookups: they do not grow with
the number of agents, issued or revoked credentials.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeGuard

import structlog
from sqlalchemy import Connection

from opsgate import capabilities as caps
from opsgate.audit.summary import RefusalSummary
from opsgate.audit.writer import Change, Unit
from opsgate.boundary import typed_errors
from opsgate.cache import BoundedCache
from opsgate.clock import to_epoch
from opsgate.config import HARD_TTL_CEILING_MINUTES, Config
from opsgate.credentials import jws
from opsgate.credentials.keyring import KeyRing
from opsgate.credentials.proof import ProofChecker, ProofRequest
from opsgate.environments import Environments
from opsgate.errors import (
    CapabilityError,
    CredentialError,
    CredentialNotFound,
    CredentialTtlInvalid,
    InvalidCredential,
    OperatorInvalid,
    OpsgateError,
    RevokedCredential,
    RevokedOnIssue,
    UnusableAgentCredential,
    UnusableAgentIssue,
    check_reason,
    shown,
)
from opsgate.identity.keys import b64url
from opsgate.state import AgentState, LiveState, unusable_code
from opsgate.store import Store, audit_rows
from opsgate.store import agents as agent_rows
from opsgate.store import state_changes as feed

if TYPE_CHECKING:
    from opsgate.audit.log import AuditLog

log = structlog.get_logger("opsgate.credentials")
# 16 random bytes, base64url: the only credential ids this gate issues.
_JTI = re.compile(r"[A-Za-z0-9_-]{22}\Z")
_CACHE_MAX = 100_000
_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "cnf"})
_NUM = (int, float)
# At most how long a revocation waits for the attempt to chain its deferred audit
# event (one that meets a stalled replica fails within the lock timeout); it then
# returns anyway: the event is durable, and the flusher keeps at it.
AUDIT_WAIT_SECONDS = 5.0
_MAX_LIFETIME = HARD_TTL_CEILING_MINUTES * 60 + 0.001  # credentials once carried ms times


def _is_number(value: object) -> TypeGuard[int | float]:
    """An int or a float: type() is exact, so bools (an int subclass) and anything
    else are refused."""
    return type(value) in _NUM


def _ms_floor(t: float) -> float:
    return math.floor(t * 1000) / 1000


def issue_second(t: float, not_before: float | None) -> int:
    """The whole-second iat of a credential issued at `t`.

    Credentials carry integer NumericDates (what JOSE libraries in every language
    parse), while a per-agent revocation cuts at a finer instant: a credential is
    revoked when its `iat <= not_before`. An issuance later in the same second as
    a revocation would be covered by it, so it is stamped with the next second
    (valid within the verifier's leeway). A cut-off a whole second or more ahead
    (a clock running ahead) is not jumped: that issuance is refused instead.
    """
    iat = math.floor(t)
    if not_before is not None and iat <= not_before < iat + 1:
        return iat + 1
    return iat


def revocation_cutoff(conn: Connection, dids: list[str], t: float) -> float:
    """The per-agent "not before" for revoking every credential issued so far.

    At least `t`, and never before the latest iat already issued to these agents
    (rows locked, in the revoking transaction): a credential stamped by a replica
    whose clock runs ahead, or given a future `now`, is covered too.
    """
    return _ms_floor(max([t, *agent_rows.latest_issued(conn, dids)]))


class PossessionCheck(ABC):
    """A surface's own proof of possession (the HTTP API's DPoP proof), checked by
    `verify` against the credential's verified claims, like the SDK's proof string.

    `check` raises InvalidCredential; the refusal of a genuine credential is then
    misuse of its agent, charged once, exactly as a bad SDK proof is. A base class,
    not a runtime Protocol: `verify` asks isinstance on every request, and a
    Protocol's check costs more than the rest of a cached verification.
    """

    @abstractmethod
    def check(
        self, claims: Claims, *, token: str, request: ProofRequest | None, now: float
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Credential:
    """An issued credential. The token is a bearer secret: it is never in repr()."""

    token: str = field(repr=False)
    jti: str
    agent_id: str
    scope: list[str]
    issued_at: datetime
    expires_at: datetime
    kid: str

    @property
    def ttl_seconds(self) -> float:
        return (self.expires_at - self.issued_at).total_seconds()


@dataclass(frozen=True, slots=True)
class Claims:
    """Verified claims of a credential."""

    sub: str
    jti: str
    scope: tuple[str, ...]
    iat: float
    nbf: float
    exp: float
    iss: str
    aud: str
    jkt: str
    kid: str
    parsed_scope: tuple[caps.Capability, ...] = field(repr=False, compare=False)

    @property
    def agent_id(self) -> str:
        return self.sub

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.exp, UTC)

    def __getitem__(self, key: str) -> Any:
        if key == "cnf":
            return {"jkt": self.jkt}
        if key == "scope":
            return list(self.scope)
        if key in ("sub", "jti", "iat", "nbf", "exp", "iss", "aud"):
            return getattr(self, key)
        raise KeyError(key)


@typed_errors
class CredentialManager:
    """The gate's credential authority."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        keyring: KeyRing,
        state: LiveState,
        audit: AuditLog,
        agent_state: Callable[[str], AgentState],
        descendants: Callable[[Connection, str], list[str]],
        on_escalation: Callable[[str, str, float], None],
        issuer: str,
    ) -> None:
        """`agent_state` reads an agent (by name or did); `descendants` lists the dids
        below one, locking their rows, inside the revoking transaction."""
        self._config = config
        self._environments = Environments.from_config(config)
        self._limits = config.limits
        self._store = store
        self._keyring = keyring
        self._state = state
        self._audit = audit
        self._agent_state = agent_state
        self._descendants = descendants
        self.issuer = issuer
        self.audience = config.audience
        # Tokens that verified, with their claims: only what can change is checked again.
        self._seen: BoundedCache[str, Claims] = BoundedCache(_CACHE_MAX)
        self.proofs = ProofChecker(store)
        # Called with (did, reason, now) when an issuance asks for more than the grants.
        self._on_escalation = on_escalation
        # Refusals no agent can be charged for: counted, written as periodic summaries.
        self.unproven_refusals = RefusalSummary(
            audit, interval=config.audit.refusal_summary_seconds
        )

    # -- issuing ------------------------------------------------------------------

    def _ttl_seconds(self, ttl_minutes: object) -> float:
        limit = self._limits.max_ttl_minutes
        if ttl_minutes is None:
            return self._limits.default_ttl_minutes * 60.0
        if isinstance(ttl_minutes, bool) or not isinstance(ttl_minutes, (int, float)):
            raise CredentialTtlInvalid(
                "ttl_minutes must be a number of minutes", code="ttl_invalid"
            )
        if isinstance(ttl_minutes, int) and ttl_minutes > limit:
            minutes = math.inf  # an int too large for a float is still just too long
        else:
            minutes = float(ttl_minutes)
        if (isinstance(ttl_minutes, float) and not math.isfinite(ttl_minutes)) or minutes <= 0:
            raise CredentialTtlInvalid(
                f"ttl_minutes must be greater than 0, got {ttl_minutes!r:.40}", code="ttl_invalid"
            )
        if minutes > limit:
            raise CredentialError(
                f"ttl_minutes {ttl_minutes!r:.40} exceeds the configured maximum of {limit} "
                f"(hard ceiling {HARD_TTL_CEILING_MINUTES})",
                code="ttl_too_long",
            )
        if minutes * 60.0 < 1.0:
            raise CredentialTtlInvalid(
                f"ttl_minutes {ttl_minutes!r:.40} is shorter than one second", code="ttl_invalid"
            )
        return minutes * 60.0

    def _check_scope(self, scope: object, grants: tuple[caps.Capability, ...]) -> list[str]:
        if isinstance(scope, str) or not isinstance(scope, (list, tuple)) or not scope:
            raise CredentialError(
                "scope must be a non-empty list of capabilities", code="scope_invalid"
            )
        if len(scope) > self._limits.max_scope_entries:
            raise CredentialError(
                f"scope has more than {self._limits.max_scope_entries} entries",
                code="scope_invalid",
            )
        out: list[str] = []
        for entry in scope:
            # CapabilityError for malformed / unrestricted; canonical (case, aliases).
            resolved = self._environments.resolve(caps.parse_grant(entry))
            if not caps.covered_by_any(grants, resolved.capability):
                raise CredentialError(
                    f"scope {shown(entry)} is not covered by the agent's grants",
                    code="scope_not_covered",
                )
            canonical = str(resolved.check().capability)
            if canonical not in out:
                out.append(canonical)
        return out

    def issue_credential(
        self,
        agent_id: str,
        scope: list[str],
        ttl_minutes: float | None = None,
        *,
        now: datetime | float | None = None,
        requested_by: str | None = None,
    ) -> Credential:
        """Issue a credential for `scope` (each entry covered by the agent's grants).

        `requested_by` names an operator issuing it (the CLI): the request is the
        operator's, audited with the operator as actor, and a refused scope is the
        operator's mistake, charged to no agent. Without it the agent is asking for
        itself, and a scope beyond its grants is an escalation attempt.
        """
        if requested_by is not None and (
            not isinstance(requested_by, str) or not requested_by.strip()
        ):
            raise OperatorInvalid("requested_by must name the operator", code="operator_invalid")
        t = _ms_floor(to_epoch(now))
        ttl = self._ttl_seconds(ttl_minutes)
        self._state.maybe_refresh()  # another replica may have rotated keys or suspended the agent
        state = self._agent_state(agent_id)
        refusal = state.usable_at(t)
        if refusal is not None:
            raise UnusableAgentIssue(
                f"agent {state.name!r} cannot receive credentials ({refusal.replace('_', ' ')})",
                code=refusal,
            )
        assert state.grant is not None
        try:
            granted = self._check_scope(scope, state.grant.parsed)
        except (CredentialError, CapabilityError) as exc:
            self._audit.append(
                "credential.refused",
                actor=state.did if requested_by is None else requested_by,
                at=t,
                agent=None if requested_by is None else state.did,
                code=exc.code,
                reason=exc.message,
            )
            if requested_by is None and exc.code in (
                "scope_not_covered",
                "capability_unrestricted",
            ):
                self._on_escalation(state.did, exc.message, t)
            raise
        iat = issue_second(t, state.credentials_not_before)
        credential, not_before = self._issue(state, granted, iat, t, ttl, requested_by)
        if credential is None:
            # A per-agent revocation committed first in this very second: stamp the
            # next second once, so the credential is neither covered nor dead on arrival.
            again = issue_second(t, not_before)
            if again > iat:
                credential, _ = self._issue(state, granted, again, t, ttl, requested_by)
        if credential is None:
            # A per-agent revocation committed first and covers this iat: the token
            # is dead; say so rather than hand it out.
            raise RevokedOnIssue(
                f"credentials of agent {state.name!r} were revoked while this one was issued",
                code="revoked",
            )
        return credential

    def _issue(
        self,
        state: AgentState,
        scope: list[str],
        iat: int,
        t: float,
        ttl: float,
        requested_by: str | None = None,
    ) -> tuple[Credential | None, float | None]:
        """Sign and audit one credential stamped `iat`; (None, the agent's not-before)
        when a per-agent revocation that committed first covers it."""
        exp = iat + math.floor(ttl + 1e-6)
        if state.expires_at is not None:
            exp = min(exp, math.floor(state.expires_at))  # never outlives the agent
        if exp <= iat:
            raise UnusableAgentIssue(
                f"agent {state.name!r} expires within a second", code="agent_expired"
            )
        kid, key = self._keyring.signer()
        jti = b64url(secrets.token_bytes(16))
        claims = {
            "iss": self.issuer,
            "sub": state.did,
            "aud": self.audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": jti,
            "scope": scope,
            "cnf": {"jkt": state.jkt},
        }
        credential = Credential(
            token=jws.encode(claims, key, kid, self._limits.signing_algorithm),
            jti=jti,
            agent_id=state.did,
            scope=scope,
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
            kid=kid,
        )
        seen: list[float | None] = [None]
        # One unit of work: the issuance's record and the agent's latest iat commit
        # together (group-committed with other issuances), or neither does.
        issuance = Unit(
            "credential.issued",
            {
                "agent": None if requested_by is None else state.did,
                "jti": jti,
                "scope": scope,
                "expires_at": exp,
                "kid": kid,
            },
            actor=state.did if requested_by is None else requested_by,  # who asked
            at=t,
            change=self._note_issue(state, iat, seen),
        )
        record = self._audit.commit(issuance)
        inactive = record.event.get("inactive_on_issue")
        if inactive:
            # Suspended or revoked on another replica before this view caught up.
            self._state.invalidate_agent(state.did)
            raise UnusableAgentIssue(
                f"agent {state.name!r} cannot receive credentials (agent {inactive})",
                code=unusable_code(str(inactive)),
            )
        if record.event.get("revoked_on_issue"):
            self._state.invalidate_agent(state.did)
            return None, seen[0]
        return credential, None

    def _note_issue(self, state: AgentState, iat: int, seen: list[float | None]) -> Change:
        """In the issuance's transaction: record the agent's latest iat, so a
        later per-agent revocation's cut-off covers it, and notice a revocation
        that committed first (its not-before lands in `seen`), or a suspension or
        revocation that did (the credential is then recorded as dead on issue)."""
        paramstyle = "qmark" if self._store.is_sqlite else "format"

        def note(cur: Any) -> dict[str, Any] | None:
            row = agent_rows.note_issued_on_cursor(cur, state.did, iat, paramstyle=paramstyle)
            nb = None if row is None else row[0]
            seen[0] = nb
            if row is not None and row[1] != "active":
                return {"revoked_on_issue": True, "inactive_on_issue": row[1]}
            return {"revoked_on_issue": True} if nb is not None and iat <= nb else None

        return Change(note, lock_order=(state.depth, state.did))

    # -- verifying ------------------------------------------------------------------

    def verify(
        self,
        token: object,
        *,
        now: datetime | float | None = None,
        proof: str | PossessionCheck | None = None,
        proof_context: ProofRequest | None = None,
        audit: bool = True,
    ) -> Claims:
        """Check signature, algorithm, issuer, audience, time, revocation, agent and binding.

        With a proof (always, under `require_proof`), the proof must be signed by the
        credential's key for exactly `proof_context`, the request being made.
        """
        t = to_epoch(now)
        self._state.maybe_refresh()
        try:
            claims = self._seen.get(token) if isinstance(token, str) else None
            if claims is None:
                claims = self._verify_fresh(token)
            try:
                self._check_live(claims, t)
            except InvalidCredential as dead:
                if dead.detail.get("misuse") and self._possessed(
                    claims, token, proof, proof_context, t
                ):
                    # The key's own holder presented a credential that was cut or ran
                    # out (an operator's revocation, a lapsed renewal, a suspension):
                    # refused and recorded, but no theft to charge.
                    dead.detail.update(misuse=False, proven=True)
                raise
            if proof is None and self._config.require_proof:
                raise InvalidCredential(
                    "credential presented without proof of its key",
                    code="missing_proof",
                    agent=claims.sub,
                    misuse=True,
                    jti=claims.jti,
                    exp=claims.exp,
                )
            if proof is not None:
                assert isinstance(token, str)
                try:
                    self._check_possession(claims, token, proof, proof_context, t)
                except InvalidCredential as exc:
                    # A genuine credential without proof of its key: misuse, charged.
                    exc.detail.update(agent=claims.sub, misuse=True, jti=claims.jti, exp=claims.exp)
                    raise
        except InvalidCredential as exc:
            if "agent" not in exc.detail:
                exc.detail["agent"] = None
            if audit:
                self._audit_rejection(exc, t)
            raise
        return claims

    def _possessed(
        self,
        claims: Claims,
        token: object,
        proof: str | PossessionCheck | None,
        proof_context: ProofRequest | None,
        t: float,
    ) -> bool:
        """Whether `proof` shows the presenter holds the credential's key, for exactly
        this request (the same checks as a live credential's proof, its id used once)."""
        if proof is None or not isinstance(token, str):
            return False
        try:
            with self.proofs.recording():  # its id's replay known now, not at a batch's end
                self._check_possession(claims, token, proof, proof_context, t)
        except InvalidCredential:
            return False
        return True

    def _check_possession(
        self,
        claims: Claims,
        token: str,
        proof: str | PossessionCheck,
        proof_context: ProofRequest | None,
        t: float,
    ) -> None:
        if isinstance(proof, PossessionCheck):
            proof.check(claims, token=token, request=proof_context, now=t)
        else:
            self.proofs.check(
                proof,
                token=token,
                sub=claims.sub,
                request=proof_context,
                now=t,
                leeway=self._limits.leeway_seconds,
                skew=self._limits.proof_clock_skew_seconds,
            )

    def still_live(self, claims: Claims, now: float) -> bool:
        """Whether verified claims are still good now (not revoked, expired, or their
        agent suspended since): for a caller that verified a moment ago and decides
        later, to take the full `verify` again (which refuses and audits) when not."""
        self._state.maybe_refresh()
        try:
            self._check_live(claims, now)
        except InvalidCredential:
            return False
        return True

    def _verify_fresh(self, token: object) -> Claims:
        header, p, signing_input, signature = jws.split(
            token,
            max_bytes=self._limits.max_token_bytes,
            allowed_algs=self._limits.allowed_algorithms,
        )
        key = self._keyring.get(header["kid"])
        if key is None:
            self._state.refresh(force=True)  # a replica may have rotated a moment ago
            key = self._keyring.get(header["kid"])
            if key is None:
                raise InvalidCredential("token is signed with an unknown key", code="unknown_kid")
        jws.check_signature(key.raw, signing_input, signature)
        c = jws.payload(p)
        claims = self._claims(c, header["kid"])
        # A replica may still sign with a key while its view of another's rotation
        # is not yet stale; later than that, a retired key minting is refused.
        if key.retired_at is not None and claims.iat > key.retired_at + self._state.max_age:
            raise InvalidCredential("token is signed with a retired key", code="bad_signature")
        assert isinstance(token, str)
        self._seen.put(token, claims)
        return claims

    def _claims(self, c: dict[str, Any], kid: str) -> Claims:
        def bad(what: str, code: str = "malformed") -> InvalidCredential:
            return InvalidCredential(f"token {what}", code=code)

        if c.get("iss") != self.issuer:
            raise bad("was issued by another issuer", "bad_issuer")
        if c.get("aud") != self.audience:
            raise bad("is meant for another audience", "bad_audience")
        sub, jti, scope, cnf = c.get("sub"), c.get("jti"), c.get("scope"), c.get("cnf")
        if not isinstance(sub, str) or not sub.startswith("did:key:"):
            raise bad("has no valid subject")
        if not isinstance(jti, str) or not _JTI.match(jti):
            raise bad("has no valid id")
        iat, nbf, exp = c.get("iat"), c.get("nbf"), c.get("exp")
        if not (_is_number(iat) and _is_number(nbf) and _is_number(exp)):
            raise bad("has malformed time claims")
        if not (math.isfinite(iat) and math.isfinite(nbf) and math.isfinite(exp)):
            raise bad("has malformed time claims")
        if exp <= iat or exp - iat > _MAX_LIFETIME:
            raise bad("has a lifetime outside the allowed range", "bad_lifetime")
        if type(scope) is not list or not scope or len(scope) > self._limits.max_scope_entries:
            raise bad("has a malformed scope")
        try:
            parsed = caps.parse_all(scope, grant=True)
        except CapabilityError as exc:
            raise bad("has a malformed scope") from exc
        if type(cnf) is not dict or type(cnf.get("jkt")) is not str or len(cnf) != 1:
            raise bad("is not bound to a key", "unbound")
        if not _CLAIMS.issuperset(c):
            raise bad("has unexpected claims")
        return Claims(
            sub=sub,
            jti=jti,
            scope=tuple(scope),
            iat=float(iat),
            nbf=float(nbf),
            exp=float(exp),
            iss=c["iss"],
            aud=c["aud"],
            jkt=cnf["jkt"],
            kid=kid,
            parsed_scope=parsed,
        )

    def _check_live(self, claims: Claims, t: float) -> None:
        """Everything that can change after issuance; charged to the (proven) agent."""
        leeway = self._limits.leeway_seconds

        # A proven agent's misuse: charged to it, and named in the audit.
        misuse = {"agent": claims.sub, "misuse": True, "jti": claims.jti, "exp": claims.exp}

        state = self._state.agent(claims.sub)
        if state is None:
            raise InvalidCredential("token subject is not a known agent", code="unknown_agent")
        if state.jkt != claims.jkt:
            raise InvalidCredential("token is bound to another key", code="unbound")
        if t >= claims.exp + leeway:
            raise InvalidCredential("credential has expired", code="expired", **misuse)
        if t < claims.nbf - leeway:
            raise InvalidCredential(
                "credential is not valid yet", code="not_yet_valid", agent=claims.sub
            )
        if self._state.is_revoked(claims.jti):
            raise RevokedCredential("credential has been revoked", code="revoked", **misuse)
        nb = state.credentials_not_before
        if nb is not None and claims.iat <= nb:
            raise RevokedCredential("credential has been revoked", code="revoked", **misuse)
        refusal = state.usable_at(t)
        if refusal is not None:
            raise UnusableAgentCredential(
                f"credential's agent cannot act ({refusal.replace('_', ' ')})",
                code=refusal,
                **misuse,
            )

    def _audit_rejection(self, exc: InvalidCredential, t: float) -> None:
        """A refusal that names a proven agent is recorded on its own; one whose subject
        is unproven (forged, garbage, foreign, unknown agent) is only counted: a flood
        of junk must not cost a durable row and an fsync each."""
        unit = self.rejection_record(exc, t)
        if unit is None:
            return
        try:
            self._audit.commit(unit)
        except OpsgateError as err:  # the credential is refused either way
            log.error("credential rejection not audited", code=exc.code, audit_error=err.code)

    def rejection_record(self, exc: InvalidCredential, t: float) -> Unit | None:
        """The audit record `verify` writes for a refusal (with `audit=False` it is the
        caller's to write): None for one whose subject is unproven, only counted."""
        if exc.detail.get("agent") is None:
            self.unproven_refusals.add(exc.code, exc.message, t)
            return None
        return Unit(
            "credential.rejected",
            {"code": exc.code, "reason": exc.message, "jti": exc.detail.get("jti")},
            actor=exc.detail.get("agent"),
            at=t,
        )

    # -- revoking -------------------------------------------------------------------

    def revoke(
        self, jti: str, *, reason: str | None = None, now: datetime | float | None = None
    ) -> None:
        """Revoke one credential by id; idempotent, checked on every later use.

        Only a credential this gate issued can be revoked: an id it never issued
        (a typo, another gate's) is `not_found` and changes nothing, rather than a
        reassuring "revoked" for a token that is still out there under another id.
        """
        if not isinstance(jti, str) or not _JTI.match(jti):
            raise CredentialError(f"{shown(jti)} is not a credential id", code="jti_invalid")
        reason = check_reason(reason)
        t = to_epoch(now)
        # Kept until any token with this id must have expired: measured from the
        # later of the caller's time and the wall clock, so a revocation given a
        # past `now` is not forgotten while the token still lives.
        expires = max(t, time.time()) + HARD_TTL_CEILING_MINUTES * 60 + self._limits.leeway_seconds
        # Commits without waiting for the audit head (a stalled replica may hold it):
        # its audit event is deferred in the same transaction and chained right after.
        with self._store.write() as conn:
            if not feed.is_revoked(conn, jti):
                if not audit_rows.credential_issued(conn, jti):
                    raise CredentialNotFound(
                        f"no credential {jti!r} was issued by this gate", code="not_found"
                    )
                if feed.insert_revoked(conn, jti, expires, t, reason):  # else revoked meanwhile
                    self._state.record_change(conn, "jti", jti, t)
            if self._state.prune_due():
                self._state.prune(conn)
            self._audit.defer_in(conn, "credential.revoked", at=t, jti=jti, reason=reason)
        self._state.add_revoked(jti, expires)
        self._audit.flush_deferred(wait=AUDIT_WAIT_SECONDS)

    def revoke_agent(
        self, agent_id: str, *, reason: str | None = None, now: datetime | float | None = None
    ) -> list[str]:
        """Revoke every credential issued so far to the agent and all its descendants.

        "So far" is every issuance that committed before this revocation, on any
        replica and whatever clock stamped it (see `revocation_cutoff`); one that
        commits after it and is still covered is refused when issued.
        """
        reason = check_reason(reason)
        t = to_epoch(now)
        root = self._agent_state(agent_id)
        with self._store.write() as conn:  # no audit head: see revoke()
            affected = [root.did, *self._descendants(conn, root.did)]
            nb = revocation_cutoff(conn, affected, t)
            agent_rows.cut_credentials(conn, affected, nb, t)
            for did in affected:
                self._state.record_change(conn, "agent", did, t)
            self._audit.defer_in(
                conn,
                "credentials.revoked_for_agent",
                actor=root.did,
                at=t,
                agents=affected,
                reason=reason,
            )
        for did in affected:
            self._state.invalidate_agent(did)
        self._audit.flush_deferred(wait=AUDIT_WAIT_SECONDS)
        return affected


__all__ = [
    "Claims",
    "Credential",
    "CredentialManager",
    "PossessionCheck",
    "issue_second",
    "revocation_cutoff",
    "to_epoch",
]
