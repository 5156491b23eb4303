"""The Gate: the one path every privileged operation goes through.

execute(credential, operation)
  1 authenticate   credential_manager.verify
  2 plan           executor.plan (pure)
  3 authorize      authz.authorize: scope ⊆ grants ⊆ delegation chain
  4 decide         policy + trust thresholds
  5 approve        approvals bound to the plan digest
  6 audit          the attempt, durably (fail closed)
  7 execute        executor.run
  8 audit+score    outcome, trust engine, anomaly detectors
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsgate import capabilities as caps
from opsgate.approvals import ApprovalRequest, ApprovalService, PendingApproval, satisfied
from opsgate.audit.log import CHECKPOINT_FILE, AuditLog, AuditRecord, Finding
from opsgate.audit.writer import Unit
from opsgate.authz import AuthzRequest, authorize, scope_refusal
from opsgate.boundary import internal, typed_errors
from opsgate.cache import BoundedCache
from opsgate.clock import to_epoch
from opsgate.config import CONFIG_FILE, Config, load_config, resolve_state_dir
from opsgate.credentials.keyring import KEY_DIR, PIN_FILE, KeyRing, Pin, read_pin, write_pin
from opsgate.credentials.manager import Claims, CredentialManager, PossessionCheck
from opsgate.credentials.proof import BatchProofs, ProofRequest
from opsgate.decision import APPROVAL_EXPIRY_SECONDS, Decision
from opsgate.environments import Environments, Resolved
from opsgate.errors import (
    AgentError,
    ApprovalError,
    AuditError,
    CapabilityError,
    ConfigError,
    InvalidCredential,
    OperationError,
    OpsgateError,
    PolicyError,
    RunRefused,
    StoreError,
    safe_text,
)
from opsgate.identity import keys
from opsgate.identity.records import untrusted_records
from opsgate.identity.registry import AGENT_KEY_DIR, Agent, AgentRegistry, check_email
from opsgate.operations.base import (
    Executor,
    Operation,
    Outcome,
    Plan,
    RunContext,
    params_model_of,
    run_executor,
    validate_params,
)
from opsgate.operations.monitor.executor import NAMESPACE as MONITORING
from opsgate.operations.monitor.executor import MonitorExecutor, registered_deployer
from opsgate.operators import OperatorService
from opsgate.policy.engine import PolicySet
from opsgate.policy.loader import policy_digest
from opsgate.policy.request import check_params
from opsgate.secrets import SecretsService
from opsgate.secrets.value import SecretValue
from opsgate.state import POLICY_CHANGE, AgentState, LiveState
from opsgate.store import DB_FILE, Store
from opsgate.store import agents as agent_rows
from opsgate.store import policies as policy_rows
from opsgate.store.runs import RunsSQL
from opsgate.trust.engine import MISUSE_CHARGE_WINDOW, TrustChange, TrustEngine
from opsgate.trust.scoring import TrustEvent, failure_event, failure_kind

log = structlog.get_logger("opsgate.gate")


def plan_findings(plan: Plan) -> tuple[str, ...]:
    """The finding codes an executor reports for policy (`findings`), checked."""
    found = plan.attributes.get("findings", ()) if isinstance(plan.attributes, dict) else None
    if not isinstance(found, (list, tuple)) or any(type(f) is not str for f in found):
        raise OperationError(
            "the executor's plan findings are not a list of codes", code="plan_failed"
        )
    return tuple(found)


def _unmet(request: ApprovalRequest, decision: Decision, t: float) -> str | None:
    """Why an approved request falls short of the requirements policy has now, if it
    does: too few of the current approvers, or older than the current rules let an
    approval live (a shortened `expires_in` holds for approvals already given)."""
    approvals = (d.approver for d in request.decisions if d.decision == "approve")
    if not satisfied(decision.requirements, approvals):
        return "not enough of its approvers approved"
    life = min(
        (r.expires_in_seconds or APPROVAL_EXPIRY_SECONDS for r in decision.requirements),
        default=APPROVAL_EXPIRY_SECONDS,
    )
    if t >= request.created_at + life:
        return f"it was asked for more than {life / 60:g} min ago, longer than an approval lives"
    return None


def _failure_code(outcome: Outcome) -> str | None:
    """The error code of a failed outcome (e.g. `secret_backend_sealed`), for the audit."""
    code = outcome.detail.get("code") if isinstance(outcome.detail, dict) else None
    return safe_text(code) if outcome.status == "failed" and isinstance(code, str) else None


def _asked(operation: Operation) -> str | None:
    """The capability an operation asks for, for the record; None when its action or
    resource is not text (refused as operation_invalid, never formatted)."""
    if type(operation.action) is str and type(operation.resource) is str:
        return operation.capability
    return None


@contextlib.contextmanager
def _creation_lock(path: Path) -> Iterator[None]:
    """Serialise gate creation in one state dir across processes (flock on the dir)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# The sections of opsgate.yaml that change what a decision is (see decisions_digest).
_DECISION_SETTINGS = {"audience", "require_proof", "limits", "trust", "approvals", "environments"}


def _changeable(st: os.stat_result, *, above: bool) -> bool:
    """Whether another user could change (or, for a directory, swap what is in) it.
    A sticky world-writable directory above a file (such as /tmp) is fine: others
    cannot rename or replace what they do not own in it."""
    world = bool(st.st_mode & 0o002) and not (above and st.st_mode & stat.S_ISVTX)
    return world or st.st_uid not in (os.geteuid(), 0)


def _check_owned(path: Path) -> None:
    """The state dir and its opsgate.yaml decide who may do what: another user who
    can write either (a world-writable dir, a file or dir someone else owns) could
    rewrite the configuration or swap the gate's files, so neither is used."""
    for target in (path, path / CONFIG_FILE):
        try:
            st = target.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(
                f"cannot inspect '{target}': {exc.strerror}", code="state_dir_invalid"
            ) from exc
        if _changeable(st, above=False):
            raise ConfigError(
                f"'{target}' can be changed by other users (mode {st.st_mode & 0o7777:o}, "
                f"uid {st.st_uid}): make it owned by this user and not world-writable "
                "(chmod o-w)",
                code="state_dir_insecure",
            )


def _check_policy_files(source: str | os.PathLike[str] | list[str]) -> None:
    """Policies decide who may do what, like opsgate.yaml: a policy file, a policy
    directory (another user could add a file to it), or any directory above them that
    another user could change is refused, along the path as given and as resolved."""
    from opsgate.policy import policy_files

    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    targets = [Path(i) for i in items if Path(i).is_dir()] + policy_files(source)
    seen: set[tuple[Path, bool]] = set()
    for target in targets:
        given, real = Path(os.path.abspath(target)), target.resolve()
        chain = [(real, False)] + [(d, True) for d in (*given.parents, *real.parents)]
        for path, above in chain:
            if (path, above) in seen:
                continue
            seen.add((path, above))
            try:
                st = path.stat()
            except OSError as exc:
                raise PolicyError(
                    f"cannot inspect '{path}': {exc.strerror}", code="policy_not_found"
                ) from exc
            if _changeable(st, above=above):
                raise PolicyError(
                    f"policy path '{path}' can be changed by other users (mode "
                    f"{st.st_mode & 0o7777:o}, uid {st.st_uid}): make it owned by this user "
                    "or root and not world-writable",
                    code="policy_insecure",
                )


# What a gate keeps in its state dir besides the pin (configuration and policies are not).
_GATE_FILES = (KEY_DIR, AGENT_KEY_DIR, DB_FILE, CHECKPOINT_FILE)


# The opsgate.yaml section that registers the built-in executor of an action.
_EXECUTOR_SECTIONS = {"deploy": "deploy:", "rollback": "deploy:", "migrate": "databases:"}


def _checkpoint_path(state_dir: Path, config: Config) -> Path:
    """Where the kept checkpoint lives (`audit.checkpoint_file`, relative to the state
    dir); never one of the gate's own files, which the first checkpoint would replace
    (the database, the pin, the configuration, a policy file, a key)."""
    from opsgate.secrets.keys import KEY_FILE

    path = state_dir / config.audit.checkpoint_file
    resolved, home = path.resolve(), state_dir.resolve()
    files = {home, *(home / n for n in (PIN_FILE, CONFIG_FILE, KEY_FILE))}
    files |= {home / f"{DB_FILE}{s}" for s in ("", "-wal", "-shm", "-journal", "-writer")}
    trees = [home / KEY_DIR, home / AGENT_KEY_DIR]
    if config.policies:
        trees.append((state_dir / config.policies).resolve())  # a file, or a directory
    if resolved in files or any(resolved.is_relative_to(t) for t in trees):
        raise ConfigError(
            f"audit.checkpoint_file names one of the gate's own files ({path.name}): give "
            "it a file of its own",
            code="config_invalid",
        )
    return path


def _policy_set(
    source: str | os.PathLike[str] | list[str], config: Config, environments: Environments
) -> PolicySet:
    """The policies at `source`, loaded as the gate loads them (refused when a file or a
    directory on their path could be changed by another user)."""
    from opsgate.policy import load_policies

    _check_policy_files(source)
    return load_policies(
        source, limits=config.limits, aliases=environments.aliases, environments=environments
    )


def _not_initialized(path: Path, why: str = "") -> ConfigError:
    return ConfigError(
        f"no opsgate state in '{path}'{why}: run 'opsgate init' first (or pass --state-dir)",
        code="not_initialized",
    )


def _stored_gate_id(store: Store) -> str | None:
    """The gate id the database holds; a database that cannot be reached is named
    (without its password), so a wrong url or a server that is down can be told apart."""
    try:
        return store.stored_gate_id()
    except StoreError as exc:
        if exc.code != "store_unavailable":
            raise
        raise StoreError(
            f"cannot open the state database {store.describe()} ({exc.message}): check "
            "that it is running and database_url (and OPSGATE_DATABASE_URL)",
            code="store_unavailable",
        ) from exc


def _check_binding(store: Store, pin: Pin, path: Path) -> None:
    """The state dir and its database must hold the same gate id; checked before
    anything is migrated or written, so a wrong database url changes nothing."""
    stored = _stored_gate_id(store)
    if stored == pin.gate_id:
        return
    holds = "no gate" if stored is None else f"gate {safe_text(stored)}"
    raise ConfigError(
        f"state dir '{path}' belongs to gate {pin.gate_id}, but the database "
        f"{store.describe()} holds {holds}: check database_url (and OPSGATE_DATABASE_URL); "
        "nothing was changed",
        code="gate_mismatch",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """One request of `Gate.authorize_batch`: `authorize`'s arguments."""

    token: str
    capability: str
    proof: str | PossessionCheck | None = None
    params: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Decided:
    """An authorize decision made and not yet recorded: its audit record to write, then
    the scoring (`_score_decision`) once that record is durable."""

    agent: AgentState
    decision: Decision
    canonical: str  # the capability in its one spelling, for the detectors
    unit: Unit


@dataclasses.dataclass(frozen=True, slots=True)
class _Refusal:
    """A refusal's audit record, written with its batch's decisions (one commit for the
    batch). `closed`: a record that cannot be written fails its request with the
    AuditError, as `authorize` does; otherwise the refusal stands and the failure is
    logged, as `verify` does for a credential's."""

    unit: Unit
    closed: bool


@dataclasses.dataclass(slots=True)
class _BatchRecords:
    """What deciding part of a batch left to write: the refusals' records and the
    decisions (request index, claims, capability, time, decision), each with its
    request's index."""

    refusals: list[tuple[int, _Refusal]] = dataclasses.field(default_factory=list)
    decided: list[tuple[int, Claims, str, float, _Decided]] = dataclasses.field(
        default_factory=list
    )

    def step(self, gate: Gate, i: int, fn: Callable[[], _T]) -> _T | OpsgateError:
        """fn on behalf of request i: the records of its refusals kept for the batch."""
        own: list[_Refusal] = []
        gate._batching.refusals = own
        try:
            return _typed(fn)
        finally:
            gate._batching.refusals = None
            self.refusals.extend((i, refusal) for refusal in own)


class AuthorizeBatch:
    """A batch of authorize requests decided and committed, not answered yet
    (`Gate.commit_authorize_batch`, then `Gate.complete_authorize_batch`)."""

    __slots__ = ("again", "committed", "proofs", "records", "requests", "results", "times")

    def __init__(self, requests: Sequence[AuthorizeRequest], proofs: BatchProofs) -> None:
        self.requests = requests
        self.times = [time.time() for _ in requests]
        self.results: list[Decision | OpsgateError | None] = [None] * len(requests)
        self.records = _BatchRecords()
        self.proofs = proofs
        # Requests revoked (their agent suspended) before they were decided.
        self.again: list[int] = []
        self.committed = False  # its records are committed (durable once synced)


def authorize_internal(exc: BaseException) -> OpsgateError:
    """What `authorize`'s typed boundary raises for an unexpected exception (also the
    answer of a batch that failed outside the gate)."""
    err = internal("Gate.authorize", exc)
    err.__cause__ = exc
    return err


_T = TypeVar("_T")


def _typed(fn: Callable[[], _T]) -> _T | OpsgateError:
    """fn's result, or the OpsgateError `authorize`'s typed boundary would raise."""
    try:
        return fn()
    except OpsgateError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - as the typed boundary of `authorize`
        return authorize_internal(exc)


def _each(exc: OpsgateError) -> OpsgateError:
    """A batch's one failure as an exception of each request's own (each is raised on
    its own, and a raise adds to the exception's traceback)."""
    copy = type(exc).received(exc.message, code=exc.code, **exc.detail)
    copy.audited = exc.audited
    copy.__cause__ = exc.__cause__
    return copy


def _rejection_not_audited(unit: Unit, err: OpsgateError) -> None:
    log.error(
        "credential rejection not audited", code=unit.fields.get("code"), audit_error=err.code
    )


def _migration_executor(gate: Gate) -> Executor:
    """The executor of the configured database targets: leased users where a target
    names a `vault_role`, the configured URL elsewhere."""
    from opsgate.operations.migrate import MigrationExecutor
    from opsgate.secrets.dynamic import database_credentials

    return MigrationExecutor(
        gate.config,
        state_dir=gate.state_dir,
        credentials=database_credentials(gate),
        gate_id=gate.gate_id,
    )


@typed_errors
class Gate:
    """One gate per state directory (or per replica on a shared PostgreSQL)."""

    def __init__(
        self,
        state_dir: Path,
        config: Config,
        store: Store,
        pin: Pin,
        *,
        genesis: Ed25519PrivateKey | None = None,
    ) -> None:
        """Use `Gate.open`. With `genesis`, this creates the gate: its id, its first
        key, the key_created event and the pin commit together or not at all."""
        self.state_dir = state_dir
        self.config = config
        self.store = store
        self.pin = pin
        self.gate_id = pin.gate_id
        now = time.time()
        if genesis is None:
            _check_binding(store, pin, state_dir)
        store.migrate()
        store.restrict_files()
        self.keyring = KeyRing(store, state_dir, pin)
        self.keyring.reload()
        self.state = LiveState(store, self.keyring, config)
        self.environments = Environments.from_config(config)
        self.audit = AuditLog(
            store,
            gate_id=self.gate_id,
            signer=self._audit_signer,
            key_chain=self.keyring.chain_of,
            root_kid=pin.root_kid,
            public_jwk=self._public_jwk,
            check_state=self._check_state,
            feed=self.state.record_changes_raw,
            checkpoint_every=config.audit.checkpoint_every_events,
            checkpoint_interval=config.audit.checkpoint_every_seconds,
            checkpoint_file=_checkpoint_path(state_dir, config),
        )
        if genesis is not None:
            self._create(genesis, now)
        try:
            self.keyring.signer()
        except ConfigError:
            self.keyring.reload()  # a replica may have rotated between our reads
            self.keyring.signer()
        self.state.load(now)
        self.agents = AgentRegistry(
            gate_id=self.gate_id,
            handle=lambda agent: Agent(self, agent),
            effective_trust=self.effective_trust,
            on_refusal=self._on_delegation_refused,
            config=config,
            store=store,
            keyring=self.keyring,
            state=self.state,
            audit=self.audit,
            state_dir=state_dir,
            default_trust=config.trust.default_score,
        )
        self.credential_manager = CredentialManager(
            config=config,
            store=store,
            keyring=self.keyring,
            state=self.state,
            audit=self.audit,
            agent_state=self.agents.state,
            descendants=functools.partial(self.agents.descendants, lock=True),
            on_escalation=self._on_escalation,
            issuer=self.gate_id,
        )
        self.trust = TrustEngine(
            store=store, state=self.state, config=config, audit=self.audit, agents=self.agents
        )
        self.approvals = ApprovalService(store=store, audit=self.audit, config=config)
        self.operators = OperatorService(
            store=store, audit=self.audit, token_ttl_days=config.operators.token_ttl_days
        )
        self.policies: PolicySet | None = None
        # Whether loading policies makes them the ones in force for every gate on the
        # database (`Gate.open(publish_policies=...)`); else they are only compared.
        self.publishes_policies = True
        self.expected_policies: str | None = None
        self.trust_approvers: tuple[str, ...] = ()
        self._resolve_trust_approvers()
        # (action, namespace) -> executor; namespace None routes every other resource.
        self._executors: dict[tuple[str, str | None], Executor] = {}
        # The configured secret backend; its five executors are routed like any other.
        self.secrets = SecretsService(
            config.secrets, store=store, state_dir=state_dir, gate_id=self.gate_id
        )
        for executor in self.secrets.executors():
            self.register_executor(executor.action, executor, namespace=self.secrets.namespace)
        # Monitoring is always there: read-only views of the apps the deploy executor
        # runs (whichever is registered when a read comes) and of the gate itself.
        self.register_executor(
            "read",
            MonitorExecutor(self, lambda: registered_deployer(self)),
            namespace=MONITORING,
        )
        # jtis known to be charged as misuse (insertion order): spares the store a write.
        self._misused: BoundedCache[str, None] = BoundedCache(100_000)
        # On a thread deciding an authorize batch, `refusals`: the refusal records of
        # the request being decided, for the batch's one commit (else None: written
        # at once).
        self._batching = threading.local()
        self._runs = RunsSQL(store)
        self._repair_runs()
        self.audit.flush_deferred()  # what a replica that stopped left unchained

    def _repair_runs(self) -> None:
        """Give every run whose process died before its outcome was recorded an
        outcome now (`unknown`: whether it changed anything is not known; no trust
        change), so no attempt is left without one. Only runs of this host can be
        seen to be dead; each is repaired once, whichever replica gets to it."""
        try:
            orphans = self._runs.orphans()
        except OpsgateError as exc:
            log.warning("unfinished runs not checked", code=exc.code)
            return
        for run in orphans:
            t = time.time()
            with self.store.write() as conn:
                self.audit.hold_head(conn)
                if not RunsSQL.claim(conn, run.attempt_seq):
                    continue
                self.audit.append_in(
                    conn,
                    "operation.outcome",
                    actor=run.agent_did,
                    at=t,
                    attempt_seq=run.attempt_seq,
                    capability=run.capability,
                    digest=run.digest,
                    outcome="unknown",
                    recovered=True,
                    summary=f"the outcome was never recorded: process {run.pid} on "
                    f"{safe_text(run.host)} ended first",
                )

    def _create(self, genesis: Ed25519PrivateKey, now: float) -> None:
        """The gate's birth: one transaction, with the pin written last before commit."""
        pin_written = False
        try:
            with self.store.write() as conn:
                self.audit.hold_head(conn)
                stored = self.store.meta_get(conn, "gate_id")
                if stored is not None:  # another creator won the race on this database
                    raise ConfigError(
                        f"the database {self.store.describe()} already holds gate "
                        f"{safe_text(stored)}",
                        code="gate_mismatch",
                    )
                self.store.meta_insert(conn, "gate_id", self.gate_id)
                root = self.keyring.create_root(conn, now, genesis)
                self.state.record_change(conn, "key", root.kid, now)
                self.audit.append_in(
                    conn, "gate.key_created", actor="gate", at=now, kid=root.kid, public_key=root.x
                )
                write_pin(self.state_dir, self.pin)
                pin_written = True
        except BaseException:
            self.keyring.discard_private(keys.jwk_thumbprint(genesis.public_key()))
            if pin_written:
                (self.state_dir / PIN_FILE).unlink(missing_ok=True)
            self.audit.close(sign=False)  # nothing was created: nothing to sign
            raise
        self.keyring.reload()

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        create: bool | None = None,
        policies: str | os.PathLike[str] | list[str] | None = None,
        database_url: str | None = None,
        publish_policies: bool = True,
        expect_policies: str | None = None,
        **config_overrides: Any,
    ) -> Gate:
        """Open the gate whose state lives in `state_dir`.

        An initialised state dir (it holds the gate pin) opens only on the database
        that holds the same gate: anything else is `gate_mismatch` and changes
        nothing. `create`: None (default) creates a gate on first use of a state
        dir that holds no gate files yet (it may hold opsgate.yaml and policies);
        True (`Gate.init`) also creates one beside the leftovers of a gate that has
        no pin (a failed creation); False never creates (every CLI command but init).

        The policies loaded are published as the ones in force on the database (the
        last gate to load wins; a gate whose policies differ refuses every decision,
        `policy_mismatch`). With `publish_policies=False` (the CLI's commands but
        `serve`) they are only compared, so a command run with another copy
        of the files never takes the replicas out; on SQLite, whose state dir holds the
        database and the files, every gate publishes.
        """
        path = resolve_state_dir(state_dir)
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"state dir '{path}' exists but is not a directory", code="state_dir_invalid"
            )
        _check_owned(path)
        overrides = dict(config_overrides)
        if database_url is not None:
            overrides["database_url"] = database_url
        config = load_config(path, overrides)
        pin = read_pin(path) if path.is_dir() else None
        if pin is None:
            if create is False:
                raise _not_initialized(path)
            source = policies if policies is not None else config.policies
            if source is not None:
                # Before anything is created: a policy that does not load fails `init`
                # with nothing left behind, rather than with a gate made anyway.
                _policy_set(source, config, Environments.from_config(config))
            gate = cls._open_new(path, config, create)
        else:
            gate = cls._open_pinned(path, config, pin)
        try:
            gate.publishes_policies = publish_policies
            # A worker of `serve --workers N`: the decision digest its parent loaded and
            # published; files that say otherwise now are refused before they publish.
            gate.expected_policies = expect_policies
            policy_source = policies if policies is not None else config.policies
            if policy_source is not None:
                gate.load_policies(policy_source)
            else:
                gate._policies_in_force(None, policy_digest(()))
            if config.deploy.enabled:
                from opsgate.operations.deploy import DeployExecutor
                from opsgate.operations.deploy.command import StoreSecrets

                deployer = DeployExecutor.from_config(
                    config.deploy, secrets=StoreSecrets(gate.secrets.backend)
                )
                gate.register_executor("deploy", deployer)
                gate.register_executor("rollback", deployer.rollback)
            if config.databases:
                gate.register_executor("migrate", _migration_executor(gate))
        except BaseException:
            gate.close()
            raise
        return gate

    @classmethod
    def init(cls, state_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Gate:
        """Create the gate in `state_dir` (or open it, when it already exists there)."""
        return cls.open(state_dir, create=True, **kwargs)

    @classmethod
    def _open_pinned(cls, path: Path, config: Config, pin: Pin) -> Gate:
        store = Store.for_state_dir(
            path,
            config.database_url,
            create=False,
            session_options=config.database_timeouts.session_options(),
        )
        try:
            return cls(path, config, store, pin)
        except BaseException:
            store.dispose()
            raise

    @classmethod
    def _open_new(cls, path: Path, config: Config, create: bool | None) -> Gate:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create state dir '{path}': {exc.strerror}", code="state_dir_invalid"
            ) from exc
        with _creation_lock(path):
            pin = read_pin(path)  # another process may have created it meanwhile
            if pin is not None:
                return cls._open_pinned(path, config, pin)
            left = sorted(n for n in _GATE_FILES if (path / n).exists())
            if create is None and left:
                # Files of a gate without its pin: a damaged or pre-pin state dir is
                # never silently replaced by a new gate.
                raise _not_initialized(path, f" (it holds {', '.join(left)} but no gate pin)")
            store = Store.for_state_dir(
                path,
                config.database_url,
                session_options=config.database_timeouts.session_options(),
            )
            try:
                stored = _stored_gate_id(store)
                if stored is not None:
                    raise ConfigError(
                        f"the database {store.describe()} already holds gate "
                        f"{safe_text(stored)}; a new state dir cannot take it over "
                        "(a replica needs a copy of that gate's state dir: its pin and keys)",
                        code="gate_mismatch",
                    )
                genesis = keys.generate()
                pin = Pin(f"opsgate:{uuid.uuid4()}", keys.jwk_thumbprint(genesis.public_key()))
                return cls(path, config, store, pin, genesis=genesis)
            except BaseException:
                store.dispose()
                raise

    def load_policies(self, source: str | os.PathLike[str] | list[str]) -> None:
        """Load the policies in force (refused, with the old ones kept, when a file
        or a directory on its path could be changed by another user)."""
        loaded = _policy_set(source, self.config, self.environments)
        assert loaded.digest is not None  # loaded from files
        self._policies_in_force(loaded, loaded.digest)

    def decisions_digest(self, policies_digest: str) -> str:
        """What replicas must agree on to decide alike: the policy files' digest and the
        settings of opsgate.yaml that change a decision (trust thresholds and approvers,
        environments, limits, approvals, whether proofs are required, the audience)."""
        settings = self.config.model_dump(mode="json", include=_DECISION_SETTINGS)
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        body = f"opsgate-decisions/1\n{policies_digest}\n{canonical}"
        return hashlib.sha256(body.encode()).hexdigest()

    def _policies_in_force(self, loaded: PolicySet | None, policies_digest: str) -> None:
        """Publish (or compare) the digest of the policies just loaded (with the
        decision settings), then use them. No decision falls between the swap and the
        comparison."""
        digest = self.decisions_digest(policies_digest)
        if self.expected_policies is not None and digest != self.expected_policies:
            raise ConfigError(
                "the policy files (or the decision settings of opsgate.yaml) changed since "
                "this server started: restart `opsgate serve` to put them in force",
                code="policies_changed",
            )
        published = self._publish_policies(
            digest, () if loaded is None else tuple(Path(s).name for s in loaded.sources)
        )
        self.state.policy_mismatch = True
        self.policies = loaded
        self._resolve_trust_approvers()
        self.state.set_policy(digest, published)

    def _publish_policies(
        self, digest: str, files: tuple[str, ...]
    ) -> policy_rows.Published | None:
        """Make `digest` the policies in force, with a `policy.loaded` event and a feed
        entry that other replicas' refresh reads; the same digest changes nothing. A
        gate that does not publish publishes only where nothing is published yet."""
        publishes = self.publishes_policies or self.store.is_sqlite
        with self.store.read() as conn:
            current = policy_rows.published(conn)
        if current is not None and (current.digest == digest or not publishes):
            return current
        t = time.time()
        with self.store.write() as conn:
            self.audit.hold_head(conn)
            current = policy_rows.published(conn)
            if current is not None and (current.digest == digest or not publishes):
                return current
            policy_rows.publish(conn, digest, t)
            self.state.record_change(conn, POLICY_CHANGE, digest, t)
            self.audit.append_in(
                conn,
                "policy.loaded",
                actor="gate",
                at=t,
                digest=digest,
                files=list(files),
                replaced=None if current is None else current.digest,
            )
        return policy_rows.Published(digest, t)

    def policy_status(self) -> dict[str, Any]:
        """This gate's policy digest, the one in force (published by the gate that loaded
        last) and when it was published; `in_force` is whether they are the same."""
        published = self.state.published_policy
        return {
            "digest": self.state.policy_digest,
            "published_digest": None if published is None else published.digest,
            "published_at": None if published is None else published.at,
            "in_force": not self.state.policy_mismatch,
        }

    def _refuse_policy_mismatch(self) -> NoReturn:
        """A decision on a gate whose policies are not those in force: refused, the
        caller's fault in nothing (the caller audits it; no one is charged)."""
        raise PolicyError(
            self.state.policy_problem() or "this gate's policies differ from those in force",
            code="policy_mismatch",
        )

    def _on_escalation(self, did: str, reason: str, t: float) -> None:
        self._charge(did, TrustEvent.POLICY_VIOLATION, f"escalation attempt: {reason}", t)

    def _on_delegation_refused(self, did: str, reason: str, t: float) -> None:
        self._charge(did, TrustEvent.POLICY_VIOLATION, f"escalation attempt: {reason}", t)

    def close(self) -> None:
        self.secrets.close()
        self.approvals.dispatcher.close()
        self.credential_manager.unproven_refusals.close()  # before the closing checkpoint
        self.audit.close()
        self.credential_manager.proofs.close()
        self.store.dispose()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ------------------------------------------------------------------------

    def _audit_signer(self) -> tuple[str, Any]:
        kid, key = self.keyring.signer()
        return kid, lambda payload: keys.b64url(key.sign(payload))

    def _public_jwk(self, kid: str) -> dict[str, str]:
        """The JWK of a key the audit log just signed with (the ring holds it)."""
        key = self.keyring.public(kid)
        assert key is not None, kid
        return keys.public_jwk(key, kid)

    def _check_state(self) -> list[Finding]:
        """For audit verify: what in the database does not chain back to the pin."""
        findings: list[Finding] = []
        stored = self.store.stored_gate_id()
        if stored != self.gate_id:
            findings.append(
                Finding(
                    "gate_mismatch",
                    "gate",
                    safe_text(stored) if stored is not None else "-",
                    f"the database names gate {safe_text(stored)}, the state dir's pin "
                    f"{self.gate_id}",
                )
            )
        chain = self.keyring.load_chain()
        gate_keys = chain.root_signers(time.time(), self.keyring.root_grace)
        with self.store.read() as conn:
            rows = agent_rows.delegation_records(conn)
        for did, reason in untrusted_records(rows, gate_keys).items():
            shown_did = safe_text(did)  # written by whoever wrote the row
            findings.append(
                Finding("untrusted_agent", "agent", shown_did, f"agent {shown_did}: {reason}")
            )
        return findings

    def jwks(self, now: datetime | float | None = None) -> dict[str, Any]:
        """The public keys that verify this gate's credentials (RFC 7517 JWK Set).

        Besides `keys`, the set names the `issuer` and `audience` every credential
        carries (additional members, which RFC 7517 lets any JOSE library ignore),
        so whoever holds this document alone can verify a credential.
        """
        return {
            **self.keyring.jwks(to_epoch(now), self.config.limits.signing_algorithm),
            "issuer": self.gate_id,
            "audience": self.config.audience,
        }

    def discovery(self, now: datetime | float | None = None) -> dict[str, Any]:
        """What a verifier needs: issuer, audience, algorithms, the pinned key, the JWKS."""
        t = to_epoch(now)
        tip = self.keyring.chain.tip
        return {
            "issuer": self.gate_id,
            "audience": self.config.audience,
            "algorithms": list(self.config.limits.allowed_algorithms),
            "pinned_kid": self.pin.root_kid,
            "signing_kid": None if tip is None else tip.kid,
            "key_chain": [
                {
                    "kid": k.kid,
                    "x": k.x,
                    "created_at": k.created_at,
                    "retired_at": k.retired_at,
                    "prev_kid": k.prev_kid,
                    "endorsement": k.endorsement,
                }
                for k in self.keyring.chain.keys
            ],
            "jwks": self.keyring.jwks(t, self.config.limits.signing_algorithm),
        }

    def rotate_keys(self, now: datetime | float | None = None) -> str:
        """Sign with a fresh key endorsed by the current one; the old one stays
        published until its tokens have expired, and its private file is deleted."""
        t = to_epoch(now)
        rotation = None
        try:
            with self.store.write() as conn:
                self.audit.hold_head(conn)
                rotation = self.keyring.rotate(conn, t)
                self.state.record_change(conn, "key", rotation.kid, t)
                self.audit.append_in(
                    conn,
                    "gate.key_rotated",
                    actor="gate",
                    at=t,
                    kid=rotation.kid,
                    retired=rotation.prev_kid,
                    public_key=rotation.public_key,
                    endorsement=rotation.endorsement,
                )
        except BaseException:
            if rotation is not None:
                self.keyring.discard_private(rotation.kid)
            raise
        # Committed: the replaced key's file goes first, whatever the reload meets.
        self.keyring.discard_private(rotation.prev_kid)
        self.keyring.reload()
        return rotation.kid

    def rekey_secrets(
        self,
        new_key_file: str | os.PathLike[str],
        *,
        generate: bool = False,
        by: str = "operator",
        now: datetime | float | None = None,
    ) -> dict[str, Any]:
        """Seal every embedded secret again under the master key in `new_key_file`
        (created first with `generate`), in one transaction with its audit record; an
        operator's act. A key that came from the state dir's key file is replaced by
        the new one once that commits; one from OPSGATE_MASTER_KEY is the operator's to
        change (the gate names the new key id, never the key)."""
        from opsgate.secrets.keys import (
            create_key_file,
            drop_staged_key,
            install_key_file,
            read_key_file,
            stage_key_file,
        )

        t = to_epoch(now)
        path = Path(new_key_file)
        current = self.secrets.master_key()
        new_key = create_key_file(path) if generate else read_key_file(path)

        def record(conn: Any, versions: int) -> None:
            self.audit.hold_head(conn)
            self.audit.append_in(
                conn,
                "secrets.rekeyed",
                actor=by,
                at=t,
                old_key_id=current.key_id,
                new_key_id=new_key.key_id,
                versions=versions,
            )

        replaced = current.source == "key file"
        if replaced:
            # Staged first: should this process die after the commit and before the
            # key file is replaced, the next start installs it (never a store sealed
            # with a key the state dir does not hold).
            stage_key_file(self.state_dir, new_key)
        versions = self.secrets.reseal(new_key, also=record)
        if replaced:
            try:
                install_key_file(self.state_dir, new_key)
            except ConfigError as exc:
                raise ConfigError(
                    f"every secret is sealed with key {new_key.key_id} now, but {exc.message}: "
                    f"the next start installs it, or copy '{path}' to the state dir's key "
                    "file by hand",
                    code="master_key_unavailable",
                ) from None
            drop_staged_key(self.state_dir)
        return {
            "versions": versions,
            "old_key_id": current.key_id,
            "new_key_id": new_key.key_id,
            "key_file_replaced": replaced,
            "key_source": current.source,
        }

    # -- identity ----------------------------------------------------------------------

    def register_agent(
        self,
        name: str,
        capabilities: list[str],
        sponsor: str,
        trust_score: int | None = None,
        *,
        ttl: timedelta | float | None = None,
        did: str | None = None,
        now: datetime | float | None = None,
        actor: str = "operator",
    ) -> Agent:
        """Register a root agent (the operator's act, `actor` naming who); returns its handle."""
        return self.agents.register(
            name, capabilities, sponsor, trust_score, ttl=ttl, did=did, now=now, actor=actor
        )

    # -- trust ---------------------------------------------------------------------------

    def trust_score(self, did: str) -> int:
        return self.trust.score(self.agents.resolve(did))

    def effective_trust(self, did: str) -> int:
        return self.trust.effective(self.agents.state(did))

    def set_trust_score(
        self,
        agent: str,
        score: int,
        *,
        reason: str,
        by: str,
        now: datetime | float | None = None,
    ) -> TrustChange:
        """An operator's audited change of an agent's score (who, why): the one way to
        lift an agent over `approval_below` before its clean history allows it."""
        did = self.agents.resolve(agent)
        return self.trust.set_score(did, score, reason=reason, actor=by, now=to_epoch(now))

    def _resolve_trust_approvers(self) -> None:
        """Resolve `trust.approvers` once (at open and on policy load), never per decision.

        An entry is a policy group name (exact, lower-cased) or a plain email; anything
        else is a configuration error, so a near-miss never silently becomes a person.
        """
        groups = {} if self.policies is None else self.policies.groups
        out: set[str] = set()
        for name in self.config.trust.approvers:
            key = name.lower()
            if key in groups:
                out.update(m.lower() for m in groups[key])
                continue
            try:
                out.add(check_email(name, "trust approver"))
            except AgentError as exc:
                raise ConfigError(exc.message, code="config_invalid") from exc
        self.trust_approvers = tuple(sorted(out))

    def _charge(
        self,
        did: str | None,
        cause: TrustEvent,
        reason: str,
        t: float,
        operation: str | None = None,
        evidence: dict[str, Any] | None = None,
        misuse: tuple[str, float] | None = None,
    ) -> bool:
        """Apply a trust event; failing to record it never turns a refusal into an allow."""
        if did is None:
            return False
        try:
            self.trust.record(
                did,
                cause,
                reason=reason,
                now=t,
                operation=operation,
                evidence=evidence,
                misuse=misuse,
            )
        except OpsgateError as exc:
            log.error("trust change not recorded", agent=did, cause=cause.value, code=exc.code)
            return False
        return True

    # -- the one path --------------------------------------------------------------------

    def authenticate(
        self,
        token: str,
        request: ProofRequest,
        *,
        now: datetime | float | None = None,
        proof: str | PossessionCheck | None = None,
    ) -> Claims:
        """Step 1 alone, for a surface's requests that run no operation (renewing or
        revoking its own credential, reading an approval's status): verified with
        the proof for `request`, refused and charged exactly as in `execute`."""
        return self._authenticate(token, to_epoch(now), proof, request)

    def _authenticate(
        self, token: object, t: float, proof: str | PossessionCheck | None, context: ProofRequest
    ) -> Claims:
        """Step 1. Misuse of a genuine credential is charged to its (proven) agent, once."""
        deferred: list[_Refusal] | None = getattr(self._batching, "refusals", None)
        try:
            return self.credential_manager.verify(
                token, now=t, proof=proof, proof_context=context, audit=deferred is None
            )
        except InvalidCredential as exc:
            d = exc.detail
            charged = bool(d.get("misuse") and d.get("agent"))
            unit = None if deferred is None else self.credential_manager.rejection_record(exc, t)
            if unit is not None and charged and self._chargeable(d.get("jti"), d.get("exp"), t):
                # Written now, before the charge that follows it (as `verify` does): once
                # per credential.
                self._commit_rejection(unit)
            elif unit is not None and deferred is not None:
                deferred.append(_Refusal(unit, closed=False))
            if charged:
                self._charge_misuse(d["agent"], d.get("jti"), d.get("exp"), exc.code, t)
            raise

    def _commit_rejection(self, unit: Unit) -> None:
        try:
            self.audit.commit(unit)
        except OpsgateError as err:  # the credential is refused either way
            _rejection_not_audited(unit, err)

    def _chargeable(self, jti: object, exp: object, t: float) -> bool:
        """Whether `_charge_misuse` would charge this credential now (or ask the store)."""
        if not isinstance(jti, str) or type(exp) is not float:
            return False  # verify() always names both for misuse; never charge unbounded
        return t < exp + MISUSE_CHARGE_WINDOW and jti not in self._misused

    def _charge_misuse(self, did: str, jti: object, exp: object, code: str, t: float) -> None:
        """Charge misuse once per credential, across restarts and replicas: whoever
        replays a leaked expired or revoked token can make it fail again, but cannot
        drain its agent's trust. The record of the charge commits with the charge.

        A credential is chargeable until MISUSE_CHARGE_WINDOW after its expiry; later
        it is refused and audited but charges nothing, so its record can be dropped.
        """
        if not self._chargeable(jti, exp, t):
            return
        assert isinstance(jti, str) and isinstance(exp, float)
        forget_after = exp + MISUSE_CHARGE_WINDOW
        if not self._charge(
            did,
            TrustEvent.CREDENTIAL_MISUSE,
            f"credential refused: {code}",
            t,
            evidence={"jti": jti},
            misuse=(jti, forget_after),
        ):
            return
        self._misused.put(jti, None)  # charged (now or before): no more round trips for it

    def _agent(self, claims: Claims) -> AgentState:
        agent = self.state.agent(claims.sub)
        assert agent is not None  # verify() checked it
        return agent

    def _decide(
        self,
        claims: Claims,
        cap: caps.Capability,
        t: float,
        *,
        environment: str | None,
        destructive: bool = False,
        findings: tuple[str, ...] = (),
        params: dict[str, Any] | None = None,
    ) -> tuple[AgentState, Decision]:
        """Steps 3 and 4: the pure authorization core, fed with fresh state."""
        agent = self._agent(claims)
        when = time.gmtime(t)  # UTC, as datetime.fromtimestamp(t, UTC), cheaper
        decision = authorize(
            AuthzRequest(
                agent=agent,
                trust=self.trust.effective(agent),
                scope=claims.parsed_scope,
                capability=cap,
                environment=environment,
                protected=self.environments.is_protected(environment),
                destructive=destructive,
                findings=findings,
                params=params or {},
                hour=when.tm_hour,
                weekday=when.tm_wday,
                minute=when.tm_min,
            ),
            self.policies,
            self.config.trust,
            self.trust_approvers,
        )
        return agent, decision

    def _score_decision(
        self, agent: AgentState, decision: Decision, capability: str, t: float
    ) -> None:
        """Step 8 for refusals: violations cost trust; every request feeds the detectors.

        Only a violation (a policy deny, out of scope, not granted) is charged: a
        refusal because the agent's own trust is too low for production (and no one
        may approve) is not a new offence, and charging it would spiral an agent
        into suspension for asking.
        """
        why = decision.violation if decision.effect == "deny" else None
        if why is not None:
            self._charge(
                agent.did,
                TrustEvent.POLICY_VIOLATION,
                f"{why}: {'; '.join(decision.reasons)}",
                t,
                operation=capability,
            )
        self.trust.observe(agent, capability, refused=why is not None, now=t)

    def authorize(
        self,
        token: str,
        capability: str,
        *,
        now: datetime | float | None = None,
        proof: str | PossessionCheck | None = None,
        params: dict[str, Any] | None = None,
    ) -> Decision:
        """Decide whether the credential may exercise `capability` now. Audited and scored.

        Raises InvalidCredential when the token does not verify and
        CapabilityError for a malformed capability; otherwise returns a Decision.
        """
        t = to_epoch(now)
        claims = self._authenticate(token, t, proof, ProofRequest.authorize(capability, params))
        with self._refusals_audited("authorize.refused", claims, capability, t):
            decided = self._authorize_decided(claims, capability, params, t)
            self.audit.commit(decided.unit)
            self._score_decision(decided.agent, decided.decision, decided.canonical, t)
            return decided.decision

    def authorize_batch(
        self, requests: Sequence[AuthorizeRequest]
    ) -> list[Decision | OpsgateError]:
        """`authorize` for several independent requests at once, each at its own time:
        each is authenticated and decided as `authorize` does, and the decisions'
        audit records, with the refusals', are written in one durable commit before
        any is returned (a refusal whose credential is charged as misuse is recorded
        before its charge, as in `authorize`). Each request's result is its Decision
        or the OpsgateError `authorize` would have raised; a failed commit fails every
        decided request of the batch with AuditError (fail closed: no decision is
        returned unrecorded), and every malformed one, as `authorize` fails it.

        For a server that decides requests on one thread: one transaction and one
        thread for many requests, instead of a thread and a turn at the group commit
        for each. The proof ids of the batch's proofs checked with
        `use_once_before_audit` are only noted while the requests are authenticated,
        and recorded in the transaction of the batch's records (`BatchProofs`): a
        request whose id is not accepted there has its records dropped and is taken
        again alone, after the batch, and refused as `authorize` refuses it; its
        decision is never written or answered. So is a request whose credential a
        request decided before it revoked.
        """
        batch = self._decide_batch(requests)
        self._commit_batch(batch, sync_later=False)
        return self.complete_authorize_batch(batch)

    def commit_authorize_batch(self, requests: Sequence[AuthorizeRequest]) -> AuthorizeBatch:
        """`authorize_batch` up to its commit, without waiting for the disk: for a
        server that decides the next batch while this one's log is synced. Nothing of
        it may be answered before `self.store.sync_log()` has returned after this
        call; then `complete_authorize_batch` gives the answers. (Until then the batch
        is in flight, as concurrent requests are: a request decided meanwhile does not
        yet see its trust charges.)"""
        batch = self._decide_batch(requests)
        self._commit_batch(batch, sync_later=True)
        return batch

    def _decide_batch(self, requests: Sequence[AuthorizeRequest]) -> AuthorizeBatch:
        """`authorize_batch`'s first half: every request authenticated and decided,
        nothing recorded yet, no proof id recorded, nothing answered."""
        proofs = self.credential_manager.proofs
        batch = AuthorizeBatch(requests, proofs.batch())
        authenticated: list[tuple[int, Claims | OpsgateError]] = []
        with proofs.noting() as noted:
            for i, req in enumerate(requests):
                before = len(noted)
                context = ProofRequest.authorize(req.capability, req.params)
                check = functools.partial(
                    self._authenticate, req.token, batch.times[i], req.proof, context
                )
                authenticated.append((i, batch.records.step(self, i, check)))
                batch.proofs.note(i, noted[before:])
        for i, claims in authenticated:
            if isinstance(claims, OpsgateError):
                batch.results[i] = claims  # refused before its proof id was noted (it is last)
                continue
            req, t = requests[i], batch.times[i]
            if not self.credential_manager.still_live(claims, t):
                batch.again.append(i)  # revoked (its agent suspended) by a request before
                continue
            got = batch.records.step(self, i, functools.partial(self._decide_one, claims, req, t))
            if isinstance(got, OpsgateError):
                batch.results[i] = got
            else:
                batch.records.decided.append((i, got[0], req.capability, t, got[1]))
        return batch

    def complete_authorize_batch(self, batch: AuthorizeBatch) -> list[Decision | OpsgateError]:
        """A committed batch's answers, once its records are durable: each decision
        written is scored, and each request whose proof id was not accepted, or whose
        credential was revoked before it was decided, is taken again alone (the
        one-at-a-time way, its id recorded alone), which refuses and charges it as
        always; their records in one more commit."""
        if batch.committed:
            self._score_written(batch.records, batch.results, batch.proofs.rejected)
        if batch.proofs.rejected or batch.again:
            rest = _BatchRecords()
            for i in sorted(batch.proofs.rejected.union(batch.again)):
                req, t = batch.requests[i], batch.times[i]
                got = rest.step(self, i, functools.partial(self._authorize_one, req, t))
                if isinstance(got, OpsgateError):
                    batch.results[i] = got
                else:
                    rest.decided.append((i, got[0], req.capability, t, got[1]))
            if self._write_records(rest, batch.results, None, sync_later=False):
                self._score_written(rest, batch.results, set())
        out: list[Decision | OpsgateError] = []
        for r in batch.results:
            assert r is not None  # every request was decided or refused above
            out.append(r)
        return out

    def _commit_batch(self, batch: AuthorizeBatch, *, sync_later: bool) -> None:
        """A decided batch's records written in one commit, bound to their requests'
        proof ids (recorded there)."""
        batch.committed = self._write_records(
            batch.records, batch.results, batch.proofs, sync_later=sync_later
        )

    def _write_records(
        self,
        records: _BatchRecords,
        results: list[Decision | OpsgateError | None],
        proofs: BatchProofs | None,
        *,
        sync_later: bool,
    ) -> bool:
        """Write a batch's refusals, then its decisions, in one commit, each bound to
        its request's proof ids (`proofs`); False when the commit failed, and then
        every decision, and every refusal that must be recorded, fails closed."""
        # The refusals' records, then the decisions': one commit for the batch (on the
        # one thread that decides every agent's requests, a commit per refusal would
        # make one agent's flood of refusals everyone's wait). Bound in the order they
        # are written (see BatchProofs).
        bind = (lambda _i, unit: unit) if proofs is None else proofs.bind
        units = [bind(i, refusal.unit) for i, refusal in records.refusals]
        units += [bind(i, one.unit) for i, *_, one in records.decided]
        if not units:
            return True
        try:
            self.audit.commit_droppable(units, sync_later=sync_later)
        except Exception as exc:  # noqa: BLE001 - every decision of the batch fails closed
            err = exc if isinstance(exc, OpsgateError) else authorize_internal(exc)
            for i, refusal in records.refusals:
                if refusal.closed:
                    results[i] = _each(err)
                else:
                    _rejection_not_audited(refusal.unit, err)
            for i, *_ in records.decided:
                results[i] = _each(err)
            if proofs is not None:
                proofs.rejected = set()  # nothing was written: none is taken again
            return False
        return True

    def _score_written(
        self,
        records: _BatchRecords,
        results: list[Decision | OpsgateError | None],
        dropped: set[int],
    ) -> None:
        """Each decision written (not dropped with its request) scored, once durable:
        its result is the request's."""
        for i, claims, capability, t, one in records.decided:
            if i not in dropped:
                scored = functools.partial(self._scored, claims, capability, t, one)
                results[i] = _typed(scored)

    def _authorize_one(self, req: AuthorizeRequest, t: float) -> tuple[Claims, _Decided]:
        """One request of a batch, authenticated and decided (its record not written)."""
        claims = self._authenticate(
            req.token, t, req.proof, ProofRequest.authorize(req.capability, req.params)
        )
        return self._decide_one(claims, req, t)

    def _decide_one(
        self, claims: Claims, req: AuthorizeRequest, t: float
    ) -> tuple[Claims, _Decided]:
        """An authenticated request of a batch, decided (its record not written)."""
        with self._refusals_audited("authorize.refused", claims, req.capability, t):
            return claims, self._authorize_decided(claims, req.capability, req.params, t)

    def _scored(self, claims: Claims, capability: str, t: float, one: _Decided) -> Decision:
        """A batch's decision once its record is durable: the trust change, as `authorize`."""
        with self._refusals_audited("authorize.refused", claims, capability, t):
            self._score_decision(one.agent, one.decision, one.canonical, t)
        return one.decision

    def _authorize_decided(
        self, claims: Claims, capability: str, params: dict[str, Any] | None, t: float
    ) -> _Decided:
        """`authorize` after authentication, up to its audit record (not yet written)."""
        if self.state.policy_mismatch:
            self._refuse_policy_mismatch()
        try:
            # Canonical before anything sees it: one case, aliases resolved.
            resolved = self.environments.resolve(caps.parse_request(capability))
            cap = resolved.capability
            if resolved.undeclared is not None and self._in_scope(claims, cap):
                resolved.check()  # out of scope, it is denied (and charged) as any other
            if params is not None:
                check_params(params)
            namespace = cap.segments[0]
            executor = self._executors.get((cap.action, namespace)) or self._executors.get(
                (cap.action, None)
            )
            environment = resolved.environment
            if (
                executor is not None
                and (params is not None or hasattr(executor, "environment_of"))
                # Scope first: a refused request never runs executor code (its schema).
                and scope_refusal(self._agent(claims), claims.parsed_scope, cap) is None
            ):
                if params is not None:
                    params = validate_params(params_model_of(executor), params, cap.action)[1]
                environment = self._configured_environment(executor, cap, environment)
        except OpsgateError as exc:
            self._audit_refusal("authorize.refused", claims, capability, exc, t)
            raise
        agent, decision = self._decide(claims, cap, t, environment=environment, params=params)
        unit = Unit(
            "authorize",
            {
                "jti": claims.jti,
                "capability": capability,
                "decision": decision.effect,
                "reasons": list(decision.reasons),
                "errors": list(decision.errors) or None,
            },
            actor=claims.sub,
            at=t,
        )
        # The detectors see one spelling (the canonical capability).
        return _Decided(agent, decision, str(cap), unit)

    def _configured_environment(
        self, executor: Executor, cap: caps.Capability, named: str | None
    ) -> str | None:
        """The environment an executor's configuration gives the resource (a database
        target's), checked as a plan's is: `authorize` then decides as `execute` does,
        never a production target as environment-less or as the environment its name
        happens to spell. `named`: the capability's own."""
        environment_of = getattr(executor, "environment_of", None)
        if not callable(environment_of):
            return named
        configured = environment_of(cap.resource)
        return self._environment(None if configured is None else str(configured), named, str(cap))

    def register_executor(
        self, action: str, executor: Executor, *, namespace: str | None = None
    ) -> None:
        """Route operations with this action to `executor` (plan pure, run does the I/O).

        With `namespace`, only resources whose first segment it is (`read:secrets/...`
        and `read:monitoring/...` are different executors); such a route wins over
        the action's catch-all one. The executor must declare its params schema
        (`params_model`), and one that touches files (`forbid_paths`) is told to keep
        away from the state dir: either is a ConfigError here, before any operation
        reaches it.
        """
        caps.parse_request(f"{action}:x")  # the action must be a valid capability action
        if namespace is not None:
            cap = caps.parse_request(f"{action}:{namespace}")
            if len(cap.segments) != 1:
                raise ConfigError("an executor namespace is one resource segment")
        params_model_of(executor)
        forbid = getattr(executor, "forbid_paths", None)
        if callable(forbid):
            forbid((self.state_dir,))
        attach = getattr(executor, "attach_store", None)
        if callable(attach):
            attach(self.store)
        self._executors[(action, namespace)] = executor
        self._recover(action, executor)

    def _recover(self, action: str, executor: Executor) -> None:
        """Repair what a killed process left half done (an executor's `recover`), and
        audit each repair: a run that never wrote its outcome gets one here."""
        recover = getattr(executor, "recover", None)
        if not callable(recover):
            return
        t = time.time()
        for repaired in recover(now=t):
            self.audit.append(
                "operation.recovered",
                actor="gate",
                at=t,
                action=action,
                **{k: v for k, v in repaired.items() if k not in ("action", "actor", "at")},
            )

    def registered_executor(self, action: str, namespace: str | None = None) -> Executor | None:
        """The executor routed for `action` (in `namespace`, else the catch-all), if any."""
        return self._executors.get((action, namespace)) or self._executors.get((action, None))

    def _in_scope(self, claims: Claims, cap: caps.Capability) -> bool:
        return scope_refusal(self._agent(claims), claims.parsed_scope, cap) is None

    def _operation_capability(self, operation: Operation) -> Resolved:
        """The capability an operation needs, from its shape alone (no executor code):
        canonical (one case, aliases resolved); `_plan` refuses an undeclared environment."""
        if not isinstance(operation, Operation):
            raise OperationError("operation must be an opsgate.Operation", code="operation_invalid")
        if not isinstance(operation.action, str) or not isinstance(operation.resource, str):
            raise OperationError(
                "operation action and resource must be text", code="operation_invalid"
            )
        resolved = self.environments.resolve(caps.parse_request(operation.capability))
        if not isinstance(operation.params, dict) or not isinstance(operation.dry_run, bool):
            raise OperationError(
                "operation params must be a mapping and dry_run a bool", code="operation_invalid"
            )
        check_params(operation.params)
        return resolved

    def _required(self, capability: str) -> caps.Capability:
        """A capability an executor's plan also needs, exactly as it will be used: an
        alias or another spelling would check one name and use another."""
        cap = self.environments.resolve(caps.parse_request(capability)).check().capability
        if str(cap) != capability:
            raise OperationError(
                f"{safe_text(capability)!r} must be written as {safe_text(str(cap))!r}",
                code="params_invalid",
            )
        return cap

    def _executor_for(self, action: str, resource: str) -> Executor:
        """The executor of the resource's namespace for this action, else the action's."""
        namespace = resource.split("/", 1)[0]
        executor = self._executors.get((action, namespace)) or self._executors.get((action, None))
        if executor is None:
            section = _EXECUTOR_SECTIONS.get(action)
            hint = f" (configure {section} in opsgate.yaml, or register one)" if section else ""
            raise OperationError(
                f"no executor is registered for action {action!r}{hint}",
                code="executor_missing",
            )
        return executor

    def plan(self, operation: Operation) -> Plan:
        """Step 2: the executor's plan (what would happen, and its digest).

        The operator's view: no credential is checked here. Agents reach it only
        through `execute`, which checks scope and grants first.
        """
        return self._plan(operation)[0]

    def _plan(
        self, operation: Operation, resolved: Resolved | None = None
    ) -> tuple[Plan, dict[str, Any]]:
        """The plan, and the typed params (defaults filled in) policy is to see;
        `resolved`: the operation's capability as `_check_scope` already resolved it."""
        if resolved is None:
            resolved = self._operation_capability(operation)
        resolved = resolved.check()
        executor = self._executor_for(operation.action, operation.resource)
        if operation.secret is not None and (
            not isinstance(operation.secret, SecretValue)
            or not getattr(executor, "accepts_secret", False)
        ):
            raise OperationError(
                f"{operation.action!r} takes no secret value (Operation.secret)",
                code="operation_invalid",
            )
        given, typed = validate_params(
            params_model_of(executor), operation.params, operation.action
        )
        # The executor plans (and an approval binds) the canonical resource: one case,
        # aliases resolved, so `prod/web` and `production/web` are one place.
        operation = dataclasses.replace(
            operation, resource=resolved.capability.resource, params=given
        )
        try:
            plan = executor.plan(operation)
        except OpsgateError:
            raise
        except Exception as exc:  # an executor bug or its I/O: typed, message withheld
            raise OperationError(
                f"the {operation.action!r} executor could not plan: {exc.__class__.__name__}",
                code="plan_failed",
            ) from exc
        if not isinstance(plan, Plan):
            raise OperationError("the executor's plan is not a Plan", code="plan_failed")
        plan_findings(plan)  # a malformed findings list is the executor's plan error
        # What is authorized is the operation the agent asked for, exactly.
        if plan.operation != operation or plan.capability != operation.capability:
            raise OperationError("the executor's plan is for another operation", code="plan_failed")
        environment = self._environment(plan.environment, resolved.environment, plan.capability)
        if environment is not None and environment != plan.environment:
            plan = plan.in_environment(environment)
        return plan, typed

    def _environment(self, given: str | None, named: str | None, capability: str) -> str | None:
        """The environment policy and the trust gate see, from the one an executor gives
        (its plan's, or its configuration's for a resource) and the one the capability
        names: an executor may supply one the capability lacks, never another than it
        names, and never an undeclared one, so production is never downgraded."""
        if given is None:
            return named
        canonical = self.environments.canonical_name(given)
        if canonical is None:
            raise CapabilityError(
                f"the executor planned environment {safe_text(given)!r} for "
                f"{capability!r}, which is not declared",
                code="environment_undeclared",
            )
        if named is not None and canonical != named:
            raise OperationError(
                f"the executor planned environment {canonical!r} for {capability!r}, "
                f"which names {named!r}",
                code="plan_failed",
            )
        return canonical

    def execute(
        self,
        token: str,
        operation: Operation,
        *,
        now: datetime | float | None = None,
        proof: str | PossessionCheck | None = None,
        approval_id: str | None = None,
    ) -> Outcome | PendingApproval:
        """Run `operation` through the one path. Returns its Outcome, or PendingApproval.

        Raises InvalidCredential (step 1), OperationError with code
        `operation_denied` (steps 3-4), ApprovalError (step 5), AuditError (step 6).
        """
        t = to_epoch(now)
        if not isinstance(operation, Operation):
            raise OperationError("operation must be an opsgate.Operation", code="operation_invalid")
        claims = self._authenticate(token, t, proof, ProofRequest.execute(operation, approval_id))
        with self._refusals_audited("operation.refused", claims, _asked(operation), t):
            return self._execute(claims, operation, t, approval_id, token)

    @contextlib.contextmanager
    def _refusals_audited(
        self, event: str, claims: Claims, capability: object, t: float, **extra: Any
    ) -> Iterator[None]:
        """Around everything after authentication: a refusal that no step recorded is
        recorded here (once), and anything but an OpsgateError becomes an audited
        InternalError. Only a failing audit write itself goes unrecorded."""
        try:
            yield
        except OpsgateError as exc:
            if not exc.audited and not isinstance(exc, AuditError):
                self._audit_refusal(event, claims, capability, exc, t, **extra)
            raise
        except Exception as exc:
            err = internal(event.split(".")[0], exc)
            self._audit_refusal(event, claims, capability, err, t, **extra)
            raise err from exc

    def _execute(
        self,
        claims: Claims,
        operation: Operation,
        t: float,
        approval_id: str | None,
        token: str | None = None,
    ) -> Outcome | PendingApproval:
        """Steps 2-8 for an authenticated caller (`execute`, and `resume` with its approval)."""
        if self.state.policy_mismatch:
            self._refuse_policy_mismatch()
        agent, resolved = self._check_scope(claims, operation, t)
        cap = resolved.capability
        plan, params = self._plan_checked(claims, agent, operation, t, resolved)
        agent, decision = self._decide(
            claims,
            cap,
            t,
            environment=plan.environment,
            destructive=plan.destructive,
            findings=plan_findings(plan),
            params=params,
        )
        decision = self._with_required(claims, plan, decision, t)
        if decision.effect == "deny":
            self._deny_operation(claims, agent, decision, plan.capability, plan.digest, t)
        if operation.dry_run:
            return self._dry_run(claims, plan, decision, t)
        if decision.effect == "require_approval" and approval_id is None:
            return self._request_approval(claims, agent, plan, decision, t)
        if approval_id is not None:
            self._consume_approval(approval_id, agent, plan, decision, t)
        attempt = self._attempt(claims, agent, plan, decision, t, approval_id)
        ran, done_at, interrupted = self._run(claims, agent, plan, attempt, t, approval_id, token)
        outcome = self._audit_outcome_and_score(claims, agent, plan, attempt, ran, done_at)
        self.trust.observe(agent, plan.capability, refused=False, now=t)
        if interrupted is not None:
            raise interrupted
        return outcome

    def _check_scope(
        self, claims: Claims, operation: Operation, t: float
    ) -> tuple[AgentState, Resolved]:
        """Step 3 on the capability alone, before any executor code runs: a refused
        request never reaches a plan, so it cannot learn anything an executor would
        read (whether an artifact exists, its digest). A malformed request is an
        audited refusal."""
        try:
            resolved = self._operation_capability(operation)
            self._executor_for(operation.action, operation.resource)  # a lookup, no executor code
        except OpsgateError as exc:
            self._audit_refusal("operation.refused", claims, _asked(operation), exc, t)
            raise
        cap = resolved.capability
        agent = self._agent(claims)
        refusal = scope_refusal(agent, claims.parsed_scope, cap)
        if refusal is not None:
            self._deny_operation(claims, agent, refusal, str(cap), None, t)
        return agent, resolved

    def _plan_checked(
        self,
        claims: Claims,
        agent: AgentState,
        operation: Operation,
        t: float,
        resolved: Resolved,
    ) -> tuple[Plan, dict[str, Any]]:
        """Step 2, and step 3 for what the plan requires besides its capability (a
        secret handed to a command must be covered like the operation itself)."""
        try:
            plan, typed_params = self._plan(operation, resolved)
            required = [self._required(c) for c in plan.requires]
        except OpsgateError as exc:
            self._audit_refusal("operation.refused", claims, _asked(operation), exc, t)
            raise
        for needed in required:
            refusal = scope_refusal(agent, claims.parsed_scope, needed)
            if refusal is not None:
                self._deny_operation(claims, agent, refusal, plan.capability, plan.digest, t)
        return plan, typed_params

    def _with_required(self, claims: Claims, plan: Plan, decision: Decision, t: float) -> Decision:
        """What the plan also requires (a secret handed to a deploy's command) is decided
        like a request of its own: policy and the trust gate see it, so an agent hands
        over only what it could read itself. A deny denies the operation; an approval
        it needs is added to the operation's."""
        if decision.effect == "deny":
            return decision
        for capability in plan.requires:
            resolved = self.environments.resolve(caps.parse_request(capability))
            _, needed = self._decide(
                claims, resolved.capability, t, environment=resolved.environment
            )
            reasons = tuple(f"{capability} (required): {r}" for r in needed.reasons)
            if needed.effect == "deny":
                return dataclasses.replace(needed, reasons=reasons)
            if needed.effect != "require_approval":
                continue
            if decision.effect == "allow":
                decision = dataclasses.replace(needed, reasons=(*decision.reasons, *reasons))
                continue
            expiry = [e for e in (decision.expires_in_seconds, needed.expires_in_seconds) if e]
            decision = dataclasses.replace(
                decision,
                reasons=(*decision.reasons, *reasons),
                matched=(*decision.matched, *needed.matched),
                approvers=tuple(dict.fromkeys((*decision.approvers, *needed.approvers))),
                min_approvals=max(decision.min_approvals, needed.min_approvals),
                expires_in_seconds=min(expiry) if expiry else None,
                requirements=tuple(dict.fromkeys((*decision.requirements, *needed.requirements))),
            )
        return decision

    def _dry_run(self, claims: Claims, plan: Plan, decision: Decision, t: float) -> Outcome:
        """The plan and the decision, audited; nothing runs."""
        self.audit.append(
            "operation.dry_run",
            actor=claims.sub,
            at=t,
            capability=plan.capability,
            digest=plan.digest,
            decision=decision.effect,
        )
        return Outcome(
            "dry_run", plan.summary, {"plan": plan.to_dict(), "decision": decision.to_dict()}
        )

    def _request_approval(
        self, claims: Claims, agent: AgentState, plan: Plan, decision: Decision, t: float
    ) -> PendingApproval:
        """Step 5 without an approval: a request bound to the plan's digest (and to the
        credential that asked: one its agent's cut revokes never runs it)."""
        self.trust.observe(agent, plan.capability, refused=False, now=t)
        return self.approvals.create(
            agent=agent,
            sponsors=self._sponsors(agent),
            plan=plan,
            decision=decision,
            now=t,
            asked_with_iat=claims.iat,
        )

    def _consume_approval(
        self, approval_id: str, agent: AgentState, plan: Plan, decision: Decision, t: float
    ) -> None:
        """Step 5 with an approval: used once, for this plan's digest, by its requester.
        Where policy still requires approval, its decisions must meet the current
        policy's requirements."""
        if decision.effect == "require_approval":
            request = self._approval_for(approval_id, agent.did, t)
            problem = None if request.status != "approved" else _unmet(request, decision, t)
            if problem is not None:
                self._refuse_approval(
                    ApprovalError(
                        f"approval {approval_id!r} does not meet the current policy's "
                        f"requirements: {problem}",
                        code="approval_insufficient",
                    ),
                    agent.did,
                    approval_id,
                    t,
                )
        self.approvals.consume(approval_id, digest=plan.digest, requester=agent.did, now=t)

    def _deny_operation(
        self,
        claims: Claims,
        agent: AgentState,
        decision: Decision,
        capability: str,
        digest: str | None,
        t: float,
    ) -> NoReturn:
        """A refused operation: audited, charged when it is a violation, raised."""
        refused = OperationError(
            f"operation {capability!r} denied: {'; '.join(decision.reasons)}",
            code="operation_denied",
            decision=decision,
        )
        self.audit.append(
            "operation.denied",
            actor=claims.sub,
            at=t,
            jti=claims.jti,
            capability=capability,
            digest=digest,
            reasons=list(decision.reasons),
            errors=list(decision.errors) or None,
        )
        refused.audited = True  # a failed charge below must not record it twice
        self._score_decision(agent, decision, capability, t)
        raise refused

    def resume(
        self,
        approval_id: str,
        token: str,
        *,
        now: datetime | float | None = None,
        proof: str | PossessionCheck | None = None,
        secret: SecretValue | None = None,
    ) -> Outcome | PendingApproval:
        """Execute an approved request: steps 1-4 again with fresh state, same digest, once.

        The caller is authenticated before anything about the approval is read, so
        an unauthenticated caller learns nothing about which approvals exist. A secret
        write's value is never stored with its request: the caller supplies it again
        as `secret`, and only the value the approval's digest binds is written.
        """
        t = to_epoch(now)
        claims = self._authenticate(token, t, proof, ProofRequest.resume(approval_id, secret))
        with self._refusals_audited(
            "operation.refused", claims, None, t, approval=safe_text(approval_id)
        ):
            request = self._approval_for(approval_id, claims.sub, t)
            op = request.operation
            operation = Operation(
                op["action"], op["resource"], dict(op.get("params") or {}), secret=secret
            )
            return self._execute(claims, operation, t, approval_id, token)

    def _approval_for(self, approval_id: str, requester: str, t: float) -> ApprovalRequest:
        """The approval request, if it exists and belongs to `requester`; refusals audited."""
        try:
            request = self.approvals.get(approval_id, now=t)
        except ApprovalError as exc:
            self._refuse_approval(exc, requester, approval_id, t)
        if request.requester_did != requester:
            self._refuse_approval(
                ApprovalError(
                    f"approval {approval_id!r} was requested by another agent",
                    code="approval_not_yours",
                ),
                requester,
                approval_id,
                t,
            )
        return request

    def _refuse_approval(
        self, exc: ApprovalError, requester: str, approval_id: object, t: float
    ) -> NoReturn:
        if exc.audited:  # the approval service recorded it
            raise exc
        exc.audited = True
        self.audit.append(
            "approval.refused",
            actor=requester,
            at=t,
            approval=safe_text(approval_id),
            code=exc.code,
            reason=exc.message,
        )
        raise exc

    def wait_for_approval(self, approval_id: str, timeout: float = 60.0) -> ApprovalRequest:
        return self.approvals.wait(approval_id, timeout=timeout)

    def _audit_refusal(
        self,
        event: str,
        claims: Claims,
        capability: object,
        exc: OpsgateError,
        t: float,
        **extra: Any,
    ) -> None:
        """An authenticated request refused before any decision (malformed): audited,
        not charged (a mistake is not an escalation)."""
        exc.audited = True
        unit = Unit(
            event,
            dict(
                jti=claims.jti,
                capability=None if capability is None else safe_text(capability),
                code=exc.code,
                reason=exc.message,
                **extra,
            ),
            actor=claims.sub,
            at=t,
        )
        deferred: list[_Refusal] | None = getattr(self._batching, "refusals", None)
        if deferred is not None:
            deferred.append(_Refusal(unit, closed=True))  # written with the batch
            return
        self.audit.commit(unit)

    def _sponsors(self, agent: AgentState) -> tuple[str, ...]:
        """Who may not approve this agent's requests: the sponsor of every agent in its
        chain and, where a sponsor is a policy group, each of the group's members."""
        direct = {agent.sponsor}
        for did in agent.ancestors:
            st = self.state.agent(did)
            if st is not None:
                direct.add(st.sponsor)
        groups = {} if self.policies is None else self.policies.groups
        sponsors = set(direct)
        for sponsor in direct:
            sponsors.update(m.lower() for m in groups.get(sponsor.lower(), ()))
        return tuple(sorted(sponsors))

    def _attempt(
        self,
        claims: Claims,
        agent: AgentState,
        plan: Plan,
        decision: Decision,
        t: float,
        approval_id: str | None,
    ) -> AuditRecord | Unit:
        """Step 6: the attempt record; if it cannot be written nothing runs. The
        record and the run row (this process runs it) commit together, durably,
        before the run.

        An operation that changes nothing (`Plan.reads_only`: a secret read, a
        monitoring view) gets its attempt back unwritten: it commits with the outcome,
        in one durable transaction, before anything the read produced leaves the gate
        (a read whose records cannot be written returns nothing). There is then no
        window with an attempt and no outcome, so no run row either.
        """
        unit = Unit(
            "operation.attempt",
            {
                "jti": claims.jti,
                "capability": plan.capability,
                "digest": plan.digest,
                "decision": decision.effect,
                "approval": approval_id,
                "reasons": list(decision.reasons),
            },
            actor=claims.sub,
            at=t,
        )
        if plan.reads_only:
            return unit
        started = self._runs.started(agent.did, plan.capability, plan.digest)
        return self.audit.commit(dataclasses.replace(unit, then=started))

    def _commit_outcome(self, attempt: AuditRecord | Unit, outcome: Unit) -> AuditRecord:
        """The outcome's record, naming its attempt's seq (and ending the run row); a
        read's attempt, still unwritten, commits with it in one transaction."""
        if isinstance(attempt, AuditRecord):
            return self.audit.commit(
                dataclasses.replace(
                    outcome,
                    fields={"attempt_seq": attempt.seq, **outcome.fields},
                    then=self._runs.finished(attempt.seq),
                )
            )
        linked = dataclasses.replace(outcome, previous_seq_field="attempt_seq")
        return self.audit.commit_all([attempt, linked])[1]

    def _run(
        self,
        claims: Claims,
        agent: AgentState,
        plan: Plan,
        attempt: AuditRecord | Unit,
        t: float,
        approval_id: str | None,
        token: str | None,
    ) -> tuple[Outcome, float, BaseException | None]:
        """Step 7: (outcome, when it ended, an interruption to raise once it is recorded).

        An executor that refuses before changing anything (`RunRefused`: a lock held
        by another run) gets a `refused` outcome record, no trust change, and its
        error raised to the caller.
        """
        executor = self._executor_for(plan.operation.action, plan.operation.resource)
        context = RunContext(agent.did, agent.name, approval_id, claims.exp - t, token)
        started = time.monotonic()
        try:
            outcome, interrupted = run_executor(executor, plan, context)
        except RunRefused as exc:
            self._commit_outcome(
                attempt,
                Unit(
                    "operation.outcome",
                    {
                        "capability": plan.capability,
                        "digest": plan.digest,
                        "outcome": "refused",
                        "code": exc.code,
                        "summary": exc.message,
                    },
                    actor=claims.sub,
                    at=t + (time.monotonic() - started),
                ),
            )
            exc.audited = True
            raise
        return outcome, t + (time.monotonic() - started), interrupted  # the caller's clock

    def _audit_outcome_and_score(
        self,
        claims: Claims,
        agent: AgentState,
        plan: Plan,
        attempt: AuditRecord | Unit,
        outcome: Outcome,
        done_at: float,
    ) -> Outcome:
        """Step 8: the outcome record and the agent's trust change, in one transaction;
        then the detectors. Returns the outcome with its audit seq."""
        if outcome.status == "failed":
            # A failure the executor did not classify is still a failed deploy/migration.
            kind = failure_kind(plan.operation.action, outcome.failure_kind)
            outcome = dataclasses.replace(outcome, failure_kind=kind)
            cause = failure_event(kind)
        elif plan.reads_only:
            # A read changes nothing and risks nothing: like a dry run it earns no
            # credit, or distinct reads (paths, versions, views) would lift an agent
            # to the approval line at no risk.
            cause = None
        else:
            cause = TrustEvent.SUCCESS
        score_change = (
            None
            if cause is None
            else self.trust.score_change(
                agent.did,
                cause,
                reason=outcome.summary or outcome.status,
                now=done_at,
                operation=plan.capability,
                digest=plan.digest,
            )
        )
        # One unit of work: the outcome's record, the agent's score change and the end
        # of its run row commit together, or none does.
        record = self._commit_outcome(
            attempt,
            Unit(
                "operation.outcome",
                {
                    "capability": plan.capability,
                    "digest": plan.digest,
                    "outcome": outcome.status,
                    "summary": outcome.summary,
                    "code": _failure_code(outcome),
                    "detail": outcome.audit_fields or None,
                },
                actor=claims.sub,
                at=done_at,
                change=score_change,
            ),
        )
        self.trust.after_change({**record.event, "seq": record.seq}, done_at)
        return Outcome(
            outcome.status, outcome.summary, outcome.detail, outcome.failure_kind, record.seq
        )
