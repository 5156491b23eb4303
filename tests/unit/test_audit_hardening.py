"""Audit verify against an attacker who also controls the anchor file or leaves rows
the schema would not: every case is a report naming a seq, never an exception,
and an anchor only counts when this gate's own recorded key signed it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, text, update

import opsgate
from opsgate.audit.log import CHECKPOINT_TYPE, load_anchor
from opsgate.identity.keys import jwk_thumbprint
from opsgate.store import schema

events = schema.audit_events


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@pytest.fixture
def gate(tmp_path: Path, database_url: str | None) -> Any:
    g = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    sup = g.register_agent("sup", ["deploy:staging"], sponsor="ops@company.com", trust_score=900)
    for i in range(3):
        sup.delegate(name=f"child-{i}", capabilities=["deploy:staging"])
    yield g
    g.close()


def _row(gate: opsgate.Gate, seq: int) -> Any:
    with gate.store.read() as conn:
        return conn.execute(select(events).where(events.c.seq == seq)).one()


def _truncate_to(gate: opsgate.Gate, seq: int) -> None:
    with gate.store.write() as conn:
        conn.execute(delete(events).where(events.c.seq > seq))
        conn.execute(delete(schema.audit_checkpoints))
        conn.execute(update(schema.audit_head).values(seq=seq, hash=_row(gate, seq).hash))


def _forge_anchor(path: Path, gate_id: str, seq: int, digest: str, *, kid: str | None) -> None:
    """An anchor for the truncated log, re-signed with the attacker's own key."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes_raw()
    kid = kid if kid is not None else jwk_thumbprint(raw)
    payload = {
        "type": CHECKPOINT_TYPE,
        "gate": gate_id,
        "seq": seq,
        "hash": digest,
        "at": 1.0,
        "kid": kid,
    }
    signature = _b64(key.sign(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)))
    anchor = {**payload, "signature": signature, "public_key": {"kty": "OKP", "x": _b64(raw)}}
    path.write_text(json.dumps(anchor))


@pytest.mark.parametrize("kid", ["x", None], ids=["made-up-kid", "thumbprint-kid"])
def test_an_anchor_re_signed_with_another_key_does_not_vouch_for_a_truncation(
    gate: opsgate.Gate, tmp_path: Path, kid: str | None
) -> None:
    path = tmp_path / "anchor.json"
    gate.audit.export_checkpoint(path)
    genuine = load_anchor(path)
    _truncate_to(gate, 2)
    report = gate.audit.verify(genuine)
    assert not report.ok and report.problem == "truncation"

    _forge_anchor(path, gate.gate_id, 2, _row(gate, 2).hash, kid=kid)
    try:
        report = gate.audit.verify(load_anchor(path))
    except opsgate.AuditError as exc:  # a made-up kid: the anchor itself is invalid
        assert exc.code == "anchor_invalid"
    else:
        assert not report.ok and report.problem == "replacement", report


def test_a_gate_key_slipped_into_the_database_does_not_sign_anchors(
    gate: opsgate.Gate, tmp_path: Path
) -> None:
    """The attacker also adds their key to the gate's key table: the log never recorded it."""
    path = tmp_path / "anchor.json"
    _truncate_to(gate, 2)
    _forge_anchor(path, gate.gate_id, 2, _row(gate, 2).hash, kid=None)
    forged = load_anchor(path)
    with gate.store.write() as conn:
        conn.execute(
            insert(schema.gate_keys).values(
                kid=forged.kid, public_key=forged.public_key["x"], created_at=1.0, retired_at=None
            )
        )
    gate.keyring.reload()
    report = gate.audit.verify(forged)
    assert not report.ok and report.problem == "replacement"


# -- rows the schema would refuse, written behind its back ------------------------------------


def _sql(gate: opsgate.Gate, statement: str) -> None:
    with gate.store.write() as conn:
        conn.execute(text(statement))


@pytest.mark.parametrize(
    ("statement", "seq", "problem"),
    [
        ("UPDATE audit_events SET prev_hash = 'é' WHERE seq = 4", 4, "edit"),
        ("UPDATE audit_events SET hash = 'not-hex' WHERE seq = 3", 3, "edit"),
        ("DELETE FROM audit_head", 0, "edit"),
        ("INSERT INTO audit_head (id, seq, hash) VALUES (2, 100, 'x')", 0, "edit"),
        ("UPDATE audit_checkpoints SET kid = 'nobody'", 0, "replacement"),
    ],
    ids=["non-ascii-prev", "bad-hash", "no-head", "two-heads", "checkpoint-kid"],
)
def test_malformed_rows_are_reported_not_raised(
    gate: opsgate.Gate, statement: str, seq: int, problem: str
) -> None:
    gate.audit.checkpoint()
    _sql(gate, statement)
    report = gate.audit.verify()
    assert not report.ok and report.problem == problem, report
    if seq:
        assert report.first_bad_seq == seq, report
    else:
        assert report.first_bad_seq is not None


@pytest.mark.parametrize("bad_seq", [0, -5], ids=["seq-0", "negative"])
def test_a_copied_row_before_genesis_is_an_insertion(gate: opsgate.Gate, bad_seq: int) -> None:
    first = _row(gate, 1)
    with gate.store.write() as conn:
        conn.execute(insert(events).values({**first._mapping, "seq": bad_seq}))
    report = gate.audit.verify()
    assert not report.ok and report.problem == "insertion", report
    assert report.first_bad_seq == 1


def test_sqlite_text_in_integer_columns_is_reported(tmp_path: Path) -> None:
    with opsgate.Gate.open(tmp_path / "state") as g:
        g.register_agent("a", ["deploy:staging"], sponsor="ops@company.com")
        g.audit.checkpoint()
        for statement in (
            "UPDATE audit_head SET seq = 'abc'",
            "UPDATE audit_checkpoints SET at = 'x'",
        ):
            with g.store.write() as conn:
                before = conn.execute(text("SELECT seq, hash FROM audit_head")).one()
                cp = conn.execute(text("SELECT seq, at FROM audit_checkpoints")).all()
                conn.execute(text(statement))
            report = g.audit.verify()
            assert not report.ok, statement
            with g.store.write() as conn:
                conn.execute(
                    text("UPDATE audit_head SET seq = :s, hash = :h"),
                    {"s": before[0], "h": before[1]},
                )
                for s, at in cp:
                    conn.execute(
                        text("UPDATE audit_checkpoints SET at = :at WHERE seq = :s"),
                        {"s": s, "at": at},
                    )
            assert g.audit.verify().ok, statement


def test_a_failed_verify_says_how_far_the_chain_held(gate: opsgate.Gate) -> None:
    _sql(gate, "UPDATE audit_events SET body = body || ' ' WHERE seq = 4")
    report = gate.audit.verify()
    assert not report.ok and report.first_bad_seq == 4
    assert report.events == report.head_seq == 3
    assert report.head_hash == _row(gate, 3).hash


def test_a_gate_key_swapped_in_the_database_cannot_re_sign_checkpoints(
    gate: opsgate.Gate,
) -> None:
    """The attacker keeps the recorded kid but puts their own key under it and
    re-signs the stored checkpoint: a kid is its key's thumbprint, so it is refused."""
    cp = gate.audit.checkpoint()
    attacker = Ed25519PrivateKey.generate()
    payload = orjson.dumps(
        {
            "type": CHECKPOINT_TYPE,
            "gate": cp.gate,
            "seq": cp.seq,
            "hash": cp.hash,
            "at": cp.at,
            "kid": cp.kid,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    with gate.store.write() as conn:
        conn.execute(
            update(schema.gate_keys)
            .where(schema.gate_keys.c.kid == cp.kid)
            .values(public_key=_b64(attacker.public_key().public_bytes_raw()))
        )
        conn.execute(
            update(schema.audit_checkpoints)
            .where(schema.audit_checkpoints.c.seq == cp.seq)
            .values(signature=_b64(attacker.sign(payload)))
        )
    gate.keyring.reload()
    report = gate.audit.verify()
    assert not report.ok and report.problem == "replacement", report
