"""Configuration: every limit and allow-list lives here, in one typed object.

Loaded from `<state_dir>/opsgate.yaml` (optional) with `OPSGATE_*` environment
overrides. Unknown keys and out-of-range values are load errors, never clamps.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from opsgate.errors import ConfigError

#: Nobody may configure a credential lifetime above this, whatever the file says.
HARD_TTL_CEILING_MINUTES = 60
#: Clock skew tolerated on exp/nbf; configurable downwards only.
MAX_LEEWAY_SECONDS = 30
#: JWS algorithm names for an Ed25519 signature: "EdDSA" (RFC 8037) and the fully
#: specified "Ed25519" (RFC 9864). Every gate key is Ed25519, so each fits every key;
#: nothing else (Ed448, none, HMAC, RSA, ECDSA) is ever accepted.
ED25519_ALGORITHMS = ("EdDSA", "Ed25519")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Algorithms, lifetimes and size caps checked on the hot path."""

    allowed_algorithms: tuple[str, ...] = ED25519_ALGORITHMS
    # What new credentials (and the JWKS) say. "EdDSA" because most JOSE libraries
    # in use verify only that name today (PyJWT 2.15 among them); see the README.
    signing_algorithm: Literal["EdDSA", "Ed25519"] = "EdDSA"
    default_ttl_minutes: int = Field(15, ge=1, le=HARD_TTL_CEILING_MINUTES)
    max_ttl_minutes: int = Field(15, ge=1, le=HARD_TTL_CEILING_MINUTES)
    leeway_seconds: int = Field(5, ge=0, le=MAX_LEEWAY_SECONDS)
    max_token_bytes: int = Field(4096, ge=512, le=65536)
    max_scope_entries: int = Field(64, ge=1, le=1024)
    max_capability_chars: int = Field(256, ge=16, le=4096)
    max_delegation_depth: int = Field(3, ge=0, le=16)
    max_capabilities_per_agent: int = Field(256, ge=1, le=10000)
    # Policy language bounds (enforced by the policy compiler).
    max_condition_chars: int = Field(2000, ge=16, le=100_000)
    max_expression_depth: int = Field(32, ge=4, le=256)
    max_expression_nodes: int = Field(500, ge=8, le=100_000)
    max_rules: int = Field(10_000, ge=1, le=1_000_000)
    max_policy_file_bytes: int = Field(2_000_000, ge=1024, le=100_000_000)
    # How far a replica's clock may lag or lead the database's and still have
    # proofs of possession accepted; used proofs are kept that much longer.
    proof_clock_skew_seconds: int = Field(300, ge=0, le=3600)

    @model_validator(mode="after")
    def _check(self) -> Limits:
        algs = tuple(self.allowed_algorithms)
        if not algs or len(set(algs)) != len(algs) or not set(algs) <= set(ED25519_ALGORITHMS):
            raise ValueError("allowed_algorithms: one or both of 'EdDSA' and 'Ed25519', each once")
        if self.signing_algorithm not in algs:
            raise ValueError("signing_algorithm must be one of allowed_algorithms")
        if self.default_ttl_minutes > self.max_ttl_minutes:
            raise ValueError("default_ttl_minutes must not exceed max_ttl_minutes")
        return self


class TrustDeltas(_Strict):
    success: int = Field(5, ge=0, le=1000)
    failed_deployment: int = Field(-40, ge=-1000, le=0)
    failed_migration: int = Field(-40, ge=-1000, le=0)
    policy_violation: int = Field(-75, ge=-1000, le=0)
    unusual_access: int = Field(-50, ge=-1000, le=0)
    credential_misuse: int = Field(-150, ge=-1000, le=0)


class AnomalyConfig(_Strict):
    """Parameters of the pure anomaly detectors (see opsgate.trust)."""

    rate_window_seconds: int = Field(60, ge=1)
    rate_factor: float = Field(5.0, gt=1.0)
    rate_min_events: int = Field(30, ge=1)
    baseline_half_life_seconds: int = Field(3600, ge=60)
    new_resource_warmup_events: int = Field(50, ge=0)
    active_hours: tuple[int, int] | None = None  # [start, end) UTC hours; None = always
    probe_window_seconds: int = Field(60, ge=1)
    probe_refusals: int = Field(5, ge=1)
    cooldown_seconds: int = Field(300, ge=0)

    @model_validator(mode="after")
    def _check_hours(self) -> AnomalyConfig:
        if self.active_hours is not None:
            start, end = self.active_hours
            if not (0 <= start <= 23 and 0 <= end <= 24) or start == end:
                raise ValueError(
                    "active_hours must be [start, end) with 0 <= start <= 23, end <= 24"
                )
        return self


class CreditRules(_Strict):
    """What stops an agent from farming trust (see opsgate.trust.scoring.credit)."""

    # Positive points one agent may earn in a 24 h window (0: none at all).
    max_credit_per_day: int = Field(25, ge=0, le=1000)
    # Days without a loss before credit may lift an agent to approval_below or over
    # it; an operator's `trust set` is the only other way up (0 turns the rule off).
    clean_history_days: float = Field(7.0, ge=0, le=365)


class TrustConfig(_Strict):
    deltas: TrustDeltas = TrustDeltas()
    credit: CreditRules = CreditRules()
    # Who approves production work of an agent under approval_below (emails or policy groups).
    approvers: tuple[str, ...] = ()
    approval_below: int = Field(800, ge=0, le=1000)
    suspend_below: int = Field(500, ge=0, le=1000)
    # A new root agent has earned nothing: production needs approval (below
    # approval_below), yet one mistake does not suspend it and its sub-agents.
    default_score: int = Field(700, ge=0, le=1000)
    anomalies: AnomalyConfig = AnomalyConfig()

    @model_validator(mode="after")
    def _check(self) -> TrustConfig:
        if self.suspend_below > self.approval_below:
            raise ValueError("suspend_below must not exceed approval_below")
        if self.default_score < self.suspend_below:
            raise ValueError("default_score must not be below suspend_below")
        return self


class SmtpConfig(_Strict):
    host: str
    port: int = Field(25, ge=1, le=65535)
    sender: str
    starttls: bool = False
    # The CA bundle the mail server's STARTTLS certificate is checked against (PEM);
    # default: the system's. The certificate is always checked, name included.
    ca_file: str | None = None
    username: str | None = None
    password_env: str | None = None  # name of the variable holding the password, never the password

    @model_validator(mode="after")
    def _password_over_tls(self) -> SmtpConfig:
        # smtplib logs in over whatever connection it has: without STARTTLS the
        # password would cross the network in clear (a relay on this host aside).
        if self.username is not None and not self.starttls and not _loopback(self.host):
            raise ValueError(
                "a username needs starttls: true (the password would be sent in clear) "
                "unless the server is on this host"
            )
        return self


def _loopback(host: str) -> bool:
    """`localhost` or a loopback address: traffic that never leaves this host."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy_url(value: str | None) -> str | None:
    """An http(s)://host[:port] proxy, or None (credentials never go in it)."""
    if value is not None and not re.match(
        r"https?://[A-Za-z0-9.\[\]:-]+(:[0-9]{1,5})?/?\Z", value, re.ASCII
    ):
        raise ValueError("proxy must be http(s)://host[:port] (no credentials in it)")
    return value


class NotificationsConfig(_Strict):
    """Where approval requests and decisions are announced."""

    webhooks: tuple[str, ...] = ()
    smtp: SmtpConfig | None = None
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    # The HTTP(S) proxy webhooks go through, if any: only this one. The process
    # environment's proxy settings are never consulted (a webhook URL is a secret:
    # whoever holds it can post to the channel).
    proxy: str | None = None

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        return _proxy_url(value)

    @field_validator("webhooks")
    @classmethod
    def _webhooks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # The URL itself is never quoted back: whoever holds it can post to the channel.
        for url in value:
            try:
                parts = urlsplit(url)
                ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                ok = False
            if not ok or not url.isprintable() or any(c.isspace() for c in url):
                raise ValueError("each webhook must be an http(s):// URL with a host (not shown)")
        return value


#: A database target's name is one capability segment (`migrate:database/<name>`).
DATABASE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z", re.ASCII)
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+\Z", re.ASCII)


class DatabaseTarget(_Strict):
    """A database migrations may run against, and the only directory they come from."""

    # May hold a password: SecretStr keeps it out of reprs and dumps.
    url: SecretStr
    migrations: str
    # Unlabelled targets are treated as production (the trust gate applies).
    environment: str = "production"
    lock_timeout_seconds: float = Field(5.0, gt=0, le=600)
    statement_timeout_seconds: float = Field(600.0, gt=0, le=86_400)
    lock_wait_seconds: float = Field(10.0, ge=0, le=3600)
    # A database secrets engine role: each run gets its own short-lived user (vault).
    vault_role: str | None = None
    # The longest a leased user lives; never longer than the asking credential has left.
    lease_ttl_seconds: int = Field(900, ge=10, le=86_400)

    @field_validator("vault_role")
    @classmethod
    def _vault_role(cls, value: str | None) -> str | None:
        if value is not None and not _SEGMENT.match(value):
            raise ValueError("vault_role must be one path segment ([A-Za-z0-9._-]+)")
        return value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        if not _SEGMENT.match(value):
            raise ValueError("environment must be one capability segment")
        return value

    @field_validator("migrations")
    @classmethod
    def _migrations(cls, value: str) -> str:
        if not value or "\x00" in value:
            raise ValueError("migrations must be a directory path")
        return value


#: An environment, app or version as it reaches a path or a command line: one plain
#: word, never an option (`-x`), a path step (`.`, `..`) or two arguments.
DEPLOY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z", re.ASCII)
#: Names of variables the operator may give a child (static env, secrets).
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}\Z", re.ASCII)
#: A secret path as it is read (`read:secrets/<env>/<name>...`): lower-case capability
#: segments, so the path read is exactly the one the capability check covered.
SECRET_PATH = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)+\Z", re.ASCII)
#: An app or environment named in the deploy config: lower case, as capabilities are.
_DEPLOY_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z", re.ASCII)
#: Placeholders every command template may use; `vars` adds the operator's own.
COMMAND_PLACEHOLDERS = ("app", "env", "version", "artifact")
_VAR_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z", re.ASCII)


def _deploy_name(value: str, what: str) -> str:
    if not _DEPLOY_KEY.match(value):
        raise ValueError(f"{what} {value[:64]!r} must match [a-z0-9][a-z0-9._-]* (lower case)")
    return value


def _argv(value: object, what: str) -> tuple[str, ...]:
    """A command as a list of arguments; a string is split like a shell would (no shell runs)."""
    import shlex

    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{what} must be a non-empty list of arguments")
    if any(not isinstance(a, str) or "\x00" in a for a in value):
        raise ValueError(f"{what}: every argument must be text without NUL")
    program = value[0]
    if not program or ("/" in program and not program.startswith("/")):
        # A relative path would resolve against the working directory (a release's files).
        raise ValueError(f"{what}: the program must be a name found on PATH or an absolute path")
    return tuple(value)


def template_fields(argv: tuple[str, ...], what: str) -> set[str]:
    """The placeholders of a command template; anything but `{name}` is refused.

    Only plain names: no attribute or index access (`{app.x}`, `{app[0]}`), conversions
    or format specs, so rendering can never reach past the validated value.
    """
    import string

    names: set[str] = set()
    for arg in argv:
        try:
            parsed = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise ValueError(f"{what}: {exc} in {arg[:64]!r}") from None
        for _literal, field, spec, conversion in parsed:
            if field is None:
                continue
            if not _VAR_NAME.match(field) or spec or conversion:
                raise ValueError(f"{what}: placeholder {{{field[:32]}}} must be a plain name")
            names.add(field)
    return names


class HealthCheck(_Strict):
    """The health gate run after a switch: an HTTP URL or a command, never both.

    Passed after `successes` consecutive good probes; failed after `failure_threshold`
    consecutive bad answers (wrong status, non-zero exit); a probe that times out or
    cannot connect is inconclusive: it never counts as a success, and when
    `deadline_seconds` passes without a pass the gate has failed.
    """

    url: str | None = None
    command: tuple[str, ...] | None = None
    expect_status: tuple[int, ...] = (200,)
    interval_seconds: float = Field(2.0, ge=0, le=3600)
    timeout_seconds: float = Field(5.0, gt=0, le=600)
    failure_threshold: int = Field(3, ge=1, le=1000)
    successes: int = Field(1, ge=1, le=1000)
    deadline_seconds: float = Field(60.0, gt=0, le=86_400)

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: object) -> object:
        return None if value is None else _argv(value, "health command")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import httpx

        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError("health url is not a valid url") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("health url must be http:// or https:// with a host")
        if url.userinfo:
            raise ValueError("health url must not hold credentials (it is shown in plans)")
        return value

    @field_validator("expect_status")
    @classmethod
    def _status(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 100 <= s <= 599 for s in value):
            raise ValueError("expect_status must list HTTP status codes (100-599)")
        return value

    @model_validator(mode="after")
    def _check(self) -> HealthCheck:
        if (self.url is None) == (self.command is None):
            raise ValueError("a health check has exactly one of url and command")
        if self.command is not None and template_fields(self.command, "health command"):
            raise ValueError(
                "health command takes no placeholders: it gets OPSGATE_DEPLOY_* variables"
            )
        if self.timeout_seconds > self.deadline_seconds:
            raise ValueError("health timeout_seconds must not exceed deadline_seconds")
        return self


class CommandBackend(_Strict):
    """An environment deployed by running a configured command (helm, kubectl, ...).

    `command` is a list of arguments (a string is split shell-style; no shell ever
    runs). Placeholders: `{app}`, `{env}`, `{version}`, `{artifact}` and the names in
    `vars`. The child gets a minimal environment: `PATH` (`path`), `env`, the
    agent's short-lived credential as `OPSGATE_TOKEN`, and the secrets named in
    `secrets` (variable -> secret path) or asked for in the request.
    """

    command: tuple[str, ...]
    rollback: tuple[str, ...] | None = None
    vars: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    path: str = "/usr/local/bin:/usr/bin:/bin"
    cwd: str | None = None
    timeout_seconds: float = Field(600.0, gt=0, le=86_400)
    output_tail_bytes: int = Field(4000, ge=0, le=65_536)

    @field_validator("command", "rollback", mode="before")
    @classmethod
    def _commands(cls, value: object) -> object:
        return None if value is None else _argv(value, "deploy command")

    @model_validator(mode="after")
    def _check(self) -> CommandBackend:
        for name, value in self.vars.items():
            if not _VAR_NAME.match(name) or name in COMMAND_PLACEHOLDERS:
                raise ValueError(
                    f"var {name[:32]!r} must match [a-z][a-z0-9_]* and not be built in"
                )
            if "\x00" in value:
                raise ValueError(f"var {name!r} must not hold NUL")
        known = set(COMMAND_PLACEHOLDERS) | set(self.vars)
        for what, argv in (("command", self.command), ("rollback", self.rollback)):
            if argv is None:
                continue
            unknown = template_fields(argv, what) - known
            if unknown:
                raise ValueError(f"{what}: unknown placeholder {{{sorted(unknown)[0]}}}")
        if self.rollback is not None and "artifact" in template_fields(self.rollback, "rollback"):
            raise ValueError("rollback: {artifact} is not known when rolling back")
        taken: set[str] = set()
        for name, value in [*self.env.items(), *self.secrets.items()]:
            if not ENV_NAME.match(name) or name.startswith("OPSGATE_") or name == "PATH":
                raise ValueError(
                    f"variable {name[:32]!r} must match [A-Z_][A-Z0-9_]* and not be PATH "
                    "or OPSGATE_*"
                )
            if name in taken:
                raise ValueError(f"variable {name!r} is given twice")
            taken.add(name)
            if "\x00" in value:
                raise ValueError(f"variable {name!r} must not hold NUL")
        for path in self.secrets.values():
            if not SECRET_PATH.match(path):
                raise ValueError(
                    f"secret path {path[:64]!r} must be '<env>/<name>', lower-case names"
                )
        if not self.path or "\x00" in self.path:
            raise ValueError("path must be a PATH value")
        return self


class AppDeploy(_Strict):
    """Per-app deploy settings: the staging rule and the health probe of each environment."""

    require_staging: bool = True
    health: dict[str, HealthCheck] = Field(default_factory=dict)
    keep_releases: int | None = Field(None, ge=1, le=1000)

    @field_validator("health")
    @classmethod
    def _envs(cls, value: dict[str, HealthCheck]) -> dict[str, HealthCheck]:
        for env in value:
            _deploy_name(env, "environment")
        return value


class DeployConfig(_Strict):
    """The deploy executor, registered for `deploy` and `rollback` when `root` is set
    or an environment has a command backend.

    Environments in `commands` run their configured command; every other one is
    the local backend under `root`. `artifact_roots` are the only directories
    artifacts are read from; the local backend needs them. `promotions` maps an
    environment to the one whose successful deploy of the same version and artifact
    must come first (`production: staging`). Relative paths are taken from the state dir.
    """

    root: str | None = None
    artifact_roots: tuple[str, ...] = ()
    keep_releases: int = Field(5, ge=1, le=1000)
    promotions: dict[str, str] = Field(default_factory=lambda: {"production": "staging"})
    commands: dict[str, CommandBackend] = Field(default_factory=dict)
    apps: dict[str, AppDeploy] = Field(default_factory=dict)
    # A run renews its lock every third of this; another host takes over a lock not
    # renewed for this long (its holder killed or stalled).
    lock_expiry_seconds: float = Field(120.0, gt=0, le=7 * 86_400)

    @model_validator(mode="after")
    def _check(self) -> DeployConfig:
        if self.root is not None and not self.artifact_roots:
            raise ValueError("deploy.root needs deploy.artifact_roots (where artifacts come from)")
        if self.root is None and self.artifact_roots and not self.commands:
            raise ValueError("deploy.artifact_roots needs deploy.root (where releases go)")
        for env in self.commands:
            _deploy_name(env, "environment")
        for app in self.apps:
            _deploy_name(app, "app")
        for env, before in self.promotions.items():
            _deploy_name(env, "environment")
            _deploy_name(before, "environment")
            if env == before:
                raise ValueError(f"promotion {env!r} cannot require itself")
        return self

    @property
    def enabled(self) -> bool:
        return self.root is not None or bool(self.commands)


class ApprovalsConfig(_Strict):
    """Approver tokens: how long a token lives before it must be rotated; how many
    requests one agent may have waiting for a decision at once."""

    token_ttl_days: int = Field(90, ge=1, le=3650)
    # Each request is announced to every approver: an agent looping on an operation
    # that needs approval must not flood them (or bury one request among look-alikes).
    max_pending_per_agent: int = Field(10, ge=1, le=10_000)


_ENV_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")


class EnvironmentConfig(_Strict):
    """One declared environment: other spellings of its name, and whether it is protected
    (below `trust.approval_below`, its operations need approval)."""

    aliases: tuple[str, ...] = ()
    protected: StrictBool = False  # never "yes" read as true: it decides who needs approval


DEFAULT_ENVIRONMENTS: dict[str, EnvironmentConfig] = {
    "production": EnvironmentConfig(protected=True),
    "staging": EnvironmentConfig(),
    "development": EnvironmentConfig(),
    "test": EnvironmentConfig(),
}


_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z", re.ASCII)


def _vault_path(value: str, what: str) -> str:
    """A Vault mount, prefix or namespace: segments of [A-Za-z0-9._-], never `.`/`..`."""
    parts = value.strip("/").split("/")
    if not value.strip("/") or any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        raise ValueError(f"{what} must be '/'-separated segments of [A-Za-z0-9._-]")
    return "/".join(parts)


class VaultAuth(_Strict):
    """How the gate logs in to Vault. Secrets are named by reference (an environment
    variable or a file), never written in the config, so config dumps never hold one."""

    method: Literal["token", "approle"] = "token"
    token_env: str | None = None
    token_file: str | None = None
    role_id: str | None = None  # an AppRole's role_id is an identifier, not a secret
    role_id_env: str | None = None
    role_id_file: str | None = None
    secret_id_env: str | None = None
    secret_id_file: str | None = None
    mount: str = "approle"

    @field_validator("token_env", "role_id_env", "secret_id_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_VAR.match(value):
            raise ValueError("must name an environment variable")
        return value

    @field_validator("mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        return _vault_path(value, "mount")

    @model_validator(mode="after")
    def _sources(self) -> VaultAuth:
        def count(*names: str | None) -> int:
            return sum(n is not None for n in names)

        if self.method == "token":
            if count(self.token_env, self.token_file) > 1:
                raise ValueError("token: name token_env or token_file, not both")
            if count(
                self.role_id,
                self.role_id_env,
                self.role_id_file,
                self.secret_id_env,
                self.secret_id_file,
            ):
                raise ValueError("token auth takes no role_id or secret_id")
        else:
            if count(self.role_id, self.role_id_env, self.role_id_file) != 1:
                raise ValueError("approle: exactly one of role_id, role_id_env, role_id_file")
            if count(self.secret_id_env, self.secret_id_file) != 1:
                raise ValueError("approle: exactly one of secret_id_env, secret_id_file")
            if count(self.token_env, self.token_file):
                raise ValueError("approle auth takes no token")
        return self


class VaultConfig(_Strict):
    """An OpenBao or HashiCorp Vault server: KV v2 at `mount`, the gate's secrets under
    `prefix` (`secrets/<env>/<path>` is `<prefix>/<env>/<path>` there, never outside)."""

    address: str
    mount: str = "secret"
    prefix: str = "opsgate"
    namespace: str | None = None
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    ca_cert: str | None = None  # PEM bundle that verifies the server (default: system CAs)
    # The HTTP(S) proxy to reach the server through, if any: only this one. The
    # process environment's proxy, CA bundle and .netrc settings are never consulted
    # (a proxy set there for other tools would carry the gate's Vault token).
    proxy: str | None = None
    auth: VaultAuth = VaultAuth(token_env="VAULT_TOKEN")  # noqa: S106 - a variable name
    database_mount: str = "database"  # the database secrets engine (dynamic credentials)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.match(r"https?://[A-Za-z0-9.\[\]:-]+(:[0-9]{1,5})?/?\Z", value, re.ASCII):
            raise ValueError("address must be http(s)://host[:port]")
        return value.rstrip("/")

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        return _proxy_url(value)

    @field_validator("mount", "prefix", "database_mount")
    @classmethod
    def _paths(cls, value: str) -> str:
        return _vault_path(value, "mount and prefix")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        return None if value is None else _vault_path(value, "namespace")


class SecretsConfig(_Strict):
    """Where `read|write|list|delete|rotate:secrets/<env>/<path>` keep their values."""

    backend: Literal["embedded", "vault"] = "embedded"
    vault: VaultConfig | None = None
    max_value_bytes: int = Field(65_536, ge=1, le=1_048_576)

    @model_validator(mode="after")
    def _backend(self) -> SecretsConfig:
        if self.backend == "vault" and self.vault is None:
            raise ValueError("backend 'vault' needs a 'vault' section")
        return self


class AuditConfig(_Strict):
    """When the gate signs a checkpoint of its audit log without being asked.

    A checkpoint is signed after every `checkpoint_every_events` events, and once
    `checkpoint_every_seconds` have passed since the last one while events are
    waiting (and when the gate closes). Events after the last checkpoint are the
    unsigned tail that `audit verify` reports.
    """

    checkpoint_every_events: int = Field(1000, ge=1, le=1_000_000)
    checkpoint_every_seconds: float = Field(60.0, ge=0.05, le=86_400)
    # Refusals of credentials that prove no agent are counted and written as one
    # summary event per this many seconds (and when the gate closes).
    refusal_summary_seconds: float = Field(60.0, ge=0.05, le=86_400)
    # Where the gate keeps the newest checkpoint it signed, out of a database writer's
    # reach (relative to the state dir). A replica whose state dir is mounted read-only
    # points it at a writable, persistent volume: `opsgate serve` refuses to start where
    # it cannot be written, since without it whoever can write the database alone could
    # wipe the stored checkpoints and rewrite the log unnoticed.
    checkpoint_file: str = Field("audit-checkpoint.json", min_length=1, max_length=4096)

    @field_validator("checkpoint_file")
    @classmethod
    def _plain_path(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value) or value.endswith("/"):
            raise ValueError("checkpoint_file must be a file path without control characters")
        return value


class DatabaseTimeouts(_Strict):
    """Bounds on every PostgreSQL session of the state database (SET at connect).

    A replica that stalls while holding a lock (stopped, partitioned, stuck in a
    long call) must not stall the others: a wait for a lock fails after
    `lock_seconds`, a statement after `statement_seconds`, and a session left idle
    inside a transaction is ended by the server after `idle_in_transaction_seconds`
    (which frees whatever it held). 0 turns one off. SQLite ignores these.
    """

    lock_seconds: float = Field(2.0, ge=0, le=3600)
    statement_seconds: float = Field(30.0, ge=0, le=86_400)
    idle_in_transaction_seconds: float = Field(10.0, ge=0, le=86_400)

    def session_options(self) -> str:
        """libpq `options` setting these for a session."""
        ms = {
            "lock_timeout": self.lock_seconds,
            "statement_timeout": self.statement_seconds,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_seconds,
        }
        return " ".join(f"-c {k}={round(v * 1000)}" for k, v in ms.items())


class OperatorsConfig(_Strict):
    """Operator tokens (the HTTP API's operator role): how long one lives."""

    token_ttl_days: int = Field(90, ge=1, le=3650)


class CliConfig(_Strict):
    """The `opsgate` commands that act as an agent (deploy, rollback, migrate, secrets)."""

    # The agent they act as when no `--as` is given (a name or did).
    agent: str | None = Field(None, min_length=1, max_length=200)
    # The agent `opsgate status` reads the gate's status as (read:monitoring/gate);
    # default: `agent`.
    monitor_agent: str | None = Field(None, min_length=1, max_length=200)
    # How long `--wait` blocks for an approval by default.
    wait_timeout_seconds: float = Field(900.0, gt=0, le=86_400)
    # Lifetime of the credential each command issues to its agent (at most limits.max_ttl_minutes).
    credential_ttl_minutes: float | None = Field(None, gt=0, le=HARD_TTL_CEILING_MINUTES)


class ServerConfig(_Strict):
    """`opsgate serve`: the HTTP API's address, proof checks and request limits."""

    # The base URL agents reach this gate at (scheme, host, port, optional path):
    # the audience of client assertions and the prefix of every DPoP proof's htu.
    # Never derived from a request's Host header.
    external_url: str | None = None
    # How far a DPoP proof's or an assertion's iat may be from now (plus leeway).
    proof_window_seconds: int = Field(60, ge=5, le=300)
    max_body_bytes: int = Field(65_536, ge=1024, le=16_777_216)
    max_json_depth: int = Field(32, ge=2, le=256)
    # Refused requests per client address and per agent: a bucket of `refusal_burst`
    # refilled at `refusal_rate` per second; past it, 429 without touching the database.
    refusal_burst: int = Field(20, ge=1, le=100_000)
    refusal_rate: float = Field(1.0, gt=0, le=10_000)
    # /metrics names agents and their scores: operators only unless opened here.
    metrics_public: bool = False
    # How long an approver stays signed in to the web UI (/ui) before signing in again.
    ui_session_minutes: int = Field(30, ge=1, le=720)
    # Server-provided DPoP nonces (RFC 9449 §8): every proof must carry a nonce the
    # gate handed out (DPoP-Nonce header) in the current or the previous window of
    # this many seconds. Any replica validates any replica's nonces (no shared state).
    dpop_nonce: bool = False
    dpop_nonce_seconds: int = Field(60, ge=5, le=3600)
    # The load balancers / reverse proxies in front of the gate (addresses or networks):
    # only a request whose peer is one of them has its client address taken from
    # X-Forwarded-For (the nearest hop none of them added). Empty: the peer's own
    # address, whatever a header says. The refusal limits are keyed on this address.
    trusted_proxies: list[str] = Field(default_factory=list, max_length=256)

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        out = []
        for entry in value:
            try:
                network = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address or network"
                ) from None
            if network.prefixlen == 0:  # every address: any client could name its own
                raise ValueError(
                    f"trusted_proxies: {entry!r} trusts every address; list the proxies' own"
                )
            out.append(str(network))
        return out

    @field_validator("external_url")
    @classmethod
    def _external_url(cls, value: str | None) -> str | None:
        if value is None:
            return None

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("external_url must be an http(s) URL with a host")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError("external_url must have no query, fragment or user info")
        return value


class Config(_Strict):
    """Everything a Gate needs to know that is not data in its store."""

    database_url: str | None = Field(None, repr=False)  # may hold the password
    database_timeouts: DatabaseTimeouts = DatabaseTimeouts()
    audience: str = Field("opsgate", min_length=1, max_length=256, pattern=r"^\S+$")
    policies: str | None = None
    require_proof: bool = False
    cache_refresh_seconds: float = Field(0.5, gt=0, le=1.0)
    limits: Limits = Limits()
    trust: TrustConfig = TrustConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    operators: OperatorsConfig = OperatorsConfig()
    server: ServerConfig = ServerConfig()
    cli: CliConfig = CliConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    databases: dict[str, DatabaseTarget] = Field(default_factory=dict)
    deploy: DeployConfig = DeployConfig()
    # Environments a resource may name, canonical (lower-case) name -> aliases, protected.
    environments: dict[str, EnvironmentConfig] = Field(
        default_factory=lambda: dict(DEFAULT_ENVIRONMENTS)
    )
    # First resource segments that are a kind of resource, not an environment.
    resource_namespaces: tuple[str, ...] = ("secrets", "database", "monitoring")
    # Namespaces whose next segment is the environment (`secrets/<env>/<name>`).
    environment_after: tuple[str, ...] = ("secrets",)
    secrets: SecretsConfig = SecretsConfig()
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="after")
    def _body_fits_a_secret(self) -> Config:
        """Unless set, the HTTP body limit leaves room for a secret of the largest size
        allowed (with its JSON envelope and escaping): a value the gate accepts must not
        be refused at the door as too large."""
        if "max_body_bytes" not in self.server.model_fields_set:
            needed = 2 * self.secrets.max_value_bytes + 16_384
            if needed > self.server.max_body_bytes:
                server = self.server.model_copy(update={"max_body_bytes": needed})
                object.__setattr__(self, "server", server)  # frozen: set while validating
        return self

    @model_validator(mode="after")
    def _dynamic_credentials(self) -> Config:
        for name, target in self.databases.items():
            if target.vault_role is not None and self.secrets.vault is None:
                raise ValueError(f"database {name!r} names a vault_role: configure secrets.vault")
        return self

    @field_validator("environments", mode="before")
    @classmethod
    def _production_stays_protected(cls, value: object) -> object:
        """`production` written without `protected` keeps the default's protection:
        declaring its aliases must not silently drop the trust gate."""
        if isinstance(value, dict) and isinstance(value.get("production"), dict):
            production = value["production"]
            if "protected" not in production:
                value = {**value, "production": {**production, "protected": True}}
        return value

    @field_validator("databases")
    @classmethod
    def _database_names(cls, value: dict[str, DatabaseTarget]) -> dict[str, DatabaseTarget]:
        for name in value:
            if not DATABASE_NAME.match(name):
                raise ValueError(f"database name {name[:64]!r} must match [a-z0-9][a-z0-9_.-]*")
        return value

    @model_validator(mode="after")
    def _check_environments(self) -> Config:
        if not self.environments:
            raise ValueError("environments: declare at least one")
        spellings: dict[str, str] = {}
        namespaces = set(self.resource_namespaces)
        for ns in self.resource_namespaces:
            if not _ENV_NAME.match(ns):
                raise ValueError(f"resource_namespaces: {ns!r} must be a lower-case segment")
        for ns in self.environment_after:
            if ns not in namespaces:
                raise ValueError(f"environment_after: {ns!r} is not a resource namespace")
        for name, env in self.environments.items():
            for spelling in (name, *env.aliases):
                if not _ENV_NAME.match(spelling):
                    raise ValueError(
                        f"environments: {spelling!r} must be a lower-case resource segment"
                    )
                if spelling in spellings or spelling in namespaces:
                    raise ValueError(
                        f"environments: {spelling!r} is declared twice (or is a namespace)"
                    )
                spellings[spelling] = name
        for db, target in self.databases.items():
            # Its migrations are judged in that environment: it must be one the gate knows.
            if target.environment.lower() not in spellings:
                raise ValueError(
                    f"databases.{db}.environment: {target.environment[:64]!r} is not a "
                    "declared environment"
                )
        return self

    @model_validator(mode="after")
    def _check_deploy_environments(self) -> Config:
        """Deploy settings are keyed by canonical environment names: a request reaches
        the executor canonical, so a setting under an alias or an undeclared name would
        silently never apply (no health check, no staging rule)."""
        d = self.deploy
        if not d.enabled:
            return self
        named = [("deploy.commands", e) for e in d.commands]
        named += [("deploy.promotions", e) for pair in d.promotions.items() for e in pair]
        named += [
            (f"deploy.apps.{app}.health", e) for app, cfg in d.apps.items() for e in cfg.health
        ]
        for where, env in named:
            if env not in self.environments:
                raise ValueError(
                    f"{where}: {env[:64]!r} is not a declared environment (by its canonical name)"
                )
        return self


CONFIG_FILE = "opsgate.yaml"


def _paths_from(base: Path, deploy: dict[str, Any]) -> dict[str, Any]:
    """Relative deploy paths in the config file are relative to its directory."""
    out = dict(deploy)
    if isinstance(out.get("root"), str):
        out["root"] = os.path.join(base, out["root"])
    roots = out.get("artifact_roots")
    if isinstance(roots, list):
        out["artifact_roots"] = [os.path.join(base, r) if isinstance(r, str) else r for r in roots]
    envs = out.get("commands")
    if isinstance(envs, dict):
        out["commands"] = {
            name: {**backend, "cwd": os.path.join(base, backend["cwd"])}
            if isinstance(backend, dict) and isinstance(backend.get("cwd"), str)
            else backend
            for name, backend in envs.items()
        }
    return out


def _sqlite_from(base: Path, url: str) -> str:
    """A SQLite URL with a relative file path made absolute from `base`; any other URL
    (or one that does not parse: refused later, never quoted) as it is."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - validated (and refused) with the target
        return url
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return url
    if os.path.isabs(path) or path.startswith("file:"):
        return url
    return parsed.set(database=str((base / path).resolve())).render_as_string(hide_password=False)


DEFAULT_STATE_DIR = ".opsgate"


def resolve_state_dir(state_dir: str | os.PathLike[str] | None) -> Path:
    """The state dir named (else $OPSGATE_STATE_DIR, else .opsgate), absolute."""
    if state_dir is None:
        state_dir = os.environ.get("OPSGATE_STATE_DIR") or DEFAULT_STATE_DIR
    if not isinstance(state_dir, (str, os.PathLike)) or not os.fspath(state_dir):
        raise ConfigError("state dir must be a non-empty path", code="state_dir_invalid")
    try:
        return Path(state_dir).expanduser().resolve()
    except (TypeError, ValueError, OSError, RuntimeError) as exc:  # NUL bytes, loops, ...
        raise ConfigError("state dir is not a usable path", code="state_dir_invalid") from exc


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice: a second `environments:` or
    `protected:` further down must not silently win over the one a reader sees."""


def _no_duplicate_keys(loader: _ConfigLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    written = sum(k.tag != "tag:yaml.org,2002:merge" for k, _ in node.value)
    # `<<: *defaults` merges stay allowed (they come first, and keys written here win).
    loader.flatten_mapping(node)
    merged = len(node.value) - written
    out: dict[Any, Any] = {}
    explicit: set[Any] = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = i >= merged and key in explicit
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            ) from None
        if seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {str(key)[:64]!r}", key_node.start_mark
            )
        if i >= merged:
            explicit.add(key)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def load_config(state_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read `<state_dir>/opsgate.yaml`, then environment, then explicit overrides."""
    data: dict[str, Any] = {}
    path = state_dir / CONFIG_FILE
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
            loaded = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None)
            line = "" if mark is None else f" at line {mark.line + 1}"
            what = f"{problem[:80]}" if isinstance(problem, str) else exc.__class__.__name__
            # Not chained: the parser's error quotes the line, which may hold a password.
            raise ConfigError(f"cannot parse '{path.name}'{line}: {what}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"'{path.name}' is not UTF-8 text") from exc
        except (ValueError, OverflowError) as exc:  # an impossible date, say
            raise ConfigError(f"cannot parse '{path.name}': a value is out of range") from exc
        except RecursionError as exc:
            raise ConfigError(f"cannot parse '{path.name}': nested too deeply") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read '{path.name}': {exc.strerror or 'not a file'}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"'{path.name}' must be a mapping")
        data.update(loaded or {})
        if isinstance(data.get("policies"), str) and not os.path.isabs(data["policies"]):
            data["policies"] = str((state_dir / data["policies"]).resolve())
        databases = data.get("databases")
        for target in databases.values() if isinstance(databases, dict) else ():
            # Relative migration directories are the config file's, like policies.
            where = target.get("migrations") if isinstance(target, dict) else None
            if isinstance(where, str) and where and not os.path.isabs(where):
                target["migrations"] = str((state_dir / where).resolve())
            # So is a SQLite target's file: never one that follows the working directory
            # (the same gate would migrate another database from another directory).
            if isinstance(target, dict) and isinstance(target.get("url"), str):
                target["url"] = _sqlite_from(state_dir, target["url"])
        deploy = data.get("deploy")
        if isinstance(deploy, dict):
            data["deploy"] = _paths_from(state_dir, deploy)
        vault = (
            data.get("secrets", {}).get("vault") if isinstance(data.get("secrets"), dict) else None
        )
        auth = vault.get("auth") if isinstance(vault, dict) else None
        refs = [(vault, "ca_cert")] + [
            (auth, k) for k in ("token_file", "role_id_file", "secret_id_file")
        ]
        for holder, key in refs:
            if not isinstance(holder, dict):
                continue
            # Files named in the config file are relative to it, like policies.
            where = holder.get(key)
            if isinstance(where, str) and where and not os.path.isabs(where):
                holder[key] = str((state_dir / where).resolve())
    env_url = os.environ.get("OPSGATE_DATABASE_URL")
    if env_url:
        data["database_url"] = env_url
    if overrides:
        data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        # Not chained: pydantic's error repeats the input, database_url's password included.
        raise ConfigError(f"invalid configuration at '{where}': {first['msg'].lower()}") from None
