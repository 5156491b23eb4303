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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

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


class HttpProbe:
    """GET `url` (no redirects, no proxy from the environment, body never read).

    One client for the whole gate: building one (its TLS context) costs more than a
    loopback request. `close()` releases it.
    """

    def __init__(self, url: str, expect: tuple[int, ...]) -> None:
        self.url, self.expect = url, expect
        self._client: httpx.Client | None = None

    def __call__(self, timeout: float) -> ProbeResult:
        if self._client is None:
            self._client = httpx.Client(follow_redirects=False, trust_env=False)
        try:
            with self._client.stream("GET", self.url, timeout=timeout) as response:
                code = response.status_code
        except httpx.TimeoutException:
            return ProbeResult("inconclusive", f"no answer within {timeout:g}s")
        except httpx.HTTPError as exc:
            return ProbeResult("inconclusive", f"unreachable ({exc.__class__.__name__})")
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


def describe(check: HealthCheck) -> str:
    """One line for a plan: what is probed and what passes."""
    what = f"GET {check.url}" if check.url is not None else f"run {' '.join(check.command or ())}"
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
]
