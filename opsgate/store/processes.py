"""Whether the process that holds a lock row is still alive.

A lock row names its holder by host, pid and the kernel's start time of that pid,
so a pid reused by another process never keeps a dead holder's lock. Only a holder
on this host can be seen to be dead; one elsewhere counts as alive.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def host_name() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str:
    """The kernel's start time of `pid` ("" where /proc is not available)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, start: str) -> bool:
    """Whether `pid` runs and is the process that started at `start` (not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: a live pid is all we can know
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):  # a zombie holds nothing
        return False
    return not start or (len(fields) > 19 and fields[19] == start)


def holder_dead(host: str, pid: int, start: str) -> bool:
    """True only for a holder on this host whose process is gone."""
    return host == host_name() and not process_alive(int(pid), str(start))


__all__ = ["holder_dead", "host_name", "process_alive", "process_start"]
