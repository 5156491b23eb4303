"""Running a configured command as a child process, and what of its output may be kept.

The argument list is passed as is (`shell=False`): a value substituted into one
argument stays one argument. stdin is closed, the child starts in a session of
its own, and a timeout kills that whole process group; so does the end of the
run (a deploy command leaves nothing behind holding the gate's pipes). Output
(stdout and stderr together) is read as it comes; only a bounded tail is kept,
and every secret value handed to the child is cut out of it before it leaves this
module (as given and base64-encoded), even one that straddles where the tail starts.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opsgate.errors import scrub

#: What a secret value becomes in a kept tail.
REDACTED = "[secret]"
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class ChildResult:
    """How a child ended: its exit code, or a timeout, or why it could not start."""

    exit_code: int | None
    timed_out: bool
    error: str | None
    tail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _Tail:
    """The last `cap` bytes of a stream, plus enough before them to find a secret
    that straddles their start (the longest secret's length)."""

    def __init__(self, cap: int, overlap: int) -> None:
        self.cap, self.overlap = cap, overlap
        self.keep = cap + overlap
        self.buf = bytearray()
        self.cut = False  # bytes before buf were dropped
        self.lock = threading.Lock()

    def feed(self, chunk: bytes) -> None:
        with self.lock:
            self.buf += chunk
            if len(self.buf) > 2 * self.keep:  # trim in batches, not per chunk
                del self.buf[: len(self.buf) - self.keep]
                self.cut = True

    def text(self, secrets: Sequence[bytes]) -> str:
        with self.lock:
            buf = bytes(self.buf)
        if self.cap == 0:
            return ""
        ranges = _ranges(buf, secrets)
        start = max(len(buf) - self.cap, 0)
        if self.cut:
            # The first `overlap` bytes may hold the end of a secret whose start was
            # dropped: never shown (start >= overlap whenever bytes were dropped).
            start = max(start, self.overlap)
        out = bytearray()
        i, r = start, 0
        while i < len(buf):
            while r < len(ranges) and ranges[r][1] <= i:
                r += 1
            if r < len(ranges) and ranges[r][0] <= i:
                out += REDACTED.encode()
                i = ranges[r][1]
                continue
            nxt = ranges[r][0] if r < len(ranges) else len(buf)
            out += buf[i:nxt]
            i = nxt
        prefix = "[...] " if start > 0 else ""
        return scrub(prefix + out.decode("utf-8", errors="replace"))


def _ranges(buf: bytes, secrets: Sequence[bytes]) -> list[tuple[int, int]]:
    """Every occurrence of every secret in `buf`, merged into sorted ranges."""
    found: list[tuple[int, int]] = []
    for secret in secrets:
        if not secret:
            continue
        at = buf.find(secret)
        while at != -1:
            found.append((at, at + len(secret)))
            at = buf.find(secret, at + 1)
    found.sort()
    merged: list[tuple[int, int]] = []
    for a, b in found:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _forms(secrets: Sequence[str]) -> list[bytes]:
    """Every secret as bytes, and as base64 (standard and url-safe, unpadded): deploy
    tools print secrets that way (a Kubernetes Secret's data, a rendered manifest)."""
    out: list[bytes] = []
    for secret in secrets:
        if not secret:
            continue
        raw = secret.encode()
        encoded = base64.b64encode(raw).rstrip(b"=")
        for form in (raw, encoded, encoded.replace(b"+", b"-").replace(b"/", b"_")):
            if form not in out:
                out.append(form)
    return out


def scrub_secrets(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret value cut out (for anything not read through `run_child`)."""
    blobs = _forms(secrets)
    tail = _Tail(len(text.encode()) + 1, 0)
    tail.feed(text.encode())
    return tail.text(blobs)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    timeout: float,
    tail_bytes: int = 0,
    secrets: Sequence[str] = (),
    clock: Callable[[], float] = time.monotonic,
) -> ChildResult:
    """Run `argv` (no shell) with exactly `env`; keep a scrubbed tail of its output."""
    blobs = _forms(secrets)
    tail = _Tail(tail_bytes, max((len(b) for b in blobs), default=0))
    started = clock()
    try:
        proc = subprocess.Popen(  # noqa: S603 - a list from the operator's config, no shell
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        return ChildResult(None, False, f"cannot run {argv[0][:64]!r}: {why}", "", 0.0)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()

    def read() -> None:
        try:
            while chunk := os.read(fd, _CHUNK):
                tail.feed(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read, name="opsgate-child-output", daemon=True)
    reader.start()
    timed_out = False
    try:
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
            code = None
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        _kill_group(proc.pid)  # anything the command left running in its group
        reader.join(timeout=2.0)
        if not reader.is_alive():  # else a process that left the group holds the pipe:
            proc.stdout.close()  # closing under a blocked read could hand its fd to another file
    return ChildResult(code, timed_out, None, tail.text(blobs), clock() - started)


__all__ = ["REDACTED", "ChildResult", "run_child", "scrub_secrets"]
