"""Child process: the deploy-agent of `opsgate.agents` in its own process, holding only
its key file, talking to a real `opsgate serve` over HTTP. Prints each step as a JSON
line as it happens, then the task's result."""

from __future__ import annotations

import json
import sys

from opsgate.agents import DeployAgent, DeployTask, StepLog
from opsgate.client import RemoteGate


def main() -> None:
    url, key_file, artifact = sys.argv[1], sys.argv[2], sys.argv[3]
    with RemoteGate(url, agent_key=key_file) as gate:
        credential = gate.credential(["deploy:staging", "deploy:production"], ttl_minutes=15)
        log = StepLog([lambda e: print(json.dumps(e.to_dict()), flush=True)])
        agent = DeployAgent("deploy-agent", gate, credential, log=log, approval_timeout=60)
        result = agent.deploy(DeployTask("app", "2.0", "production", artifact))
        print(json.dumps({"result": result.status, "did": gate.did}), flush=True)


if __name__ == "__main__":
    main()
