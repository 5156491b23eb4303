"""Capability grammar and coverage: examples from the design, then hypothesis properties."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from opsgate import capabilities as caps
from opsgate.errors import CapabilityError

FAST = settings(max_examples=120, deadline=None)

# -- strategies -----------------------------------------------------------------------------

SEGMENT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
actions = st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True)
segments = st.text(SEGMENT_CHARS, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
resources = st.lists(segments, min_size=1, max_size=6)
concrete_caps = st.builds(lambda a, r: f"{a}:{'/'.join(r)}", actions, resources)

# A small alphabet so that coverage relations between random capabilities are common.
small_segments = st.sampled_from(["a", "b", "*"])


@st.composite
def small_caps(draw: st.DrawFn) -> caps.Capability:
    segs = draw(st.lists(small_segments, min_size=1, max_size=4))
    if draw(st.booleans()):
        segs.append("**")
    action = draw(st.sampled_from(["read", "deploy"]))
    return caps.parse(f"{action}:{'/'.join(segs)}")


def p(text: str) -> caps.Capability:
    return caps.parse(text)


# -- examples from the design ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "wanted", "covered"),
    [
        ("deploy:production", "deploy:production", True),
        ("deploy:production", "deploy:production/app-web", True),
        ("deploy:production", "deploy:production/app-web/canary", True),
        ("deploy:production", "deploy:production-eu", False),
        ("deploy:production", "deploy:productio", False),
        ("deploy:production", "deploy:staging", False),
        ("deploy:production/app-web", "deploy:production", False),
        ("deploy:production/app-web", "deploy:production/app-web2", False),
        ("deploy:production", "read:production", False),
        ("read:secrets/app/*", "read:secrets/app/db", True),
        ("read:secrets/app/*", "read:secrets/app/db/password", True),
        ("read:secrets/app/*", "read:secrets/app", False),
        ("read:secrets/app/*", "read:secrets/other/db", False),
        ("read:secrets/**", "read:secrets/a/b/c", True),
        ("read:secrets/**", "read:secrets", False),
        ("read:secrets/*/db", "read:secrets/app/db", True),
        ("read:secrets/*/db", "read:secrets/app/cache", False),
        # requests holding wildcards (delegation): a narrower grant never covers them
        ("read:secrets/app", "read:secrets/*", False),
        ("read:secrets/app", "read:secrets/**", False),
        ("read:secrets", "read:secrets/*", True),
        ("read:secrets", "read:secrets/**", True),
        ("read:secrets/*", "read:secrets/app/*", True),
        ("read:secrets/app/*", "read:secrets/*/x", False),
        ("migrate:database/orders", "migrate:database/orders", True),
    ],
)
def test_coverage_examples(grant: str, wanted: str, covered: bool) -> None:
    assert caps.covers(p(grant), p(wanted)) is covered


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "deploy",
        "deploy:",
        ":production",
        "Deploy:production",
        "1deploy:production",
        "de ploy:production",
        "deploy:production/",
        "deploy:/production",
        "deploy:production//app",
        "deploy:prod uction",
        "deploy:production/../staging",
        "deploy:production/./staging",
        "deploy:..",
        "deploy:production/**/app",
        "deploy:**/app",
        "deploy:production/a*",
        "deploy:production/***",
        "*:production",
        "**:production",
        "deploy:production\n",
        "deploy:production\x00",
        "déploy:production",
        "deploy:prodüction",
        "deploy:" + "/".join(["a"] * 33),
        "deploy:" + "a" * 300,
    ],
)
def test_malformed_capabilities_raise(text: str) -> None:
    with pytest.raises(CapabilityError) as info:
        caps.parse(text)
    assert info.value.code == "capability_malformed"


@pytest.mark.parametrize("value", [None, 5, b"deploy:production", 1.5])
def test_non_string_hashable_input_raises_capability_error(value: Any) -> None:
    with pytest.raises(CapabilityError) as info:
        caps.parse(value)
    assert info.value.code == "capability_malformed"


@pytest.mark.parametrize("value", [["deploy:production"], {"deploy": "production"}])
def test_unhashable_input_raises_capability_error(value: Any) -> None:
    """A capability list from JSON may hold anything; the error must stay in the family."""
    with pytest.raises(CapabilityError) as info:
        caps.parse(value)
    assert info.value.code == "capability_malformed"


@pytest.mark.parametrize("text", ["deploy:*", "deploy:**", "read:*/app", "read:**"])
def test_grant_with_wildcard_first_segment_is_unrestricted(text: str) -> None:
    caps.parse(text)  # grammatical ...
    with pytest.raises(CapabilityError) as info:
        caps.parse_grant(text)  # ... but never grantable
    assert info.value.code == "capability_unrestricted"


@pytest.mark.parametrize("text", ["read:secrets/*", "read:secrets/**", "deploy:production/*/x"])
def test_request_must_be_concrete(text: str) -> None:
    assert caps.parse_grant(text).has_wildcard
    with pytest.raises(CapabilityError) as info:
        caps.parse_request(text)
    assert info.value.code == "capability_malformed"


def test_parse_all_refuses_a_bare_string() -> None:
    with pytest.raises(CapabilityError):
        caps.parse_all("deploy:production", grant=True)  # type: ignore[arg-type]
    assert caps.parse_all(["deploy:production"], grant=False) == (p("deploy:production"),)


def test_covered_by_any() -> None:
    grants = (p("deploy:staging"), p("read:secrets/app"))
    assert caps.covered_by_any(grants, p("read:secrets/app/db"))
    assert not caps.covered_by_any(grants, p("read:secrets/apps"))
    assert not caps.covered_by_any((), p("deploy:staging"))


# -- properties ----------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=80))
@example("deploy:production/**/x")
@example("a:" + "/" * 40)
@example("a:\u0000")
def test_parse_raises_only_capability_error(text: str) -> None:
    try:
        cap = caps.parse(text)
    except CapabilityError as exc:
        assert exc.code == "capability_malformed"
        assert "\n" not in exc.message
    else:
        assert str(cap) == _lower_resource(text)


def _lower_resource(text: str) -> str:
    """The canonical spelling: resource segments have one case (lower)."""
    action, _, resource = text.partition(":")
    return f"{action}:{resource.lower()}"


@FAST
@given(st.text(alphabet="ab:/*.- Z", max_size=24))
def test_parse_raises_only_capability_error_on_grammar_like_text(text: str) -> None:
    for fn in (caps.parse, caps.parse_grant, caps.parse_request):
        with contextlib.suppress(CapabilityError):
            fn(text)


@FAST
@given(concrete_caps)
def test_concrete_capability_round_trips_and_covers_itself(text: str) -> None:
    cap = caps.parse(text)
    assert str(cap) == _lower_resource(text)
    assert caps.parse(str(cap)) == cap
    assert caps.parse_request(text) == cap
    assert caps.covers(cap, cap)


@FAST
@given(small_caps())
def test_any_capability_round_trips_and_covers_itself(cap: caps.Capability) -> None:
    assert caps.parse(str(cap)) == cap
    assert caps.covers(cap, cap)


@FAST
@given(concrete_caps, resources)
def test_grant_covers_every_extension_at_segment_boundaries(text: str, more: list[str]) -> None:
    grant = caps.parse(text)
    longer = caps.parse(f"{text}/{'/'.join(more)}")
    assert caps.covers(grant, longer)
    assert not caps.covers(longer, grant)  # narrower never covers broader


@FAST
@given(concrete_caps, st.text(SEGMENT_CHARS, min_size=1, max_size=8))
def test_grant_never_covers_a_sibling_prefix_string(text: str, suffix: str) -> None:
    sibling = text + suffix  # e.g. deploy:production -> deploy:production-eu
    assume(not sibling.endswith((":.", "/.", ":..", "/..")))
    grant, other = caps.parse(text), caps.parse(sibling)
    assert not caps.covers(grant, other)
    assert not caps.covers(other, grant)
    extended = caps.parse(sibling + "/x")
    assert not caps.covers(grant, extended)


@FAST
@given(concrete_caps, actions)
def test_other_action_never_covered(text: str, action: str) -> None:
    cap = caps.parse(text)
    assume(action != cap.action)
    assert not caps.covers(cap, caps.Capability(action, cap.segments))


@FAST
@given(small_caps(), small_caps())
def test_coverage_is_antisymmetric_up_to_equivalence(
    a: caps.Capability, b: caps.Capability
) -> None:
    """If a covers b and b covers a, they grant the same concrete capabilities."""
    if caps.covers(a, b) and caps.covers(b, a):
        for probe in ("a", "b", "a/a", "b/a/b", "a/b/a/b/a"):
            r = caps.Capability(a.action, tuple(probe.split("/")))
            assert caps.covers(a, r) == caps.covers(b, r)


@settings(max_examples=500, deadline=None)
@given(small_caps(), small_caps(), small_caps())
def test_coverage_is_transitive(a: caps.Capability, b: caps.Capability, c: caps.Capability) -> None:
    if caps.covers(a, b) and caps.covers(b, c):
        assert caps.covers(a, c), (str(a), str(b), str(c))


@st.composite
def generalised(draw: st.DrawFn) -> tuple[caps.Capability, caps.Capability]:
    """(grant, request): the grant is a prefix of the request with some segments widened."""
    request = draw(small_caps())
    k = draw(st.integers(1, len(request.segments)))
    segs = ["*" if s != "**" and draw(st.booleans()) else s for s in request.segments[:k]]
    if draw(st.booleans()):
        segs[-1] = "**"
    return caps.Capability(request.action, tuple(segs)), request


@FAST
@given(generalised())
def test_a_generalised_prefix_covers_the_request(pair: tuple[Any, Any]) -> None:
    grant, request = pair
    assert caps.covers(grant, request), (str(grant), str(request))


@settings(max_examples=200, deadline=None)
@given(generalised(), st.lists(st.sampled_from(["a", "b", "c"]), max_size=8))
def test_coverage_is_sound_for_concrete_instances(pair: tuple[Any, Any], fill: list[str]) -> None:
    """If a grant covers a wildcard request, it covers every concrete instance of it."""
    grant, request = pair
    fill_iter = iter([*fill, *["c"] * 8])
    segs: list[str] = []
    for s in request.segments:
        if s == "*":
            segs.append(next(fill_iter))
        elif s == "**":
            segs.extend([next(fill_iter), next(fill_iter)])
        else:
            segs.append(s)
    assert caps.covers(grant, caps.Capability(request.action, tuple(segs)))


@FAST
@given(concrete_caps)
def test_wildcard_grants_under_a_named_first_segment_are_grantable(text: str) -> None:
    cap = caps.parse(text)
    for tail in ("*", "**"):
        wide = caps.parse_grant(f"{text}/{tail}")
        assert caps.covers(cap, wide)
        assert not caps.covers(wide, cap)
