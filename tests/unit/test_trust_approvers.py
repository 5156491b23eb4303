"""trust.approvers resolve once, strictly: a group name to its members, else a plain email."""

from __future__ import annotations

from pathlib import Path

import pytest

import opsgate

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "examples" / "policies.yaml"


def test_group_name_resolves_to_its_members(tmp_path: Path) -> None:
    gate = opsgate.Gate.open(
        tmp_path / "s", policies=POLICIES, trust={"approvers": ["sre-team@company.com"]}
    )
    assert gate.trust_approvers == ("jane@company.com", "john@company.com")
    gate.close()


@pytest.mark.parametrize(
    "entry", ["sre-team@company.com ", "sre-teаm@company.com", "not an email", ""]
)
def test_near_misses_are_configuration_errors(tmp_path: Path, entry: str) -> None:
    with pytest.raises(opsgate.ConfigError) as exc:
        opsgate.Gate.open(tmp_path / "s", policies=POLICIES, trust={"approvers": [entry]})
    assert exc.value.code == "config_invalid"


def test_low_trust_production_request_names_the_resolved_members(tmp_path: Path) -> None:
    gate = opsgate.Gate.open(
        tmp_path / "s", policies=POLICIES, trust={"approvers": ["sre-team@company.com"]}
    )
    sup = gate.register_agent(
        "sup", ["read:monitoring"], sponsor="platform-team@company.com", trust_score=700
    )
    cred = gate.credential_manager.issue_credential(sup.did, ["read:monitoring"])
    decision = gate.authorize(cred.token, "read:monitoring/production")
    assert decision.effect == "require_approval"
    assert set(decision.approvers) == {"jane@company.com", "john@company.com"}
    gate.close()
