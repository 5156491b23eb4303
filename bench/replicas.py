"""`python -m bench.replicas`: replicas on one PostgreSQL, many agents vs one.

Two replica processes (each a Gate on the shared database, 4 threads each) issue
credentials, then change trust scores, for a fixed time, with the work spread over
1, 4 and 8 agents. Every call takes the agent's row lock and the audit head in one
transaction (group commit), so lock order decides whether batches from different
replicas deadlock; the figures sit side by side with the ratio to one agent
(target: more agents cost at most 2x, i.e. ratio >= 0.50).

PostgreSQL: OPSGATE_BENCH_PG_URL (or OPSGATE_TEST_PG_URL) names a server whose
superuser may create a database; without either, one is started with
scripts/services.sh for the run and stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench._util import Table, fmt_rate, progress, temp_dir

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("issue", "trust")
AGENT_COUNTS = (1, 4, 8)
TARGET_RATIO = 0.5


@contextmanager
def postgres_server() -> Iterator[str]:
    """An admin URL: the given one, or a throwaway server from scripts/services.sh."""
    url = os.environ.get("OPSGATE_BENCH_PG_URL") or os.environ.get("OPSGATE_TEST_PG_URL")
    if url:
        yield url
        return
    script = (
        "source scripts/services.sh; trap stop_postgres EXIT; start_postgres >&2; "
        'echo "$OPSGATE_TEST_PG_URL"; read -r _'
    )
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            raise SystemExit("could not start PostgreSQL (scripts/services.sh)")
        yield line
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the script's `read` returns; its trap stops the server
        proc.wait(timeout=60)


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    name = f"opsgate_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()


# -- one replica process ---------------------------------------------------------------


def replica(state_dir: str, url: str, workload: str, dids: list[str], threads: int) -> None:
    """Open the gate, wait for "go" on stdin, run `workload` for the given seconds on
    `threads` threads over `dids`; print {ops, errors} as JSON."""
    import opsgate
    from opsgate.trust.scoring import TrustEvent

    gate = opsgate.Gate.open(state_dir, database_url=url)
    ready = {"ready": True}
    print(json.dumps(ready), flush=True)
    seconds = float(sys.stdin.readline())
    counts = [0] * threads
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(k: int) -> None:
        rnd = random.Random(k)
        n = 0
        while time.monotonic() < deadline:
            did = dids[rnd.randrange(len(dids))]
            try:
                if workload == "issue":
                    gate.credential_manager.issue_credential(did, ["deploy:staging"])
                else:
                    gate.trust.record(did, TrustEvent.SUCCESS, reason="bench", now=time.time())
                n += 1
            except opsgate.OpsgateError as exc:
                with lock:
                    errors[exc.code] += 1
        counts[k] = n

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    gate.close()
    print(json.dumps({"ops": sum(counts), "errors": dict(errors)}), flush=True)


# -- the run -----------------------------------------------------------------------------


def scenario(
    state_dir: Path, url: str, workload: str, dids: list[str], procs: int, threads: int, sec: float
) -> tuple[int, dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.replicas",
                "--replica",
                json.dumps([str(state_dir), url, workload, dids, threads]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(procs)
    ]
    for c in children:
        assert c.stdout is not None
        if not c.stdout.readline():
            raise SystemExit("a replica failed to open the gate")
    for c in children:
        assert c.stdin is not None
        c.stdin.write(f"{sec}\n")
        c.stdin.flush()
    ops = 0
    errors: Counter[str] = Counter()
    for c in children:
        out, _ = c.communicate(timeout=sec + 120)
        result = json.loads(out.strip().splitlines()[-1])
        ops += int(result["ops"])
        errors.update(result["errors"])
    return ops, dict(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="best of, cells interleaved")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="one round of 3 s per cell")
    parser.add_argument("--replica", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replica:
        state_dir, url, workload, dids, threads = json.loads(args.replica)
        replica(state_dir, url, workload, dids, threads)
        return 0
    seconds = 3.0 if args.quick else args.seconds
    rounds = 1 if args.quick else max(1, args.rounds)

    import opsgate

    best: dict[tuple[str, int], int] = {}
    errors: dict[str, Counter[str]] = {w: Counter() for w in WORKLOADS}
    cells = [(w, n) for w in WORKLOADS for n in AGENT_COUNTS]
    with postgres_server() as admin, temp_dir("replicas") as tmp, ExitStack() as dbs:
        setup: dict[tuple[str, int], tuple[Path, str, list[str]]] = {}
        for workload, n in cells:
            url = dbs.enter_context(fresh_database(admin))
            state = tmp / f"{workload}-{n}"
            with opsgate.Gate.open(state, database_url=url) as gate:
                dids = [
                    gate.register_agent(
                        f"agent-{i}", ["deploy:staging"], sponsor="ops@company.com", trust_score=900
                    ).did
                    for i in range(n)
                ]
            setup[(workload, n)] = (state, url, dids)
        # Rounds interleave the cells, so a noisy neighbour hits every cell alike.
        for r in range(rounds):
            for workload, n in cells:
                state, url, dids = setup[(workload, n)]
                progress(f"round {r + 1}/{rounds}: {workload}, {n} agent(s), {seconds:g} s")
                ops, errs = scenario(state, url, workload, dids, args.procs, args.threads, seconds)
                best[(workload, n)] = max(best.get((workload, n), 0), ops)
                errors[workload].update(errs)
        for workload, n in cells:
            state, url, _ = setup[(workload, n)]
            with opsgate.Gate.open(state, database_url=url) as gate:
                report = gate.audit.verify()
            if not report.ok:
                raise SystemExit(f"audit verify failed ({workload}, {n}): {report.reason}")

    t = Table(
        "workload",
        *(f"{n} agent{'s' if n > 1 else ''}" for n in AGENT_COUNTS),
        "ratio 4:1",
        "ratio 8:1",
        "errors",
        "ok?",
    )
    for workload in WORKLOADS:
        rates = [best[(workload, n)] / seconds for n in AGENT_COUNTS]
        ratios = [r / rates[0] if rates[0] else 0.0 for r in rates[1:]]
        errs = errors[workload]
        t.row(
            "credential issuance" if workload == "issue" else "trust change",
            *(fmt_rate(r) for r in rates),
            *(f"{x:.2f}" for x in ratios),
            ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "none",
            "yes" if min(ratios) >= TARGET_RATIO and not errs else "NO",
        )
    t.note(
        f"{args.procs} replica processes x {args.threads} threads; best of {rounds} round(s) "
        f"of {seconds:g} s per cell (cells interleaved), each call on a random agent of the "
        "set; errors summed over every round; audit verified at the end."
    )
    t.note(f"ok: every count of agents within 2x of one agent (ratio >= {TARGET_RATIO}), no errors")
    t.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
