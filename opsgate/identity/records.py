"""Signed grant records and delegation-chain verification (pure: no I/O, `now` passed in).

A root agent's record is signed by the gate key (the operator registered it);
a delegated agent's record is signed by its parent's key. Verifying an agent's
chain checks every signature back to a root, and that every link only narrows:
grants covered by the parent's, expiry not after the parent's, depth in bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from opsgate import capabilities as caps
from opsgate.errors import CapabilityError, DelegationError, InvalidCredential
from opsgate.identity.keys import (
    b64url_decode,
    public_bytes,
    public_key_from_did,
    verify_signature,
)

RECORD_VERSION = 1


def record_bytes(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class Link:
    """One stored agent row, as needed to check its place in a chain."""

    did: str
    name: str
    parent_did: str | None
    record: str  # canonical JSON as signed
    signature: str  # base64url
    signer: str  # parent did, or "gate:<kid>"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified chain proves about an agent."""

    did: str
    name: str
    sponsor: str
    parent_did: str | None
    depth: int
    capabilities: tuple[str, ...]
    parsed: tuple[caps.Capability, ...]
    issued_at: float
    expires_at: float | None


def gate_kid(signer: str) -> str | None:
    """The gate key id a record's signer names (`gate:<kid>`), or None for an agent."""
    return signer[5:] if signer.startswith("gate:") else None


def verify_chain(
    chain: Sequence[Link],
    *,
    gate_key: Callable[[str], Ed25519PublicKey | None],
    max_depth: int,
) -> Grant:
    """Verify `chain` (root first, the agent last) and return the agent's proven grant.

    Raises DelegationError naming the first bad link; an unknown signer or a
    missing link fails the chain (it never passes because something is unknown).
    """
    if not chain:
        raise DelegationError("empty delegation chain", code="chain_invalid")
    parent: Grant | None = None
    for link in chain:
        grant = _verify_link(link, parent, gate_key=gate_key, max_depth=max_depth)
        parent = grant
    assert parent is not None
    return parent


def _verify_link(
    link: Link,
    parent: Grant | None,
    *,
    gate_key: Callable[[str], Ed25519PublicKey | None],
    max_depth: int,
) -> Grant:
    def bad(why: str) -> DelegationError:
        return DelegationError(
            f"delegation chain broken at agent {link.name!r}: {why}", code="chain_invalid"
        )

    try:
        rec = orjson.loads(link.record)
    except orjson.JSONDecodeError as exc:
        raise bad("record is not valid json") from exc
    if not isinstance(rec, dict) or rec.get("v") != RECORD_VERSION:
        raise bad("record has an unknown format")
    if record_bytes(rec) != link.record.encode("utf-8"):
        raise bad("record is not canonical")
    try:
        signature = b64url_decode(link.signature)
    except ValueError as exc:
        raise bad("signature is not base64url") from exc
    if parent is None:
        if rec.get("kind") != "registration" or link.parent_did is not None:
            raise bad("root is not an operator registration")
        kid = gate_kid(link.signer)
        if kid is None:
            raise bad("root record is not signed by the gate")
        key = gate_key(kid)
        if key is None:
            raise bad("root record is signed by an unknown gate key")
        expected_depth = 0
    else:
        if rec.get("kind") != "delegation" or link.parent_did != parent.did:
            raise bad("record does not name its parent")
        if link.signer != parent.did or rec.get("parent") != parent.did:
            raise bad("record is not signed by its parent")
        try:
            key = public_key_from_did(parent.did)
        except InvalidCredential as exc:
            raise bad("parent id is not a did:key") from exc
        expected_depth = parent.depth + 1
    if not verify_signature(key, signature, link.record.encode("utf-8")):
        raise bad("signature does not verify")
    if rec.get("did") != link.did or rec.get("name") != link.name:
        raise bad("record does not match the stored agent")
    depth = rec.get("depth")
    if depth != expected_depth or not isinstance(depth, int) or depth > max_depth:
        raise bad("depth is out of bounds")
    texts = rec.get("capabilities")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad("capabilities are malformed")
    try:
        parsed = caps.parse_all(texts, grant=True)
    except CapabilityError as exc:
        raise bad(f"capability refused ({exc.code})") from exc
    expires_at = rec.get("expires_at")
    issued_at = rec.get("issued_at")
    if expires_at is not None and not isinstance(expires_at, (int, float)):
        raise bad("expiry is malformed")
    if not isinstance(issued_at, (int, float)):
        raise bad("issue time is malformed")
    if parent is not None:
        for cap in parsed:
            if not caps.covered_by_any(parent.parsed, cap):
                raise bad(f"capability {str(cap)!r} is not covered by the parent")
        if parent.expires_at is not None and (expires_at is None or expires_at > parent.expires_at):
            raise bad("it outlives its parent")
    sponsor = rec.get("sponsor")
    if not isinstance(sponsor, str):
        raise bad("sponsor is malformed")
    return Grant(
        did=link.did,
        name=link.name,
        sponsor=sponsor,
        parent_did=link.parent_did,
        depth=depth,
        capabilities=tuple(texts),
        parsed=parsed,
        issued_at=float(issued_at),
        expires_at=None if expires_at is None else float(expires_at),
    )


def _link_problem(row: Any, gate_keys: Mapping[str, bytes]) -> str | None:
    """Why one stored agent row is not signed by what it claims (None when it is)."""
    try:
        record = row.record.encode("utf-8")
        rec = orjson.loads(record)
        signature = b64url_decode(row.signature)
    except (AttributeError, TypeError, ValueError, orjson.JSONDecodeError):
        return "its record or signature is malformed"
    if not isinstance(rec, dict) or record_bytes(rec) != record:
        return "its record is not canonical json"
    if rec.get("did") != row.did or rec.get("name") != row.name:
        return "its record names another agent"
    if row.parent_did is None:
        kid = gate_kid(row.signer) if isinstance(row.signer, str) else None
        key = None if kid is None else gate_keys.get(kid)
        if rec.get("kind") != "registration" or key is None:
            return (
                "it is a root agent not signed by a gate key that chains to the pinned key "
                "and signs root agents now (a key retired by a rotation signs none)"
            )
    else:
        if (
            rec.get("kind") != "delegation"
            or rec.get("parent") != row.parent_did
            or row.signer != row.parent_did
        ):
            return "its record is not a delegation signed by its parent"
        try:
            key = public_bytes(public_key_from_did(row.parent_did))
        except InvalidCredential:
            return "its parent id is not a did:key"
    if not verify_signature(key, signature, record):
        return "its signature does not verify"
    return None


def untrusted_records(rows: Iterable[Any], gate_keys: Mapping[str, bytes]) -> dict[str, str]:
    """Pure: every stored agent whose record does not chain back to a gate key, and why.

    Only signatures and the links between records are checked (what someone who
    can write the database but holds no key cannot forge), not limits that a
    configuration change may have moved since (depth, capability grammar).
    """
    by_did = {r.did: r for r in rows if isinstance(r.did, str)}
    verdict: dict[str, str | None] = {}

    def check(did: str) -> str | None:
        path: list[str] = []
        cursor: str | None = did
        while cursor is not None and cursor not in verdict:
            if cursor in path or len(path) > 64:
                for d in path:
                    verdict[d] = "its delegation chain loops"
                return verdict[did]
            path.append(cursor)
            row = by_did.get(cursor)
            cursor = None if row is None else row.parent_did
        inherited = verdict.get(cursor) if cursor is not None else None
        for d in reversed(path):
            row = by_did.get(d)
            if row is None:
                verdict[d] = "its parent is missing"
            elif inherited is not None:
                verdict[d] = "an ancestor does not chain back to the gate"
            else:
                verdict[d] = _link_problem(row, gate_keys)
            inherited = verdict[d]
        return verdict[did]

    return {did: why for did in by_did if (why := check(did)) is not None}
