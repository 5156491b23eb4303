"""The migrations directory: `V<n>__<name>.sql` files, their checksums and the chain.

Only the directory configured for a target is read, never a path from a request.
Every `.sql` file in it must be a well-named regular file (a symlink could point
at anything the gate can read, including its own keys); other files are ignored.

A file's checksum is the SHA-256 of its bytes. The chained checksum of file n is
SHA-256(chain of file n-1, its file name, its checksum), so editing, inserting,
renaming or reordering any earlier file changes the chain of every later one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from opsgate.errors import MigrationError

#: File names, not SQL: the version and a description of safe characters.
FILE_NAME = re.compile(r"V([0-9]{1,9})__([A-Za-z0-9][A-Za-z0-9_.-]{0,99})\.sql\Z", re.ASCII)
MAX_FILE_BYTES = 1_000_000
MAX_FILES = 10_000
CHAIN_START = "sha256:" + hashlib.sha256(b"opsgate-migrations-v1").hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationFile:
    version: int
    name: str  # the file name, e.g. "V3__add_index.sql"
    text: str
    checksum: str
    chain: str

    @property
    def description(self) -> str:
        return self.name.split("__", 1)[1].removesuffix(".sql")


def checksum(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_next(previous: str, name: str, file_checksum: str) -> str:
    """Names have no newline (FILE_NAME), checksums a fixed shape: the input is unambiguous."""
    body = f"{previous}\n{name}\n{file_checksum}".encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _invalid(message: str) -> MigrationError:
    return MigrationError(message, code="migration_invalid")


def _read(directory: Path, name: str) -> bytes:
    """Read one file without following a link (symbolic or hard) and without blocking
    on a fifo."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(directory / name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _invalid(f"migration {name!r} is a symlink; only regular files are read") from exc
        raise _invalid(f"migration {name!r} cannot be read: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _invalid(f"migration {name!r} is not a regular file")
        # A hard link is indistinguishable from its original, which may be any file the
        # gate can read (its keys): its text would reach the plan and the approval.
        if st.st_nlink != 1:
            raise _invalid(f"migration {name!r} has more than one hard link")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise _invalid(f"migration {name!r} is larger than {MAX_FILE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_directory(directory: Path) -> tuple[MigrationFile, ...]:
    """Every migration of `directory`, ordered by version, with checksums and chain."""
    try:
        entries = sorted(e.name for e in os.scandir(directory))
    except OSError as exc:
        raise _invalid(
            f"the migrations directory cannot be read: {exc.strerror or 'not a directory'}"
        ) from exc
    found: dict[int, tuple[str, bytes]] = {}
    for name in entries:
        if not name.lower().endswith(".sql"):
            continue  # README, .gitkeep, ...
        match = FILE_NAME.match(name)
        if match is None:
            # A near-miss (V3_x.sql, v3__x.sql) silently skipped would be a migration
            # that never runs while everyone believes it did.
            raise _invalid(f"migration file name {name[:120]!r} is not V<n>__<name>.sql")
        version = int(match.group(1))
        if version < 1:
            raise _invalid(f"migration {name!r}: versions start at 1")
        if version in found:
            raise _invalid(f"migrations {found[version][0]!r} and {name!r} share version {version}")
        if len(found) >= MAX_FILES:
            raise _invalid(f"more than {MAX_FILES} migration files")
        found[version] = (name, _read(directory, name))
    files: list[MigrationFile] = []
    chain = CHAIN_START
    for version in sorted(found):
        name, data = found[version]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid(f"migration {name!r} is not UTF-8 text") from exc
        if "\x00" in text:
            raise _invalid(f"migration {name!r} contains a NUL character")
        digest = checksum(data)
        chain = chain_next(chain, name, digest)
        files.append(MigrationFile(version, name, text, digest, chain))
    return tuple(files)


__all__ = [
    "CHAIN_START",
    "FILE_NAME",
    "MAX_FILE_BYTES",
    "MigrationFile",
    "chain_next",
    "checksum",
    "load_directory",
]
