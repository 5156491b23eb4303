"""Gate keys are anchored outside the database, on SQLite and on the real PostgreSQL.

The attacker here can read and write every table of the state database but holds
none of the state dir's files (the pin, the private keys). Whatever rows they
write — a key, a rotation event re-chained onto the log, a checkpoint, a root
agent, a token signed with their key — must be refused by the gate and named by
`audit verify`. Rotations are signed by the key they replace, so rows cannot be
re-ordered, re-timed, swapped or replayed into a chain either.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, update

import opsgate
from opsgate.audit.log import CHECKPOINT_TYPE
from opsgate.credentials import jws
from opsgate.credentials.keyring import PIN_FILE, read_pin, rotation_payload
from opsgate.identity import keys
from opsgate.identity.records import RECORD_VERSION, record_bytes
from opsgate.store import schema

events = schema.audit_events


# -- what a database writer without the key files can do ----------------------------------------


class Intruder:
    """Writes rows straight into the gate's database, with a key of their own."""

    def __init__(self, gate: opsgate.Gate) -> None:
        self.gate = gate
        self.key = Ed25519PrivateKey.generate()
        self.raw = keys.public_bytes(self.key.public_key())
        self.kid = keys.jwk_thumbprint(self.raw)
        self.x = keys.b64url(self.raw)

    def head(self) -> tuple[int, str]:
        with self.gate.store.read() as conn:
            row = conn.execute(select(schema.audit_head.c.seq, schema.audit_head.c.hash)).one()
        return int(row[0]), str(row[1])

    def add_key_row(self, **extra: Any) -> None:
        """Only the columns every schema version has, unless told otherwise."""
        with self.gate.store.write() as conn:
            conn.execute(
                insert(schema.gate_keys).values(
                    kid=self.kid,
                    public_key=self.x,
                    created_at=time.time(),
                    retired_at=None,
                    **extra,
                )
            )
            conn.execute(
                insert(schema.state_changes).values(
                    id=10_000_000, kind="key", subject=self.kid, at=time.time()
                )
            )
            conn.execute(
                update(schema.counters)
                .where(schema.counters.c.name == "state_changes")
                .values(value=10_000_000)
            )

    def append_event(self, event_type: str, **fields: Any) -> int:
        """An event with a valid hash, chained onto the head (and the head moved)."""
        seq, prev = self.head()
        seq += 1
        at = time.time()
        body = orjson.dumps(
            {"type": event_type, "actor": "gate", "seq": seq, "at": at, **fields},
            option=orjson.OPT_SORT_KEYS,
        )
        digest = hashlib.sha256(prev.encode("ascii") + body).hexdigest()
        with self.gate.store.write() as conn:
            conn.execute(
                insert(events).values(
                    seq=seq,
                    at=at,
                    type=event_type,
                    actor="gate",
                    body=body.decode(),
                    prev_hash=prev,
                    hash=digest,
                )
            )
            conn.execute(update(schema.audit_head).values(seq=seq, hash=digest))
        return seq

    def append_rotation(self) -> int:
        current = self.gate.keyring.signer()[0]
        fake = keys.b64url(self.key.sign(b"not the replaced key's signature"))
        return self.append_event(
            "gate.key_rotated", kid=self.kid, retired=current, public_key=self.x, endorsement=fake
        )

    def add_checkpoint(self) -> int:
        seq, digest = self.head()
        at = time.time()
        payload = orjson.dumps(
            {
                "type": CHECKPOINT_TYPE,
                "gate": self.gate.gate_id,
                "seq": seq,
                "hash": digest,
                "at": at,
                "kid": self.kid,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        with self.gate.store.write() as conn:
            conn.execute(
                insert(schema.audit_checkpoints).values(
                    seq=seq,
                    hash=digest,
                    at=at,
                    kid=self.kid,
                    signature=keys.b64url(self.key.sign(payload)),
                )
            )
        return seq

    def add_root_agent(self, name: str = "intruder") -> tuple[str, Ed25519PrivateKey]:
        return _root_row(self.gate, self.key, self.kid, time.time(), name=name)

    def mint(self, did: str) -> str:
        t = round(time.time(), 3)
        claims = {
            "iss": self.gate.gate_id,
            "sub": did,
            "aud": self.gate.config.audience,
            "iat": t,
            "nbf": t,
            "exp": t + 600,
            "jti": keys.b64url(b"\x01" * 16),
            "scope": ["deploy:production"],
            "cnf": {"jkt": keys.jwk_thumbprint(keys.public_key_from_did(did))},
        }
        return jws.encode(claims, self.key, self.kid)


@pytest.fixture
def gate(tmp_path: Path, database_url: str | None) -> Any:
    g = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    sup = g.register_agent("sup", ["deploy:staging"], sponsor="ops@company.com", trust_score=900)
    sup.delegate("child", ["deploy:staging"])
    yield g
    g.close()


def _refused(gate: opsgate.Gate, token: str) -> str:
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.credential_manager.verify(token)
    with pytest.raises(opsgate.InvalidCredential):
        gate.authorize(token, "deploy:production/app-web")
    return info.value.code


def test_a_key_written_into_the_database_creates_no_credential_agent_or_checkpoint(
    gate: opsgate.Gate, database_url: str | None
) -> None:
    """The whole attack: key row, re-chained rotation event, checkpoint, root agent, token."""
    intruder = Intruder(gate)
    intruder.add_key_row()
    rotation_seq = intruder.append_rotation()
    did, _ = intruder.add_root_agent()
    checkpoint_seq = intruder.add_checkpoint()
    token = intruder.mint(did)

    gate.state.refresh(force=True)  # the running gate sees the change feed
    replica = opsgate.Gate.open(gate.state_dir, database_url=database_url)  # a fresh process
    try:
        for g in (gate, replica):
            assert intruder.kid not in {k["kid"] for k in g.jwks()["keys"]}
            assert g.keyring.get(intruder.kid) is None
            assert _refused(g, token) == "unknown_kid"
            forged = g.agents.get("intruder").to_dict()
            assert forged["chain_valid"] is False, forged
            with pytest.raises(opsgate.CredentialError) as info:
                g.credential_manager.issue_credential(did, ["deploy:production"])
            assert info.value.code == "chain_invalid"
            # the gate still signs with its own key, which the intruder's row did not displace
            assert g.keyring.signer()[0] == g.pin.root_kid

        report = replica.audit.verify()
        assert not report.ok
        assert (report.problem, report.first_bad_seq) == ("replacement", checkpoint_seq), report
        assert "pinned" in report.reason

        # Each piece alone is named too: the checkpoint gone, the rotation event ...
        with gate.store.write() as conn:
            conn.execute(
                delete(schema.audit_checkpoints).where(
                    schema.audit_checkpoints.c.kid == intruder.kid
                )
            )
        report = replica.audit.verify()
        assert (report.problem, report.first_bad_seq) == ("untrusted_key", rotation_seq), report

        # ... and with the event gone as well, the key row and the agent
        with gate.store.write() as conn:
            conn.execute(delete(events).where(events.c.seq >= rotation_seq))
            prev = conn.execute(select(events.c.hash).where(events.c.seq == rotation_seq - 1))
            conn.execute(update(schema.audit_head).values(seq=rotation_seq - 1, hash=prev.scalar()))
        report = replica.audit.verify()
        assert not report.ok and report.first_bad_seq is None, report
        found = {(f.problem, f.subject) for f in report.findings}
        assert found == {("untrusted_key", intruder.kid), ("untrusted_agent", did)}, found
        assert report.problem == "untrusted_key"
    finally:
        replica.close()


def test_an_old_token_of_the_intruders_key_is_refused_on_a_gate_opened_earlier(
    gate: opsgate.Gate,
) -> None:
    """Even when the row claims to succeed the current key (prev_kid set)."""
    intruder = Intruder(gate)
    current = gate.keyring.signer()[0]
    self_signed = keys.b64url(
        intruder.key.sign(
            rotation_payload(gate.gate_id, intruder.kid, intruder.x, current, time.time())
        )
    )
    intruder.add_key_row(prev_kid=current, endorsement=self_signed)
    did, _ = intruder.add_root_agent()
    gate.state.refresh(force=True)
    assert _refused(gate, intruder.mint(did)) == "unknown_kid"
    assert gate.keyring.signer()[0] == current  # not "rotated" to the intruder's key
    report = gate.audit.verify()
    assert not report.ok and report.problem == "untrusted_key", report
    assert {f.subject for f in report.findings} >= {intruder.kid, did}


# -- rotation chain attacks --------------------------------------------------------------------


def _rotated(gate: opsgate.Gate, times: int = 2) -> list[str]:
    kids = [gate.keyring.signer()[0]]
    for _ in range(times):
        kids.append(gate.rotate_keys())
    return kids


def test_rotation_is_endorsed_by_the_replaced_key_and_its_private_file_is_deleted(
    gate: opsgate.Gate,
) -> None:
    agent = gate.agents.get("child")
    before = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
    k0, k1, k2 = _rotated(gate)
    chain = gate.keyring.chain.keys
    assert [k.kid for k in chain] == [k0, k1, k2]
    assert chain[0].kid == gate.pin.root_kid == read_pin(gate.state_dir).root_kid  # type: ignore[union-attr]
    for prev, key in itertools.pairwise(chain):
        payload = rotation_payload(
            gate.gate_id, key.kid, key.x, prev.kid, key.created_at, roots=True
        )
        assert key.endorsement is not None and key.roots_resigned
        assert keys.verify_signature(prev.raw, keys.b64url_decode(key.endorsement), payload)
        assert prev.retired_at == key.created_at
    held = {p.stem for p in (gate.state_dir / "gate-keys").iterdir()}
    assert held == {k2}  # retired keys can neither sign again nor be stolen later
    assert gate.credential_manager.verify(before.token).jti == before.jti  # still published
    assert gate.audit.verify().ok


@pytest.mark.parametrize(
    "tamper",
    ["delete-newest-row", "retime-rotation", "swap-public-key", "drop-endorsement"],
)
def test_a_rotation_row_changed_in_the_database_is_refused(
    gate: opsgate.Gate, database_url: str | None, tamper: str
) -> None:
    _k0, k1, k2 = _rotated(gate)
    t = schema.gate_keys
    with gate.store.write() as conn:
        if tamper == "delete-newest-row":  # roll the chain back to k1
            conn.execute(delete(t).where(t.c.kid == k2))
        elif tamper == "retime-rotation":  # keep k0 "current" for longer
            conn.execute(update(t).where(t.c.kid == k1).values(created_at=time.time() + 86_400))
        elif tamper == "swap-public-key":
            other = keys.b64url(keys.public_bytes(Ed25519PrivateKey.generate().public_key()))
            conn.execute(update(t).where(t.c.kid == k1).values(public_key=other))
        else:
            conn.execute(update(t).where(t.c.kid == k1).values(endorsement=None))
    # A running gate never rolls back its view of the chain ...
    gate.keyring.reload()
    assert gate.keyring.signer()[0] == k2
    # ... a fresh one refuses to start rather than sign with a key it cannot trust ...
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(gate.state_dir, database_url=database_url)
    assert info.value.code == "gate_key_missing"
    # ... and verify names the rotation the key table no longer holds
    report = gate.audit.verify()
    assert not report.ok and report.problem == "deletion", report
    rotated = [r.seq for r in gate.audit.events() if r.type == "gate.key_rotated"]
    expected = rotated[-1] if tamper == "delete-newest-row" else rotated[0]
    assert report.first_bad_seq == expected, report


def test_a_rotation_replayed_from_another_gate_does_not_chain(
    gate: opsgate.Gate, tmp_path: Path, database_url: str | None
) -> None:
    """Its endorsement names the other gate and the other gate's key."""
    with opsgate.Gate.open(tmp_path / "other") as other:
        other.rotate_keys()
        with other.store.read() as conn:
            row = conn.execute(
                select(schema.gate_keys).where(schema.gate_keys.c.prev_kid.is_not(None))
            ).one()
    current = gate.keyring.signer()[0]
    with gate.store.write() as conn:
        conn.execute(insert(schema.gate_keys).values({**row._mapping, "prev_kid": current}))
    gate.keyring.reload()
    assert gate.keyring.signer()[0] == current and gate.keyring.get(row.kid) is None
    with opsgate.Gate.open(gate.state_dir, database_url=database_url) as fresh:
        assert fresh.keyring.get(row.kid) is None and fresh.keyring.signer()[0] == current
    report = gate.audit.verify()
    assert not report.ok and report.problem == "untrusted_key"
    assert [f.subject for f in report.findings] == [row.kid]


def test_a_retired_key_file_left_behind_is_deleted_and_cannot_roll_the_gate_back(
    gate: opsgate.Gate, database_url: str | None
) -> None:
    """A rotation that committed but never deleted the replaced key's file (the process
    ended first, or the reload after the commit failed) leaves no signing key behind:
    the next open deletes it, so deleting the newest rotation row still cannot make a
    fresh gate sign with the retired key."""
    k0 = gate.keyring.signer()[0]
    key_dir = gate.state_dir / "gate-keys"
    pem = (key_dir / f"{k0}.pem").read_bytes()
    real_reload = gate.keyring.reload

    def failing_reload() -> None:
        raise opsgate.StoreError("the database went away after the commit")

    gate.keyring.reload = failing_reload  # type: ignore[method-assign]
    with pytest.raises(opsgate.StoreError):
        gate.rotate_keys()
    gate.keyring.reload = real_reload  # type: ignore[method-assign]
    assert not (key_dir / f"{k0}.pem").exists()  # deleted once the rotation committed
    k1 = [k.kid for k in gate.keyring.load_chain().keys][-1]
    assert k1 != k0
    # A file of the retired key that survived anyway (a crash right after the commit):
    fd = os.open(key_dir / f"{k0}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, pem)
    os.close(fd)
    opsgate.Gate.open(gate.state_dir, database_url=database_url).close()
    assert {p.stem for p in key_dir.iterdir()} == {k1}
    t = schema.gate_keys
    with gate.store.write() as conn:  # roll the chain back to k0
        conn.execute(delete(t).where(t.c.kid == k1))
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(gate.state_dir, database_url=database_url)
    assert info.value.code == "gate_key_missing"


def test_an_agent_row_whose_did_names_a_path_never_exports_a_key_file(
    gate: opsgate.Gate, tmp_path: Path
) -> None:
    """An agent's key file is named after its did. A row written into the database
    with a did such as `did:key:../gate-keys/<kid>` (64 characters, what PostgreSQL's
    did column holds: any state dir, either store) made the operator's routine
    `agents export-key` copy the gate's own signing key out to the file handed to the
    "agent"."""
    kid = gate.keyring.signer()[0]
    _no_key_export_for(gate, f"did:key:../gate-keys/{kid}", kid, tmp_path)


def test_an_agent_row_whose_did_is_an_absolute_path_never_exports_a_key_file(
    tmp_path: Path,
) -> None:
    """The same with an absolute path (too long for PostgreSQL's column: SQLite only)."""
    with opsgate.Gate.open(tmp_path / "state") as gate:
        kid = gate.keyring.signer()[0]
        did = f"did:key:{gate.state_dir / 'gate-keys' / kid}"
        _no_key_export_for(gate, did, kid, tmp_path)


def _no_key_export_for(gate: opsgate.Gate, did: str, kid: str, tmp_path: Path) -> None:
    _insert_root(gate, did, "deploy-agent-2", "{}", "x", f"gate:{kid}", time.time())
    out = tmp_path / "deploy-agent-2.pem"
    with pytest.raises(opsgate.AgentError) as info:
        gate.agents.export_key("deploy-agent-2", out, by="alice")
    assert info.value.code == "bad_did"
    assert not out.exists()
    with pytest.raises(opsgate.AgentError):
        gate.agents.private_key(did)


def test_a_key_file_that_is_not_the_agents_key_is_refused(gate: opsgate.Gate) -> None:
    """Whatever sits at an agent's key path, only the key of its own did is used."""
    child = gate.agents.get("child")
    sup = gate.agents.get("sup")
    path = gate.state_dir / "agent-keys" / f"{child.did.rsplit(':', 1)[-1]}.pem"
    path.unlink()
    path.write_bytes(
        (gate.state_dir / "agent-keys" / f"{sup.did.rsplit(':', 1)[-1]}.pem").read_bytes()
    )
    path.chmod(0o600)
    with pytest.raises(opsgate.ConfigError) as info:
        gate.agents.private_key(child.did)
    assert info.value.code == "key_invalid"


def _insert_root(
    gate: opsgate.Gate,
    did: str,
    name: str,
    record: str,
    signature: str,
    signer: str,
    at: float,
    *,
    trust: int = 900,
) -> None:
    """A root agent's row written straight into the database (what a database writer
    could do), with the record and signature given."""
    with gate.store.write() as conn:
        conn.execute(
            insert(schema.agents).values(
                did=did,
                name=name,
                sponsor="ops@company.com",
                parent_did=None,
                depth=0,
                created_at=at,
                expires_at=None,
                status="active",
                trust_score=trust,
                initial_trust=trust,
                record=record,
                signature=signature,
                signer=signer,
                updated_at=at,
            )
        )


def _root_row(
    gate: opsgate.Gate, key: Ed25519PrivateKey, kid: str, at: float, *, name: str = "ghost"
) -> tuple[str, Ed25519PrivateKey]:
    """A root agent's row signed with `key` (as gate key `kid`), dated `at`: its did and
    its own key."""
    agent_key = Ed25519PrivateKey.generate()
    did = keys.did_from_public_key(agent_key.public_key())
    record = {
        "v": RECORD_VERSION,
        "kind": "registration",
        "gate": gate.gate_id,
        "did": did,
        "name": name,
        "sponsor": "ops@company.com",
        "capabilities": ["deploy:production"],
        "depth": 0,
        "issued_at": at,
        "expires_at": None,
    }
    body = record_bytes(record)
    signature = keys.b64url(key.sign(body))
    _insert_root(gate, did, name, body.decode(), signature, f"gate:{kid}", at, trust=1000)
    return did, agent_key


def test_a_retired_key_registers_no_root_agent_after_its_rotation(
    gate: opsgate.Gate, database_url: str | None
) -> None:
    """Rotation is what follows a leaked gate key: the copy (a stolen backup of the
    state dir) must not keep the power to register root agents, which the database's
    writer could then add with any grants, dated before the rotation."""
    k0, stolen = gate.keyring.signer()
    sup, child = gate.agents.get("sup"), gate.agents.get("child")
    rotated_at = time.time()
    k1 = gate.rotate_keys(now=rotated_at)
    # Every root agent that was valid is signed again with the new key: it keeps working.
    for agent in (sup, child):
        cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
        assert gate.credential_manager.verify(cred.token).sub == agent.did
    assert gate.audit.verify().ok
    ghost, _ = _root_row(gate, stolen, k0, rotated_at - 60)
    time.sleep(gate.state.max_age)  # past the grace of a view a moment old
    with opsgate.Gate.open(gate.state_dir, database_url=database_url) as fresh:
        assert fresh.keyring.signer()[0] == k1
        with pytest.raises(opsgate.OpsgateError) as info:
            fresh.credential_manager.issue_credential(ghost, ["deploy:production"])
        assert info.value.code == "chain_invalid"
        for agent in (sup, child):  # the genuine ones still verify on a fresh view
            fresh.credential_manager.issue_credential(agent.did, ["deploy:staging"])
        report = fresh.audit.verify()
    assert not report.ok and report.problem == "untrusted_agent", report
    assert [f.subject for f in report.findings] == [ghost]


def test_a_root_that_counts_only_by_the_grace_of_a_retired_key_is_not_kept(
    gate: opsgate.Gate,
) -> None:
    """A record signed by the key just retired still counts for a moment (a replica's
    view or snapshot a moment old), but only while that moment lasts: it is read again
    on each use, never cached as valid."""
    k0, stolen = gate.keyring.signer()
    gate.keyring.root_grace = 3600.0  # the moment, made long enough to act in
    gate.rotate_keys()
    ghost, _ = _root_row(gate, stolen, k0, time.time())
    cred = gate.credential_manager.issue_credential(ghost, ["deploy:production"])
    gate.keyring.root_grace = 0.0  # the moment has passed
    with pytest.raises(opsgate.InvalidCredential) as info:
        gate.credential_manager.verify(cred.token)
    assert info.value.code == "chain_invalid"


def test_a_registration_that_meets_a_rotation_is_refused_then_signed_with_the_new_key(
    tmp_path: Path, database_url: str | None
) -> None:
    a = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    b = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    try:
        k1 = a.rotate_keys()
        with pytest.raises(opsgate.ConfigError) as info:  # b still signs with the old key
            b.register_agent("late", ["deploy:staging"], sponsor="ops@company.com")
        assert info.value.code == "key_rotated_concurrently"
        late = b.register_agent("late", ["deploy:staging"], sponsor="ops@company.com")
        with a.store.read() as conn:
            signer = conn.execute(
                select(schema.agents.c.signer).where(schema.agents.c.did == late.did)
            ).scalar_one()
        assert signer == f"gate:{k1}"
        a.credential_manager.issue_credential(late.did, ["deploy:staging"])
        assert a.audit.verify().ok
    finally:
        a.close()
        b.close()


def test_roots_signed_before_a_rotation_that_did_not_sign_them_again_still_count(
    gate: opsgate.Gate, database_url: str | None
) -> None:
    """A chain rotated by an earlier version (its endorsement says nothing of root
    agents, none was signed again): the roots its retired keys signed keep working."""
    k0, private0 = gate.keyring.signer()
    new = Ed25519PrivateKey.generate()
    raw = keys.public_bytes(new.public_key())
    k1, x, at = keys.jwk_thumbprint(raw), keys.b64url(raw), time.time()
    endorsement = keys.b64url(private0.sign(rotation_payload(gate.gate_id, k1, x, k0, at)))
    keys.write_private_key(gate.state_dir / "gate-keys" / f"{k1}.pem", new)
    with gate.store.write() as conn:
        conn.execute(
            insert(schema.gate_keys).values(
                kid=k1, public_key=x, created_at=at, prev_kid=k0, endorsement=endorsement
            )
        )
    time.sleep(gate.state.max_age)  # past the grace of a view a moment old
    with opsgate.Gate.open(gate.state_dir, database_url=database_url) as fresh:
        assert fresh.keyring.signer()[0] == k1
        assert not fresh.keyring.chain.keys[-1].roots_resigned
        for name in ("sup", "child"):
            agent = fresh.agents.get(name)
            fresh.credential_manager.issue_credential(agent.did, ["deploy:staging"])


def test_two_replicas_rotating_at_once_never_fork_the_chain(
    tmp_path: Path, database_url: str | None
) -> None:
    a = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    b = opsgate.Gate.open(tmp_path / "state", database_url=database_url)
    try:
        first = a.rotate_keys()
        with pytest.raises(opsgate.ConfigError) as info:  # b still signs with the old tip
            b.rotate_keys()
        assert info.value.code == "key_rotated_concurrently"
        assert {p.stem for p in (tmp_path / "state" / "gate-keys").iterdir()} == {first}
        b.state.refresh(force=True)
        second = b.rotate_keys()
        assert [k.kid for k in a.keyring.load_chain().keys][-2:] == [first, second]
        assert a.audit.verify().ok
    finally:
        a.close()
        b.close()


def test_the_gate_id_in_the_database_is_checked_against_the_pin(
    gate: opsgate.Gate, database_url: str | None
) -> None:
    with gate.store.write() as conn:
        conn.execute(
            update(schema.gate_meta)
            .where(schema.gate_meta.c.key == "gate_id")
            .values(value="opsgate:00000000-0000-0000-0000-000000000000")
        )
    report = gate.audit.verify()
    assert not report.ok and report.problem == "gate_mismatch", report
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(gate.state_dir, database_url=database_url)
    assert info.value.code == "gate_mismatch"


# -- the pin and the JWKS ------------------------------------------------------------------------


def test_the_pin_names_the_gate_and_its_first_key(gate: opsgate.Gate) -> None:
    pin = read_pin(gate.state_dir)
    assert pin is not None and pin.gate_id == gate.gate_id
    assert pin.root_kid == gate.keyring.chain.keys[0].kid
    assert (gate.state_dir / PIN_FILE).stat().st_mode & 0o077 == 0
    created = [r for r in gate.audit.events() if r.type == "gate.key_created"]
    assert len(created) == 1 and created[0].event["kid"] == pin.root_kid


def test_a_damaged_pin_is_an_error_not_a_new_gate(gate: opsgate.Gate) -> None:
    (gate.state_dir / PIN_FILE).write_text('{"type": "opsgate-gate-pin", "gate_id": 1}')
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(gate.state_dir)
    assert info.value.code == "pin_invalid"


def test_the_jwks_alone_verifies_a_credential_with_pyjwt(gate: opsgate.Gate) -> None:
    import jwt

    agent = gate.agents.get("child")
    cred = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"])
    gate.rotate_keys()  # the set holds two keys: the kid picks the right one
    document = orjson.loads(orjson.dumps(gate.jwks()))  # as published, JSON only
    keyset = jwt.PyJWKSet.from_dict(document)
    header = jwt.get_unverified_header(cred.token)
    claims = jwt.decode(
        cred.token,
        keyset[header["kid"]].key,
        algorithms=["EdDSA"],
        issuer=document["issuer"],
        audience=document["audience"],
    )
    assert claims["sub"] == agent.did and claims["iss"] == gate.gate_id


def test_cutting_a_rotation_off_the_log_is_a_truncation(gate: opsgate.Gate) -> None:
    """The rotation event was the newest: the log is cut back before it, checkpoints and
    the state dir's copy gone too. The key table still chains the new key: events were
    removed."""
    gate.rotate_keys()
    rotated = next(r.seq for r in gate.audit.events() if r.type == "gate.key_rotated")
    with gate.store.write() as conn:
        conn.execute(delete(events).where(events.c.seq >= rotated))
        conn.execute(delete(schema.audit_checkpoints))
        prev = conn.execute(select(events.c.hash).where(events.c.seq == rotated - 1)).scalar()
        conn.execute(update(schema.audit_head).values(seq=rotated - 1, hash=prev))
    (gate.state_dir / "audit-checkpoint.json").unlink(missing_ok=True)
    report = gate.audit.verify()
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "truncation", rotated)
    assert "lacks the event" in report.reason
