"""Expired revocations are cleaned up, and the clean-up can never forget one in force."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

import opsgate
from opsgate.store import schema


def _revoked_jtis(gate: opsgate.Gate) -> set[str]:
    with gate.store.read() as conn:
        return {r[0] for r in conn.execute(select(schema.revoked_credentials.c.jti))}


def test_expired_revocations_are_pruned_live_ones_kept(
    gate: opsgate.Gate, deploy_agent: opsgate.Agent
) -> None:
    cred = gate.credential_manager.issue_credential(deploy_agent.did, ["deploy:staging"])
    gate.credential_manager.revoke(cred.jti)
    stale = "S" * 22
    with gate.store.write() as conn:
        conn.execute(
            schema.revoked_credentials.insert().values(
                jti=stale, expires_at=time.time() - 3 * 3600, revoked_at=time.time() - 4 * 3600
            )
        )
    gate.state.add_revoked(stale, time.time() - 3 * 3600)
    gate.state._next_prune = 0.0  # a clean-up is due
    other = gate.credential_manager.issue_credential(deploy_agent.did, ["deploy:staging"])
    gate.credential_manager.revoke(other.jti)
    assert _revoked_jtis(gate) == {cred.jti, other.jti}
    assert not gate.state.is_revoked(stale)
    with pytest.raises(opsgate.InvalidCredential) as exc:
        gate.credential_manager.verify(cred.token)
    assert exc.value.code == "revoked"


def test_an_injected_future_clock_never_prunes_a_revocation_in_force(
    gate: opsgate.Gate, deploy_agent: opsgate.Agent
) -> None:
    cred = gate.credential_manager.issue_credential(deploy_agent.did, ["deploy:staging"])
    gate.credential_manager.revoke(cred.jti)
    gate.state._next_prune = 0.0
    other = gate.credential_manager.issue_credential(deploy_agent.did, ["deploy:staging"])
    gate.credential_manager.revoke(other.jti, now=time.time() + 10 * 86400)
    gate.state._next_refresh = 0.0
    gate.state.maybe_refresh()
    assert cred.jti in _revoked_jtis(gate)
    with pytest.raises(opsgate.InvalidCredential) as exc:
        gate.credential_manager.verify(cred.token)
    assert exc.value.code == "revoked"


def test_a_cache_refresh_does_not_take_the_database_prune_s_turn(
    gate: opsgate.Gate, deploy_agent: opsgate.Agent
) -> None:
    """A refresh of the in-memory view (due on its own timer, any time) forgets expired
    revocations in memory; the database's are still pruned by the next revocation."""
    stale = "S" * 22
    with gate.store.write() as conn:
        conn.execute(
            schema.revoked_credentials.insert().values(
                jti=stale, expires_at=time.time() - 3 * 3600, revoked_at=time.time() - 4 * 3600
            )
        )
    gate.state._next_prune = 0.0  # a clean-up is due
    gate.state._next_refresh = 0.0  # and so is a refresh, which comes first
    gate.state.maybe_refresh()
    cred = gate.credential_manager.issue_credential(deploy_agent.did, ["deploy:staging"])
    gate.credential_manager.revoke(cred.jti)
    assert _revoked_jtis(gate) == {cred.jti}
