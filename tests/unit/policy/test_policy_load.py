"""Loading: every problem is refused, located (file, policy, rule, column) and listed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from opsgate.config import Limits
from opsgate.errors import PolicyError
from opsgate.policy import Problem, load_policies, parse_duration, parse_policies

RA = "condition: 'true'\naction: require_approval\n"
GROUPS = """
groups:
  sre-team@company.com: [john@company.com, jane@company.com]
"""


def rule(body: str, name: str = "p1") -> str:
    """A one-rule policy document; `body` is the rule's yaml, indented by the caller's dedent."""
    lines = textwrap.dedent(body).strip().splitlines()
    indented = "\n".join(
        "      " + ("- " if i == 0 else "  ") + line for i, line in enumerate(lines)
    )
    return f"policies:\n  - name: {name}\n    rules:\n{indented}\n{GROUPS}"


def problems(text: str, source: str = "pol.yaml", limits: Limits | None = None) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        parse_policies(text, source, limits)
    err = info.value
    found = err.detail["problems"]
    assert found and all(isinstance(p, Problem) for p in found)
    assert "\n" not in err.message
    assert err.message.startswith(str(found[0]))
    assert err.code == found[0].code
    return list(found)


def one(text: str, **kw: object) -> Problem:
    found = problems(text, **kw)  # type: ignore[arg-type]
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_seed_loads() -> None:
    ps = parse_policies(
        rule(
            """
            condition: "action == 'deploy' and environment == 'production'"
            action: require_approval
            approvers: ["sre-team@company.com"]
            min_approvals: 1
            expires_in: 1h
            """,
            name="approve-production-deployments",
        )
    )
    (r,) = ps.rules
    assert r.approvers == ("jane@company.com", "john@company.com")
    assert (r.min_approvals, r.expires_in_seconds, r.effect) == (1, 3600, "require_approval")
    assert ps.groups["sre-team@company.com"] == ("jane@company.com", "john@company.com")


def test_defaults_for_require_approval() -> None:
    ps = parse_policies(rule("condition: 'true'\naction: require_approval\napprovers: [a@b.com]"))
    (r,) = ps.rules
    assert (r.min_approvals, r.expires_in_seconds) == (1, 3600)


@pytest.mark.parametrize(
    ("body", "fragment", "column"),
    [
        ("condition: \"agent.name.x == 'a'\"\naction: deny", "only allowed on", 1),
        ('condition: "destructive and x.__class__"\naction: deny', "only allowed on", 17),
        (
            "condition: \"len(resource) > 1 and open('f')\"\naction: deny",
            "calls are not allowed",
            23,
        ),
        ('condition: "params.x[0] == 1"\naction: deny', "subscripts", 1),
        ('condition: "(lambda: true)"\naction: deny', "lambdas", 2),
        ('condition: "[a for a in [1]] == [1]"\naction: deny', "comprehensions", 1),
        ('condition: "nope == 1"\naction: deny', "unknown name 'nope'", 1),
        ("condition: \"agent.trust_score == 'high'\"\naction: deny", "cannot compare", 22),
        ('condition: "destructive > 3"\naction: deny', "cannot order", 15),
        ('condition: "action in 5"\naction: deny', "'in' needs a list", 11),
        ('condition: "action =="\naction: deny', "invalid syntax", 10),
    ],
)
def test_condition_problems_are_located(body: str, fragment: str, column: int) -> None:
    p = one(rule(body, name="web-policy"))
    assert (p.file, p.policy, p.rule, p.column) == ("pol.yaml", "web-policy", 0, column)
    text = str(p)
    assert fragment in text
    for part in ("'pol.yaml'", "policy 'web-policy'", "rule 0", f"column {column}"):
        assert part in text


def test_rule_description_names_the_rule() -> None:
    p = one(
        "policies:\n  - name: p\n    rules:\n"
        "      - condition: 'true'\n        action: allow\n"
        "      - condition: 'bogus == 1'\n        action: deny\n        description: block bogus\n"
    )
    assert p.rule == 1 and p.rule_description == "block bogus"
    assert "rule 1 ('block bogus')" in str(p)


def test_too_long_condition() -> None:
    p = one(rule(f'condition: "{"true and " * 300}true"\naction: deny'))
    assert p.code == "policy_too_large" and "longer than" in p.message


def test_too_deep_condition() -> None:
    p = one(rule(f'condition: "{"not " * 40}true"\naction: deny'))
    assert p.code == "policy_too_large" and "deeper" in p.message and p.column is not None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            RA + "approvers: [a@b.com]\nmin_approvals: 0",
            "at least 1",
        ),
        (
            RA + "approvers: [a@b.com]\nmin_approvals: -1",
            "at least 1",
        ),
        (
            RA + "approvers: [a@b.com]\nmin_approvals: true",
            "at least 1",
        ),
        (
            RA + "approvers: [a@b.com]\nmin_approvals: '1'",
            "at least 1",
        ),
        (
            RA + "approvers: [a@b.com]\nmin_approvals: 2",
            "exceeds the 1",
        ),
        (
            RA + "approvers: [sre-team@company.com]\nmin_approvals: 3",
            "exceeds the 2",
        ),
        ("condition: 'true'\naction: require_approval", "non-empty 'approvers'"),
        (RA + "approvers: []", "non-empty 'approvers'"),
        (
            RA + "approvers: a@b.com",
            "non-empty 'approvers'",
        ),
        (RA + "approvers: [5]", "must be a string"),
        (
            RA + 'approvers: ["sre-te\u0430m@company.com"]',
            "U+0430",
        ),
        (
            RA + 'approvers: ["sre-team@company.com "]',
            "whitespace",
        ),
        (
            RA + 'approvers: [" sre-team@company.com"]',
            "whitespace",
        ),
        (
            RA + 'approvers: ["sre-team@company.com\\t"]',
            "whitespace",
        ),
        (
            RA + 'approvers: ["sre-team@company.com\\u200b"]',
            "U+200B",
        ),
        (
            RA + 'approvers: ["\u212aube@company.com"]',
            "U+212A",
        ),
        (
            RA + "approvers: [sre-team]",
            "neither a defined group",
        ),
        (
            RA + 'approvers: ["john@company"]',
            "neither a defined group",
        ),
        (
            RA + "approvers: [a@b.com]\nexpires_in: 0",
            "greater than zero",
        ),
        (
            RA + "approvers: [a@b.com]\nexpires_in: 8d",
            "at most 7d",
        ),
        (
            RA + "approvers: [a@b.com]\nexpires_in: soon",
            "invalid duration",
        ),
        (
            RA + "approvers: [a@b.com]\nexpires_in: 1.5",
            "invalid duration",
        ),
        (
            "condition: 'true'\naction: allow\napprovers: [a@b.com]",
            "only valid on require_approval",
        ),
        ("condition: 'true'\naction: deny\nmin_approvals: 1", "only valid on require_approval"),
        ("condition: 'true'\naction: deny\nexpires_in: 1h", "only valid on require_approval"),
        ("condition: 'true'\naction: permit", "must be one of allow, deny, require_approval"),
        ("condition: 'true'", "rule action missing"),
        ("action: deny", "needs a 'condition'"),
        ("condition: true\naction: deny", "must be a string"),
        ("condition: 'true'\naction: deny\nwhen: always", "unknown key 'when' in rule"),
        ("condition: 'true'\naction: deny\ndescription: [1]", "description must be a string"),
    ],
)
def test_rule_problems(body: str, fragment: str) -> None:
    found = problems(rule(body))
    assert any(fragment in str(p) for p in found), [str(p) for p in found]
    assert all(p.policy == "p1" and p.rule == 0 for p in found)


def test_look_alike_group_never_resolves() -> None:
    """Cyrillic 'а', a trailing space, a Kelvin sign: load errors, never the group."""
    text = rule(
        "condition: 'true'\naction: require_approval\n"
        'approvers: ["sre-te\u0430m@company.com", "sre-team@company.com ", "SRE-TEAM@COMPANY.COM"]'
    )
    found = problems(text)
    assert len(found) == 2
    assert all(p.code == "policy_approvers" for p in found)
    assert "sre-te\\u0430m@company.com" in str(found[0])  # shown escaped, not as a look-alike


def test_upper_case_approver_resolves_the_group() -> None:
    ps = parse_policies(
        rule("condition: 'true'\naction: require_approval\napprovers: [SRE-TEAM@Company.COM]")
    )
    assert ps.rules[0].approvers == ("jane@company.com", "john@company.com")


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        (
            "groups:\n  sre@company.com: [a@company.com, sre@company.com]",
            "nested groups are not supported",
        ),
        ("groups:\n  sre@company.com: [a@company.com]\n  ops: [SRE@company.com]", "nested groups"),
        ('groups:\n  sre@company.com: ["not an email"]', "not a valid ascii email"),
        ('groups:\n  sre@company.com: ["j\u043ehn@company.com"]', "not a valid ascii email"),
        ("groups:\n  sre@company.com: []", "non-empty list"),
        ("groups:\n  sre@company.com: a@company.com", "non-empty list"),
        ('groups:\n  "sre te\u0430m": [a@company.com]', "must be ascii"),
        ('groups:\n  "sre team": [a@company.com]', "plain lowercase name"),
        (
            "groups:\n  sre@company.com: [a@company.com]\n  SRE@company.com: [b@company.com]",
            "defined twice",
        ),
        ("groups: [a@company.com]", "'groups' must be a mapping"),
    ],
)
def test_group_problems(groups: str, fragment: str) -> None:
    text = (
        "policies:\n  - name: p\n    rules:\n      - condition: 'true'\n        action: deny\n"
        + groups
    )
    found = problems(text)
    assert any(fragment in str(p) for p in found), [str(p) for p in found]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("policies: []\nextra: 1", "unknown key 'extra' in the top level"),
        (
            "policies:\n  - name: p\n    rules: [{condition: 'true', action: deny}]\n    owner: me",
            "unknown key 'owner' in policy",
        ),
        ("policies:\n  - name: p\n    rules: []", "non-empty 'rules'"),
        ("policies:\n  - name: p", "non-empty 'rules'"),
        ("policies:\n  - name: p\n    rules: [5]", "rule must be a mapping"),
        ("policies:\n  - rules: [{condition: 'true', action: deny}]", "policy name missing"),
        (
            "policies:\n  - name: 'has space'\n    rules: [{condition: 'true', action: deny}]",
            "policy name 'has space'",
        ),
        (
            "policies:\n  - name: p\n    description: 5\n"
            "    rules: [{condition: 'true', action: deny}]",
            "description must be a string",
        ),
        ("policies: {a: 1}", "'policies' must be a list"),
        ("policies:\n  - just-a-string", "policies[0] must be a mapping"),
        ("- a\n- b", "top level must be a mapping"),
        ("", "file is empty"),
        ("# only a comment\n", "file is empty"),
        (
            "policies:\n  - name: p\n    rules: [{condition: 'true', action: deny}]\n"
            "  - name: p\n    rules: [{condition: 'true', action: deny}]",
            "duplicate policy name (in the same file)",
        ),
        (
            "policies:\n  - name: p\n    rules:\n"
            "      - condition: 'true'\n        action: deny\n        action: allow",
            "duplicate key 'action'",
        ),
        ("policies: [\n", "invalid yaml"),
        ("policies:\n  - name: p\n\trules: []", "invalid yaml"),
        ("policies: !!python/object:os.system {}", "invalid yaml"),
        ("a: &x [1]\nb: *x\n<<: {c: 1}", "invalid yaml"),
        (
            "policies:\n  - name: p\n    rules: [{condition: 'true', action: deny, min_approvals: 1"
            + "0" * 5000
            + "}]",
            "invalid yaml value",
        ),
    ],
)
def test_structure_problems(text: str, fragment: str) -> None:
    found = problems(text)
    assert any(fragment in str(p) for p in found), [str(p) for p in found]
    assert all(p.file == "pol.yaml" for p in found)


def test_yaml_syntax_error_has_line_and_column() -> None:
    p = one("policies:\n  - name: p\n    rules: [\n  oops: : :\n")
    assert p.code == "policy_syntax" and p.line is not None and p.column is not None
    assert f"line {p.line}" in str(p)


def test_all_problems_are_reported_not_just_the_first() -> None:
    text = """
policies:
  - name: a
    rules:
      - condition: "unknown_one == 1"
        action: deny
      - condition: "destructive > 1"
        action: deny
      - condition: "true"
        action: require_approval
        approvers: []
  - name: b
    rules:
      - condition: "action == 'x'"
        action: require_approval
        approvers: [a@b.com]
        min_approvals: 0
      - condition: "true"
        action: maybe
"""
    found = problems(text)
    located = {(p.policy, p.rule) for p in found}
    assert located == {("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)}
    with pytest.raises(PolicyError, match=r"and 4 more problems"):
        parse_policies(text)


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("policies: []\n" + "#" * 3000)
    with pytest.raises(PolicyError) as info:
        load_policies(path, Limits(max_policy_file_bytes=1024))
    assert info.value.code == "policy_too_large" and "big.yaml" in str(info.value)
    p = problems("policies: []\n" + "#" * 3000, limits=Limits(max_policy_file_bytes=1024))[0]
    assert p.code == "policy_too_large"


def test_too_many_rules() -> None:
    rules = "".join("      - condition: 'true'\n        action: allow\n" for _ in range(5))
    p = one(f"policies:\n  - name: p\n    rules:\n{rules}", limits=Limits(max_rules=4))
    assert p.code == "policy_too_large" and "5 rules exceed the limit of 4" in p.message


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"policies: []\n# caf\xe9\n")
    with pytest.raises(PolicyError, match="not valid utf-8"):
        load_policies(path)


# --------------------------------------------------------------------------- paths


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


POLICY_A = """
policies:
  - name: a
    rules:
      - condition: "action == 'deploy'"
        action: require_approval
        approvers: [ops]
groups:
  ops: [x@company.com]
"""
POLICY_B = """
policies:
  - name: b
    rules:
      - condition: "action == 'rotate'"
        action: require_approval
        approvers: [ops, y@company.com]
"""


def test_directory_is_sorted_and_merged(tmp_path: Path) -> None:
    write(tmp_path / "20-b.yml", POLICY_B)
    write(tmp_path / "10-a.yaml", POLICY_A)
    write(tmp_path / "notes.txt", "not yaml: [")
    ps = load_policies(tmp_path)
    assert [p.name for p in ps.policies] == ["a", "b"]
    assert ps.rules[1].approvers == ("x@company.com", "y@company.com")
    assert [Path(s).name for s in ps.sources] == ["10-a.yaml", "20-b.yml"]


def test_list_of_paths_and_duplicates_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", POLICY_A)
    b = write(tmp_path / "b.yaml", POLICY_B)
    assert len(load_policies([a, b])) == 2
    assert len(load_policies([str(a), a])) == 1  # the same file twice is read once
    dup = write(
        tmp_path / "dup.yaml", POLICY_A.replace("ops: [x@company.com]", "other: [z@company.com]")
    )
    found = problems_from_paths([a, dup])
    assert any("duplicate policy name (also in" in str(p) and p.file == str(dup) for p in found)
    group_dup = write(tmp_path / "g.yaml", "groups:\n  ops: [q@company.com]\n")
    found = problems_from_paths([a, group_dup])
    assert any("group 'ops' is defined twice" in str(p) for p in found)


def problems_from_paths(paths: list[Path]) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        load_policies(paths)
    return list(info.value.detail["problems"])


def test_problems_in_several_files_are_all_listed(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.yaml",
        "policies:\n  - name: a\n    rules: [{condition: 'x == 1', action: deny}]\n",
    )
    b = write(
        tmp_path / "b.yaml",
        "policies:\n  - name: b\n    rules: [{condition: 'y == 1', action: deny}]\n",
    )
    found = problems_from_paths([a, b])
    assert [Path(p.file).name for p in found] == ["a.yaml", "b.yaml"]


@pytest.mark.parametrize("make", ["missing", "empty-dir", "no-paths"])
def test_missing_paths_are_usage_errors(tmp_path: Path, make: str) -> None:
    arg: object = {"missing": tmp_path / "nope.yaml", "empty-dir": tmp_path, "no-paths": []}[make]
    with pytest.raises(PolicyError) as info:
        load_policies(arg)  # type: ignore[arg-type]
    assert info.value.code == "policy_not_found"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (60, 60),
        ("30m", 1800),
        ("1h", 3600),
        ("2h30m", 9000),
        ("1d", 86400),
        ("45s", 45),
        ("1d2h3m4s", 93784),
        ("3600", 3600),
        ("7d", 604800),
    ],
)
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", [0, -5, "0m", "", "1x", "h", "1h ", "8d", 604801, True, 1.5, None, "١h"]
)
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)
