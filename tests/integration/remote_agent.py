"""Child process: an agent holding only its key file, talking to the gate over HTTP.

Prints one JSON line per step; waits for a human approval of the production deploy.
"""

from __future__ import annotations

import json
import sys

from opsgate import Operation
from opsgate.client import RemoteGate

RELEASE = {"version": "2.4.1", "artifact_digest": "sha256:" + "ab" * 32}


def say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def main() -> None:
    url, key_file = sys.argv[1], sys.argv[2]
    with RemoteGate(url, agent_key=key_file) as gate:
        cred = gate.credential(["deploy:staging", "deploy:production"])
        staging = gate.execute(cred, Operation("deploy", "staging/app-web", RELEASE))
        say(step="staging", status=staging.status)
        pending = gate.execute(cred, Operation("deploy", "production/app-web", RELEASE))
        say(step="production", status="approval_pending", approval_id=pending.approval_id)
        decided = gate.wait_for_approval(pending.approval_id, timeout=120)
        say(step="decided", status=decided.status)
        done = gate.resume(pending.approval_id, cred)
        say(step="resumed", status=done.status, seq=done.audit_seq)
        decision = gate.authorize(cred, "deploy:staging/app-web")
        say(step="authorize", effect=decision.effect)


if __name__ == "__main__":
    main()
