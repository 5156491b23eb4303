"""The command backend: a configured command (a small Python script stands in for helm)
run as a real child process: argv from the template with validated values (no shell),
an environment built from nothing, secrets and the credential in the environment and
never on the command line, a timeout that kills the process group, the exit code
deciding, and an output tail scrubbed of every secret before it reaches the audit."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_world import FAST, HealthServer
from helpers import DATA, audit_events, database_text
from hypothesis import given, settings
from hypothesis import strategies as st

import opsgate
from opsgate.errors import SecretError
from opsgate.operations.base import Operation
from opsgate.operations.deploy import DeployExecutor
from opsgate.operations.deploy.child import REDACTED, _Tail, run_child

FAKE_HELM = str(DATA / "deploy" / "fake_helm.py")
DB_PASSWORD = "Pa55-w0rd-Quokka-7731"
API_KEY = "ak-Zebra-44-Lantern"
SPONSOR = "platform-lead@company.com"


def refused(kind: type[opsgate.OpsgateError], fn: Any, *args: Any, **kw: Any) -> Any:
    with pytest.raises(kind) as info:
        fn(*args, **kw)
    return info.value


class FakeSecrets:
    """A secret store (outside this unit): values by path, and who asked for what."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: list[str] = []

    def reveal(self, path: str) -> str:
        self.asked.append(path)
        if path not in self.values:
            raise SecretError(f"secret {path!r} not found", code="secret_not_found")
        return self.values[path]


@dataclass
class CmdWorld:
    gate: opsgate.Gate
    executor: DeployExecutor
    agent: opsgate.Agent
    token: str
    helm: Path  # FAKE_HELM_DIR
    artifacts: Path
    secrets: FakeSecrets

    def behave(self, **behaviour: Any) -> None:
        (self.helm / "behaviour.json").write_text(json.dumps(behaviour))

    def calls(self) -> list[dict[str, Any]]:
        path = self.helm / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def deploy(self, env: str, version: str, token: str | None = None, **params: Any) -> Any:
        op = Operation("deploy", f"{env}/web", {"version": version, **params})
        return self.gate.execute(token or self.token, op)

    def credential(self, scope: list[str]) -> str:
        sub = self.agent.delegate(
            name=f"sub-{len(scope)}-{time.monotonic_ns()}", capabilities=scope
        )
        return self.gate.credential_manager.issue_credential(sub.did, scope).token


def helm_env(helm: Path, **extra: Any) -> dict[str, Any]:
    return {
        "command": [
            sys.executable,
            FAKE_HELM,
            "upgrade",
            "--install",
            "{app}",
            "{chart}",
            "--set",
            "image.tag={version}",
            "--atomic",
        ],
        "rollback": [sys.executable, FAKE_HELM, "rollback", "{app}", "--to", "{version}"],
        "vars": {"chart": "./charts/web"},
        "env": {"FAKE_HELM_DIR": str(helm)},
        "timeout_seconds": 10,
        "output_tail_bytes": 600,
        **extra,
    }


@contextmanager
def command_world(
    tmp: Path,
    *,
    staging: dict[str, Any] | None = None,
    production: dict[str, Any] | None = None,
    scope: tuple[str, ...] = (),
    secrets: dict[str, str] | None = None,
    connect_secrets: bool = True,
    gate_config: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[CmdWorld]:
    helm = tmp / "helm"
    helm.mkdir(parents=True)
    artifacts = tmp / "artifacts"
    artifacts.mkdir()
    store = FakeSecrets(
        secrets
        if secrets is not None
        else {"production/db/password": DB_PASSWORD, "production/api/key": API_KEY}
    )
    executor = DeployExecutor(
        artifact_roots=[artifacts],
        commands={
            "staging": helm_env(helm, **(staging or {})),
            "production": helm_env(helm, **(production or {})),
        },
        secrets=store if connect_secrets else None,
        **settings,
    )
    full = ["deploy:staging", "deploy:production", "rollback:staging", "rollback:production"]
    full += list(scope)
    with opsgate.Gate.open(tmp / "state", **(gate_config or {})) as gate:
        gate.register_executor("deploy", executor)
        gate.register_executor("rollback", executor.rollback)
        agent = gate.register_agent("helmsman", full, sponsor=SPONSOR, trust_score=900)
        token = gate.credential_manager.issue_credential(agent.did, full).token
        yield CmdWorld(gate, executor, agent, token, helm, artifacts, store)


def test_the_template_becomes_an_argument_list_and_the_exit_code_decides(tmp_path: Path) -> None:
    with command_world(tmp_path) as w:
        outcome = w.deploy("staging", "2.0")
        assert outcome.status == "succeeded", outcome.summary
        (call,) = w.calls()
        assert call["argv"] == [
            "upgrade",
            "--install",
            "web",
            "./charts/web",
            "--set",
            "image.tag=2.0",
            "--atomic",
        ]
        assert call["stdin"] == ""  # stdin closed
        assert outcome.detail["command"]["exit_code"] == 0
        assert w.executor.status("staging", "web").current == "2.0"
        w.behave(exit=3)
        before = w.agent.trust_score
        failed = w.deploy("staging", "2.1")
        assert failed.status == "failed" and failed.failure_kind == "deployment"
        assert "exited with 3" in failed.summary
        assert w.agent.trust_score == before - 40
        assert w.executor.status("staging", "web").current == "2.0"
        event = audit_events(w.gate, "operation.outcome")[-1]
        assert event["detail"]["command"]["exit_code"] == 3
        assert "deploying upgrade" in event["detail"]["command"]["output_tail"]


def test_the_child_environment_is_built_from_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSGATE_MASTER_KEY", "the-gates-own-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "gate-cloud-key")
    extra = {"env": {"FAKE_HELM_DIR": str(tmp_path / "helm"), "KUBECONFIG": "/etc/kube/config"}}
    with command_world(tmp_path, staging=extra) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        env = w.calls()[0]["env"]
        env.pop("LC_CTYPE", None)  # set by the Python interpreter of the stand-in itself
        assert set(env) == {
            "PATH",
            "FAKE_HELM_DIR",
            "KUBECONFIG",
            "OPSGATE_DEPLOY_APP",
            "OPSGATE_DEPLOY_ENV",
            "OPSGATE_DEPLOY_VERSION",
            "OPSGATE_TOKEN",
        }
        assert env["OPSGATE_TOKEN"] == w.token
        assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
        assert (env["OPSGATE_DEPLOY_APP"], env["OPSGATE_DEPLOY_ENV"]) == ("web", "staging")


def test_secrets_go_to_the_environment_never_the_command_line_or_the_audit(
    tmp_path: Path,
) -> None:
    production = {
        "secrets": {"DB_PASSWORD": "production/db/password"},
        "output_tail_bytes": 2000,
    }
    scope = ("read:secrets/production/db", "read:secrets/production/api")
    with command_world(tmp_path, production=production, scope=scope) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        w.behave(print=["DB_PASSWORD", "OPSGATE_SECRET_PRODUCTION_API_KEY", "OPSGATE_TOKEN"])
        outcome = w.deploy("production", "1", secrets=["production/api/key"])
        assert outcome.status == "succeeded", outcome.summary
        call = w.calls()[-1]
        assert call["env"]["DB_PASSWORD"] == DB_PASSWORD
        assert call["env"]["OPSGATE_SECRET_PRODUCTION_API_KEY"] == API_KEY
        assert not any(v in arg for arg in call["argv"] for v in (DB_PASSWORD, API_KEY))
        tail = outcome.detail["command"]["output_tail"]
        assert f"DB_PASSWORD={REDACTED}" in tail
        assert f"OPSGATE_SECRET_PRODUCTION_API_KEY={REDACTED}" in tail
        assert f"OPSGATE_TOKEN={REDACTED}" in tail
        stored = database_text(w.gate)
        for value in (DB_PASSWORD, API_KEY, w.token):
            assert value not in stored
            assert value not in tail
            assert value not in repr(outcome)
        # The plan names the secrets (what an approver sees), never their values.
        op = Operation(
            "deploy",
            "production/web",
            {"version": "1", "secrets": ["production/api/key"]},
            dry_run=True,
        )
        plan = w.gate.execute(w.token, op).detail["plan"]
        assert plan["content"]["secrets"] == {
            "DB_PASSWORD": "production/db/password",
            "OPSGATE_SECRET_PRODUCTION_API_KEY": "production/api/key",
        }
        assert DB_PASSWORD not in json.dumps(plan)


def test_a_secret_the_command_prints_base64_encoded_is_cut_from_the_tail(
    tmp_path: Path,
) -> None:
    """Deploy tools print secrets encoded (a Kubernetes Secret's data, a dry run's
    manifest): base64 of a value handed to the child is cut out like the value."""
    production = {"secrets": {"DB_PASSWORD": "production/db/password"}, "output_tail_bytes": 2000}
    scope = ("read:secrets/production/db", "read:secrets/production/api")
    with command_world(tmp_path, production=production, scope=scope) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        w.behave(print_base64=["DB_PASSWORD", "OPSGATE_SECRET_PRODUCTION_API_KEY"])
        outcome = w.deploy("production", "1", secrets=["production/api/key"])
        assert outcome.status == "succeeded", outcome.summary
        tail = outcome.detail["command"]["output_tail"]
        assert f"DB_PASSWORD: {REDACTED}" in tail and f"DB_PASSWORD.url: {REDACTED}" in tail
        stored = database_text(w.gate)
        for value in (DB_PASSWORD, API_KEY):
            for encoded in (
                base64.b64encode(value.encode()).decode().rstrip("="),
                base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
            ):
                assert encoded not in tail and encoded not in stored


def test_an_agent_hands_the_child_only_secrets_it_could_read_itself(tmp_path: Path) -> None:
    production = {"secrets": {"DB_PASSWORD": "production/db/password"}}
    with command_world(tmp_path, production=production, scope=("read:secrets/production",)) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        narrow = w.credential(["deploy:production", "read:secrets/production/api"])
        # The configured secret needs read:secrets/production/db, which it lacks.
        err = refused(opsgate.OperationError, w.deploy, "production", "1", narrow)
        assert err.code == "operation_denied"
        assert "read:secrets/production/db/password" in err.message
        # Asking for another secret by name: the same rule.
        wide_db = w.credential(["deploy:staging", "read:secrets/production/db"])
        err = refused(
            opsgate.OperationError,
            w.deploy,
            "staging",
            "1",
            wide_db,
            secrets=["production/api/key"],
        )
        assert err.code == "operation_denied"
        assert audit_events(w.gate, "operation.denied")[-1]["capability"] == "deploy:staging/web"
        assert w.secrets.asked == []
        assert len(w.calls()) == 1  # only the first staging deploy ran


def test_handing_a_secret_over_gets_the_decision_reading_it_would(tmp_path: Path) -> None:
    """Policy and the trust gate decide the secrets a run is handed as they decide a read:
    a staging deploy is no way round a deny on a production secret, nor round the
    approval a low-trust agent's production read needs."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "policies:\n"
        "  - name: db-secret-off-limits\n"
        "    rules:\n"
        "      - condition: \"action == 'read' and\n"
        "          startswith(resource, 'secrets/production/db')\"\n"
        "        action: deny\n"
    )
    gate_config = {"policies": policy, "trust": {"approvers": ["sre@company.com"]}}
    scope = ("read:secrets/production",)
    with command_world(tmp_path / "w", scope=scope, gate_config=gate_config) as w:
        read = Operation("read", "secrets/production/db/password", {})
        assert refused(opsgate.OperationError, w.gate.execute, w.token, read).code == (
            "operation_denied"
        )
        before = w.agent.trust_score
        err = refused(
            opsgate.OperationError, w.deploy, "staging", "1", secrets=["production/db/password"]
        )
        assert err.code == "operation_denied" and "db-secret-off-limits" in err.message
        assert w.agent.trust_score == before - 75  # the violation a direct read is
        assert w.secrets.asked == [] and w.calls() == []

        full = ["deploy:staging", "read:secrets/production"]
        low = w.gate.register_agent("low", full, sponsor=SPONSOR, trust_score=700)
        token = w.gate.credential_manager.issue_credential(low.did, full).token
        read = Operation("read", "secrets/production/api/key", {})
        assert isinstance(w.gate.execute(token, read), opsgate.PendingApproval)
        pending = w.deploy("staging", "1", token, secrets=["production/api/key"])
        assert isinstance(pending, opsgate.PendingApproval)
        assert w.secrets.asked == [] and w.calls() == []
        sre = w.gate.approvals.add_approver("sre@company.com")
        w.gate.approvals.approve(pending.approval_id, approver="sre@company.com", token=sre)
        assert w.gate.resume(pending.approval_id, token).status == "succeeded"
        assert w.secrets.asked == ["production/api/key"]
        # Without a production secret the staging deploy needs no one.
        assert w.deploy("staging", "2", token).status == "succeeded"


def test_a_secret_is_named_exactly_as_its_capability_is_checked(tmp_path: Path) -> None:
    """An alias or another case would check one path and read another."""
    environments = {
        "production": {"aliases": ["prod"], "protected": True},
        "staging": {},
    }
    scope = ("read:secrets/production",)
    with command_world(tmp_path, scope=scope, gate_config={"environments": environments}) as w:
        for path in ("prod/db/password", "Production/db/password", "production//db"):
            err = refused(opsgate.OperationError, w.deploy, "staging", "1", secrets=[path])
            assert err.code == "params_invalid", path
        assert w.secrets.asked == [] and w.calls() == []
        assert w.deploy("staging", "1", secrets=["production/db/password"]).status == "succeeded"
        assert w.secrets.asked == ["production/db/password"]


def test_a_secret_that_cannot_be_read_refuses_the_run_before_it_starts(tmp_path: Path) -> None:
    scope = ("read:secrets/production",)
    with command_world(tmp_path, scope=scope, secrets={}) as w:
        before = w.agent.trust_score
        err = refused(
            opsgate.RunRefused, w.deploy, "staging", "1", secrets=["production/db/password"]
        )
        assert err.code == "secrets_unavailable"
        assert w.calls() == [] and w.executor.locks() == []
        assert w.executor.history("staging", "web") == []
        assert w.agent.trust_score == before
    with command_world(tmp_path / "b", scope=scope, connect_secrets=False) as w:
        err = refused(
            opsgate.RunRefused, w.deploy, "staging", "1", secrets=["production/db/password"]
        )
        assert err.code == "secrets_unavailable"


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    with command_world(tmp_path, staging={"timeout_seconds": 1.0}) as w:
        w.behave(sleep=30, grandchild=True)
        started = time.monotonic()
        outcome = w.deploy("staging", "1")
        assert time.monotonic() - started < 10
        assert outcome.status == "failed" and "timed out" in outcome.summary
        assert outcome.detail["command"]["timed_out"] is True
        pid = int((w.helm / "grandchild.pid").read_text())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # A killed child not yet reaped by its (dead) parent is a zombie.
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the grandchild survived the timeout")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"version": "1.0,securityContext.privileged=true"}, "params_invalid"),
        ({"version": "-f"}, "params_invalid"),
        ({"version": "--post-renderer=/tmp/x"}, "params_invalid"),
        ({"version": "1.0 --dry-run"}, "params_invalid"),
        ({"version": "{chart}"}, "params_invalid"),
        ({"version": "1", "artifact": "ARTIFACTS/a,b=c.tgz"}, "placeholder_invalid"),
        ({"version": "1", "artifact": "ARTIFACTS/with space.tgz"}, "placeholder_invalid"),
        ({"version": "1", "secrets": ["../etc/passwd"]}, "params_invalid"),
        ({"version": "1", "secrets": ["production/db password"]}, "params_invalid"),
        ({"version": "1", "chart": "/evil"}, "params_invalid"),
    ],
)
def test_a_param_never_becomes_an_option_or_another_argument(
    tmp_path: Path, params: dict[str, Any], code: str
) -> None:
    with command_world(tmp_path, scope=("read:secrets",)) as w:
        art = params.get("artifact")
        if isinstance(art, str):
            path = Path(art.replace("ARTIFACTS", str(w.artifacts)))
            path.write_text("chart")
            params = {**params, "artifact": str(path)}
        op = Operation("deploy", "staging/web", params)
        err = refused(opsgate.OperationError, w.gate.execute, w.token, op)
        assert err.code == code
        assert w.calls() == []


def test_the_child_reads_a_private_copy_of_the_approved_artifact(tmp_path: Path) -> None:
    staging = {
        "command": [sys.executable, FAKE_HELM, "install", "{app}", "--artifact", "{artifact}"]
    }
    with command_world(tmp_path, staging=staging) as w:
        art = w.artifacts / "web-1.tgz"
        art.write_text("chart 1")
        assert (
            refused(opsgate.OperationError, w.deploy, "staging", "1").code == "params_invalid"
        )  # the template needs {artifact}
        outcome = w.deploy("staging", "1", artifact=str(art))
        assert outcome.status == "succeeded"
        got = w.calls()[-1]["artifact"]
        assert got["content"] == "chart 1"
        assert got["path"] != str(art) and got["path"].endswith("/web-1.tgz")
        assert not Path(got["path"]).exists()  # removed after the run
        # The digest is the evidence: staging ran exactly this artifact.
        digest = w.executor.status("staging", "web").digest
        assert digest is not None and digest.startswith("sha256:")
        assert w.executor.ledger.staged("staging", "web", "1", digest) is not None


def test_production_needs_staging_with_the_command_backend_too(tmp_path: Path) -> None:
    with command_world(tmp_path) as w:
        err = refused(opsgate.DeployError, w.deploy, "production", "3")
        assert err.code == "staging_required"
        w.behave(exit=1)
        assert w.deploy("staging", "3").status == "failed"
        assert refused(opsgate.DeployError, w.deploy, "production", "3").code == (
            "staging_required"
        )
        w.behave(exit=0)
        assert w.deploy("staging", "3").status == "succeeded"
        assert w.deploy("production", "3").status == "succeeded"


def test_a_failed_health_check_runs_the_rollback_command(tmp_path: Path) -> None:
    server = HealthServer()
    try:
        health = {"url": server.url, **FAST}
        with command_world(tmp_path, apps={"web": {"health": {"staging": health}}}) as w:
            assert w.deploy("staging", "1").status == "succeeded"
            server.script(503)
            outcome = w.deploy("staging", "2")
            assert outcome.status == "failed" and outcome.failure_kind == "deployment"
            assert "restored 1 with the rollback command" in outcome.summary
            assert w.calls()[-1]["argv"] == ["rollback", "web", "--to", "1"]
            assert "OPSGATE_TOKEN" not in w.calls()[-1]["env"]
            # In a private directory of its own, as the deploy ran: not the gate's cwd.
            restored_in = w.calls()[-1]["cwd"]
            assert restored_in != os.getcwd() and "opsgate-restore-" in restored_in
            assert not Path(restored_in).exists()
            assert w.executor.status("staging", "web").current == "1"
    finally:
        server.close()


def test_rollback_with_the_command_backend(tmp_path: Path) -> None:
    with command_world(tmp_path) as w:
        for v in ("1", "2"):
            assert w.deploy("staging", v).status == "succeeded"
        out = w.gate.execute(w.token, Operation("rollback", "staging/web", {}))
        assert out.status == "succeeded", out.summary
        assert w.calls()[-1]["argv"] == ["rollback", "web", "--to", "1"]
        assert w.executor.status("staging", "web").current == "1"
    with command_world(tmp_path / "b", staging={"rollback": None}) as w:
        for v in ("1", "2"):
            assert w.deploy("staging", v).status == "succeeded"
        op = Operation("rollback", "staging/web", {})
        err = refused(opsgate.DeployError, w.gate.execute, w.token, op)
        assert err.code == "rollback_unsupported"


def test_the_same_version_never_changes_artifact_in_a_command_environment(tmp_path: Path) -> None:
    staging = {"command": [sys.executable, FAKE_HELM, "install", "--artifact", "{artifact}"]}
    with command_world(tmp_path, staging=staging) as w:
        (w.artifacts / "a.tgz").write_text("a")
        (w.artifacts / "b.tgz").write_text("b")
        assert w.deploy("staging", "1", artifact=str(w.artifacts / "a.tgz")).status == "succeeded"
        err = refused(
            opsgate.DeployError, w.deploy, "staging", "1", artifact=str(w.artifacts / "b.tgz")
        )
        assert err.code == "release_conflict"


@pytest.mark.parametrize(
    "command",
    [
        "helm upgrade {app.__class__}",
        "helm upgrade {app[0]}",
        "helm upgrade {app!r}",
        "helm upgrade {version:>99}",
        "helm upgrade {unknown}",
        "helm upgrade {",
        "",
        [],
    ],
)
def test_a_template_with_anything_but_known_plain_placeholders_is_refused(
    tmp_path: Path, command: Any
) -> None:
    with pytest.raises(opsgate.ConfigError) as info:
        DeployExecutor(commands={"staging": {"command": command}})
    assert info.value.code == "config_invalid"


def test_config_variables_may_not_shadow_the_credential_or_path() -> None:
    for env in ({"OPSGATE_TOKEN": "x"}, {"PATH": "/tmp"}, {"lower": "x"}, {"A": "1", "B\n": "2"}):
        with pytest.raises(opsgate.ConfigError):
            DeployExecutor(commands={"staging": {"command": "helm", "env": env}})
    with pytest.raises(opsgate.ConfigError):  # a placeholder value named like a built-in
        DeployExecutor(commands={"staging": {"command": "helm", "vars": {"version": "1"}}})


# -- the scrubbed tail ---------------------------------------------------------------------------


_SECRET_CHARS = "QXZJ"


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.lists(st.text(_SECRET_CHARS, min_size=1, max_size=40), min_size=1, max_size=3),
    before=st.integers(0, 300),
    after=st.integers(0, 300),
    cap=st.integers(1, 120),
    chunk=st.integers(1, 64),
    which=st.integers(0, 2),
)
def test_no_piece_of_a_printed_secret_survives_in_the_tail(
    secrets: list[str], before: int, after: int, cap: int, chunk: int, which: int
) -> None:
    """Whatever the cap and wherever the secret falls (straddling where the kept tail
    starts included), no character of it is kept."""
    secret = secrets[which % len(secrets)]
    stream = ("ab " * before)[:before] + secret + ("cd " * after)[:after]
    tail = _Tail(cap, max(len(s) for s in secrets))
    data = stream.encode()
    for i in range(0, len(data), chunk):
        tail.feed(data[i : i + chunk])
    text = tail.text([s.encode() for s in secrets])
    assert not any(c in text for c in _SECRET_CHARS), text


def test_run_child_keeps_a_bounded_tail(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('y' * 100000 + ' end-of-output'); sys.exit(4)"
    result = run_child(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin"},
        cwd=str(tmp_path),
        timeout=10,
        tail_bytes=100,
    )
    assert result.exit_code == 4
    assert result.tail.endswith("end-of-output") and len(result.tail) < 200


def test_a_program_that_does_not_exist_fails_cleanly(tmp_path: Path) -> None:
    result = run_child(
        ["opsgate-no-such-program"], env={"PATH": "/usr/bin:/bin"}, cwd=None, timeout=5
    )
    assert result.exit_code is None and result.error is not None
    assert "cannot run" in result.error


def test_secrets_from_the_gates_own_store_configured_in_opsgate_yaml(tmp_path: Path) -> None:
    """The real embedded secret backend, wired by Gate.open: a secret written through the
    gate reaches the child's environment and nothing else."""
    from opsgate.secrets.sdk import write_secret

    state, helm = tmp_path / "state", tmp_path / "helm"
    state.mkdir()
    helm.mkdir()
    config = {
        "deploy": {
            "commands": {
                "staging": helm_env(helm, secrets={"DB_PASSWORD": "staging/db/password"}),
            }
        }
    }
    (state / "opsgate.yaml").write_text(json.dumps(config))
    scope = ["deploy:staging", "write:secrets/staging", "read:secrets/staging"]
    with opsgate.Gate.open(state) as gate:
        agent = gate.register_agent("helmsman", scope, sponsor=SPONSOR, trust_score=900)
        token = gate.credential_manager.issue_credential(agent.did, scope).token
        write_secret(gate, token, "staging/db/password", DB_PASSWORD)
        write_secret(gate, token, "staging/api/key", API_KEY)
        (helm / "behaviour.json").write_text(
            json.dumps({"print": ["DB_PASSWORD", "OPSGATE_SECRET_STAGING_API_KEY"]})
        )
        op = Operation("deploy", "staging/web", {"version": "1", "secrets": ["staging/api/key"]})
        outcome = gate.execute(token, op)
        assert outcome.status == "succeeded", outcome.summary
        call = json.loads((helm / "calls.jsonl").read_text().splitlines()[-1])
        assert call["env"]["DB_PASSWORD"] == DB_PASSWORD
        assert call["env"]["OPSGATE_SECRET_STAGING_API_KEY"] == API_KEY
        stored = database_text(gate)
        for value in (DB_PASSWORD, API_KEY):
            assert value not in outcome.detail["command"]["output_tail"]
            assert value not in stored
        # A secret that does not exist: refused before the command runs.
        op = Operation("deploy", "staging/web", {"version": "2", "secrets": ["staging/nope"]})
        err = refused(opsgate.RunRefused, gate.execute, token, op)
        assert err.code == "secrets_unavailable"
        assert len((helm / "calls.jsonl").read_text().splitlines()) == 1
