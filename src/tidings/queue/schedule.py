"""When a message that failed temporarily is tried again, and when it is given up.

The intervals come from ``queue.retry_schedule`` (default about 1m, 5m, 15m, 30m, 1h, 2h, then
every 4h); a message older than ``queue.max_age`` (default 5 days, RFC 5321 §4.5.4.1 suggests
at least 4–5) is not tried again: its sender gets a bounce instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def retry_delay(attempts: int, schedule: Sequence[float]) -> float:
    """Seconds to wait after the ``attempts``-th attempt failed; the last interval repeats."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def next_attempt(
    *,
    attempts: int,
    created_at: datetime,
    at: datetime,
    schedule: Sequence[float],
    max_age: float,
) -> datetime | None:
    """When to try again after a temporary failure at ``at``; None once the message expired."""
    expires = created_at + timedelta(seconds=max_age)
    if at >= expires:
        return None
    retry = at + timedelta(seconds=retry_delay(attempts, schedule))
    # One last attempt at the deadline rather than none at all after a long interval.
    return min(retry, expires)
