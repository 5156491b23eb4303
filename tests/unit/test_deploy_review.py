"""Deploy findings of a security review: a trickling health endpoint, artifacts whose
paths outgrow PATH_MAX, a command-backend rollback that failed its health check, and
pruning and promotion rules."""

from __future__ import annotations

import errno
import glob
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from deploy_world import FAST, SPONSOR, HealthServer, deploy_world
from test_deploy_command import command_world

import opsgate
from opsgate.operations.artifacts import MAX_PATH_BYTES, remove_tree
from opsgate.operations.base import Operation
from opsgate.operations.deploy import executor as executor_module
from opsgate.operations.deploy import local as local_module
from opsgate.operations.monitor import monitor_operation


class Trickle:
    """An HTTP server on 127.0.0.1 sending its answer one byte every `gap` seconds
    (each read well under the probe timeout), for `total` seconds."""

    def __init__(self, gap: float = 0.1, total: float = 6.0) -> None:
        self.gap, self.total = gap, total
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/healthz"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: " + b"a" * 100_000
        started = time.monotonic()
        try:
            conn.recv(65536)
            for i in range(len(data)):
                if self.stop.is_set() or time.monotonic() - started > self.total:
                    break
                conn.sendall(data[i : i + 1])
                time.sleep(self.gap)
            conn.sendall(b"\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


# -- a probe ends by its wall-clock limit ----------------------------------------------------------


def test_a_trickling_health_endpoint_cannot_hold_the_deploy_past_its_deadline(
    tmp_path: Path,
) -> None:
    trickle = Trickle()
    check: dict[str, Any] = {"url": trickle.url, **FAST}  # 0.3 s per probe, deadline 1.5 s
    try:
        with deploy_world(tmp_path, apps={"web": {"health": {"staging": check}}}) as w:
            started = time.monotonic()
            out = w.deploy("staging", "1.0")
            took = time.monotonic() - started
            # Unbounded, the probe would last as long as the trickle (6 s); the margin is
            # for a loaded machine.
            assert took < FAST["deadline_seconds"] + 2.5, took
            assert out.status == "failed" and "inconclusive" in out.summary
            assert w.current("staging") is None
            # the lock is free: the next deploy runs (and is cut short the same way)
            again = w.deploy("staging", "1.1")
            assert again.status == "failed" and "inconclusive" in again.summary
            scope = ["read:monitoring/staging/web"]
            watcher = w.gate.register_agent("watcher", scope, sponsor=SPONSOR, trust_score=900)
            token = w.gate.credential_manager.issue_credential(watcher.did, scope).token
            started = time.monotonic()
            view = w.gate.execute(token, monitor_operation("staging/web", "health"))
            assert time.monotonic() - started < FAST["deadline_seconds"] + 2.5
            assert "inconclusive" in view.summary
    finally:
        trickle.close()


def test_two_probes_at_once_on_one_client_each_end_by_their_own_limit() -> None:
    """A deploy's probe and a monitoring view can share the app's client at once: a
    long probe's limit must not stretch a short one's (nor the other way round)."""
    from opsgate.operations.deploy.health import http_probe

    trickle = Trickle(gap=0.05, total=8.0)
    probe = http_probe(trickle.url, (200,))
    took: dict[str, float] = {}

    def run(name: str, timeout: float) -> None:
        started = time.monotonic()
        result = probe(timeout)
        took[name] = time.monotonic() - started
        assert result.status == "inconclusive"

    try:
        long = threading.Thread(target=run, args=("long", 3.0))
        long.start()
        time.sleep(0.2)
        run("short", 0.4)
        long.join()
        # Each by its own limit (0.4 s, 3 s), far from the other's and from the
        # trickle's 8 s; the margins are for a loaded machine.
        assert took["short"] < 2.0, took
        assert 2.5 < took["long"] < 6.0, took
    finally:
        probe.close()
        trickle.close()


# -- trees deeper than PATH_MAX ----------------------------------------------------------------


def deep_tree(parent: Path, levels: int = 17, width: int = 250) -> Path:
    """A directory nested `levels` deep with `width`-byte names (each name legal, the
    whole path longer than PATH_MAX), built through descriptors."""
    top = parent / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(levels):
        name = chr(ord("a") + i % 26) * width
        os.mkdir(name, 0o755, dir_fd=fd)
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = sub
    leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"hello")
    os.close(leaf)
    os.chmod("leaf.txt", 0o400, dir_fd=fd)
    os.fchmod(fd, 0o500)  # read-only directories on the way, too
    os.close(fd)
    return top


def test_an_artifact_with_paths_over_the_limit_is_refused_typed_before_a_copy(
    tmp_path: Path,
) -> None:
    with deploy_world(tmp_path, keep_releases=1) as w:
        deep = deep_tree(w.artifacts)
        with pytest.raises(opsgate.OpsgateError) as info:
            w.deploy("staging", "1", artifact=str(deep))
        assert info.value.code == "artifact_invalid"
        assert str(MAX_PATH_BYTES) in str(info.value)
        assert w.on_disk("staging") == [] and w.executor.history("staging", "web") == []
        assert w.deploy("staging", "2").status == "succeeded"
        remove_tree(deep)


def test_command_backend_refuses_a_deep_artifact_and_leaves_no_copy(tmp_path: Path) -> None:
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "opsgate-deploy-*")))
    with command_world(tmp_path) as w:
        deep = deep_tree(w.artifacts)
        with pytest.raises(opsgate.OpsgateError) as info:
            w.deploy("staging", "1", artifact=str(deep))
        assert info.value.code == "artifact_invalid"
        assert w.calls() == []
        remove_tree(deep)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "opsgate-deploy-*"))) <= before


def test_remove_tree_removes_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    deep = deep_tree(tmp_path)
    remove_tree(deep)
    assert not deep.exists()
    remove_tree(deep)  # missing is fine
    single = tmp_path / "f"
    single.write_text("x")
    remove_tree(single)
    assert not single.exists()


def failing_remove(path: Path) -> None:
    raise OSError(errno.ENAMETOOLONG, "File name too long", str(path))


def test_a_failed_prune_never_fails_a_healthy_deploy_nor_stops_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with deploy_world(tmp_path, keep_releases=1) as w:
        for v in ("1", "2"):
            assert w.deploy("staging", v).status == "succeeded"
        monkeypatch.setattr(local_module, "remove_tree", failing_remove)
        out = w.deploy("staging", "3")  # prunes 1: its trash cannot be removed
        assert out.status == "succeeded", out.summary
        assert w.current("staging") == "3"
        row = w.executor.history("staging", "web", 1)[0]
        assert row.status == "succeeded" and "restored" not in row.summary
        assert w.executor.ledger.lock("staging", "web") is None
        # the trash stays, and neither the next deploy nor recovery raises over it
        assert any(
            n.startswith(".pruned-") for n in os.listdir(w.deployments / "staging/web/releases")
        )
        assert w.deploy("staging", "4").status == "succeeded"
        w.executor.recover()
        monkeypatch.undo()
        w.executor.recover()
        assert w.deploy("staging", "5").status == "succeeded"
        names = os.listdir(w.deployments / "staging/web/releases")
        assert not any(n.startswith(".pruned-") for n in names), names


def test_a_finished_journal_row_is_never_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with command_world(tmp_path) as w:
        w.artifacts.joinpath("web.tar").write_text("web")
        monkeypatch.setattr(executor_module, "remove_tree", failing_remove)
        out = w.deploy("staging", "1", artifact=str(w.artifacts / "web.tar"))
        assert out.status == "succeeded", out.summary
        row = w.executor.ledger.history("staging", "web", 1)[0]
        assert row.status == "succeeded" and row.summary == out.summary
        assert w.executor.ledger.lock("staging", "web") is None
        assert not w.executor.ledger.finish(
            row.id, status="failed", summary="late", health=None, now=time.time()
        )
        assert w.executor.ledger.deployment(row.id).status == "succeeded"  # type: ignore[union-attr]


# -- a command-backend rollback that fails its health check is restored ---------------------------


def test_a_command_rollback_that_fails_its_health_check_restores_what_was_live(
    tmp_path: Path,
) -> None:
    server = HealthServer()
    try:
        check = {"url": server.url, **FAST}
        with command_world(tmp_path, apps={"web": {"health": {"staging": check}}}) as w:
            for v in ("1", "2"):
                assert w.deploy("staging", v).status == "succeeded"
            server.script(503)
            out = w.gate.execute(w.token, Operation("rollback", "staging/web", {"to": "1"}))
            assert out.status == "failed" and "restored 2" in out.summary, out.summary
            rollbacks = [c["argv"] for c in w.calls() if c["argv"][0] == "rollback"]
            assert rollbacks == [["rollback", "web", "--to", "1"], ["rollback", "web", "--to", "2"]]
            assert w.executor.status("staging", "web").current == "2"
            row = w.executor.history("staging", "web", 1)[0]
            assert row.kind == "rollback" and row.status == "failed" and "restored 2" in row.summary
            assert w.executor.ledger.lock("staging", "web") is None
    finally:
        server.close()


# -- pruning keeps proven releases; promotion follows staging's rollbacks --------------------------


def test_releases_that_failed_their_health_gate_are_pruned_before_proven_ones(
    tmp_path: Path,
) -> None:
    with deploy_world(tmp_path, health={}, keep_releases=3) as w:
        for v in ("1", "2", "3"):
            assert w.deploy("staging", v).status == "succeeded"
        w.health.script(503)
        for v in ("4", "5"):
            assert w.deploy("staging", v).status == "failed"
        w.health.script(200)
        assert w.deploy("staging", "6").status == "succeeded"
        assert w.on_disk("staging") == ["2", "3", "6"]
        assert w.rollback("staging", to="2").status == "succeeded"


def test_production_refuses_a_version_staging_rolled_back_away_from(tmp_path: Path) -> None:
    with deploy_world(tmp_path, health={}) as w:
        art2 = w.artifact("web-2.tar", "web 2")
        assert w.deploy("staging", "1").status == "succeeded"
        assert w.deploy("staging", "2", art2).status == "succeeded"
        assert w.rollback("staging", to="1").status == "succeeded"
        with pytest.raises(opsgate.OpsgateError) as info:
            w.deploy("production", "2", art2)
        assert info.value.code == "staging_required"
        assert "rolled back" in str(info.value)
        assert w.deploy("production", "1").status == "succeeded"  # what staging runs
        # deployed to staging again (and passing), it may go on
        assert w.deploy("staging", "2", art2).status == "succeeded"
        assert w.deploy("production", "2", art2).status == "succeeded"
