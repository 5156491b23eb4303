"""Compact JWS with EdDSA only: the smallest strict encoder/decoder we can audit.

Tokens are standard JWTs (any JOSE library verifies them with the gate's JWKS);
this module exists because the verify hot path must cost little more than the
Ed25519 check itself, and because strictness is easier to prove in 60 lines:
exactly three segments, canonical base64url, a JSON-object header holding only
`alg`, `kid` and `typ`, `alg` on the allow-list, bounded size.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsgate.errors import InvalidCredential
from opsgate.identity.keys import b64url, b64url_decode

_ALLOWED_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
_B64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def encode(claims: dict[str, Any], key: Ed25519PrivateKey, kid: str) -> str:
    header = b64url(orjson.dumps({"alg": "EdDSA", "kid": kid, "typ": "JWT"}))
    payload = b64url(orjson.dumps(claims))
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{b64url(key.sign(signing_input))}"


def _b64(part: str, what: str) -> bytes:
    try:
        return b64url_decode(part)
    except (ValueError, binascii.Error) as exc:
        raise InvalidCredential(f"token {what} is not base64url", code="malformed") from exc


def split(
    token: object, *, max_bytes: int, allowed_algs: tuple[str, ...]
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """Parse a compact JWS. Returns (header, payload_b64, signing_input, signature)."""
    if not isinstance(token, str):
        raise InvalidCredential("token must be a string", code="malformed")
    if len(token) > max_bytes:
        raise InvalidCredential(f"token is longer than {max_bytes} bytes", code="oversized")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts) or not _B64URL_CHARS.issuperset(token.replace(".", "")):
        raise InvalidCredential("token is not a compact jws", code="malformed")
    h, p, s = parts
    try:
        header = orjson.loads(_b64(h, "header"))
    except orjson.JSONDecodeError as exc:
        raise InvalidCredential("token header is not json", code="malformed") from exc
    if not isinstance(header, dict):
        raise InvalidCredential("token header is not a json object", code="malformed")
    alg = header.get("alg")
    if alg not in allowed_algs:
        raise InvalidCredential(
            f"algorithm {str(alg)[:20]!r} is not allowed", code="alg_not_allowed"
        )
    if not _ALLOWED_HEADER_KEYS.issuperset(header):
        raise InvalidCredential("token header has unsupported parameters", code="malformed")
    if not isinstance(header.get("kid"), str):
        raise InvalidCredential("token header has no key id", code="unknown_kid")
    if "typ" in header and header["typ"] != "JWT":
        raise InvalidCredential("token type is not JWT", code="malformed")
    signature = _b64(s, "signature")
    if len(signature) != 64:
        raise InvalidCredential("token signature has the wrong length", code="bad_signature")
    return header, p, f"{h}.{p}".encode("ascii"), signature


def check_signature(key: Ed25519PublicKey, signing_input: bytes, signature: bytes) -> None:
    try:
        key.verify(signature, signing_input)
    except InvalidSignature as exc:
        raise InvalidCredential("token signature does not verify", code="bad_signature") from exc


def payload(p: str) -> dict[str, Any]:
    try:
        claims = orjson.loads(_b64(p, "payload"))
    except orjson.JSONDecodeError as exc:
        raise InvalidCredential("token payload is not json", code="malformed") from exc
    if not isinstance(claims, dict):
        raise InvalidCredential("token payload is not a json object", code="malformed")
    return claims
