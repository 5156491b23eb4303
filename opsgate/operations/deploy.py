"""Local deploy executor: releases under `<root>/<env>/<app>/releases/<version>/`.

The artifact is a path the agent names; it is read only from the configured
artifact roots (see `opsgate.operations.artifacts`), never through a link, and
never from the gate's state dir. `plan()` reads nothing but the artifact, to hash
it (what would be deployed is part of the plan digest, so an approval covers
exactly that tree). `run()` copies the artifact into a new release directory,
hashing what it copies, re-hashes the release it wrote, and switches the
`current` symlink atomically (symlink to a temporary name, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field

from opsgate.errors import ConfigError, OperationError
from opsgate.operations.artifacts import (
    ArtifactRoots,
    artifact_digest,
    copy_tree,
    overlaps,
    remove_tree,
    tree_digest,
)
from opsgate.operations.base import Operation, OperationParams, Outcome, Plan


class DeployParams(OperationParams):
    """`version` names the release; `artifact` is an absolute path under an artifact root."""

    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    artifact: str = Field(min_length=1, max_length=4096)


class LocalDeployExecutor:
    """Deploys `deploy:<env>/<app>` operations with params {version, artifact}.

    `artifact_roots` are the only directories an artifact may come from; there is
    no default, and a root may not overlap the deploy root (or, once registered,
    the gate's state dir).
    """

    params_model: ClassVar[type[BaseModel]] = DeployParams

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        artifact_roots: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.artifact_roots = ArtifactRoots(artifact_roots)
        self.artifact_roots.forbid(self.root, "the deploy root")

    def forbid_paths(self, paths: Iterable[Path]) -> None:
        """Refuse to work next to the gate's own files (its state dir)."""
        for path in paths:
            self.artifact_roots.forbid(path, "the gate's state dir")
            if overlaps(self.root, path):
                raise ConfigError(
                    "the deploy root overlaps the gate's state dir; keep them apart",
                    code="config_invalid",
                )

    def plan(self, operation: Operation) -> Plan:
        parts = operation.resource.split("/")
        if len(parts) != 2:
            raise OperationError(
                f"deploy resource must be '<env>/<app>', got {operation.resource!r}",
                code="operation_invalid",
            )
        env, app = parts
        params = DeployParams.model_validate(operation.params)
        with self.artifact_roots.open(params.artifact) as opened:
            digest = artifact_digest(opened)
            kind = opened.kind
        release = self.root / env / app / "releases" / params.version
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment=env,
            destructive=False,
            summary=f"deploy {app} {params.version} to {env}",
            steps=(
                f"copy artifact to {release}",
                f"switch {env}/{app}/current -> {params.version}",
            ),
            content={
                "version": params.version,
                "artifact_digest": digest,
                "artifact_kind": kind,
                "app": app,
            },
        )

    def run(self, plan: Plan) -> Outcome:
        env = plan.environment or ""
        app, version = plan.content["app"], plan.content["version"]
        expected, kind = plan.content["artifact_digest"], plan.content["artifact_kind"]
        params = DeployParams.model_validate(plan.operation.params)
        app_dir = self.root / env / app
        release = app_dir / "releases" / version
        release.parent.mkdir(parents=True, exist_ok=True)
        if release.exists():
            # The version was deployed before: only the very tree that was approved.
            if tree_digest(release, kind) != expected:
                return Outcome(
                    "failed",
                    f"release {version} exists with other content",
                    failure_kind="deployment",
                )
        else:
            staging = release.with_name(f".{version}.partial")
            remove_tree(staging)
            try:
                with self.artifact_roots.open(params.artifact) as opened:
                    copied = copy_tree(opened, staging)
                # What was copied is what was approved, and it landed as it was read.
                if copied != expected or tree_digest(staging, kind) != expected:
                    remove_tree(staging)
                    return Outcome(
                        "failed", "artifact changed after planning", failure_kind="deployment"
                    )
            except BaseException:
                remove_tree(staging)
                raise
            os.replace(staging, release)
        link_tmp = app_dir / ".current.tmp"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(Path("releases") / version)
        os.replace(link_tmp, app_dir / "current")
        return Outcome(
            "succeeded",
            f"{app} {version} is live in {env}",
            {"release": str(release), "artifact_digest": expected},
        )
