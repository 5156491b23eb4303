"""Every decision table under tests/data/policy runs through the same `policy test` code."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsgate.decision import Decision
from opsgate.policy import PolicyCase, PolicyRequest, load_cases, run_case_file, run_cases

DATA = Path(__file__).resolve().parents[2] / "data" / "policy"
CASE_FILES = sorted(DATA.glob("*_cases.yaml"))


def test_there_are_enough_cases() -> None:
    total = sum(len(load_cases(f)[1]) for f in CASE_FILES)
    assert len(CASE_FILES) >= 6
    assert total >= 40


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.name)
def test_decision_table(path: Path) -> None:
    report = run_case_file(path)
    failures = [
        f"{r.name}: {r.problem}; reasons={list(r.decision.reasons)} "
        f"errors={list(r.decision.errors)}"
        for r in report.failures
    ]
    assert not failures, "\n".join(failures)
    assert report.results


def test_a_wrong_expectation_fails() -> None:
    """The runner must be able to fail: flip every expectation and nothing passes."""
    policies, cases = load_cases(DATA / "devops_cases.yaml")
    flipped = [
        PolicyCase(c.name, c.request, "deny" if c.expect != "deny" else "allow", None)
        for c in cases
    ]
    report = run_cases(policies, flipped)
    assert not report.passed
    assert len(report.failures) == len(cases)
    assert report.failures[0].problem.startswith("expected ")


def test_a_wrong_approver_set_fails() -> None:
    policies, _ = load_cases(DATA / "seed_cases.yaml")
    request = PolicyRequest(
        "deploy", "production/app-web", environment="production", agent_trust_score=920
    )
    case = PolicyCase("wrong approvers", request, "require_approval", frozenset({"x@company.com"}))
    (result,) = run_cases(policies, [case]).results
    assert not result.passed
    assert result.got == "require_approval"
    assert "expected approvers [x@company.com]" in result.problem
    assert isinstance(result.decision, Decision)


def test_fail_closed_cases_really_carry_errors() -> None:
    """The fail-closed table passes for the right reason: the decisions record the error."""
    report = run_case_file(DATA / "fail_closed_cases.yaml")
    by_name = {r.name: r for r in report.results}
    string_replicas = by_name["string replicas fails closed to deny"].decision
    assert string_replicas.errors and "cannot order string and number" in string_replicas.errors[0]
    assert string_replicas.matched[0].error is not None
    allow_error = by_name["an allow rule that errors does not allow past an approval"].decision
    assert any("few restarts are fine" in e for e in allow_error.errors)
    assert all(m.effect != "allow" for m in allow_error.matched)
    assert not by_name["ticket given"].decision.errors
