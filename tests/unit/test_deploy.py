"""Deployments through the gate, local backend: releases never change content, production
takes only what passed staging (by the gate's records), a health gate decides after the
switch and puts the previous release back when it does not pass, rollback is an
operation of its own, one run per app holds its lock, old releases are pruned, and a run
that died is repaired from its journal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_world import FAST, World, closed_port_url, deploy_world
from helpers import DATA, audit_events, audit_types
from rich.console import Console

import opsgate
from opsgate.operations.base import Operation, Outcome
from opsgate.operations.deploy import LocalDeployExecutor, RichProgress
from opsgate.store.deployments import LockRecord
from opsgate.store.processes import host_name, process_start

HEALTH_CASES = yaml.safe_load((DATA / "deploy" / "health_cases.yaml").read_text())["cases"]


def refused(fn: Any, *args: Any, **kw: Any) -> opsgate.OpsgateError:
    with pytest.raises(opsgate.OpsgateError) as info:
        fn(*args, **kw)
    return info.value


# -- a release never changes content ---------------------------------------------------------------


def test_a_version_deployed_again_with_another_artifact_is_refused(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        assert w.deploy("staging", "1.0", w.artifact("a.tar", "one")).status == "succeeded"
        before = w.agent.trust_score
        err = refused(w.deploy, "staging", "1.0", w.artifact("b.tar", "two"))
        assert err.code == "release_conflict"
        assert (w.deployments / "staging/web/current/a.tar").read_text() == "one"
        assert w.on_disk("staging") == ["1.0"]
        assert audit_events(w.gate, "operation.refused")[-1]["code"] == "release_conflict"
        assert w.agent.trust_score == before  # a refusal, not a failed deploy
        # The very same artifact again is a redeploy, not a conflict.
        assert w.deploy("staging", "1.0", w.artifact("a.tar", "one")).status == "succeeded"


def test_a_pruned_version_still_names_its_artifact(tmp_path: Path) -> None:
    with deploy_world(tmp_path, keep_releases=1) as w:
        for v in ("1", "2", "3"):
            assert w.deploy("staging", v).status == "succeeded"
        assert w.on_disk("staging") == ["2", "3"]  # 1 pruned
        err = refused(w.deploy, "staging", "1", w.artifact("other.tar", "other"))
        assert err.code == "release_conflict"
        # Its own artifact brings it back.
        assert w.deploy("staging", "1").status == "succeeded"
        assert w.current("staging") == "1"


def test_a_release_changed_on_disk_is_never_switched_to(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        art = w.artifact("a.tar", "one")
        assert w.deploy("staging", "1.0", art).status == "succeeded"
        assert w.deploy("staging", "2.0").status == "succeeded"
        (w.deployments / "staging/web/releases/1.0/a.tar").write_text("tampered")
        assert refused(w.deploy, "staging", "1.0", art).code == "release_conflict"
        assert w.current("staging") == "2.0"


# -- staging before production ---------------------------------------------------------------------


def test_production_needs_the_same_version_and_artifact_in_staging_first(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        art = w.artifact("web.tar", "web 2.0")
        err = refused(w.deploy, "production", "2.0", art)
        assert err.code == "staging_required"
        assert not (w.deployments / "production").exists()  # refused before any I/O
        assert "operation.attempt" not in audit_types(w.gate)
        assert w.deploy("staging", "2.0", art).status == "succeeded"
        # Another artifact under the staged version, or the staged artifact under
        # another version: neither is what staging ran.
        other = w.artifact("web-b.tar", "web 2.0 rebuilt")
        assert refused(w.deploy, "production", "2.0", other).code == "staging_required"
        assert refused(w.deploy, "production", "2.1", art).code == "staging_required"
        assert w.deploy("production", "2.0", art).status == "succeeded"
        assert w.current("production") == "2.0"


def test_a_staging_deploy_that_failed_its_health_check_is_no_evidence(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        art = w.artifact("web.tar", "web 2.0")
        w.health.script(500)
        assert w.deploy("staging", "2.0", art).status == "failed"
        assert refused(w.deploy, "production", "2.0", art).code == "staging_required"


def test_a_later_staging_failure_of_the_same_release_outweighs_its_earlier_pass(
    tmp_path: Path,
) -> None:
    with deploy_world(tmp_path, health={}) as w:
        art = w.artifact("web-1.tar", "web 1")
        assert w.deploy("staging", "1", art).status == "succeeded"
        w.health.script(*[500] * 10)
        assert w.deploy("staging", "1", art).status == "failed"
        w.health.script(*[200] * 10)
        err = refused(w.deploy, "production", "1", art)
        assert err.code == "staging_required" and "failed its latest staging" in err.message
        assert w.current("production") is None
        # Passing staging again makes it promotable.
        assert w.deploy("staging", "1", art).status == "succeeded"
        assert w.deploy("production", "1", art).status == "succeeded"


def test_staging_evidence_cannot_be_forged_with_files(tmp_path: Path) -> None:
    """Releases and a `current` link written by hand (or by anything a deploy puts on
    disk) are not evidence: only the gate's own records of a successful deploy are."""
    with deploy_world(tmp_path) as w:
        art = w.artifact("web.tar", "web 2.0")
        fake = w.deployments / "staging/web/releases/2.0"
        fake.mkdir(parents=True)
        (fake / "web.tar").write_text("web 2.0")
        (w.deployments / "staging/web/current").symlink_to("releases/2.0")
        for name in ("journal", "history.json", ".opsgate-deployments"):
            (w.deployments / "staging/web" / name).write_text('{"status": "succeeded"}')
        assert refused(w.deploy, "production", "2.0", art).code == "staging_required"


def test_the_staging_rule_is_set_per_app(tmp_path: Path) -> None:
    with deploy_world(tmp_path, apps={"web": {"require_staging": False}}) as w:
        assert w.deploy("production", "1.0").status == "succeeded"
    with deploy_world(tmp_path / "b", promotions={}) as w:  # no promotions at all
        assert w.deploy("production", "1.0").status == "succeeded"


def test_a_rollback_needs_no_staging_and_a_deploy_cannot_pose_as_one(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        assert w.promote("1").status == "succeeded"
        assert w.promote("2").status == "succeeded"
        assert w.rollback("production").status == "succeeded"
        assert w.current("production") == "1"


# -- the health gate -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", HEALTH_CASES, ids=[c["name"] for c in HEALTH_CASES])
def test_the_health_gate_decides_after_the_switch(tmp_path: Path, case: dict[str, Any]) -> None:
    settings = dict(case.get("settings", {}))
    healthy = case.get("url") != "closed"
    apps = None
    if not healthy:
        check = {**FAST, **settings, "url": closed_port_url()}
        apps = {"web": {"health": {"staging": check}}}
    with deploy_world(tmp_path, health=settings, apps=apps) as w:
        if healthy:
            w.health.script(case.get("healthy", 200))
            assert w.deploy("staging", "1").status == "succeeded"
            w.health.script(*case["answers"])
        before = w.agent.trust_score
        outcome = w.deploy("staging", "2")
        record = w.executor.history("staging", "web", limit=1)[0]
        assert record.health == case["expect"]
        if case["expect"] == "passed":
            assert outcome.status == "succeeded"
            assert w.current("staging") == "2"
            assert record.status == "succeeded"
        else:
            # Switched back (to nothing, when there was nothing before), failed, charged.
            assert outcome.status == "failed" and outcome.failure_kind == "deployment"
            assert w.current("staging") == ("1" if healthy else None)
            assert record.status == "failed"
            assert w.agent.trust_score == before - 40
            event = audit_events(w.gate, "operation.outcome")[-1]
            assert event["detail"]["health"]["status"] == case["expect"]
        if "min_probes" in case:
            assert outcome.detail["health"]["probes"] >= case["min_probes"]


def test_an_inconclusive_health_result_is_never_a_success(tmp_path: Path) -> None:
    """Timeouts and refusals alone, for as long as the deadline allows: failed."""
    with deploy_world(tmp_path, health={"timeout_seconds": 0.05, "deadline_seconds": 0.5}) as w:
        w.health.script(200)
        assert w.deploy("staging", "1").status == "succeeded"
        w.health.script("hang")
        outcome = w.deploy("staging", "2")
        assert outcome.status == "failed"
        assert outcome.detail["health"]["status"] == "inconclusive"
        assert outcome.detail["health"]["probes"] >= 2
        assert w.current("staging") == "1"
        assert w.executor.ledger.staged("staging", "web", "2", None) is None


def test_a_command_health_check(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(
        "import os, sys, time\n"
        "mode = open(os.path.join(os.environ['OPSGATE_RELEASE_DIR'], 'mode')).read()\n"
        "if mode == 'sleep':\n    time.sleep(5)\n"
        "sys.exit(0 if mode == 'ok' and os.environ['OPSGATE_DEPLOY_VERSION'] else 1)\n"
    )
    check = {**FAST, "command": [sys.executable, str(script)], "deadline_seconds": 1.0}
    apps = {"web": {"health": {"staging": check}}}
    with deploy_world(tmp_path, apps=apps) as w:
        for version, mode, expect in (
            ("1", "ok", "passed"),
            ("2", "fail", "failed"),
            ("3", "sleep", "inconclusive"),
        ):
            d = w.artifacts / f"web-{version}"
            d.mkdir()
            (d / "mode").write_text(mode)
            outcome = w.deploy("staging", version, str(d))
            assert outcome.detail["health"]["status"] == expect, (version, outcome.summary)
            assert w.current("staging") == "1"


def test_a_first_release_that_fails_its_health_check_leaves_nothing_live(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        w.health.script(500)
        assert w.deploy("staging", "1").status == "failed"
        assert w.current("staging") is None
        assert w.on_disk("staging") == ["1"]  # kept (immutable), never live


def test_the_health_check_is_config_never_params(tmp_path: Path) -> None:
    """An agent cannot name a URL or a command for the gate to run."""
    with deploy_world(tmp_path, health={}) as w:
        for extra in (
            {"health_url": "http://169.254.169.254/"},
            {"health": {"url": "http://127.0.0.1:1/"}},
            {"health_command": ["sh", "-c", "id"]},
            {"url": closed_port_url()},
        ):
            err = refused(w.deploy, "staging", "1", **extra)
            assert err.code == "params_invalid"
        assert w.health.requests == 0


def test_a_dry_run_shows_the_health_check_and_runs_nothing(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        art = w.artifact("web.tar", "web")
        op = Operation("deploy", "staging/web", {"version": "1", "artifact": art}, dry_run=True)
        out = w.gate.execute(w.token, op)
        assert out.status == "dry_run"
        steps = out.detail["plan"]["steps"]
        assert any(s.startswith(f"health: GET {w.health.url}") for s in steps)
        assert w.health.requests == 0 and not w.deployments.exists()


# -- rollback --------------------------------------------------------------------------------------


def test_rollback_to_the_previous_release_and_to_a_named_one(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        for v in ("1", "2", "3"):
            assert w.deploy("staging", v).status == "succeeded"
        requests = w.health.requests
        out = w.rollback("staging")
        assert out.status == "succeeded" and w.current("staging") == "2"
        assert w.health.requests > requests  # health-checked like a deploy
        assert w.rollback("staging", to="1").status == "succeeded"
        assert w.current("staging") == "1"
        kinds = [(r.kind, r.version, r.status) for r in w.executor.history("staging", "web")]
        assert kinds[:2] == [("rollback", "1", "succeeded"), ("rollback", "2", "succeeded")]
        attempt = audit_events(w.gate, "operation.attempt")[-1]
        assert attempt["capability"] == "rollback:staging/web"


def test_rollback_refuses_a_missing_or_altered_release(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        assert refused(w.rollback, "staging").code == "release_missing"  # nothing yet
        for v in ("1", "2"):
            assert w.deploy("staging", v).status == "succeeded"
        assert refused(w.rollback, "staging", to="9").code == "release_missing"
        assert refused(w.rollback, "staging", to="2").code == "rollback_to_current"
        release = w.deployments / "staging/web/releases/1"
        (release / "web-1.tar").write_text("web 1 with a backdoor")
        assert refused(w.rollback, "staging").code == "release_corrupted"
        (release / "web-1.tar").write_text("web 1")
        (release / "extra").write_text("added")
        assert refused(w.rollback, "staging", to="1").code == "release_corrupted"
        os.unlink(release / "extra")
        os.chmod(release / "web-1.tar", 0o600)
        assert refused(w.rollback, "staging").code == "release_corrupted"
        assert w.current("staging") == "2"


def test_a_release_altered_after_the_rollback_was_planned_is_refused(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        for v in ("1", "2"):
            assert w.deploy("staging", v).status == "succeeded"
        plan = w.executor.rollback.plan(Operation("rollback", "staging/web", {}))
        (w.deployments / "staging/web/releases/1/web-1.tar").write_text("swapped")
        err = refused(w.executor.rollback.run, plan)
        assert err.code == "release_corrupted"
        assert w.current("staging") == "2"
        assert w.executor.locks() == []


def test_a_rollback_that_fails_its_health_check_is_undone(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        for v in ("1", "2"):
            assert w.deploy("staging", v).status == "succeeded"
        w.health.script(500)
        before = w.agent.trust_score
        out = w.rollback("staging")
        assert out.status == "failed" and out.failure_kind == "deployment"
        assert w.current("staging") == "2"
        assert w.agent.trust_score == before - 40


def test_a_rollback_never_goes_to_a_release_that_failed_its_health_gate(tmp_path: Path) -> None:
    """Release 2 passed staging, then failed production's health gate and was undone: it
    was never live there, so a rollback (which needs no staging, and whose approver
    reads "from 1 to 2") may not bring it back."""
    with deploy_world(tmp_path, health={}) as w:
        assert w.promote("1").status == "succeeded"
        art = w.artifact("web-2.tar", "web 2")
        assert w.deploy("staging", "2", art).status == "succeeded"
        w.health.script(*[500] * 10)
        assert w.deploy("production", "2", art).status == "failed"
        assert w.current("production") == "1" and "2" in w.on_disk("production")
        w.health.script(*[200] * 10)
        err = refused(w.rollback, "production", to="2")
        assert err.code == "release_unproven"
        assert w.current("production") == "1"
        # A release that did pass there is still one to go back to.
        assert w.promote("3", w.artifact("web-3.tar", "web 3")).status == "succeeded"
        assert w.rollback("production", to="1").status == "succeeded"
        assert w.current("production") == "1"


def test_rollback_is_its_own_capability(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        for v in ("1", "2"):
            assert w.deploy("staging", v).status == "succeeded"
        sub = w.agent.delegate(name="deploy-only", capabilities=["deploy:staging"])
        token = w.gate.credential_manager.issue_credential(sub.did, ["deploy:staging"]).token
        err = refused(w.gate.execute, token, Operation("rollback", "staging/web", {}))
        assert err.code == "operation_denied"
        assert w.current("staging") == "2"


def test_a_production_rollback_needs_approval_under_the_example_policy(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    with deploy_world(tmp_path, policies=root / "examples" / "policies.yaml", trust=950) as w:
        john = w.gate.approvals.add_approver("john@company.com")
        for v in ("1", "2"):
            art = w.artifact(f"web-{v}.tar", f"web {v}")
            assert w.deploy("staging", v, art).status == "succeeded"
            pending = w.deploy("production", v, art)
            assert isinstance(pending, opsgate.PendingApproval)
            w.gate.approvals.approve(pending.approval_id, approver="john@company.com", token=john)
            assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"
        pending = w.rollback("production")
        assert isinstance(pending, opsgate.PendingApproval)
        assert "from 2 to 1" in pending.request.plan["summary"]
        w.gate.approvals.approve(pending.approval_id, approver="john@company.com", token=john)
        assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"
        assert w.current("production") == "1"


def test_an_approved_rollback_is_refused_if_production_moved_meanwhile(tmp_path: Path) -> None:
    """The approval covered 'from 2 to 1'; at 3 the plan differs and the approval no
    longer matches."""
    root = Path(__file__).resolve().parents[2]
    with deploy_world(tmp_path, policies=root / "examples" / "policies.yaml", trust=950) as w:
        john = w.gate.approvals.add_approver("john@company.com")

        def ship(v: str) -> None:
            art = w.artifact(f"web-{v}.tar", f"web {v}")
            assert w.deploy("staging", v, art).status == "succeeded"
            pending = w.deploy("production", v, art)
            w.gate.approvals.approve(pending.approval_id, approver="john@company.com", token=john)
            assert w.gate.resume(pending.approval_id, w.token).status == "succeeded"

        ship("1")
        ship("2")
        pending = w.rollback("production", to="1")
        w.gate.approvals.approve(pending.approval_id, approver="john@company.com", token=john)
        ship("3")
        assert refused(w.gate.resume, pending.approval_id, w.token).code == "digest_mismatch"
        assert w.current("production") == "3"


# -- retention -------------------------------------------------------------------------------------


def test_the_last_n_releases_are_kept_never_the_current_or_previous(tmp_path: Path) -> None:
    with deploy_world(tmp_path, keep_releases=3) as w:
        for v in ("1", "2", "3", "4", "5"):
            assert w.deploy("staging", v).status == "succeeded"
        assert w.on_disk("staging") == ["3", "4", "5"]
        assert w.rollback("staging", to="3").status == "succeeded"  # current 3, previous 5
        for v in ("6", "7"):
            assert w.deploy("staging", v).status == "succeeded"
        # newest three by last deploy: 7, 6, 3; plus 7's previous (6): 4 and 5 go.
        assert w.on_disk("staging") == ["3", "6", "7"]
        releases = w.executor.ledger.releases("staging", "web")
        assert {r.version for r in releases if r.pruned_at is not None} == {"1", "2", "4", "5"}
    with deploy_world(tmp_path / "one", keep_releases=1) as w:
        for v in ("1", "2", "3"):
            assert w.deploy("staging", v).status == "succeeded"
        assert w.on_disk("staging") == ["2", "3"]  # the previous survives keep_releases=1
        assert w.rollback("staging").status == "succeeded"


def test_the_default_keeps_five(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        for v in range(1, 8):
            assert w.deploy("staging", str(v)).status == "succeeded"
        assert w.on_disk("staging") == ["3", "4", "5", "6", "7"]


# -- the deploy lock -------------------------------------------------------------------------------


def _other_lock(
    host: str, started: float, expires: float, *, pid: int = 1, start: str = "", message: str = "x"
) -> LockRecord:
    """Another agent's lock on staging/web, held by `pid` on `host`."""
    return LockRecord(
        env="staging",
        app="web",
        token="t" * 32,
        holder_did="did:key:z6MkOther",
        holder_name="other-agent",
        capability="deploy:staging/web",
        message=message,
        deployment_id=None,
        host=host,
        pid=pid,
        process_start=start,
        started_at=started,
        expires_at=expires,
    )


def _lock(w: World, *, pid: int, start: str, host: str | None = None, message: str = "x") -> None:
    lock = _other_lock(host or host_name(), 1.0, 2.0, pid=pid, start=start, message=message)
    assert w.executor.ledger.take_lock(lock, 3.0).acquired


def _journal_run(w: World, *, version: str, previous: str, pid: int, phase: str) -> int:
    """The journal row of a run (holding the lock `_lock` took) killed in `phase`."""
    ledger = w.executor.ledger
    dep = ledger.start(
        env="staging",
        app="web",
        version=version,
        kind="deploy",
        backend="local",
        digest="sha256:x",
        previous_version=previous,
        agent_did="did:key:z6MkDead",
        agent_name="dead-agent",
        capability="deploy:staging/web",
        approval_id=None,
        message=None,
        lock_token="t" * 32,
        pid=pid,
        now=5.0,
    )
    ledger.set_phase(dep, phase)
    return dep


def test_another_hosts_expired_lock_is_taken_over_and_its_dead_run_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate restarted in a recreated container has another host name: the run its
    killed predecessor left (mid-switch) is repaired by whichever deploy takes over the
    expired lock, not left running for ever."""
    import opsgate.store.deployments as deployments

    with deploy_world(tmp_path) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        ledger = w.executor.ledger
        _lock(w, pid=4242, start="1", host="pod-a")  # expired at 2.0
        with monkeypatch.context() as m:
            m.setattr(deployments, "host_name", lambda: "pod-a")
            dead = _journal_run(w, version="2", previous="1", pid=4242, phase="switching")
        assert [r.id for r in ledger.running(host="pod-a")] == [dead]
        out = w.deploy("staging", "3")
        assert out.status == "succeeded", out.summary
        assert ledger.running() == []
        (repaired,) = audit_events(w.gate, "operation.outcome")[-1]["detail"]["recovered"]
        assert repaired["deployment"] == dead and "restored 1" in repaired["summary"]
        assert w.current("staging") == "3"


def test_a_held_lock_refuses_with_its_holder_and_charges_nothing(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            _lock(w, pid=holder.pid, start=process_start(holder.pid), message="hotfix INC-42")
            before = w.agent.trust_score
            err = refused(w.deploy, "staging", "1")
            assert isinstance(err, opsgate.RunRefused) and err.code == "deploy_locked"
            assert "other-agent" in err.message and "hotfix INC-42" in err.message
            assert err.detail["holder"]["holder_did"] == "did:key:z6MkOther"
            assert w.agent.trust_score == before
            outcome = audit_events(w.gate, "operation.outcome")[-1]
            assert outcome["outcome"] == "refused" and outcome["code"] == "deploy_locked"
            assert "trust" not in outcome or outcome["trust"] is None
            status = w.executor.status("staging", "web")
            assert status.lock is not None and status.lock.holder_name == "other-agent"
            assert status.lock.message == "hotfix INC-42" and not status.lock_stale
            assert not w.deployments.exists()
            # Expiry never frees a lock whose holder on this host is alive.
            assert not status.lock.stale(10**12)
        finally:
            holder.kill()
            holder.wait()
        # Its holder died: the lock is stale and the next deploy takes it over.
        assert w.executor.status("staging", "web").lock_stale
        assert w.deploy("staging", "1").status == "succeeded"
        assert w.executor.locks() == []


def test_a_lock_held_from_another_host_frees_at_its_expiry(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        _lock(w, pid=1, start="", host="elsewhere.invalid")
        lock = w.executor.status("staging", "web").lock
        assert lock is not None and not lock.stale(1.5) and lock.stale(2.0)
        assert w.deploy("staging", "1").status == "succeeded"  # now >> expires_at=2.0


def test_a_run_renews_its_lock_so_another_host_never_takes_over_a_long_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's expiry is a lease the run renews: a deploy that outlasts it (a long
    health gate) keeps its lock against another host, which takes over only a lock
    whose holder stopped renewing."""
    import opsgate.store.deployments as deployments

    with deploy_world(tmp_path, health={}, lock_expiry_seconds=0.6) as w:
        ledger = w.executor.ledger
        seen: list[bool] = []

        def slow_health(event: Any) -> None:
            if event.step == "health" and not seen:
                time.sleep(1.5)  # two and a half leases
                with monkeypatch.context() as m:
                    m.setattr(deployments, "host_name", lambda: "pod-b")
                    now = time.time()
                    taken = ledger.take_lock(_other_lock("pod-b", now, now + 60), now)
                seen.append(taken.acquired)

        w.executor.progress = slow_health
        assert w.deploy("staging", "1").status == "succeeded"
        assert seen == [False]  # refused: the lock was renewed meanwhile
        assert w.current("staging") == "1" and ledger.locks() == []


def test_a_run_whose_lock_was_taken_over_changes_nothing_more(tmp_path: Path) -> None:
    """Fencing: a run that stalled past its lease and lost its lock to another host
    stops before its next step (no switch, no restore) and leaves the new holder's
    lock in place."""
    with deploy_world(tmp_path) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        ledger = w.executor.ledger

        def taken_over(event: Any) -> None:
            if event.step == "copy" and ledger.lock("staging", "web") is not None:
                mine = ledger.lock("staging", "web")
                assert mine is not None and mine.token != "t" * 32
                ledger.drop_lock("staging", "web", mine.token)
                _lock(w, pid=1, start="", host="pod-b")  # the new holder

        w.executor.progress = taken_over
        out = w.deploy("staging", "2")
        assert out.status == "failed" and "taken over" in out.summary
        assert audit_events(w.gate, "operation.outcome")[-1]["code"] == "deploy_lock_lost"
        assert w.current("staging") == "1"  # never switched
        (lock,) = ledger.locks()
        assert lock.host == "pod-b"  # the new holder's lock is left alone
        (last,) = ledger.history("staging", "web", limit=1)
        assert last.status == "failed" and "left to the lock's new holder" in last.summary


def test_a_run_that_lost_its_lock_during_the_health_gate_claims_no_success(
    tmp_path: Path,
) -> None:
    """A run that stalled in its health gate past its lease: another host took the
    lock over and its recovery put the earlier release back and closed the run. The
    stalled run's passing probe must not report its release live, nor prune under a
    lock that is no longer its own."""
    with deploy_world(tmp_path, health={}, keep_releases=1) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        ledger = w.executor.ledger
        done: list[bool] = []

        def taken_over(event: Any) -> None:
            if event.step == "health" and not done:
                done.append(True)
                mine = ledger.lock("staging", "web")
                assert mine is not None and mine.deployment_id is not None
                ledger.drop_lock("staging", "web", mine.token)
                _lock(w, pid=1, start="", host="pod-b")  # the new holder
                # ... whose recovery restored 1 and closed the stalled run.
                w.executor.releases.switch("staging", "web", "1")  # type: ignore[union-attr]
                ledger.finish(
                    mine.deployment_id,
                    status="interrupted",
                    summary="restored 1",
                    health=None,
                    now=time.time(),
                )

        w.executor.progress = taken_over
        out = w.deploy("staging", "2")
        assert done
        assert out.status == "failed", out.summary
        assert audit_events(w.gate, "operation.outcome")[-1]["code"] == "deploy_lock_lost"
        assert w.current("staging") == "1"
        assert (w.deployments / "staging/web/releases/1").is_dir()  # not pruned
        (lock,) = ledger.locks()
        assert lock.host == "pod-b"
        (last,) = ledger.history("staging", "web", limit=1)
        assert last.status == "interrupted" and last.summary == "restored 1"


def test_a_reused_pid_does_not_keep_a_dead_holders_lock(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        _lock(w, pid=os.getpid(), start="not-my-start-time")
        assert w.executor.status("staging", "web").lock_stale
        assert w.deploy("staging", "1").status == "succeeded"


# -- journal and recovery (in-process; real SIGKILL in tests/integration) --------------------------


def test_an_unfinished_journal_is_repaired_when_the_executor_is_registered(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        assert w.deploy("staging", "2").status == "succeeded"
        # What a process killed during the health check of 3 leaves behind.
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        pid = int(dead.stdout)
        _lock(w, pid=pid, start="gone")
        (w.deployments / "staging/web/releases/3").mkdir()
        (w.deployments / "staging/web/releases/.partial-4.abcd").mkdir()
        _journal_run(w, version="3", previous="2", pid=pid, phase="health")
        w.executor.releases.switch("staging", "web", "3")  # type: ignore[union-attr]
    with opsgate.Gate.open(tmp_path / "state") as gate:
        executor = LocalDeployExecutor(tmp_path / "deployments", artifact_roots=[w.artifacts])
        gate.register_executor("deploy", executor)
        assert (tmp_path / "deployments/staging/web/current").readlink() == Path("releases/2")
        event = audit_events(gate, "operation.recovered")[-1]
        assert event["actor"] == "gate" and event["capability"] == "deploy:staging/web"
        assert event["phase"] == "health" and "restored 2" in event["summary"]
        assert event["agent"] == "did:key:z6MkDead"
        record = executor.history("staging", "web", limit=1)[0]
        assert record.status == "interrupted" and record.version == "3"
        assert executor.locks() == []
        assert not (tmp_path / "deployments/staging/web/releases/.partial-4.abcd").exists()
        # Registering again (or the rollback executor) finds nothing more to do.
        gate.register_executor("rollback", executor.rollback)
        assert len(audit_events(gate, "operation.recovered")) == 1


def test_a_live_run_in_another_process_is_not_repaired(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        assert w.deploy("staging", "1").status == "succeeded"
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            _lock(w, pid=holder.pid, start=process_start(holder.pid))
            ledger = w.executor.ledger
            dep = ledger.start(
                env="staging",
                app="web",
                version="2",
                kind="deploy",
                backend="local",
                digest=None,
                previous_version="1",
                agent_did="did:key:z6MkLive",
                agent_name="live",
                capability="deploy:staging/web",
                approval_id=None,
                message=None,
                lock_token="t" * 32,
                pid=holder.pid,
                now=5.0,
            )
            ledger.set_phase(dep, "health")
            assert w.executor.recover() == []
            assert ledger.deployment(dep).status == "running"  # type: ignore[union-attr]
        finally:
            holder.kill()
            holder.wait()


def test_an_interrupted_run_puts_back_what_was_live(tmp_path: Path) -> None:
    """KeyboardInterrupt during the health check: restored, journal closed, lock freed."""
    with deploy_world(tmp_path, health={}) as w:
        assert w.deploy("staging", "1").status == "succeeded"

        calls: list[Any] = []

        def sleep_then_interrupt(seconds: float) -> None:
            calls.append(seconds)
            raise KeyboardInterrupt

        w.executor._sleep = sleep_then_interrupt
        w.health.script(500, 200)
        with pytest.raises(KeyboardInterrupt):
            w.deploy("staging", "2")
        assert calls and w.current("staging") == "1"
        record = w.executor.history("staging", "web", limit=1)[0]
        assert record.status == "interrupted" and "restored 1" in (record.summary or "")
        assert w.executor.locks() == []
        assert audit_events(w.gate, "operation.outcome")[-1]["outcome"] == "failed"


# -- status, history, progress ---------------------------------------------------------------------


def test_status_and_history_are_read_only_views(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        art = w.artifact("web.tar", "web 1")
        assert w.deploy("staging", "1", art, message="first release").status == "succeeded"
        status = w.executor.status("staging", "web")
        assert status.current == "1" and status.backend == "local"
        assert status.digest is not None and status.digest.startswith("sha256:")
        assert status.lock is None and status.releases == ("1",)
        assert status.last is not None and status.last.message == "first release"
        assert status.last.agent_name == "deployer" and status.last.health == "passed"
        assert status.to_dict()["current"] == "1"
        assert [r.version for r in w.executor.history("staging", "web")] == ["1"]
        assert w.executor.check_health("staging", "web").status == "passed"
        w.health.script(500)
        assert w.executor.check_health("staging", "web").status == "failed"
        assert w.current("staging") == "1"  # a probe changes nothing
        with pytest.raises(opsgate.OperationError) as info:
            w.executor.status("staging", "..")
        assert info.value.code == "operation_invalid"


def test_progress_reports_copy_switch_health_and_renders_with_rich(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        big = w.artifact("big.bin", os.urandom(3 * 1024 * 1024))
        assert w.deploy("staging", "1", big).status == "succeeded"
        steps = [e.step for e in w.events]
        assert steps[0] == "copy" and "switch" in steps and "health" in steps
        assert steps[-1] == "done"
        copies = [e for e in w.events if e.step == "copy"]
        assert copies[-1].done == copies[-1].total == 3 * 1024 * 1024
        out = StringIO()
        console = Console(file=out, width=100, force_terminal=False)
        with RichProgress(console) as show:
            w.executor.progress = show
            assert w.deploy("staging", "2", w.artifact("b.bin", b"x" * 2048)).status == "succeeded"
        text = out.getvalue()
        assert "copy" in text and "health" in text


def test_a_broken_progress_hook_never_fails_a_deploy(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:

        def broken(event: Any) -> None:
            raise RuntimeError("display gone")

        w.executor.progress = broken
        assert w.deploy("staging", "1").status == "succeeded"


# -- names that reach paths ------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["staging/..", "../web", "staging/.hidden", "staging/-x"])
def test_environment_and_app_are_plain_names(tmp_path: Path, resource: str) -> None:
    with deploy_world(tmp_path) as w:
        scope = [f"deploy:{resource}"]
        try:
            sub = w.gate.register_agent("odd", scope, sponsor="x@company.com", trust_score=900)
        except opsgate.OpsgateError:
            return  # the capability grammar refused it already
        token = w.gate.credential_manager.issue_credential(sub.did, scope).token
        art = w.artifact("a.tar", "a")
        err = refused(
            w.gate.execute, token, Operation("deploy", resource, {"version": "1", "artifact": art})
        )
        assert err.code == "operation_invalid"
        assert not w.deployments.exists()


@pytest.mark.parametrize("version", ["../x", "-rf", ".hidden", "a/b", "1 2", "", "a" * 65, "é"])
def test_a_version_is_a_plain_name(tmp_path: Path, version: str) -> None:
    with deploy_world(tmp_path) as w:
        art = w.artifact("a.tar", "a")
        assert refused(w.deploy, "staging", version, art).code == "params_invalid"
        assert not w.deployments.exists()


def test_the_message_is_one_printable_line(tmp_path: Path) -> None:
    with deploy_world(tmp_path) as w:
        for bad in ("two\nlines", "\x1b[31mred", "x" * 201):
            assert refused(w.deploy, "staging", "1", message=bad).code == "params_invalid"


def test_outcome_fields_reach_the_audit(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        outcome = w.deploy("staging", "1")
        assert isinstance(outcome, Outcome) and outcome.status == "succeeded"
        event = audit_events(w.gate, "operation.outcome")[-1]
        assert event["detail"]["health"]["status"] == "passed"


# -- configuration -------------------------------------------------------------------------------


def test_deploy_and_rollback_from_opsgate_yaml(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "artifacts").mkdir()
    check = tmp_path / "check.py"
    check.write_text("import sys; sys.exit(0)\n")
    (state / "opsgate.yaml").write_text(
        yaml.safe_dump(
            {
                "deploy": {
                    "root": "../deployments",
                    "artifact_roots": ["../artifacts"],
                    "keep_releases": 2,
                    "apps": {
                        "web": {
                            "require_staging": True,
                            "health": {
                                "staging": {
                                    "command": [sys.executable, str(check)],
                                    "interval_seconds": 0,
                                }
                            },
                        }
                    },
                }
            }
        )
    )
    with opsgate.Gate.open(state) as gate:
        agent = gate.register_agent("a", ["deploy:staging", "rollback:staging"], sponsor=SP)
        token = gate.credential_manager.issue_credential(
            agent.did, ["deploy:staging", "rollback:staging"]
        ).token
        for v in ("1", "2", "3"):
            art = tmp_path / "artifacts" / f"w{v}"
            art.write_text(v)
            out = gate.execute(
                token, Operation("deploy", "staging/web", {"version": v, "artifact": str(art)})
            )
            assert out.status == "succeeded" and out.detail["health"]["status"] == "passed"
        assert sorted(
            p.name for p in (tmp_path / "deployments/staging/web/releases").iterdir()
        ) == [
            "2",
            "3",
        ]
        assert gate.execute(token, Operation("rollback", "staging/web", {})).status == "succeeded"


SP = "platform-lead@company.com"


@pytest.mark.parametrize(
    "check",
    [
        {"url": "http://user:pw@127.0.0.1/healthz"},  # credentials would show in plans
        {"url": "ftp://127.0.0.1/"},
        {"url": "http:///nohost"},
        {"url": "http://127.0.0.1/", "command": ["true"]},
        {},
        {"command": ["./check.sh"]},  # relative: would run a file of the release
        {"command": ["bin/check"]},
        {"command": ["check", "{version}"]},
        {"command": "curl 'unterminated"},
        {"url": "http://127.0.0.1/", "timeout_seconds": 10, "deadline_seconds": 5},
        {"url": "http://127.0.0.1/", "expect_status": [99]},
        {"url": "http://127.0.0.1/", "failure_threshold": 0},
    ],
)
def test_a_bad_health_check_is_a_config_error(tmp_path: Path, check: dict[str, Any]) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(opsgate.ConfigError) as info:
        LocalDeployExecutor(
            tmp_path / "d",
            artifact_roots=[tmp_path / "a"],
            apps={"web": {"health": {"staging": check}}},
        )
    assert info.value.code == "config_invalid"
    assert "pw" not in info.value.message


def test_the_readme_deploy_configuration_loads() -> None:
    from opsgate.config import DeployConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\n", readme.index("## Deployments")) + len("```yaml\n")
    config = DeployConfig.model_validate(
        yaml.safe_load(readme[start : readme.index("```", start)])["deploy"]
    )
    assert config.commands["production"].command[:3] == ("helm", "upgrade", "--install")
    assert config.apps["app-web"].health["production"].successes == 2


@pytest.mark.parametrize(
    "deploy",
    [
        {"promotions": {"prod": "staging"}},  # an alias: requests arrive canonical
        {"promotions": {"production": "qa"}},  # not declared
        {"apps": {"web": {"health": {"Production": {"url": "http://127.0.0.1/"}}}}},
        {"apps": {"Web": {}}},
        {"commands": {"prd": {"command": "helm"}}},
    ],
)
def test_deploy_settings_name_declared_environments(tmp_path: Path, deploy: dict[str, Any]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = {
        "environments": {"production": {"aliases": ["prod"], "protected": True}, "staging": {}},
        "deploy": {"root": "../deployments", "artifact_roots": ["../artifacts"], **deploy},
    }
    (tmp_path / "artifacts").mkdir()
    (state / "opsgate.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(opsgate.ConfigError) as info:
        opsgate.Gate.open(state)
    assert info.value.code == "config_invalid"
    assert "declared environment" in info.value.message or "lower case" in info.value.message
    config["deploy"] = {"root": "../deployments", "artifact_roots": ["../artifacts"]}
    (state / "opsgate.yaml").write_text(yaml.safe_dump(config))
    opsgate.Gate.open(state).close()  # the same gate with canonical names opens
