"""`policy validate | test | explain`: exit codes 0/1/2, one-line errors, --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsgate.policy.cli import app

DATA = Path(__file__).resolve().parents[2] / "data" / "policy"
runner = CliRunner()
CASE = "  - {name: a, request: {action: a, resource: r}, "


def run(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


BAD = """
policies:
  - name: broken
    rules:
      - condition: "agent.trust_score == 'high'"
        action: deny
      - condition: "action == 'deploy'"
        action: require_approval
        approvers: ["sre-te\u0430m@company.com"]
        min_approvals: 0
"""


def test_validate_ok() -> None:
    code, out, err = run("validate", DATA / "devops.yaml")
    assert code == 0, err
    assert "ok" in out and "9 policies" in out and "15 rules" in out


def test_validate_directory_and_json() -> None:
    code, out, _ = run("validate", DATA / "split", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["policies"] == 2 and data["rules"] == 3


def test_validate_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    code, out, err = run("validate", bad)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error [")]
    assert len(lines) == 3, err
    # Each problem carries its code, like every other opsgate error line.
    assert [line.split("]")[0] for line in lines] == [
        "error [policy_type",
        "error [policy_approvers",
        "error [policy_approvers",
    ]
    assert "policy 'broken', rule 0, column 22" in lines[0]
    assert all("bad.yaml" in line and "rule 1" in line for line in lines[1:])
    assert "3 problems found" in err
    assert "Traceback" not in out + err


def test_validate_json_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    code, out, _ = run("validate", bad, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False and data["error"]["code"] == "policy_type"
    assert [(p["policy"], p["rule"], p["column"]) for p in data["problems"]] == [
        ("broken", 0, 22),
        ("broken", 1, None),
        ("broken", 1, None),
    ]


def test_validate_missing_path_is_usage_error(tmp_path: Path) -> None:
    code, out, err = run("validate", tmp_path / "nope.yaml")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error [policy_not_found]: ")
    assert "does not exist" in err and out == ""


@pytest.mark.parametrize("command", ["validate", "test"])
def test_an_unstatable_path_is_a_usage_error_not_a_traceback(tmp_path: Path, command: str) -> None:
    """A name longer than the file system takes (ENAMETOOLONG) raised OSError from the
    path's stat: the same one-line refusal as a path that does not exist."""
    code, out, err = run(command, tmp_path / ("x" * 5000))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error [policy_not_found]: ")
    assert "Traceback" not in err and out == ""


def test_validate_without_args_is_usage_error() -> None:
    code, _, _ = run("validate")
    assert code == 2


def test_test_passes() -> None:
    code, out, err = run("test", DATA / "seed_cases.yaml", DATA / "devops_cases.yaml")
    assert code == 0, out + err
    assert "44 passed, 0 failed" in out


def test_test_names_failing_cases(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        f"policies: {DATA / 'seed.yaml'}\n"
        "cases:\n"
        "  - name: prod deploy wrongly expected allowed\n"
        "    request: {action: deploy, resource: production/web, environment: production}\n"
        "    expect: allow\n"
        "  - name: staging fine\n"
        "    request: {action: deploy, resource: staging/web, environment: staging}\n"
        "    expect: allow\n"
        "  - name: wrong approvers\n"
        "    request: {action: deploy, resource: production/web, environment: production}\n"
        "    expect: require_approval\n"
        "    approvers: [nobody@company.com]\n"
    )
    code, out, _ = run("test", cases)
    assert code == 1
    assert "FAIL prod deploy wrongly expected allowed: expected allow, got require_approval" in out
    assert "FAIL wrong approvers: expected approvers [nobody@company.com]" in out
    assert "1 passed, 2 failed" in out
    code, out, _ = run("test", cases, "--json")
    data = json.loads(out)
    assert code == 1 and data["failed"] == 2
    failed = [c["name"] for c in data["files"][0]["cases"] if not c["passed"]]
    assert failed == ["prod deploy wrongly expected allowed", "wrong approvers"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("cases: []\npolicies: x.yaml", "'cases' must be a non-empty list"),
        (
            "policies: nope.yaml\ncases:\n" + CASE + "expect: allow}",
            "does not exist",
        ),
        (
            "policies: POL\ncases:\n" + CASE + "expect: maybe}",
            "'expect' must be one of",
        ),
        (
            "policies: POL\ncases:\n  - {name: a, request: {action: a}, expect: allow}",
            "needs 'resource'",
        ),
        (
            "policies: POL\ncases:\n" + CASE + "expect: allow, x: 1}",
            "unknown key 'x'",
        ),
        ("policies: POL\ncases: [\n", "invalid yaml"),
    ],
)
def test_bad_case_files_fail_with_one_line(tmp_path: Path, content: str, fragment: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(content.replace("POL", str(DATA / "seed.yaml")))
    code, out, err = run("test", cases)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error [policy_")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in out + err


def test_test_missing_file_is_usage_error(tmp_path: Path) -> None:
    code, _, err = run("test", tmp_path / "none.yaml")
    assert code == 2 and len(err.strip().splitlines()) == 1


EXPLAIN = ["explain", "--policies", str(DATA / "devops.yaml")]


def test_explain_shows_decision_and_why() -> None:
    code, out, _ = run(
        *EXPLAIN,
        "--action",
        "deploy",
        "--resource",
        "production/app-web",
        "--environment",
        "production",
        "--trust-score",
        "700",
        "--hour",
        "10",
        "--weekday",
        "1",
    )
    assert code == 0
    assert "decision: require_approval" in out
    assert "approve-production-deployments" in out and "low-trust-production" in out
    assert "approval: 1 of [jane@company.com, john@company.com]" in out


def test_explain_json_with_params() -> None:
    code, out, _ = run(
        *EXPLAIN,
        "--action",
        "scale",
        "--resource",
        "production/app-web",
        "--environment",
        "production",
        "--trust-score",
        "900",
        "--param",
        "replicas=30",
        "--param",
        "note=hello world",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["decision"]["effect"] == "deny"
    assert data["request"]["params"] == {"replicas": 30, "note": "hello world"}


def test_explain_destructive_flag() -> None:
    code, out, _ = run(
        *EXPLAIN,
        "--action",
        "migrate",
        "--resource",
        "database/orders",
        "--environment",
        "production",
        "--destructive",
        "--trust-score",
        "950",
        "--json",
    )
    assert code == 0 and json.loads(out)["decision"]["effect"] == "deny"


@pytest.mark.parametrize(
    "extra",
    [
        ["--param", "novalue"],
        ["--hour", "24"],
        ["--weekday", "9"],
        ["--trust-score", "abc"],
    ],
)
def test_explain_usage_errors(extra: list[str]) -> None:
    code, out, err = run(*EXPLAIN, "--action", "deploy", "--resource", "r", *extra)
    assert code == 2
    assert "Traceback" not in out + err
    if extra[0] != "--trust-score":  # our own checks (not the option parser's) are one line
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(("error [usage]: ", "error [policy_request_invalid]: ")), err


def test_explain_missing_policies_is_usage_error(tmp_path: Path) -> None:
    code, _, err = run(
        "explain", "--policies", str(tmp_path / "x.yaml"), "--action", "a", "--resource", "r"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_explain_invalid_policies_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    code, _, err = run("explain", "--policies", str(bad), "--action", "a", "--resource", "r")
    assert code == 1 and "3 problems found" in err


def test_the_example_decision_table_passes() -> None:
    from opsgate.policy.testing import run_case_file

    root = Path(__file__).resolve().parents[3]
    report = run_case_file(root / "examples" / "policy_cases.yaml")
    assert report.passed and len(report.results) == 4, report.failures


@pytest.mark.parametrize(
    ("action", "resource"),
    [("deploy", "production/../x"), ("de ploy", "production/app-web"), ("deploy", "")],
)
def test_explain_refuses_what_the_gate_refuses_before_policy(action: str, resource: str) -> None:
    # The gate refuses a malformed capability before any rule runs; explaining it as a
    # policy decision (exit 0) would tell an operator a rule let it through.
    code, out, err = run(*EXPLAIN, "--action", action, "--resource", resource)
    assert code == 2
    assert out == "" and err.startswith("error [capability_") and "Traceback" not in err
    code, out, _ = run(*EXPLAIN, "--action", action, "--resource", resource, "--json")
    assert code == 2 and json.loads(out)["error"]["code"].startswith("capability_")
