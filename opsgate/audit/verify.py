"""Verification of the audit log, as a pure function of what is stored.

`verify_log` walks rows (seq, at, type, actor, body, prev_hash, hash) in the
order the database returns them and reports the first one that breaks the
chain, and why; then it checks the head row, the gate keys the log introduces
against the pinned key, every signed checkpoint and anchor, and the key table.
It reads nothing itself: the caller hands it the rows (a stream, or a list a
test has tampered with) and what else was stored, so tampering can be tested
without a database.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from opsgate.audit.checkpoints import Checkpoint, signed_by
from opsgate.audit.events import GENESIS_HASH
from opsgate.credentials.keyring import KeyChain, endorsement_kind
from opsgate.errors import AuditError, safe_text
from opsgate.identity.keys import b64url_decode, jwk_thumbprint, verify_signature

# Events that introduce a gate signing key (their `kid`); checkpoints and anchors
# must be signed by one of these, and each must chain back to the pinned key.
KEY_EVENTS = frozenset({"gate.key_created", "gate.key_rotated"})
_KID = re.compile(r"[A-Za-z0-9_-]{43}\Z")


def _kid_text(kid: object) -> str:
    """A key id as found in the database: a thumbprint is shown (it is public; the
    shape alone would make `safe_text` hide it), anything else as `safe_text` says."""
    return kid if isinstance(kid, str) and _KID.match(kid) else safe_text(kid)


@dataclass(frozen=True, slots=True)
class Finding:
    """Something stored that does not chain back to the pinned gate key."""

    problem: str  # untrusted_key | untrusted_agent | gate_mismatch
    kind: str  # key | agent | gate
    subject: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "problem": self.problem,
            "kind": self.kind,
            "subject": self.subject,
            "reason": self.reason,
        }


ANCHOR_GIVEN = "the anchor"  # what an anchor handed to `verify` is called in reports


@dataclass(slots=True)
class VerifyReport:
    """Outcome of `AuditLog.verify`: ok, or the first bad seq and why.

    `problem` is one of edit, deletion, insertion, reorder, truncation,
    replacement (the log), untrusted_key, untrusted_agent, gate_mismatch (what
    does not chain back to the key pinned in the state dir). Events after the
    last signed checkpoint are reported as unsigned: they verify, but someone
    who can write the database could have replaced them; that alone leaves
    `ok` true.
    """

    ok: bool
    events: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    first_bad_seq: int | None = None
    problem: str | None = None
    reason: str = ""
    checkpoints_checked: int = 0
    anchor_checked: bool = False
    state_checkpoint_seq: int | None = None  # the checkpoint kept in the state dir
    signed_seq: int = 0  # the log is signed up to here (checkpoints, state dir, anchor)
    unsigned_events: int = 0
    unsigned_since: float | None = None  # time of the oldest unsigned event
    unsigned_age_seconds: float | None = None
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "reason": self.reason,
            "checkpoints_checked": self.checkpoints_checked,
            "anchor_checked": self.anchor_checked,
            "state_checkpoint_seq": self.state_checkpoint_seq,
            "signed_seq": self.signed_seq,
            "unsigned_events": self.unsigned_events,
            "unsigned_since": self.unsigned_since,
            "unsigned_age_seconds": self.unsigned_age_seconds,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True, slots=True)
class Trust:
    """What the log must chain back to: this gate and the key pinned in its state dir,
    and the key chain as the key table holds it (verified against the pin), read
    once the rows have been walked."""

    gate_id: str
    root_kid: str
    key_chain: Callable[[], KeyChain]


def verify_log(
    rows: Iterable[Sequence[Any]],
    *,
    head_rows: Callable[[], Sequence[Sequence[Any]]],
    checkpoints: Mapping[int, Any],
    trust: Trust,
    now: float,
    anchor: Checkpoint | None = None,
    state_checkpoint: Checkpoint | AuditError | None = None,
    seq_of_hash: Callable[[str], int | None] | None = None,
    check_state: Callable[[], list[Finding]] | None = None,
) -> VerifyReport:
    """Walk the whole chain; report the first bad seq and why (never raises on tampering).

    `rows` are (seq, at, type, actor, body, prev_hash, hash) as stored, in seq
    order; `head_rows` reads the audit head table's (seq, hash) rows once they
    have been walked; `checkpoints` the
    stored checkpoints by seq (rows with hash, at, kid, signature). Then: every
    gate key the log introduces must chain to the pinned key, the anchor (if
    given), the state dir's checkpoint (or why it could not be read) and every
    stored checkpoint must be signed by such a key and match the chain, the key
    table must hold exactly the keys the log introduced, and (`check_state`)
    every stored agent must chain back to them. `seq_of_hash` finds the seq of a
    stored event by its hash (telling a reorder from a deletion); without it the
    rows must be a sequence, indexed here. Events after the last signed point are
    reported as the unsigned tail (how many, since when).
    """
    if seq_of_hash is None:
        if not isinstance(rows, Sequence):
            raise TypeError("verify_log needs seq_of_hash for rows that are not a sequence")
        index = {r[6]: r[0] for r in rows if isinstance(r[6], str)}
        seq_of_hash = index.get
    return _Walk(trust, seq_of_hash).run(
        rows, head_rows, checkpoints, now, anchor, state_checkpoint, check_state
    )


def _fail(report: VerifyReport, seq: int, problem: str, reason: str) -> VerifyReport:
    report.ok = False
    report.first_bad_seq = seq
    report.problem = problem
    report.reason = reason
    return report


class _Walk:
    def __init__(self, trust: Trust, seq_of_hash: Callable[[str], int | None]) -> None:
        self._trust = trust
        self._seq_of_hash = seq_of_hash
        # What later checks need of rows the walk passed: the hash at an anchor's
        # seq, the time of the first event after a signed point.
        self._hash_at: dict[int, Any] = {}
        self._at_of: dict[int, Any] = {}

    def run(
        self,
        rows: Iterable[Sequence[Any]],
        read_head: Callable[[], Sequence[Sequence[Any]]],
        cps: Mapping[int, Any],
        now: float,
        anchor: Checkpoint | None,
        state_cp: Checkpoint | AuditError | None,
        check_state: Callable[[], list[Finding]] | None,
    ) -> VerifyReport:
        report = VerifyReport(ok=True)
        points = set(cps)
        for cp in (anchor, state_cp):
            if isinstance(cp, Checkpoint):
                points.add(cp.seq)
        after_points = {p + 1 for p in points} | {1}
        prev_hash, expected = GENESIS_HASH, 1
        seen: dict[str, int] = {}
        key_events: list[tuple[int, dict[str, Any]]] = []
        loads = orjson.loads
        sha = hashlib.sha256
        try:
            for seq, at, etype, actor, body, row_prev, row_hash in rows:
                if type(seq) is not int or seq < expected:
                    # NULL, non-integer, duplicate or pre-genesis seq: a row that is not ours.
                    where = seq if type(seq) is int and seq > 0 else expected
                    return _fail(
                        report, where, "insertion", f"a row with seq {seq!r:.20} was added"
                    )
                if seq != expected:
                    return _fail(report, expected, "deletion", f"seq {expected} is missing")
                try:
                    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
                    intact = sha(row_prev.encode("ascii") + raw).hexdigest() == row_hash
                except (UnicodeError, AttributeError, TypeError, ValueError):
                    intact = False
                if not intact:
                    return _fail(report, seq, "edit", "event content does not match its hash")
                try:
                    ev = loads(raw)
                    consistent = (
                        ev["seq"] == seq
                        and ev["type"] == etype
                        and ev.get("actor") == actor
                        and ev["at"] == at
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return _fail(report, seq, "edit", "event body is not a valid event")
                if row_prev != prev_hash or ev["seq"] != seq:
                    return self._classify_link(
                        report, seq, ev.get("seq"), row_prev, prev_hash, seen
                    )
                if not consistent:
                    return _fail(
                        report, seq, "edit", "indexed columns differ from the hashed event"
                    )
                if etype in KEY_EVENTS:
                    key_events.append((seq, ev))
                if seq in points:
                    self._hash_at[seq] = row_hash
                if seq in after_points:
                    self._at_of[seq] = at
                if len(seen) < 4096:
                    seen[row_hash] = seq
                else:
                    seen = {row_hash: seq}
                prev_hash, expected = row_hash, expected + 1
        finally:
            if not report.ok:  # stopped at a bad row: say how far the chain held
                report.events = report.head_seq = expected - 1
                report.head_hash = prev_hash
        report.events = expected - 1
        report.head_seq = expected - 1
        report.head_hash = prev_hash
        head_rows = read_head()
        if (
            len(head_rows) != 1
            or type(head_rows[0][0]) is not int
            or not isinstance(head_rows[0][1], str)
        ):
            return _fail(report, report.head_seq, "edit", "the stored head is missing or malformed")
        head_seq, head_hash = int(head_rows[0][0]), str(head_rows[0][1])
        if head_seq != report.head_seq or head_hash != prev_hash:
            if head_seq > report.head_seq:
                return _fail(
                    report,
                    report.head_seq + 1,
                    "truncation",
                    f"the head says seq {head_seq} but the log ends at {report.head_seq}",
                )
            if head_seq < report.head_seq:
                first = head_seq + 1
                return _fail(
                    report,
                    first,
                    "insertion",
                    f"event(s) from seq {first} were added behind the log's back "
                    f"(its head is seq {head_seq})",
                )
            return _fail(report, head_seq, "edit", "the stored head does not match the chain")
        chain = self._trust.key_chain()
        logged, key_problem = self._logged_keys(key_events)
        # A key counts only when both the log and the key table chain it to the pin.
        trusted = {k.kid: k.raw for k in chain.keys if logged.get(k.kid) == k.raw}
        if anchor is not None:
            report.anchor_checked = True
            self._check_anchor(report, anchor, trusted, ANCHOR_GIVEN)
            if not report.ok:
                return report
        if isinstance(state_cp, AuditError):
            return _fail(
                report, 1, "replacement", f"the state dir's checkpoint is invalid: {state_cp}"
            )
        if state_cp is not None:
            report.state_checkpoint_seq = state_cp.seq
            try:
                self._check_anchor(report, state_cp, trusted, "the state dir's checkpoint")
            except AuditError as exc:
                _fail(report, 1, "replacement", f"the state dir's checkpoint is invalid: {exc}")
            if not report.ok:
                return report
        for cp_seq, cp in sorted(cps.items()):
            try:
                stored = Checkpoint(
                    self._trust.gate_id,
                    cp_seq,
                    str(cp.hash),
                    float(cp.at),
                    str(cp.kid),
                    cp.signature,
                )
                signed = signed_by(trusted, stored.kid, stored.payload(), str(cp.signature))
            except (TypeError, ValueError, AuditError):
                signed = False
            if not signed:
                return _fail(
                    report,
                    cp_seq,
                    "replacement",
                    "a stored checkpoint is not signed by a gate key that chains to the pinned key",
                )
            if cp_seq > report.head_seq:
                return _fail(
                    report,
                    report.head_seq + 1,
                    "truncation",
                    f"checkpoint at seq {cp_seq} is beyond the end of the log",
                )
            if self._hash_at.get(cp_seq) != cp.hash:
                return _fail(
                    report, cp_seq, "replacement", "the chain does not match a signed checkpoint"
                )
            report.checkpoints_checked += 1
            report.signed_seq = max(report.signed_seq, cp_seq)
        if key_problem is not None:
            return _fail(report, *key_problem)
        table_problem = _compare_key_table(report, chain, logged, key_events)
        if table_problem is not None:
            return _fail(report, *table_problem)
        self._unsigned_tail(report, now)
        findings = [
            Finding(
                "untrusted_key", "key", _kid_text(u.kid), f"gate key {_kid_text(u.kid)}: {u.reason}"
            )
            for u in chain.untrusted
        ]
        if check_state is not None:
            findings += check_state()
        if findings:
            report.findings = findings
            report.ok = False
            report.problem = findings[0].problem
            report.reason = findings[0].reason
            if len(findings) > 1:
                report.reason += f" (and {len(findings) - 1} more)"
        return report

    def _logged_keys(
        self, key_events: list[tuple[int, dict[str, Any]]]
    ) -> tuple[dict[str, bytes], tuple[int, str, str] | None]:
        """The gate keys the log introduces, each checked against its predecessor.

        The first must be the pinned key; every rotation must carry the endorsement
        the key it replaces signed. Returns them (kid -> public key) and the first
        event that fails (seq, problem, reason), if any.
        """
        gate_id, root_kid = self._trust.gate_id, self._trust.root_kid
        logged: dict[str, bytes] = {}
        for seq, ev in key_events:
            kid, x = ev.get("kid"), ev.get("public_key")
            try:
                raw = b64url_decode(x) if isinstance(x, str) else b""
            except ValueError:
                raw = b""
            if len(raw) != 32 or not isinstance(kid, str) or jwk_thumbprint(raw) != kid:
                return logged, (
                    seq,
                    "untrusted_key",
                    f"the {ev.get('type')} event does not carry the key its kid names",
                )
            if ev.get("type") == "gate.key_created":
                if logged or kid != root_kid:
                    return logged, (
                        seq,
                        "untrusted_key",
                        f"gate key {kid} is not the key pinned in the state dir",
                    )
            else:
                prev = ev.get("retired")
                endorsement = ev.get("endorsement")
                at = ev.get("at")
                try:
                    ok = (
                        isinstance(prev, str)
                        and isinstance(x, str)
                        and prev in logged
                        and isinstance(endorsement, str)
                        and isinstance(at, (int, float))
                        and endorsement_kind(
                            b64url_decode(endorsement), logged[prev], gate_id, kid, x, prev, at
                        )
                        is not None
                    )
                except ValueError:
                    ok = False
                if not ok or kid in logged:
                    return logged, (
                        seq,
                        "untrusted_key",
                        f"gate key {kid} is not endorsed by the key it claims to replace",
                    )
            logged[kid] = raw
        if root_kid not in logged:
            return logged, (
                1,
                "replacement",
                "the log does not record the creation of the gate key pinned in the state dir",
            )
        return logged, None

    def _unsigned_tail(self, report: VerifyReport, now: float) -> None:
        report.unsigned_events = max(0, report.head_seq - report.signed_seq)
        if not report.unsigned_events:
            return
        at = self._at_of.get(report.signed_seq + 1)
        if isinstance(at, (int, float)) and math.isfinite(at):
            report.unsigned_since = float(at)
            report.unsigned_age_seconds = max(0.0, round(now - float(at), 3))

    def _check_anchor(
        self, report: VerifyReport, anchor: Checkpoint, trusted: dict[str, bytes], what: str
    ) -> None:
        """The anchor must be intact and signed by a key of this gate that both the log
        and the key table chain to the pin: a key carried only by the file proves nothing."""
        try:
            embedded = b64url_decode(str(anchor.public_key["x"]))
            sig = b64url_decode(anchor.signature)
        except (KeyError, ValueError, TypeError) as exc:
            raise AuditError(f"{what} is malformed", code="anchor_invalid") from exc
        if len(embedded) != 32 or not verify_signature(embedded, sig, anchor.payload()):
            raise AuditError(f"{what}'s signature does not verify", code="anchor_invalid")
        if jwk_thumbprint(embedded) != anchor.kid:
            raise AuditError(f"{what}'s key does not match its kid", code="anchor_invalid")
        if anchor.gate != self._trust.gate_id:
            if what == ANCHOR_GIVEN:
                # The operator handed over another gate's file: a mistake to name, not
                # evidence against this log (a kept checkpoint of another gate is).
                raise AuditError(
                    f"the anchor is a checkpoint of another gate ({safe_text(anchor.gate)}), not "
                    f"of this one ({self._trust.gate_id})",
                    code="anchor_invalid",
                )
            _fail(report, 1, "replacement", f"{what} belongs to another gate's log")
            return
        if not signed_by(trusted, anchor.kid, anchor.payload(), anchor.signature):
            _fail(
                report,
                1,
                "replacement",
                f"{what} is not signed by a gate key that chains to the pinned key",
            )
            return
        if anchor.seq > report.head_seq:
            _fail(
                report,
                report.head_seq + 1,
                "truncation",
                f"{what} covers seq {anchor.seq} but the log ends at {report.head_seq}",
            )
            return
        if anchor.seq > 0 and self._hash_at.get(anchor.seq) != anchor.hash:
            _fail(
                report,
                anchor.seq,
                "replacement",
                f"the log up to {what} differs from what it signed",
            )
            return
        report.signed_seq = max(report.signed_seq, anchor.seq)

    def _classify_link(
        self,
        report: VerifyReport,
        seq: int,
        body_seq: Any,
        row_prev: str,
        expected_prev: str,
        seen: dict[str, int],
    ) -> VerifyReport:
        """A broken link: tell deletion, insertion, reorder and a rewritten predecessor apart."""
        if row_prev in seen and seen[row_prev] < seq - 1:
            first = seen[row_prev] + 1
            return _fail(report, first, "insertion", f"event(s) inserted at seq {first}")
        later = self._seq_of_hash(row_prev)
        if later is not None and later > seq:
            return _fail(report, seq, "reorder", f"event at seq {seq} is out of order")
        if isinstance(body_seq, int) and body_seq > seq:
            return _fail(report, seq, "deletion", f"event(s) before seq {body_seq} were deleted")
        if isinstance(body_seq, int) and body_seq < seq:
            return _fail(report, seq, "insertion", f"event(s) inserted before seq {seq}")
        if row_prev != expected_prev:
            return _fail(
                report, seq - 1, "edit", f"event at seq {seq - 1} was rewritten (its hash changed)"
            )
        return _fail(report, seq, "edit", "event sequence number was changed")


def _compare_key_table(
    report: VerifyReport,
    chain: KeyChain,
    logged: dict[str, bytes],
    key_events: list[tuple[int, dict[str, Any]]],
) -> tuple[int, str, str] | None:
    """The key table must chain exactly the keys the log introduced."""
    at_seq = {ev.get("kid"): seq for seq, ev in key_events}
    in_table = {k.kid: k.raw for k in chain.keys}
    for kid, raw in logged.items():
        if in_table.get(kid) != raw:
            return (
                at_seq.get(kid, 1),
                "deletion",
                f"gate key {kid} (introduced at seq {at_seq.get(kid)}) is missing from "
                "the key table or no longer chains to the pinned key",
            )
    for kid in in_table:
        if kid not in logged:
            return (
                report.head_seq + 1,
                "truncation",
                f"gate key {kid} chains to the pinned key but the log lacks the event "
                "that introduced it: events were removed",
            )
    return None
