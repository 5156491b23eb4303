"""The gate's master key: where it comes from and what is derived from it.

`OPSGATE_MASTER_KEY` (32 bytes as 64 hex characters or base64) wins; otherwise a
key file in the state dir (`secrets.key`, mode 0600, created atomically on first
use, never in the database). From it, with HKDF-SHA256 and distinct labels: the
AES-256-GCM key of the embedded backend, the key that binds an approval to a
written value (HMAC), and a key id stored beside each ciphertext so a wrong key is
named as such instead of producing garbage. The key itself is never shown: not in
a repr, not in an error (a malformed variable is refused without echoing it).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from opsgate.errors import ConfigError, SecretError
from opsgate.secrets.value import SecretValue

MASTER_KEY_ENV = "OPSGATE_MASTER_KEY"
KEY_FILE = "secrets.key"
#: A rekey's new key, written before its transaction and renamed over KEY_FILE after
#: it: if the process dies between the two, the next start finds it here.
STAGED_KEY_FILE = KEY_FILE + ".next"
KEY_BYTES = 32
_HEX = re.compile(r"[0-9a-fA-F]{64}\Z")
_B64 = re.compile(r"[A-Za-z0-9+/_-]{43}=?\Z")


def parse_master_key(text: str) -> bytes:
    """32 bytes from 64 hex characters or (url-safe) base64; the text is never echoed."""
    text = text.strip()
    try:
        if _HEX.match(text):
            return bytes.fromhex(text)
        if _B64.match(text):
            std = text.rstrip("=").replace("+", "-").replace("/", "_")
            raw = base64.urlsafe_b64decode(std + "=")
            if len(raw) == KEY_BYTES:
                return raw
    except (ValueError, binascii.Error):
        pass
    raise ConfigError(
        f"{MASTER_KEY_ENV} (or {KEY_FILE}) must hold 32 bytes as 64 hex characters or base64",
        code="master_key_invalid",
    )


class MasterKey:
    """The key and its derivations. Its repr names only where it came from."""

    __slots__ = ("__key", "key_id", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError("the master key must be 32 bytes", code="master_key_invalid")
        self.__key = key
        self.source = source
        self.key_id = self.derive(b"opsgate key id v1")[:16].hex()

    def _file_text(self) -> bytes:
        """The key as a key file holds it (for `install_key_file` only)."""
        return base64.urlsafe_b64encode(self.__key) + b"\n"

    def derive(self, label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(self.__key)

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r}, key_id={self.key_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a MasterKey cannot be pickled")


def load_master_key(state_dir: Path, environ: Mapping[str, str] | None = None) -> MasterKey:
    """The configured key, or the state dir's key file (created on first use)."""
    env = os.environ if environ is None else environ
    given = env.get(MASTER_KEY_ENV)
    if given is not None:
        return MasterKey(parse_master_key(given), "environment")
    path = Path(state_dir) / KEY_FILE
    if not os.path.lexists(path):
        _create_key_file(path)
    return MasterKey(parse_master_key(_read_key_file(path)), "key file")


def read_key_file(path: Path) -> MasterKey:
    """A master key from a file of the operator's (as private as the state dir's)."""
    return MasterKey(parse_master_key(_read_key_file(Path(path))), "key file")


def create_key_file(path: Path) -> MasterKey:
    """A fresh master key in a new 0600 file at `path` (an existing one is refused)."""
    path = Path(path)
    if os.path.lexists(path):
        raise ConfigError(
            f"'{path}' exists: give a new file, or leave out --generate",
            code="master_key_unavailable",
        )
    _create_key_file(path)
    return read_key_file(path)


def install_key_file(state_dir: Path, key: MasterKey) -> None:
    """Make `key` the state dir's key file: written beside it, synced, then renamed
    over it (the old key or the new one, never half of either). The key itself, not
    the file it was read from: that file may hold another by now."""
    path = Path(state_dir) / KEY_FILE
    _place(path, key._file_text(), os.replace, "replace")


def stage_key_file(state_dir: Path, key: MasterKey) -> None:
    """Keep `key` beside the key file before a rekey commits (see STAGED_KEY_FILE)."""
    _place(Path(state_dir) / STAGED_KEY_FILE, key._file_text(), os.replace, "stage")


def drop_staged_key(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(state_dir) / STAGED_KEY_FILE)


def finish_staged_key(state_dir: Path, current: MasterKey, recorded: str | None) -> MasterKey:
    """The key to use, given the key file's `current` key and the key id the database
    `recorded`: a rekey that committed but died before replacing the key file left
    its key staged, which then becomes the key file; a staged key the database does
    not record (its rekey never committed) is removed once the current one is the
    recorded one. Anything else is left as it is, for the operator."""
    staged_path = Path(state_dir) / STAGED_KEY_FILE
    if not os.path.lexists(staged_path):
        return current
    staged = read_key_file(staged_path)
    if recorded == staged.key_id and recorded != current.key_id:
        install_key_file(state_dir, staged)
        drop_staged_key(state_dir)
        return staged
    if recorded is None or recorded == current.key_id:
        drop_staged_key(state_dir)
    return current


def _create_key_file(path: Path) -> None:
    """Write a fresh key beside `path` and link it into place: the key file appears
    whole or not at all, and a racing process that linked first wins (both use it)."""

    def link(tmp: Path, to: Path) -> None:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, to)

    key = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    _place(Path(path), key, link, "create")


def _place(path: Path, data: bytes, put: Callable[[Path, Path], None], verb: str) -> None:
    """`data` in a private file beside `path`, synced, then `put` at `path` (a link or
    a rename) and the directory synced, so the name is durable too."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        put(tmp, path)
    except OSError as exc:
        raise ConfigError(
            f"cannot {verb} the key file {KEY_FILE!r}: {exc.strerror or exc.__class__.__name__}",
            code="master_key_unavailable",
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _read_key_file(path: Path) -> str:
    """The key file's text; a link, a non-file or a file others may read is refused."""
    name = KEY_FILE if path.name == KEY_FILE else str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the key file {name!r}: {exc.strerror or 'not a plain file'}",
            code="master_key_unavailable",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{name!r} is not a regular file", code="master_key_insecure")
        if st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise ConfigError(
                f"{name!r} must be owned by this user with mode 0600",
                code="master_key_insecure",
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{KEY_FILE!r} must hold 32 bytes as hex or base64", code="master_key_invalid"
        ) from None


class ValueBinder:
    """A keyed digest of a value for a path: what an approval of a write binds.

    HMAC-SHA256 with a key only the gate holds, so the approval request and the plan
    digest can name the exact value without revealing it (a plain hash of a short
    password is a dictionary lookup away from the password)."""

    __slots__ = ("__key", "_gate_id")

    def __init__(self, key: MasterKey, gate_id: str) -> None:
        self.__key = key.derive(b"opsgate value binding v1")
        self._gate_id = gate_id

    def bind(self, path: str, value: SecretValue) -> str:
        msg = b"\0".join(
            (b"opsgate-bind/v1", self._gate_id.encode(), path.encode(), value.reveal().encode())
        )
        return "hmac-sha256:" + hmac.new(self.__key, msg, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "ValueBinder()"


def key_mismatch(path: str) -> SecretError:
    return SecretError(
        f"secret {path!r} was sealed with another master key ({MASTER_KEY_ENV} or {KEY_FILE})",
        code="secret_key_mismatch",
    )


__all__ = [
    "KEY_FILE",
    "MASTER_KEY_ENV",
    "MasterKey",
    "ValueBinder",
    "create_key_file",
    "drop_staged_key",
    "finish_staged_key",
    "install_key_file",
    "key_mismatch",
    "load_master_key",
    "parse_master_key",
    "read_key_file",
    "stage_key_file",
]
