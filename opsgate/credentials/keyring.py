"""The gate's signing keys: one current key, older public keys kept while needed.

Private keys live in `<state_dir>/gate-keys/<kid>.pem` (0600); public keys live
in the state database, so every replica publishes and checks the same JWKS.
A retired key stays published until every credential it could have signed has
expired (retirement + the hard TTL ceiling + leeway); its public half is kept
for good, because root registrations and audit checkpoints were signed with it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, insert, select, update

from opsgate.config import HARD_TTL_CEILING_MINUTES, MAX_LEEWAY_SECONDS
from opsgate.identity import keys
from opsgate.store import Store, schema

KEY_DIR = "gate-keys"
PUBLISHED_AFTER_RETIREMENT = HARD_TTL_CEILING_MINUTES * 60 + MAX_LEEWAY_SECONDS


@dataclass(frozen=True, slots=True)
class GateKey:
    kid: str
    public: Ed25519PublicKey
    raw: bytes  # the 32 public key bytes, what the verify hot path needs
    created_at: float
    retired_at: float | None


class KeyRing:
    """Thread-safe view of the gate's keys; `reload()` picks up other replicas' rotations."""

    def __init__(self, store: Store, state_dir: Path) -> None:
        self._store = store
        self._dir = state_dir / KEY_DIR
        self._lock = threading.Lock()
        self._keys: dict[str, GateKey] = {}
        self._current: tuple[str, Ed25519PrivateKey] | None = None

    def reload(self) -> None:
        with self._store.read() as conn:
            rows = conn.execute(select(schema.gate_keys)).all()
        loaded: dict[str, GateKey] = {}
        for r in rows:
            try:
                raw = keys.b64url_decode(r.public_key)
                public = Ed25519PublicKey.from_public_bytes(raw)
            except (ValueError, TypeError):
                continue
            # A kid is the RFC 7638 thumbprint of its key: a row whose key was swapped
            # (by someone with write access to the database) is no key of this gate.
            if keys.jwk_thumbprint(raw) != r.kid:
                continue
            loaded[r.kid] = GateKey(
                r.kid,
                public,
                raw,
                float(r.created_at),
                None if r.retired_at is None else float(r.retired_at),
            )
        current: tuple[str, Ed25519PrivateKey] | None = None
        for k in sorted(loaded.values(), key=lambda k: k.created_at, reverse=True):
            path = self._dir / f"{k.kid}.pem"
            if k.retired_at is None and path.exists():
                private = keys.read_private_key(path)
                if keys.public_bytes(private.public_key()) == keys.public_bytes(k.public):
                    current = (k.kid, private)
                    break
        with self._lock:
            self._keys = loaded
            self._current = current

    def ensure_current(self, conn: Connection, now: float) -> str | None:
        """Create a signing key when this state dir has none; returns the new kid."""
        if self._current is not None:
            return None
        return self._create(conn, now)

    def _create(self, conn: Connection, now: float) -> str:
        private = keys.generate()
        kid = keys.jwk_thumbprint(private.public_key())
        keys.write_private_key(self._dir / f"{kid}.pem", private)
        conn.execute(
            insert(schema.gate_keys).values(
                kid=kid,
                public_key=keys.b64url(keys.public_bytes(private.public_key())),
                created_at=now,
                retired_at=None,
            )
        )
        return kid

    def rotate(self, conn: Connection, now: float) -> tuple[str, str | None]:
        """Start signing with a fresh key; retire the current one. Returns (new, old)."""
        old = self._current[0] if self._current else None
        new = self._create(conn, now)
        if old is not None:
            conn.execute(
                update(schema.gate_keys).where(schema.gate_keys.c.kid == old).values(retired_at=now)
            )
        return new, old

    def signer(self) -> tuple[str, Ed25519PrivateKey]:
        current = self._current
        if current is None:
            raise RuntimeError("gate has no signing key")  # Gate.open always creates one
        return current

    def get(self, kid: str) -> GateKey | None:
        return self._keys.get(kid)

    def public(self, kid: str) -> Ed25519PublicKey | None:
        k = self._keys.get(kid)
        return None if k is None else k.public

    def published(self, now: float) -> list[GateKey]:
        return sorted(
            (
                k
                for k in self._keys.values()
                if k.retired_at is None or k.retired_at + PUBLISHED_AFTER_RETIREMENT > now
            ),
            key=lambda k: k.created_at,
        )

    def jwks(self, now: float, alg: str = "EdDSA") -> dict[str, list[dict[str, str]]]:
        """The JWK Set; each key says `alg`, the algorithm new credentials are signed with."""
        return {"keys": [keys.public_jwk(k.public, k.kid, alg) for k in self.published(now)]}
