"""Refusals no agent can be charged for (forged, garbage or foreign tokens, unknown
agents) cost no durable row each: they are counted exactly, per code, and written as
one summary event per interval and when the gate closes. A refusal that names a
proven agent is still recorded on its own."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import opsgate
from opsgate.audit.summary import SUMMARY_EVENT, RefusalSummary
from opsgate.errors import AuditError

SCOPE = ["deploy:staging"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _garbage(i: int, real: str, foreign: str) -> str:
    """Four kinds, in turn: not a JWS, a bad signature, a foreign gate's, junk JSON."""
    header, payload, sig = real.split(".")
    kind = i % 4
    if kind == 0:
        return f"garbage-{i}"
    if kind == 1:
        return f"{header}.{payload}.{_b64(bytes(64))}"
    if kind == 2:
        return foreign
    return f"{_b64(orjson.dumps({'alg': 'EdDSA', 'kid': f'k{i}'}))}.{_b64(b'[]')}.{sig}"


def _refused(gate: opsgate.Gate, token: str) -> None:
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.credential_manager.verify(token)
    assert info.value.detail.get("agent") is None


def _summaries(gate: opsgate.Gate) -> list[dict[str, object]]:
    return [r.event for r in gate.audit.events(event_type=SUMMARY_EVENT)]


def test_two_thousand_garbage_tokens_cost_one_row_and_are_counted_exactly(
    tmp_path: Path,
) -> None:
    other = opsgate.Gate.open(tmp_path / "other")
    stranger = other.register_agent("x", SCOPE, sponsor="o@company.com")
    foreign = other.credential_manager.issue_credential(stranger.did, SCOPE).token
    other.close()
    gate = opsgate.Gate.open(tmp_path / "state", audit={"refusal_summary_seconds": 3600})
    agent = gate.register_agent("agent", SCOPE, sponsor="o@company.com")
    real = gate.credential_manager.issue_credential(agent.did, SCOPE).token
    head, batches = gate.audit.head()[0], gate.audit.batches
    codes: dict[str, int] = {}
    for i in range(2000):
        try:
            gate.authorize(_garbage(i, real, foreign), "deploy:staging/web")
        except opsgate.InvalidCredential as exc:
            assert exc.detail.get("agent") is None
            codes[exc.code] = codes.get(exc.code, 0) + 1
    assert sum(codes.values()) == 2000 and len(codes) >= 3, codes
    # Nothing written per refusal: no row, no transaction (so no fsync).
    assert gate.audit.head()[0] == head
    assert gate.audit.batches == batches
    assert gate.trust_score(agent.did) == agent.trust_score
    gate.close()
    with opsgate.Gate.open(tmp_path / "state") as again:
        (summary,) = _summaries(again)
        assert summary["count"] == 2000
        assert summary["codes"] == dict(sorted(codes.items()))
        assert "actor" not in summary  # charged to, and said to come from, no one
        samples = summary["samples"]
        assert isinstance(samples, list) and 1 <= len(samples) <= 5
        assert {s["code"] for s in samples} <= set(codes)
        text = orjson.dumps(summary).decode()
        assert real.split(".")[2] not in text and foreign.split(".")[1] not in text
        assert "garbage-" not in text
        assert again.audit.head()[0] - head <= 2  # the summary (and its checkpoint)
        assert again.audit.verify().ok


def test_the_summary_is_written_periodically_without_a_later_refusal(tmp_path: Path) -> None:
    def total(gate: opsgate.Gate) -> int:
        return sum(int(s["count"]) for s in _summaries(gate))  # type: ignore[call-overload]

    def wait_for(gate: opsgate.Gate, count: int) -> None:
        deadline = time.monotonic() + 20
        while total(gate) < count and time.monotonic() < deadline:
            time.sleep(0.02)  # the timer writes it on its own; nothing else will

    with opsgate.Gate.open(tmp_path / "state", audit={"refusal_summary_seconds": 0.2}) as gate:
        for i in range(30):
            _refused(gate, f"junk-{i}")
        wait_for(gate, 30)
        assert total(gate) == 30  # exact, however the windows fell
        assert all(s["codes"] == {"malformed": s["count"]} for s in _summaries(gate))
        written = len(_summaries(gate))
        for i in range(3):  # a later burst goes into later windows
            _refused(gate, f"junk-{i}")
        wait_for(gate, 33)
        assert total(gate) == 33 and len(_summaries(gate)) > written


def test_a_proven_agents_refusal_is_still_recorded_alone(tmp_path: Path) -> None:
    with opsgate.Gate.open(tmp_path / "state", audit={"refusal_summary_seconds": 3600}) as gate:
        agent = gate.register_agent("agent", SCOPE, sponsor="o@company.com")
        cred = gate.credential_manager.issue_credential(agent.did, SCOPE)
        gate.credential_manager.revoke(cred.jti)
        try:
            gate.authorize(cred.token, "deploy:staging/web")
        except opsgate.InvalidCredential as exc:
            assert exc.code == "revoked"
        rejected = [r for r in gate.audit.events(event_type="credential.rejected")]
        assert len(rejected) == 1 and rejected[0].actor == agent.did
        assert _summaries(gate) == []


class _FlakyLog:
    """An audit log whose first write fails (storage trouble), then records."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures = 1

    def append(self, event_type: str, *, actor: str | None = None, **fields: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise AuditError("audit write failed: OSError", code="audit_write_failed")
        self.events.append({"type": event_type, **fields})


def test_a_failed_summary_write_loses_no_count() -> None:
    log = _FlakyLog()
    summary = RefusalSummary(log, interval=3600)
    for i in range(5):
        summary.add("malformed", "token is not a compact jws", 100.0 + i)
    assert summary.flush() is False and summary.pending == 5
    summary.add("bad_signature", "token signature is invalid", 99.0)
    summary.add("malformed", "token is not a compact jws", 200.0)
    summary.close()
    (event,) = log.events
    assert event["count"] == 7
    assert event["codes"] == {"bad_signature": 1, "malformed": 6}
    assert (event["since"], event["until"]) == (99.0, 200.0)
    assert [s["code"] for s in event["samples"]] == ["malformed", "bad_signature"]
