"""Artifacts: the files an executor reads on an agent's behalf, confined to configured roots.

An agent names an artifact by an absolute path. The gate reads it only when that
path lies, as written, under one of the operator's artifact roots, and every
component below the root is reached through a directory descriptor without
following a symbolic link. What is read must be a plain tree: directories and
regular files with one link each, without setuid, setgid, sticky or world-writable
bits. Anything else is refused before a byte is read, and every refusal about the
path itself carries one code and one message, so a refusal never tells whether a
path outside the roots (or inside them) exists.

The digest is a tagged, canonical encoding of the tree (type, relative path, mode,
size and content hash of every entry, directories included), so two different
trees never share a digest; `copy_tree` hashes exactly the bytes it copies.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opsgate.errors import ConfigError, OperationError, safe_text

#: Versions the encoding: a digest of another encoding can never equal one of this one.
DIGEST_TAG = b"opsgate-artifact-v1\0"
#: Nesting bound: a walk holds one descriptor per level.
MAX_DEPTH = 64
#: Longest relative path (bytes) of an entry: a release lives below the deploy root, and a
#: tree whose paths outgrow PATH_MAX (4096) breaks every tool that works by path.
MAX_PATH_BYTES = 1024
_CHUNK = 1 << 20
# One message for every refusal about the path: outside the roots, missing, not
# readable, a symlink on the way, not a file or directory. Nothing to tell apart.
REFUSED = "artifact must be an existing file or directory under a configured artifact root"
# Mode bits an artifact may not carry. setuid/setgid: the copy is owned by the gate's
# user, so a setuid file in a release would let anyone on the host run code as the
# gate (and read its keys); setgid likewise for its group. Sticky: no meaning in a
# release. World-writable: anyone on the host could change the release after the
# approval bound its bytes. Refused, not stripped: the copy reproduces what was hashed.
FORBIDDEN_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a fifo swapped in after the check cannot hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Kind = Literal["file", "dir"]


def _refused() -> OperationError:
    return OperationError(REFUSED, code="artifact_refused")


def _invalid(path: bytes, why: str) -> OperationError:
    where = f"artifact entry {safe_text(os.fsdecode(path))!r}" if path else "the artifact"
    return OperationError(f"{where} {why}", code="artifact_invalid")


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(8, "big") + value


class _Digest:
    """Length-prefixed records (type, path, mode, size, sha256) after a version tag."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(DIGEST_TAG)

    def record(self, kind: Kind, path: bytes, mode: int, size: int, sha: bytes) -> None:
        self._h.update(
            _field(kind.encode())
            + _field(path)
            + _field(b"%o" % mode)
            + _field(b"%d" % size)
            + _field(sha)
        )

    def hexdigest(self) -> str:
        return "sha256:" + self._h.hexdigest()


def _is_within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def overlaps(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether one real path is the other or inside it (either way round)."""
    x, y = os.path.realpath(a), os.path.realpath(b)
    return _is_within(x, y) or _is_within(y, x)


@dataclass(frozen=True, slots=True)
class _Root:
    given: tuple[str, ...]  # the absolute path as configured, split
    real: str  # the resolved directory the gate opens

    @property
    def parts(self) -> tuple[tuple[str, ...], ...]:
        return (self.given, tuple(self.real.split("/")[1:]))


@dataclass(slots=True)
class Opened:
    """An artifact opened inside a root: a descriptor on a file or a directory."""

    fd: int
    kind: Kind
    name: bytes  # a file's own name (part of what is deployed); b"" for a directory
    mode: int

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArtifactRoots:
    """The directories agents' artifacts may come from; nothing else is read.

    Roots are the operator's configuration: each must be an existing directory, and
    no root may hold another (one path, one root).
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        if roots is None or isinstance(roots, (str, bytes, os.PathLike)):
            raise ConfigError("artifact_roots must be a list of directories", code="config_invalid")
        resolved: list[_Root] = []
        for root in roots:
            if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
                raise ConfigError(
                    "an artifact root must be a non-empty path", code="config_invalid"
                )
            given = os.path.abspath(os.fspath(root))
            real = os.path.realpath(given)
            if not os.path.isdir(real):
                raise ConfigError(
                    f"artifact root {given!r} is not a directory",
                    code="config_invalid",
                )
            for other in resolved:
                if overlaps(real, other.real):
                    raise ConfigError(
                        f"artifact roots {given!r} and {other.real!r} overlap; give each tree once",
                        code="config_invalid",
                    )
            resolved.append(_Root(tuple(given.split("/")[1:]), real))
        if not resolved:
            raise ConfigError(
                "no artifact roots are configured: name the directories artifacts may come "
                "from (artifact_roots=[...])",
                code="config_invalid",
            )
        self._roots = tuple(resolved)

    def forbid(self, path: str | os.PathLike[str], what: str) -> None:
        """Refuse configuration in which a root is, holds or lies inside `path`."""
        for root in self._roots:
            if overlaps(root.real, path):
                raise ConfigError(
                    f"artifact root {root.real!r} overlaps {what}; "
                    "keep artifacts in a directory of their own",
                    code="config_invalid",
                )

    def locate(self, artifact: object) -> tuple[_Root, tuple[str, ...]]:
        """The root and the components below it, from the text alone (no I/O)."""
        if not isinstance(artifact, str) or not artifact.startswith("/") or "\0" in artifact:
            raise _refused()
        parts = tuple(artifact.split("/")[1:])
        if any(p in ("", ".", "..") for p in parts):
            raise _refused()
        for root in self._roots:
            for prefix in root.parts:
                if parts[: len(prefix)] == prefix:
                    return root, parts[len(prefix) :]
        raise _refused()

    def open(self, artifact: object) -> Opened:
        """Open the artifact without following any link below its root."""
        root, rest = self.locate(artifact)
        if len(rest) > MAX_DEPTH:
            raise _refused()
        try:
            fd = os.open(root.real, _DIR_FLAGS)
        except OSError as exc:
            raise _refused() from exc
        try:
            for part in rest[:-1]:
                st = os.stat(os.fsencode(part), dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise _refused()
                fd = _swap(fd, _open_dir(fd, os.fsencode(part), st))
            if not rest:
                st = os.fstat(fd)
                _check_mode(st, b"")
                return Opened(fd, "dir", b"", stat.S_IMODE(st.st_mode))
            name = os.fsencode(rest[-1])
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _check_mode(st, b"")
                return Opened(_swap(fd, _open_dir(fd, name, st)), "dir", b"", _mode(st))
            if stat.S_ISREG(st.st_mode):
                _check_file(st, name)
                return Opened(_swap(fd, _open_file(fd, name, st)), "file", name, _mode(st))
            raise _refused()
        except OperationError as exc:
            os.close(fd)
            if exc.code == "artifact_invalid":
                raise
            raise _refused() from None
        except OSError as exc:
            os.close(fd)
            raise _refused() from exc


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)


def _check_mode(st: os.stat_result, path: bytes) -> None:
    if st.st_mode & FORBIDDEN_BITS:
        raise _invalid(
            path, f"has mode {_mode(st):04o}: setuid, setgid, sticky and world-writable are refused"
        )


def _check_file(st: os.stat_result, path: bytes) -> None:
    _check_mode(st, path)
    # A hard link is indistinguishable from its original, which may live anywhere on
    # the filesystem (the gate's key file included): a file with another link is refused.
    if st.st_nlink != 1:
        raise _invalid(path, "has more than one hard link")


def _same(st: os.stat_result, opened: os.stat_result) -> bool:
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)) == (
        opened.st_dev,
        opened.st_ino,
        stat.S_IFMT(opened.st_mode),
    )


def _open_dir(parent: int, name: bytes, st: os.stat_result) -> int:
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    opened = os.fstat(fd)
    if not _same(st, opened):  # swapped between the check and the open
        os.close(fd)
        raise _refused()
    return fd


def _open_file(parent: int, name: bytes, st: os.stat_result) -> int:
    fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
    opened = os.fstat(fd)
    if not _same(st, opened) or opened.st_nlink != 1:
        os.close(fd)
        raise _refused()
    return fd


#: Told the number of bytes each copied chunk held (progress display).
OnBytes = Callable[[int], None]


def _pump(src: int, dest: int | None, on_bytes: OnBytes | None = None) -> tuple[int, bytes]:
    """Read `src` to its end (copying into `dest`): the size and SHA-256 of what was read."""
    h = hashlib.sha256()
    size = 0
    while chunk := os.read(src, _CHUNK):
        h.update(chunk)
        size += len(chunk)
        if dest is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(dest, view) :]
        if on_bytes is not None:
            on_bytes(len(chunk))
    return size, h.digest()


def _walk(
    src: int,
    rel: bytes,
    depth: int,
    digest: _Digest,
    dest: int | None,
    on_bytes: OnBytes | None = None,
) -> None:
    """Record (and copy into `dest`) every entry below the directory `src`, sorted by name."""
    if depth > MAX_DEPTH:
        raise _invalid(rel, f"is nested deeper than {MAX_DEPTH} levels")
    for name in sorted(os.fsencode(n) for n in os.listdir(src)):
        path = rel + b"/" + name if rel else name
        if len(path) > MAX_PATH_BYTES:
            raise _invalid(path[:200] + b"...", f"has a path longer than {MAX_PATH_BYTES} bytes")
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _check_mode(st, path)
            digest.record("dir", path, _mode(st), 0, b"")
            fd = _open_dir(src, name, st)
            sub: int | None = None
            try:
                if dest is not None:
                    os.mkdir(name, 0o700, dir_fd=dest)
                    sub = os.open(name, _DIR_FLAGS, dir_fd=dest)
                _walk(fd, path, depth + 1, digest, sub, on_bytes)
                if sub is not None:
                    os.fchmod(sub, _mode(st))
            finally:
                os.close(fd)
                if sub is not None:
                    os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            _check_file(st, path)
            size, sha = _copy_file(src, name, st, dest, on_bytes)
            digest.record("file", path, _mode(st), size, sha)
        else:
            raise _invalid(path, "is neither a regular file nor a directory (symlink, fifo, ...)")


def _copy_file(
    src_dir: int,
    name: bytes,
    st: os.stat_result,
    dest: int | None,
    on_bytes: OnBytes | None = None,
) -> tuple[int, bytes]:
    fd = _open_file(src_dir, name, st)
    out: int | None = None
    try:
        if dest is not None:
            out = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dest,
            )
        result = _pump(fd, out, on_bytes)
        if out is not None:
            os.fchmod(out, _mode(st))
        return result
    finally:
        os.close(fd)
        if out is not None:
            os.close(out)


def _digest_opened(opened: Opened, dest: int | None, on_bytes: OnBytes | None = None) -> str:
    digest = _Digest()
    if opened.kind == "file":
        size, sha = (
            _pump(opened.fd, None, on_bytes)
            if dest is None
            else _copy_opened_file(opened, dest, on_bytes)
        )
        digest.record("file", opened.name, opened.mode, size, sha)
    else:
        digest.record("dir", b"", opened.mode, 0, b"")
        _walk(opened.fd, b"", 1, digest, dest, on_bytes)
    return digest.hexdigest()


def _copy_opened_file(
    opened: Opened, dest: int, on_bytes: OnBytes | None = None
) -> tuple[int, bytes]:
    out = os.open(
        opened.name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dest,
    )
    try:
        result = _pump(opened.fd, out, on_bytes)
        os.fchmod(out, opened.mode)
        return result
    finally:
        os.close(out)


def artifact_digest(opened: Opened, *, on_bytes: OnBytes | None = None) -> str:
    """The canonical digest of an opened artifact (what an approval binds)."""
    try:
        return _digest_opened(opened, None, on_bytes)
    except OperationError as exc:
        if exc.code == "artifact_invalid":
            raise
        raise _refused() from None
    except OSError as exc:
        raise _refused() from exc


def copy_tree(opened: Opened, dest: Path, *, on_bytes: OnBytes | None = None) -> str:
    """Copy the artifact into the new directory `dest`; the digest of the bytes copied.

    A file artifact becomes `dest/<its name>`; a directory artifact's entries become
    `dest`'s, and `dest` takes the directory's mode. Modes are reproduced exactly
    (no umask); owners, timestamps and extended attributes are not copied.
    """
    os.mkdir(dest, 0o700)
    fd = os.open(dest, _DIR_FLAGS)
    try:
        try:
            result = _digest_opened(opened, fd, on_bytes)
        except OperationError as exc:
            if exc.code == "artifact_invalid":
                raise
            raise _refused() from None
        except OSError as exc:
            raise _refused() from exc
        os.fchmod(fd, opened.mode if opened.kind == "dir" else 0o755)
        return result
    finally:
        os.close(fd)


def tree_digest(path: Path, kind: Kind) -> str:
    """The digest of a release the gate wrote, read back the way an artifact is.

    `kind` "file": `path` must hold exactly one regular file (the deployed artifact).
    """
    fd = os.open(path, _DIR_FLAGS)
    try:
        if kind == "dir":
            opened = Opened(fd, "dir", b"", _mode(os.fstat(fd)))
            return artifact_digest(opened)
        names = os.listdir(fd)
        if len(names) != 1:
            raise _invalid(b"", "release does not hold exactly one file")
        name = os.fsencode(names[0])
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise _invalid(name, "is not a regular file")
        _check_file(st, name)
        with Opened(_open_file(fd, name, st), "file", name, _mode(st)) as opened:
            return artifact_digest(opened)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a tree the gate wrote, read-only directories included; missing is fine.

    Walked through directory descriptors, one open at a time, never by full path: a
    tree deeper than PATH_MAX is removed like any other.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    _clear(os.open(path, _DIR_FLAGS))
    os.rmdir(path)


def _open_own_dir(parent: int, name: str) -> int:
    """Open a subdirectory to remove it, making it readable first if it is not."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    os.fchmod(fd, 0o700)
    return fd


def _clear(top: int) -> None:
    """Empty the directory `top` (and close it), depth first, holding one descriptor."""
    fd = top
    # (name, (dev, ino) of its parent) of each directory entered below `top`
    trail: list[tuple[str, tuple[int, int]]] = []
    try:
        while True:
            os.fchmod(fd, 0o700)
            with os.scandir(fd) as entries:
                listed = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            child = None
            for name, is_dir in listed:
                if is_dir:
                    child = name
                    break
                os.unlink(name, dir_fd=fd)
            if child is not None:
                here = os.fstat(fd)
                fd = _swap(fd, _open_own_dir(fd, child))
                trail.append((child, (here.st_dev, here.st_ino)))
                continue
            if not trail:
                return
            name, parent_id = trail.pop()
            fd = _swap(fd, os.open("..", _DIR_FLAGS, dir_fd=fd))
            up = os.fstat(fd)
            if (up.st_dev, up.st_ino) != parent_id:  # moved while being removed
                raise OSError(f"directory moved during removal: {name!r}")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
