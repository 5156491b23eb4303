"""The facts a policy decision is a function of, as one frozen value.

Fields are type-checked on construction so the compiled conditions can compare
typed names (``agent.trust_score < 800``) without per-call type checks. The clock
is a parameter: the hour, weekday and minute are given, never read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

from opsgate.environments import DEFAULT, Environments
from opsgate.errors import ParamsInvalid, PolicyError, encodable

_EMPTY: Mapping[str, Any] = MappingProxyType({})
MAX_PARAM_DEPTH = 16


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(message: str) -> PolicyError:
    return PolicyError(message, code="policy_request_invalid")


def _check_json(value: object, path: str, depth: int = 0) -> None:
    """Params must be JSON values: conditions compare them with JSON semantics."""
    if depth > MAX_PARAM_DEPTH:
        raise _bad(f"param {path!r} is nested deeper than {MAX_PARAM_DEPTH} levels")
    if value is None or type(value) is bool:
        return
    if type(value) is str:
        if encodable(value) is not value:
            raise _bad(f"param {path!r} is not valid unicode (a lone surrogate)")
        return
    if type(value) is int:
        # What canonical JSON (the plan digest, the audit record) can carry.
        if not -(2**63) <= value < 2**64:
            raise _bad(f"param {path!r} is an integer out of the 64-bit range")
        return
    if type(value) is float:
        if not math.isfinite(value):
            raise _bad(f"param {path!r} must be a finite number")
        return
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) is not str:
                raise _bad(f"param {path!r} has a non-string key {_shown(key)}")
            if encodable(key) is not key:
                raise _bad(f"param {path!r} has a key that is not valid unicode")
            _check_json(item, f"{path}.{key}", depth + 1)
        return
    raise _bad(f"param {path!r} has unsupported type {type(value).__name__!r}")


def check_params(params: object) -> None:
    """Operation params must be plain JSON (finite numbers, string keys, bounded depth):
    policy compares them and the plan digest hashes them, and a NaN would slip past
    both (every comparison with it is false; JSON writes it as null)."""
    if not isinstance(params, Mapping):
        raise ParamsInvalid("operation params must be a mapping", code="params_invalid")
    try:
        _check_json(dict(params), "params")
    except PolicyError as exc:
        raise ParamsInvalid(exc.message, code="params_invalid") from None


def _int_in(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"{name} must be an integer from {low} to {high}, got {_shown(value)}")


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One operation as policy sees it. `capability` defaults to 'action:resource'."""

    action: str
    resource: str
    capability: str = ""
    environment: str | None = None
    destructive: bool = False
    #: Codes of what the executor found in the plan (a migration's DS102, OG101, ...).
    findings: tuple[str, ...] = ()
    agent_name: str = ""
    agent_did: str = ""
    #: Unknown trust is no trust: an omitted score is 0, never a pass.
    agent_trust_score: int = 0
    agent_depth: int = 0
    agent_sponsor: str = ""
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    hour: int = 0
    weekday: int = 0
    minute: int = 0

    def __post_init__(self) -> None:
        for name in (
            "action",
            "resource",
            "capability",
            "agent_name",
            "agent_did",
            "agent_sponsor",
        ):
            if type(getattr(self, name)) is not str:
                raise _bad(f"{name} must be a string, got {_shown(getattr(self, name))}")
        if self.environment is not None and type(self.environment) is not str:
            raise _bad(f"environment must be a string or null, got {_shown(self.environment)}")
        if type(self.destructive) is not bool:
            raise _bad(f"destructive must be true or false, got {_shown(self.destructive)}")
        if not isinstance(self.findings, (list, tuple)) or any(
            type(f) is not str for f in self.findings
        ):
            raise _bad(f"findings must be a list of codes, got {_shown(self.findings)}")
        if type(self.findings) is not tuple:
            object.__setattr__(self, "findings", tuple(self.findings))
        _int_in("agent trust_score", self.agent_trust_score, 0, 1000)
        _int_in("agent depth", self.agent_depth, 0, 1000)
        _int_in("time hour", self.hour, 0, 23)
        _int_in("time weekday", self.weekday, 0, 6)
        _int_in("time minute", self.minute, 0, 59)
        if not self.capability:
            object.__setattr__(self, "capability", f"{self.action}:{self.resource}")
        params = self.params
        if not isinstance(params, Mapping):
            raise _bad(f"params must be a mapping, got {_shown(params)}")
        if type(params) is not MappingProxyType:
            # A private snapshot: the decision cannot change under a caller's later edits.
            object.__setattr__(self, "params", MappingProxyType(dict(params)))
        for key in self.params:
            if type(key) is not str:
                raise _bad(f"params has a non-string key {_shown(key)}")

    @classmethod
    def from_dict(
        cls,
        data: object,
        *,
        now: datetime | None = None,
        environments: Environments | None = None,
    ) -> PolicyRequest:
        """Build from the case-file shape (`agent: {...}`, `time: {...}`, `params: {...}`).

        The resource and environment are canonical as the gate makes them (one case,
        aliases of `environments`, default: the built-in ones). Missing time fields come
        from `now` when given, else 0; unknown keys are errors.
        """
        if not isinstance(data, Mapping):
            raise _bad("request must be a mapping")
        allowed = {
            "action",
            "resource",
            "capability",
            "environment",
            "destructive",
            "findings",
            "agent",
            "params",
            "time",
        }
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise _bad(f"unknown request key {unknown[0]!r}")
        for required in ("action", "resource"):
            if required not in data:
                raise _bad(f"request needs {required!r}")
        agent = _sub(data, "agent", {"name", "did", "trust_score", "depth", "sponsor"})
        clock = _sub(data, "time", {"hour", "weekday", "minute"})
        params = data.get("params")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise _bad("request params must be a mapping")
        _check_json(dict(params), "params")
        # What the gate derives, so a decision table and `policy explain` judge a
        # request the way the gate would: canonical resource, derived environment.
        resource, derived, _ = canonical_target(data["action"], data["resource"], environments)
        environment = data.get("environment", derived)
        if isinstance(environment, str):  # given: an alias or another case is the name
            environment = (environments or DEFAULT).canonical_name(environment) or environment
        return cls(
            action=data["action"],
            resource=resource,  # checked in __post_init__
            capability=data.get("capability") or "",
            environment=environment,
            destructive=data.get("destructive", False),
            findings=data.get("findings") or (),
            agent_name=agent.get("name", ""),
            agent_did=agent.get("did", ""),
            agent_trust_score=agent.get("trust_score", 0),
            agent_depth=agent.get("depth", 0),
            agent_sponsor=agent.get("sponsor", ""),
            params=params,
            hour=clock.get("hour", now.hour if now else 0),
            weekday=clock.get("weekday", now.weekday() if now else 0),
            minute=clock.get("minute", now.minute if now else 0),
        )

    def to_dict(self) -> dict[str, Any]:
        """The case-file shape, so a request can be printed and replayed."""
        return {
            "action": self.action,
            "resource": self.resource,
            "capability": self.capability,
            "environment": self.environment,
            "destructive": self.destructive,
            "findings": list(self.findings),
            "agent": {
                "name": self.agent_name,
                "did": self.agent_did,
                "trust_score": self.agent_trust_score,
                "depth": self.agent_depth,
                "sponsor": self.agent_sponsor,
            },
            "params": dict(self.params),
            "time": {"hour": self.hour, "weekday": self.weekday, "minute": self.minute},
        }


def _sub(data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(f"request {key} must be a mapping")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise _bad(f"unknown request key '{key}.{unknown[0]}'")
    return value


__all__ = ["PolicyRequest"]


Given = TypeVar("Given")  # a resource as given: canonical text comes back when it is one


def canonical_target(
    action: object, resource: Given, environments: Environments | None = None
) -> tuple[Given | str, str | None, str | None]:
    """(resource, environment, undeclared) as the gate sees `action:resource`: one case,
    environment aliases resolved. Not a capability: (resource as given, None, None)."""
    from opsgate import capabilities as caps
    from opsgate.environments import DEFAULT
    from opsgate.errors import CapabilityError

    if not isinstance(action, str) or not isinstance(resource, str):
        return resource, None, None
    try:
        resolved = (environments or DEFAULT).resolve(caps.parse_request(f"{action}:{resource}"))
    except CapabilityError:
        return resource, None, None
    return resolved.capability.resource, resolved.environment, resolved.undeclared


def environment_for(
    action: object, resource: object, environments: Environments | None = None
) -> str | None:
    """The environment the gate sees for `action:resource` (None if none or not a capability)."""
    return canonical_target(action, resource, environments)[1]
