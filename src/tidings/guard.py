"""Defences every mail listener shares against clients that hold resources without using them.

Two rules, enforced the same way for SMTP, IMAP and POP3:

- **Connection limits.** At most ``limits.max_connections`` open connections in all, and
  ``limits.max_connections_per_ip`` from one client address (IPv6 clients per /64, the block a
  single site usually gets), counted over every listener. A connection past a limit is told so
  in its protocol's words and closed before any session starts.
- **Slow clients.** An idle client is handled by each protocol's idle timeout. A client that
  keeps a connection busy by trickling bytes (one per second resets any idle timer) is not: so a
  command — from its first byte to its last, message data and literals included — that is still
  arriving after ``limits.command_deadline`` seconds must be averaging ``limits.min_transfer_rate``
  bytes per second, or the connection is closed. Only time spent waiting for the client counts:
  a server busy answering restarts the clock.

Per-session error and command counts live in each protocol's session, which knows its replies.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tidings.auth import client_key  # the unit the login limits count: IPv4, or IPv6 /64
from tidings.config import LimitsConfig


@dataclass
class ConnectionGate:
    """Open connections, in all and per client; shared by every listener of the process."""

    max_total: int
    max_per_client: int
    total: int = 0
    per_client: Counter[str] = field(default_factory=Counter)

    def admit(self, peer: str) -> str | None:
        """Count the connection in, or say why not (nothing is counted then). 0: no limit."""
        key = client_key(peer)
        if self.max_total and self.total >= self.max_total:
            return "Too many connections; try again later"
        if self.max_per_client and self.per_client[key] >= self.max_per_client:
            return "Too many connections from your address; try again later"
        self.total += 1
        self.per_client[key] += 1
        return None

    def release(self, peer: str) -> None:
        key = client_key(peer)
        self.total -= 1
        self.per_client[key] -= 1
        if self.per_client[key] <= 0:
            del self.per_client[key]


class SlowClientGuard:
    """The slow-client rule for one connection.

    The protocol calls :meth:`received` for each piece of input and :meth:`done` when a command
    is complete (and its data read); ``waiting`` tells whether the session is waiting for the
    client, and ``too_slow`` ends the connection.
    """

    __slots__ = (
        "_bytes", "_deadline", "_loop", "_min_rate", "_start", "_timer", "_too_slow", "_waiting"
    )  # fmt: skip

    def __init__(
        self,
        deadline: float,
        min_rate: int,
        waiting: Callable[[], bool],
        too_slow: Callable[[], None],
    ) -> None:
        # Made in connection_made, on the loop; asked for once (each lookup is a getpid()).
        self._loop = asyncio.get_running_loop()
        self._deadline = deadline
        self._min_rate = min_rate
        self._waiting = waiting
        self._too_slow = too_slow
        self._timer: asyncio.TimerHandle | None = None
        self._start = 0.0
        self._bytes = 0

    def received(self, size: int) -> None:
        if self._timer is None:
            self._start = self._loop.time()
            self._bytes = 0
            self._timer = self._loop.call_later(self._deadline, self._check)
        self._bytes += size

    def done(self) -> None:
        """The command in progress is complete: the next one starts its own clock."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        loop = self._loop
        now = loop.time()
        if not self._waiting():
            # The server, not the client, is the one taking time: start over.
            self._start, self._bytes = now, 0
        elif self._bytes < self._min_rate * (now - self._start):
            self._timer = None
            self._too_slow()
            return
        self._timer = loop.call_later(self._deadline / 4, self._check)


class Defences:
    """What a listener's connections need to apply the rules: the shared gate and the limits."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.gate = ConnectionGate(limits.max_connections, limits.max_connections_per_ip)
        self.limits = limits

    def reload(self, limits: LimitsConfig) -> None:
        """New limits for connections made from now on; counts carry over."""
        self.limits = limits
        self.gate.max_total = limits.max_connections
        self.gate.max_per_client = limits.max_connections_per_ip

    def slow_client_guard(
        self, waiting: Callable[[], bool], too_slow: Callable[[], None]
    ) -> SlowClientGuard | None:
        limits = self.limits
        if not limits.min_transfer_rate:
            return None
        return SlowClientGuard(limits.command_deadline, limits.min_transfer_rate, waiting, too_slow)
