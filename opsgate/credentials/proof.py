"""Proof of possession: a short JWS the agent signs with its own key for one request.

A credential names its holder's key (`cnf.jkt`). Where the gate demands proof,
the presenter signs {ath: SHA-256 of the token, ctx: what is being asked,
iat, jti} with the key behind the credential's `sub`; a stolen token without
the agent's private key is useless. Each proof is accepted once.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete

from opsgate.credentials import jws
from opsgate.errors import InvalidCredential
from opsgate.identity.keys import b64url, b64url_decode, public_key_from_did
from opsgate.store import Store, schema

PROOF_TYP = "opsgate-pop+jwt"
MAX_PROOF_AGE_SECONDS = 60


def token_hash(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def make_proof(key: Ed25519PrivateKey, token: str, ctx: str, now: float) -> str:
    header = b64url(orjson.dumps({"alg": "EdDSA", "typ": PROOF_TYP}))
    claims = {
        "ath": token_hash(token),
        "ctx": ctx,
        "iat": now,
        "jti": b64url(secrets.token_bytes(16)),
    }
    body = b64url(orjson.dumps(claims))
    return f"{header}.{body}.{b64url(key.sign(f'{header}.{body}'.encode('ascii')))}"


class ProofChecker:
    """Checks proofs and records each proof id in the state database, so none is
    accepted twice, on this replica or any other."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(
        self, proof: object, *, token: str, sub: str, ctx: str, now: float, leeway: int
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
        if claims.get("ctx") != ctx:
            raise bad("proof is for another request")
        iat, jti = claims.get("iat"), claims.get("jti")
        if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not isinstance(jti, str):
            raise bad("malformed proof")
        if abs(now - iat) > MAX_PROOF_AGE_SECONDS + leeway:
            raise bad("proof is stale")
        if not 16 <= len(jti) <= 64:
            raise bad("malformed proof")
        with self._lock:
            if jti in self._seen:
                raise bad("proof was already used", code="proof_replayed")
            self._seen[jti] = now
            if len(self._seen) > 100_000:
                horizon = now - 2 * (MAX_PROOF_AGE_SECONDS + leeway)
                self._seen = {k: v for k, v in self._seen.items() if v > horizon}
        expires = now + 2 * (MAX_PROOF_AGE_SECONDS + leeway)
        t = schema.used_proofs
        with self._store.write() as conn:
            inserted = conn.execute(
                self._store.insert_ignore(t, {"jti": jti, "expires_at": expires}).returning(t.c.jti)
            ).first()
            if inserted is None:
                raise bad("proof was already used", code="proof_replayed")
            conn.execute(delete(t).where(t.c.expires_at < now - MAX_PROOF_AGE_SECONDS))
