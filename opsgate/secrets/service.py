"""`gate.secrets`: the configured backend, the master key, and the five executors.

Built when the gate opens; nothing touches the key file or Vault until the first
secret operation (a gate that never stores a secret never creates a key).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection

from opsgate.config import SecretsConfig
from opsgate.errors import ConfigError
from opsgate.secrets.base import NAMESPACE, SecretStore
from opsgate.secrets.embedded import EmbeddedSecretStore
from opsgate.secrets.executor import EXECUTORS, SecretExecutor
from opsgate.secrets.keys import MasterKey, ValueBinder, finish_staged_key, load_master_key
from opsgate.secrets.vault import VaultSecretStore, VaultSession
from opsgate.store import Store
from opsgate.store import secrets as sql


class _Lazy:
    """A value built on first use, once, thread-safely (a failure is retried next use)."""

    def __init__(self, build: Callable[[], object]) -> None:
        self._build = build
        self._value: object = None
        self._lock = threading.Lock()

    def get(self) -> object:
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value


class SecretsService:
    """The secret backend of one gate and what its executors need."""

    namespace = NAMESPACE

    def __init__(
        self, config: SecretsConfig, *, store: Store, state_dir: Path, gate_id: str
    ) -> None:
        self.config = config
        self._gate_id = gate_id
        self._store = store
        self._state_dir = state_dir
        self._key = _Lazy(self._load_key)
        self._binder = _Lazy(lambda: ValueBinder(self.master_key(), gate_id))
        #: The authenticated Vault client (KV backend, dynamic database credentials).
        self.vault: VaultSession | None = (
            VaultSession(config.vault) if config.vault is not None else None
        )
        self.backend: SecretStore
        if config.backend == "vault":
            assert self.vault is not None  # the config requires it
            self.backend = VaultSecretStore(self.vault)
        else:
            self.backend = EmbeddedSecretStore(store, gate_id=gate_id, master_key=self.master_key)

    def __repr__(self) -> str:
        return f"SecretsService(backend={self.backend!r})"

    def _load_key(self) -> MasterKey:
        """The master key; a rekey that died between its commit and replacing the key
        file is finished here (its key was staged beside the key file)."""
        key = load_master_key(self._state_dir)
        if key.source != "key file" or self.config.backend != "embedded":
            return key
        with self._store.read() as conn:
            recorded = sql.secret_key_id(conn)
        return finish_staged_key(self._state_dir, key, recorded)

    def master_key(self) -> MasterKey:
        key = self._key.get()
        assert isinstance(key, MasterKey)
        return key

    def binder(self) -> ValueBinder:
        binder = self._binder.get()
        assert isinstance(binder, ValueBinder)
        return binder

    def reseal(self, new_key: MasterKey, *, also: Callable[[Connection, int], None]) -> int:
        """Seal every embedded secret again under `new_key` (see EmbeddedSecretStore),
        then use it from now on: the values' bindings in new plans too."""
        if not isinstance(self.backend, EmbeddedSecretStore):
            raise ConfigError(
                "the vault backend keeps its own keys: rotate them in OpenBao/Vault",
                code="secrets_rekey_unsupported",
            )
        count = self.backend.reseal(new_key, also=also)
        self._key = _Lazy(lambda: new_key)
        self._binder = _Lazy(lambda: ValueBinder(new_key, self._gate_id))
        return count

    def executors(self) -> list[SecretExecutor]:
        return [
            cls(self.backend, self.binder, max_value_bytes=self.config.max_value_bytes)
            for cls in EXECUTORS
        ]

    def close(self) -> None:
        self.backend.close()
        if self.vault is not None:
            self.vault.close()


__all__ = ["SecretsService"]
