"""Client assertions and DPoP proofs (RFC 7523, RFC 9449 §4.3), small and strict.

No web framework here: the HTTP API and the MCP server both call these checks,
and tests call them directly.

A **client assertion** is how an agent in another process obtains a credential:
a JWT it signs with its own Ed25519 key, `iss` = `sub` = its did, `aud` = the
gate's external URL, expiring at most `window` seconds ahead, with a single-use
`jti`. No shared secret exists: the did is the public key.

A **DPoP proof** accompanies every request that presents a credential. It is
signed by the key the credential is bound to (`cnf.jkt`), names the method and
URL (`htm`, `htu`: the configured external base URL plus the path, never the
Host header), is fresh (`iat`), single-use (`jti`, recorded in the database
shared by all replicas), bound to the presented credential (`ath`) and to the
request's content: `req` is the gate's request digest (`ProofRequest.digest_for`,
which binds a secret write's value salted by the proof's own `jti`), the same
digest the SDK's proofs sign, so a proof cannot be moved to another body,
operation, approval, parameter set or secret value.

Each check raises InvalidCredential with a stable code; nothing returns False.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsgate.credentials.manager import Claims, PossessionCheck
from opsgate.credentials.proof import ProofRequest, token_hash
from opsgate.errors import InvalidCredential
from opsgate.identity.keys import (
    b64url,
    b64url_decode,
    did_from_public_key,
    jwk_thumbprint,
    public_bytes,
    public_key_from_did,
    verify_signature,
)

DPOP_TYP = "dpop+jwt"
ASSERTION_TYP = "JWT"
MAX_JWS_BYTES = 4096
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{86})\Z")
_JTI = re.compile(r"[A-Za-z0-9_-]{16,56}\Z")  # fits the replay table with its prefix
# JWK members that only a private (or symmetric) key has: never accepted in a proof.
_PRIVATE_JWK = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_PROOF_HEADER = frozenset({"typ", "alg", "jwk"})
_PROOF_CLAIMS = frozenset({"jti", "htm", "htu", "iat", "ath", "req"})
_PROOF_CLAIMS_NONCE = _PROOF_CLAIMS | {"nonce"}
_ASSERTION_HEADER = frozenset({"typ", "alg"})
_ASSERTION_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Replay-store namespaces: a proof id and an assertion id never collide with each
# other or with the SDK's proof ids (which have no prefix).
DPOP_REPLAY_PREFIX = "dpop:"
ASSERTION_REPLAY_PREFIX = "asr:"

# Records a single-use id (namespaced); raises `bad(...)` when it was used before.
UseOnce = Callable[[str, float, float, Callable[..., InvalidCredential]], None]


def _refuse(message: str, code: str) -> InvalidCredential:
    return InvalidCredential(message, code=code)


@functools.lru_cache(maxsize=1024)
def normalise_url(url: str) -> str:
    """scheme://host[:port]/path, lower-case scheme and host, default port dropped,
    no trailing slash on the base path. ValueError for anything else. Remembered
    (bounded): a proof's `htu` and the configured URL come again with every request."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        raise ValueError("not an http(s) URL with a host")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # ValueError for a bad port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path}"


def expected_htu(external_url: str, path: str) -> str:
    """The htu a proof for `path` must carry: the configured base URL plus the path."""
    return normalise_url(external_url).rstrip("/") + path


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member")
    return out


# A JSON parser that refuses duplicate members (one parser for every proof: `json.loads`
# with a hook builds a new one per call).
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_object(part: str, what: str, code: str) -> dict[str, Any]:
    try:
        raw = b64url_decode(part)
        value = _STRICT_JSON.decode(raw.decode("utf-8"))  # JSON in a JWS is UTF-8 (RFC 7519)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _refuse(f"{what} is not a base64url json object", code) from exc
    if not isinstance(value, dict):
        raise _refuse(f"{what} is not a json object", code)
    return value


def _compact(jws: object, what: str, code: str) -> tuple[str, str, str]:
    """A compact JWS's three parts as text (header, payload, signature), its shape
    checked: at most MAX_JWS_BYTES, base64url parts, an Ed25519-sized signature."""
    if not isinstance(jws, str) or len(jws) > MAX_JWS_BYTES:
        raise _refuse(f"{what} is not a compact jws of at most {MAX_JWS_BYTES} bytes", code)
    m = _COMPACT.match(jws)
    if m is None:
        raise _refuse(f"{what} is not a compact jws with an Ed25519 signature", code)
    h, p, s = m.groups()
    return h, p, s


def _signature(s: str, what: str, code: str) -> bytes:
    try:
        return b64url_decode(s)
    except ValueError as exc:
        raise _refuse(f"{what} signature is not canonical base64url", code) from exc


def _split(jws: object, what: str, code: str) -> tuple[dict[str, Any], str, bytes, bytes]:
    h, p, s = _compact(jws, what, code)
    header = _json_object(h, f"{what} header", code)
    return header, p, f"{h}.{p}".encode("ascii"), _signature(s, what, code)


def _number(value: object) -> float | None:
    if type(value) is not int and type(value) is not float:  # exact: bools are refused
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer no float holds: no time at all
        return None
    return f if math.isfinite(f) else None


def public_key_of_jwk(jwk: object) -> bytes:
    """The raw Ed25519 public key of a public OKP JWK; private members refused."""
    if not isinstance(jwk, dict):
        raise _refuse("proof jwk is not a json object", "dpop_bad_jwk")
    if _PRIVATE_JWK & jwk.keys():
        raise _refuse("proof jwk holds private key material", "dpop_private_key")
    if set(jwk) != {"kty", "crv", "x"} or jwk["kty"] != "OKP" or jwk["crv"] != "Ed25519":
        raise _refuse("proof jwk must be exactly an OKP Ed25519 public key", "dpop_bad_jwk")
    x = jwk["x"]
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise _refuse("proof jwk is not a 32-byte Ed25519 key", "dpop_bad_jwk")
    return raw


@dataclass(frozen=True, slots=True)
class ProofRules:
    """What a proof and an assertion are checked against (from `server` config)."""

    external_url: str
    allowed_algorithms: tuple[str, ...]
    window_seconds: int
    leeway_seconds: int
    replay_skew_seconds: int

    @property
    def audience(self) -> str:
        return normalise_url(self.external_url).rstrip("/")


# Proof headers seen well formed, by their exact text: every proof of one agent
# carries the same header (typ, alg, its public jwk), so its parse, its key and the
# key's thumbprint are worked out once. Only headers that passed every check are
# kept, and only what they hold in the open (public keys); bounded.
_PROOF_HEADERS: dict[str, tuple[str, bytes, str]] = {}
_PROOF_HEADERS_MAX = 4096


def _checked_header(header: dict[str, Any], rules: ProofRules) -> tuple[str, bytes, str]:
    """(alg, raw public key, its RFC 7638 thumbprint) of a proof's header: exactly
    typ, alg and a public OKP jwk, the alg allowed."""
    if set(header) != _PROOF_HEADER:
        raise _refuse("DPoP proof header must hold exactly typ, alg and jwk", "dpop_malformed")
    if header["typ"] != DPOP_TYP:
        raise _refuse("DPoP proof typ must be dpop+jwt", "dpop_bad_type")
    alg = header["alg"]
    if type(alg) is not str or alg not in rules.allowed_algorithms:
        raise _refuse(f"DPoP algorithm {str(alg)[:20]!r} is not allowed", "dpop_alg_not_allowed")
    raw_key = public_key_of_jwk(header["jwk"])
    return alg, raw_key, jwk_thumbprint(raw_key)


def _proof_parts(proof: object, rules: ProofRules) -> tuple[bytes, str, str, bytes, bytes]:
    """A proof's key (raw, thumbprint), payload text, signing input and signature, its
    header checked (`_checked_header`); not its signature. A header seen well formed
    before is not parsed again; the checks, and so the refusal a faulty proof gets,
    come in the order `_split` and `_checked_header` give them."""
    h, p, s = _compact(proof, "DPoP proof", "dpop_malformed")
    known = _PROOF_HEADERS.get(h)
    header = _json_object(h, "DPoP proof header", "dpop_malformed") if known is None else None
    signature = _signature(s, "DPoP proof", "dpop_malformed")
    if known is None:
        assert header is not None
        known = _checked_header(header, rules)
        if len(_PROOF_HEADERS) >= _PROOF_HEADERS_MAX:
            _PROOF_HEADERS.clear()
        _PROOF_HEADERS[h] = known
    elif known[0] not in rules.allowed_algorithms:
        raise _refuse(f"DPoP algorithm {known[0][:20]!r} is not allowed", "dpop_alg_not_allowed")
    raw_key, thumbprint = known[1], known[2]
    return raw_key, thumbprint, p, f"{h}.{p}".encode("ascii"), signature


def check_dpop(
    proofs: Sequence[str],
    *,
    method: str,
    path: str,
    token: str,
    jkt: str,
    request: ProofRequest | None,
    rules: ProofRules,
    now: float,
    use_once: UseOnce,
    nonce: str | None = None,
) -> None:
    """Check the DPoP header values of one request completely; raises on any fault.

    `nonce`: the server nonce the proof must carry (validated before, by the HTTP
    layer, from these same bytes); None when nonces are off, and then a proof with
    a `nonce` claim is malformed like any other extra claim."""
    if not proofs:
        raise _refuse("credential presented without a DPoP proof", "missing_proof")
    if len(proofs) != 1:
        raise _refuse("exactly one DPoP header is allowed", "dpop_multiple")
    raw_key, thumbprint, p, signing_input, signature = _proof_parts(proofs[0], rules)
    if not verify_signature(raw_key, signature, signing_input):
        raise _refuse("DPoP proof signature does not verify", "dpop_bad_signature")
    claims = _json_object(p, "DPoP proof payload", "dpop_malformed")
    if "ath" not in claims:
        raise _refuse("DPoP proof has no ath (hash of the credential)", "dpop_ath_missing")
    if set(claims) != (_PROOF_CLAIMS if nonce is None else _PROOF_CLAIMS_NONCE):
        raise _refuse(
            "DPoP proof claims must be exactly jti, htm, htu, iat, ath and req"
            + ("" if nonce is None else " and the server's nonce"),
            "dpop_malformed",
        )
    if nonce is not None and claims["nonce"] != nonce:
        raise _refuse("DPoP proof does not carry the server's nonce", "dpop_nonce_mismatch")
    jti, iat = claims["jti"], _number(claims["iat"])
    if not isinstance(jti, str) or not _JTI.match(jti) or iat is None:
        raise _refuse("DPoP proof has a malformed jti or iat", "dpop_malformed")
    if claims["htm"] != method:
        raise _refuse("DPoP proof is for another method", "dpop_htm_mismatch")
    htu = claims["htu"]
    try:
        given = normalise_url(htu) if isinstance(htu, str) else None
    except ValueError:
        given = None
    if given is None or "?" in htu or "#" in htu or given != expected_htu(rules.external_url, path):
        raise _refuse("DPoP proof is for another URL", "dpop_htu_mismatch")
    window = rules.window_seconds + rules.leeway_seconds
    if abs(now - iat) > window:
        raise _refuse("DPoP proof is outside its time window", "dpop_stale")
    if claims["ath"] != token_hash(token):
        raise _refuse("DPoP proof is for another credential", "dpop_ath_mismatch")
    if thumbprint != jkt:
        raise _refuse(
            "DPoP proof is signed by a key the credential is not bound to", "dpop_key_mismatch"
        )
    if request is None or claims["req"] != request.digest_for(token, jti):
        raise _refuse("DPoP proof is for another request body", "dpop_request_mismatch")

    def refused(why: str, code: str = "bad_proof") -> InvalidCredential:
        replay = code == "proof_replayed"
        return _refuse(f"DPoP proof refused: {why}", "proof_replayed" if replay else "dpop_stale")

    use_once(DPOP_REPLAY_PREFIX + jti, iat, window + rules.replay_skew_seconds, refused)


def check_assertion(
    assertion: object,
    *,
    rules: ProofRules,
    now: float,
    use_once: UseOnce,
    known: Callable[[str], object] | None = None,
) -> str:
    """Check a client assertion; returns the did of the agent that signed it.

    `known` is called with that did before the assertion's id is recorded and raises
    when no agent holds it: anyone can make a key and sign a valid assertion, and
    such a stranger's must not cost a durable write."""
    header, p, signing_input, signature = _split(assertion, "assertion", "assertion_malformed")
    if set(header) != _ASSERTION_HEADER or header["typ"] != ASSERTION_TYP:
        raise _refuse("assertion header must be exactly typ JWT and alg", "assertion_malformed")
    alg = header["alg"]
    if type(alg) is not str or alg not in rules.allowed_algorithms:
        raise _refuse(f"assertion algorithm {str(alg)[:20]!r} is not allowed", "alg_not_allowed")
    claims = _json_object(p, "assertion payload", "assertion_malformed")
    if set(claims) != _ASSERTION_CLAIMS:
        raise _refuse(
            "assertion claims must be exactly iss, sub, aud, iat, exp and jti",
            "assertion_malformed",
        )
    iss, jti = claims["iss"], claims["jti"]
    if not isinstance(iss, str) or claims["sub"] != iss:
        raise _refuse("assertion iss and sub must both be the agent's did", "assertion_malformed")
    key = public_key_from_did(iss)  # bad_did for anything but an Ed25519 did:key
    if not verify_signature(public_bytes(key), signature, signing_input):
        raise _refuse("assertion signature does not verify", "bad_signature")
    # Signed by the did's own key from here on: the refusals below concern that agent.
    iat, exp = _number(claims["iat"]), _number(claims["exp"])
    if not isinstance(jti, str) or not _JTI.match(jti) or iat is None or exp is None:
        raise _refuse("assertion has a malformed jti, iat or exp", "assertion_malformed")
    if claims["aud"] != rules.audience:
        raise _refuse("assertion is meant for another audience", "bad_audience")
    leeway = rules.leeway_seconds
    if exp <= iat or iat > now + leeway:
        raise _refuse("assertion is not valid yet", "assertion_not_yet_valid")
    if now >= exp + leeway:
        raise _refuse("assertion has expired", "assertion_expired")
    if exp - now > rules.window_seconds + leeway or exp - iat > rules.window_seconds:
        raise _refuse(
            f"assertion may live at most {rules.window_seconds} seconds", "assertion_lifetime"
        )

    def refused(why: str, code: str = "bad_proof") -> InvalidCredential:
        replay = code == "proof_replayed"
        return _refuse(
            f"assertion refused: {why}", "assertion_replayed" if replay else "assertion_expired"
        )

    if known is not None:
        known(iss)
    window = rules.window_seconds + leeway + rules.replay_skew_seconds
    use_once(ASSERTION_REPLAY_PREFIX + jti, iat, window, refused)
    return iss


# -- signing (the agent's side: opsgate.client) -----------------------------------------


def _sign(key: Ed25519PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    h = b64url(orjson.dumps(header))
    p = b64url(orjson.dumps(claims))
    return f"{h}.{p}.{b64url(key.sign(f'{h}.{p}'.encode('ascii')))}"


def public_jwk_of(key: Ed25519PrivateKey) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_bytes(key.public_key()))}


def make_assertion(key: Ed25519PrivateKey, audience: str, now: float, lifetime: int = 30) -> str:
    """A client assertion for `audience` (the gate's external URL), valid `lifetime` s."""
    did = did_from_public_key(key.public_key())
    iat = int(now)
    return _sign(
        key,
        {"typ": ASSERTION_TYP, "alg": "EdDSA"},
        {
            "iss": did,
            "sub": did,
            "aud": normalise_url(audience).rstrip("/"),
            "iat": iat,
            "exp": iat + lifetime,
            "jti": b64url(secrets.token_bytes(16)),
        },
    )


def make_dpop(
    key: Ed25519PrivateKey,
    *,
    method: str,
    url: str,
    token: str,
    request: ProofRequest,
    now: float,
    nonce: str | None = None,
) -> str:
    """A DPoP proof for one request: `url` without query or fragment; `nonce`, the
    server's latest DPoP-Nonce, when it asks for one."""
    jti = b64url(secrets.token_bytes(16))
    claims: dict[str, Any] = {
        "jti": jti,
        "htm": method,
        "htu": url,
        "iat": int(now),
        "ath": token_hash(token),
        "req": request.digest_for(token, jti),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return _sign(key, {"typ": DPOP_TYP, "alg": "EdDSA", "jwk": public_jwk_of(key)}, claims)


def proof_nonce(proofs: Sequence[str]) -> str | None:
    """The `nonce` claim of a request's one DPoP proof, unverified (None for anything
    else): the HTTP layer asks for a nonce before the kernel checks the proof, which
    then requires exactly this claim, signed."""
    if len(proofs) != 1:
        return None
    m = _COMPACT.match(proofs[0]) if len(proofs[0]) <= MAX_JWS_BYTES else None
    if m is None:
        return None
    try:
        claims = _json_object(m.group(2), "DPoP proof payload", "dpop_malformed")
    except InvalidCredential:
        return None
    nonce = claims.get("nonce")
    return nonce if isinstance(nonce, str) else None


def body_request(method: str, path: str, body: bytes) -> ProofRequest:
    """What a proof binds for a request that runs no operation: its method, path and
    the SHA-256 of its exact body bytes."""
    return ProofRequest(
        "http",
        {"method": method, "path": path, "body": b64url(hashlib.sha256(body).digest())},
    )


@dataclass(frozen=True, slots=True)
class DPoPCheck(PossessionCheck):
    """The kernel's `PossessionCheck` for one HTTP request: `Gate.execute`/`resume`/
    `authorize`/`authenticate` call it with the verified claims and the gate's own
    digest of the request it is about to run."""

    proofs: tuple[str, ...]
    method: str
    path: str
    rules: ProofRules
    use_once: UseOnce
    nonce: str | None = None

    def check(
        self, claims: Claims, *, token: str, request: ProofRequest | None, now: float
    ) -> None:
        check_dpop(
            self.proofs,
            method=self.method,
            path=self.path,
            token=token,
            jkt=claims.jkt,
            request=request,
            rules=self.rules,
            now=now,
            use_once=self.use_once,
            nonce=self.nonce,
        )
