"""Environments are declared, canonical and case-insensitive (tests/data/environments).

`deploy:Production/web` is `deploy:production/web`; with alias `prod`, so is
`deploy:prod/web`; without it, `prod` is an environment nobody declared and the
request is refused (`environment_undeclared`) rather than judged unprotected.
Every protected environment gets the trust gate; policy decision tables and
`policy explain` derive the environment the way the gate does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DATA, RELEASE, RecordingExecutor, audit_events, stored_trust
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

import opsgate
from opsgate import capabilities as caps
from opsgate.approvals import PendingApproval
from opsgate.cli import app
from opsgate.config import Config
from opsgate.environments import DEFAULT, Environments
from opsgate.operations.base import Operation, OperationParams, Outcome, Plan
from opsgate.policy.request import PolicyRequest
from opsgate.store import schema

ENV_DATA = DATA / "environments"
SPEC = yaml.safe_load((ENV_DATA / "cases.yaml").read_text())
T0 = 1_900_000_000.0
SRE = {"approvers": ["sre-team@company.com"]}


def _world_cases() -> Iterator[Any]:
    for world in SPEC["worlds"]:
        for case in world["cases"]:
            label = f"{world['name']}: {case['capability']} @{case['trust']}"
            yield pytest.param(world, case, id=label)


class EnvWorld:
    def __init__(self, state: Path, world: dict[str, Any]) -> None:
        config = copy.deepcopy(world["config"])
        self.gate = opsgate.Gate.open(
            state, policies=ENV_DATA / "policies.yaml", trust=SRE, **config
        )
        self.tokens: dict[int, str] = {}
        for trust in (700, 920):
            agent = self.gate.register_agent(
                f"agent-{trust}",
                world["grants"],
                sponsor="lead@company.com",
                trust_score=trust,
                now=T0,
            )
            self.tokens[trust] = self.gate.credential_manager.issue_credential(
                agent_id=agent.did, scope=world["grants"], now=T0
            ).token

    def decide(self, capability: str, trust: int) -> opsgate.Decision:
        return self.gate.authorize(self.tokens[trust], capability, now=T0 + 1)


@pytest.mark.parametrize(("world", "case"), list(_world_cases()))
def test_environment_case(world: dict[str, Any], case: dict[str, Any], tmp_path: Path) -> None:
    w = EnvWorld(tmp_path / "state", world)
    try:
        before = stored_trust(w.gate, w.gate.agents.resolve(f"agent-{case['trust']}"))
        if "refused" in case:
            with pytest.raises(opsgate.CapabilityError) as exc:
                w.decide(case["capability"], case["trust"])
            assert exc.value.code == case["refused"]
            refusal = audit_events(w.gate, "authorize.refused")[-1]
            assert refusal["code"] == case["refused"]
            # A mistake, audited; not an escalation, so not charged.
            did = w.gate.agents.resolve(f"agent-{case['trust']}")
            assert stored_trust(w.gate, did) == before
            return
        got = w.decide(case["capability"], case["trust"])
        if "same_as" in case:
            want = w.decide(case["same_as"], case["trust"])
            assert (got.effect, got.reasons, got.approvers) == (
                want.effect,
                want.reasons,
                want.approvers,
            )
        if "effect" in case:
            assert got.effect == case["effect"], got.reasons
        if "violation" in case:
            assert got.violation == case["violation"]
    finally:
        w.gate.close()


def test_a_wrong_expectation_fails_the_table(tmp_path: Path) -> None:
    world = SPEC["worlds"][0]
    w = EnvWorld(tmp_path / "state", world)
    try:
        # The check the table makes, against a spelling it must not equal.
        got = w.decide("deploy:staging/web", 700)
        want = w.decide("deploy:production/web", 700)
        assert (got.effect, got.reasons) != (want.effect, want.reasons)
    finally:
        w.gate.close()


# -- canonical form, as properties ---------------------------------------------------------

_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)
_ALIASED = Environments.from_config(
    Config(environments={"production": {"aliases": ["prod"], "protected": True}, "staging": {}})
)


@settings(max_examples=300, deadline=None)
@given(
    action=st.sampled_from(["deploy", "read"]),
    first=st.sampled_from(["production", "staging", "prod", "secrets", "database", "qa"]),
    rest=st.lists(st.sampled_from(["production", "prod", "staging", "web"]) | _segment, max_size=4),
    flips=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_every_spelling_resolves_like_the_lower_case_one(
    action: str, first: str, rest: list[str], flips: list[bool]
) -> None:
    for envs in (DEFAULT, _ALIASED):
        resource = "/".join([first, *rest])
        spelled = "".join(c.upper() if flips[i % len(flips)] else c for i, c in enumerate(resource))
        lower = envs.resolve(caps.parse_request(f"{action}:{resource}"))
        assert envs.resolve(caps.parse_request(f"{action}:{spelled}")) == lower
        if lower.environment is not None:
            # The environment segment is the canonical name, never an alias.
            assert lower.environment in lower.capability.segments
            assert lower.environment in envs.names
        if first not in envs.namespaces and envs.canonical_name(first) is None:
            assert lower.undeclared == first  # refused, never judged unprotected


def test_grants_and_scopes_are_stored_canonical(tmp_path: Path) -> None:
    gate = opsgate.Gate.open(
        tmp_path / "state",
        environments={"production": {"aliases": ["prod"], "protected": True}, "staging": {}},
    )
    try:
        agent = gate.register_agent(
            "a", ["deploy:PROD", "read:secrets/Prod/App"], sponsor="lead@company.com", now=T0
        )
        assert agent.to_dict()["capabilities"] == [
            "deploy:production",
            "read:secrets/production/app",
        ]
        cred = gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=["deploy:Prod/web", "deploy:production/web"], now=T0
        )
        assert gate.credential_manager.verify(cred.token, now=T0).scope == (
            "deploy:production/web",
        )
        child = agent.delegate(name="c", capabilities=["deploy:prod/Web"], now=T0)
        assert child.to_dict()["capabilities"] == ["deploy:production/web"]
        for bad in (["deploy:qa"], ["deploy:development"], ["read:secrets/app"]):
            with pytest.raises(opsgate.CapabilityError) as exc:
                gate.register_agent("b", bad, sponsor="lead@company.com", now=T0)
            assert exc.value.code == "environment_undeclared"
    finally:
        gate.close()


# -- the execute path -------------------------------------------------------------------------


def test_an_operation_is_planned_approved_and_run_under_its_canonical_name(
    tmp_path: Path,
) -> None:
    gate = opsgate.Gate.open(
        tmp_path / "state",
        policies=ENV_DATA / "policies.yaml",
        trust=SRE,
        environments={"production": {"aliases": ["prod"], "protected": True}, "staging": {}},
    )
    try:
        executor = RecordingExecutor()
        gate.register_executor("deploy", executor)
        agent = gate.register_agent(
            "a", ["deploy:production"], sponsor="lead@company.com", trust_score=920, now=T0
        )
        token = gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=["deploy:production"], now=T0
        ).token
        pending = gate.execute(token, Operation("deploy", "PROD/App-Web", dict(RELEASE)), now=T0)
        assert isinstance(pending, PendingApproval)
        canonical = gate.plan(Operation("deploy", "production/app-web", dict(RELEASE)))
        assert pending.digest == canonical.digest
        request = gate.approvals.get(pending.approval_id)
        assert request.operation["resource"] == "production/app-web"
        john = gate.approvals.add_approver("john@company.com")
        gate.approvals.approve(pending.approval_id, approver="john@company.com", token=john)
        # The approval binds the canonical plan, whichever spelling resumes it.
        out = gate.execute(
            token,
            Operation("deploy", "Production/app-web", dict(RELEASE)),
            approval_id=pending.approval_id,
            now=T0 + 2,
        )
        assert isinstance(out, Outcome) and out.status == "succeeded"
        assert [p.operation.resource for p in executor.runs] == ["production/app-web"]
        assert [p.environment for p in executor.runs] == ["production"]
    finally:
        gate.close()


class _EnvParams(OperationParams):
    env: str


class _PlansAnEnvironment(RecordingExecutor):
    """An executor that reads the environment from its params (as a migrator might)."""

    params_model = _EnvParams

    def plan(self, operation: Operation) -> Plan:
        base = super().plan(operation)
        return Plan(
            operation=base.operation,
            capability=base.capability,
            environment=operation.params.get("env"),
            summary=base.summary,
            content=base.content,
        )


def test_an_environment_an_executor_plans_must_be_declared_and_is_canonical(
    tmp_path: Path,
) -> None:
    gate = opsgate.Gate.open(tmp_path / "state", policies=ENV_DATA / "policies.yaml", trust=SRE)
    try:
        executor = _PlansAnEnvironment()
        gate.register_executor("migrate", executor)
        agent = gate.register_agent(
            "a", ["migrate:database"], sponsor="lead@company.com", trust_score=700, now=T0
        )
        token = gate.credential_manager.issue_credential(
            agent_id=agent.did, scope=["migrate:database"], now=T0
        ).token
        with pytest.raises(opsgate.CapabilityError) as exc:
            gate.execute(token, Operation("migrate", "database/orders", {"env": "prd"}), now=T0)
        assert exc.value.code == "environment_undeclared"
        assert audit_events(gate, "operation.refused")[-1]["code"] == "environment_undeclared"
        # Declared, in another case: canonical, and protected (trust 700 needs approval).
        out = gate.execute(
            token, Operation("migrate", "database/orders", {"env": "PRODUCTION"}), now=T0
        )
        assert isinstance(out, PendingApproval)
        assert out.request.plan["environment"] == "production"
        assert executor.count == 0
    finally:
        gate.close()


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environments",
    [
        {},
        {"Production": {}},
        {"production": {"aliases": ["staging"]}, "staging": {}},
        {"production": {"aliases": ["prod"]}, "staging": {"aliases": ["prod"]}},
        {"secrets": {}},
        {"production": {"aliases": ["pr od"]}},
        {"production": {"protected": "yes"}},
        {"production": {"shield": True}},
    ],
)
def test_bad_environment_config_is_refused(tmp_path: Path, environments: Any) -> None:
    with pytest.raises(opsgate.ConfigError) as exc:
        opsgate.Gate.open(tmp_path / "state", environments=environments)
    assert exc.value.code == "config_invalid"


def test_defaults_keep_todays_environments() -> None:
    assert DEFAULT.names == ("production", "staging", "development", "test")
    assert DEFAULT.protected == frozenset({"production"})
    assert DEFAULT.aliases == {}


# -- policy authors' tools derive the same way ---------------------------------------------------


def test_a_policy_naming_an_alias_or_an_upper_case_name_cannot_load(tmp_path: Path) -> None:
    aliased = {"production": {"aliases": ["prod"], "protected": True}, "staging": {}}
    for condition, config in (
        ("environment == 'prod'", aliased),
        ("environment in ['staging', 'prod']", aliased),
        ("startswith(resource, 'secrets/prod/')", aliased),
        ("capability == 'deploy:prod/web'", aliased),
        ("startswith(resource, 'secrets/PRODUCTION')", {}),
        ("environment == 'Production'", {}),
    ):
        path = tmp_path / "p.yaml"
        path.write_text(
            yaml.safe_dump(
                {"policies": [{"name": "p", "rules": [{"condition": condition, "action": "deny"}]}]}
            )
        )
        with pytest.raises(opsgate.PolicyError) as exc:
            opsgate.Gate.open(tmp_path / "state", policies=path, environments=config or None)
        assert exc.value.code == "policy_type", condition
    # A prefix that only starts like an alias is not one.
    path = tmp_path / "ok.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "policies": [
                    {
                        "name": "p",
                        "rules": [
                            {"condition": "startswith(resource, 'secrets/pro')", "action": "deny"}
                        ],
                    }
                ]
            }
        )
    )
    opsgate.Gate.open(tmp_path / "ok-state", policies=path, environments=aliased).close()


def _one_rule(path: Path, condition: str, action: str = "deny") -> Path:
    path.write_text(
        yaml.safe_dump(
            {"policies": [{"name": "p", "rules": [{"condition": condition, "action": action}]}]}
        )
    )
    return path


def test_a_policy_naming_an_undeclared_environment_cannot_load(tmp_path: Path) -> None:
    """The gate refuses every request naming an undeclared environment, so `environment`
    is only ever a declared name or null: a rule comparing it with another name (a typo
    of `production`, a name meant as an alias that was never declared) never fires, and
    a deny or require_approval rule written for production silently allows."""
    for condition in (
        "action == 'deploy' and environment == 'prodution'",
        "environment == 'prod'",
        "environment in ['staging', 'prd']",
        "environment != 'qa' and destructive",
    ):
        path = _one_rule(tmp_path / "p.yaml", condition)
        with pytest.raises(opsgate.PolicyError) as exc:
            opsgate.Gate.open(tmp_path / "state", policies=path)
        assert exc.value.code == "policy_type", condition
        assert "not a declared environment" in exc.value.message, condition
        explain = ["policy", "explain", "--policies", str(path), "--action", "deploy"]
        explained = CliRunner().invoke(app, [*explain, "--resource", "production/web"])
        assert explained.exit_code == 1, condition
        assert "not a declared environment" in explained.output, condition
    # Declared names, an environment declared in the config, and null load.
    for condition, environments in (
        ("environment in ['production', 'staging', null]", None),
        ("environment == 'qa'", {"production": {"protected": True}, "qa": {}}),
    ):
        path = _one_rule(tmp_path / "ok.yaml", condition)
        state = tmp_path / f"ok-{len(condition)}"
        opsgate.Gate.open(state, policies=path, environments=environments).close()


def test_a_resource_or_capability_naming_an_undeclared_environment_cannot_load(
    tmp_path: Path,
) -> None:
    """The same for resources and capabilities: where a request's environment goes
    (its first segment, or the one after `secrets`) the gate lets through only a
    declared name, so `startswith(resource, 'prodution/')` was a rule that never fired.
    A partial last segment of a prefix, a namespace without an environment position
    and a suffix are not judged."""
    for condition in (
        "action == 'deploy' and startswith(resource, 'prodution/')",
        "resource == 'prd/app-web'",
        "capability == 'deploy:prodution/web'",
        "resource in ['staging/web', 'secrets/prodution/db']",
        "startswith(capability, 'read:secrets/prd/')",
    ):
        path = _one_rule(tmp_path / "p.yaml", condition)
        with pytest.raises(opsgate.PolicyError) as exc:
            opsgate.Gate.open(tmp_path / "state", policies=path)
        assert exc.value.code == "policy_type", condition
        assert "which is not declared" in exc.value.message, condition
    for i, condition in enumerate(
        (
            "startswith(resource, 'prod')",
            "startswith(resource, 'production/') or startswith(resource, 'secrets/')",
            "resource == 'database/orders' or startswith(resource, 'monitoring/prd-eu/')",
            "endswith(resource, '/prd') and capability == 'read:secrets/staging/db'",
        )
    ):
        path = _one_rule(tmp_path / "ok.yaml", condition)
        opsgate.Gate.open(tmp_path / f"ok-{i}", policies=path).close()


def test_the_http_explain_derives_like_the_gate(tmp_path: Path) -> None:
    """POST /v1/policy/explain judged the resource as typed against the built-in
    environments: with alias `prod` declared, `prod/web` (production to the gate, which
    holds it for approval) was explained as environment-less and allowed."""
    from fastapi.testclient import TestClient
    from helpers import open_world
    from server_helpers import BASE, basic

    from opsgate.config import ServerConfig
    from opsgate.server import create_app

    aliased = {"production": {"aliases": ["prod"], "protected": True}, "staging": {}}
    world = open_world(tmp_path / "state", environments=aliased)
    try:
        auth = {"Authorization": basic("ops", world.gate.operators.add("ops"))}
        client = TestClient(create_app(world.gate, ServerConfig(external_url=BASE)))

        def explain(resource: str) -> dict[str, Any]:
            body = {"action": "deploy", "resource": resource}
            r = client.post("/v1/policy/explain", json=body, headers=auth)
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        for resource in ("prod/web", "PROD/web", "Production/web"):
            out = explain(resource)
            assert out["request"]["resource"] == "production/web", resource
            assert out["request"]["environment"] == "production", resource
            assert out["decision"]["effect"] == "require_approval", resource
            assert out["note"] is None
        out = explain("prd/web")
        assert out["request"]["environment"] is None
        assert "environment_undeclared" in out["note"]
    finally:
        world.gate.close()


def test_decision_tables_and_explain_derive_like_the_gate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "opsgate.yaml").write_text(
        yaml.safe_dump(
            {
                "environments": {
                    "production": {"aliases": ["prod"], "protected": True},
                    "staging": {},
                }
            }
        )
    )
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        yaml.safe_dump(
            {
                "policies": str(ENV_DATA / "policies.yaml"),
                "cases": [
                    {
                        "name": "an alias is production",
                        "request": {
                            "action": "deploy",
                            "resource": "PROD/web",
                            "agent": {"trust_score": 950},
                        },
                        "expect": "require_approval",
                    },
                    {
                        "name": "any case of a production secret",
                        "request": {"action": "read", "resource": "Secrets/Prod/db"},
                        "expect": "deny",
                    },
                ],
            }
        )
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["policy", "test", str(cases), "--state-dir", str(state), "--json"])
    assert ok.exit_code == 0, ok.output
    # Without the alias (built-in environments), `prod` is no environment: the table fails.
    bare = runner.invoke(
        app, ["policy", "test", str(cases), "--state-dir", str(tmp_path / "none"), "--json"]
    )
    assert bare.exit_code == 1, bare.output
    explained = runner.invoke(
        app,
        [
            "policy",
            "explain",
            "--policies",
            str(ENV_DATA / "policies.yaml"),
            "--state-dir",
            str(state),
            "--action",
            "deploy",
            "--resource",
            "Prod/Web",
            "--json",
        ],
    )
    assert explained.exit_code == 0, explained.output
    body = json.loads(explained.output)
    assert body["request"]["resource"] == "production/web"
    assert body["request"]["environment"] == "production"
    assert body["decision"]["effect"] == "require_approval" and body["note"] is None
    refused = runner.invoke(
        app,
        [
            "policy",
            "explain",
            "--policies",
            str(ENV_DATA / "policies.yaml"),
            "--state-dir",
            str(tmp_path / "none"),
            "--action",
            "deploy",
            "--resource",
            "prod/web",
            "--json",
        ],
    )
    assert refused.exit_code == 0, refused.output
    assert "environment_undeclared" in json.loads(refused.output)["note"]
    # The SDK's request builder is the same function.
    req = PolicyRequest.from_dict({"action": "read", "resource": "secrets/PRODUCTION/db"})
    assert (req.resource, req.environment) == ("secrets/production/db", "production")


def test_the_detectors_see_one_spelling_of_a_resource(tmp_path: Path) -> None:
    w = EnvWorld(tmp_path / "state", SPEC["worlds"][0])
    try:
        for spelling in ("deploy:Staging/Web", "deploy:STAGING/web", "deploy:staging/web"):
            assert w.decide(spelling, 920).effect == "allow"
        did = w.gate.agents.resolve("agent-920")
        with w.gate.store.read() as conn:
            seen = (
                conn.execute(
                    select(schema.trust_resources.c.resource).where(
                        schema.trust_resources.c.agent_did == did
                    )
                )
                .scalars()
                .all()
            )
        assert seen == ["deploy:staging/web"]
    finally:
        w.gate.close()


@pytest.mark.parametrize(
    "production",
    [{"aliases": ["prod"]}, {}, {"aliases": []}],
)
def test_production_declared_without_protected_stays_protected(production: Any) -> None:
    """Declaring production's aliases (and not repeating `protected: true`) must not
    silently lift the trust gate from it; only an explicit `protected: false` does."""
    config = Config(environments={"production": production, "staging": {}})
    assert Environments.from_config(config).protected == frozenset({"production"})
    explicit = Config(environments={"production": {**production, "protected": False}})
    assert Environments.from_config(explicit).protected == frozenset()


def test_production_aliases_in_the_config_file_keep_the_trust_gate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    opsgate.Gate.init(state).close()
    (state / "opsgate.yaml").write_text(
        "environments:\n  production: {aliases: [prod]}\n  staging: {}\n", encoding="utf-8"
    )
    with opsgate.Gate.open(state) as gate:
        assert gate.environments.is_protected("production")
        assert gate.environments.canonical_name("prod") == "production"
