"""The condition language: semantics, static checks, forbidden constructs, columns."""

from __future__ import annotations

import pytest

from opsgate.config import Limits
from opsgate.errors import PolicyError
from opsgate.policy import PolicyRequest, compile_condition
from opsgate.policy.condition import EvalError


def req(**kw: object) -> PolicyRequest:
    base: dict[str, object] = {"action": "deploy", "resource": "production/app-web"}
    base.update(kw)
    return PolicyRequest(**base)  # type: ignore[arg-type]


def check(text: str, **kw: object) -> bool:
    return compile_condition(text).test(req(**kw))


def refuse(text: str, limits: Limits | None = None) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        compile_condition(text, limits)
    err = info.value
    assert "\n" not in str(err)
    assert err.detail["problems"], "every refusal carries a located problem"
    return err


# --------------------------------------------------------------------------- semantics


@pytest.mark.parametrize(
    ("text", "kw", "expected"),
    [
        ("action == 'deploy'", {}, True),
        ("action != 'deploy'", {}, False),
        ("'deploy' == action", {}, True),
        ("environment == null", {}, True),
        ("environment == None", {"environment": "prod"}, False),
        ("environment != null", {"environment": "prod"}, True),
        ("agent.trust_score < 800", {"agent_trust_score": 799}, True),
        ("agent.trust_score <= 800", {"agent_trust_score": 800}, True),
        ("agent.trust_score > 800", {"agent_trust_score": 800}, False),
        ("agent.trust_score >= 800.0", {"agent_trust_score": 800}, True),
        ("0 <= time.hour < 6", {"hour": 5}, True),
        ("0 <= time.hour < 6", {"hour": 6}, False),
        ("1 < 2 < 3", {}, True),
        ("environment in ['production', 'staging']", {"environment": "staging"}, True),
        ("environment not in ['production', 'staging']", {"environment": "dev"}, True),
        ("environment in ['production', null]", {}, True),
        ("'app' in resource", {}, True),
        ("'db' not in resource", {}, True),
        ("destructive", {"destructive": True}, True),
        ("not destructive", {}, True),
        ("not not destructive", {}, False),
        ("true", {}, True),
        ("false or True", {}, True),
        ("(action == 'x' or action == 'deploy') and not destructive", {}, True),
        ("startswith(resource, 'production/')", {}, True),
        ("endswith(resource, '-web')", {}, True),
        ("lower(agent.name) == 'ci'", {"agent_name": "CI"}, True),
        ("len(resource) == 18", {}, True),
        ("capability == 'deploy:production/app-web'", {}, True),
        ("agent.did == 'did:key:z6Mk'", {"agent_did": "did:key:z6Mk"}, True),
        ("agent.sponsor == 'a@b.com'", {"agent_sponsor": "a@b.com"}, True),
        ("agent.depth == 2", {"agent_depth": 2}, True),
        ("time.weekday == 6 and time.minute == 59", {"weekday": 6, "minute": 59}, True),
        ("params.missing == null", {}, True),
        ("params.missing != 'x'", {}, True),
        ("params.n == 1", {"params": {"n": 1.0}}, True),
        ("params.n == 1", {"params": {"n": True}}, False),
        ("params.flag == true", {"params": {"flag": 1}}, False),
        ("params.n in [1, 2]", {"params": {"n": True}}, False),
        ("params.n in [1, 2]", {"params": {"n": 2}}, True),
        ("params.n in [true]", {"params": {"n": 1}}, False),
        ("params.tags == ['a', 1]", {"params": {"tags": ["a", 1]}}, True),
        ("params.tags == ['a', 1]", {"params": {"tags": ["a", True]}}, False),
        ("'pci' in params.tags", {"params": {"tags": ["pci"]}}, True),
        ("1 in params.tags", {"params": {"tags": [True]}}, False),
        ("params.m == params.m", {"params": {"m": {"a": [1, {"b": None}]}}}, True),
        ("params.x > -1.5", {"params": {"x": -1}}, True),
        ("params.s < 'b'", {"params": {"s": "a"}}, True),
        ("len(params.tags) == 2", {"params": {"tags": ["a", "b"]}}, True),
        ("params.list in [1]", {"params": {"list": [1]}}, False),
    ],
)
def test_semantics(text: str, kw: dict[str, object], expected: bool) -> None:
    assert check(text, **kw) is expected


@pytest.mark.parametrize(
    ("text", "kw", "fragment"),
    [
        ("params.replicas > 3", {"params": {"replicas": "3"}}, "cannot order string and number"),
        ("params.replicas > 3", {}, "cannot order null and number"),
        ("params.flag > 0", {"params": {"flag": True}}, "cannot order bool and number"),
        ("environment < 'z'", {}, "cannot order null and string"),
        ("params.flag", {"params": {"flag": "yes"}}, "expected bool, got string"),
        ("params.flag", {}, "expected bool, got null"),
        ("not params.flag", {"params": {"flag": 0}}, "expected bool, got number"),
        ("params.a and true", {"params": {"a": [1]}}, "expected bool, got list"),
        ("'x' in params.n", {"params": {"n": 5}}, "'in' needs a list or a string"),
        ("params.n in params.s", {"params": {"n": 5, "s": "abc"}}, "substring test needs a string"),
        ("'x' in environment", {}, "'in' needs a list or a string, got null"),
        ("lower(params.n) == 'a'", {"params": {"n": 5}}, "expected string, got number"),
        ("len(params.m) > 1", {"params": {"m": {"a": 1}}}, "expected string or list, got map"),
        ("startswith(environment, 'prod')", {}, "expected string, got null"),
    ],
)
def test_runtime_errors_raise_eval_error(text: str, kw: dict[str, object], fragment: str) -> None:
    condition = compile_condition(text)
    with pytest.raises(EvalError) as info:
        condition.test(req(**kw))
    assert fragment in str(info.value)


def test_short_circuit_skips_errors() -> None:
    assert check("params.n != null and params.n > 3") is False
    assert check("params.n == null or params.n > 3") is True


def test_unsupported_param_object_is_an_eval_error() -> None:
    condition = compile_condition("params.x == 1")
    with pytest.raises(EvalError, match="unsupported value"):
        condition.test(req(params={"x": object()}))


# --------------------------------------------------------------------------- action index


@pytest.mark.parametrize(
    ("text", "actions"),
    [
        ("action == 'deploy'", {"deploy"}),
        ("'deploy' == action and destructive", {"deploy"}),
        ("action in ['read', 'write'] and environment == 'prod'", {"read", "write"}),
        ("action in ['read', 'write'] and action == 'read'", {"read"}),
        ("environment == 'prod'", None),
        ("action == 'deploy' or action == 'migrate'", None),
        ("action != 'deploy'", None),
        ("not (action == 'deploy')", None),
    ],
)
def test_action_constraints(text: str, actions: set[str] | None) -> None:
    condition = compile_condition(text)
    assert condition.actions == (frozenset(actions) if actions is not None else None)


def test_residual_drops_action_conjuncts_only() -> None:
    condition = compile_condition("action == 'deploy' and destructive")
    other = req(action="migrate", destructive=True)
    assert condition.residual(other) is True  # the index guarantees the action
    assert condition.test(other) is False  # the full condition still checks it


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "code", "fragment", "column"),
    [
        ("agent.name.upper == 'x'", "policy_forbidden", "only allowed on 'agent'", 1),
        ("action == 'x' and action.__class__ == 1", "policy_forbidden", "only allowed on", 19),
        ("params.__class__ == 1", "policy_forbidden", "starting with '_'", 1),
        ("time.__dict__ == 1", "policy_forbidden", "starting with '_'", 1),
        ("__import__ == 1", "policy_unknown_name", "unknown name '__import__'", 1),
        ("destructive and open('x')", "policy_forbidden", "calls are not allowed", 17),
        ("action.startswith('d')", "policy_forbidden", "calls are not allowed", 1),
        ("startswith(resource, prefix='x')", "policy_forbidden", "keyword arguments", 1),
        ("startswith(resource)", "policy_type", "takes 2 argument", 1),
        ("params.x[0] == 1", "policy_forbidden", "subscripts", 1),
        ("(lambda: true)", "policy_forbidden", "lambdas", 2),
        ("[x for x in [1]] == [1]", "policy_forbidden", "comprehensions", 1),
        ("any(x for x in [1])", "policy_forbidden", "calls are not allowed", 1),
        ("f'{action}' == 'x'", "policy_forbidden", "f-strings", 1),
        ("(x := true)", "policy_forbidden", "assignment expressions", 2),
        ("[*params.x] == [1]", "policy_forbidden", "", 2),
        ("true if destructive else false", "policy_forbidden", "conditional", 1),
        ("agent.depth + 1 > 2", "policy_forbidden", "arithmetic", 1),
        ("environment is None", "policy_forbidden", "use '==' or '!='", 1),
        ("action in ('a', 'b')", "policy_forbidden", "tuples", 11),
        ("action in {'a'}", "policy_forbidden", "set literals", 11),
        ("params.x == {'a': 1}", "policy_forbidden", "dict literals", 13),
        ("params.x == b'x'", "policy_forbidden", "bytes literals", 13),
        ("params.x == 1j", "policy_forbidden", "complex numbers", 13),
        ("params.x == ...", "policy_forbidden", "this literal", 13),
        ("params.x == [[1]]", "policy_forbidden", "list items must be literals", 14),
        ("params.x in [action]", "policy_forbidden", "list items must be literals", 14),
        ("-agent.depth < 0", "policy_forbidden", "sign is only allowed", 1),
        ("~1 == 1", "policy_forbidden", "'~'", 1),
        ("foo == 1", "policy_unknown_name", "unknown name 'foo'", 1),
        ("actoin == 'x'", "policy_unknown_name", "did you mean 'action'", 1),
        ("agent.trust == 1", "policy_unknown_name", "unknown name 'agent.trust'", 1),
        ("time.second == 1", "policy_unknown_name", "unknown name 'time.second'", 1),
        ("agent == 1", "policy_unknown_name", "needs an attribute", 1),
        ("lower == 1", "policy_unknown_name", "is a function", 1),
        ("agent.trust_score == 'high'", "policy_type", "cannot compare number with string", 22),
        ("time.hour == null", "policy_type", "cannot compare number with null", 14),
        ("destructive > 3", "policy_type", "cannot order bool and number", 15),
        ("environment < 5", "policy_type", "cannot order", 15),
        ("action in 5", "policy_type", "'in' needs a list or a string", 11),
        ("agent.depth in 'abc'", "policy_type", "substring test needs a string", 16),
        ("agent.trust_score in ['a', 'b']", "policy_type", "can never be in a list", 22),
        ("action and destructive", "policy_type", "'and' needs true or false, got string", 1),
        ("not action", "policy_type", "'not' needs true or false", 5),
        ("'deploy'", "policy_type", "a condition needs true or false, got string", 1),
        ("params.x == 1 and 5", "policy_type", "got number", 19),
        ("lower(agent.depth) == 'a'", "policy_type", "lower() needs string, got number", 7),
        ("len(destructive) > 1", "policy_type", "len() needs string or list, got bool", 5),
        ("action == 'dеploy'", "policy_type", "can never equal action", 11),
        ("environment == 'production '", "policy_type", "can never equal environment", 16),
        ("action in ['deploy', 'Deploy']", "policy_type", "can never equal action", 11),
        ("startswith(resource, 'prоd/')", "policy_type", "can never match resource", 1),
        ("action == 'a' and action == 'b'", "policy_type", "can never match", 1),
        ("ａction == 'x'", "policy_syntax", "non-ascii character", 1),
        ("action == 'x' and", "policy_syntax", "invalid syntax", 18),
        ("action === 'x'", "policy_syntax", "invalid syntax", 10),
        ("(action == 'x'", "policy_syntax", "never closed", 1),
        ("action == 'x'\nand destructive", "policy_syntax", "parentheses", 15),
        ("action\x00 == 'x'", "policy_syntax", "control character", 7),
        ("   ", "policy_syntax", "empty", None),
        ("params.x == 1" + "0" * 30, "policy_syntax", "out of range", 13),
        ("params.x == 1e999", "policy_syntax", "out of range", 13),
        ("params.p == 'C:\\d'", "policy_syntax", "invalid escape sequence", 13),
    ],
)
def test_refused_with_column(text: str, code: str, fragment: str, column: int | None) -> None:
    err = refuse(text)
    (problem,) = err.detail["problems"]
    assert err.code == code, str(err)
    assert fragment in str(err)
    assert problem.column == column, str(err)
    if column is not None:
        assert f"column {column}" in str(err)


def test_leading_whitespace_keeps_columns_right() -> None:
    (problem,) = refuse("   foo == 1").detail["problems"]
    assert problem.column == 4


def test_columns_count_characters_not_bytes() -> None:
    (problem,) = refuse("params.x == 'ééé' and foo").detail["problems"]
    assert problem.column == 23


def test_multiline_condition_in_parentheses() -> None:
    assert compile_condition("(action == 'deploy'\n and not destructive)").test(req())


def test_look_alike_in_string_literal_of_params_is_allowed() -> None:
    assert check("params.city == 'Zürich'", params={"city": "Zürich"})


@pytest.mark.parametrize(
    ("text", "limits", "fragment"),
    [
        ("true and " * 300 + "true", Limits(), "longer than 2000"),
        ("not " * 40 + "true", Limits(), "nested deeper than 32"),
        ("(" * 300 + "true" + ")" * 300, Limits(max_condition_chars=10_000), "nested"),
        (
            " or ".join(f"params.x == {i}" for i in range(200)),
            Limits(max_condition_chars=10_000),
            "more than 500 nodes",
        ),
        (
            "params.x in [" + ", ".join(["1"] * 600) + "]",
            Limits(max_condition_chars=10_000),
            "nodes",
        ),
        ("action == 'x'", Limits(max_condition_chars=16, max_expression_depth=4), None),
    ],
)
def test_bounded(text: str, limits: Limits, fragment: str | None) -> None:
    if fragment is None:
        compile_condition(text, limits)
        return
    err = refuse(text, limits)
    assert fragment in str(err)
    assert err.code in ("policy_too_large", "policy_syntax")


def test_deep_nesting_beyond_the_parser_is_a_policy_error() -> None:
    limits = Limits(
        max_condition_chars=100_000, max_expression_depth=256, max_expression_nodes=100_000
    )
    for text in ("not " * 20_000 + "true", "[" * 5000 + "]" * 5000, "-" * 50_000 + "1"):
        refuse(text, limits)


@pytest.mark.parametrize(
    "text",
    [
        "'pr\u043eduction' in resource",
        "'pr\\u043eduction' in resource",  # written as an escape
        "agent.name == 'd\u0435ploy-agent'",
        "agent.sponsor == 'j\u043ehn@company.com'",
        "lower(environment) == 'pr\u043eduction'",
        "endswith(lower(resource), '\u0430pp-web')",
        "action == 'deploy' and capability in ['deploy:pr\u043eduction/app']",
    ],
)
def test_look_alike_literals_that_could_never_match_are_refused(text: str) -> None:
    err = refuse(text)
    assert "non-ascii" in str(err) or "can never" in str(err), str(err)


def test_non_ascii_literals_meeting_params_in_calls_are_allowed() -> None:
    assert check("startswith(params.city, 'Zü')", params={"city": "Zürich"})
    assert check("lower(params.city) == 'zürich'", params={"city": "Zürich"})
