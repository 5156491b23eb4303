"""Child process for the browser test: an agent holding only its key file deploys
app-web to staging, then to production, waits for a human approval in the web UI,
resumes and prints one JSON line per step."""

from __future__ import annotations

import json
import sys

from opsgate import Operation
from opsgate.client import RemoteGate


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def main() -> None:
    url, key_file, artifact, version = sys.argv[1:5]
    release = {"version": version, "artifact": artifact}
    with RemoteGate(url, agent_key=key_file) as gate:
        cred = gate.credential(["deploy:staging", "deploy:production"])
        staging = gate.execute(cred, Operation("deploy", "staging/app-web", release))
        say(step="staging", status=staging.status)
        pending = gate.execute(cred, Operation("deploy", "production/app-web", release))
        say(step="production", status="approval_pending", approval_id=pending.approval_id)
        decided = gate.wait_for_approval(pending.approval_id, timeout=120)
        say(step="decided", status=decided.status)
        done = gate.resume(pending.approval_id, cred)
        say(step="resumed", status=done.status)


if __name__ == "__main__":
    main()
