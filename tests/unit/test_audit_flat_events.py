"""The one-pass preparation of flat audit events gives exactly what the general
path (redact, then clean_event, None values dropped) gives, for any event: secret
keys in any case, structural keys, secret-shaped or unencodable values, numbers out
of range, nested values. A difference would be a record that hides less than it
should, or a hash that `audit verify` recomputes differently."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from opsgate.audit.events import prepare, redact
from opsgate.audit.sanitize import REDACT_KEYS, STRUCTURAL, clean_event

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJkaWQ6a2V5OnoifQ.c2lnbmF0dXJlc2lnbmF0dXJlc2ln"
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----"
OPAQUE = "Zk9yZ2VkQmFzZTY0VXJsUnVuT2ZNaXhlZENhc2UxMjM0NTY3ODkw"

keys = st.one_of(
    st.sampled_from(["capability", "digest", "reasons", "summary", "code", "n", "detail"]),
    st.sampled_from(sorted(REDACT_KEYS)).map(lambda k: k.upper() if len(k) % 2 else k),
    st.sampled_from(sorted(STRUCTURAL)),
    st.sampled_from([JWT, OPAQUE, "bad\udc80key"]),
    st.text(max_size=12),
)
texts = st.one_of(
    st.sampled_from([JWT, PEM, OPAQUE, "lone \ud800 surrogate", "did:key:" + OPAQUE]),
    st.text(max_size=40),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
values = st.recursive(
    st.one_of(scalars, st.lists(texts, max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=8,
)


def _general(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in clean_event(redact(fields)).items() if v is not None}


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
@example({"value": "s3cret", "capability": "read:secrets/staging/db"})
@example({"Password": "hunter2", "reasons": ["allow", JWT]})
@example({"signature": OPAQUE, "summary": OPAQUE, "n": 2**64})
@example({"reasons": ["a", 1]})
@example({"n": 2**64, "code": -(2**63) - 1})
@example({"n": float("inf"), "code": float("nan")})
def test_a_flat_event_is_prepared_exactly_as_the_general_path(fields: dict[str, Any]) -> None:
    for _ in range(2):  # the second time, every memo (keys, clean texts) is warm
        event = prepare("t.e", "did:key:z", fields)
        assert event == {**_general(fields), "type": "t.e", "actor": "did:key:z"}


def test_secret_keys_are_redacted_on_the_fast_path_too() -> None:
    for key in ("value", "VALUE", "Token", "proof"):
        fields = {"capability": "write:secrets/staging/db", key: "hunter2-distinct"}
        prepare("t.e", None, fields)  # warm the memo with these names
        assert "hunter2-distinct" not in str(prepare("t.e", None, fields))
