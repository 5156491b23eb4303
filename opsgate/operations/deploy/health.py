"""The health gate: is the release that was just switched to actually healthy?

A probe is an HTTP GET or a command, both from the operator's configuration (an
agent never names a URL or a command the gate runs). Each probe answers `ok`,
`failed` (a definite bad answer: another status, a non-zero exit) or
`inconclusive` (timed out, refused, unreachable). The gate passes after
`successes` consecutive ok probes; it fails after `failure_threshold` consecutive
failed ones, or when `deadline_seconds` pass first. Inconclusive answers reset the
run of successes and never count as one: a service that cannot be reached is
never called healthy.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpcore
import httpx

from opsgate.config import HealthCheck
from opsgate.operations.deploy.child import run_child

ProbeStatus = Literal["ok", "failed", "inconclusive"]
GateStatus = Literal["passed", "failed", "inconclusive", "not_configured"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: ProbeStatus
    detail: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What the health gate concluded, after how many probes and how long."""

    status: GateStatus
    probes: int
    seconds: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.status in ("passed", "not_configured")

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "probes": self.probes,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


NOT_CONFIGURED = HealthReport("not_configured", 0, 0.0, "no health check configured")

Probe = Callable[[float], ProbeResult]


class _Deadline(threading.local):
    """The wall-clock end of the probe in progress (monotonic); None between probes.
    Per thread: a deploy's probe and a monitoring view may share one client at once."""

    def __init__(self) -> None:
        self.at: float | None = None

    def bound(self, timeout: float | None) -> float | None:
        """`timeout` cut to the time left: httpx's timeouts are per read, so a server
        trickling one byte per read would otherwise keep one probe alive for hours."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("probe wall-clock limit reached")
        return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.bound(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.bound(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._deadline.bound(timeout))
        return _BoundedStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    """Every socket operation of a probe ends by the probe's wall-clock limit."""

    def __init__(self, deadline: _Deadline) -> None:
        self._inner, self._deadline = httpcore.SyncBackend(), deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self._deadline.bound(timeout), local_address, socket_options
        )
        return _BoundedStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self._deadline.bound(timeout), socket_options
        )
        return _BoundedStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class HttpProbe:
    """GET `url` (no redirects, no proxy from the environment, body never read).

    One client for the whole gate: building one (its TLS context) costs more than a
    loopback request. `close()` releases it. A probe ends within its timeout of wall
    clock, however slowly the server answers (a trickled header is inconclusive).
    """

    def __init__(self, url: str, expect: tuple[int, ...]) -> None:
        self.url, self.expect = url, expect
        self._client: httpx.Client | None = None
        self._deadline = _Deadline()

    def _new_client(self) -> httpx.Client:
        transport = httpx.HTTPTransport(trust_env=False)
        # httpx has no total timeout: its pool is rebuilt on a backend that bounds
        # every connect, read and write by the probe's wall-clock limit.
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=_BoundedBackend(self._deadline),
        )
        return httpx.Client(follow_redirects=False, trust_env=False, transport=transport)

    def __call__(self, timeout: float) -> ProbeResult:
        if self._client is None:
            self._client = self._new_client()
        self._deadline.at = time.monotonic() + timeout
        try:
            with self._client.stream("GET", self.url, timeout=timeout) as response:
                code = response.status_code
        except httpx.TimeoutException:
            return ProbeResult("inconclusive", f"no answer within {timeout:g}s")
        except httpx.HTTPError as exc:
            return ProbeResult("inconclusive", f"unreachable ({exc.__class__.__name__})")
        finally:
            self._deadline.at = None
        if code in self.expect:
            return ProbeResult("ok", f"HTTP {code}")
        return ProbeResult("failed", f"HTTP {code}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def http_probe(url: str, expect: tuple[int, ...]) -> HttpProbe:
    return HttpProbe(url, expect)


def command_probe(argv: tuple[str, ...], env: Mapping[str, str]) -> Probe:
    """Run `argv` (no shell, output discarded) in `/`, never in the release: a probe
    must not pick up a file the release brought (`python check.py`). Exit 0 is healthy."""

    def probe(timeout: float) -> ProbeResult:
        result = run_child(argv, env=env, cwd="/", timeout=timeout)
        if result.error is not None:
            return ProbeResult("failed", result.error)
        if result.timed_out:
            return ProbeResult("inconclusive", f"no answer within {timeout:g}s")
        if result.exit_code == 0:
            return ProbeResult("ok", "exit 0")
        return ProbeResult("failed", f"exit {result.exit_code}")

    return probe


def probe_for(check: HealthCheck, env: Mapping[str, str]) -> Probe:
    if check.url is not None:
        return http_probe(check.url, check.expect_status)
    assert check.command is not None
    return command_probe(check.command, env)


def shown_url(url: str) -> str:
    """A health URL as plans show it: its query (which may carry a key) left out."""
    parsed = httpx.URL(url)
    if not parsed.query and not parsed.fragment:
        return url
    return f"{parsed.copy_with(query=None, fragment=None)}?[query not shown]"


def describe(check: HealthCheck) -> str:
    """One line for a plan: what is probed and what passes."""
    if check.url is not None:
        what = f"GET {shown_url(check.url)}"
    else:
        what = f"run {' '.join(check.command or ())}"
    return (
        f"health: {what} until {check.successes} consecutive ok (every "
        f"{check.interval_seconds:g}s, {check.timeout_seconds:g}s each, fail after "
        f"{check.failure_threshold}, deadline {check.deadline_seconds:g}s)"
    )


def run_health_gate(
    check: HealthCheck,
    probe: Probe,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_probe: Callable[[int, ProbeResult, float], None] | None = None,
) -> HealthReport:
    """Probe until the gate passes, fails, or its deadline passes (never passed)."""
    try:
        return _gate(check, probe, clock=clock, sleep=sleep, on_probe=on_probe)
    finally:
        close = getattr(probe, "close", None)
        if callable(close):
            close()


def _gate(
    check: HealthCheck,
    probe: Probe,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    on_probe: Callable[[int, ProbeResult, float], None] | None,
) -> HealthReport:
    started = clock()
    deadline = started + check.deadline_seconds
    successes = failures = probes = 0
    failed_once = False  # a definite bad answer was seen: the deadline verdict is failed
    last = "no probe finished"
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            return HealthReport(
                "failed" if failed_once else "inconclusive",
                probes,
                clock() - started,
                f"deadline of {check.deadline_seconds:g}s passed before {check.successes} "
                f"consecutive ok probe(s); last: {last}",
            )
        result = probe(min(check.timeout_seconds, remaining))
        probes += 1
        if result.status == "ok" and clock() > deadline:  # answered too late to count
            result = ProbeResult("inconclusive", f"{result.detail} after the deadline")
        last = result.detail
        if result.status == "ok":
            successes, failures = successes + 1, 0
        elif result.status == "failed":
            successes, failures, failed_once = 0, failures + 1, True
        else:
            successes = 0
        if on_probe is not None:
            on_probe(probes, result, clock() - started)
        if successes >= check.successes:
            return HealthReport("passed", probes, clock() - started, f"{successes} ok: {last}")
        if failures >= check.failure_threshold:
            return HealthReport(
                "failed", probes, clock() - started, f"{failures} failed in a row: {last}"
            )
        wait = min(check.interval_seconds, deadline - clock())
        if wait > 0:
            sleep(wait)


__all__ = [
    "NOT_CONFIGURED",
    "HealthReport",
    "HttpProbe",
    "Probe",
    "ProbeResult",
    "command_probe",
    "describe",
    "http_probe",
    "probe_for",
    "run_health_gate",
    "shown_url",
]
