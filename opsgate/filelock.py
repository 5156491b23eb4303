"""Owner-only lock files and a bounded wait for them (`fcntl.flock`).

A blocking `flock` cannot be bounded, and a lock file another user made could be held
by that user for ever: the SQLite writers' turn and the kept audit checkpoint's writers
both take their lock through these.
"""

from __future__ import annotations

import fcntl
import os
import time

# Never through a link planted in its place; never truncated.
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def open_own(path: str | os.PathLike[str]) -> int | None:
    """The lock file at `path` (created 0600 if missing), opened, when it is this
    process's user's own and open to no one else; None otherwise (or when it cannot be
    opened)."""
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o600)
    except OSError:
        return None
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        os.close(fd)
        return None
    return fd


def lock_within(fd: int, seconds: float, *, longest_pause: float = 0.002) -> bool:
    """Take an exclusive lock on `fd`, polling (pauses from 0.1 ms doubling up to
    `longest_pause`) for at most `seconds`; False when it did not come."""
    pause = 0.0001
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(pause)
        pause = min(pause * 2, longest_pause)


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
