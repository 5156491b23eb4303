"""Ed25519 keys, did:key identifiers, JWKs and RFC 7638 thumbprints."""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache
from pathlib import Path

import base58
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from opsgate.errors import ConfigError, DidInvalid, shown

_ED25519_MULTICODEC = b"\xed\x01"
DID_KEY_PREFIX = "did:key:z"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; raises ValueError on anything else."""
    if "=" in text or len(text) % 4 == 1:
        raise ValueError("bad base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(raw) != text:  # non-canonical trailing bits
        raise ValueError("non-canonical base64url")
    return raw


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def did_from_public_key(key: Ed25519PublicKey | bytes) -> str:
    raw = key if isinstance(key, bytes) else public_bytes(key)
    return DID_KEY_PREFIX + base58.b58encode(_ED25519_MULTICODEC + raw).decode("ascii")


@lru_cache(maxsize=200_000)
def public_key_from_did(did: str) -> Ed25519PublicKey:
    """Recover the public key from a did:key; anyone can check a signature from the id alone."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX) or len(did) > 64:
        raise DidInvalid(f"{shown(did)} is not an Ed25519 did:key", code="bad_did")
    try:
        raw = base58.b58decode(did[len(DID_KEY_PREFIX) :])
    except ValueError as exc:
        raise DidInvalid("did:key is not valid base58btc", code="bad_did") from exc
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        raise DidInvalid("did:key does not hold an Ed25519 public key", code="bad_did")
    return Ed25519PublicKey.from_public_bytes(raw[2:])


def public_jwk(key: Ed25519PublicKey, kid: str | None = None, alg: str = "EdDSA") -> dict[str, str]:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_bytes(key))}
    if kid is not None:
        jwk["kid"] = kid
        jwk["alg"] = alg
        jwk["use"] = "sig"
    return jwk


def jwk_thumbprint(key: Ed25519PublicKey | bytes) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    raw = key if isinstance(key, bytes) else public_bytes(key)
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{b64url(raw)}"}}'
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def verify_signature(key: Ed25519PublicKey | bytes, signature: bytes, data: bytes) -> bool:
    """Ed25519 verification through libsodium.

    libsodium verifies in about half the time OpenSSL takes here, and it is
    strict: non-canonical signatures and small-order keys are refused.
    Signing stays with `cryptography` (keys, PEM files, JWKs).
    """
    raw = key if isinstance(key, bytes) else public_bytes(key)
    if len(signature) != 64 or len(raw) != 32:
        return False
    try:
        crypto_sign_open(signature + data, raw)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a private key readable by the owner only (0600), never overwriting."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot write key file '{path.parent.name}/{path.name}': {exc.strerror}",
            code="key_dir_unusable",
        ) from exc
    try:
        os.write(fd, private_pem(key))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"private key file '{path.name}' is accessible by others (mode {mode:o}); "
                "it must be 0600",
                code="key_permissions",
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"private key file '{path.name}' is missing", code="key_missing") from exc
    except ValueError as exc:
        raise ConfigError(
            f"private key file '{path.name}' is unreadable", code="key_invalid"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"private key file '{path.name}' is not Ed25519", code="key_invalid")
    return key
