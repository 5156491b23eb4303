"""The gate's clock: reading the time and checking a caller's `now`.

Every function that looks at time takes `now` (tests pass it); this module is
where a missing `now` becomes the wall clock, and where a caller's value is
checked. It imports nothing of opsgate but its errors, so any part may use it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

from opsgate.errors import CredentialError

# Times from 1970 to the year 9000: every expiry derived from them (agent
# lifetimes are capped at a century) still fits a datetime.
MAX_EPOCH = 221_845_392_000.0


def now() -> float:
    """The wall clock, in epoch seconds."""
    return time.time()


def to_epoch(now: datetime | float | None) -> float:
    """Accept an aware datetime (or epoch seconds); naive datetimes are ambiguous, so refused."""
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise CredentialError("'now' must be a timezone-aware datetime", code="naive_datetime")
        t = now.timestamp()
    elif isinstance(now, bool) or not isinstance(now, (int, float)):
        raise CredentialError("'now' must be a datetime", code="invalid_time")
    else:
        try:
            t = float(now)
        except OverflowError:
            t = math.inf
    if not 0.0 <= t <= MAX_EPOCH:  # also refuses NaN
        raise CredentialError("'now' is outside 1970 to 9000", code="invalid_time")
    return t
