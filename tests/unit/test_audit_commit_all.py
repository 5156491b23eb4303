"""`AuditLog.commit_all`: several units in one transaction, in order, all or none; a
unit's `previous_seq_field` names the seq of the unit committed just before it (a
read's outcome naming its attempt), whatever else shares the batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import opsgate
from opsgate.audit.events import AuditRecord, prepare
from opsgate.audit.writer import Change, Pending, Unit


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[opsgate.Gate]:
    g = opsgate.Gate.open(tmp_path / "state")
    yield g
    g.close()


def _pair(at: float) -> list[Unit]:
    return [
        Unit("operation.attempt", {"capability": "read:secrets/staging/x"}, "did:key:z1", at),
        Unit(
            "operation.outcome",
            {"capability": "read:secrets/staging/x", "outcome": "succeeded"},
            "did:key:z1",
            at,
            previous_seq_field="attempt_seq",
        ),
    ]


def test_an_outcome_names_its_own_attempt_when_equal_events_share_a_batch(
    gate: opsgate.Gate,
) -> None:
    """Two callers' identical attempts (one agent, one instant) in one batch: each
    outcome names its own attempt, not the first equal one."""
    writer = gate.audit._writer
    slots: list[Pending] = []
    for _ in range(2):
        attempt = Pending(prepare("operation.attempt", "did:key:z1", {"capability": "c"}), 5.0)
        outcome = Pending(prepare("operation.outcome", "did:key:z1", {"capability": "c"}), 5.0)
        outcome.link = ("attempt_seq", attempt)
        slots += [attempt, outcome]
    assert slots[0].event == slots[2].event  # equal, not the same slot
    with writer.lock:
        writer.write(slots)
    a1, o1, a2, o2 = (s.record for s in slots)
    assert a1 is not None and o1 is not None and a2 is not None and o2 is not None
    assert o1.event["attempt_seq"] == a1.seq and o2.event["attempt_seq"] == a2.seq
    assert a2.seq == o1.seq + 1
    assert gate.audit.verify().ok


def test_a_link_to_a_slot_that_was_dropped_fails_the_batch_closed(gate: opsgate.Gate) -> None:
    writer = gate.audit._writer
    head = gate.audit.head()
    dropped = Pending(prepare("x.first", None, {}), 1.0, Change(lambda cur: {"_drop": True}))
    linked = Pending(prepare("x.second", None, {}), 1.0)
    linked.link = ("first_seq", dropped)
    with writer.lock:
        writer.write([dropped, linked])
    assert linked.error is not None and linked.record is None
    assert gate.audit.head() == head  # nothing of the batch holds


def test_concurrent_pairs_each_stay_together_and_linked(gate: opsgate.Gate) -> None:
    results: list[list[AuditRecord]] = [[] for _ in range(24)]
    barrier = threading.Barrier(24)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = gate.audit.commit_all(_pair(100.0))  # identical units on purpose

    threads = [threading.Thread(target=run, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    seqs = set()
    for attempt, outcome in results:
        assert attempt.type == "operation.attempt" and outcome.type == "operation.outcome"
        assert outcome.seq == attempt.seq + 1  # adjacent in the chain
        assert outcome.event["attempt_seq"] == attempt.seq
        seqs |= {attempt.seq, outcome.seq}
    assert len(seqs) == 48
    assert gate.audit.verify().ok
