"""Decision tables as data: a cases file names its policies and the expected effect
of each request, so policy authors test policies the way they write them.

    policies: policies.yaml          # relative to this file; or a list of paths
    cases:
      - name: production deploy needs SRE approval
        request: {action: deploy, resource: production/app-web, environment: production}
        expect: require_approval
        approvers: [john@company.com]  # optional: the resolved approvers, as a set

A request is canonical as the gate makes it (resource segments lower-cased,
environment aliases resolved). A request without `environment` gets the one the gate
derives from its resource (`production/app-web` -> production; none for
`database/orders`, and none for a first segment that is not a declared environment,
which the gate refuses before policy); `environment: null` means none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsgate.config import Limits
from opsgate.decision import EFFECTS, Decision, Effect, as_effect
from opsgate.environments import Environments
from opsgate.errors import PolicyError
from opsgate.policy.engine import PolicySet
from opsgate.policy.loader import load_policies, load_yaml
from opsgate.policy.problems import Problem, quote, raise_problems
from opsgate.policy.request import PolicyRequest

_CASES_KEYS = frozenset({"policies", "cases"})
_CASE_KEYS = frozenset({"name", "request", "expect", "approvers"})
MAX_CASES_FILE_BYTES = 5_000_000


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """One row of a decision table."""

    name: str
    request: PolicyRequest
    expect: Effect
    approvers: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What a case expected, what the policies decided, and why."""

    name: str
    passed: bool
    expected: Effect
    got: Effect
    decision: Decision
    expected_approvers: frozenset[str] | None = None

    @property
    def problem(self) -> str:
        """'' when passed; else a one-line expected-vs-got."""
        if self.passed:
            return ""
        if self.expected != self.got:
            return f"expected {self.expected}, got {self.got}"
        want = ", ".join(sorted(self.expected_approvers or ()))
        got = ", ".join(self.decision.approvers)
        return f"expected approvers [{want}], got [{got}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "expected": self.expected,
            "got": self.got,
            "expected_approvers": sorted(self.expected_approvers)
            if self.expected_approvers is not None
            else None,
            "problem": self.problem,
            "decision": self.decision.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class CasesReport:
    """Every case of one cases file, in file order."""

    source: str
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "passed": self.passed,
            "total": len(self.results),
            "failed": len(self.failures),
            "cases": [r.to_dict() for r in self.results],
        }


def run_cases(
    policies: PolicySet, cases: Sequence[PolicyCase], source: str = "<cases>"
) -> CasesReport:
    """Decide every case against `policies`; a case passes when effect (and approvers) match."""
    results = []
    for case in cases:
        decision = policies.decide(case.request)
        passed = decision.effect == case.expect
        if passed and case.approvers is not None:
            passed = frozenset(decision.approvers) == case.approvers
        results.append(
            CaseResult(case.name, passed, case.expect, decision.effect, decision, case.approvers)
        )
    return CasesReport(source, tuple(results))


def load_cases(
    path: str | Path, limits: Limits | None = None, environments: Environments | None = None
) -> tuple[PolicySet, list[PolicyCase]]:
    """Read a cases file and load the policies it names; every problem is reported.

    Requests are canonical as the gate makes them under `environments` (default: the
    built-in ones): one case, aliases resolved, the environment derived when omitted.
    """
    path = Path(path)
    source = str(path)
    try:
        if not path.is_file():
            raise PolicyError(
                f"cases file {quote(source, 200)} does not exist", code="policy_not_found"
            )
        with path.open("rb") as f:  # read no more than the limit lets through
            raw = f.read(MAX_CASES_FILE_BYTES + 1)
    except OSError as exc:  # a name too long, a file that cannot be read
        raise PolicyError(
            f"cases file {quote(source, 200)} cannot be read: "
            f"{exc.strerror or exc.__class__.__name__}",
            code="policy_not_found",
        ) from exc
    if len(raw) > MAX_CASES_FILE_BYTES:
        raise PolicyError(f"cases file {quote(source, 200)} is too large", code="policy_too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(
            f"cases file {quote(source, 200)} is not valid utf-8", code="policy_cases_invalid"
        ) from None
    data, syntax = load_yaml(text, source)
    if syntax is not None:
        raise_problems([_as_cases_problem(syntax)])
    problems: list[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem(source, None, None, None, message, "policy_cases_invalid"))

    if not isinstance(data, dict):
        raise_problems(
            [
                Problem(
                    source,
                    None,
                    None,
                    None,
                    "cases file must be a mapping with 'policies' and 'cases'",
                    "policy_cases_invalid",
                )
            ]
        )
    for key in data:
        if key not in _CASES_KEYS:
            problem(f"unknown key {quote(str(key))} (expected cases, policies)")
    refs = data.get("policies")
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
        problem("'policies' must be a path or a list of paths, relative to the cases file")
        refs = []
    entries = data.get("cases")
    if not isinstance(entries, list) or not entries:
        problem("'cases' must be a non-empty list")
        entries = []
    cases: list[PolicyCase] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        case = _case(entry, i, names, problem, environments)
        if case is not None:
            cases.append(case)
    raise_problems(problems)
    try:
        policies = load_policies(
            [path.parent / ref for ref in refs],
            limits,
            aliases=None if environments is None else environments.aliases,
            environments=environments,
        )
    except PolicyError as exc:
        if exc.code != "policy_not_found":
            raise
        # A path inside the cases file is the file's problem, not the caller's usage.
        raise PolicyError(
            f"{quote(source, 200)}: {exc.message}", code="policy_cases_invalid"
        ) from None
    return policies, cases


def _case(
    entry: Any, i: int, names: set[str], problem: Any, environments: Environments | None
) -> PolicyCase | None:
    if not isinstance(entry, dict):
        problem(f"cases[{i}] must be a mapping")
        return None
    name = entry.get("name")
    label = f"cases[{i}] ({quote(name)})" if isinstance(name, str) else f"cases[{i}]"
    ok = True
    for key in entry:
        if key not in _CASE_KEYS:
            problem(
                f"{label}: unknown key {quote(str(key))} (expected {', '.join(sorted(_CASE_KEYS))})"
            )
            ok = False
    if not isinstance(name, str) or not name.strip():
        problem(f"{label}: needs a 'name'")
        ok = False
    elif name in names:
        problem(f"{label}: duplicate case name")
        ok = False
    else:
        names.add(name)
    expect = entry.get("expect")
    if expect not in EFFECTS:
        problem(f"{label}: 'expect' must be one of allow, deny, require_approval")
        ok = False
    approvers = entry.get("approvers")
    expected_approvers = None
    if approvers is not None:
        if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
            problem(f"{label}: 'approvers' must be a list of emails")
            ok = False
        else:
            expected_approvers = frozenset(a.lower() for a in approvers)
    try:
        request = PolicyRequest.from_dict(
            entry.get("request"),
            environments=environments,
        )
    except PolicyError as exc:
        problem(f"{label}: {exc.message}")
        return None
    effect = as_effect(expect)
    if not ok or effect is None or not isinstance(name, str):  # ok: name and expect are valid
        return None
    return PolicyCase(name, request, effect, expected_approvers)


def _as_cases_problem(p: Problem) -> Problem:
    return Problem(p.file, None, None, p.column, p.message, "policy_cases_invalid", line=p.line)


def run_case_file(
    path: str | Path, limits: Limits | None = None, environments: Environments | None = None
) -> CasesReport:
    """Load a cases file and its policies and run every case."""
    policies, cases = load_cases(path, limits, environments)
    return run_cases(policies, cases, str(path))


__all__ = [
    "CaseResult",
    "CasesReport",
    "PolicyCase",
    "load_cases",
    "run_case_file",
    "run_cases",
]
