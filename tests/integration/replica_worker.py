"""A replica in its own process, for the lock-order and suspension tests.

argv: state_dir, database url, mode, JSON arguments. Opens the gate on the shared
database, prints {"ready": true}, waits for a line on stdin, then works:

- execute: `threads` threads run staging deploys (RecordingExecutor) for random
  agents of `dids` for `seconds`, issuing a fresh credential every few operations;
- issue: issues credentials for the `dids` round robin for `seconds`, keeping every
  token issued;
- charge: `threads` threads charge each of `dids` one policy violation;
- hang: runs one deploy whose executor never returns (the parent kills us);
- stall: writes an audit batch that stops while it holds the audit head (prints
  {"holding": true}; the parent stops us with SIGSTOP);
- verify: verifies `token` in a loop for `seconds`, timing each call.

Prints one JSON line: runs of the executor, successes, error codes (and tokens).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import RELEASE, RecordingExecutor

import opsgate
from opsgate.audit.writer import Change, Unit
from opsgate.operations.base import Operation, Outcome, Plan
from opsgate.trust.scoring import TrustEvent

SCOPE = ["deploy:staging"]


class Hanging(RecordingExecutor):
    """Runs, says so on stdout, and never returns."""

    def run(self, plan: Plan) -> Outcome:
        print(json.dumps({"running": True}), flush=True)
        time.sleep(3600)
        return Outcome("succeeded", "never")


def main() -> None:
    state_dir, url, mode, raw = sys.argv[1:5]
    args: dict[str, Any] = json.loads(raw)
    dids: list[str] = args.get("dids", [])
    threads = int(args.get("threads", 4))
    seconds = float(args.get("seconds", 2.0))
    executor = Hanging() if mode == "hang" else RecordingExecutor()
    gate = opsgate.Gate.open(state_dir, database_url=url, **args.get("config", {}))
    gate.register_executor("deploy", executor)
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    errors: Counter[str] = Counter()
    ok = [0]
    tokens: list[list[str]] = []
    lock = threading.Lock()

    def failed(exc: opsgate.OpsgateError) -> None:
        with lock:
            errors[exc.code] += 1

    def execute(k: int) -> None:
        rnd = random.Random(k)
        deadline = time.monotonic() + seconds
        creds: dict[str, str] = {}
        i = 0
        while time.monotonic() < deadline:
            did = dids[rnd.randrange(len(dids))]
            i += 1
            try:
                if did not in creds or i % 5 == 0:
                    creds[did] = gate.credential_manager.issue_credential(did, SCOPE).token
                op = Operation("deploy", "staging/app", {**RELEASE, "noise": f"{k}-{i}"})
                gate.execute(creds[did], op)
                with lock:
                    ok[0] += 1
            except opsgate.OpsgateError as exc:
                failed(exc)

    def issue(_k: int) -> None:
        deadline = time.monotonic() + seconds
        live = list(dids)
        while live and time.monotonic() < deadline:
            for did in list(live):
                try:
                    token = gate.credential_manager.issue_credential(did, SCOPE).token
                    with lock:
                        tokens.append([did, token])
                        ok[0] += 1
                except opsgate.OpsgateError as exc:
                    failed(exc)
                    if exc.code in ("agent_suspended", "revoked"):
                        live.remove(did)

    def charge(k: int) -> None:
        for did in dids[k::threads]:
            try:
                gate.trust.record(did, TrustEvent.POLICY_VIOLATION, reason="race", now=time.time())
                with lock:
                    ok[0] += 1
            except opsgate.OpsgateError as exc:
                failed(exc)

    if mode == "stall":

        def hold(_cur: Any) -> None:
            print(json.dumps({"holding": True}), flush=True)
            time.sleep(3600)

        gate.audit.commit(Unit("test.stall", change=Change(hold)))
        return
    if mode == "verify":
        calls = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.time()
            try:
                gate.credential_manager.verify(args["token"])
                result = "ok"
            except opsgate.OpsgateError as exc:
                result = exc.code
            calls.append([start, time.time(), result])
            time.sleep(0.02)
        print(json.dumps({"calls": calls}), flush=True)
        return
    if mode == "hang":
        token = gate.credential_manager.issue_credential(dids[0], SCOPE).token
        gate.execute(token, Operation("deploy", "staging/app", dict(RELEASE)))
        return
    work = {"execute": execute, "issue": issue, "charge": charge}[mode]
    n = 1 if mode == "issue" else threads
    pool = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    gate.close()
    print(
        json.dumps({"runs": executor.count, "ok": ok[0], "errors": dict(errors), "tokens": tokens}),
        flush=True,
    )


if __name__ == "__main__":
    main()
