"""Secrets through the gate, one suite on both backends (embedded and a real OpenBao).

Every case goes through `Gate.execute` / `resume` (the SDK calls): writes and reads
round-trip by version, rotation makes a new random version, listing stays inside
the capability's prefix, delete is soft (latest version) or destroys everything,
check-and-set turns a concurrent change into `secret_conflict`, and the example
policy's approval of production writes binds the exact value without storing it.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from secret_helpers import SecretWorld, open_world

from opsgate import ApprovalError, CapabilityError, Operation, OperationError, PendingApproval
from opsgate.secrets import SecretError, SecretValue
from opsgate.secrets.sdk import (
    SecretDeleted,
    SecretListing,
    SecretRead,
    SecretWritten,
    delete_secret,
    list_secrets,
    read_secret,
    resume_secret,
    rotate_secret,
    write_secret,
)


def _events(w: SecretWorld, kind: str) -> list[dict[str, object]]:
    return [r.event for r in _all_events(w) if r.type == kind]


def _all_events(w: SecretWorld) -> list[object]:
    import orjson
    from sqlalchemy import select

    from opsgate.audit.log import AuditRecord
    from opsgate.store import schema

    with w.gate.store.read() as conn:
        rows = conn.execute(select(schema.audit_events).order_by(schema.audit_events.c.seq)).all()
    return [
        AuditRecord(r.seq, r.at, r.type, r.actor, orjson.loads(r.body), r.prev_hash, r.hash)
        for r in rows
    ]


def test_write_then_read_every_version(world: SecretWorld) -> None:
    w = world
    first = write_secret(w.gate, w.token, "staging/db", "s3cret-one")
    second = write_secret(w.gate, w.token, "staging/db", SecretValue("s3cret-two"))
    assert isinstance(first, SecretWritten) and first.version == 1
    assert isinstance(second, SecretWritten) and second.version == 2
    latest = read_secret(w.gate, w.token, "staging/db")
    assert isinstance(latest, SecretRead)
    assert (latest.version, latest.value.reveal()) == (2, "s3cret-two")
    old = read_secret(w.gate, w.token, "staging/db", version=1)
    assert isinstance(old, SecretRead) and old.value.reveal() == "s3cret-one"
    if w.backend == "vault":  # under the prefix, as one text value
        assert w.vault_read("opsgate/staging/db") == {"value": "s3cret-two"}


def test_rotate_writes_a_new_random_version_and_returns_no_value(world: SecretWorld) -> None:
    w = world
    write_secret(w.gate, w.token, "staging/api", "initial-value")
    done = rotate_secret(w.gate, w.token, "staging/api", length=40, charset="hex")
    assert isinstance(done, SecretWritten) and done.version == 2
    assert not hasattr(done, "value")
    value = read_secret(w.gate, w.token, "staging/api")
    assert isinstance(value, SecretRead)
    text = value.value.reveal()
    assert len(text) == 40 and set(text) <= set("0123456789abcdef")
    again = rotate_secret(w.gate, w.token, "staging/api")  # defaults: 32 alphanumeric
    assert isinstance(again, SecretWritten) and again.version == 3
    new = read_secret(w.gate, w.token, "staging/api")
    assert isinstance(new, SecretRead)
    assert len(new.value.reveal()) == 32 and new.value.reveal() != text
    assert set(new.value.reveal()) <= set(string.ascii_letters + string.digits)


def test_rotate_of_a_missing_secret_creates_version_one(world: SecretWorld) -> None:
    done = rotate_secret(world.gate, world.token, "staging/new-key", charset="base64url")
    assert isinstance(done, SecretWritten) and done.version == 1


def test_list_shows_names_only_inside_the_covered_prefix(world: SecretWorld) -> None:
    w = world
    for path in ("staging/app/db", "staging/app/api/key", "staging/app2/db", "production/app/db"):
        if path.startswith("production"):
            w.gate.secrets.backend.put(f"secrets/{path}", SecretValue("x"), cas=0, actor="t", now=0)
        else:
            write_secret(w.gate, w.token, path, "x")
    listing = list_secrets(w.gate, w.token, "staging/app")
    assert isinstance(listing, SecretListing)
    assert listing.names == ("api/", "db")
    everything = list_secrets(w.gate, w.token, "staging")
    assert isinstance(everything, SecretListing) and everything.names == ("app/", "app2/")
    assert list_secrets(w.gate, w.token, "staging/nothing-here").names == ()  # type: ignore[union-attr]

    narrow = w.gate.register_agent(
        "narrow-lister",
        capabilities=["list:secrets/staging/app"],
        sponsor="platform-team@company.com",
        trust_score=920,
    )
    token = w.credential(["list:secrets/staging/app"], narrow)
    assert list_secrets(w.gate, token, "staging/app").names == ("api/", "db")  # type: ignore[union-attr]
    for outside in ("staging/app2", "staging", "production/app", "production"):
        with pytest.raises(OperationError) as err:
            list_secrets(w.gate, token, outside)
        assert err.value.code == "operation_denied"


def test_delete_is_soft_and_destroy_removes_every_version(world: SecretWorld) -> None:
    w = world
    write_secret(w.gate, w.token, "staging/db", "v1")
    write_secret(w.gate, w.token, "staging/db", "v2")
    gone = delete_secret(w.gate, w.token, "staging/db")
    assert isinstance(gone, SecretDeleted) and gone.version == 2 and gone.destroyed == 0
    with pytest.raises(SecretError) as err:
        read_secret(w.gate, w.token, "staging/db")
    assert err.value.code == "secret_not_found"
    kept = read_secret(w.gate, w.token, "staging/db", version=1)  # older versions stay
    assert isinstance(kept, SecretRead) and kept.value.reveal() == "v1"
    with pytest.raises(SecretError) as err:  # the latest is already deleted
        delete_secret(w.gate, w.token, "staging/db")
    assert err.value.code == "secret_not_found"
    assert list_secrets(w.gate, w.token, "staging").names == ("db",)  # type: ignore[union-attr]
    again = write_secret(w.gate, w.token, "staging/db", "v3")
    assert isinstance(again, SecretWritten) and again.version == 3

    destroyed = delete_secret(w.gate, w.token, "staging/db", destroy=True)
    assert isinstance(destroyed, SecretDeleted) and destroyed.destroyed == 3
    for version in (None, 1, 3):
        with pytest.raises(SecretError) as err:
            read_secret(w.gate, w.token, "staging/db", version=version)
        assert err.value.code == "secret_not_found"
    assert list_secrets(w.gate, w.token, "staging").names == ()  # type: ignore[union-attr]
    with pytest.raises(SecretError) as err:
        delete_secret(w.gate, w.token, "staging/db", destroy=True)
    assert err.value.code == "secret_not_found"
    fresh = write_secret(w.gate, w.token, "staging/db", "v1-again")
    assert isinstance(fresh, SecretWritten) and fresh.version == 1


def test_delete_is_destructive_and_the_example_policy_refuses_production(
    world: SecretWorld,
) -> None:
    w = world
    w.gate.secrets.backend.put("secrets/production/db", SecretValue("p"), cas=0, actor="t", now=0)
    plan = w.gate.plan(Operation("delete", "secrets/staging/db"))
    assert plan.destructive and plan.environment == "staging"
    with pytest.raises(OperationError) as err:
        delete_secret(w.gate, w.token, "production/db")
    assert err.value.code == "operation_denied"
    assert "no-secret-deletion-by-agents" in err.value.message
    still = read_secret(w.gate, w.token, "production/db")
    assert isinstance(still, SecretRead) and still.value.reveal() == "p"


def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(world: SecretWorld) -> None:
    w = world
    write_secret(w.gate, w.token, "staging/db", "v1")
    write_secret(w.gate, w.token, "staging/db", "v2")  # someone else's change
    with pytest.raises(SecretError) as err:
        write_secret(w.gate, w.token, "staging/db", "mine", expected_version=1)
    assert err.value.code == "secret_conflict"
    with pytest.raises(SecretError) as err:
        rotate_secret(w.gate, w.token, "staging/db", expected_version=1)
    assert err.value.code == "secret_conflict"
    with pytest.raises(SecretError) as err:  # 0: only when it does not exist yet
        write_secret(w.gate, w.token, "staging/db", "mine", expected_version=0)
    assert err.value.code == "secret_conflict"
    latest = read_secret(w.gate, w.token, "staging/db")
    assert isinstance(latest, SecretRead) and (latest.version, latest.value.reveal()) == (2, "v2")
    ok = write_secret(w.gate, w.token, "staging/db", "mine", expected_version=2)
    assert isinstance(ok, SecretWritten) and ok.version == 3
    outcome = _events(w, "operation.outcome")
    assert [e.get("code") for e in outcome if e["outcome"] == "failed"] == ["secret_conflict"] * 3


def test_a_write_between_the_version_read_and_the_write_is_a_conflict(
    world: SecretWorld,
) -> None:
    """The check-and-set itself: the version read before a write is stale by the time
    it is written (a concurrent writer slipped in), so the backend refuses it."""
    w = world
    write_secret(w.gate, w.token, "staging/db", "v1")
    backend = w.gate.secrets.backend
    seen = backend.current_version("secrets/staging/db")
    backend.put("secrets/staging/db", SecretValue("theirs"), cas=seen, actor="other", now=0)
    with pytest.raises(SecretError) as err:
        backend.put("secrets/staging/db", SecretValue("mine"), cas=seen, actor="me", now=0)
    assert err.value.code == "secret_conflict"
    latest = read_secret(w.gate, w.token, "staging/db")
    assert isinstance(latest, SecretRead) and latest.value.reveal() == "theirs"


def test_a_missing_secret_is_not_found(world: SecretWorld) -> None:
    for call in (
        lambda: read_secret(world.gate, world.token, "staging/none"),
        lambda: read_secret(world.gate, world.token, "staging/none", version=3),
        lambda: delete_secret(world.gate, world.token, "staging/none"),
    ):
        with pytest.raises(SecretError) as err:
            call()
        assert err.value.code == "secret_not_found"


@pytest.mark.parametrize(
    ("action", "params", "problem"),
    [
        ("write", {"value": "in-params"}, "is not a param"),
        ("write", {"expected_version": "1"}, "must be an integer"),
        ("read", {"version": 0}, "is too small"),
        ("rotate", {"length": 8}, "is too small"),
        ("rotate", {"length": 100_000}, "is too large"),
        ("rotate", {"charset": "emoji"}, "is not one of the allowed values"),
        ("delete", {"destroy": "yes"}, "must be true or false"),
        ("list", {"recursive": True}, "is not a param"),
    ],
)
def test_bad_params_are_refused_before_anything_runs(
    world: SecretWorld, action: str, params: dict[str, object], problem: str
) -> None:
    secret = SecretValue("v") if action == "write" else None
    op = Operation(action, "secrets/staging/db", params, secret=secret)
    with pytest.raises(OperationError) as err:
        world.gate.execute(world.token, op)
    assert err.value.code == "params_invalid"
    assert problem in err.value.message
    assert _events(world, "operation.refused")[-1]["code"] == "params_invalid"
    assert not _events(world, "operation.attempt")


def test_a_write_needs_its_value_beside_params_and_nothing_else_takes_one(
    world: SecretWorld,
) -> None:
    w = world
    with pytest.raises(OperationError) as err:
        w.gate.execute(w.token, Operation("write", "secrets/staging/db"))
    assert err.value.code == "secret_value_required"
    for action in ("read", "list", "delete", "rotate"):
        with pytest.raises(OperationError) as err:
            w.gate.execute(
                w.token, Operation(action, "secrets/staging/db", secret=SecretValue("x"))
            )
        assert err.value.code == "operation_invalid"
    with pytest.raises(SecretError) as err:
        write_secret(w.gate, w.token, "staging/db", "")
    assert err.value.code == "secret_value_invalid"


@pytest.mark.parametrize(
    "resource",
    [
        "secrets/staging/../production/db",
        "secrets/staging/./db",
        "secrets/staging//db",
        "secrets/staging/db/",
        "secrets//staging/db",
        "secrets/staging/%2e%2e/db",
        "secrets/staging/a%2Fb",
        "secrets/staging/a\\b",
        "secrets/staging/db?version=1",
        "secrets/staging/db#x",
        "secrets/staging/ db",
        "secrets/staging/d\u00e9",
        "/secrets/staging/db",
    ],
)
def test_paths_outside_the_grammar_never_reach_a_backend(world: SecretWorld, resource: str) -> None:
    for action in ("read", "list", "delete"):
        with pytest.raises(CapabilityError) as err:
            world.gate.execute(world.token, Operation(action, resource))
        assert err.value.code == "capability_malformed"
    assert not _events(world, "operation.attempt")


def test_a_path_must_name_an_environment_and_a_secret(world: SecretWorld) -> None:
    for action, resource in [("read", "secrets/staging"), ("read", "secrets"), ("list", "secrets")]:
        with pytest.raises(SecretError) as err:
            world.gate.execute(world.token, Operation(action, resource))
        assert err.value.code == "secret_path_invalid", resource


def test_out_of_scope_and_ungranted_paths_are_denied(world: SecretWorld) -> None:
    w = world
    write_secret(w.gate, w.token, "staging/db", "v1")
    staging_only = w.credential(["read:secrets/staging"])
    assert read_secret(w.gate, staging_only, "staging/db").value.reveal() == "v1"  # type: ignore[union-attr]
    for path in ("production/db", "staging-eu/db"):
        with pytest.raises(OperationError) as err:
            read_secret(w.gate, staging_only, path)
        assert err.value.code == "operation_denied"
    with pytest.raises(OperationError) as err:  # read scope does not write
        write_secret(w.gate, staging_only, "staging/db", "v2")
    assert err.value.code == "operation_denied"
    # Other namespaces are not routed to the secret executors at all: one with no
    # executor is executor_missing, and monitoring has its own (and needs its grant).
    with pytest.raises(OperationError) as err:
        w.gate.execute(w.token, Operation("read", "database/orders"))
    assert err.value.code == "executor_missing"
    with pytest.raises(OperationError) as err:
        w.gate.execute(w.token, Operation("read", "monitoring/staging/app"))
    assert err.value.code == "operation_denied"
    assert type(w.gate.registered_executor("read", "monitoring")).__name__ == "MonitorExecutor"


def test_production_write_waits_for_approval_bound_to_the_exact_value(world: SecretWorld) -> None:
    w = world
    pending = write_secret(w.gate, w.token, "production/db", "the-approved-value")
    assert isinstance(pending, PendingApproval)
    request = w.gate.approvals.get(pending.approval_id)
    assert "value" not in request.operation["params"]
    binding = request.plan["content"]["value_binding"]
    assert binding.startswith("hmac-sha256:")
    w.approve(pending.approval_id)

    with pytest.raises(ApprovalError) as err:  # another value: not what was approved
        resume_secret(w.gate, pending.approval_id, w.token, value="a-different-value")
    assert err.value.code == "digest_mismatch"
    with pytest.raises(OperationError) as err:  # the value is not kept by the gate
        resume_secret(w.gate, pending.approval_id, w.token)
    assert err.value.code == "secret_value_required"
    done = resume_secret(w.gate, pending.approval_id, w.token, value="the-approved-value")
    assert isinstance(done, SecretWritten) and done.version == 1
    assert w.gate.approvals.get(pending.approval_id).status == "consumed"
    value = read_secret(w.gate, w.token, "production/db")
    assert isinstance(value, SecretRead) and value.value.reveal() == "the-approved-value"
    with pytest.raises(ApprovalError) as err:  # once
        resume_secret(w.gate, pending.approval_id, w.token, value="the-approved-value")
    assert err.value.code == "approval_consumed"


def test_a_remote_agent_resumes_an_approved_secret_write_with_its_value(
    world: SecretWorld,
) -> None:
    """Over HTTP the value is sent again with the resume (the gate never kept it), bound
    by the proof and by the approval's digest: another value is digest_mismatch, none is
    secret_value_required, the approved one is written, once."""
    from fastapi.testclient import TestClient
    from secret_helpers import SECRET_SCOPE

    from opsgate.client import RemoteGate, RemotePendingApproval
    from opsgate.config import ServerConfig
    from opsgate.server import create_app

    w = world
    base = "http://testserver"
    client = TestClient(create_app(w.gate, ServerConfig(external_url=base)))
    key = w.gate.agents.private_key(w.agent.did)
    with RemoteGate(base, key, transport=client._transport) as remote:
        cred = remote.credential(SECRET_SCOPE)
        write = Operation(
            "write", "secrets/production/remote", secret=SecretValue("remote-approved")
        )
        pending = remote.execute(cred, write)
        assert isinstance(pending, RemotePendingApproval)
        approval_id = pending.approval_id
        w.approve(approval_id)
        with pytest.raises(ApprovalError) as err:
            remote.resume(approval_id, cred, secret=SecretValue("another-value"))
        assert err.value.code == "digest_mismatch" and "another-value" not in str(err.value)
        with pytest.raises(OperationError) as missing:
            remote.resume(approval_id, cred)
        assert missing.value.code == "secret_value_required"
        done = remote.resume(approval_id, cred, secret=SecretValue("remote-approved"))
        assert done.status == "succeeded"  # type: ignore[union-attr]
        with pytest.raises(ApprovalError) as again:
            remote.resume(approval_id, cred, secret=SecretValue("remote-approved"))
        assert again.value.code == "approval_consumed"
    value = read_secret(w.gate, w.token, "production/remote")
    assert isinstance(value, SecretRead) and value.value.reveal() == "remote-approved"


def test_production_rotation_waits_for_approval(world: SecretWorld) -> None:
    w = world
    pending = rotate_secret(w.gate, w.token, "production/api", length=24)
    assert isinstance(pending, PendingApproval)
    w.approve(pending.approval_id)
    with pytest.raises(OperationError) as err:  # a rotation takes no value
        w.gate.resume(pending.approval_id, w.token, secret=SecretValue("x"))
    assert err.value.code == "operation_invalid"
    done = resume_secret(w.gate, pending.approval_id, w.token)
    assert isinstance(done, SecretWritten) and done.version == 1
    assert len(read_secret(w.gate, w.token, "production/api").value.reveal()) == 24  # type: ignore[union-attr]


def test_the_value_binding_is_keyed_not_a_plain_hash(world: SecretWorld) -> None:
    import hashlib

    w = world
    plan = w.gate.plan(Operation("write", "secrets/production/db", secret=SecretValue("pw")))
    binding = plan.content["value_binding"]
    assert hashlib.sha256(b"pw").hexdigest() not in binding
    other = w.gate.plan(Operation("write", "secrets/production/db2", secret=SecretValue("pw")))
    assert other.content["value_binding"] != binding  # bound to the path too
    same = w.gate.plan(Operation("write", "secrets/production/db", secret=SecretValue("pw")))
    assert same.digest == plan.digest  # deterministic: a resumed write can match it


def test_every_outcome_is_audited_with_path_and_version_only(world: SecretWorld) -> None:
    w = world
    write_secret(w.gate, w.token, "staging/db", "audited-value-123")
    read_secret(w.gate, w.token, "staging/db")
    outcomes = _events(w, "operation.outcome")
    assert [o["summary"] for o in outcomes] == [
        "wrote secrets/staging/db version 1",
        "read secrets/staging/db version 1",
    ]
    assert all(o["capability"].startswith(("write:secrets/", "read:secrets/")) for o in outcomes)


# -- limits: a value's size, a version's range -------------------------------------------------


@pytest.fixture(params=["embedded", "vault"])
def limited(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretWorld]:
    """A gate whose secrets.max_value_bytes is 64, on each backend."""
    monkeypatch.delenv("OPSGATE_MASTER_KEY", raising=False)
    vault = request.getfixturevalue("vault") if request.param == "vault" else None
    w = open_world(
        tmp_path / "state", request.param, vault=vault, monkeypatch=monkeypatch, max_value_bytes=64
    )
    try:
        yield w
    finally:
        w.gate.close()
        if w.root is not None and w.mount is not None:
            w.root.sys.disable_secrets_engine(w.mount)


def test_a_rotation_is_held_to_max_value_bytes_as_a_write_is(limited: SecretWorld) -> None:
    """secrets.max_value_bytes bounds every stored value: a rotation longer than it is
    refused at plan time with the write's code, and nothing is stored."""
    w = limited
    with pytest.raises(SecretError) as err:
        write_secret(w.gate, w.token, "staging/db", "x" * 65)
    assert err.value.code == "secret_value_invalid"
    for length in (65, 4096):
        with pytest.raises(SecretError) as err:
            rotate_secret(w.gate, w.token, "staging/db", length=length)
        assert err.value.code == "secret_value_invalid"
        assert f"to {length} characters" in err.value.message
        assert _events(w, "operation.refused")[-1]["code"] == "secret_value_invalid"
    assert not _events(w, "operation.attempt")  # nothing ran, nothing was generated
    with pytest.raises(SecretError) as err:
        read_secret(w.gate, w.token, "staging/db")
    assert err.value.code == "secret_not_found"
    done = rotate_secret(w.gate, w.token, "staging/db", length=64, charset="printable")
    assert isinstance(done, SecretWritten) and done.version == 1
    read = read_secret(w.gate, w.token, "staging/db")
    assert isinstance(read, SecretRead) and len(read.value.reveal().encode()) == 64


#: The largest version any backend holds (the embedded one's column on PostgreSQL).
MAX_VERSION = 2**31 - 1
VERSIONED = [("read", "version"), ("write", "expected_version"), ("rotate", "expected_version")]


@pytest.mark.parametrize("value", [MAX_VERSION + 1, 2**63 - 1, 2**63, 2**64 - 1], ids=str)
@pytest.mark.parametrize(("action", "name"), VERSIONED)
def test_a_version_no_backend_can_hold_is_params_invalid_and_changes_nothing(
    world: SecretWorld, action: str, name: str, value: int
) -> None:
    """A version is stored in a database column (or a Go int): one past what every
    backend holds is refused as params, typed, before the executor runs, never a
    driver's OverflowError audited as an untyped failure."""
    w = world
    write_secret(w.gate, w.token, "staging/db", "kept-value")
    attempts = len(_events(w, "operation.attempt"))
    secret = SecretValue("new-value") if action == "write" else None
    op = Operation(action, "secrets/staging/db", {name: value}, secret=secret)
    with pytest.raises(OperationError) as err:
        w.gate.execute(w.token, op)
    assert err.value.code == "params_invalid"
    assert err.value.message == f"param {name!r} of {action!r} is too large"
    assert _events(w, "operation.refused")[-1]["code"] == "params_invalid"
    assert len(_events(w, "operation.attempt")) == attempts
    now = read_secret(w.gate, w.token, "staging/db")
    assert isinstance(now, SecretRead)
    assert (now.version, now.value.reveal()) == (1, "kept-value")


def test_the_largest_version_is_a_version_on_every_backend(world: SecretWorld) -> None:
    w = world
    write_secret(w.gate, w.token, "staging/db", "kept-value")
    for call, code in (
        (lambda: read_secret(w.gate, w.token, "staging/db", version=MAX_VERSION), "not_found"),
        (
            lambda: write_secret(w.gate, w.token, "staging/db", "v2", expected_version=MAX_VERSION),
            "conflict",
        ),
        (
            lambda: rotate_secret(w.gate, w.token, "staging/db", expected_version=MAX_VERSION),
            "conflict",
        ),
    ):
        with pytest.raises(SecretError) as err:
            call()
        assert err.value.code == f"secret_{code}"
        assert _events(w, "operation.outcome")[-1]["code"] == f"secret_{code}"


@pytest.mark.parametrize("version", [MAX_VERSION, MAX_VERSION + 1, 2**63 - 1], ids=str)
def test_a_version_beyond_the_postgresql_column_is_refused_before_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, version: int
) -> None:
    """The embedded backend on PostgreSQL keeps versions in a 32-bit INTEGER column:
    a read of a larger one was the driver's DataError, audited untyped."""
    monkeypatch.delenv("OPSGATE_MASTER_KEY", raising=False)
    w = open_world(tmp_path / "state", "embedded", monkeypatch=monkeypatch, database_url=pg_url)
    try:
        write_secret(w.gate, w.token, "staging/db", "kept-value")
        with pytest.raises((SecretError, OperationError)) as err:
            read_secret(w.gate, w.token, "staging/db", version=version)
        expected = "secret_not_found" if version == MAX_VERSION else "params_invalid"
        assert err.value.code == expected
        failed = [o for o in _events(w, "operation.outcome") if o["outcome"] == "failed"]
        assert all(o.get("code") for o in failed)  # none untyped
    finally:
        w.gate.close()
