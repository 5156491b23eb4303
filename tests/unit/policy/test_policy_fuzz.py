"""Property tests: the compiler only ever returns a Condition or raises PolicyError, and
evaluation only ever returns a bool or raises EvalError, which `decide` turns into a
fail-closed decision. Nothing else escapes (SyntaxError, RecursionError, TypeError...)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsgate.config import Limits
from opsgate.decision import Decision, Effect
from opsgate.errors import PolicyError
from opsgate.policy import PolicyRequest, PolicySet, compile_condition
from opsgate.policy.condition import Condition, EvalError
from opsgate.policy.engine import Policy, Rule

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [
    "action",
    "resource",
    "capability",
    "environment",
    "destructive",
    "agent.name",
    "agent.did",
    "agent.trust_score",
    "agent.depth",
    "agent.sponsor",
    "time.hour",
    "time.weekday",
    "time.minute",
    "params.a",
    "params.b",
    "params.tags",
    # and things that must be refused
    "agent",
    "params",
    "foo",
    "agent.nope",
    "x.y",
    "params.__class__",
    "action.__class__",
]
LITERALS = [
    "'deploy'",
    "'production'",
    "'a'",
    "''",
    "0",
    "1",
    "-3",
    "2.5",
    "800",
    "true",
    "false",
    "True",
    "None",
    "null",
    "[]",
    "['a', 'b']",
    "[1, 2, null]",
    "[true]",
    "1e999",
    "b'x'",
    "...",
]
COMPARE = ["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "+", "*", "%", "and", "or"]
FUNCS = ["startswith", "endswith", "lower", "len", "open", "eval", "getattr"]

atoms = st.sampled_from(NAMES + LITERALS)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(COMPARE), children).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"
        ),
        children.map(lambda c: f"not {c}"),
        children.map(lambda c: f"({c})"),
        st.tuples(st.sampled_from(FUNCS), st.lists(children, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
        st.lists(children, max_size=3).map(lambda xs: f"[{', '.join(xs)}]"),
        children.map(lambda c: f"{c}[0]"),
        children.map(lambda c: f"{c}.x"),
    )


soup = st.recursive(atoms, _extend, max_leaves=25)

# Mostly well-typed expressions, so evaluation (not just refusal) gets exercised.
num_terms = st.sampled_from(
    [
        "agent.trust_score",
        "agent.depth",
        "time.hour",
        "time.minute",
        "0",
        "800",
        "-1",
        "2.5",
        "params.a",
        "params.b",
        "len(resource)",
        "len(params.tags)",
        "len(params.a)",
    ]
)
str_terms = st.sampled_from(
    [
        "action",
        "resource",
        "environment",
        "capability",
        "agent.name",
        "'production'",
        "'a'",
        "''",
        "lower(params.b)",
        "params.a",
        "params.tags",
        "lower(resource)",
    ]
)
list_terms = st.sampled_from(["['a', 'b']", "[1, 2]", "[null, 'production']", "params.tags", "[]"])
comparisons = st.one_of(
    st.tuples(num_terms, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), num_terms),
    st.tuples(str_terms, st.sampled_from(["==", "!=", "<", ">=", "in", "not in"]), str_terms),
    st.tuples(st.one_of(num_terms, str_terms), st.sampled_from(["in", "not in"]), list_terms),
    st.tuples(st.sampled_from(["startswith", "endswith"]), str_terms, str_terms).map(
        lambda t: (f"{t[0]}({t[1]}, {t[2]})", "==", "true")
    ),
).map(lambda t: f"{t[0]} {t[1]} {t[2]}")
bool_atoms = st.one_of(
    comparisons, st.sampled_from(["destructive", "true", "params.a", "params.zz"])
)
typed = st.recursive(
    bool_atoms,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda c: f"not {c}"),
    ),
    max_leaves=12,
)
expressions = st.one_of(soup, typed, typed)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)

requests = st.builds(
    PolicyRequest,
    action=st.sampled_from(["deploy", "migrate", "read", "x"]),
    resource=st.sampled_from(["production/app-web", "secrets/prod/db", "r"]),
    environment=st.one_of(st.none(), st.sampled_from(["production", "staging", ""])),
    destructive=st.booleans(),
    agent_name=st.text(max_size=5),
    agent_trust_score=st.integers(0, 1000),
    agent_depth=st.integers(0, 5),
    params=st.dictionaries(st.sampled_from(["a", "b", "tags", "zz"]), json_values, max_size=4),
    hour=st.integers(0, 23),
    weekday=st.integers(0, 6),
    minute=st.integers(0, 59),
)


def compile_or_refuse(text: str, limits: Limits | None = None) -> Condition | None:
    try:
        return compile_condition(text, limits)
    except PolicyError as exc:
        assert exc.detail["problems"]
        assert "\n" not in exc.message
        return None


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_compiles_or_is_refused(text: str) -> None:
    compile_or_refuse(text)


@FUZZ
@given(
    st.text(
        alphabet="()[]'\"notandor=<>!,.:_-+*~@ \t\n\\0123456789abcdeflmprsuxyzé\x00", max_size=200
    )
)
def test_syntax_soup_compiles_or_is_refused(text: str) -> None:
    compile_or_refuse(text)


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["(", "[", "not ", "-", "~", "'", "lower(", "((not "]), st.integers(50, 20_000)
)
def test_pathological_nesting_is_refused(prefix: str, count: int) -> None:
    limits = Limits(
        max_condition_chars=100_000, max_expression_depth=256, max_expression_nodes=100_000
    )
    compile_or_refuse(prefix * count + "true", limits)


def _rule_set(condition: Condition, effect: Effect) -> PolicySet:
    rule = Rule(
        "fuzz",
        0,
        effect,
        condition,
        approvers=("a@b.com",),
        min_approvals=1,
        expires_in_seconds=60,
    )
    return PolicySet([Policy("fuzz", (rule,))])


@FUZZ
@given(expressions, st.lists(requests, min_size=1, max_size=3))
def test_structured_expressions_evaluate_to_bool_or_eval_error(
    text: str, reqs: list[PolicyRequest]
) -> None:
    condition = compile_or_refuse(text)
    if condition is None:
        return
    deny = _rule_set(condition, "deny")
    allow = _rule_set(condition, "allow")
    for request in reqs:
        try:
            value: Any = condition.test(request)
        except EvalError:
            value = None
        assert value is None or type(value) is bool
        d = deny.decide(request)
        assert isinstance(d, Decision)
        if value is None and condition.actions is None:
            assert d.effect == "deny" and d.errors  # fail closed
        a = allow.decide(request)
        if value is None and condition.actions is None:
            assert a.matched == () and a.errors  # an error never allows


@FUZZ
@given(requests)
def test_decisions_over_real_policies_never_raise(request: PolicyRequest) -> None:
    from pathlib import Path

    from opsgate.policy import load_policies

    data = Path(__file__).resolve().parents[2] / "data" / "policy"
    for name in ("devops.yaml", "operators.yaml", "fail_closed.yaml"):
        policies = _cached(data / name, load_policies)
        d = policies.decide(request)
        assert d.effect in ("allow", "deny", "require_approval")
        if d.effect == "require_approval":
            assert d.requirements and d.approvers and d.min_approvals >= 1


_CACHE: dict[Any, PolicySet] = {}


def _cached(path: Any, load: Any) -> PolicySet:
    if path not in _CACHE:
        _CACHE[path] = load(path)
    return _CACHE[path]
