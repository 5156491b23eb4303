"""The deploy executor: `deploy:<env>/<app>` and `rollback:<env>/<app>` through the gate.

Each environment has a backend. `local` (any environment without a command):
releases under `<root>/<env>/<app>/releases/<version>/`, `current` a symlink
switched atomically. `command`: the environment's configured command (helm,
kubectl, ...) run with a minimal environment. Both share what makes a deploy safe:

- a version names one artifact digest forever (per environment and app): a
  release never changes content, and a second deploy of a version with another
  artifact is refused (`release_conflict`);
- a promoted environment (production) takes only a version and artifact digest
  that succeeded in the environment before it (staging), by the gate's own
  records (`staging_required`), checked when planning, before anything happens;
- one deploy or rollback per app at a time (`deploy_locked`, naming the holder);
- a journal row, committed before anything is switched, from which the next start
  (or the next deploy of the app) repairs a run that was killed;
- a health gate after the switch (config only, never params); a release that does
  not pass is switched back and the deploy fails (a trust penalty);
- the last N releases kept, never the current or the previous one.

The artifact is read only from the configured artifact roots (see
`opsgate.operations.artifacts`). `plan()` reads the artifact (to hash it: an
approval binds that digest) and the gate's deploy records; `run()` does the rest.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from opsgate.config import DEPLOY_NAME, AppDeploy, CommandBackend, DeployConfig, HealthCheck
from opsgate.errors import (
    ConfigError,
    DeployContended,
    DeployError,
    DeployLockLost,
    OperationError,
    OpsgateError,
    RunRefused,
    SecretError,
    safe_text,
    scrub,
    secret_shaped,
)
from opsgate.operations.artifacts import (
    ArtifactRoots,
    Kind,
    artifact_digest,
    copy_tree,
    overlaps,
    remove_tree,
)
from opsgate.operations.base import Operation, OperationParams, Outcome, Plan, RunContext
from opsgate.operations.deploy import command as cmd
from opsgate.operations.deploy.child import run_child
from opsgate.operations.deploy.health import (
    NOT_CONFIGURED,
    HealthReport,
    ProbeResult,
    describe,
    probe_for,
    run_health_gate,
)
from opsgate.operations.deploy.local import Releases
from opsgate.operations.deploy.progress import DeployProgress, ProgressHook, SafeHook, Step
from opsgate.store import Store
from opsgate.store.deployments import DeployLedger, DeploymentRecord, LockRecord, ReleaseRecord
from opsgate.store.processes import host_name, process_start

_log = logging.getLogger(__name__)

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: The PATH of a health command on the local backend.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: How many repaired journal rows one recovery reports in an audit event.
_RECOVERY_REPORT_MAX = 50
#: At most this many releases in an app's status (a command backend never prunes).
STATUS_RELEASES = 1000


def _printable(value: str | None) -> str | None:
    """A message as kept: one printable line, secret-shaped text cut out (it is stored
    in the deploy tables and shown to every agent that may read the app's monitoring)."""
    if value is not None and not value.isprintable():
        raise ValueError("must be printable text on one line")
    return None if value is None else scrub(value)


def _release_name(value: str) -> str:
    """A release name never has the shape of a secret: it is printed, listed and kept
    in the audit (which would hide it, and with it which release ran)."""
    if secret_shaped(value):
        raise ValueError("has the shape of a secret (a token or a credential)")
    return value


class DeployParams(OperationParams):
    """`version` names the release; `artifact` is an absolute path under an artifact root
    (required by the local backend); `secrets` are secret paths a command backend's
    child gets as `OPSGATE_SECRET_<PATH>` (each needs `read:secrets/<path>`);
    `message` says why, shown with the deploy lock and in the history."""

    version: str = Field(pattern=_NAME)
    artifact: str | None = Field(default=None, min_length=1, max_length=4096)
    secrets: list[str] = Field(default_factory=list, max_length=32)
    message: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("message")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return _printable(value)

    @field_validator("version")
    @classmethod
    def _not_secret(cls, value: str) -> str:
        return _release_name(value)


class RollbackParams(OperationParams):
    """`to` names a release kept on disk; without it, the one live before the current."""

    to: str | None = Field(default=None, pattern=_NAME)
    message: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("message")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return _printable(value)

    @field_validator("to")
    @classmethod
    def _not_secret(cls, value: str | None) -> str | None:
        return None if value is None else _release_name(value)


@dataclass(frozen=True, slots=True)
class DeployStatus:
    """What is live for an app in an environment, who holds its lock, what ran last."""

    env: str
    app: str
    backend: Literal["local", "command"]
    current: str | None
    digest: str | None
    lock: LockRecord | None
    lock_stale: bool
    last: DeploymentRecord | None
    releases: tuple[str, ...]  # the newest STATUS_RELEASES kept
    unfinished: tuple[DeploymentRecord, ...]
    release_count: int = 0  # every release kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "app": self.app,
            "backend": self.backend,
            "current": self.current,
            "digest": self.digest,
            "lock": None
            if self.lock is None
            else {**self.lock.to_dict(), "stale": self.lock_stale},
            "last": None if self.last is None else self.last.to_dict(),
            "releases": list(self.releases),
            "release_count": self.release_count,
            "unfinished": [r.to_dict() for r in self.unfinished],
        }


@dataclass(slots=True)
class _Run:
    """One deploy or rollback in progress, under its app's lock."""

    env: str
    app: str
    version: str
    capability: str
    lock_token: str
    previous: str | None
    hook: SafeHook
    deployment_id: int = 0
    switched: bool = False  # the journal says a switch may have happened
    recovered: list[dict[str, Any]] = field(default_factory=list)
    lease: _Lease | None = None

    def progress(
        self, step: Step, message: str, done: float | None = None, total: float | None = None
    ) -> None:
        self.hook(DeployProgress(self.capability, step, message, done, total))

    def end_lease(self) -> None:
        if self.lease is not None:
            self.lease.stop()


class _Lease:
    """Keeps a run's lock: renews its expiry every third of `lock_expiry_seconds` while
    the run goes on. Another host takes the app over only from a holder that stopped
    renewing (killed, or stalled a whole expiry), never from a long deploy; a run whose
    lock was taken over is stopped by the fence of its next step (`_phase`)."""

    def __init__(self, ledger: DeployLedger, run: _Run, seconds: float, clock: Callable[[], float]):
        self._ledger, self._seconds, self._clock = ledger, seconds, clock
        self._where = (run.env, run.app, run.lock_token)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="opsgate-deploy-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        env, app, token = self._where
        while not self._stop.wait(max(self._seconds / 3, 0.05)):
            try:
                if not self._ledger.renew_lock(env, app, token, self._clock() + self._seconds):
                    return  # taken over: the run's next step is refused
            except Exception as exc:  # noqa: BLE001 - tried again at the next beat
                _log.warning("could not renew the deploy lock of %s/%s: %s", env, app, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "deploy"
    return ConfigError(
        f"invalid deploy configuration at {where!r}: {first['msg'].lower()}",
        code="config_invalid",
    )


class DeployExecutor:
    """Plans and runs `deploy:<env>/<app>`; `.rollback` is its `rollback` executor.

    Register both with the gate (`Gate.open` does, from `deploy:` in opsgate.yaml);
    registration gives them the gate's database (`attach_store`) and repairs any
    deploy a killed process left unfinished (`recover`).
    """

    params_model: ClassVar[type[BaseModel]] = DeployParams

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        artifact_roots: Iterable[str | os.PathLike[str]] = (),
        keep_releases: int = 5,
        promotions: Mapping[str, str] | None = None,
        commands: Mapping[str, CommandBackend | Mapping[str, Any]] | None = None,
        apps: Mapping[str, AppDeploy | Mapping[str, Any]] | None = None,
        lock_expiry_seconds: float = 120.0,
        secrets: cmd.SecretSource | None = None,
        progress: ProgressHook | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.root = None if root is None else Path(os.path.abspath(os.fspath(root)))
        roots: tuple[str, ...] = ()
        self.artifact_roots: ArtifactRoots | None = None
        if self.root is not None or artifact_roots:
            if artifact_roots is None or isinstance(artifact_roots, (str, bytes, os.PathLike)):
                ArtifactRoots(artifact_roots)  # raises: a list is required
            listed = tuple(artifact_roots)
            # Checked first and on its own: the roots' rules have their own messages.
            self.artifact_roots = ArtifactRoots(listed)
            roots = tuple(os.fspath(r) for r in listed)
        try:
            self.config = DeployConfig.model_validate(
                {
                    "root": None if self.root is None else str(self.root),
                    "artifact_roots": roots,
                    "keep_releases": keep_releases,
                    "promotions": {"production": "staging"} if promotions is None else promotions,
                    "commands": dict(commands or {}),
                    "apps": dict(apps or {}),
                    "lock_expiry_seconds": lock_expiry_seconds,
                }
            )
        except ValidationError as exc:
            raise _config_error(exc) from None
        if not self.config.enabled:
            raise ConfigError(
                "a deploy executor needs a root (local backend) or a command environment",
                code="config_invalid",
            )
        if self.artifact_roots is not None and self.root is not None:
            self.artifact_roots.forbid(self.root, "the deploy root")
        self.releases = None if self.root is None else Releases(self.root)
        self.secrets = secrets
        self.progress = progress
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep
        self._ledger: DeployLedger | None = None
        self.rollback = RollbackExecutor(self)

    @classmethod
    def from_config(
        cls, config: DeployConfig, *, secrets: cmd.SecretSource | None = None
    ) -> DeployExecutor:
        return cls(
            config.root,
            artifact_roots=config.artifact_roots,
            keep_releases=config.keep_releases,
            promotions=config.promotions,
            commands=config.commands,
            apps=config.apps,
            lock_expiry_seconds=config.lock_expiry_seconds,
            secrets=secrets,
        )

    # -- wiring ----------------------------------------------------------------------------

    def forbid_paths(self, paths: Iterable[Path]) -> None:
        """Refuse to work next to the gate's own files (its state dir)."""
        for path in paths:
            if self.artifact_roots is not None:
                self.artifact_roots.forbid(path, "the gate's state dir")
            if self.root is not None and overlaps(self.root, path):
                raise ConfigError(
                    "the deploy root overlaps the gate's state dir; keep them apart",
                    code="config_invalid",
                )

    def attach_store(self, store: Store) -> None:
        """Keep deploy records in the gate's database (called at registration)."""
        if self._ledger is not None and self._ledger.store is not store:
            raise ConfigError(
                "this deploy executor is registered with another gate", code="config_invalid"
            )
        self._ledger = DeployLedger(store)

    @property
    def ledger(self) -> DeployLedger:
        if self._ledger is None:
            raise ConfigError(
                "the deploy executor keeps its records in the gate's database: register it "
                "with gate.register_executor first",
                code="config_invalid",
            )
        return self._ledger

    # -- names and settings ------------------------------------------------------------------

    def target(self, resource: str) -> tuple[str, str]:
        """`<env>/<app>`, each one plain name (never `.`, `..` or an option)."""
        parts = resource.split("/")
        if len(parts) != 2 or not all(DEPLOY_NAME.match(p) for p in parts):
            raise OperationError(
                f"deploy resource must be '<env>/<app>', got {safe_text(resource)!r}",
                code="operation_invalid",
            )
        return parts[0], parts[1]

    def backend(self, env: str) -> CommandBackend | None:
        """The environment's command backend; None for the local backend."""
        backend = self.config.commands.get(env)
        if backend is None and self.root is None:
            raise DeployError(
                f"environment {env!r} has no deploy backend configured", code="deploy_env_unknown"
            )
        return backend

    def app_settings(self, app: str) -> AppDeploy:
        return self.config.apps.get(app) or AppDeploy()

    def health_check(self, env: str, app: str) -> HealthCheck | None:
        return self.app_settings(app).health.get(env)

    def staging_for(self, env: str, app: str) -> str | None:
        """The environment whose success must come first, if the rule applies to `app`."""
        before = self.config.promotions.get(env)
        if before is None or not self.app_settings(app).require_staging:
            return None
        return before

    def _keep(self, app: str) -> int:
        return self.app_settings(app).keep_releases or self.config.keep_releases

    def _roots(self) -> ArtifactRoots:
        if self.artifact_roots is None:
            from opsgate.operations.artifacts import REFUSED

            raise OperationError(REFUSED, code="artifact_refused")
        return self.artifact_roots

    # -- plan --------------------------------------------------------------------------------

    def plan(self, operation: Operation) -> Plan:
        env, app = self.target(operation.resource)
        params = DeployParams.model_validate(operation.params)
        backend = self.backend(env)
        version = params.version
        digest: str | None = None
        kind: Kind | None = None
        size = 0
        if params.artifact is not None:
            if backend is not None:
                cmd.check_value("artifact", params.artifact)
            counted = [0]

            def count(n: int) -> None:
                counted[0] += n

            with self._roots().open(params.artifact) as opened:
                digest = artifact_digest(opened, on_bytes=count)
                kind = opened.kind
            size = counted[0]
        elif backend is None:
            raise OperationError(
                "param 'artifact' of 'deploy' is required by the local backend",
                code="params_invalid",
            )
        if backend is None and params.secrets:
            raise OperationError(
                "param 'secrets' of 'deploy' is only for environments with a command backend",
                code="params_invalid",
            )
        if (
            backend is not None
            and params.artifact is None
            and cmd.template_uses(backend.command, "artifact")
        ):
            raise OperationError(
                f"param 'artifact' of 'deploy' is required: the {env} command uses {{artifact}}",
                code="params_invalid",
            )
        self._check_release(env, app, version, digest, kind, backend)
        before = self.staging_for(env, app)
        # The release's latest run there must have passed: an older pass does not
        # outweigh a later failure of the very same artifact.
        last = None if before is None else self.ledger.verdict(before, app, version, digest)
        # A later rollback away from it there counts as a failure of that release.
        away = (
            None
            if before is None or last is None or last.status != "succeeded"
            else self.ledger.rolled_back_from(before, app, version, last.id)
        )
        if before is not None and (last is None or last.status != "succeeded" or away):
            what = "without an artifact" if digest is None else f"with artifact {digest}"
            if last is None:
                why = f"has no successful {before} deploy"
            elif away is not None:
                why = f"was rolled back away from in {before} after it passed"
            else:
                why = f"has failed its latest {before} deploy"
            raise DeployError(
                f"{app} {version} {what} {why}; deploy it to {before} first",
                code="staging_required",
            )
        check = self.health_check(env, app)
        content: dict[str, Any] = {
            "app": app,
            "version": version,
            "backend": "local" if backend is None else "command",
            "artifact_digest": digest,
            "artifact_kind": kind,
            "artifact_bytes": size if digest is not None else None,
            "staged_in": before,
            "health": None if check is None else check.model_dump(mode="json"),
            "message": params.message,
        }
        requires: tuple[str, ...] = ()
        if backend is None:
            assert self.releases is not None
            release = self.releases.path(env, app, version)
            steps = [f"copy artifact to {release}", f"switch {env}/{app}/current -> {version}"]
            steps.append(f"keep the last {self._keep(app)} releases")
        else:
            variables = cmd.requested_secrets(backend, params.secrets)
            values = self._values(backend, env, app, version, params.artifact)
            argv = cmd.render(backend.command, values)
            content["command"] = argv
            content["secrets"] = {name: variables[name] for name in sorted(variables)}
            requires = tuple(sorted({f"read:secrets/{p}" for p in variables.values()}))
            steps = [f"run {' '.join(argv)}"]
            if variables:
                steps.append(f"with secrets {', '.join(sorted(variables))} in its environment")
        if check is not None:
            steps.append(describe(check))
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment=env,
            destructive=False,
            summary=f"deploy {app} {version} to {env}",
            steps=tuple(steps),
            content=content,
            requires=requires,
        )

    def _values(
        self,
        backend: CommandBackend,
        env: str,
        app: str,
        version: str,
        artifact: str | None,
    ) -> dict[str, str]:
        values = {
            "app": cmd.check_value("app", app),
            "env": cmd.check_value("env", env),
            "version": cmd.check_value("version", version),
            **backend.vars,
        }
        if artifact is not None:
            values["artifact"] = cmd.check_value("artifact", artifact)
        return values

    def _check_release(
        self,
        env: str,
        app: str,
        version: str,
        digest: str | None,
        kind: Kind | None,
        backend: CommandBackend | None,
    ) -> None:
        """A version that exists (by the records, or on disk) must be this very artifact."""
        record = self.ledger.release(env, app, version)
        if record is not None and record.digest != digest:
            raise DeployError(
                f"release {version} of {env}/{app} exists with another artifact "
                f"({record.digest or 'none'}); a version never changes content: use a new version",
                code="release_conflict",
            )
        if backend is None and self.releases is not None:
            assert kind is not None
            if self.releases.exists(env, app, version) and (
                self.releases.digest(env, app, version, kind) != digest
            ):
                raise DeployError(
                    f"release {version} of {env}/{app} exists on disk with other content; "
                    "a version never changes content: use a new version",
                    code="release_conflict",
                )

    # -- run ---------------------------------------------------------------------------------

    def run(self, plan: Plan) -> Outcome:
        return self.run_with_context(plan, RunContext("", "unknown agent"))

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        env, app = self.target(plan.operation.resource)
        content = plan.content
        backend = self.backend(env)
        # Secrets first: one that cannot be read refuses the run before it starts.
        revealed = self._reveal(dict(content.get("secrets") or {}))
        try:
            run = self._begin(plan, context, env, app, str(content["version"]), backend, "deploy")
            try:
                if backend is None:
                    outcome = self._deploy_local(run, plan, context)
                else:
                    outcome = self._deploy_command(run, plan, context, backend, revealed)
            except BaseException as exc:
                self._abort(run, backend, exc)
                raise
            finally:
                run.end_lease()
        finally:
            revealed.clear()
        return _with_recovered(outcome, run)

    def _begin(
        self,
        plan: Plan,
        context: RunContext,
        env: str,
        app: str,
        version: str,
        backend: CommandBackend | None,
        kind: Literal["deploy", "rollback"],
    ) -> _Run:
        """Take the app's lock, repair what a dead run left, re-check, open the journal."""
        ledger = self.ledger
        now = self._clock()
        content = plan.content
        token = secrets.token_hex(16)
        pid = os.getpid()
        taken = ledger.take_lock(
            LockRecord(
                env=env,
                app=app,
                token=token,
                holder_did=context.agent_did or "unknown",
                holder_name=safe_text(context.agent_name),
                capability=plan.capability,
                message=content.get("message"),
                deployment_id=None,
                host=host_name(),
                pid=pid,
                process_start=process_start(pid),
                started_at=now,
                expires_at=now + self.config.lock_expiry_seconds,
            ),
            now,
        )
        if not taken.acquired:
            holder = taken.holder
            who = "another run" if holder is None else holder.describe()
            raise RunRefused(
                f"{env}/{app} is being deployed by {who}; try again when it has finished",
                code="deploy_locked",
                holder=None if holder is None else holder.to_dict(now),
            )
        run = _Run(env, app, version, plan.capability, token, None, SafeHook(self.progress))
        try:
            run.lease = _Lease(ledger, run, self.config.lock_expiry_seconds, self._clock)
            run.recovered = self._repair_app(env, app, taken.replaced)
            digest = content.get("artifact_digest")
            if kind == "deploy":
                record = ledger.release(env, app, version)
                if record is not None and record.digest != digest:
                    raise DeployContended(
                        f"release {version} of {env}/{app} was deployed with another artifact "
                        "meanwhile",
                        code="release_conflict",
                    )
            if backend is None:
                assert self.releases is not None
                run.previous = self.releases.current(env, app)
            else:
                live = ledger.live(env, app)
                run.previous = None if live is None else live.version
            if kind == "rollback" and run.previous != content.get("from"):
                raise RunRefused(
                    f"{env}/{app} is at {run.previous or 'no release'} now, not "
                    f"{content.get('from') or 'no release'} as planned: plan the rollback again",
                    code="deploy_state_changed",
                )
            run.deployment_id = ledger.start(
                env=env,
                app=app,
                version=version,
                kind=kind,
                backend="local" if backend is None else "command",
                digest=digest,
                previous_version=run.previous,
                agent_did=context.agent_did or "unknown",
                agent_name=safe_text(context.agent_name),
                capability=plan.capability,
                approval_id=context.approval_id,
                message=content.get("message"),
                lock_token=token,
                pid=pid,
                now=now,
            )
        except BaseException:
            run.end_lease()
            ledger.drop_lock(env, app, token)
            raise
        return run

    def _phase(self, run: _Run, phase: str) -> None:
        """Journal the run's next step, fenced: only while its lock is still its own
        (the lease renewed in the same transaction, so the step has a whole lease)."""
        self.ledger.set_phase(
            run.deployment_id,
            phase,
            lock=(run.env, run.app, run.lock_token),
            lease_until=self._clock() + self.config.lock_expiry_seconds,
        )

    def _finish(
        self,
        run: _Run,
        status: Literal["succeeded", "failed", "interrupted"],
        summary: str,
        health: HealthReport | None,
        *,
        keep_lock: bool = False,
        fenced: bool = False,
    ) -> None:
        """Record the outcome (once: a finished row is never rewritten) and free the lock,
        unless `keep_lock` (cleanup still to do under it; `_release` frees it). `fenced`:
        only while the run still holds its lock (DeployLockLost otherwise)."""
        now = self._clock()
        self.ledger.finish(
            run.deployment_id,
            status=status,
            summary=summary,
            health=None if health is None else health.status,
            now=now,
            lock_token=None if keep_lock else run.lock_token,
            fence=(run.env, run.app, run.lock_token) if fenced else None,
            lease_until=now + self.config.lock_expiry_seconds if fenced else None,
        )

    def _release(self, run: _Run) -> None:
        self.ledger.drop_lock(run.env, run.app, run.lock_token)

    def _abort(self, run: _Run, backend: CommandBackend | None, exc: BaseException) -> None:
        """A run that raised: put back what was live, close the journal, free the lock."""
        interrupted = not isinstance(exc, Exception)
        why = exc.__class__.__name__ if not isinstance(exc, OpsgateError) else exc.code
        summary = f"{'interrupted' if interrupted else 'failed'} ({why})"
        try:
            if isinstance(exc, DeployLockLost):
                # The app is another run's now (its recovery repairs this one): touch nothing.
                summary += "; left to the lock's new holder"
            elif run.switched and backend is None:
                try:
                    summary += "; " + self._restore(run, backend)
                except DeployLockLost:
                    summary += "; not restored: the lock was taken over meanwhile"
            elif run.switched:  # a command was running: it may or may not have finished
                summary += "; the command's result is unknown, check the environment"
        finally:
            self._finish(run, "interrupted" if interrupted else "failed", summary, None)

    def _restore(self, run: _Run, backend: CommandBackend | None) -> str:
        """Switch back to the release that was live before this run (local), or run the
        configured rollback command to it (command). Says what it did."""
        run.progress("restore", f"restoring {run.previous or 'no release'}")
        self._phase(run, "restoring")
        if backend is None:
            assert self.releases is not None
            self.releases.switch(run.env, run.app, run.previous)
            return f"restored {run.previous}" if run.previous else "removed current (none before)"
        if backend.rollback is None:
            return "not restored: no rollback command is configured"
        if run.previous is None:
            return "not restored: no earlier version is recorded"
        values = {
            **backend.vars,
            "app": run.app,
            "env": run.env,
            "version": run.previous,
        }
        argv = cmd.render(backend.rollback, values)
        env = cmd.child_environment(
            backend, app=run.app, env=run.env, version=run.previous, token=None, secrets={}
        )
        with _private_workdir("opsgate-restore-") as workdir:
            result = run_child(
                argv,
                env=env,
                cwd=backend.cwd or str(workdir),
                timeout=backend.timeout_seconds,
                tail_bytes=0,
            )
        if result.ok:
            return f"restored {run.previous} with the rollback command"
        ended = _ended(result.exit_code, result.timed_out, result.error)
        return f"NOT restored: the rollback command {ended}"

    def _health(
        self, run: _Run, check: HealthCheck | None, release_dir: Path | None, path: str
    ) -> HealthReport:
        if check is None:
            return NOT_CONFIGURED
        self._phase(run, "health")
        probe_env = {
            "PATH": path,
            "OPSGATE_DEPLOY_APP": run.app,
            "OPSGATE_DEPLOY_ENV": run.env,
            "OPSGATE_DEPLOY_VERSION": run.version,
        }
        if release_dir is not None:
            probe_env["OPSGATE_RELEASE_DIR"] = str(release_dir)
        deadline = check.deadline_seconds
        run.progress("health", "health check", 0.0, deadline)

        def seen(n: int, result: ProbeResult, elapsed: float) -> None:
            what = f"probe {n}: {result.status} ({result.detail})"
            run.progress("health", what, elapsed, deadline)

        return run_health_gate(
            check,
            probe_for(check, probe_env),
            clock=self._monotonic,
            sleep=self._sleep,
            on_probe=seen,
        )

    def _deploy_local(self, run: _Run, plan: Plan, context: RunContext) -> Outcome:
        assert self.releases is not None
        content = plan.content
        env, app, version = run.env, run.app, run.version
        expected, kind = content["artifact_digest"], content["artifact_kind"]
        params = DeployParams.model_validate(plan.operation.params)
        release = self.releases.path(env, app, version)
        ledger = self.ledger
        if self.releases.exists(env, app, version):
            if self.releases.digest(env, app, version, kind) != expected:
                self._finish(run, "failed", f"release {version} exists with other content", None)
                return Outcome(
                    "failed",
                    f"release {version} exists with other content",
                    failure_kind="deployment",
                )
            ledger.claim_release(env, app, version, expected, kind, self._clock())
        else:
            self._phase(run, "copy")
            total = content.get("artifact_bytes")
            copied_bytes = [0]

            def on_bytes(n: int) -> None:
                copied_bytes[0] += n
                run.progress("copy", f"copy {version}", copied_bytes[0], total)

            run.progress("copy", f"copy {version}", 0, total)
            assert params.artifact is not None
            with self._roots().open(params.artifact) as opened:
                partial, copied, written = self.releases.write(
                    opened, env, app, version, on_bytes=on_bytes
                )
            # What was copied is what was approved, and it landed as it was read.
            if copied != expected or written != expected:
                remove_tree(partial)
                summary = "artifact changed after planning"
                self._finish(run, "failed", summary, None)
                return Outcome("failed", summary, failure_kind="deployment")
            try:
                conflict = ledger.claim_release(env, app, version, expected, kind, self._clock())
                if conflict is not None:
                    raise DeployError(
                        f"release {version} was recorded with another artifact meanwhile",
                        code="release_conflict",
                    )
                self.releases.place(partial, env, app, version)
            except BaseException:
                remove_tree(partial)
                raise
        return self._switch_and_check(run, None, release, plan)

    def _switch_and_check(
        self, run: _Run, backend: CommandBackend | None, release: Path, plan: Plan
    ) -> Outcome:
        """Journal, switch, health gate; restore on failure; prune on success."""
        assert self.releases is not None
        env, app, version = run.env, run.app, run.version
        self._phase(run, "switching")  # committed before the switch
        run.switched = True
        run.progress("switch", f"switch current -> {version}")
        self.releases.switch(env, app, version)
        report = self._health(run, self.health_check(env, app), release, DEFAULT_PATH)
        if not report.passed:
            restored = self._restore(run, backend)
            run.switched = False
            summary = f"health check {report.status} ({report.detail}); {restored}"
            self._finish(run, "failed", summary, report)
            run.progress("done", summary)
            return Outcome(
                "failed",
                f"{app} {version} in {env}: {summary}",
                {
                    "health": report.to_dict(),
                    "release": str(release),
                    "previous": run.previous,
                    "restored": restored,
                },
                failure_kind="deployment",
                audit_fields={"health": report.to_dict(), "restored": run.previous},
            )
        if plan.operation.action == "rollback":
            summary = f"{app} rolled back to {version} in {env}"
        else:
            summary = f"{app} {version} is live in {env}"
        # The outcome is recorded before pruning: a prune that fails never turns a
        # passed run into a failure or a restore. Fenced: a run that stalled past its
        # lease during the health gate lost the app to another run (whose recovery put
        # the earlier release back), so it reports no success and prunes nothing.
        run.switched = False
        self._finish(run, "succeeded", summary, report, keep_lock=True, fenced=True)
        try:
            pruned = self._prune(run)
        finally:
            self._release(run)
        run.progress("done", summary)
        detail = {
            "release": str(release),
            "artifact_digest": plan.content.get("artifact_digest"),
            "previous": run.previous,
            "health": report.to_dict(),
            "pruned": pruned,
        }
        return Outcome(
            "succeeded",
            summary,
            detail,
            audit_fields={"health": report.to_dict(), "previous": run.previous, "pruned": pruned},
        )

    def _prune(self, run: _Run) -> list[str]:
        """Keep the newest N releases, and always the current and the previous one.
        Runs under the app's lock after the outcome is recorded; a failure is logged."""
        assert self.releases is not None
        env, app = run.env, run.app
        keep = self._keep(app)
        protected = {run.version, run.previous}
        # Ranked by their latest successful run (releases that never passed count least):
        # a release that failed its health gate never crowds out a rollback target.
        passed = self.ledger.last_successes(env, app)
        alive = [r for r in self.ledger.releases(env, app) if r.pruned_at is None]
        # (a stable sort: releases that never passed stay most recently deployed first)
        ranked = sorted(alive, key=lambda r: -passed.get(r.version, 0))
        newest = {r.version for r in ranked[:keep]}
        pruned = []
        for rec in alive:
            if rec.version in newest or rec.version in protected:
                continue
            run.progress("prune", f"remove release {rec.version}")
            try:
                self.releases.remove(env, app, rec.version)
            except OSError as exc:  # kept, and tried again after the next run
                _log.warning("could not prune %s/%s %s: %s", env, app, rec.version, exc)
                continue
            self.ledger.mark_pruned(env, app, rec.version, self._clock())
            pruned.append(rec.version)
        self.releases.clean(env, app)  # trash an earlier prune could not remove
        return pruned

    def _deploy_command(
        self,
        run: _Run,
        plan: Plan,
        context: RunContext,
        backend: CommandBackend,
        revealed: Mapping[str, str],
    ) -> Outcome:
        content = plan.content
        env, app, version = run.env, run.app, run.version
        params = DeployParams.model_validate(plan.operation.params)
        expected = content.get("artifact_digest")
        workdir = Path(tempfile.mkdtemp(prefix="opsgate-deploy-"))
        try:
            artifact_path = None
            if params.artifact is not None:
                # The child reads a private copy of exactly the approved bytes, never the
                # path the agent named (which could change after it was hashed).
                self._phase(run, "copy")
                with self._roots().open(params.artifact) as opened:
                    copied = copy_tree(opened, workdir / "artifact")
                    name = opened.name
                if copied != expected:
                    summary = "artifact changed after planning"
                    self._finish(run, "failed", summary, None)
                    return Outcome("failed", summary, failure_kind="deployment")
                where = workdir / "artifact"
                artifact_path = str(where / os.fsdecode(name)) if name else str(where)
            conflict = self.ledger.claim_release(env, app, version, expected, None, self._clock())
            if conflict is not None:
                raise DeployError(
                    f"release {version} was recorded with another artifact meanwhile",
                    code="release_conflict",
                )
            values = self._values(backend, env, app, version, artifact_path)
            argv = cmd.render(backend.command, values)
            child_env = cmd.child_environment(
                backend,
                app=app,
                env=env,
                version=version,
                token=context.credential,
                secrets=revealed,
            )
            hidden = [*revealed.values(), *([context.credential] if context.credential else [])]
            self._phase(run, "command")
            run.switched = True  # from here on, what is live may have changed
            run.progress("command", f"run {argv[0]}", 0.0, backend.timeout_seconds)
            result = run_child(
                argv,
                env=child_env,
                cwd=backend.cwd or str(workdir),
                timeout=backend.timeout_seconds,
                tail_bytes=backend.output_tail_bytes,
                secrets=hidden,
                clock=self._monotonic,
            )
            audit = {
                "exit_code": result.exit_code,
                "timed_out": result.timed_out,
                "seconds": round(result.seconds, 3),
                "output_tail": result.tail,
            }
            if not result.ok:
                run.switched = False  # the command's own failure: nothing for us to switch back
                summary = f"{argv[0]} {_ended(result.exit_code, result.timed_out, result.error)}"
                self._finish(run, "failed", summary, None)
                return Outcome(
                    "failed",
                    f"{app} {version} in {env}: {summary}",
                    {"command": audit},
                    failure_kind="deployment",
                    audit_fields={"command": audit},
                )
            report = self._health(run, self.health_check(env, app), None, backend.path)
            if not report.passed:
                restored = self._restore(run, backend)
                run.switched = False
                summary = f"health check {report.status} ({report.detail}); {restored}"
                self._finish(run, "failed", summary, report)
                return Outcome(
                    "failed",
                    f"{app} {version} in {env}: {summary}",
                    {"command": audit, "health": report.to_dict()},
                    failure_kind="deployment",
                    audit_fields={"command": audit, "health": report.to_dict()},
                )
            summary = f"{app} {version} is live in {env}"
            self._finish(run, "succeeded", summary, report, fenced=True)
            run.progress("done", summary)
            return Outcome(
                "succeeded",
                summary,
                {"command": audit, "health": report.to_dict(), "previous": run.previous},
                audit_fields={"command": audit, "health": report.to_dict()},
            )
        finally:
            try:
                remove_tree(workdir)
            except OSError as exc:  # the outcome stands; only a temporary copy is left
                _log.warning("could not remove %s: %s", workdir, exc)

    def _reveal(self, variables: Mapping[str, str]) -> dict[str, str]:
        """Each requested secret's value (the gate checked the agent may read each)."""
        if not variables:
            return {}
        if self.secrets is None:
            raise RunRefused(
                "this deploy asks for secrets, but no secret store is connected",
                code="secrets_unavailable",
            )
        out = {}
        for name, path in variables.items():
            try:
                value = self.secrets.reveal(path)
            except SecretError as exc:
                raise RunRefused(
                    f"secret {path!r} for {name} could not be read ({exc.code})",
                    code="secrets_unavailable",
                ) from None
            if not isinstance(value, str):
                raise RunRefused(
                    f"secret {path!r} for {name} is not text", code="secrets_unavailable"
                )
            out[name] = value
        return out

    # -- recovery ----------------------------------------------------------------------------

    def _repair_app(
        self, env: str, app: str, replaced: LockRecord | None = None
    ) -> list[dict[str, Any]]:
        """Repair the dead unfinished runs of an app, under its lock: this host's (a
        live run always holds the lock), and, when the caller took over another host's
        expired lock (`replaced`), that host's: their lock is gone, and that host's own
        recovery may never come (a container recreated under another name)."""
        here = host_name()
        runs = self.ledger.running(env, app, here)
        if replaced is not None and replaced.host != here:
            runs += self.ledger.running(env, app, replaced.host)
        return [self._repair(rec) for rec in runs]

    def _repair(self, rec: DeploymentRecord) -> dict[str, Any]:
        env, app = rec.env, rec.app
        touched = rec.phase in ("switching", "health", "restoring", "command")
        if rec.backend == "local" and self.releases is not None:
            self.releases.clean(env, app)
            if touched:
                self.releases.switch(env, app, rec.previous_version)
                what = f"restored {rec.previous_version or 'no release (current removed)'}"
            else:
                what = "nothing had been switched"
        elif touched:
            what = (
                "the command may have run: its result is unknown, check the environment "
                f"(last known good: {rec.previous_version or 'none'})"
            )
        else:
            what = "nothing had run"
        summary = f"interrupted during {rec.phase}; {what}"
        self.ledger.finish(
            rec.id, status="interrupted", summary=summary, health=None, now=self._clock()
        )
        return {
            "capability": rec.capability,
            "deployment": rec.id,
            "version": rec.version,
            "phase": rec.phase,
            "agent": rec.agent_did,
            "summary": summary,
        }

    def recover(self, now: float | None = None) -> list[dict[str, Any]]:
        """Repair every deploy a killed process on this host left unfinished.

        Each app is repaired under its lock, so a deploy still running in another
        process is left alone. Returns what was repaired (the gate audits it).
        """
        ledger = self.ledger
        t = self._clock() if now is None else now
        host = host_name()
        apps = {(r.env, r.app) for r in ledger.running(host=host)}
        apps |= {(lk.env, lk.app) for lk in ledger.locks() if lk.host == host and lk.stale(t)}
        repaired: list[dict[str, Any]] = []
        pid = os.getpid()
        for env, app in sorted(apps):
            token = secrets.token_hex(16)
            taken = ledger.take_lock(
                LockRecord(
                    env=env,
                    app=app,
                    token=token,
                    holder_did="gate",
                    holder_name="opsgate recovery",
                    capability=f"recover:{env}/{app}",
                    message=None,
                    deployment_id=None,
                    host=host,
                    pid=pid,
                    process_start=process_start(pid),
                    started_at=t,
                    expires_at=t + self.config.lock_expiry_seconds,
                ),
                t,
            )
            if not taken.acquired:
                continue  # a live run holds it
            try:
                repaired.extend(self._repair_app(env, app))
            finally:
                ledger.drop_lock(env, app, token)
        return repaired[:_RECOVERY_REPORT_MAX]

    # -- read-only views (status, history, locks, health) ------------------------------------

    def status(self, env: str, app: str, *, now: float | None = None) -> DeployStatus:
        """What is live, the lock, the last run and the releases kept: reads only."""
        env, app = self.target(f"{env}/{app}")
        backend = self.backend(env)
        t = self._clock() if now is None else now
        ledger = self.ledger
        if backend is None:
            assert self.releases is not None
            current = self.releases.current(env, app)
        else:
            live = ledger.live(env, app)
            current = None if live is None else live.version
        record: ReleaseRecord | None = (
            None if current is None else ledger.release(env, app, current)
        )
        lock = ledger.lock(env, app)
        history = ledger.history(env, app, limit=1)
        releases, release_count = ledger.kept_versions(env, app, STATUS_RELEASES)
        return DeployStatus(
            env=env,
            app=app,
            backend="local" if backend is None else "command",
            current=current,
            digest=None if record is None else record.digest,
            lock=lock,
            lock_stale=lock is not None and lock.stale(t),
            last=history[0] if history else None,
            releases=tuple(releases),
            unfinished=tuple(ledger.running(env, app)),
            release_count=release_count,
        )

    def history(self, env: str, app: str, limit: int = 20) -> list[DeploymentRecord]:
        """The app's deploys and rollbacks in `env`, newest first: reads only."""
        env, app = self.target(f"{env}/{app}")
        if not 1 <= limit <= 1000:
            raise OperationError("history limit must be 1..1000", code="params_invalid")
        return self.ledger.history(env, app, limit)

    def locks(self) -> list[LockRecord]:
        """Every deploy lock held now (stale ones included: `stale(now)` says which)."""
        return self.ledger.locks()

    def check_health(self, env: str, app: str) -> HealthReport:
        """Run the app's configured health gate for `env` now (changes nothing)."""
        env, app = self.target(f"{env}/{app}")
        backend = self.backend(env)
        check = self.health_check(env, app)
        if check is None:
            return NOT_CONFIGURED
        release: Path | None = None
        if backend is None:
            assert self.releases is not None
            current = self.releases.current(env, app)
            release = None if current is None else self.releases.path(env, app, current)
        probe_env = {"PATH": DEFAULT_PATH if backend is None else backend.path}
        probe_env.update(OPSGATE_DEPLOY_APP=app, OPSGATE_DEPLOY_ENV=env)
        if release is not None:
            probe_env["OPSGATE_RELEASE_DIR"] = str(release)
        return run_health_gate(
            check, probe_for(check, probe_env), clock=self._monotonic, sleep=self._sleep
        )


class RollbackExecutor:
    """`rollback:<env>/<app>` with params {to?}: back to a kept release, through the gate.

    The target must be a release the gate recorded, still on disk with its recorded
    digest (re-hashed when planning and again under the lock). The rollback is
    journalled, health-checked and restored on failure exactly like a deploy.
    """

    params_model: ClassVar[type[BaseModel]] = RollbackParams

    def __init__(self, deploy: DeployExecutor) -> None:
        self.deploy = deploy

    def forbid_paths(self, paths: Iterable[Path]) -> None:
        self.deploy.forbid_paths(paths)

    def attach_store(self, store: Store) -> None:
        self.deploy.attach_store(store)

    def recover(self, now: float | None = None) -> list[dict[str, Any]]:
        return self.deploy.recover(now)

    def plan(self, operation: Operation) -> Plan:
        d = self.deploy
        env, app = d.target(operation.resource)
        params = RollbackParams.model_validate(operation.params)
        backend = d.backend(env)
        ledger = d.ledger
        if backend is None:
            assert d.releases is not None
            current = d.releases.current(env, app)
        else:
            live = ledger.live(env, app)
            current = None if live is None else live.version
        target = params.to or self._previous(env, app, current)
        if target == current:
            raise DeployError(f"{env}/{app} is already at {target}", code="rollback_to_current")
        record = ledger.release(env, app, target)
        if record is None or (backend is None and record.pruned_at is not None):
            raise DeployError(
                f"release {target} of {env}/{app} is not kept (never deployed, or removed)",
                code="release_missing",
            )
        # A rollback needs no staging because it goes back to a release that was live:
        # one whose deploy failed its health gate (and was undone) never was.
        if ledger.staged(env, app, target, record.digest) is None:
            raise DeployError(
                f"release {target} of {env}/{app} never passed its health gate in {env} "
                "(its deploy failed or was undone): deploy it instead",
                code="release_unproven",
            )
        if backend is None:
            self._verify(env, app, record)
        elif backend.rollback is None:
            raise DeployError(
                f"environment {env!r} has no rollback command configured",
                code="rollback_unsupported",
            )
        check = d.health_check(env, app)
        steps = [f"switch {env}/{app}/current -> {target} (from {current or 'none'})"]
        if backend is not None:
            assert backend.rollback is not None
            values = {**backend.vars, "app": app, "env": env, "version": target}
            steps = [f"run {' '.join(cmd.render(backend.rollback, values))}"]
        if check is not None:
            steps.append(describe(check))
        return Plan(
            operation=operation,
            capability=operation.capability,
            environment=env,
            destructive=False,
            summary=f"roll {app} in {env} back from {current or 'none'} to {target}",
            steps=tuple(steps),
            content={
                "app": app,
                "version": target,
                "from": current,
                "backend": "local" if backend is None else "command",
                "artifact_digest": record.digest,
                "artifact_kind": record.kind,
                "health": None if check is None else check.model_dump(mode="json"),
                "message": params.message,
            },
        )

    def _previous(self, env: str, app: str, current: str | None) -> str:
        """The release live before the current one went live (by the gate's records)."""
        for rec in self.deploy.ledger.history(env, app, limit=200):
            if rec.status == "succeeded" and rec.version == current:
                if rec.previous_version is None:
                    break
                return rec.previous_version
        raise DeployError(
            f"{env}/{app} has no earlier release recorded: name one with 'to'",
            code="release_missing",
        )

    def _verify(self, env: str, app: str, record: ReleaseRecord) -> None:
        releases = self.deploy.releases
        assert releases is not None
        if not releases.exists(env, app, record.version):
            raise DeployError(
                f"release {record.version} of {env}/{app} is not on disk", code="release_missing"
            )
        kind: Kind = "file" if record.kind == "file" else "dir"
        on_disk = releases.digest(env, app, record.version, kind)
        if record.digest is None or on_disk != record.digest:
            raise DeployError(
                f"release {record.version} of {env}/{app} no longer matches its recorded digest",
                code="release_corrupted",
            )

    def run(self, plan: Plan) -> Outcome:
        return self.run_with_context(plan, RunContext("", "unknown agent"))

    def run_with_context(self, plan: Plan, context: RunContext) -> Outcome:
        d = self.deploy
        env, app = d.target(plan.operation.resource)
        backend = d.backend(env)
        target = str(plan.content["version"])
        run = d._begin(plan, context, env, app, target, backend, "rollback")
        try:
            record = d.ledger.release(env, app, target)
            if backend is None:
                assert d.releases is not None
                if record is None or record.digest != plan.content["artifact_digest"]:
                    raise DeployError(
                        f"release {target} of {env}/{app} changed since it was planned",
                        code="release_corrupted",
                    )
                self._verify(env, app, record)
                d.ledger.claim_release(env, app, target, record.digest, record.kind, d._clock())
                outcome = d._switch_and_check(run, None, d.releases.path(env, app, target), plan)
            else:
                outcome = self._command(run, backend, context)
        except BaseException as exc:
            d._abort(run, backend, exc)
            raise
        finally:
            run.end_lease()
        return _with_recovered(outcome, run)

    def _command(self, run: _Run, backend: CommandBackend, context: RunContext) -> Outcome:
        d = self.deploy
        assert backend.rollback is not None
        values = {**backend.vars, "app": run.app, "env": run.env, "version": run.version}
        argv = cmd.render(backend.rollback, values)
        child_env = cmd.child_environment(
            backend,
            app=run.app,
            env=run.env,
            version=run.version,
            token=context.credential,
            secrets={},
        )
        d._phase(run, "command")
        run.switched = True
        with _private_workdir("opsgate-rollback-") as workdir:
            result = run_child(
                argv,
                env=child_env,
                cwd=backend.cwd or str(workdir),
                timeout=backend.timeout_seconds,
                tail_bytes=backend.output_tail_bytes,
                secrets=[context.credential] if context.credential else [],
                clock=d._monotonic,
            )
        audit = {
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
            "output_tail": result.tail,
        }
        if not result.ok:
            run.switched = False
            summary = f"{argv[0]} {_ended(result.exit_code, result.timed_out, result.error)}"
            d._finish(run, "failed", summary, None)
            return Outcome(
                "failed",
                f"rollback of {run.app} in {run.env}: {summary}",
                {"command": audit},
                failure_kind="deployment",
                audit_fields={"command": audit},
            )
        report = d._health(run, d.health_check(run.env, run.app), None, backend.path)
        if not report.passed:
            # Like a deploy: what was live before the rollback is put back (the rollback
            # command run with that version), so the record and the environment agree.
            restored = d._restore(run, backend)
            run.switched = False
            summary = (
                f"health check {report.status} ({report.detail}) after the rollback; {restored}"
            )
            d._finish(run, "failed", summary, report)
            return Outcome(
                "failed",
                f"rollback of {run.app} in {run.env} to {run.version}: {summary}",
                {"command": audit, "health": report.to_dict(), "restored": restored},
                failure_kind="deployment",
                audit_fields={
                    "command": audit,
                    "health": report.to_dict(),
                    "restored": run.previous,
                },
            )
        run.switched = False
        summary = f"{run.app} rolled back to {run.version} in {run.env}"
        d._finish(run, "succeeded", summary, report, fenced=True)
        return Outcome(
            "succeeded",
            summary,
            {"command": audit, "health": report.to_dict()},
            audit_fields={"command": audit, "health": report.to_dict()},
        )


class LocalDeployExecutor(DeployExecutor):
    """A deploy executor with only the local backend: `root` and `artifact_roots` required."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        artifact_roots: Iterable[str | os.PathLike[str]] = (),
        **settings: Any,
    ) -> None:
        if settings.get("commands"):
            raise ConfigError(
                "LocalDeployExecutor has no command backends; use DeployExecutor",
                code="config_invalid",
            )
        if root is None:
            raise ConfigError("LocalDeployExecutor needs a deploy root", code="config_invalid")
        super().__init__(root, artifact_roots=artifact_roots, **settings)


@contextmanager
def _private_workdir(prefix: str) -> Iterator[Path]:
    """An empty directory of the gate's own for a command's working directory (never
    the gate's: its state dir, its keys), removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _ended(code: int | None, timed_out: bool, error: str | None) -> str:
    if error is not None:
        return f"could not start: {error}"
    if timed_out:
        return "timed out and was killed"
    return f"exited with {code}"


def _with_recovered(outcome: Outcome, run: _Run) -> Outcome:
    if not run.recovered:
        return outcome
    fields = {**outcome.audit_fields, "recovered": run.recovered}
    return Outcome(
        outcome.status,
        outcome.summary,
        {**outcome.detail, "recovered": run.recovered},
        outcome.failure_kind,
        outcome.audit_seq,
        fields,
    )


__all__ = [
    "DeployExecutor",
    "DeployParams",
    "DeployStatus",
    "LocalDeployExecutor",
    "RollbackExecutor",
    "RollbackParams",
]
