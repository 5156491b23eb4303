"""What every secret backend offers, and the paths it is given.

A secret's path is the resource of its capability: `secrets/<env>/<name>...`, each
segment `[A-Za-z0-9._-]+` and never `.` or `..` (the capability grammar). Backends
receive only paths that passed `secret_path`, so none can name anything outside the
gate's own subtree (a Vault prefix, the embedded table's `secrets/` rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from opsgate.errors import SecretError, safe_text
from opsgate.secrets.value import SecretValue

NAMESPACE = "secrets"
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+\Z", re.ASCII)


def _segments(resource: object) -> list[str]:
    if not isinstance(resource, str):
        raise SecretError("a secret path must be text", code="secret_path_invalid")
    parts = resource.split("/")
    if parts[0] != NAMESPACE or any(not _SEGMENT.match(p) or p in (".", "..") for p in parts[1:]):
        raise SecretError(
            f"secret path {safe_text(resource)!r} must be 'secrets/<env>/<name>' with "
            "segments of [A-Za-z0-9._-]",
            code="secret_path_invalid",
        )
    return parts


def secret_path(resource: object) -> str:
    """A secret's path (`secrets/<env>/<name>...`), checked; else `secret_path_invalid`."""
    parts = _segments(resource)
    if len(parts) < 3:
        raise SecretError(
            f"secret path {safe_text(resource)!r} must name an environment and a secret "
            "('secrets/<env>/<name>')",
            code="secret_path_invalid",
        )
    return "/".join(parts)


def secret_prefix(resource: object) -> str:
    """A listing prefix (`secrets/<env>[/<folder>...]`), checked."""
    parts = _segments(resource)
    if len(parts) < 2:
        raise SecretError(
            "a listing must name at least an environment ('secrets/<env>')",
            code="secret_path_invalid",
        )
    return "/".join(parts)


def is_name(text: str) -> bool:
    """A name a listing may show: one path segment (a folder ends with '/')."""
    name = text[:-1] if text.endswith("/") else text
    return bool(_SEGMENT.match(name)) and name not in (".", "..")


@dataclass(frozen=True, slots=True)
class SecretVersion:
    """One version of a secret, as read."""

    path: str
    version: int
    value: SecretValue = field(repr=False)


class SecretStore(Protocol):
    """A backend: embedded (AES-256-GCM in the state database) or vault (KV v2).

    Every method raises SecretError (`secret_not_found`, `secret_conflict`, ...) or
    SecretBackendError (the backend is away, sealed or refusing); none ever puts a
    value in an error.
    """

    name: str

    def get(self, path: str, version: int | None = None) -> SecretVersion:
        """The latest (or the given) live version; `secret_not_found` otherwise."""
        ...

    def current_version(self, path: str) -> int:
        """The newest version number (deleted or not); 0 when there is none."""
        ...

    def put(self, path: str, value: SecretValue, *, cas: int, actor: str, now: float) -> int:
        """Write a new version if the newest is still `cas` (0: none yet); returns the
        new version number, or raises `secret_conflict`."""
        ...

    def names(self, prefix: str) -> list[str]:
        """Names directly under `prefix` (folders end with '/'); [] when none."""
        ...

    def delete(self, path: str, *, now: float) -> int:
        """Soft-delete the latest version (kept, recoverable by a backend operator);
        returns its number, or raises `secret_not_found`."""
        ...

    def destroy(self, path: str) -> int:
        """Remove every version and the secret's metadata; returns how many versions."""
        ...

    def close(self) -> None: ...


def not_found(path: str, version: int | None = None) -> SecretError:
    what = f"version {version} of secret {path!r}" if version else f"secret {path!r}"
    return SecretError(f"{what} does not exist or is deleted", code="secret_not_found")


def conflict(path: str, expected: int, actual: int | None = None) -> SecretError:
    now = "" if actual is None else f" (it is now at version {actual})"
    return SecretError(
        f"secret {path!r} changed concurrently: expected version {expected}{now}",
        code="secret_conflict",
    )


__all__ = [
    "NAMESPACE",
    "SecretStore",
    "SecretVersion",
    "conflict",
    "is_name",
    "not_found",
    "secret_path",
    "secret_prefix",
]
