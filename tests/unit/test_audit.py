"""Audit log tampering, on SQLite and on the real PostgreSQL (`database_url`).

Each test writes a real log through the gate (registrations, delegation,
credentials, authorizations, a revocation), then edits the audit table with
SQLAlchemy the way an attacker with database access would, and asserts that
`gate.audit.verify()` names the first bad seq and the kind of tampering.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import failing_audit_writes
from sqlalchemy import delete, func, insert, select, update

import opsgate
from opsgate.audit.log import CHECKPOINT_FILE, GENESIS_HASH, REDACTED, load_anchor, redact
from opsgate.store import schema

events = schema.audit_events


# -- helpers: what an attacker with write access to the database can do ----------------------


def body_bytes(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def link(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def rows(gate: opsgate.Gate) -> list[Any]:
    with gate.store.read() as conn:
        return list(conn.execute(select(events).order_by(events.c.seq)).all())


def row(gate: opsgate.Gate, seq: int) -> Any:
    with gate.store.read() as conn:
        return conn.execute(select(events).where(events.c.seq == seq)).one()


def set_row(gate: opsgate.Gate, seq: int, **values: Any) -> None:
    with gate.store.write() as conn:
        conn.execute(update(events).where(events.c.seq == seq).values(**values))


def shift_seqs(gate: opsgate.Gate, after: int, by: int) -> None:
    """Renumber every row with seq > `after` by `by` (through negative seqs: no PK clash)."""
    with gate.store.write() as conn:
        conn.execute(update(events).where(events.c.seq > after).values(seq=-events.c.seq))
        conn.execute(update(events).where(events.c.seq < 0).values(seq=-events.c.seq + by))


def delete_rows(gate: opsgate.Gate, *seqs: int) -> None:
    with gate.store.write() as conn:
        conn.execute(delete(events).where(events.c.seq.in_(seqs)))


def set_head(gate: opsgate.Gate, seq: int, digest: str) -> None:
    with gate.store.write() as conn:
        conn.execute(update(schema.audit_head).values(seq=seq, hash=digest))


def wipe_checkpoints(gate: opsgate.Gate) -> None:
    with gate.store.write() as conn:
        conn.execute(delete(schema.audit_checkpoints))


def forget_state_checkpoint(gate: opsgate.Gate) -> None:
    """Remove the checkpoint the gate keeps in its state dir (outside the database):
    what is left is what the database alone can tell."""
    (gate.state_dir / CHECKPOINT_FILE).unlink()


def forged_event(seq: int, at: float, event_type: str = "credential.issued") -> dict[str, Any]:
    return {
        "type": event_type,
        "actor": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
        "jti": "forgedforgedforgedforg",
        "scope": ["deploy:production"],
        "seq": seq,
        "at": at,
    }


def insert_row(gate: opsgate.Gate, event: dict[str, Any], prev_hash: str) -> str:
    body = body_bytes(event)
    digest = link(prev_hash, body)
    with gate.store.write() as conn:
        conn.execute(
            insert(events).values(
                seq=event["seq"],
                at=event["at"],
                type=event["type"],
                actor=event.get("actor"),
                body=body.decode("utf-8"),
                prev_hash=prev_hash,
                hash=digest,
            )
        )
    return digest


def rechain_from(gate: opsgate.Gate, seq: int) -> str:
    """Recompute prev_hash/hash of every row from `seq` on, and the head: a consistent rewrite."""
    all_rows = rows(gate)
    prev = GENESIS_HASH if seq == 1 else row(gate, seq - 1).hash
    with gate.store.write() as conn:
        for r in all_rows:
            if r.seq < seq:
                continue
            digest = link(prev, r.body.encode("utf-8"))
            conn.execute(
                update(events).where(events.c.seq == r.seq).values(prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(update(schema.audit_head).values(seq=all_rows[-1].seq, hash=prev))
    return prev


def assert_bad(report: Any, seq: int, problem: str, scenario: str = "") -> None:
    assert report.ok is False, (scenario, report)
    assert (report.problem, report.first_bad_seq) == (problem, seq), (scenario, report.reason)


AUDIT_TABLES = (events, schema.audit_head, schema.audit_checkpoints)


def snapshot(gate: opsgate.Gate) -> dict[str, list[dict[str, Any]]]:
    with gate.store.read() as conn:
        return {t.name: [dict(r._mapping) for r in conn.execute(select(t))] for t in AUDIT_TABLES}


def restore(gate: opsgate.Gate, snap: dict[str, list[dict[str, Any]]]) -> None:
    """Put the audit tables back as they were, and check that the log verifies again."""
    with gate.store.write() as conn:
        for t in AUDIT_TABLES:
            conn.execute(delete(t))
            if snap[t.name]:
                conn.execute(insert(t), snap[t.name])
    assert gate.audit.verify().ok


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def audited(tmp_path: Path, database_url: str | None) -> Iterator[opsgate.Gate]:
    """A gate whose log holds real events from every kind of writer."""
    gate = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    sup = gate.register_agent(
        "devops-supervisor",
        capabilities=["deploy:staging", "deploy:production", "read:secrets"],
        sponsor="platform-team@company.com",
        trust_score=920,
    )
    agent = sup.delegate("deploy-agent", ["deploy:staging", "deploy:production"])
    cm = gate.credential_manager
    for _ in range(3):
        cred = cm.issue_credential(agent.did, ["deploy:staging"])
        gate.authorize(cred.token, "deploy:staging/app-web")
    cm.revoke(cred.jti, reason="rotation drill")
    with pytest.raises(opsgate.InvalidCredential):
        cm.verify(cred.token)
    assert gate.audit.head()[0] >= 10
    yield gate
    gate.close()


# -- intact ---------------------------------------------------------------------------------------


def test_intact_log_verifies(audited: opsgate.Gate, tmp_path: Path) -> None:
    report = audited.audit.verify()
    n = audited.audit.head()[0]
    assert report.ok and report.problem is None and report.first_bad_seq is None
    assert report.events == report.head_seq == n == len(rows(audited))
    seqs = [r.seq for r in rows(audited)]
    assert seqs == list(range(1, n + 1))
    anchor = load_anchor(_export(audited, tmp_path))
    report = audited.audit.verify(anchor)
    assert report.ok and report.anchor_checked
    # The chain is what the design says: hash = SHA-256(prev_hash ‖ body), from genesis.
    prev = GENESIS_HASH
    for r in rows(audited):
        assert r.prev_hash == prev
        assert r.hash == link(prev, r.body.encode("utf-8"))
        assert json.loads(r.body)["seq"] == r.seq
        prev = r.hash


def _export(gate: opsgate.Gate, tmp_path: Path) -> Path:
    path = tmp_path / "anchor.json"
    gate.audit.export_checkpoint(path)
    return path


# -- edits -----------------------------------------------------------------------------------------


def test_edits_of_a_row_are_edits_and_undoing_them_heals(audited: opsgate.Gate) -> None:
    """Body, type, actor and time of one row, each edited alone, then put back."""
    forged_actor = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    for seq in (1, 6, audited.audit.head()[0]):
        original = row(audited, seq)
        event = json.loads(original.body)
        event["reason"] = "nothing to see here"
        edits = [
            {"body": body_bytes(event).decode("utf-8")},
            {"body": original.body + " "},
            {"type": "gate.noop"},
            {"actor": forged_actor},
            {"actor": None} if original.actor is not None else {"actor": "operator"},
            {"at": original.at - 3600},
        ]
        for values in edits:
            set_row(audited, seq, **values)
            assert_bad(audited.audit.verify(), seq, "edit")
            set_row(audited, seq, **{k: getattr(original, k) for k in values})
            assert audited.audit.verify().ok, values


def _rewrite_row(gate: opsgate.Gate, seq: int, recompute: bool) -> None:
    r = row(gate, seq)
    event = json.loads(r.body)
    event["actor"] = "operator"
    body = body_bytes(event)
    values: dict[str, Any] = {"body": body.decode("utf-8"), "actor": "operator"}
    if recompute:
        values["hash"] = link(r.prev_hash, body)
    set_row(gate, seq, **values)


def test_recomputed_hashes(audited: opsgate.Gate, tmp_path: Path) -> None:
    snap = snapshot(audited)
    anchor = load_anchor(_export(audited, tmp_path))
    wipe_checkpoints(audited)  # the anchor is kept elsewhere; the attacker wipes the table

    # one row rewritten with its own hash recomputed: the next link breaks
    _rewrite_row(audited, 5, recompute=True)
    assert_bad(audited.audit.verify(), 5, "edit", "one row rehashed")
    restore(audited, snap)

    # the whole chain recomputed from that row on (and the head): the checkpoint the gate
    # keeps in its state dir tells; without it, only the anchor can tell
    wipe_checkpoints(audited)
    _rewrite_row(audited, 5, recompute=False)
    rechain_from(audited, 5)
    report = audited.audit.verify()
    assert report.ok is False and report.problem == "replacement", report
    assert 5 <= report.first_bad_seq <= anchor.seq
    forget_state_checkpoint(audited)
    assert audited.audit.verify().ok
    report = audited.audit.verify(anchor)
    assert report.ok is False and report.problem == "replacement", report
    assert 5 <= report.first_bad_seq <= anchor.seq
    restore(audited, snap)

    # ... or a checkpoint stored in the database, signed by the gate key
    audited.audit.checkpoint()
    n = audited.audit.head()[0]
    _rewrite_row(audited, 4, recompute=False)  # the delegation (its actor, the parent)
    rechain_from(audited, 4)
    report = audited.audit.verify()
    assert report.ok is False and report.problem == "replacement", report
    assert 4 <= report.first_bad_seq <= n


# -- deletions and insertions ---------------------------------------------------------------------


def test_deletions(audited: opsgate.Gate) -> None:
    snap = snapshot(audited)
    n = audited.audit.head()[0]

    delete_rows(audited, 6)
    assert_bad(audited.audit.verify(), 6, "deletion", "row deleted, gap left")
    restore(audited, snap)

    delete_rows(audited, 6)
    shift_seqs(audited, after=6, by=-1)
    set_head(audited, n - 1, row(audited, n - 1).hash)
    assert [r.seq for r in rows(audited)] == list(range(1, n))
    assert_bad(audited.audit.verify(), 6, "deletion", "row deleted, later seqs renumbered")
    restore(audited, snap)

    delete_rows(audited, 6, 7, 8)
    shift_seqs(audited, after=8, by=-3)
    set_head(audited, n - 3, row(audited, n - 3).hash)
    assert_bad(audited.audit.verify(), 6, "deletion", "three rows deleted, renumbered")
    restore(audited, snap)

    delete_rows(audited, 1)
    shift_seqs(audited, after=1, by=-1)
    assert_bad(audited.audit.verify(), 1, "deletion", "first row deleted, renumbered")


def test_insertions(audited: opsgate.Gate) -> None:
    snap = snapshot(audited)
    n, head_hash = audited.audit.head()

    before = row(audited, 5)
    shift_seqs(audited, after=5, by=1)
    insert_row(audited, forged_event(6, before.at + 0.0001), before.hash)
    set_head(audited, n + 1, row(audited, n + 1).hash)
    assert [r.seq for r in rows(audited)] == list(range(1, n + 2))
    assert_bad(audited.audit.verify(), 6, "insertion", "forged row, later seqs renumbered")
    restore(audited, snap)

    before = row(audited, 5)
    shift_seqs(audited, after=5, by=2)
    digest = insert_row(audited, forged_event(6, before.at + 0.0001), before.hash)
    insert_row(audited, forged_event(7, before.at + 0.0002), digest)
    set_head(audited, n + 2, row(audited, n + 2).hash)
    assert_bad(audited.audit.verify(), 6, "insertion", "two forged rows, renumbered")
    restore(audited, snap)

    insert_row(audited, forged_event(n + 1, row(audited, n).at + 1), head_hash)
    assert_bad(audited.audit.verify(), n + 1, "insertion", "forged row behind the head")


# -- reorder, truncation, replacement ---------------------------------------------------------


def _swap(gate: opsgate.Gate, x: int, y: int) -> None:
    with gate.store.write() as conn:
        conn.execute(update(events).where(events.c.seq == x).values(seq=-x))
        conn.execute(update(events).where(events.c.seq == y).values(seq=x))
        conn.execute(update(events).where(events.c.seq == -x).values(seq=y))


def test_swapped_rows_are_a_reorder(audited: opsgate.Gate) -> None:
    for x, y in ((7, 8), (3, 9), (1, 2)):
        _swap(audited, x, y)
        assert_bad(audited.audit.verify(), x, "reorder", f"{x}<->{y}")
        _swap(audited, x, y)
        assert audited.audit.verify().ok


def test_truncations(audited: opsgate.Gate, tmp_path: Path) -> None:
    snap = snapshot(audited)
    n = audited.audit.head()[0]

    delete_rows(audited, n, n - 1, n - 2)
    assert_bad(audited.audit.verify(), n - 2, "truncation", "tail deleted, head kept")
    restore(audited, snap)

    anchor = load_anchor(_export(audited, tmp_path))
    assert anchor.seq == n
    delete_rows(audited, n, n - 1, n - 2)
    set_head(audited, n - 3, row(audited, n - 3).hash)
    report = audited.audit.verify()
    assert_bad(report, n - 2, "truncation", "below a stored checkpoint")
    wipe_checkpoints(audited)
    assert_bad(audited.audit.verify(), n - 2, "truncation", "below the state dir's checkpoint")
    forget_state_checkpoint(audited)
    assert audited.audit.verify().ok  # nothing inside the database can tell any more
    report = audited.audit.verify(anchor)
    assert_bad(report, n - 2, "truncation", "head rewritten, checkpoints wiped, anchor")
    assert report.anchor_checked


def _replace_log(gate: opsgate.Gate, count: int) -> None:
    """Drop every event and write a fresh, internally valid chain of `count` events."""
    start = row(gate, 1).at
    with gate.store.write() as conn:
        conn.execute(delete(events))
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        prev = insert_row(gate, forged_event(seq, start + seq, "gate.key_created"), prev)
    set_head(gate, count, prev)
    wipe_checkpoints(gate)


def test_replacements(audited: opsgate.Gate, tmp_path: Path) -> None:
    anchor = load_anchor(_export(audited, tmp_path))  # also stores a checkpoint
    snap = snapshot(audited)
    n = audited.audit.head()[0]

    # a fresh valid chain, longer than the old one, checkpoints wiped: the state dir's
    # checkpoint tells, and without it the log's key events, which do not chain to the pin
    _replace_log(audited, n + 5)
    report = audited.audit.verify()
    assert report.ok is False and report.problem == "replacement", report
    forget_state_checkpoint(audited)
    assert_bad(audited.audit.verify(), 1, "untrusted_key", "forged key events")
    report = audited.audit.verify(anchor)
    assert report.ok is False and report.problem == "replacement", report
    assert 1 <= report.first_bad_seq <= anchor.seq
    restore(audited, snap)

    # a fresh valid chain, shorter than the anchor
    _replace_log(audited, 3)
    report = audited.audit.verify(anchor)
    assert report.ok is False and report.problem in ("truncation", "replacement"), report
    restore(audited, snap)

    # a fresh valid chain, but the gate-signed checkpoints in the database were kept
    with audited.store.read() as conn:
        kept = [dict(cp._mapping) for cp in conn.execute(select(schema.audit_checkpoints))]
    assert kept
    _replace_log(audited, n + 2)
    with audited.store.write() as conn:
        conn.execute(insert(schema.audit_checkpoints), kept)
    report = audited.audit.verify()
    assert report.ok is False and report.problem == "replacement", report


# -- anchors ---------------------------------------------------------------------------------------


def test_anchor_from_another_gate_is_refused(audited: opsgate.Gate, tmp_path: Path) -> None:
    """Another gate's checkpoint proves nothing about this log either way: refused as
    the wrong anchor (anchor_invalid, both gates named), not reported as tampering."""
    with opsgate.Gate.open(tmp_path / "other") as other:
        other.register_agent("x", ["deploy:staging"], sponsor="ops@company.com")
        anchor = load_anchor(_export(other, tmp_path))
    with pytest.raises(opsgate.AuditError) as info:
        audited.audit.verify(anchor)
    assert info.value.code == "anchor_invalid" and "another gate" in info.value.message


def test_tampered_or_missing_anchor_file_is_refused(audited: opsgate.Gate, tmp_path: Path) -> None:
    path = _export(audited, tmp_path)
    data = json.loads(path.read_text())
    data["seq"] = 1  # pretend the anchor covers less than it signed
    path.write_text(json.dumps(data))
    with pytest.raises(opsgate.AuditError) as info:
        audited.audit.verify(load_anchor(path))
    assert info.value.code == "anchor_invalid"
    path.write_text("{not json")
    with pytest.raises(opsgate.AuditError) as info:
        load_anchor(path)
    assert info.value.code == "anchor_invalid"
    with pytest.raises(opsgate.AuditError) as info:
        load_anchor(tmp_path / "missing.json")
    assert info.value.code == "anchor_missing"


# -- fail closed -----------------------------------------------------------------------------------


def _agent_rows(gate: opsgate.Gate) -> int:
    with gate.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.agents)).scalar_one())


def test_writers_fail_closed(audited: opsgate.Gate) -> None:
    """With the audit write failing, nothing is issued, created or decided."""
    agent = audited.agents.get("deploy-agent")
    cm = audited.credential_manager
    token = cm.issue_credential(agent.did, ["deploy:staging"]).token
    count, head = _agent_rows(audited), audited.audit.head()
    key_dir = audited.state_dir / "agent-keys"
    keys_before = set(key_dir.iterdir())

    attempts = {
        "issue_credential": lambda: cm.issue_credential(agent.did, ["deploy:staging"]),
        "register_agent": lambda: audited.register_agent(
            "ghost", ["deploy:staging"], sponsor="ops@company.com"
        ),
        "delegate": lambda: agent.delegate("ghost-child", ["deploy:staging"]),
        "authorize": lambda: audited.authorize(token, "deploy:staging/app-web"),
    }
    for name, attempt in attempts.items():
        with failing_audit_writes(audited.audit), pytest.raises(opsgate.AuditError) as info:
            attempt()  # no credential, agent or decision comes back
        assert info.value.code == "audit_write_failed", name
        assert audited.audit.head() == head, name
        assert _agent_rows(audited) == count, name
        assert set(key_dir.iterdir()) == keys_before, name
    with pytest.raises(opsgate.AgentError) as agent_info:
        audited.agents.get("ghost")
    assert agent_info.value.code == "agent_not_found"
    assert audited.audit.verify().ok

    # the storage is back: everything works, and the refused names are still free
    cred = cm.issue_credential(agent.did, ["deploy:staging"])
    assert cm.verify(cred.token).jti == cred.jti
    assert audited.register_agent("ghost", ["deploy:staging"], sponsor="ops@company.com")
    assert agent.delegate("ghost-child", ["deploy:staging"])
    assert audited.authorize(token, "deploy:staging/app-web").effect == "allow"
    assert audited.audit.verify().ok


# -- the writer's head hint -----------------------------------------------------------------------


def test_a_rolled_back_write_leaves_no_gap(audited: opsgate.Gate) -> None:
    """An event written inside a transaction that rolls back moves the writer's head
    hint past the database; the next append must notice and chain onto the real head."""
    head = audited.audit.head()

    class Boom(Exception):
        pass

    with pytest.raises(Boom), audited.store.write() as conn:
        audited.audit.append_in(conn, "test.rolled_back", actor="operator")
        raise Boom
    assert audited.audit.head() == head
    record = audited.audit.append("test.after", actor="operator")
    assert record.seq == head[0] + 1 and record.prev_hash == head[1]
    assert audited.audit.verify().ok


def test_another_writer_on_the_same_store_is_chained_onto(
    audited: opsgate.Gate, database_url: str | None
) -> None:
    """A second gate (another process or replica) appends between two of ours."""
    other = opsgate.Gate.open(audited.state_dir, database_url=database_url)
    try:
        for i in range(5):
            mine = audited.audit.append("test.mine", actor="operator", i=i)
            theirs = other.audit.append("test.theirs", actor="operator", i=i)
            assert theirs.seq == mine.seq + 1 and theirs.prev_hash == mine.hash
        report = audited.audit.verify()
        assert report.ok and report.head_seq == theirs.seq
    finally:
        other.close()


def test_redaction_reaches_every_level() -> None:
    fields = {
        "jti": "j-1",
        "reasons": ["covered", {"token": "eyJ.secret", "why": "ok"}],
        "nested": {"Password": "hunter2", "deep": [{"private_key": "k", "n": 1}], "t": ("x",)},
        "flags": (True, None, 1.5),
    }
    out = redact(fields)
    assert out == {
        "jti": "j-1",
        "reasons": ["covered", {"token": REDACTED, "why": "ok"}],
        "nested": {"Password": REDACTED, "deep": [{"private_key": REDACTED, "n": 1}], "t": ["x"]},
        "flags": [True, None, 1.5],
    }
    assert "hunter2" not in repr(out) and "eyJ.secret" not in repr(out)
