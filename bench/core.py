"""Core hot paths of opsgate, side by side with AgentMesh (`agentmesh-platform`).

    python -m bench.core            # full sizes, about 3-4 minutes on 2 cores
    python -m bench.core --quick    # small sizes, a smoke run (under a minute)

Prints one table (operation | opsgate | AgentMesh | target | ok?) on stdout;
progress goes to stderr. Every scenario runs in its own temporary state
directory, removed afterwards. Sizes that would take minutes through the API
(100k agents, 1M revoked credentials, 1M audit events) are bulk-loaded with
opsgate's own record / hashing functions, so what is loaded is exactly what the
product would have written; only the timed operations go through the API.

AgentMesh is measured through its own public classes, found by reading its
installed source: `agentmesh.identity.credentials.CredentialManager`
(issue / validate) and `agentmesh.governance.audit.AuditLog` (log /
verify_integrity), plus `FileAuditSink` as its persistent audit option. It is a
bench-only dependency (requirements-bench.txt); without it the column says
"not installed".
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import platform
import random
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import insert, select

from bench._util import (
    Stats,
    Table,
    fmt_count,
    fmt_rate,
    fmt_seconds,
    fmt_us,
    interleaved,
    progress,
    sample,
    stats,
    temp_dir,
    throughput,
    timed,
)
from opsgate import Gate, InvalidCredential
from opsgate import capabilities as caps
from opsgate.audit.log import Checkpoint, canonical, chain_hash
from opsgate.authz import environment_of
from opsgate.credentials import jws
from opsgate.identity import keys
from opsgate.identity.records import record_bytes
from opsgate.store import DB_FILE, schema

CAPABILITY = "deploy:staging/app-web"
SCOPE = ["deploy:staging"]
GRANTS = ["deploy:staging", "read:monitoring/app-web"]
SPONSOR = "sre@example.com"
FLAT = 1.20  # "unchanged within noise": scaled p50 at most 20% above the baseline's


@dataclass(frozen=True)
class Sizes:
    samples: int  # latency samples per measurement (>= 1,000)
    warmup: int
    issue_1t: int
    issue_mt: int
    append_1t: int
    append_mt: int
    audit_events: int
    agents: int
    revoked: int
    am_issue: int
    am_creds: int
    am_audit_append: int
    am_audit_events: int


FULL = Sizes(
    samples=2000,
    warmup=200,
    issue_1t=3000,
    issue_mt=9600,
    append_1t=3000,
    append_mt=32000,
    audit_events=1_000_000,
    agents=100_000,
    revoked=1_000_000,
    am_issue=20_000,
    am_creds=10_000,
    am_audit_append=10_000,
    am_audit_events=1_000_000,
)
QUICK = Sizes(
    samples=1000,
    warmup=100,
    issue_1t=500,
    issue_mt=1600,
    append_1t=500,
    append_mt=3200,
    audit_events=50_000,
    agents=5_000,
    revoked=50_000,
    am_issue=5_000,
    am_creds=10_000,
    am_audit_append=2_000,
    am_audit_events=50_000,
)


# -- opsgate helpers -------------------------------------------------------------------


def open_gate(path: Path, agents: int = 10) -> tuple[Gate, list[Any]]:
    """A gate with `agents` root agents registered through the API (trust 1000)."""
    gate = Gate.open(path)
    registered = [
        gate.register_agent(f"bench-{i}", GRANTS, SPONSOR, trust_score=1000) for i in range(agents)
    ]
    return gate, registered


def issue_tokens(gate: Gate, did: str, n: int) -> list[str]:
    cm = gate.credential_manager
    return [cm.issue_credential(did, SCOPE).token for _ in range(n)]


def decide_fn(gate: Gate, token: str) -> Callable[[int], object]:
    """authorize() without its audit write: credential verify + parse + gate._decide."""
    cm = gate.credential_manager

    def run(_: int) -> object:
        t = time.time()
        claims = cm.verify(token, now=t)
        cap = caps.parse_request(CAPABILITY)
        out = gate._decide(claims, cap, t, environment=environment_of(cap))
        decision = out[1] if isinstance(out, tuple) else out
        if decision.effect != "allow":
            raise AssertionError(f"expected allow, got {decision.effect}: {decision.reasons}")
        return decision

    return run


def bulk_agents(gate: Gate, template_did: str, count: int) -> list[str]:
    """Insert `count` root agents with valid gate-signed registration records.

    Each row is a copy of `template_did`'s row (an agent registered through the
    API), with its own key pair, name, and registration record re-signed by the
    gate key, so the bulk agents are what `register_agent` would have stored.
    """
    kid, gate_key = gate.keyring.signer()
    with gate.store.read() as conn:
        template = dict(
            conn.execute(select(schema.agents).where(schema.agents.c.did == template_did))
            .one()
            ._mapping
        )
    if template["signer"] != f"gate:{kid}":
        raise AssertionError("template agent is not a root signed by the current gate key")
    template_record = orjson.loads(template["record"])
    dids: list[str] = []
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        with gate.store.write() as conn:
            conn.execute(insert(schema.agents), rows)
        rows.clear()

    for i in range(count):
        private = keys.generate()
        did = keys.did_from_public_key(private.public_key())
        name = f"bulk-{i}"
        body = record_bytes({**template_record, "did": did, "name": name})
        rows.append(
            {
                **template,
                "did": did,
                "name": name,
                "record": body.decode("utf-8"),
                "signature": keys.b64url(gate_key.sign(body)),
            }
        )
        dids.append(did)
        if len(rows) >= 20_000:
            flush()
    if rows:
        flush()
    return dids


def raw_db(gate_dir: Path) -> sqlite3.Connection:
    """A bulk-load connection to a gate's SQLite file (no fsync: setup only, never timed)."""
    con = sqlite3.connect(gate_dir / DB_FILE, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA busy_timeout=30000")
    return con


def bulk_revoked(gate_dir: Path, count: int, extra: list[str]) -> None:
    """Insert `count` revoked jtis (plus `extra`) still inside their revocation window."""
    t = time.time()
    expires = t + 3600 + 60
    con = raw_db(gate_dir)
    sql = (
        "INSERT INTO revoked_credentials (jti, agent_did, expires_at, revoked_at, reason) "
        "VALUES (?, NULL, ?, ?, NULL)"
    )
    try:
        con.execute("BEGIN")
        con.executemany(sql, ((j, expires, t) for j in extra))
        batch = 100_000
        for start in range(0, count, batch):
            con.executemany(
                sql,
                (
                    (keys.b64url(secrets.token_bytes(16)), expires, t)
                    for _ in range(min(batch, count - start))
                ),
            )
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def bulk_audit(gate: Gate, gate_dir: Path, count: int, actors: list[str]) -> int:
    """Append `count` chained events (and signed checkpoints every 10k) in bulk; return head seq."""
    seq, prev = gate.audit.head()
    kid, sign = gate._audit_signer()
    con = raw_db(gate_dir)
    ins = (
        "INSERT INTO audit_events (seq, at, type, actor, body, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    at0 = round(time.time(), 3)
    reasons = [f"{CAPABILITY!r} is covered by scope and grants"]
    checkpoints: list[tuple[Any, ...]] = []
    try:
        remaining = count
        while remaining:
            k = min(50_000, remaining)
            rows = []
            for _ in range(k):
                seq += 1
                at = at0 + seq / 1000
                actor = actors[seq % len(actors)]
                jti = keys.b64url(secrets.token_bytes(16))
                if seq % 2:
                    event: dict[str, Any] = {
                        "type": "authorize",
                        "actor": actor,
                        "jti": jti,
                        "capability": CAPABILITY,
                        "decision": "allow",
                        "reasons": reasons,
                    }
                else:
                    event = {
                        "type": "credential.issued",
                        "actor": actor,
                        "jti": jti,
                        "scope": SCOPE,
                        "expires_at": at + 900,
                        "kid": kid,
                    }
                event["seq"] = seq
                event["at"] = at
                body = canonical(event)
                digest = chain_hash(prev, body)
                rows.append((seq, at, event["type"], actor, body.decode("utf-8"), prev, digest))
                prev = digest
                if seq % 10_000 == 0:
                    cp = Checkpoint(gate.gate_id, seq, digest, at, kid, "")
                    checkpoints.append((seq, digest, at, kid, sign(cp.payload())))
            con.execute("BEGIN")
            con.executemany(ins, rows)
            con.execute("COMMIT")
            remaining -= k
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO audit_checkpoints (seq, hash, at, kid, signature) VALUES (?, ?, ?, ?, ?)",
            checkpoints,
        )
        con.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return seq


class RawAppendFloor:
    """Reference: the same chained append done with bare sqlite3 (WAL, synchronous=FULL)."""

    def __init__(self, gate_dir: Path) -> None:
        self.con = sqlite3.connect(gate_dir / DB_FILE, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.reasons = [f"{CAPABILITY!r} is covered by scope and grants"]

    def __call__(self, i: int) -> None:
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        seq, prev = con.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        seq += 1
        at = time.time()
        event = {
            "type": "authorize",
            "actor": "did:key:bench",
            "jti": f"j{i}",
            "capability": CAPABILITY,
            "decision": "allow",
            "reasons": self.reasons,
            "seq": seq,
            "at": at,
        }
        body = canonical(event)
        digest = chain_hash(prev, body)
        con.execute(
            "INSERT INTO audit_events (seq, at, type, actor, body, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, at, "authorize", "did:key:bench", body.decode(), prev, digest),
        )
        con.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
        con.execute("COMMIT")

    def close(self) -> None:
        self.con.close()


def handoff_ceiling(gate: Gate, append: Any, n: int, commit_seconds: float) -> float:
    """Reference: 16 threads through the same group commit, with each batch's database
    work replaced by a GIL-free sleep as long as one bare sqlite3 commit here.

    What is left is the hand-off itself (queueing, waking each writer, the GIL), so
    this is the most the thread-per-writer model can reach on this machine.
    """
    writer = gate.audit._writer  # the group commit; its leader calls `write(batch)`

    def sleep_instead(batch: list[Any]) -> None:
        time.sleep(commit_seconds)
        for p in batch:
            p.record = p.event

    writer.write = sleep_instead  # type: ignore[method-assign]
    try:
        return throughput(append, n, threads=16)
    finally:
        del writer.write


def settle() -> None:
    """Flush bulk-loaded pages to disk first, so their writeback does not slow timed fsyncs."""
    os.sync()
    gc.collect()


# -- results ---------------------------------------------------------------------------


class Results(dict[str, Any]):
    def get_stats(self, key: str) -> Stats | None:
        v = self.get(key)
        return v if isinstance(v, Stats) else None


# -- opsgate scenarios -----------------------------------------------------------------


def bench_verify(S: Sizes, R: Results) -> None:
    progress("verify: issuing fresh credentials")
    with temp_dir("verify") as d:
        gate, agents = open_gate(d)
        try:
            cm = gate.credential_manager
            tokens = issue_tokens(gate, agents[0].did, S.samples + S.warmup)
            header, _, _, _ = jws.split(tokens[0], max_bytes=4096, allowed_algs=("EdDSA",))
            public = gate.keyring.public(header["kid"])
            assert public is not None
            parts = [jws.split(t, max_bytes=4096, allowed_algs=("EdDSA",)) for t in tokens]
            audience, issuer = gate.config.audience, gate.gate_id
            require: Any = {"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]}
            jwt: Any = None
            try:
                jwt = importlib.import_module("jwt")
            except ImportError:
                R["pyjwt_missing"] = "PyJWT not installed"

            def pyjwt(tok: str) -> None:
                if jwt is None:
                    return
                jwt.decode(
                    tok,
                    public,
                    algorithms=["EdDSA"],
                    audience=audience,
                    issuer=issuer,
                    leeway=5,
                    options=require,
                )

            progress("verify: fresh tokens (opsgate, PyJWT, bare Ed25519 interleaved)")
            clock = time.perf_counter_ns
            ops: list[int] = []
            pj: list[int] = []
            ed: list[int] = []
            gc.collect()
            for i, tok in enumerate(tokens):
                _, _, signing_input, signature = parts[i]
                t0 = clock()
                cm.verify(tok)
                t1 = clock()
                pyjwt(tok)
                t2 = clock()
                public.verify(signature, signing_input)
                t3 = clock()
                if i >= S.warmup:
                    ops.append(t1 - t0)
                    pj.append(t2 - t1)
                    ed.append(t3 - t2)
            R["verify_fresh"] = stats(ops)
            if jwt is not None:
                R["verify_pyjwt"] = stats(pj)
            R["verify_ed25519"] = stats(ed)
            progress("verify: seen-before token")
            tok = tokens[0]
            R["verify_cached"] = stats(sample(lambda _: cm.verify(tok), S.samples, warmup=S.warmup))
        finally:
            gate.close()


def bench_issue(S: Sizes, R: Results) -> None:
    settle()
    with temp_dir("issue") as d:
        gate, agents = open_gate(d)
        try:
            cm = gate.credential_manager
            did = agents[0].did
            for _ in range(50):
                cm.issue_credential(did, SCOPE)

            def issue(_: int) -> object:
                return cm.issue_credential(did, SCOPE)

            progress(f"issue: {S.issue_1t} credentials, 1 thread")
            R["issue_1t"] = throughput(issue, S.issue_1t)
            for threads in (8, 16):
                progress(f"issue: {S.issue_mt} credentials, {threads} threads")
                R[f"issue_{threads}t"] = throughput(issue, S.issue_mt, threads=threads)
        finally:
            gate.close()


def bench_audit_append(S: Sizes, R: Results) -> None:
    settle()
    with temp_dir("audit-append") as d, temp_dir("audit-floor") as d_floor:
        gate, agents = open_gate(d, agents=1)
        Gate.open(d_floor).close()
        floor = RawAppendFloor(d_floor)
        try:
            did = agents[0].did
            reasons = [f"{CAPABILITY!r} is covered by scope and grants"]

            def append(i: int) -> object:
                return gate.audit.append(
                    "authorize",
                    actor=did,
                    jti=f"bench-{i}",
                    capability=CAPABILITY,
                    decision="allow",
                    reasons=reasons,
                )

            progress(f"audit: {S.append_1t} appends, 1 thread (and the bare sqlite3 floor)")
            lat = interleaved({"opsgate": append, "floor": floor}, S.append_1t, warmup=100)
            for key, name in (("append", "opsgate"), ("append_floor", "floor")):
                R[f"{key}_lat"] = stats(lat[name])
                R[f"{key}_1t"] = len(lat[name]) / (sum(lat[name]) / 1e9)
            b0, e0 = gate.audit.batches, gate.audit.batched_events
            progress(f"audit: {S.append_mt} appends, 16 threads")
            R["append_16t"] = throughput(append, S.append_mt, threads=16)
            R["append_16t_batch"] = (gate.audit.batched_events - e0) / (gate.audit.batches - b0)
            report = gate.audit.verify()
            if not report.ok:
                raise AssertionError(f"audit chain broken after the append bench: {report.reason}")
            progress("audit: 16 threads, storage replaced by one bare commit's time (ceiling)")
            one_commit = 1 / R["append_floor_1t"]
            R["append_16t_ceiling"] = handoff_ceiling(gate, append, S.append_mt, one_commit)
        finally:
            floor.close()
            gate.close()


def bench_audit_verify(S: Sizes, R: Results) -> None:
    with temp_dir("audit-verify") as d:
        gate, agents = open_gate(d, agents=4)
        try:
            progress(f"audit: bulk-building a {fmt_count(S.audit_events)}-event chain")
            with timed() as build:
                head = bulk_audit(gate, d, S.audit_events, [a.did for a in agents])
            progress(f"audit: built in {build[0]:.1f}s; verifying")
            settle()
            with timed() as took:
                report = gate.audit.verify()
            if not report.ok or report.head_seq != head:
                raise AssertionError(f"bulk chain does not verify: {report.to_dict()}")
            R["audit_verify"] = took[0]
            R["audit_verify_events"] = report.events
            R["audit_verify_checkpoints"] = report.checkpoints_checked
        finally:
            gate.close()


def bench_scale(S: Sizes, R: Results) -> None:
    with (
        temp_dir("scale-base") as d0,
        temp_dir("scale-agents") as d1,
        temp_dir("scale-revoked") as d2,
    ):
        gates: dict[str, Gate] = {}
        try:
            registered: dict[str, list[Any]] = {}
            for name, d in (("base", d0), ("agents", d1), ("revoked", d2)):
                gates[name], registered[name] = open_gate(d)
            ag_agents = registered["agents"]
            progress(f"scale: bulk-inserting {fmt_count(S.agents - 10)} signed agent records")
            with timed() as took:
                dids = bulk_agents(gates["agents"], ag_agents[-1].did, S.agents - 10)
            progress(f"scale: agents inserted in {took[0]:.1f}s")
            probe = gates["agents"].agents.state(dids[-1])
            if probe.grant is None:
                raise AssertionError(f"bulk agent record does not verify: {probe.chain_error}")
            gates["agents"].credential_manager.verify(
                issue_tokens(gates["agents"], dids[len(dids) // 2], 1)[0]
            )

            rv = gates["revoked"]
            victim = rv.credential_manager.issue_credential(registered["revoked"][-1].did, SCOPE)
            progress(f"scale: bulk-inserting {fmt_count(S.revoked)} revoked jtis and reloading")
            with timed() as took:
                bulk_revoked(d2, S.revoked, [victim.jti])
                rv.state.load(time.time())
            progress(f"scale: revocations loaded in {took[0]:.1f}s")
            if rv.state.revoked_count() < S.revoked:
                raise AssertionError(f"only {rv.state.revoked_count()} revocations loaded")
            try:
                rv.credential_manager.verify(victim.token)
            except InvalidCredential as exc:
                if exc.code != "revoked":
                    raise
            else:
                raise AssertionError("a bulk-revoked credential still verifies")
            R["scale_agents_rows"] = len(ag_agents) + len(dids)
            R["scale_revoked_rows"] = rv.state.revoked_count()

            first = {name: registered[name][0].did for name in gates}
            steady = {name: issue_tokens(g, first[name], 1)[0] for name, g in gates.items()}
            fresh: dict[str, Iterator[str]] = {}
            for name, g in gates.items():
                progress(f"scale: issuing fresh tokens on '{name}'")
                fresh[name] = iter(issue_tokens(g, first[name], S.samples + 50))

            def auth(g: Gate, tok: str) -> Callable[[int], object]:
                return lambda _: g.authorize(tok, CAPABILITY)

            def verify_fresh(g: Gate, it: Iterator[str]) -> Callable[[int], object]:
                cm = g.credential_manager
                return lambda _: cm.verify(next(it))

            settle()
            progress("scale: authorize (audited), interleaved across the three gates")
            res = interleaved(
                {n: auth(g, steady[n]) for n, g in gates.items()}, S.samples, block=20
            )
            for n, v in res.items():
                R[f"authz_{n}"] = stats(v)
            progress("scale: decision without the audit write")
            res = interleaved({n: decide_fn(g, steady[n]) for n, g in gates.items()}, S.samples)
            for n, v in res.items():
                R[f"decide_{n}"] = stats(v)
            progress("scale: fresh-token verify")
            res = interleaved({n: verify_fresh(g, fresh[n]) for n, g in gates.items()}, S.samples)
            for n, v in res.items():
                R[f"fresh_{n}"] = stats(v)
        finally:
            for g in gates.values():
                g.close()


# -- AgentMesh -------------------------------------------------------------------------


def bench_agentmesh(S: Sizes, R: Results) -> None:
    try:
        from agentmesh.governance.audit import AuditEntry, AuditLog
        from agentmesh.governance.audit_backends import FileAuditSink
        from agentmesh.identity.credentials import CredentialManager
    except ImportError as exc:
        R["am_missing"] = f"not installed ({exc.name})"
        return
    import importlib.metadata

    R["am_version"] = importlib.metadata.version("agentmesh-platform")
    did = "did:mesh:bench-agent"

    progress(f"agentmesh: issue {S.am_issue} credentials")
    cm = CredentialManager()
    R["am_issue"] = throughput(
        lambda _: cm.issue(did, capabilities=SCOPE, resources=["staging/app-web"]), S.am_issue
    )

    for n in (10, S.am_creds):
        progress(f"agentmesh: validate with {n} credentials issued")
        cm = CredentialManager()
        tokens = [cm.issue(f"{did}-{i}", capabilities=SCOPE).token for i in range(n)]
        rng = random.Random(7)
        picks = [rng.choice(tokens) for _ in range(S.samples + S.warmup)]

        def validate(i: int, picks: list[str] = picks, cm: Any = cm) -> None:
            if cm.validate(picks[i]) is None:
                raise AssertionError("agentmesh refused its own credential")

        out = sample(lambda i: validate(i + S.warmup), S.samples, warmup=0)
        R[f"am_verify_{n}"] = stats(out)
        if n == S.am_creds:
            unknown = secrets.token_urlsafe(32)

            def validate_unknown(_: int, cm: Any = cm, tok: str = unknown) -> None:
                cm.validate(tok)

            R["am_verify_unknown"] = stats(sample(validate_unknown, S.samples, warmup=10))

    progress(f"agentmesh: audit log {S.am_audit_append} events")
    log = AuditLog()

    def am_log(i: int, log: Any = log) -> None:
        log.log(
            "authorize",
            did,
            "deploy",
            resource="staging/app-web",
            data={"jti": f"bench-{i}"},
            policy_decision="allow",
        )

    R["am_append"] = throughput(am_log, S.am_audit_append)
    with temp_dir("agentmesh-audit") as d:
        sink = FileAuditSink(d / "audit.jsonl", secret_key=b"bench-secret-key-0123456789")
        flog = AuditLog(sink=sink)
        R["am_append_file"] = throughput(
            lambda i: am_log(i, flog), max(1000, S.am_audit_append // 2)
        )
        sink.close()

    progress(f"agentmesh: building a {fmt_count(S.am_audit_events)}-entry audit chain")
    log = AuditLog()
    entries = log._chain._entries  # verify_chain walks these; the Merkle tree is not consulted
    prev = ""
    for i in range(S.am_audit_events):
        e = AuditEntry(
            event_type="authorize",
            agent_did=did,
            action="deploy",
            resource="staging/app-web",
            data={"jti": f"bench-{i}"},
            policy_decision="allow",
        )
        e.previous_hash = prev
        e.entry_hash = e.compute_hash()
        prev = e.entry_hash
        entries.append(e)
    progress("agentmesh: verify_integrity")
    gc.collect()
    with timed() as took:
        ok, err = log.verify_integrity()
    if not ok:
        raise AssertionError(f"agentmesh chain does not verify: {err}")
    R["am_audit_verify"] = took[0]
    del entries, log
    gc.collect()


# -- the table -------------------------------------------------------------------------


def _ok(good: bool | None) -> str:
    return "—" if good is None else ("yes" if good else "NO")


def build_table(S: Sizes, R: Results) -> Table:
    am_missing = R.get("am_missing")

    def am(value: str) -> str:
        return am_missing or value

    t = Table("operation", "opsgate", "AgentMesh", "target", "ok?")
    fresh, pyj, ed = R["verify_fresh"], R.get_stats("verify_pyjwt"), R["verify_ed25519"]
    am10 = R.get_stats("am_verify_10")
    amn = R.get_stats(f"am_verify_{S.am_creds}")
    t.row(
        "verify fresh credential p50 / p95",
        fresh.p50_p95(),
        am(f"{am10.p50_p95()} [a]" if am10 else "n/a"),
        "p50 ≤ 120 µs",
        _ok(fresh.p50 <= 120),
    )
    t.row(
        "  PyJWT jwt.decode EdDSA + claims p50 / p95",
        pyj.p50_p95() if pyj else R.get("pyjwt_missing", "n/a"),
        "n/a",
        "≈150 µs (ref)",
        "—",
    )
    t.row("  bare Ed25519 verify p50 / p95 (floor)", ed.p50_p95(), "n/a", "(ref)", "—")
    scale_fresh = R["fresh_revoked"]
    t.row(
        f"verify fresh @ {fmt_count(S.revoked)} revoked / AM @ {fmt_count(S.am_creds)} creds",
        scale_fresh.p50_p95(),
        am(amn.p50_p95() if amn else "n/a"),
        "p50 ≤ 120 µs, flat",
        _ok(scale_fresh.p50 <= 120 and scale_fresh.p50 <= R["fresh_base"].p50 * FLAT),
    )
    cached = R["verify_cached"]
    t.row(
        "verify seen-before credential p50 / p95",
        cached.p50_p95(),
        am("n/a (no cache) [a]"),
        "p50 ≤ 15 µs",
        _ok(cached.p50 <= 15),
    )
    t.rule()
    for label, key, rows in (
        ("authorize (audited) p50", "authz", ("base", "agents", "revoked")),
        ("  decision only (verify + _decide) p50", "decide", ("base", "agents", "revoked")),
    ):
        base = R[f"{key}_base"]
        for name in rows:
            st = R[f"{key}_{name}"]
            what = {
                "base": "10 agents, 0 revoked",
                "agents": f"{fmt_count(R['scale_agents_rows'])} agents",
                "revoked": f"{fmt_count(S.revoked)} revoked jtis",
            }[name]
            if name == "base":
                t.row(
                    f"{label}, {what}",
                    f"{fmt_us(st.p50)} (p95 {fmt_us(st.p95)})",
                    "n/a",
                    "baseline",
                    "—",
                )
            else:
                ratio = st.p50 / base.p50
                t.row(
                    f"{label}, {what}",
                    f"{fmt_us(st.p50)} (×{ratio:.2f})",
                    "n/a",
                    f"≤ ×{FLAT:.2f} of baseline",
                    _ok(ratio <= FLAT),
                )
    t.rule()
    for key, label in (
        ("issue_1t", "1 thread"),
        ("issue_8t", "8 threads"),
        ("issue_16t", "16 threads"),
    ):
        amv = am(
            f"{fmt_rate(R['am_issue'])} [b]" if key == "issue_1t" and not am_missing else "n/a"
        )
        t.row(
            f"issue credentials/s, audited, {label}",
            fmt_rate(R[key]),
            amv,
            "≥ 5,000/s",
            _ok(R[key] >= 5000),
        )
    t.rule()
    lat, floor = R["append_lat"], R["append_floor_lat"]
    t.row(
        "audit append events/s, fsync'd, 1 thread",
        f"{fmt_rate(R['append_1t'])} (p50 {fmt_us(lat.p50)}, p99 {fmt_us(lat.p99)})",
        am_missing or f"{fmt_rate(R['am_append'])} mem / {fmt_rate(R['am_append_file'])} file [c]",
        "≥ 3,000/s",
        _ok(R["append_1t"] >= 3000),
    )
    per_commit = R.get("append_16t_batch")
    t.row(
        "audit append events/s, 16 threads",
        fmt_rate(R["append_16t"]) + (f" ({per_commit:.1f} events/commit)" if per_commit else ""),
        am("n/a (not thread-safe) [c]"),
        "≥ 20,000/s",
        _ok(R["append_16t"] >= 20000),
    )
    if "append_16t_ceiling" in R:
        t.row(
            "  16 threads, each commit replaced by a sleep of one bare commit (ceiling)",
            fmt_rate(R["append_16t_ceiling"]),
            "n/a",
            "(ref)",
            "—",
        )
    t.row(
        "  bare sqlite3 chained append, 1 thread (floor)",
        f"{fmt_rate(R['append_floor_1t'])} (p50 {fmt_us(floor.p50)}, p99 {fmt_us(floor.p99)})",
        "n/a",
        "(ref)",
        "—",
    )
    n_ev = R["audit_verify_events"]
    t.row(
        f"audit verify {fmt_count(S.audit_events)} events",
        fmt_seconds(R["audit_verify"]),
        am(f"{fmt_seconds(R['am_audit_verify'])} [d]" if "am_audit_verify" in R else "n/a"),
        f"≤ {10 * S.audit_events / 1_000_000:g} s",
        _ok(R["audit_verify"] <= 10 * S.audit_events / 1_000_000),
    )

    t.note(
        f"ok? for scaled rows: p50 at most ×{FLAT:.2f} the baseline's, measured interleaved "
        f"(blocks of 20 audited or 100 unaudited calls rotating over the three gates). Latencies: "
        f"{S.samples:,} samples after warm-up. Single-thread append rates are 1 / mean latency, "
        "sampled interleaved with the bare sqlite3 floor on its own database file; "
        "events/commit is the mean group-commit batch size."
    )
    t.note(
        f"audit verify: {n_ev:,} events incl. setup, {R['audit_verify_checkpoints']} signed "
        "checkpoints checked, read from SQLite (OS page cache warm)."
    )
    if not am_missing:
        unk = R.get_stats("am_verify_unknown")
        t.note(
            f"[a] AgentMesh {R['am_version']} CredentialManager.validate(): SHA-256 of the "
            "token, then a linear scan comparing it with every stored credential; a random "
            "issued token (average n/2 compared). An unknown or forged token scans all "
            f"{S.am_creds:,}: p50 {fmt_us(unk.p50) if unk else 'n/a'}. No signature, no cache."
        )
        t.note(
            "[b] AgentMesh issue: random bearer token in a dict, in memory; not signed, not "
            "audited, not persisted."
        )
        t.note(
            "[c] AgentMesh AuditLog.log(): in memory (Merkle tree update); 'file' adds "
            "FileAuditSink (JSON line + HMAC, file opened per entry, never fsync'd). No locking "
            "in AuditLog/MerkleAuditChain, so concurrent writers are not supported."
        )
        t.note(
            f"[d] AgentMesh verify_integrity() over {fmt_count(S.am_audit_events)} entries "
            "held in memory (no read from storage)."
        )
    return t


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--no-agentmesh", action="store_true", help="skip the AgentMesh column")
    args = parser.parse_args(argv)
    S = QUICK if args.quick else FULL
    R = Results()
    started = time.perf_counter()
    bench_verify(S, R)
    bench_issue(S, R)
    bench_audit_append(S, R)
    bench_audit_verify(S, R)
    bench_scale(S, R)
    if args.no_agentmesh:
        R["am_missing"] = "skipped"
    else:
        bench_agentmesh(S, R)
    elapsed = time.perf_counter() - started
    import cryptography

    try:
        from jwt import __version__ as pyjwt_version
    except ImportError:
        pyjwt_version = "not installed"

    print(
        f"opsgate core bench ({'quick' if args.quick else 'full'}) — Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, cryptography "
        f"{cryptography.__version__}, PyJWT {pyjwt_version}, SQLite {sqlite3.sqlite_version}, "
        f"AgentMesh {R.get('am_version', R.get('am_missing'))}; {elapsed:.0f}s"
    )
    build_table(S, R).print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
