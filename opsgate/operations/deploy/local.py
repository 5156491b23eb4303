"""The local backend's files: `<root>/<env>/<app>/releases/<version>/` and `current`.

A release is written under a hidden partial name, verified against the approved
digest and renamed into place, so a release directory either holds exactly what
was approved or does not exist. `current` is a relative symlink replaced by
rename (atomic); the directory is fsynced after every rename that matters, so the
switch the journal recorded is the switch that survives a crash. A release is
removed by renaming it out of `releases/` first: a crash mid-removal never leaves
a half-deleted release under its own name.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from opsgate.config import DEPLOY_NAME
from opsgate.errors import DeployError, OperationError
from opsgate.operations.artifacts import Kind, Opened, copy_tree, remove_tree, tree_digest

_log = logging.getLogger(__name__)

_PARTIAL = ".partial-"
_PRUNED = ".pruned-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Releases:
    """The release tree of one deploy root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def app_dir(self, env: str, app: str) -> Path:
        return self.root / env / app

    def path(self, env: str, app: str, version: str) -> Path:
        return self.app_dir(env, app) / "releases" / version

    def current(self, env: str, app: str) -> str | None:
        """The version `current` points at; None when there is none yet.

        Anything but a link to `releases/<version>` is refused: the gate never
        switches away from (and so never loses) something it did not put there.
        """
        link = self.app_dir(env, app) / "current"
        if not os.path.lexists(link):
            return None
        try:
            target = os.readlink(link)
        except OSError:
            target = ""
        head, _, version = target.partition("/")
        if head != "releases" or not DEPLOY_NAME.match(version):
            raise OperationError(
                f"{env}/{app}/current is not a link to a release; fix it by hand first",
                code="deploy_state_invalid",
            )
        return version

    def exists(self, env: str, app: str, version: str) -> bool:
        return os.path.lexists(self.path(env, app, version))

    def digest(self, env: str, app: str, version: str, kind: Kind) -> str | None:
        """The digest of a release as it is on disk now; None if it cannot be read as one."""
        path = self.path(env, app, version)
        if os.path.islink(path) or not path.is_dir():
            return None
        try:
            return tree_digest(path, kind)
        except (OperationError, OSError):
            return None

    def write(
        self,
        opened: Opened,
        env: str,
        app: str,
        version: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> tuple[Path, str, str]:
        """Copy the artifact to a partial directory: (its path, digest copied, digest read back)."""
        releases = self.app_dir(env, app) / "releases"
        releases.mkdir(parents=True, exist_ok=True)
        partial = releases / f"{_PARTIAL}{version}.{secrets.token_hex(4)}"
        try:
            copied = copy_tree(opened, partial, on_bytes=on_bytes)
            written = tree_digest(partial, opened.kind)
        except BaseException:
            remove_tree(partial)
            raise
        return partial, copied, written

    def place(self, partial: Path, env: str, app: str, version: str) -> None:
        """Move a verified partial release to its name (fails if the name is taken)."""
        target = self.path(env, app, version)
        if os.path.lexists(target):  # rename() would replace an empty directory
            raise DeployError(
                f"release {version!r} appeared while it was being copied", code="release_conflict"
            )
        os.rename(partial, target)
        _fsync_dir(target.parent)

    def switch(self, env: str, app: str, version: str | None) -> None:
        """Point `current` at `version` (None: remove it) atomically, durably."""
        app_dir = self.app_dir(env, app)
        link = app_dir / "current"
        if version is None:
            if os.path.lexists(link):
                os.unlink(link)
                _fsync_dir(app_dir)
            return
        tmp = app_dir / f".current.{secrets.token_hex(4)}"
        tmp.symlink_to(Path("releases") / version)
        try:
            os.replace(tmp, link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(app_dir)

    def remove(self, env: str, app: str, version: str) -> None:
        """Delete a release: renamed out of `releases/` first, then removed."""
        path = self.path(env, app, version)
        if not os.path.lexists(path):
            return
        trash = path.parent / f"{_PRUNED}{version}.{secrets.token_hex(4)}"
        os.rename(path, trash)
        _fsync_dir(path.parent)
        try:
            remove_tree(trash)
        except OSError as exc:  # out of `releases/` already: `clean` retries the trash
            _log.warning("could not remove %s: %s", trash, exc)

    def clean(self, env: str, app: str) -> list[str]:
        """Remove what an interrupted run left: partial copies and half-removed releases."""
        releases = self.app_dir(env, app) / "releases"
        if not releases.is_dir():
            return []
        removed = []
        for entry in sorted(releases.iterdir()):
            if entry.name.startswith((_PARTIAL, _PRUNED)):
                try:
                    remove_tree(entry)
                except OSError as exc:  # leftovers never stop a deploy or the gate's start
                    _log.warning("could not remove %s: %s", entry, exc)
                    continue
                removed.append(entry.name)
        for entry in self.app_dir(env, app).iterdir():
            if entry.name.startswith(".current.") and entry.is_symlink():
                entry.unlink()
        return removed


__all__ = ["Releases"]
