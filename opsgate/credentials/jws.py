"""Compact JWS with Ed25519 signatures only (`EdDSA` or `Ed25519` in the header):
the smallest strict encoder/decoder we can audit.

Tokens are standard JWTs (any JOSE library verifies them with the gate's JWKS);
this module exists because the verify hot path must cost little more than the
Ed25519 check itself, and because strictness is easier to prove in 60 lines:
exactly three segments, canonical base64url, a JSON-object header holding only
`alg`, `kid` and `typ`, `alg` on the allow-list, bounded size.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsgate.errors import InvalidCredential
from opsgate.identity.keys import b64url, verify_signature

_ALLOWED_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
# 64 signature bytes are 86 base64url characters whose last one carries 2 unused
# bits; only these characters leave them zero (one encoding per signature).
_LAST_SIG_CHARS = frozenset("AQgw")


def encode(claims: dict[str, Any], key: Ed25519PrivateKey, kid: str, alg: str = "EdDSA") -> str:
    header = b64url(orjson.dumps({"alg": alg, "kid": kid, "typ": "JWT"}))
    payload = b64url(orjson.dumps(claims))
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{b64url(key.sign(signing_input))}"


_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\Z")


def _b64(part: str, what: str) -> bytes:
    # The alphabet was checked by _COMPACT; only the length can still be wrong.
    pad = -len(part) % 4
    if pad == 3:
        raise InvalidCredential(f"token {what} is not base64url", code="malformed")
    try:
        return base64.urlsafe_b64decode(part + "=" * pad)
    except (ValueError, binascii.Error) as exc:
        raise InvalidCredential(f"token {what} is not base64url", code="malformed") from exc


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse JSON and insist it is exactly what we would have written.

    Re-serialising must give the same bytes: this refuses duplicate keys (which
    different parsers resolve differently), whitespace and any other encoding
    trick, at the cost of one orjson.dumps.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidCredential(f"token {what} is not json", code="malformed") from exc
    if not isinstance(value, dict):
        raise InvalidCredential(f"token {what} is not a json object", code="malformed")
    if orjson.dumps(value) != raw:
        raise InvalidCredential(f"token {what} is not in canonical form", code="malformed")
    return value


def split(
    token: object, *, max_bytes: int, allowed_algs: tuple[str, ...]
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """Parse a compact JWS. Returns (header, payload_b64, signing_input, signature)."""
    if not isinstance(token, str):
        raise InvalidCredential("token must be a string", code="malformed")
    if len(token) > max_bytes:
        raise InvalidCredential(f"token is longer than {max_bytes} bytes", code="oversized")
    m = _COMPACT.match(token)
    if m is None:
        raise InvalidCredential("token is not a compact jws", code="malformed")
    h, p, s = m.groups()
    raw_header = _b64(h, "header")
    try:
        header = orjson.loads(raw_header)
    except orjson.JSONDecodeError as exc:
        raise InvalidCredential("token header is not json", code="malformed") from exc
    if not isinstance(header, dict):
        raise InvalidCredential("token header is not a json object", code="malformed")
    alg = header.get("alg")
    # Exact names only: "ED25519", "eddsa" or a list holding "EdDSA" are not algorithms.
    if type(alg) is not str or alg not in allowed_algs:
        raise InvalidCredential(
            f"algorithm {str(alg)[:20]!r} is not allowed", code="alg_not_allowed"
        )
    if not _ALLOWED_HEADER_KEYS.issuperset(header):
        raise InvalidCredential("token header has unsupported parameters", code="malformed")
    if not isinstance(header.get("kid"), str):
        raise InvalidCredential("token header has no key id", code="unknown_kid")
    if "typ" in header and header["typ"] != "JWT":
        raise InvalidCredential("token type is not JWT", code="malformed")
    if orjson.dumps(header) != raw_header:
        raise InvalidCredential("token header is not in canonical form", code="malformed")
    signature = _b64(s, "signature")
    if len(signature) != 64 or len(s) != 86:
        raise InvalidCredential("token signature has the wrong length", code="bad_signature")
    if s[-1] not in _LAST_SIG_CHARS:
        raise InvalidCredential("token signature is not canonical base64url", code="bad_signature")
    return header, p, f"{h}.{p}".encode("ascii"), signature


def check_signature(key: Ed25519PublicKey | bytes, signing_input: bytes, signature: bytes) -> None:
    if not verify_signature(key, signature, signing_input):
        raise InvalidCredential("token signature does not verify", code="bad_signature")


def payload(p: str) -> dict[str, Any]:
    return _json_object(_b64(p, "payload"), "payload")
