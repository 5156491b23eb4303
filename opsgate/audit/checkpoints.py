"""Signed checkpoints of the audit log's head, and the anchor files that keep them
outside the database (the state dir's copy, an operator's export).

A checkpoint signs (gate, seq, hash, at, kid) with the gate's current key.
Someone who can only write the database cannot cut the log back below a
checkpoint kept elsewhere unnoticed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsgate import filelock
from opsgate.audit.events import canonical
from opsgate.errors import AuditError
from opsgate.identity.keys import b64url_decode, verify_signature

CHECKPOINT_TYPE = "opsgate-audit-checkpoint"
# The newest checkpoint, kept in the state dir: outside the database, so someone
# who can only write the database cannot cut the log back below it unnoticed.
CHECKPOINT_FILE = "audit-checkpoint.json"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The head hash signed with the gate key; export it somewhere the database is not."""

    gate: str
    seq: int
    hash: str
    at: float
    kid: str
    signature: str
    public_key: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        # `at` as a float whatever it was given as: it is stored and read back as one,
        # and a signature over the integer 5 never verifies against 5.0.
        return canonical(
            {
                "type": CHECKPOINT_TYPE,
                "gate": self.gate,
                "seq": self.seq,
                "hash": self.hash,
                "at": float(self.at),
                "kid": self.kid,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": CHECKPOINT_TYPE,
            "gate": self.gate,
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "kid": self.kid,
            "signature": self.signature,
            "public_key": self.public_key,
        }


# Returns the current (kid, sign) pair atomically; sign(payload) -> base64url signature.
Signer = Callable[[], tuple[str, Callable[[bytes], str]]]
SignatureCheck = Callable[[str, bytes, str], bool]  # kid, payload, signature -> valid


def signed_by(trusted: dict[str, bytes], kid: str, payload: bytes, signature: str) -> bool:
    key = trusted.get(kid)
    if key is None:
        return False
    try:
        return verify_signature(key, b64url_decode(signature), payload)
    except (ValueError, TypeError):
        return False


def published_seq(path: Path | None) -> int:
    """The seq of the checkpoint kept in the state dir (0 when there is none)."""
    if path is None:
        return 0
    try:
        return load_anchor(path).seq
    except AuditError:
        return 0


# How long a writer of the kept checkpoint waits for another (a replica, a CLI command)
# before leaving this one to the next checkpoint: never a wait without bound, since it
# is taken while the audit log's writer waits.
PUBLISH_WAIT_SECONDS = 2.0


def publish(path: Path, cp: Checkpoint) -> None:
    """Replace the kept checkpoint `path` with `cp` when it is newer (atomic, fsynced).

    Writers on one host (replicas, CLI commands) take turns on an owner-only lock file
    beside it, waiting at most PUBLISH_WAIT_SECONDS (OSError when the turn does not
    come), so the file never goes back to an older checkpoint and nobody else who can
    open the directory can stall the gate. The new text goes to a fresh, randomly named
    file (never through a link planted in its place, removed if anything fails), then
    takes the name; a file there that is not a checkpoint is never replaced (OSError):
    a misconfigured path must not overwrite the database, a key or the pin.
    """
    import secrets as _secrets

    lock = filelock.open_own(path.with_name(f".{path.name}.lock"))
    if lock is None:
        raise OSError(errno.EPERM, "the checkpoint's lock file cannot be opened as the gate's own")
    try:
        if not filelock.lock_within(lock, PUBLISH_WAIT_SECONDS, longest_pause=0.01):
            raise OSError(errno.EWOULDBLOCK, "another writer holds the checkpoint")
        if os.path.lexists(path):
            try:
                kept = load_anchor(path)
            except AuditError as exc:
                raise OSError(errno.EEXIST, "a file that is not a checkpoint is there") from exc
            if kept.seq >= cp.seq:
                return
        tmp = path.with_name(f".{path.name}.{_secrets.token_hex(8)}.tmp")
        data = (json.dumps(cp.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                os.write(out, data)
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        os.close(lock)


def load_anchor(path: Path) -> Checkpoint:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("type") != CHECKPOINT_TYPE:
            raise ValueError("not a checkpoint")
        return Checkpoint(
            gate=str(data["gate"]),
            seq=int(data["seq"]),
            hash=str(data["hash"]),
            at=float(data["at"]),
            kid=str(data["kid"]),
            signature=str(data["signature"]),
            public_key=dict(data["public_key"]),
        )
    except FileNotFoundError as exc:
        raise AuditError(f"anchor file '{path}' not found", code="anchor_missing") from exc
    except OSError as exc:
        raise AuditError(
            f"anchor file '{path.name}' cannot be read: {exc.strerror}", code="anchor_invalid"
        ) from exc
    # OverflowError: a seq of Infinity; RecursionError: JSON nested past the parser.
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise AuditError(f"anchor file '{path.name}' is malformed", code="anchor_invalid") from exc
