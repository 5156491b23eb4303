"""`verify_log` is a pure function of the rows it is handed: tampered copies of a real
log are refused with the first bad seq and the kind of tampering, while the database
they were read from is untouched and still verifies.

The rows come from a real gate's log (registrations, a delegation, credentials,
authorizations, a signed checkpoint); each case edits a list in memory, the way an
attacker with write access to the table would edit the table.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import opsgate
from opsgate.audit.verify import Trust, VerifyReport, verify_log
from opsgate.store.audit_rows import AuditSQL

Row = list[Any]  # (seq, at, type, actor, body, prev_hash, hash)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real log of a few dozen events, read once; the gate stays open to compare with."""
    gate = opsgate.Gate.open(tmp_path_factory.mktemp("verify-rows") / "state")
    sup = gate.register_agent(
        "sup", capabilities=["deploy:staging"], sponsor="ops@company.com", trust_score=900
    )
    child = sup.delegate(name="child", capabilities=["deploy:staging"])
    for _ in range(3):
        cred = child.credential(["deploy:staging"])
        gate.authorize(cred.token, "deploy:staging")
    gate.audit.checkpoint()
    gate.authorize(child.credential(["deploy:staging"]).token, "deploy:staging")
    sql = AuditSQL(gate.store)
    with gate.store.read() as conn:
        checkpoints = {int(r.seq): r for r in sql.checkpoints(conn)}
    with sql.snapshot() as snap:
        rows = [list(r) for r in snap.rows]
        head = snap.head_rows()
    yield gate, rows, head, checkpoints
    gate.close()


def check(written: Any, rows: list[Row], head: list[tuple[Any, Any]] | None = None) -> VerifyReport:
    gate, _, stored_head, checkpoints = written
    return verify_log(
        [tuple(r) for r in rows],
        head_rows=lambda: stored_head if head is None else head,
        checkpoints=checkpoints,
        trust=Trust(gate.gate_id, gate.pin.root_kid, gate.keyring.load_chain),
        now=time.time(),
    )


def rehash(rows: list[Row], start: int) -> None:
    """Re-link every row from index `start` on, as an attacker covering an edit would."""
    prev = rows[start - 1][6] if start else "0" * 64
    for r in rows[start:]:
        r[5] = prev
        r[6] = hashlib.sha256(prev.encode("ascii") + r[4].encode("utf-8")).hexdigest()
        prev = r[6]


def edit_body(rows: list[Row], i: int, **changes: Any) -> None:
    event = orjson.loads(rows[i][4]) | changes
    rows[i][4] = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode("utf-8")


def copy(written: Any) -> list[Row]:
    return [list(r) for r in written[1]]


def test_the_untouched_rows_verify(written: Any) -> None:
    report = check(written, copy(written))
    assert report.ok, report.reason
    assert report.events == len(written[1]) and report.checkpoints_checked == 1


def test_an_edited_body_is_an_edit_at_its_seq(written: Any) -> None:
    rows = copy(written)
    edit_body(rows, 5, actor="someone-else")
    report = check(written, rows)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "edit", 6)
    assert report.events == 5  # the chain held up to the row before


def test_an_edit_relinked_onwards_breaks_the_signed_checkpoint(written: Any) -> None:
    rows = copy(written)
    edit_body(rows, 3, outcome="forged")
    rehash(rows, 3)
    head = [(rows[-1][0], rows[-1][6])]
    report = check(written, rows, head)
    assert (report.ok, report.problem) == (False, "replacement")


def test_a_deleted_row_is_a_deletion(written: Any) -> None:
    rows = copy(written)
    del rows[7]
    report = check(written, rows)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "deletion", 8)


def test_swapped_rows_are_a_reorder(written: Any) -> None:
    rows = copy(written)
    rows[9][1:], rows[10][1:] = rows[10][1:], rows[9][1:]
    report = check(written, rows)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "reorder", 10)


def test_a_duplicated_row_is_an_insertion(written: Any) -> None:
    rows = copy(written)
    rows.insert(4, list(rows[3]))
    report = check(written, rows)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "insertion", 4)


def test_cut_rows_under_the_stored_head_are_a_truncation(written: Any) -> None:
    rows = copy(written)[:-2]
    report = check(written, rows)
    assert (report.ok, report.problem) == (False, "truncation")
    assert report.first_bad_seq == len(rows) + 1


def test_a_row_with_a_non_integer_seq_is_an_insertion(written: Any) -> None:
    rows = copy(written)
    rows.insert(0, [None, *rows[0][1:]])
    report = check(written, rows)
    assert (report.ok, report.problem) == (False, "insertion")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r.__setitem__(4, "not json"),
        lambda r: r.__setitem__(4, None),
        lambda r: r.__setitem__(5, 12),
        lambda r: r.__setitem__(2, "other.type"),
    ],
    ids=["body-not-json", "body-null", "prev-not-text", "type-column"],
)
def test_malformed_columns_are_edits_never_exceptions(
    written: Any, mangle: Callable[[Row], None]
) -> None:
    rows = copy(written)
    mangle(rows[2])
    report = check(written, rows)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "edit", 3)


def test_the_database_was_not_touched(written: Any) -> None:
    gate = written[0]
    assert gate.audit.verify().ok
    with AuditSQL(gate.store).snapshot() as snap:
        assert [list(r) for r in snap.rows] == written[1]
