"""A separate gate process that deploys one release (for the kill and race tests).

Usage: python deploy_child.py SPEC.json ENV VERSION
SPEC: {"state": dir, "database_url": url|null, "root": dir, "artifacts": dir, "apps": {...},
       "token_file": path, "artifact": path, "go_file": path|null,
       "pause_at": step|null, "pause_file": path|null, "resume_file": path|null}

It waits for `go_file` to exist (so racing processes start together), then runs the
deploy through the gate. With `pause_at`, the first progress event of that step
writes `pause_file` and waits: forever (to be killed), or until `resume_file` exists.
Prints one JSON line: {"status": ..., "summary": ..., "code": ..., "holder": ...}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import opsgate
from opsgate.operations.base import Operation
from opsgate.operations.deploy import DeployProgress, LocalDeployExecutor


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    env, version = sys.argv[2], sys.argv[3]
    gate = opsgate.Gate.open(spec["state"], database_url=spec.get("database_url"))
    executor = LocalDeployExecutor(
        spec["root"], artifact_roots=[spec["artifacts"]], apps=spec.get("apps") or {}
    )
    paused = False

    def pause(event: DeployProgress) -> None:
        nonlocal paused
        if paused or event.step != spec.get("pause_at"):
            return
        if event.step == "copy" and not event.done:
            return  # pause once bytes have been written
        paused = True
        Path(spec["pause_file"]).write_text("paused")
        resume = spec.get("resume_file")
        while resume is None or not Path(resume).exists():
            time.sleep(0.02)

    executor.progress = pause
    gate.register_executor("deploy", executor)
    token = Path(spec["token_file"]).read_text().strip()
    go = spec.get("go_file")
    while go is not None and not Path(go).exists():
        time.sleep(0.005)
    op = Operation("deploy", f"{env}/web", {"version": version, "artifact": spec["artifact"]})
    result: dict[str, Any]
    try:
        outcome = gate.execute(token, op)
        result = {"status": outcome.status, "summary": outcome.summary, "code": None}
    except opsgate.OpsgateError as exc:
        result = {
            "status": "error",
            "summary": exc.message,
            "code": exc.code,
            "holder": exc.detail.get("holder"),
        }
    finally:
        gate.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
