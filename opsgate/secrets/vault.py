"""The vault backend: KV v2 on OpenBao or HashiCorp Vault, through hvac.

`secrets/<env>/<name>` is `<prefix>/<env>/<name>` in the KV v2 mount: every path
the gate sends passed the capability grammar, so none leaves the prefix. Writes use
check-and-set: the current version is read, then written with `cas`, so a concurrent
change is `secret_conflict`, never a lost update. Every request has a timeout and
none is retried (a refusal is final; an outage is reported, not hammered). Errors
are typed by what happened (unreachable, timeout, sealed, forbidden, ...) and carry
the status code, never Vault's own text.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import hvac
import requests
from hvac import exceptions as vault_errors

from opsgate.config import VaultAuth, VaultConfig
from opsgate.errors import ConfigError, OpsgateError, SecretBackendError, SecretError
from opsgate.secrets.base import SecretVersion, conflict, is_name, not_found
from opsgate.secrets.value import SecretValue

T = TypeVar("T")
# Log in again this long before an AppRole token would expire.
_RELOGIN_MARGIN = 0.2


def _reference(
    env_name: str | None, file: str | None, what: str, environ: Mapping[str, str]
) -> str:
    """A credential named by reference: an environment variable or a file."""
    if env_name is not None:
        value = environ.get(env_name, "").strip()
        if not value:
            raise ConfigError(
                f"vault {what}: environment variable {env_name} is not set",
                code="vault_auth_missing",
            )
        return value
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"vault {what}: cannot read {Path(file).name!r} ({exc.__class__.__name__})",
                code="vault_auth_missing",
            ) from None
        if not value:
            raise ConfigError(
                f"vault {what}: {Path(file).name!r} is empty", code="vault_auth_missing"
            )
        return value
    raise ConfigError(f"vault {what} is not configured", code="vault_auth_missing")


def backend_error(exc: BaseException, address: str, timeout: float) -> OpsgateError | None:
    """The typed error for a failed Vault call, or None when `exc` is not one."""
    if isinstance(exc, requests.exceptions.Timeout):
        return SecretBackendError(
            f"secret backend {address} did not answer within {timeout:g}s "
            "(a write may or may not have happened)",
            code="secret_backend_timeout",
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return SecretBackendError(
            f"secret backend {address} is unreachable", code="secret_backend_unreachable"
        )
    if not isinstance(exc, vault_errors.VaultError):
        return None
    if isinstance(exc, vault_errors.VaultDown):
        return SecretBackendError(
            f"secret backend {address} is sealed or unavailable (503)",
            code="secret_backend_sealed",
        )
    if isinstance(exc, vault_errors.Forbidden):
        return SecretBackendError(
            f"secret backend {address} refused the gate's token (403)",
            code="secret_backend_forbidden",
        )
    if isinstance(exc, vault_errors.Unauthorized):
        return SecretBackendError(
            f"secret backend {address} did not accept the gate's login (401)",
            code="secret_backend_unauthenticated",
        )
    if isinstance(exc, vault_errors.RateLimitExceeded):
        return SecretBackendError(
            f"secret backend {address} is rate limiting the gate (429)",
            code="secret_backend_throttled",
        )
    if isinstance(exc, vault_errors.InvalidRequest):
        return SecretBackendError(
            f"secret backend {address} refused the request (400)", code="secret_backend_refused"
        )
    status = getattr(exc, "status_code", None) or "?"
    return SecretBackendError(
        f"secret backend {address} failed the request ({status})", code="secret_backend_error"
    )


class VaultSession:
    """One authenticated hvac client (token or AppRole), shared by the KV backend and
    the dynamic database credentials. Logs in lazily and again before an AppRole
    token expires; never retries a request."""

    def __init__(
        self,
        cfg: VaultConfig,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._client: hvac.Client | None = None
        self._renew_at: float | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VaultSession(address={self.cfg.address!r}, auth={self.cfg.auth.method!r})"

    def new_client(self, token: str | None = None) -> hvac.Client:
        """An unauthenticated (or `token`) client with the configured server and limits."""
        cfg = self.cfg
        session = requests.Session()
        # Only what the config says: requests would otherwise look up proxies, a CA
        # bundle and .netrc credentials in the environment on every request.
        session.trust_env = False
        proxies = {"http": cfg.proxy, "https": cfg.proxy} if cfg.proxy else None
        return hvac.Client(
            url=cfg.address,
            token=token,
            namespace=cfg.namespace,
            timeout=cfg.timeout_seconds,
            verify=cfg.ca_cert if cfg.ca_cert else True,
            proxies=proxies,
            session=session,
        )

    def _login(self) -> hvac.Client:
        auth: VaultAuth = self.cfg.auth
        env = self._environ
        if auth.method == "token":
            return self.new_client(_reference(auth.token_env, auth.token_file, "token", env))
        role_id = auth.role_id or _reference(auth.role_id_env, auth.role_id_file, "role_id", env)
        secret_id = _reference(auth.secret_id_env, auth.secret_id_file, "secret_id", env)
        client = self.new_client()
        answer = client.auth.approle.login(
            role_id=role_id, secret_id=secret_id, mount_point=auth.mount, use_token=True
        )
        lease = float((answer.get("auth") or {}).get("lease_duration") or 0)
        self._renew_at = self._clock() + lease * (1 - _RELOGIN_MARGIN) if lease > 0 else None
        return client

    def client(self) -> hvac.Client:
        with self._lock:
            expired = self._renew_at is not None and self._clock() >= self._renew_at
            if self._client is None or expired:
                self._client = None
                self._client = self.call(self._login)
            return self._client

    def call(self, fn: Callable[[], T], expect: tuple[type[Exception], ...] = ()) -> T:
        """Run one Vault request; its failure becomes a typed SecretBackendError, except
        the answers in `expect` (a 404 the caller reads as "none"), raised as they are."""
        try:
            return fn()
        except expect:
            raise
        except Exception as exc:
            typed = backend_error(exc, self.cfg.address, self.cfg.timeout_seconds)
            if typed is None:
                raise
            raise typed from None  # Vault's own text stays out of our errors

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.adapter.close()
                self._client = None


class VaultSecretStore:
    """`SecretStore` over a KV v2 mount, under the configured prefix."""

    name = "vault"

    def __init__(self, session: VaultSession) -> None:
        self._session = session
        self._mount = session.cfg.mount
        self._prefix = session.cfg.prefix

    def __repr__(self) -> str:
        return f"VaultSecretStore(address={self._session.cfg.address!r}, mount={self._mount!r})"

    def _where(self, path: str) -> str:
        """`secrets/<env>/<name>` -> `<prefix>/<env>/<name>` (paths are grammar-checked)."""
        return "/".join((self._prefix, *path.split("/")[1:]))

    def _kv(self, fn: Callable[[Any], T], *expect: type[Exception]) -> T:
        client = self._session.client()
        return self._session.call(lambda: fn(client.secrets.kv.v2), expect)

    def _metadata(self, path: str) -> dict[str, Any] | None:
        try:
            answer = self._kv(
                lambda kv: kv.read_secret_metadata(path=self._where(path), mount_point=self._mount),
                vault_errors.InvalidPath,
            )
        except vault_errors.InvalidPath:
            return None
        data = answer.get("data") if isinstance(answer, dict) else None
        return data if isinstance(data, dict) else None

    def get(self, path: str, version: int | None = None) -> SecretVersion:
        try:
            answer = self._kv(
                lambda kv: kv.read_secret_version(
                    path=self._where(path),
                    version=version,
                    mount_point=self._mount,
                    raise_on_deleted_version=True,
                ),
                vault_errors.InvalidPath,
            )
        except vault_errors.InvalidPath:
            raise not_found(path, version) from None
        data = (answer.get("data") or {}) if isinstance(answer, dict) else {}
        body, meta = data.get("data"), data.get("metadata") or {}
        if (
            not isinstance(body, dict)
            or set(body) != {"value"}
            or not isinstance(body["value"], str)
        ):
            raise SecretError(
                f"secret {path!r} is not one text 'value' (written outside the gate?)",
                code="secret_unsupported",
            )
        return SecretVersion(path, int(meta.get("version") or 0), SecretValue(body["value"]))

    def current_version(self, path: str) -> int:
        meta = self._metadata(path)
        return int(meta.get("current_version") or 0) if meta else 0

    def put(self, path: str, value: SecretValue, *, cas: int, actor: str, now: float) -> int:
        try:
            answer = self._kv(
                lambda kv: kv.create_or_update_secret(
                    path=self._where(path),
                    secret={"value": value.reveal()},
                    cas=cas,
                    mount_point=self._mount,
                ),
                vault_errors.InvalidRequest,
            )
        except vault_errors.InvalidRequest as exc:
            if any("check-and-set" in str(e) for e in (exc.errors or ())):
                raise conflict(path, cas) from None
            raise SecretBackendError(
                f"secret backend {self._session.cfg.address} refused the write (400)",
                code="secret_backend_refused",
            ) from None
        return int(((answer or {}).get("data") or {}).get("version") or cas + 1)

    def names(self, prefix: str) -> list[str]:
        try:
            answer = self._kv(
                lambda kv: kv.list_secrets(path=self._where(prefix), mount_point=self._mount),
                vault_errors.InvalidPath,
            )
        except vault_errors.InvalidPath:
            return []
        keys = ((answer or {}).get("data") or {}).get("keys") or []
        return sorted(k for k in keys if isinstance(k, str) and is_name(k))

    def delete(self, path: str, *, now: float) -> int:
        meta = self._metadata(path)
        current = int(meta.get("current_version") or 0) if meta else 0
        info = ((meta or {}).get("versions") or {}).get(str(current)) or {}
        if not current or info.get("deletion_time") or info.get("destroyed"):
            raise not_found(path)
        # That version exactly: a write racing in after the read is not deleted blind.
        self._kv(
            lambda kv: kv.delete_secret_versions(
                path=self._where(path), versions=[current], mount_point=self._mount
            )
        )
        return current

    def destroy(self, path: str) -> int:
        meta = self._metadata(path)
        if not meta:
            raise not_found(path)
        self._kv(
            lambda kv: kv.delete_metadata_and_all_versions(
                path=self._where(path), mount_point=self._mount
            )
        )
        return len(meta.get("versions") or {})

    def close(self) -> None:
        self._session.close()


__all__ = ["VaultSecretStore", "VaultSession", "backend_error"]
