"""The gate's signing keys, anchored outside the database.

Private keys live in `<state_dir>/gate-keys/<kid>.pem` (0600); public keys live
in the state database, so every replica publishes and checks the same JWKS.

The database alone never makes a key a gate key. `init` pins the first key's
RFC 7638 thumbprint (and the gate id) in `<state_dir>/gate-pin.json`; every
later key carries an endorsement signed by the key it replaces. The gate's keys
are exactly the chain that starts at the pinned key and follows endorsements:
a row someone wrote into the database without the current private key chains
to nothing and is trusted for nothing. Retirement is the successor's signed
time, never a column an attacker could edit. A retired key's private half is
deleted once its successor is committed, so it can neither sign again nor be
stolen later; its public half stays for good (audit checkpoints were signed with
it) and is published until every credential it could have signed has expired.

A copy stolen before the rotation is what a rotation answers, so a retired key
registers no root agent: the rotation signs every valid root agent's record again
with the new key, its endorsement says so, and from then on only keys from that
one on count for root records (`KeyChain.root_signers`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection

from opsgate.config import HARD_TTL_CEILING_MINUTES, MAX_LEEWAY_SECONDS
from opsgate.errors import ConfigError
from opsgate.identity import keys
from opsgate.identity.records import gate_kid
from opsgate.store import Store, gate_keys, state_changes
from opsgate.store import agents as agent_rows

KEY_DIR = "gate-keys"
PIN_FILE = "gate-pin.json"
PIN_TYPE = "opsgate-gate-pin"
ROTATION_TYPE = "opsgate-gate-key-rotation"
ROOTS_RESIGNED = "re-signed"
PUBLISHED_AFTER_RETIREMENT = HARD_TTL_CEILING_MINUTES * 60 + MAX_LEEWAY_SECONDS
log = structlog.get_logger("opsgate.keys")


# -- the pin ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    """What the state dir holds about its gate: its id and its first key's thumbprint."""

    gate_id: str
    root_kid: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": PIN_TYPE, "v": 1, "gate_id": self.gate_id, "kid": self.root_kid}


def read_pin(state_dir: Path) -> Pin | None:
    """The state dir's pin, None when it has none; a damaged pin is an error, never None."""
    path = state_dir / PIN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"the gate pin '{PIN_FILE}' in '{state_dir}' is unreadable or malformed",
            code="pin_invalid",
        ) from exc
    gate_id = data.get("gate_id") if isinstance(data, dict) else None
    kid = data.get("kid") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("type") != PIN_TYPE
        or not isinstance(gate_id, str)
        or not gate_id.startswith("opsgate:")
        or not isinstance(kid, str)
        or len(kid) != 43
    ):
        raise ConfigError(
            f"the gate pin '{PIN_FILE}' in '{state_dir}' is malformed", code="pin_invalid"
        )
    return Pin(gate_id, kid)


def write_pin(state_dir: Path, pin: Pin) -> None:
    """Write the pin once (never overwritten): owner read/write, other processes read it."""
    path = state_dir / PIN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the gate pin '{PIN_FILE}': {exc.strerror}", code="state_dir_invalid"
        ) from exc
    try:
        os.write(fd, (json.dumps(pin.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the chain --------------------------------------------------------------------------------


def rotation_payload(
    gate_id: str, kid: str, public_key: str, prev_kid: str, at: float, *, roots: bool = False
) -> bytes:
    """What the replaced key signs: the new key, for this gate, at this time; with
    `roots`, also that every root agent's record was signed again with the new key, so
    no key before it signs a root agent any more (what rotations write since)."""
    body: dict[str, Any] = {
        "type": ROTATION_TYPE,
        "gate": gate_id,
        "kid": kid,
        "x": public_key,
        "prev": prev_kid,
        "at": float(at),
    }
    if roots:
        body["roots"] = ROOTS_RESIGNED
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def endorsement_kind(
    signature: bytes, by: bytes, gate_id: str, kid: str, public_key: str, prev_kid: str, at: float
) -> bool | None:
    """Whether `signature` by key `by` endorses this rotation: None when it does not,
    True when it also says the root agents were signed again, False for an older one."""
    for roots in (True, False):
        payload = rotation_payload(gate_id, kid, public_key, prev_kid, at, roots=roots)
        if keys.verify_signature(by, signature, payload):
            return roots
    return None


@dataclass(frozen=True, slots=True)
class GateKey:
    kid: str
    public: Ed25519PublicKey
    raw: bytes  # the 32 public key bytes, what the verify hot path needs
    created_at: float
    retired_at: float | None  # the successor's signed creation time
    prev_kid: str | None = None
    endorsement: str | None = None
    # Its endorsement says every root agent was signed again with it at its rotation.
    roots_resigned: bool = False

    @property
    def x(self) -> str:
        return keys.b64url(self.raw)


@dataclass(frozen=True, slots=True)
class UntrustedKey:
    """A gate_keys row that is not in the chain from the pin, and why."""

    kid: str
    reason: str


@dataclass(frozen=True, slots=True)
class KeyChain:
    """The gate's keys (root first) and every stored key that is not one of them."""

    keys: tuple[GateKey, ...]
    untrusted: tuple[UntrustedKey, ...]

    @property
    def tip(self) -> GateKey | None:
        return self.keys[-1] if self.keys else None

    def root_signers(self, now: float | None, grace: float = 0.0) -> dict[str, bytes]:
        """The keys whose signature makes a root agent's record valid at `now` (kid ->
        public key): the key every root was signed again with at the latest rotation
        that did so, and the keys after it; an earlier key only within `grace` of its
        retirement (a view or snapshot a moment old), never when `now` is None. So a
        retired key, even a stolen copy, signs no root agent after its rotation."""
        start = max((i for i, k in enumerate(self.keys) if k.roots_resigned), default=0)
        return {
            k.kid: k.raw
            for i, k in enumerate(self.keys)
            if i >= start
            or (now is not None and k.retired_at is not None and now < k.retired_at + grace)
        }


@dataclass(frozen=True, slots=True)
class _Row:
    kid: str
    raw: bytes
    at: float
    prev: str | None
    endorsement: str | None
    roots_resigned: bool = False


def _decode(row: Any) -> _Row | None:
    """A stored key row, or None when it is malformed or its kid is not its thumbprint."""
    try:
        kid, prev, endorsement = row.kid, row.prev_kid, row.endorsement
        raw = keys.b64url_decode(row.public_key)
        at = float(row.created_at)
        Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError, AttributeError):
        return None
    if (
        not isinstance(kid, str)
        or not math.isfinite(at)
        or (prev is not None and not isinstance(prev, str))
        or (endorsement is not None and not isinstance(endorsement, str))
        or keys.jwk_thumbprint(raw) != kid
    ):
        return None
    return _Row(kid, raw, at, prev, endorsement)


def _endorsed(row: _Row, by: _Row, gate_id: str) -> bool | None:
    """None when `by` does not endorse `row`; else whether it says roots were re-signed."""
    if row.endorsement is None:
        return None
    try:
        signature = keys.b64url_decode(row.endorsement)
    except ValueError:
        return None
    return endorsement_kind(
        signature, by.raw, gate_id, row.kid, keys.b64url(row.raw), by.kid, row.at
    )


def verify_key_chain(rows: Iterable[Any], pin: Pin) -> KeyChain:
    """Pure: the chain of keys from the pinned one, each endorsed by its predecessor.

    Two endorsed successors of one key (a fork) end the chain there: the gate
    never signs two (rotation checks the tip under a row lock), so a fork means
    its keys were misused, and neither branch is trusted.
    """
    decoded: dict[str, _Row] = {}
    untrusted: list[UntrustedKey] = []
    for row in rows:
        d = _decode(row)
        if d is None:
            kid = getattr(row, "kid", None)
            untrusted.append(
                UntrustedKey(
                    kid[:64] if isinstance(kid, str) else "<malformed>",
                    "its public key is malformed or is not the key its kid names",
                )
            )
        else:
            decoded[d.kid] = d
    successors: dict[str, list[_Row]] = {}
    for d in decoded.values():
        if d.prev is not None:
            successors.setdefault(d.prev, []).append(d)
    chain: list[_Row] = []
    root = decoded.get(pin.root_kid)
    if root is not None and root.prev is None:
        chain.append(root)
        seen = {root.kid}
        while True:
            tip = chain[-1]
            endorsed = [
                dataclasses.replace(s, roots_resigned=kind)
                for s in successors.get(tip.kid, ())
                if s.kid not in seen and (kind := _endorsed(s, tip, pin.gate_id)) is not None
            ]
            if len(endorsed) != 1:
                for s in endorsed:
                    untrusted.append(UntrustedKey(s.kid, f"a second successor of key {tip.kid}"))
                    seen.add(s.kid)
                break
            chain.append(endorsed[0])
            seen.add(endorsed[0].kid)
    in_chain = {c.kid for c in chain}
    flagged = {u.kid for u in untrusted}
    for d in decoded.values():
        if d.kid not in in_chain and d.kid not in flagged:
            reason = (
                "the pinned key's row has been altered"
                if d.kid == pin.root_kid
                else "it is not endorsed by a key that chains to the pinned key"
            )
            untrusted.append(UntrustedKey(d.kid, reason))
    out = [
        GateKey(
            r.kid,
            Ed25519PublicKey.from_public_bytes(r.raw),
            r.raw,
            r.at,
            chain[i + 1].at if i + 1 < len(chain) else None,
            r.prev,
            r.endorsement,
            r.roots_resigned,
        )
        for i, r in enumerate(chain)
    ]
    return KeyChain(tuple(out), tuple(untrusted))


@dataclass(frozen=True, slots=True)
class Rotation:
    kid: str
    prev_kid: str
    public_key: str  # base64url
    endorsement: str  # base64url signature of rotation_payload by prev_kid's key
    at: float


class KeyRing:
    """Thread-safe view of the gate's keys; `reload()` picks up other replicas' rotations."""

    def __init__(self, store: Store, state_dir: Path, pin: Pin) -> None:
        self._store = store
        self._dir = state_dir / KEY_DIR
        self.pin = pin
        self._lock = threading.Lock()
        self._chain = KeyChain((), ())
        self._keys: dict[str, GateKey] = {}
        self._current: tuple[str, Ed25519PrivateKey] | None = None
        # How long a retired key still signs root agents (a replica's view, a snapshot,
        # a moment old); the gate's live state sets it to its view's maximum age.
        self.root_grace = 1.0

    def load_chain(self) -> KeyChain:
        """The chain as the database holds it now (verified against the pin)."""
        with self._store.read() as conn:
            rows = gate_keys.chain_rows(conn)
        return self.chain_of(rows)

    def chain_of(self, rows: Iterable[Any]) -> KeyChain:
        """The chain stored key rows make, verified against the pin."""
        return verify_key_chain(rows, self.pin)

    def reload(self) -> None:
        chain = self.load_chain()
        with self._lock:
            before = self._chain.tip
            current = self._current
        now_kids = {k.kid for k in chain.keys}
        if before is not None and before.kid not in now_kids:
            # A key this process already trusted has gone from the chain: a rotation
            # was removed from the database. Keep the view we had (never roll back).
            log.error("gate key chain rolled back in the database; ignored", kid=before.kid)
            return
        tip = chain.tip
        if tip is None:
            current = None
        elif current is None or current[0] != tip.kid:
            current = self._private(tip)
        with self._lock:
            self._chain = chain
            self._keys = {k.kid: k for k in chain.keys}
            self._current = current
        self._discard_retired(chain)

    def _discard_retired(self, chain: KeyChain) -> None:
        """Delete the files of keys the chain has retired that are still here (a
        rotation that ended before deleting its predecessor's): left there, one would
        let a fresh gate sign with it again once the newer rows are deleted."""
        for key in chain.keys[:-1]:
            if (self._dir / f"{key.kid}.pem").exists():
                log.warning("deleting the file of a retired gate key", kid=key.kid)
                self.discard_private(key.kid)

    def _private(self, key: GateKey) -> tuple[str, Ed25519PrivateKey] | None:
        path = self._dir / f"{key.kid}.pem"
        if not path.exists():
            return None
        private = keys.read_private_key(path)
        if keys.public_bytes(private.public_key()) != key.raw:
            return None
        return key.kid, private

    def create_root(self, conn: Connection, now: float, private: Ed25519PrivateKey) -> GateKey:
        """Store the gate's first key (creation only); the caller pins its thumbprint."""
        raw = keys.public_bytes(private.public_key())
        kid = keys.jwk_thumbprint(raw)
        keys.write_private_key(self._dir / f"{kid}.pem", private)
        try:
            gate_keys.insert_key(conn, kid, keys.b64url(raw), now)
        except BaseException:
            self.discard_private(kid)
            raise
        return GateKey(kid, private.public_key(), raw, now, None)

    def rotate(self, conn: Connection, now: float) -> Rotation:
        """Start signing with a fresh key endorsed by the current one.

        Runs in the caller's write transaction: the current key's row is locked and
        must still be the chain's tip, so two replicas rotating at once never fork
        the chain (the second is refused). On failure no key file is left behind.
        """
        kid_now, private_now = self.signer()
        if not gate_keys.lock_tip(conn, kid_now):
            raise ConfigError(
                "the gate key was rotated meanwhile (by another replica); try again",
                code="key_rotated_concurrently",
            )
        private = keys.generate()
        raw = keys.public_bytes(private.public_key())
        kid = keys.jwk_thumbprint(raw)
        x = keys.b64url(raw)
        endorsement = keys.b64url(
            private_now.sign(rotation_payload(self.pin.gate_id, kid, x, kid_now, now, roots=True))
        )
        keys.write_private_key(self._dir / f"{kid}.pem", private)
        try:
            self._sign_roots_again(conn, now, private, kid)
            gate_keys.insert_key(conn, kid, x, now, prev_kid=kid_now, endorsement=endorsement)
            # Informational only: retirement is read from the successor's endorsement.
            gate_keys.mark_retired(conn, kid_now, now)
        except BaseException:
            self.discard_private(kid)
            raise
        return Rotation(kid, kid_now, x, endorsement, now)

    def _sign_roots_again(
        self, conn: Connection, now: float, private: Ed25519PrivateKey, kid: str
    ) -> None:
        """Sign every root agent's record that is valid now again with the new key (the
        rotation's endorsement says so): from then on the replaced key signs none, so a
        copy of it stolen before the rotation cannot register a root agent. A record
        that is not valid now (written by whoever held no current key) stays invalid."""
        signers = self._chain.root_signers(now, self.root_grace)
        for row in agent_rows.root_records(conn):
            signed_by = gate_kid(row.signer) if isinstance(row.signer, str) else None
            raw = None if signed_by is None else signers.get(signed_by)
            try:
                body = row.record.encode("utf-8")
                signature = keys.b64url_decode(row.signature)
            except (AttributeError, ValueError):
                continue
            if raw is not None and keys.verify_signature(raw, signature, body):
                agent_rows.sign_root_again(
                    conn, row.did, keys.b64url(private.sign(body)), f"gate:{kid}"
                )
                # Replicas load it again: a view read between the two may hold either.
                state_changes.record(conn, "agent", row.did, now)

    def root_key(self, kid: str, now: float | None) -> Ed25519PublicKey | None:
        """The public key of gate key `kid` when it may sign a root agent's record at
        `now` (see `KeyChain.root_signers`; None: without the grace), else None."""
        key = self._keys.get(kid)
        if key is None or kid not in self._chain.root_signers(now, self.root_grace):
            return None
        return key.public

    def discard_private(self, kid: str) -> None:
        """Delete a key file this gate no longer signs with (or never committed)."""
        try:
            (self._dir / f"{kid}.pem").unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete a retired gate key file", kid=kid, error=exc.strerror)

    def signer(self) -> tuple[str, Ed25519PrivateKey]:
        current = self._current
        if current is None:
            tip = self._chain.tip
            what = "no key chains to the pinned key" if tip is None else f"key {tip.kid}"
            raise ConfigError(
                f"this state dir holds no private key for the gate's current signing key "
                f"({what}): was a key rotation removed from the database, or is this "
                "state dir not the one the gate's replicas share?",
                code="gate_key_missing",
            )
        return current

    @property
    def chain(self) -> KeyChain:
        return self._chain

    def get(self, kid: str) -> GateKey | None:
        return self._keys.get(kid)

    def public(self, kid: str) -> Ed25519PublicKey | None:
        k = self._keys.get(kid)
        return None if k is None else k.public

    def published(self, now: float) -> list[GateKey]:
        return [
            k
            for k in self._chain.keys
            if k.retired_at is None or k.retired_at + PUBLISHED_AFTER_RETIREMENT > now
        ]

    def jwks(self, now: float, alg: str = "EdDSA") -> dict[str, list[dict[str, str]]]:
        """The JWK Set; each key says `alg`, the algorithm new credentials are signed with."""
        return {"keys": [keys.public_jwk(k.public, k.kid, alg) for k in self.published(now)]}
