"""Local deploy executor: releases under `<root>/<env>/<app>/releases/<version>/`.

`plan()` is pure apart from hashing the artifact (what would be deployed is part
of the plan digest, so an approval covers exactly those bytes). `run()` copies
the artifact into a new release directory and switches the `current` symlink
atomically (symlink to a temporary name, then rename over `current`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

from opsgate.errors import OperationError
from opsgate.operations.base import Operation, Outcome, Plan

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def _plain(path: Path) -> str:
    """'file' or 'dir'; anything else (a symlink, a device, a fifo) is refused, so the
    digest covers exactly what is copied and reading it cannot hang."""
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    raise OperationError(
        "the artifact may hold only regular files and directories (no symlinks)",
        code="operation_invalid",
    )


def artifact_digest(path: Path) -> str:
    """SHA-256 over every file's relative path and content: what an approval binds."""
    h = hashlib.sha256()
    try:
        if _plain(path) == "dir":
            for f in sorted(path.rglob("*")):
                if _plain(f) == "file":
                    h.update(str(f.relative_to(path)).encode() + b"\0")
                    h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(path.read_bytes())
    except OSError as exc:
        raise OperationError(
            f"the artifact cannot be read: {exc.strerror or exc.__class__.__name__}",
            code="operation_invalid",
        ) from exc
    return "sha256:" + h.hexdigest()


class LocalDeployExecutor:
    """Deploys `deploy:<env>/<app>` operations with params {version, artifact}."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def plan(self, operation: Operation) -> Plan:
        parts = operation.resource.split("/")
        if len(parts) != 2:
            raise OperationError(
                f"deploy resource must be '<env>/<app>', got {operation.resource!r}",
                code="operation_invalid",
            )
        env, app = parts
        version = operation.params.get("version")
        if not isinstance(version, str) or not _VERSION.match(version):
            raise OperationError("deploy needs a 'version' like '2.0'", code="operation_invalid")
        artifact = operation.params.get("artifact")
        if not isinstance(artifact, str) or not Path(artifact).exists():
            raise OperationError(
                "deploy needs an existing 'artifact' path", code="operation_invalid"
            )
        digest = artifact_digest(Path(artifact))
        release = self.root / env / app / "releases" / version
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment=env,
            destructive=False,
            summary=f"deploy {app} {version} to {env}",
            steps=(f"copy artifact to {release}", f"switch {env}/{app}/current -> {version}"),
            content={"version": version, "artifact_digest": digest, "app": app},
        )

    def run(self, plan: Plan) -> Outcome:
        env = plan.environment or ""
        app, version = plan.content["app"], plan.content["version"]
        source = Path(plan.operation.params["artifact"])
        if artifact_digest(source) != plan.content["artifact_digest"]:
            return Outcome("failed", "artifact changed after planning", failure_kind="deployment")
        app_dir = self.root / env / app
        release = app_dir / "releases" / version
        release.parent.mkdir(parents=True, exist_ok=True)
        if not release.exists():
            staging = release.with_name(f".{version}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            if source.is_dir():
                shutil.copytree(source, staging, symlinks=True)
                copied = artifact_digest(staging)
            else:
                staging.mkdir()
                shutil.copy2(source, staging / source.name)
                copied = artifact_digest(staging / source.name)
            if copied != plan.content["artifact_digest"]:  # changed while being copied
                shutil.rmtree(staging, ignore_errors=True)
                return Outcome(
                    "failed", "artifact changed after planning", failure_kind="deployment"
                )
            os.replace(staging, release)
        link_tmp = app_dir / ".current.tmp"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(Path("releases") / version)
        os.replace(link_tmp, app_dir / "current")
        return Outcome(
            "succeeded",
            f"{app} {version} is live in {env}",
            {"release": str(release), "artifact_digest": plan.content["artifact_digest"]},
        )
