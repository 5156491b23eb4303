"""Child process: concurrent remote agents driving two replicas through one balancer.

Reads a plan from stdin ({"backends", "agents": {name: key file}, "ops",
"approver", "approver_token"}); each agent runs in its own thread with its own
RemoteGate, holding only its key, and performs `ops` operations:
- authorize and staging deploys, sent to the replicas in turn;
- every 10th (k % 10 == 5): one authorize request, one proof, sent to both
  replicas at the same moment: exactly one may be accepted;
- every 10th (k % 10 == 0): a production deploy that waits for approval, approved
  over HTTP by the approver on one replica, then resumed on both replicas at the
  same moment: exactly one may run.
Prints one JSON object: counts, every violation found, the approval ids, the time.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from replica_helpers import DEPLOY_SCOPE, EXTERNAL, Balancer
from server_helpers import basic

from opsgate import Operation, OpsgateError
from opsgate.client import RemoteGate, RemotePendingApproval
from opsgate.credentials.proof import ProofRequest
from opsgate.identity.keys import read_private_key
from opsgate.server.dpop import make_dpop

CAP = "deploy:staging/app-web"
DIGEST = "sha256:" + "ab" * 32


class Run:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.backends = [(h, int(p)) for h, p in plan["backends"]]
        self.urls = [f"http://{h}:{p}" for h, p in self.backends]
        self.ops = int(plan["ops"])
        self.approver = basic(plan["approver"], plan["approver_token"])
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []
        self.approvals: list[str] = []
        self.lock = threading.Lock()
        self.pairs = ThreadPoolExecutor(max_workers=2 * len(plan["agents"]))
        self.http = httpx.Client(timeout=60)

    def note(self, what: str, violation: str | None = None) -> None:
        with self.lock:
            self.counts[what] += 1
            if violation is not None:
                self.violations.append(violation)

    def at_once(self, calls: list[Any]) -> list[Any]:
        """Run the calls at the same moment (a barrier), each in its own thread."""
        barrier = threading.Barrier(len(calls))

        def one(call: Any) -> Any:
            barrier.wait()
            try:
                return call()
            except OpsgateError as exc:
                return exc

        return list(self.pairs.map(one, calls))

    def agent(self, name: str, key_file: str) -> None:
        key = read_private_key(Path(key_file))
        balancer = Balancer(self.backends)  # its own: closing a client closes its transport
        with RemoteGate(EXTERNAL, key, transport=balancer) as gate:
            cred = gate.credential(DEPLOY_SCOPE)
            for k in range(self.ops):
                try:
                    if k % 10 == 0:
                        self.approved_once(gate, balancer, cred, f"{name}-{k}", k)
                    elif k % 10 == 5:
                        self.proof_once(gate, key, cred.token)
                    elif k % 2:
                        release = {"version": f"{name}.{k}", "artifact_digest": DIGEST}
                        out = gate.execute(cred, Operation("deploy", "staging/app-web", release))
                        ok = getattr(out, "status", None) == "succeeded"
                        self.note("deploy", None if ok else f"{name} {k}: deploy {out!r}")
                    else:
                        effect = gate.authorize(cred, CAP).effect
                        self.note("authorize", None if effect == "allow" else f"{name}: {effect}")
                except OpsgateError as exc:
                    self.note("error", f"{name} op {k}: {exc.code}: {exc.message}")
                except Exception as exc:  # reported: never lost with its thread
                    self.note("error", f"{name} op {k}: {exc!r}")

    def proof_once(self, gate: RemoteGate, key: Any, token: str) -> None:
        raw = orjson.dumps({"capability": CAP, "params": None})
        proof = make_dpop(
            key,
            method="POST",
            url=EXTERNAL + "/v1/authorize",
            token=token,
            request=ProofRequest.authorize(CAP, None),
            now=time.time(),
        )
        headers = {
            "Authorization": f"DPoP {token}",
            "DPoP": proof,
            "Content-Type": "application/json",
        }
        answers = self.at_once(
            [
                lambda u=url: self.http.post(f"{u}/v1/authorize", content=raw, headers=headers)
                for url in self.urls
            ]
        )
        accepted = [r for r in answers if r.status_code == 200]
        replayed = [
            r for r in answers if r.status_code == 401 and r.json()["code"] == "proof_replayed"
        ]
        ok = len(accepted) == 1 and len(replayed) == len(answers) - 1
        codes = [(r.status_code, r.text[:80]) for r in answers]
        self.note("proof_pair", None if ok else f"one proof on both replicas: {codes}")

    def approved_once(
        self, gate: RemoteGate, balancer: Balancer, cred: Any, version: str, k: int
    ) -> None:
        release = {"version": version, "artifact_digest": DIGEST}
        pending = gate.execute(cred, Operation("deploy", "production/app-web", release))
        if not isinstance(pending, RemotePendingApproval):
            self.note("approval", f"{version}: production deploy ran without approval")
            return
        with self.lock:
            self.approvals.append(pending.approval_id)
        decided = self.http.post(
            f"{self.urls[k // 10 % len(self.urls)]}/v1/approvals/{pending.approval_id}/approve",
            json={"comment": "ok"},
            headers={"Authorization": self.approver},
        )
        if decided.status_code != 200:
            self.note("approval", f"{version}: approve answered {decided.status_code}")
            return
        _ = cred.token  # renew now if due, not inside the race below

        def resume_on(index: int) -> Any:
            with balancer.pinned(index):
                return gate.resume(pending.approval_id, cred)

        results = self.at_once([lambda i=i: resume_on(i) for i in range(len(self.urls))])
        ran = [r for r in results if getattr(r, "status", None) == "succeeded"]
        consumed = [
            r for r in results if isinstance(r, OpsgateError) and r.code == "approval_consumed"
        ]
        ok = len(ran) == 1 and len(consumed) == len(results) - 1
        shown = [getattr(r, "code", getattr(r, "status", r)) for r in results]
        self.note("approval", None if ok else f"{version}: resumed on both replicas: {shown}")


def main() -> None:
    plan = json.load(sys.stdin)
    run = Run(plan)
    started = time.monotonic()
    threads = [
        threading.Thread(target=run.agent, args=(name, key)) for name, key in plan["agents"].items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    run.pairs.shutdown()
    print(
        json.dumps(
            {
                "counts": dict(run.counts),
                "violations": run.violations,
                "approvals": run.approvals,
                "seconds": round(elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
