"""Server-provided DPoP nonces (RFC 9449 §8), optional (`server.dpop_nonce`).

A nonce bounds how long a proof can be prepared in advance: a proof must carry a
nonce the gate handed out within the last one or two windows. Replicas share
nothing for it: a nonce is the window's number and an HMAC of it under a key
derived from the gate's signing key, which every replica holds, so any replica
validates a nonce any other issued. A key rotation invalidates outstanding nonces
(the client is told the new one and retries once).

Pure functions of (key, window length, now): the clock is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from opsgate.identity.keys import b64url, b64url_decode

_LABEL = b"opsgate/dpop-nonce/v1\x00"
_MAC_BYTES = 16
NONCE_CHARS = 32  # base64url of 8 bytes of window + 16 bytes of MAC


def nonce_key(gate_id: str, signing_key_raw: bytes) -> bytes:
    """The HMAC key for nonces: the gate's private signing key, never itself exposed."""
    return hashlib.sha256(_LABEL + gate_id.encode("utf-8") + b"\x00" + signing_key_raw).digest()


def _mac(key: bytes, window: int) -> bytes:
    return hmac.new(key, _LABEL + struct.pack(">q", window), hashlib.sha256).digest()[:_MAC_BYTES]


def issue_nonce(key: bytes, seconds: int, now: float) -> str:
    """The nonce of the window `now` falls in."""
    window = int(now // seconds)
    return b64url(struct.pack(">q", window) + _mac(key, window))


def nonce_valid(key: bytes, seconds: int, now: float, nonce: object) -> bool:
    """Whether `nonce` was issued under `key` in this window or the one before (so a
    nonce lives between one and two windows)."""
    if not isinstance(nonce, str) or len(nonce) != NONCE_CHARS:
        return False
    try:
        raw = b64url_decode(nonce)
    except ValueError:
        return False
    if len(raw) != 8 + _MAC_BYTES:
        return False
    (window,) = struct.unpack(">q", raw[:8])
    current = int(now // seconds)
    if window not in (current, current - 1):
        return False
    return hmac.compare_digest(raw[8:], _mac(key, window))
