"""The embedded backend: AES-256-GCM sealed versions in the state database.

Each version is sealed with a fresh 96-bit nonce under a key derived from the master
key; the associated data is gate id + path + version, so a ciphertext copied to
another row, path or gate does not decrypt (`secret_corrupt`). Every row names the
key that sealed it, so a gate opened with another master key says so
(`secret_key_mismatch`) and writes nothing. Versions are kept; `delete` soft-deletes
the newest (like KV v2's `kv delete`), `destroy` removes them all.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection

from opsgate.errors import SecretError
from opsgate.secrets.base import SecretVersion, conflict, not_found
from opsgate.secrets.keys import MasterKey, key_mismatch
from opsgate.secrets.value import SecretValue
from opsgate.store import Store
from opsgate.store import secrets as sql

_AD_TAG = b"opsgate-secret/v1"
_AES_LABEL = b"opsgate secrets aes-256-gcm v1"


class EmbeddedSecretStore:
    """`SecretStore` over the gate's own database (SQLite or PostgreSQL)."""

    name = "embedded"

    def __init__(self, store: Store, *, gate_id: str, master_key: Callable[[], MasterKey]) -> None:
        self._store = store
        self._gate_id = gate_id
        self._master_key = master_key
        self._sealer: tuple[str, AESGCM] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "EmbeddedSecretStore()"

    def _key(self) -> tuple[str, AESGCM]:
        with self._lock:
            if self._sealer is None:
                key = self._master_key()
                self._sealer = (key.key_id, AESGCM(key.derive(_AES_LABEL)))
            return self._sealer

    def _ad(self, path: str, version: int) -> bytes:
        return b"\0".join((_AD_TAG, self._gate_id.encode(), path.encode(), b"%d" % version))

    # -- SecretStore --------------------------------------------------------------------

    def get(self, path: str, version: int | None = None) -> SecretVersion:
        key_id, aead = self._key()
        with self._store.read() as conn:
            row = sql.read_secret_version(conn, path, version)
        if row is None or row.deleted_at is not None:
            raise not_found(path, version)
        if row.key_id != key_id:
            raise key_mismatch(path)
        try:
            plain = aead.decrypt(row.nonce, row.ciphertext, self._ad(path, row.version))
        except InvalidTag:
            raise SecretError(
                f"version {row.version} of secret {path!r} does not decrypt: its row was "
                "altered or copied from another path or gate",
                code="secret_corrupt",
            ) from None
        return SecretVersion(path, row.version, SecretValue(plain.decode("utf-8")))

    def current_version(self, path: str) -> int:
        with self._store.read() as conn:
            return sql.newest_secret_version(conn, path)

    def put(self, path: str, value: SecretValue, *, cas: int, actor: str, now: float) -> int:
        key_id, aead = self._key()
        with self._store.write() as conn:
            if sql.claim_secret_key_id(conn, key_id) != key_id:
                raise key_mismatch(path)
            newest = sql.newest_secret_version(conn, path)
            if newest != cas:
                raise conflict(path, cas, newest)
            version = newest + 1
            nonce = os.urandom(12)
            sealed = sql.SealedVersion(
                path,
                version,
                key_id,
                nonce,
                aead.encrypt(nonce, value.reveal().encode("utf-8"), self._ad(path, version)),
                None,
            )
            try:
                sql.insert_secret_version(conn, sealed, created_at=now, created_by=actor)
            except sql.VersionTaken:
                raise conflict(path, cas) from None
        return version

    def names(self, prefix: str) -> list[str]:
        with self._store.read() as conn:
            paths = sql.secret_paths_under(conn, prefix)
        out: set[str] = set()
        for path in paths:
            first, sep, _ = path[len(prefix) + 1 :].partition("/")
            out.add(first + "/" if sep else first)
        return sorted(out)

    def delete(self, path: str, *, now: float) -> int:
        with self._store.write() as conn:
            row = sql.read_secret_version(conn, path, None)
            if row is None or row.deleted_at is not None:
                raise not_found(path)
            sql.mark_secret_deleted(conn, path, row.version, now)
        return row.version

    def destroy(self, path: str) -> int:
        with self._store.write() as conn:
            count = sql.destroy_secret_versions(conn, path)
        if not count:
            raise not_found(path)
        return count

    def reseal(self, new_key: MasterKey, *, also: Callable[[Connection, int], None]) -> int:
        """Seal every version (deleted ones too) again under `new_key`, each with a fresh
        nonce, in one transaction with `also` (its audit record): all or nothing. A
        version that does not open under the current key refuses the whole of it.
        Returns how many versions were sealed again."""
        old_id, old = self._key()
        if new_key.key_id == old_id:
            raise SecretError("the new master key is the current one", code="master_key_unchanged")
        new = AESGCM(new_key.derive(_AES_LABEL))
        with self._store.write() as conn:
            # Held until the commit: a write sealing with the old key either commits
            # first (and its version is among the rows read below) or waits and then
            # finds the new key recorded (secret_key_mismatch).
            if sql.claim_secret_key_id(conn, old_id, exclusive=True) != old_id:
                raise key_mismatch("*")
            rows = sql.sealed_versions(conn)
            for row in rows:
                if row.key_id != old_id:
                    raise key_mismatch(row.path)
                ad = self._ad(row.path, row.version)
                try:
                    plain = old.decrypt(row.nonce, row.ciphertext, ad)
                except InvalidTag:
                    raise SecretError(
                        f"version {row.version} of secret {row.path!r} does not decrypt: "
                        "nothing was sealed again",
                        code="secret_corrupt",
                    ) from None
                nonce = os.urandom(12)
                sealed = sql.SealedVersion(
                    row.path,
                    row.version,
                    new_key.key_id,
                    nonce,
                    new.encrypt(nonce, plain, ad),
                    row.deleted_at,
                )
                try:
                    sql.reseal_secret_version(conn, sealed, old_id)
                except sql.VersionTaken:
                    raise conflict(row.path, row.version) from None
            if not sql.set_secret_key_id(conn, old_id, new_key.key_id):
                raise key_mismatch("*")
            also(conn, len(rows))
        with self._lock:
            self._sealer = (new_key.key_id, new)
        return len(rows)

    def close(self) -> None:
        pass


__all__ = ["EmbeddedSecretStore"]
