"""The command backend: an environment deployed by a configured command (helm, kubectl...).

What an agent controls is the app (from its capability), the version and, if it
gives one, the artifact; each is checked against a strict pattern before it is
substituted, and a substituted value always stays within its one argument, so
no value can become an option (`-x`), a second argument, or extra `key=value`
pairs for a tool like `helm --set` (no `,`, `=`, spaces, braces). The program
and its other arguments are the operator's. The child's environment is built
from nothing: `PATH`, the operator's static variables, `OPSGATE_DEPLOY_*`, the
agent's short-lived credential (`OPSGATE_TOKEN`) and the secrets asked for —
never the gate's own environment, and never a secret on the command line.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Protocol

from opsgate.config import DEPLOY_NAME, SECRET_PATH, CommandBackend
from opsgate.errors import OperationError
from opsgate.secrets.base import NAMESPACE, SecretStore, secret_path

#: An artifact path as substituted: absolute, no whitespace, quotes, `,` or `=`.
ARTIFACT_VALUE = re.compile(r"/[A-Za-z0-9._/-]{0,4095}\Z", re.ASCII)
#: Variable name prefix of a secret asked for in a request.
SECRET_PREFIX = "OPSGATE_SECRET_"  # noqa: S105 - a variable name prefix, not a secret


class SecretSource(Protocol):
    """Where the command backend gets a secret's value to hand to its child.

    `path` is the secret's path as capabilities name it (`production/db/password`
    for `read:secrets/production/db/password`); the gate has already checked that
    the agent may read it. Raise an `opsgate.errors.SecretError` (with a code) if it
    cannot be read; the message must not hold the value.
    """

    def reveal(self, path: str) -> str: ...


class StoreSecrets:
    """A `SecretSource` over the gate's secret backend (`gate.secrets.backend`): a deploy
    reads `<env>/<name>` as the secret `secrets/<env>/<name>`, never anything else."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"StoreSecrets({self._store!r})"

    def reveal(self, path: str) -> str:
        return self._store.get(secret_path(f"{NAMESPACE}/{path}")).value.reveal()


def check_value(name: str, value: str) -> str:
    """A value for a placeholder, or a refusal naming the placeholder (never the value)."""
    pattern = ARTIFACT_VALUE if name == "artifact" else DEPLOY_NAME
    if not pattern.match(value):
        raise OperationError(
            f"the value for {{{name}}} has characters a command argument may not take",
            code="placeholder_invalid",
        )
    return value


def template_uses(argv: Sequence[str], name: str) -> bool:
    return any(field == name for arg in argv for _, field, _, _ in string.Formatter().parse(arg))


def render(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Substitute `{name}` in each argument (the config already refused anything else)."""
    out = []
    for arg in argv:
        parts = []
        for literal, field, _spec, _conv in string.Formatter().parse(arg):
            parts.append(literal)
            if field is not None:
                if field not in values:
                    raise OperationError(
                        f"the command needs {{{field}}}, which this deploy does not have",
                        code="placeholder_invalid",
                    )
                parts.append(values[field])
        out.append("".join(parts))
    return out


def secret_variable(path: str) -> str:
    """The variable a requested secret is handed in: `OPSGATE_SECRET_<PATH>`."""
    return SECRET_PREFIX + re.sub(r"[^A-Z0-9]", "_", path.upper())


def requested_secrets(backend: CommandBackend, asked: Sequence[str]) -> dict[str, str]:
    """Variable -> secret path for the configured secrets and those a request asks for."""
    out = dict(backend.secrets)
    for path in asked:
        if not SECRET_PATH.match(path):
            raise OperationError(
                "a requested secret must be '<env>/<name>', lower-case names",
                code="params_invalid",
            )
        name = secret_variable(path)
        if name in out and out[name] != path:
            raise OperationError(
                f"requested secrets {out[name]!r} and {path!r} would share variable {name}",
                code="params_invalid",
            )
        out[name] = path
    return out


def child_environment(
    backend: CommandBackend,
    *,
    app: str,
    env: str,
    version: str,
    token: str | None,
    secrets: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment of the child: nothing inherited from the gate."""
    out = {"PATH": backend.path, **backend.env}
    out.update(
        OPSGATE_DEPLOY_APP=app,
        OPSGATE_DEPLOY_ENV=env,
        OPSGATE_DEPLOY_VERSION=version,
    )
    if token is not None:
        out["OPSGATE_TOKEN"] = token
    out.update(secrets)
    return out


__all__ = [
    "ARTIFACT_VALUE",
    "SECRET_PREFIX",
    "SecretSource",
    "StoreSecrets",
    "check_value",
    "child_environment",
    "render",
    "requested_secrets",
    "secret_variable",
    "template_uses",
]
