"""Automatic checkpoints and the unsigned tail, on SQLite and on the real PostgreSQL.

The gate signs a checkpoint every N events or T seconds (configurable), and keeps
the newest one in its state dir, out of a database writer's reach. Someone who
can write only the database can still replace the events after the last
checkpoint: `verify` says how many those are and how old the oldest is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, insert, select, update

import opsgate
from opsgate.audit.checkpoints import CHECKPOINT_FILE, load_anchor, publish
from opsgate.audit.log import Unit
from opsgate.store import schema

events = schema.audit_events


def _open(tmp_path: Path, database_url: str | None, **audit: Any) -> opsgate.Gate:
    return opsgate.Gate.open(tmp_path / "state", database_url=database_url, audit=audit)


def _checkpoint_seqs(gate: opsgate.Gate) -> list[int]:
    with gate.store.read() as conn:
        return [
            int(r[0])
            for r in conn.execute(
                select(schema.audit_checkpoints.c.seq).order_by(schema.audit_checkpoints.c.seq)
            )
        ]


def _append(gate: opsgate.Gate, n: int) -> None:
    for i in range(n):
        gate.audit.append("test.event", actor="operator", i=i)


def _kept_seq(gate: opsgate.Gate) -> int | None:
    path = gate.state_dir / CHECKPOINT_FILE
    return load_anchor(path).seq if path.exists() else None


def _wait_for_checkpoint(gate: opsgate.Gate, seq: int) -> None:
    """Until the timer has stored the checkpoint and then kept it in the state dir."""
    deadline = time.monotonic() + 5
    while _kept_seq(gate) != seq and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _checkpoint_seqs(gate)[-1] == seq
    assert _kept_seq(gate) == seq


def test_a_checkpoint_is_signed_every_n_events(tmp_path: Path, database_url: str | None) -> None:
    gate = _open(tmp_path, database_url, checkpoint_every_events=5, checkpoint_every_seconds=3600)
    try:
        _append(gate, 12)
        seqs = _checkpoint_seqs(gate)
        head = gate.audit.head()[0]
        assert seqs and all(b - a == 5 for a, b in itertools.pairwise(seqs)), seqs
        assert head - seqs[-1] < 5
        kept = load_anchor(gate.state_dir / CHECKPOINT_FILE)
        assert kept.seq == seqs[-1] and kept.gate == gate.gate_id
        report = gate.audit.verify()
        assert report.ok and report.checkpoints_checked == len(seqs)
        assert report.state_checkpoint_seq == seqs[-1]
        assert report.unsigned_events == head - seqs[-1]
    finally:
        gate.close()


def test_a_checkpoint_is_signed_t_seconds_later_without_another_event(
    tmp_path: Path, database_url: str | None
) -> None:
    gate = _open(tmp_path, database_url, checkpoint_every_events=1000, checkpoint_every_seconds=1.0)
    try:
        # The creation events (the key, the policies in force): signed by the timer alone.
        _wait_for_checkpoint(gate, gate.audit.head()[0])
        time.sleep(1.05)  # nothing waits to be signed meanwhile: no timer runs
        _append(gate, 1)  # the interval has passed: signed in the same transaction
        head = gate.audit.head()[0]
        assert _checkpoint_seqs(gate)[-1] == head
        _append(gate, 2)  # within the interval: waits for the timer, no further event comes
        assert _checkpoint_seqs(gate)[-1] == head
        _wait_for_checkpoint(gate, head + 2)
        assert gate.audit.verify().unsigned_events == 0
    finally:
        gate.close()


def test_verify_reports_the_unsigned_tail_and_close_signs_it(
    tmp_path: Path, database_url: str | None
) -> None:
    gate = _open(
        tmp_path, database_url, checkpoint_every_events=1000, checkpoint_every_seconds=3600
    )
    try:
        signed = gate.audit.checkpoint().seq
        first = gate.audit.append("test.event", actor="operator", at=1_000.0)
        _append(gate, 2)
        report = gate.audit.verify(now=1_090.0)
        assert report.ok  # reported, not a failure: nothing proves these were replaced
        assert (report.signed_seq, report.unsigned_events) == (signed, 3)
        assert report.unsigned_since == 1_000.0 and report.unsigned_age_seconds == 90.0
        data = report.to_dict()
        assert data["unsigned_events"] == 3 and data["unsigned_since"] == 1_000.0
        assert first.seq == signed + 1
    finally:
        gate.close()  # signs what this process left unsigned
    with opsgate.Gate.open(tmp_path / "state", database_url=database_url) as again:
        report = again.audit.verify()
        assert report.ok and report.unsigned_events == 0 and report.unsigned_since is None


def _forge_after(gate: opsgate.Gate, seq: int, rows: int = 1) -> int:
    """Delete every event after `seq` (and the stored checkpoints), then append `rows`
    forged rows with valid hashes: what a database-only attacker can do."""
    with gate.store.write() as conn:
        prev = conn.execute(select(events.c.hash).where(events.c.seq == seq)).scalar_one()
        conn.execute(delete(events).where(events.c.seq > seq))
        conn.execute(delete(schema.audit_checkpoints))
        for n in range(seq + 1, seq + 1 + rows):
            at = time.time()
            body = orjson.dumps(
                {"type": "credential.revoked", "actor": "operator", "seq": n, "at": at},
                option=orjson.OPT_SORT_KEYS,
            )
            digest = hashlib.sha256(prev.encode("ascii") + body).hexdigest()
            conn.execute(
                insert(events).values(
                    seq=n,
                    at=at,
                    type="credential.revoked",
                    actor="operator",
                    body=body.decode(),
                    prev_hash=prev,
                    hash=digest,
                )
            )
            prev = digest
        conn.execute(update(schema.audit_head).values(seq=seq + rows, hash=prev))
    return seq + rows


def test_the_tail_cannot_be_cut_below_the_last_checkpoint(
    tmp_path: Path, database_url: str | None
) -> None:
    gate = _open(tmp_path, database_url, checkpoint_every_events=4, checkpoint_every_seconds=3600)
    try:
        _append(gate, 9)  # 11 events with the gate's two at creation
        signed = _checkpoint_seqs(gate)[-1]
        assert signed < gate.audit.head()[0]

        # below the last checkpoint: the state dir's copy of it tells, checkpoints wiped or not
        _forge_after(gate, signed - 2)
        report = gate.audit.verify()
        assert not report.ok and report.problem in ("truncation", "replacement"), report
        assert report.first_bad_seq is not None and report.first_bad_seq <= signed
    finally:
        gate.close()


def test_the_gate_signs_no_checkpoint_over_a_log_that_lost_the_kept_one(
    tmp_path: Path, database_url: str | None
) -> None:
    """A log replaced from below the state dir's checkpoint to beyond it, checkpoints
    wiped: the running gate must not sign the replacement (its next checkpoint would
    replace the state dir's copy, and the forgery would verify as intact)."""
    gate = _open(tmp_path, database_url, checkpoint_every_events=4, checkpoint_every_seconds=3600)
    try:
        _append(gate, 10)
        kept = _kept_seq(gate)
        assert kept is not None
        kept_hash = load_anchor(gate.state_dir / CHECKPOINT_FILE).hash
        _forge_after(gate, kept - 2, rows=6)
        assert not gate.audit.verify().ok
        with pytest.raises(opsgate.AuditError) as refused:
            gate.audit.checkpoint()
        assert refused.value.code == "audit_chain_broken"
        _append(gate, 9)  # automatic checkpoints fall due: none is signed, the events are kept
        assert _kept_seq(gate) == kept
        assert load_anchor(gate.state_dir / CHECKPOINT_FILE).hash == kept_hash
        assert _checkpoint_seqs(gate) == []
        report = gate.audit.verify()
        assert not report.ok and report.problem == "replacement", report
        assert report.first_bad_seq == kept
    finally:
        gate.close()  # its closing checkpoint is refused too
    assert _kept_seq(gate) == kept


def test_a_forged_tail_after_the_last_checkpoint_is_reported_as_unsigned(
    tmp_path: Path, database_url: str | None
) -> None:
    gate = _open(tmp_path, database_url, checkpoint_every_events=4, checkpoint_every_seconds=3600)
    try:
        _append(gate, 10)
        signed = _checkpoint_seqs(gate)[-1]
        forged = _forge_after(gate, signed)
        report = gate.audit.verify()
        assert report.ok, report  # nothing can prove it; the report says how much is at risk
        assert (report.signed_seq, report.unsigned_events) == (signed, forged - signed)
        assert report.unsigned_age_seconds is not None and report.unsigned_age_seconds < 60
    finally:
        gate.close()


def test_a_stored_checkpoint_with_a_huge_seq_does_not_stop_automatic_checkpoints(
    tmp_path: Path, database_url: str | None
) -> None:
    gate = _open(tmp_path, database_url, checkpoint_every_events=3, checkpoint_every_seconds=3600)
    gate.close()
    with gate.store.write() as conn:
        conn.execute(
            insert(schema.audit_checkpoints).values(
                seq=10**12, hash="0" * 64, at=1.0, kid="x", signature="x"
            )
        )
    gate = _open(tmp_path, database_url, checkpoint_every_events=3, checkpoint_every_seconds=3600)
    try:
        _append(gate, 4)
        assert load_anchor(gate.state_dir / CHECKPOINT_FILE).seq >= 3
    finally:
        gate.close()


@pytest.mark.parametrize(
    "audit", [{"checkpoint_every_events": 0}, {"checkpoint_every_seconds": 0}, {"every": 5}]
)
def test_checkpoint_settings_are_validated(tmp_path: Path, audit: dict[str, Any]) -> None:
    with pytest.raises(opsgate.ConfigError):
        opsgate.Gate.open(tmp_path / "state", audit=audit)
    assert not (tmp_path / "state").exists()


def test_the_state_dir_checkpoint_never_goes_back(tmp_path: Path) -> None:
    """Replicas share the state dir: an older checkpoint does not replace a newer one."""
    with opsgate.Gate.open(tmp_path / "state") as gate:
        _append(gate, 3)
        newer = gate.audit.checkpoint()
        path = gate.state_dir / CHECKPOINT_FILE
        publish(path, dataclasses.replace(newer, seq=newer.seq - 1))
        assert load_anchor(path).seq == newer.seq
        assert path.stat().st_mode & 0o077 == 0


def test_verify_of_a_log_being_written_is_not_a_truncation(
    tmp_path: Path, database_url: str | None
) -> None:
    """verify walks one snapshot of the rows; the head it compares them with must come
    from the same snapshot, or every event appended meanwhile read as a truncation (a
    live gate's audit page, `audit verify` and /v1/audit/verify all said TAMPERED)."""
    gate = _open(tmp_path, database_url, checkpoint_every_events=1000)
    try:
        gate.audit.commit_all([Unit("test.event", {"i": i}, "operator") for i in range(2000)])
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set():
                gate.audit.append("test.event", actor="operator", i=-1)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            reports = [gate.audit.verify() for _ in range(5)]
        finally:
            stop.set()
            writer.join()
        assert [(r.ok, r.problem) for r in reports] == [(True, None)] * 5, [
            r.reason for r in reports
        ]
        assert gate.audit.verify().ok
    finally:
        gate.close()


def test_verify_during_a_key_rotation_is_not_a_truncation(
    tmp_path: Path, database_url: str | None
) -> None:
    """The key table is compared with the keys the walked log introduced: read from the
    same snapshot, a rotation committed during the walk is in neither (it was in the
    table only, and verify said events were removed)."""
    gate = _open(tmp_path, database_url)
    try:
        gate.audit.commit_all([Unit("test.event", {"i": i}, "operator") for i in range(30_000)])
        reports: list[Any] = []
        walking = threading.Thread(target=lambda: reports.append(gate.audit.verify()))
        walking.start()
        time.sleep(0.02)
        gate.rotate_keys()
        walking.join()
        assert reports[0].ok, (reports[0].problem, reports[0].reason)
        assert gate.audit.verify().ok
    finally:
        gate.close()


def test_after_a_restore_from_backup_signing_resumes_only_by_the_documented_procedure(
    tmp_path: Path,
) -> None:
    """The README's procedure: a database restored from an older backup holds less than
    the gate signed; the gate refuses to sign over it until an operator moves the state
    dir's checkpoint aside (keeping it as the record of what was lost) and restarts."""
    import sqlite3

    state = tmp_path / "state"
    settings = {"checkpoint_every_events": 4, "checkpoint_every_seconds": 3600}
    with opsgate.Gate.open(state, audit=settings) as gate:
        _append(gate, 5)
    backup = tmp_path / "backup.db"
    src, dst = sqlite3.connect(state / "opsgate.db"), sqlite3.connect(backup)
    src.backup(dst)
    dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, as a backup is
    src.close()
    dst.close()
    with opsgate.Gate.open(state, audit=settings) as gate:
        _append(gate, 10)
    lost_at = load_anchor(state / CHECKPOINT_FILE).seq
    for suffix in ("-wal", "-shm"):
        (state / f"opsgate.db{suffix}").unlink(missing_ok=True)
    (state / "opsgate.db").write_bytes(backup.read_bytes())

    with opsgate.Gate.open(state, audit=settings) as gate:
        report = gate.audit.verify()
        assert not report.ok and report.problem == "truncation", report
        with pytest.raises(opsgate.AuditError) as refused:
            gate.audit.checkpoint()
        assert refused.value.code == "audit_chain_broken"
    assert load_anchor(state / CHECKPOINT_FILE).seq == lost_at  # the evidence stays

    (state / CHECKPOINT_FILE).rename(tmp_path / "incident-checkpoint.json")
    with opsgate.Gate.open(state, audit=settings) as gate:
        _append(gate, 2)
        cp = gate.audit.checkpoint()
        assert cp.seq == gate.audit.head()[0]
        assert gate.audit.verify().ok
    assert load_anchor(state / CHECKPOINT_FILE).seq >= cp.seq


def test_a_checkpoint_at_a_whole_second_verifies(tmp_path: Path) -> None:
    """A time given as an integer (a caller's `now`) is signed as the float it is
    stored and read back as: the checkpoint, its copy in the state dir and an export
    all verify."""
    with _open(tmp_path, None) as gate:
        gate.audit.append("test.event", n=1)
        cp = gate.audit.checkpoint(at=int(time.time()))
        gate.audit.append("test.event", n=2, at=int(time.time()))
        exported = gate.audit.export_checkpoint(tmp_path / "anchor.json")
        report = gate.audit.verify()
        assert report.ok, report
        assert gate.audit.verify(load_anchor(tmp_path / "anchor.json")).ok
        kept = load_anchor(tmp_path / "state" / CHECKPOINT_FILE)
        assert kept.seq == exported.seq and kept.at == float(kept.at)
        assert cp.at == float(cp.at)


def test_the_kept_checkpoint_can_live_outside_a_read_only_state_dir(tmp_path: Path) -> None:
    """`audit.checkpoint_file` names where the newest signed checkpoint is kept (a
    replica's state dir is mounted read-only): the gate writes it there, and it still
    catches a database-only rewrite below it after the stored checkpoints were wiped."""
    kept = tmp_path / "writable" / "checkpoint.json"
    kept.parent.mkdir()
    gate = _open(
        tmp_path,
        None,
        checkpoint_every_events=4,
        checkpoint_every_seconds=3600,
        checkpoint_file=str(kept),
    )
    try:
        _append(gate, 10)
        assert not (gate.state_dir / CHECKPOINT_FILE).exists()
        anchor = load_anchor(kept)
        assert anchor.seq == _checkpoint_seqs(gate)[-1]
        gate.audit.check_checkpoint_file()  # writable: no complaint
        _forge_after(gate, anchor.seq - 2, rows=6)
        report = gate.audit.verify()
        assert not report.ok and report.first_bad_seq is not None
        assert report.first_bad_seq <= anchor.seq
    finally:
        gate.close()
    # A fresh gate (as after a restart) reads it from there too.
    with _open(tmp_path, None, checkpoint_file=str(kept)) as again:
        assert not again.audit.verify().ok


def test_serve_refuses_to_start_where_the_checkpoint_cannot_be_kept(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from opsgate.cli import app

    state = tmp_path / "state"
    opsgate.Gate.open(state).close()
    (state / "opsgate.yaml").write_text(
        f"audit:\n  checkpoint_file: {tmp_path / 'missing-dir' / 'cp.json'}\n", encoding="utf-8"
    )
    with opsgate.Gate.open(state, create=False) as gate:
        with pytest.raises(opsgate.ConfigError) as exc:
            gate.audit.check_checkpoint_file()
        assert exc.value.code == "checkpoint_unwritable"
    r = CliRunner().invoke(app, ["--state-dir", str(state), "serve", "--port", "1"])
    assert r.exit_code == 1
    assert "checkpoint_unwritable" in r.stderr and "audit.checkpoint_file" in r.stderr
    assert "Traceback" not in r.stderr
    # A directory where the file should be is refused too.
    (tmp_path / "dir-cp").mkdir()
    (state / "opsgate.yaml").write_text(
        f"audit:\n  checkpoint_file: {tmp_path / 'dir-cp'}\n", encoding="utf-8"
    )
    with opsgate.Gate.open(state, create=False) as gate, pytest.raises(opsgate.ConfigError):
        gate.audit.check_checkpoint_file()
    # And a value with a control character is a config error, not a path.
    (state / "opsgate.yaml").write_text('audit:\n  checkpoint_file: "a\\nb"\n', encoding="utf-8")
    with pytest.raises(opsgate.ConfigError) as bad:
        opsgate.Gate.open(state, create=False)
    assert bad.value.code == "config_invalid"


def test_an_anchor_of_another_gate_is_named_as_such_not_as_tampering(tmp_path: Path) -> None:
    """An operator who hands `audit verify` another gate's checkpoint made a mistake;
    the log is not tampered with: a typed refusal naming both gates, exit 1 without
    'TAMPERED'. A kept checkpoint of another gate is still evidence (replacement)."""
    from typer.testing import CliRunner

    from opsgate.cli import app

    a, b = tmp_path / "a", tmp_path / "b"
    opsgate.Gate.open(a).close()
    with opsgate.Gate.open(b) as other:
        other.audit.export_checkpoint(tmp_path / "b.json")
        other_id = other.gate_id
    with opsgate.Gate.open(a, create=False) as gate:
        with pytest.raises(opsgate.AuditError) as exc:
            gate.audit.verify(load_anchor(tmp_path / "b.json"))
        assert exc.value.code == "anchor_invalid" and other_id in exc.value.message
        assert gate.gate_id in exc.value.message
        assert gate.audit.verify().ok
    r = CliRunner().invoke(
        app, ["--state-dir", str(a), "audit", "verify", "--anchor", str(tmp_path / "b.json")]
    )
    assert r.exit_code == 1 and "anchor_invalid" in r.stderr and "TAMPERED" not in r.stderr
    # The state dir's kept checkpoint replaced by the other gate's: that is evidence.
    (a / CHECKPOINT_FILE).write_bytes((tmp_path / "b.json").read_bytes())
    with opsgate.Gate.open(a, create=False) as gate:
        report = gate.audit.verify()
        assert not report.ok and report.problem == "replacement"


@pytest.mark.parametrize(
    "name", ["opsgate.db", "opsgate.db-wal", "gate-pin.json", "opsgate.yaml", "policies.yaml"]
)
def test_the_kept_checkpoint_never_names_one_of_the_gates_own_files(
    tmp_path: Path, name: str
) -> None:
    state = tmp_path / "state"
    opsgate.Gate.open(state).close()
    (state / "policies.yaml").write_text("policies: []\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    (state / "opsgate.yaml").write_text(
        f"policies: policies.yaml\naudit:\n  checkpoint_file: {name}\n", encoding="utf-8"
    )
    with pytest.raises(opsgate.ConfigError) as exc:
        opsgate.Gate.open(state, create=False)
    assert exc.value.code == "config_invalid"
    for n, data in before.items():
        if n not in ("opsgate.yaml", "opsgate.db", "opsgate.db-wal", "opsgate.db-shm"):
            assert (state / n).read_bytes() == data
    kid = next((state / "gate-keys").iterdir()).name
    (state / "opsgate.yaml").write_text(
        f"audit:\n  checkpoint_file: gate-keys/{kid}\n", encoding="utf-8"
    )
    with pytest.raises(opsgate.ConfigError):
        opsgate.Gate.open(state, create=False)


def test_a_file_that_is_not_a_checkpoint_is_never_replaced(tmp_path: Path) -> None:
    """A path that already holds something else (a mistake in opsgate.yaml, a link
    planted there) keeps it: the gate logs that it could not keep its checkpoint, and
    `serve` refuses to start on it."""
    precious = tmp_path / "elsewhere" / "precious.txt"
    precious.parent.mkdir()
    precious.write_text("not a checkpoint\n", encoding="utf-8")
    gate = _open(tmp_path, None, checkpoint_every_events=2, checkpoint_file=str(precious))
    try:
        _append(gate, 5)
        assert _checkpoint_seqs(gate)  # signed and stored in the database
        assert precious.read_text(encoding="utf-8") == "not a checkpoint\n"
        with pytest.raises(opsgate.ConfigError) as exc:
            gate.audit.check_checkpoint_file()
        assert exc.value.code == "checkpoint_unwritable"
    finally:
        gate.close()
    assert precious.read_text(encoding="utf-8") == "not a checkpoint\n"
    link = tmp_path / "elsewhere" / "cp.json"
    link.symlink_to(precious)
    gate = _open(tmp_path, None, checkpoint_every_events=2, checkpoint_file=str(link))
    try:
        _append(gate, 5)
    finally:
        gate.close()
    assert precious.read_text(encoding="utf-8") == "not a checkpoint\n"


def test_another_holder_of_the_checkpoint_lock_delays_a_publish_only_briefly(
    tmp_path: Path,
) -> None:
    import fcntl
    import os

    with _open(tmp_path, None) as gate:
        cp = gate.audit.checkpoint()
    target = tmp_path / "kept.json"
    lock = os.open(tmp_path / ".kept.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        with pytest.raises(OSError):
            publish(target, cp)
        assert time.monotonic() - started < 5
        assert not target.exists()
    finally:
        os.close(lock)
    publish(target, cp)
    assert load_anchor(target).seq == cp.seq
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_serve_refuses_a_checkpoint_directory_others_can_change(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    gate = _open(tmp_path, None, checkpoint_file=str(shared / "cp.json"))
    try:
        with pytest.raises(opsgate.ConfigError) as exc:
            gate.audit.check_checkpoint_file()
        assert exc.value.code == "checkpoint_unwritable" and "other users" in exc.value.message
    finally:
        gate.close()
