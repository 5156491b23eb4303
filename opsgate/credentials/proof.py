"""Proof of possession: a short JWS the agent signs with its own key for one request.

A credential names its holder's key (`cnf.jkt`). Where the gate demands proof,
the presenter signs {ath: SHA-256 of the token, req: digest of the request, iat,
jti} with the key behind the credential's `sub`. The request digest covers the
whole request (action, resource, params, ..., a secret write's value), so a stolen
token without the agent's private key is useless, and a proof seen in transit cannot
be reused for another request or replayed: each proof is accepted once, on any replica.

Replay entries live until the proof's own `iat` plus the acceptance window plus
the tolerated clock skew, and are accepted and pruned by the database's clock
(never a caller's `now`): no replica, whatever its clock, can accept a proof
whose entry may already be gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsgate.audit.writer import DROP, Change, Unit
from opsgate.cache import BoundedCache
from opsgate.credentials import jws
from opsgate.errors import CredentialError, InvalidCredential
from opsgate.identity.keys import b64url, b64url_decode, public_key_from_did
from opsgate.store import Store, driver_failure, proofs
from opsgate.store.group import GroupCommit

if TYPE_CHECKING:
    from opsgate.operations.base import Operation
    from opsgate.secrets.value import SecretValue

PROOF_TYP = "opsgate-pop+jwt"
MAX_PROOF_AGE_SECONDS = 60
# A prune never removes an entry until this long after the database says it expired,
# so a transaction that checked the clock just before cannot slip a replay past it.
PRUNE_GRACE_SECONDS = 60
# Expired entries are pruned by a transaction at most this often (per process): a prune
# in every batch was one more statement per commit, and in a full store it dirtied
# pages of the id index that batch after batch (ids are random) for a few rows each.
PRUNE_EVERY_SECONDS = 1.0
# What the replay store says of one proof id.
_ACCEPTED, _STALE, _REPLAYED = "accepted", "stale", "replayed"


def token_hash(token: str) -> str:
    """The `ath` of a credential (SHA-256, base64url). Remembered for the tokens seen
    lately (of a credential's length only): an agent presents one credential with
    every proof for minutes."""
    known = _ATH.get(token)
    if known is None:
        known = b64url(hashlib.sha256(token.encode("ascii")).digest())
        if len(token) <= REMEMBERED_TOKEN_MAX:
            _ATH.put(token, known)
    return known


# Tokens longer than this are answered but never remembered by a token's memo (this
# one, and the server's of claimed subs): the gate's credentials are ~600 characters,
# so junk of the largest header allowed cannot fill memory.
REMEMBERED_TOKEN_MAX = 2048
_ATH_MAX = 4096
_ATH: BoundedCache[str, str] = BoundedCache(_ATH_MAX)


def request_digest(kind: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 (base64url) of the canonical JSON of a request, as the gate hashes plans.

    Total: a request that is not plain JSON (a huge integer, a lone surrogate, a
    non-string key) still gets a digest of its own, never one a JSON request has;
    the gate refuses such a request after authenticating it anyway.
    """
    body = {"kind": kind, **fields}
    try:
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        try:
            raw = b"\x00" + repr(body).encode("utf-8", "backslashreplace")
        except RecursionError:
            raw = b"\x00unrepresentable"
    return b64url(hashlib.sha256(raw).digest())


@dataclass(frozen=True, slots=True)
class ProofRequest:
    """What a proof is for. Build it with `execute`, `authorize` or `resume`; the
    proof signs `digest_for(token, jti)`, so changing anything in the request
    invalidates it.

    `secret` is a secret write's value (`Operation.secret`): bound by the proof like
    the rest of the request, but never as a plain hash (see `digest_for`)."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    secret: SecretValue | None = field(default=None, repr=False)

    @classmethod
    def execute(cls, operation: Operation, approval_id: str | None = None) -> ProofRequest:
        """For `gate.execute(token, operation, approval_id=...)`."""
        return cls(
            "execute",
            {
                "action": operation.action,
                "resource": operation.resource,
                "params": operation.params,
                "dry_run": operation.dry_run,
                "approval": approval_id,
            },
            operation.secret,
        )

    @classmethod
    def authorize(cls, capability: str, params: Mapping[str, Any] | None = None) -> ProofRequest:
        """For `gate.authorize(token, capability, params=...)`."""
        return cls("authorize", {"capability": capability, "params": params})

    @classmethod
    def resume(cls, approval_id: str, secret: SecretValue | None = None) -> ProofRequest:
        """For `gate.resume(approval_id, token, secret=...)`: the approval fixes the
        operation; a secret write's value, supplied again, is bound like execute's."""
        return cls("resume", {"approval": approval_id}, secret)

    @property
    def digest(self) -> str:
        """The digest of a request without a secret value. A secret write's depends on
        the proof that carries it: use `digest_for`."""
        if self.secret is not None:
            raise CredentialError(
                "a request with a secret value has no digest of its own: use digest_for",
                code="proof_request_invalid",
            )
        return request_digest(self.kind, self.fields)

    def digest_for(self, token: str, jti: str) -> str:
        """The `req` a proof with id `jti` for `token` signs.

        Without a secret value, `digest`. With one, the request also holds
        `secret`: an HMAC-SHA256 of the value keyed by the credential and this
        proof's own random id. A proof header may be logged where the body is not:
        it then carries no plain hash of the value (a short password would be a
        dictionary lookup away), and nothing that matches another proof's. The key
        `secret` is present exactly when a value is, so a proof for a write without
        a value never verifies for one with a value, nor the other way round.
        """
        if self.secret is None:
            return request_digest(self.kind, self.fields)
        return request_digest(self.kind, {**self.fields, "secret": _bind(self.secret, token, jti)})


_SECRET_LABEL = b"opsgate/proof-secret/v1\x00"


def _bind(secret: SecretValue, token: str, jti: str) -> str:
    """HMAC-SHA256 (base64url) of a secret value under the credential and a proof's id.

    Total, like `request_digest`: a value that is no SecretValue (refused by the gate
    after authentication) is bound by its type's name only, never by its text."""
    from opsgate.secrets.value import SecretValue as Value  # the proof module stays light

    value = secret.reveal() if isinstance(secret, Value) else f"\x00{type(secret).__name__}"

    def raw(text: str) -> bytes:
        return text.encode("utf-8", "surrogatepass")

    mac = hmac.new(_SECRET_LABEL + raw(token), raw(jti) + b"\x00" + raw(value), hashlib.sha256)
    return b64url(mac.digest())


def make_proof(key: Ed25519PrivateKey, token: str, request: ProofRequest, now: float) -> str:
    """Sign a proof of possession of `key` for one use of `token` on `request`."""
    header = b64url(orjson.dumps({"alg": "EdDSA", "typ": PROOF_TYP}))
    jti = b64url(secrets.token_bytes(16))
    claims = {
        "ath": token_hash(token),
        "req": request.digest_for(token, jti),
        "iat": now,
        "jti": jti,
    }
    body = b64url(orjson.dumps(claims))
    return f"{header}.{body}.{b64url(key.sign(f'{header}.{body}'.encode('ascii')))}"


class ProofChecker:
    """Checks proofs and records each proof id in the state database, so none is
    accepted twice, on this replica or any other."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sql = proofs.ProofSQL(store)
        # One connection per group commit: each has one leader writing at a time.
        self._writer = store.dedicated_writer()
        self._writer_before_audit = store.dedicated_writer()
        self._uses: GroupCommit[tuple[str, float, float], str] = GroupCommit(self._record_uses)
        self._uses_before_audit: GroupCommit[tuple[str, float, float], str] = GroupCommit(
            lambda uses: self._record_uses(uses, durable=False)
        )
        # `noting()`: ids noted on this thread, recorded later at once (`batch`).
        self._noting = threading.local()
        self._next_prune = 0.0  # monotonic: when a transaction prunes again
        self.noted_recorded = 0  # diagnostics: noted ids recorded through a `batch`

    def close(self) -> None:
        self._writer.close()
        self._writer_before_audit.close()

    def check(
        self,
        proof: object,
        *,
        token: str,
        sub: str,
        request: ProofRequest | None,
        now: float,
        leeway: int,
        skew: int,
    ) -> None:
        def bad(why: str, code: str = "bad_proof") -> InvalidCredential:
            return InvalidCredential(f"proof of possession refused: {why}", code=code)

        if not isinstance(proof, str) or len(proof) > 2048 or proof.count(".") != 2:
            raise bad("malformed proof")
        h, p, s = proof.split(".")
        try:
            header: Any = orjson.loads(b64url_decode(h))
            claims: Any = orjson.loads(b64url_decode(p))
            signature = b64url_decode(s)
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise bad("malformed proof") from exc
        if not isinstance(header, dict) or header != {"alg": "EdDSA", "typ": PROOF_TYP}:
            raise bad("proof header is not accepted")
        try:
            jws.check_signature(public_key_from_did(sub), f"{h}.{p}".encode("ascii"), signature)
        except InvalidCredential as exc:
            raise bad("proof is not signed by the credential's key") from exc
        if not isinstance(claims, dict):
            raise bad("malformed proof")
        if claims.get("ath") != token_hash(token):
            raise bad("proof is for another token")
        iat, jti = claims.get("iat"), claims.get("jti")
        if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not isinstance(jti, str):
            raise bad("malformed proof")
        if not 16 <= len(jti) <= 64:
            raise bad("malformed proof")
        if request is None or claims.get("req") != request.digest_for(token, jti):
            raise bad("proof is for another request")
        window = MAX_PROOF_AGE_SECONDS + leeway
        if not math.isfinite(iat) or abs(now - iat) > window:
            raise bad("proof is stale")
        self._use_once(jti, float(iat), window + skew, bad)

    def use_once(
        self, jti: str, iat: float, window: float, bad: Callable[..., InvalidCredential]
    ) -> None:
        """Accept the single-use id `jti` of a proof in another format (the HTTP API's
        DPoP proofs and client assertions, namespaced by the caller) once, on any
        replica, by the same database clock and expiry as the SDK's proofs."""
        self._use_once(jti, iat, window, bad)

    def use_once_before_audit(
        self, jti: str, iat: float, window: float, bad: Callable[..., InvalidCredential]
    ) -> None:
        """`use_once` for a request the gate always audits durably before it answers
        (authorize, execute, resume): the id is committed without a disk sync of its
        own, and the audit record's commit, which the answer waits for, makes it
        durable (see `Store.write`). Half the syncs of a request with a proof.

        Inside `noting()` on this thread, the id is only noted: the caller records the
        ids noted with `record_noted` and goes on with a request only when its id was
        accepted (the proof was checked completely; the id is its last step)."""
        noted: list[tuple[str, float, float]] | None = getattr(self._noting, "uses", None)
        if noted is not None:
            noted.append((jti, iat, window))
            return
        self._use_once(jti, iat, window, bad, self._uses_before_audit)

    @contextlib.contextmanager
    def noting(self) -> Iterator[list[tuple[str, float, float]]]:
        """Proof ids of requests audited before they are answered, noted on this thread
        instead of recorded one transaction each (see `use_once_before_audit`)."""
        noted: list[tuple[str, float, float]] = []
        self._noting.uses = noted
        try:
            yield noted
        finally:
            self._noting.uses = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Inside `noting()`: ids checked here are recorded at once, not noted (a check
        whose answer is needed before the batch records its ids)."""
        noted = getattr(self._noting, "uses", None)
        self._noting.uses = None
        try:
            yield
        finally:
            self._noting.uses = noted

    def batch(self) -> BatchProofs:
        """Noted proof ids of a batch of requests, to be recorded in the transaction of
        the batch's audit records (see `BatchProofs`)."""
        return BatchProofs(self)

    def record_in(self, cur: Any, uses: list[tuple[str, float, float]]) -> list[bool]:
        """Record noted proof ids on the caller's transaction (one that commits durably
        before anyone is answered): for each, whether it was accepted. One that is not
        (stale by the database's clock, used before, or earlier in `uses`) is to be
        checked again the one-at-a-time way, which refuses it as it always does."""
        verdicts = self._record_on(cur, uses)
        self.noted_recorded += len(uses)
        return [v == _ACCEPTED for v in verdicts]

    def _use_once(
        self,
        jti: str,
        iat: float,
        window: float,
        bad: Any,
        uses: GroupCommit[tuple[str, float, float], str] | None = None,
    ) -> None:
        """Record the proof id, accepted only while the database's clock is within
        `window` of its iat; entries stay until iat + window (+ grace) by that clock.
        Concurrent callers share one transaction (group commit)."""
        verdict = (uses or self._uses).submit((jti, iat, window))
        if verdict == _STALE:
            raise bad("proof is stale by the database's clock")
        if verdict == _REPLAYED:
            raise bad("proof was already used", code="proof_replayed")

    def _record_uses(
        self, uses: list[tuple[str, float, float]], *, durable: bool = True
    ) -> list[str]:
        """One transaction for a batch of proof ids: each is stale, replayed (already
        in the table, or earlier in this batch) or accepted."""
        writer = self._writer if durable else self._writer_before_audit
        try:
            with writer.transaction(durable=durable) as cur:
                return self._record_on(cur, uses)
        except self._store.driver_errors as exc:
            raise driver_failure(exc) from exc

    def _record_on(self, cur: Any, uses: list[tuple[str, float, float]]) -> list[str]:
        """`_record_uses` on a transaction's cursor."""
        sql = self._sql
        # Read once per transaction: compared with bound values, the prune below stays
        # an index range scan, whatever the number of live entries.
        db_now = sql.db_time(cur)
        verdicts = [
            _ACCEPTED if iat - window <= db_now <= iat + window else _STALE
            for _, iat, window in uses
        ]
        rows: dict[str, float] = {}
        for (jti, iat, window), verdict in zip(uses, verdicts, strict=True):
            if verdict == _ACCEPTED:
                rows.setdefault(jti, iat + window)
        inserted = sql.insert_new(cur, rows)
        for i, (jti, _, _) in enumerate(uses):
            if verdicts[i] != _ACCEPTED:
                continue
            if jti in inserted:
                inserted.discard(jti)  # a second use in the same batch is a replay
            else:
                verdicts[i] = _REPLAYED
        mono = time.monotonic()
        if mono >= self._next_prune:  # two threads may both prune: harmless
            self._next_prune = mono + PRUNE_EVERY_SECONDS
            sql.forget_before(cur, db_now - PRUNE_GRACE_SECONDS)
        return verdicts


class BatchProofs:
    """The noted proof ids of a batch of requests, recorded in the one transaction that
    writes the batch's audit records, and deciding there which of them stand.

    Each record of a request with noted ids is bound (`bind`) to a change of that
    transaction. The first to run records every bound request's ids; a request whose
    ids were not all accepted (replayed, stale by the database's clock) has all its
    records dropped there, and is to be taken again alone (`rejected`), which refuses
    it as always. So a batch costs one transaction, and nothing a request's proof does
    not stand behind is ever written or answered: its decision, made before its id was
    recorded, is thrown away with its records. Not thread-safe: one batch's.
    """

    def __init__(self, checker: ProofChecker) -> None:
        self._checker = checker
        self._ids: dict[int, list[tuple[str, float, float]]] = {}
        self._bound: set[int] = set()
        self._first = False  # whether a record is bound (the first records the ids)
        self.rejected: set[int] = set()  # set by the transaction, as it stands after it

    def note(self, request: int, uses: list[tuple[str, float, float]]) -> None:
        """Request `request`'s noted ids (none: its records are unconditional)."""
        if uses:
            self._ids[request] = list(uses)

    def bind(self, request: int, unit: Unit) -> Unit:
        """`unit`, one of request `request`'s records, standing or falling with the
        request's proof ids."""
        if request not in self._ids:
            return unit
        # The records bound carry no change of their own (authorize's do not): all
        # share the first place in the lock order, so the batch runs their changes
        # in the order they were bound, the first one first.
        if unit.change is not None:
            raise ValueError("a record bound to its proof ids carries no change of its own")
        self._bound.add(request)
        first = not self._first
        self._first = True

        def run(cur: Any) -> dict[str, Any] | None:
            if first:
                self._record(cur)
            return {DROP: True} if request in self.rejected else None

        return dataclasses.replace(unit, change=Change(run))

    def _record(self, cur: Any) -> None:
        """Record the ids of every bound request (again, on each attempt at the
        transaction: each starts from a rolled-back one)."""
        order = sorted(self._bound)
        uses = [use for request in order for use in self._ids[request]]
        verdicts = iter(self._checker.record_in(cur, uses))
        self.rejected = {
            request for request in order if not all([next(verdicts) for _ in self._ids[request]])
        }
