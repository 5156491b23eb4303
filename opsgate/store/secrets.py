"""Every statement of the embedded secret backend, by name.

Rows hold ciphertext only; sealing and opening happen in `opsgate.secrets.embedded`.
Each function runs inside the caller's transaction (`store.write()` / `store.read()`),
so a version check and the insert it guards commit together.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from opsgate.store import schema

_KEY_ID = "secret_key_id"
_t = schema.secret_versions


@dataclass(frozen=True, slots=True)
class SealedVersion:
    path: str
    version: int
    key_id: str
    nonce: bytes
    ciphertext: bytes
    deleted_at: float | None


class VersionTaken(Exception):
    """Another writer inserted this version first (a concurrent write)."""


def newest_secret_version(conn: Connection, path: str) -> int:
    """The highest version number of `path` (deleted or not), 0 when it has none."""
    row = conn.execute(select(func.max(_t.c.version)).where(_t.c.path == path)).first()
    return int(row[0]) if row is not None and row[0] is not None else 0


def read_secret_version(conn: Connection, path: str, version: int | None) -> SealedVersion | None:
    """The given version of `path`, or its newest when `version` is None."""
    q = select(_t.c.version, _t.c.key_id, _t.c.nonce, _t.c.ciphertext, _t.c.deleted_at).where(
        _t.c.path == path
    )
    q = (
        q.order_by(_t.c.version.desc()).limit(1)
        if version is None
        else q.where(_t.c.version == version)
    )
    row = conn.execute(q).first()
    if row is None:
        return None
    return SealedVersion(path, int(row[0]), row[1], bytes(row[2]), bytes(row[3]), row[4])


def insert_secret_version(
    conn: Connection, sealed: SealedVersion, *, created_at: float, created_by: str
) -> None:
    """Add a version; raises VersionTaken when another writer added it first."""
    try:  # the transaction is spoilt on PostgreSQL: the caller's block rolls it back
        conn.execute(
            _t.insert().values(
                path=sealed.path,
                version=sealed.version,
                key_id=sealed.key_id,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
                created_at=created_at,
                created_by=created_by,
            )
        )
    except IntegrityError as exc:
        raise VersionTaken from exc


def mark_secret_deleted(conn: Connection, path: str, version: int, at: float) -> None:
    conn.execute(update(_t).where(_t.c.path == path, _t.c.version == version).values(deleted_at=at))


def destroy_secret_versions(conn: Connection, path: str) -> int:
    """Remove every version of `path`; returns how many there were."""
    return int(conn.execute(delete(_t).where(_t.c.path == path)).rowcount or 0)


def secret_paths_under(conn: Connection, prefix: str) -> list[str]:
    """Every path strictly below `prefix` (at a '/' boundary), sorted."""
    below = prefix + "/"
    q = (
        select(_t.c.path)
        .where(func.substr(_t.c.path, 1, len(below)) == below)
        .distinct()
        .order_by(_t.c.path)
    )
    return [r[0] for r in conn.execute(q)]


def secret_key_id(conn: Connection) -> str | None:
    """The id of the master key this database's secrets are sealed with, if any yet."""
    row = conn.execute(
        select(schema.gate_meta.c.value).where(schema.gate_meta.c.key == _KEY_ID)
    ).first()
    return None if row is None else str(row[0])


def sealed_versions(conn: Connection) -> list[SealedVersion]:
    """Every stored version (deleted ones too), for re-sealing under a new key."""
    q = select(
        _t.c.path, _t.c.version, _t.c.key_id, _t.c.nonce, _t.c.ciphertext, _t.c.deleted_at
    ).order_by(_t.c.path, _t.c.version)
    return [
        SealedVersion(r[0], int(r[1]), r[2], bytes(r[3]), bytes(r[4]), r[5])
        for r in conn.execute(q)
    ]


def reseal_secret_version(conn: Connection, sealed: SealedVersion, old_key_id: str) -> None:
    """Replace one version's key id, nonce and ciphertext (only while it is still sealed
    with `old_key_id`: a row changed meanwhile fails the whole re-sealing)."""
    changed = conn.execute(
        update(_t)
        .where(_t.c.path == sealed.path, _t.c.version == sealed.version, _t.c.key_id == old_key_id)
        .values(key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext)
    ).rowcount
    if changed != 1:
        raise VersionTaken(f"{sealed.path} version {sealed.version} changed while re-sealing")


def set_secret_key_id(conn: Connection, old_key_id: str, new_key_id: str) -> bool:
    """Move the recorded secret key from `old_key_id` to `new_key_id` (False when the
    recorded one is not `old_key_id`)."""
    changed = conn.execute(
        update(schema.gate_meta)
        .where(schema.gate_meta.c.key == _KEY_ID, schema.gate_meta.c.value == old_key_id)
        .values(value=new_key_id)
    ).rowcount
    return bool(changed == 1)


def claim_secret_key_id(conn: Connection, key_id: str, *, exclusive: bool = False) -> str:
    """Record `key_id` as this database's secret key unless one is recorded; returns
    the recorded one (a replica that raced first wins), locked until the transaction
    ends on PostgreSQL (SQLite's write transaction holds the whole database): shared
    by a write, so the version it seals with that key commits before the key can
    change, and `exclusive` for re-sealing, which changes it."""
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    conn.execute(
        insert(schema.gate_meta).values(key=_KEY_ID, value=key_id).on_conflict_do_nothing()
    )
    row = conn.execute(
        select(schema.gate_meta.c.value)
        .where(schema.gate_meta.c.key == _KEY_ID)
        .with_for_update(read=not exclusive)
    ).first()
    assert row is not None
    return str(row[0])


__all__ = [
    "SealedVersion",
    "VersionTaken",
    "claim_secret_key_id",
    "destroy_secret_versions",
    "insert_secret_version",
    "mark_secret_deleted",
    "newest_secret_version",
    "read_secret_version",
    "reseal_secret_version",
    "sealed_versions",
    "secret_key_id",
    "secret_paths_under",
    "set_secret_key_id",
]
