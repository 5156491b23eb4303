"""The state store on embedded SQLite and on the real PostgreSQL (`database_url`).

Schema by migrations, idempotent reopening, two gates on one database seeing each
other's revocations within a second, and a gap-free audit sequence under
concurrent writers in one process and across two gates.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text

import opsgate
from opsgate.store import schema

CORE_TABLES = {
    "gate_meta",
    "counters",
    "gate_keys",
    "agents",
    "revoked_credentials",
    "state_changes",
    "audit_events",
    "audit_head",
    "audit_checkpoints",
}
VISIBLE_WITHIN = 1.0  # seconds, DESIGN §5


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def pair(state_dir: Path, database_url: str | None) -> Iterator[tuple[opsgate.Gate, opsgate.Gate]]:
    """Two gates (two replicas) on one database: the same state dir opened twice."""
    a = opsgate.Gate.open(state_dir, database_url=database_url)
    b = opsgate.Gate.open(state_dir, database_url=database_url)
    yield a, b
    a.close()
    b.close()


def _until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held (polling), or fail after `timeout`."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition did not hold within {timeout} s")
        time.sleep(0.02)


def _refused_with(gate: opsgate.Gate, token: str, code: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            gate.credential_manager.verify(token)
        except opsgate.InvalidCredential as exc:
            assert exc.code == code, exc.code
            return True
        return False

    return check


# -- schema and reopening ------------------------------------------------------------------------


def test_migrations_create_the_schema(state_dir: Path, database_url: str | None) -> None:
    with opsgate.Gate.open(state_dir, database_url=database_url) as gate:
        engine = create_engine(gate.store.url)
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert tables >= CORE_TABLES
        assert "alembic_version" in tables
        assert {t.name for t in schema.metadata.sorted_tables} <= tables
        assert gate.store.dialect == ("sqlite" if database_url is None else "postgresql")
        with gate.store.read() as conn:
            head = conn.execute(select(schema.audit_head)).one()
            assert head.id == 1 and head.seq >= 1  # the gate's key creation is the first event
        if database_url is None:
            assert (state_dir / "opsgate.db").exists()


def test_reopening_is_idempotent(state_dir: Path, database_url: str | None) -> None:
    with opsgate.Gate.open(state_dir, database_url=database_url) as gate:
        agent = gate.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
        cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
        first = (gate.gate_id, gate.keyring.signer()[0], gate.audit.head(), gate.jwks())
    for _ in range(2):
        with opsgate.Gate.open(state_dir, database_url=database_url) as gate:
            assert (gate.gate_id, gate.keyring.signer()[0], gate.audit.head(), gate.jwks()) == first
            assert gate.agents.get("deployer").did == agent.did
            assert gate.credential_manager.verify(cred.token).jti == cred.jti
            report = gate.audit.verify()
            assert report.ok, report
    with opsgate.Gate.open(state_dir, database_url=database_url) as gate:
        gate.store.migrate()  # explicit re-run: nothing to do, nothing broken
        assert gate.audit.verify().ok


def test_a_database_migrated_by_a_newer_version_is_refused_unchanged(
    state_dir: Path, database_url: str | None
) -> None:
    """A replica left behind in a rolling upgrade meets a schema revision it does not
    know: it refuses to start with schema_unknown (it was alembic's CommandError, an
    internal_error naming only a class) and writes nothing."""
    with opsgate.Gate.open(state_dir, database_url=database_url) as gate:
        engine = create_engine(gate.store.url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'zz_newer'"))
            before = conn.execute(select(schema.audit_head)).one()
        with pytest.raises(opsgate.StoreError) as refused:
            opsgate.Gate.open(state_dir, database_url=database_url)
        assert refused.value.code == "schema_unknown"
        assert "'zz_newer'" in refused.value.message
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
                ("zz_newer",)
            ]
            assert conn.execute(select(schema.audit_head)).one() == before
    finally:
        engine.dispose()


# -- replicas --------------------------------------------------------------------------------------


def test_replicas_see_each_others_revocations_within_a_second(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    a, b = pair
    sup = a.register_agent(
        "devops-supervisor", ["deploy:staging", "read:secrets"], sponsor="ops@company.com"
    )
    agent = sup.delegate("deploy-agent", ["deploy:staging"])
    t1 = a.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
    t2 = a.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
    t3 = a.credential_manager.issue_credential(sup.did, ["read:secrets"]).token
    for token in (t1, t2, t3):
        assert b.credential_manager.verify(token)  # b has verified (and cached) each one

    # by jti, on a; seen by b
    a.credential_manager.revoke(b.credential_manager.verify(t1).jti, reason="leaked")
    assert _until(_refused_with(b, t1, "revoked"), 2.0) < VISIBLE_WITHIN
    assert b.credential_manager.verify(t2)  # the other credential is untouched

    # by agent, on b; seen by a
    b.credential_manager.revoke_agent(agent.did, reason="compromised")
    assert _until(_refused_with(a, t2, "revoked"), 2.0) < VISIBLE_WITHIN

    # suspension of the root, on a; seen by b (cascade to every descendant)
    a.agents.suspend(sup.did, reason="anomaly")
    assert _until(_refused_with(b, t3, "revoked"), 2.0) < VISIBLE_WITHIN
    assert _until(lambda: b.agents.get("deploy-agent").status == "suspended", 2.0) < 1.0


def test_replicas_see_each_others_key_rotation(pair: tuple[opsgate.Gate, opsgate.Gate]) -> None:
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    old = a.credential_manager.issue_credential(agent.did, ["deploy:staging"])
    new_kid = b.rotate_keys()
    token = b.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
    assert a.credential_manager.verify(token).kid == new_kid  # unknown kid: a refreshes at once
    assert a.credential_manager.verify(old.token).kid == old.kid  # old key still published
    assert {k["kid"] for k in a.jwks()["keys"]} == {old.kid, new_kid}


def test_replica_issues_with_the_rotated_key_after_a_refresh_interval(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    """A replica that only issues must not keep signing with a key another replica retired."""
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    b.rotate_keys()
    time.sleep(VISIBLE_WITHIN + 0.1)
    cred = a.credential_manager.issue_credential(agent.did, ["deploy:staging"])
    for gate in (a, b):
        assert gate.credential_manager.verify(cred.token).jti == cred.jti


def test_a_proof_of_possession_is_accepted_once_across_replicas(
    state_dir: Path, database_url: str | None
) -> None:
    """Each proof is accepted once (proof.py): replaying it to another replica must fail too."""
    a = opsgate.Gate.open(state_dir, database_url=database_url, require_proof=True)
    b = opsgate.Gate.open(state_dir, database_url=database_url, require_proof=True)
    try:
        agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
        handle = agent.credential(scope=["deploy:staging"])
        ctx = "deploy:staging/app-web"
        proof = handle.authorize_proof(ctx)
        assert a.authorize(handle.token, ctx, proof=proof).effect == "allow"
        with pytest.raises(opsgate.InvalidCredential) as info:
            b.authorize(handle.token, ctx, proof=proof)
        assert info.value.code == "proof_replayed"
    finally:
        a.close()
        b.close()


# -- audit sequence under concurrency --------------------------------------------------------------


def _hammer(writers: list[Callable[[int], Any]], per_thread: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(len(writers))

    def run(write: Callable[[int], Any]) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                write(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def _assert_gap_free(gate: opsgate.Gate, expected_new: int, before: int) -> None:
    with gate.store.read() as conn:
        seqs = [r[0] for r in conn.execute(select(schema.audit_events.c.seq).order_by("seq"))]
    assert seqs == list(range(1, len(seqs) + 1)), "audit seq has gaps or duplicates"
    assert len(seqs) == before + expected_new
    report = gate.audit.verify()
    assert report.ok, report
    assert report.head_seq == len(seqs)


def test_audit_seq_is_gap_free_with_eight_threads(
    state_dir: Path, database_url: str | None
) -> None:
    with opsgate.Gate.open(state_dir, database_url=database_url) as gate:
        before = gate.audit.head()[0]
        writers = [
            (lambda i, n=n: gate.audit.append("test.event", actor=f"thread-{n}", i=i))
            for n in range(8)
        ]
        assert _hammer(writers, per_thread=25) == []
        _assert_gap_free(gate, 8 * 25, before)


def test_audit_seq_is_gap_free_across_two_gates(pair: tuple[opsgate.Gate, opsgate.Gate]) -> None:
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    token = a.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
    before = a.audit.head()[0]
    writers: list[Callable[[int], Any]] = []
    for n in range(4):
        writers.append(lambda i, n=n: a.audit.append("test.event", actor=f"a-{n}", i=i))
        writers.append(lambda i, n=n: b.audit.append("test.event", actor=f"b-{n}", i=i))
    # real writers too: authorizations on both replicas append their own events
    writers.append(lambda i: a.authorize(token, "deploy:staging/app-web"))
    writers.append(lambda i: b.authorize(token, "deploy:staging/app-web"))
    assert _hammer(writers, per_thread=15) == []
    _assert_gap_free(a, len(writers) * 15, before)
    assert b.audit.verify().ok


def test_concurrent_registrations_of_one_name_leave_one_agent(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    a, b = pair
    results: list[object] = []
    lock = threading.Lock()

    def register(gate: opsgate.Gate) -> Callable[[int], Any]:
        def run(_: int) -> None:
            try:
                agent = gate.register_agent(
                    "contested", ["deploy:staging"], sponsor="o@company.com"
                )
                outcome: object = agent.did
            except opsgate.AgentError as exc:
                outcome = exc.code
            with lock:
                results.append(outcome)

        return run

    assert _hammer([register(g) for g in (a, b) for _ in range(4)], per_thread=1) == []
    winners = [r for r in results if isinstance(r, str) and r.startswith("did:key:")]
    assert len(winners) == 1 and results.count("agent_exists") == 7, results
    with a.store.read() as conn:
        rows = conn.execute(select(schema.agents.c.did)).all()
    assert [r[0] for r in rows] == winners
    key_files = list((a.state_dir / "agent-keys").iterdir())
    assert len(key_files) == 1 and key_files[0].stem in winners[0]  # losers left no key behind
    assert a.audit.verify().ok


def test_the_embedded_database_is_owner_only_from_its_first_byte(tmp_path: Path) -> None:
    """Created 0600 before SQLite opens it (SQLite copies that mode to -wal and -shm)."""
    from opsgate.store import DB_FILE, Store

    old = os.umask(0)
    try:
        store = Store.for_state_dir(tmp_path, None)
        assert (tmp_path / DB_FILE).stat().st_mode & 0o777 == 0o600
        store.migrate()
        for f in tmp_path.glob(DB_FILE + "*"):
            assert f.stat().st_mode & 0o777 == 0o600, f.name
        store.dispose()
    finally:
        os.umask(old)


def test_revoke_agent_on_one_replica_covers_what_another_issued_with_a_clock_ahead(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    """The cut-off is never before the latest iat issued to the agent (kept in the
    database by the issuance's own audit transaction), whichever replica stamped it."""
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    t = time.time()
    ahead = b.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=t + 3)
    a.credential_manager.revoke_agent(agent.did, now=t)
    for gate in (a, b):
        _until(_refused_with(gate, ahead.token, "revoked"), timeout=1.5)
    # an issuance whose iat the revocation covers is refused, not handed out dead
    head = b.audit.head()[0]
    with pytest.raises(opsgate.CredentialError) as info:
        b.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=t + 2)
    assert info.value.code == "revoked"
    issued = [r for r in b.audit.events(after_seq=head) if r.type == "credential.issued"]
    assert len(issued) == 1 and issued[0].event["revoked_on_issue"] is True
    later = b.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=t + 4)
    assert a.credential_manager.verify(later.token, now=t + 4).jti == later.jti


def test_revoke_agent_on_one_replica_in_the_same_second_as_issuance_on_another(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    """iat is a whole second, the cut-off finer: within one second, what either replica
    issued before the revocation is revoked everywhere, and what one issues after it
    (not having seen it yet) is valid everywhere, not dead on arrival."""
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    second = float(int(time.time()) + 10)
    early_a = a.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=second + 0.1)
    early_b = b.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=second + 0.2)
    for token in (early_a.token, early_b.token):
        assert b.credential_manager.verify(token, now=second + 0.3)  # b caches the agent
    a.credential_manager.revoke_agent(agent.did, now=second + 0.5)
    late = b.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=second + 0.7)
    assert late.issued_at.timestamp() == second + 1
    for gate in (a, b):
        assert gate.credential_manager.verify(late.token, now=second + 0.8).jti == late.jti
        for early in (early_a, early_b):
            with pytest.raises(opsgate.InvalidCredential) as info:
                gate.credential_manager.verify(early.token, now=second + 0.8)
            assert info.value.code == "revoked"


def test_suspension_covers_credentials_issued_on_another_replica_before_it(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    t = time.time()
    ahead = b.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=t + 3)
    a.agents.suspend(agent.did, now=t)
    a.agents.reinstate(agent.did, reason="drill over", now=t + 1)
    for gate in (a, b):
        _until(_refused_with(gate, ahead.token, "revoked"), timeout=1.5)


def test_a_replica_that_signs_with_a_key_just_rotated_elsewhere_issues_usable_tokens(
    pair: tuple[opsgate.Gate, opsgate.Gate],
) -> None:
    a, b = pair
    agent = a.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
    b.credential_manager.issue_credential(agent.did, ["deploy:staging"])  # b's view is warm
    old_kid = b.keyring.signer()[0]
    a.rotate_keys()
    token = b.credential_manager.issue_credential(agent.did, ["deploy:staging"])
    assert token.kid == old_kid  # b has not seen the rotation yet
    time.sleep(1.1)
    for gate in (a, b):
        assert gate.credential_manager.verify(token.token).jti == token.jti


def test_a_replica_whose_refresh_hangs_fails_closed_within_a_second(tmp_path: Path) -> None:
    """A refresh stuck on a dead connection holds the refresh lock; other callers may use
    the view only while it is younger than a second, then get a typed error."""
    with opsgate.Gate.open(tmp_path / "state") as gate:
        agent = gate.register_agent("deployer", ["deploy:staging"], sponsor="ops@company.com")
        cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
        state = gate.state
        state.refresh(force=True)
        assert state._refresh_lock.acquire()  # the stuck refresh
        try:
            assert gate.credential_manager.verify(cred.token).jti == cred.jti
            time.sleep(1.05)
            started = time.monotonic()
            with pytest.raises(opsgate.StoreError):
                gate.credential_manager.verify(cred.token)
            assert time.monotonic() - started < 1.5
            with pytest.raises(opsgate.StoreError):
                gate.authorize(cred.token, "deploy:staging/app")
        finally:
            state._refresh_lock.release()
        assert gate.credential_manager.verify(cred.token).jti == cred.jti  # recovered
