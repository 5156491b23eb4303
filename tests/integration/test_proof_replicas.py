"""Proofs of possession across replica processes whose clocks disagree (PostgreSQL).

Each proof is accepted once. Replicas 200 s ahead and 200 s behind, and a call with
a far-future `now`, share the replay store with a replica on time: none of them may
prune an entry another could still accept, so the proof used on the first replica is
refused as replayed everywhere afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import opsgate
from opsgate.credentials.proof import ProofRequest, make_proof
from opsgate.store import schema

pytestmark = pytest.mark.postgres
CHILD = Path(__file__).with_name("proof_replica.py")
CAP = "deploy:staging/app-web"


@pytest.fixture
def gate(tmp_path: Path, pg_url: str) -> Iterator[opsgate.Gate]:
    g = opsgate.Gate.open(tmp_path / "state", database_url=pg_url, require_proof=True)
    yield g
    g.close()


def _replica(gate: opsgate.Gate, pg_url: str, requests: list[dict[str, Any]]) -> list[str]:
    """Run `requests` on a replica in another process; its results in order."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent.parent)}
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(gate.state_dir), pg_url],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def _agent(gate: opsgate.Gate, name: str) -> opsgate.Agent:
    # Trust 1000: the refusals below are charged as misuse, and must not suspend it.
    return gate.register_agent(
        name, ["deploy:staging"], sponsor="ops@company.com", trust_score=1000
    )


def _signed(
    gate: opsgate.Gate, agent: opsgate.Agent, at: float, n: int = 1
) -> list[dict[str, Any]]:
    """A credential and `n` proofs made by an agent whose clock reads `at`."""
    token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"], now=at).token
    key = gate.agents.private_key(agent.did)
    return [
        {
            "token": token,
            "capability": CAP,
            "proof": make_proof(key, token, ProofRequest.authorize(CAP), at),
            "now": at,
        }
        for _ in range(n)
    ]


def _used(gate: opsgate.Gate) -> set[str]:
    with gate.store.read() as conn:
        return {r[0] for r in conn.execute(select(schema.used_proofs.c.jti)).all()}


def test_replicas_ahead_and_behind_never_let_a_used_proof_through(
    gate: opsgate.Gate, pg_url: str
) -> None:
    now = time.time()
    [used] = _signed(gate, _agent(gate, "on-time"), now)
    assert gate.authorize(used["token"], CAP, proof=used["proof"], now=now).effect == "allow"
    before = _used(gate)

    ahead = _signed(gate, _agent(gate, "ahead"), now + 200, 3)
    [far] = _signed(gate, _agent(gate, "far-future"), now + 10_000)  # a far-future `now`
    assert _replica(gate, pg_url, [*ahead, far]) == ["allow", "allow", "allow", "bad_proof"]
    behind = _signed(gate, _agent(gate, "behind"), now - 200, 3)
    assert _replica(gate, pg_url, behind) == ["allow", "allow", "allow"]

    assert before <= _used(gate), "a skewed replica pruned a proof another may still accept"
    # The used proof, presented again on time: refused here and on a fresh replica.
    with pytest.raises(opsgate.InvalidCredential) as exc:
        gate.authorize(used["token"], CAP, proof=used["proof"], now=now)
    assert exc.value.code == "proof_replayed"
    assert _replica(gate, pg_url, [used]) == ["proof_replayed"]
    # And each skewed replica's proofs are spent too, wherever they are replayed.
    assert _replica(gate, pg_url, [ahead[0], behind[0]]) == ["proof_replayed", "proof_replayed"]


def test_a_replica_too_far_behind_the_database_gets_no_proof_accepted(
    gate: opsgate.Gate, pg_url: str
) -> None:
    """400 s behind (beyond the tolerated skew): the store may have pruned proofs that
    old, so the replica's own clock does not get to call them fresh."""
    [stale] = _signed(gate, _agent(gate, "far-behind"), time.time() - 400)
    assert _replica(gate, pg_url, [stale]) == ["bad_proof"]
    assert _used(gate) == set()
