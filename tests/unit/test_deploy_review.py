"""Deploy findings of a security review: a trickling health endpoint, artifacts whose
paths outgrow PATH_MAX, a command-backend rollback that failed its health check, and
pruning and promotion rules."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from deploy_world import FAST, SPONSOR, deploy_world

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
            assert took < FAST["deadline_seconds"] + 1.0, took
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
            assert time.monotonic() - started < FAST["deadline_seconds"] + 1.0
            assert "inconclusive" in view.summary
    finally:
        trickle.close()
