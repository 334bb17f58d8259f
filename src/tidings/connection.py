"""The connection under a POP3 or IMAP session: output with flow control, STARTTLS, input
wake-ups. Each protocol keeps its own input buffer in a subclass.

An own buffer (rather than a StreamReader) is what makes STARTTLS/STLS safe: whatever the
client sent before the TLS handshake is dropped with the buffer, so no plaintext command can be
injected into the protected session (RFC 2595 §4, RFC 3501 §6.2.1; CVE-2011-0411's class of
bug).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from typing import Any, cast

from tidings.guard import Defences, SlowClientGuard

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT = 30.0
# Reading pauses when this much unprocessed input is buffered (a client pipelining a flood).
MAX_BUFFERED_INPUT = 256 * 1024


class ConnectionClosed(Exception):
    pass


class ClientConnection(asyncio.Protocol):
    """One client connection served by one session task (``run_session``)."""

    protocol_name = "?"  # for log lines
    # Set by the listener: the connection limits and the slow-client rule (guard.py).
    defences: Defences | None = None

    def __init__(self, implicit_tls: bool, registry: set[Any]) -> None:
        self.tls_active = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.task: asyncio.Task[None] | None = None
        self._registry = registry
        self._eof = False
        # An Event rather than a one-shot future: IMAP IDLE waits for input and for its
        # mailbox at once and cancels the loser, and a cancelled wait must not lose a wake-up.
        self._readable = asyncio.Event()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._admitted = False
        self._waiting_input = False
        self._slow: SlowClientGuard | None = None

    # what a protocol provides

    def refusal(self, reason: str) -> bytes:
        """The protocol's last words before it closes a connection it will not serve."""
        raise NotImplementedError

    def run_session(self) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    def take_input(self, data: bytes) -> int:
        """Keep ``data``; how many bytes are now waiting to be read."""
        raise NotImplementedError

    def drop_input(self) -> None:
        """Forget buffered input (before a TLS handshake)."""
        raise NotImplementedError

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but speak the same API.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "?"
        if self.defences is not None:
            reason = self.defences.gate.admit(self.peer)
            if reason is not None:
                self._refuse(reason)
                return
            self._admitted = True
            self._slow = self.defences.slow_client_guard(
                lambda: self._waiting_input,
                lambda: self._refuse("Too slow; closing the connection"),
            )
        self.task = asyncio.get_running_loop().create_task(self.run_session())
        self._registry.add(self)
        self.task.add_done_callback(lambda _: self._registry.discard(self))

    def data_received(self, data: bytes) -> None:
        if self._slow is not None:
            self._slow.received(len(data))
        if self.take_input(data) > MAX_BUFFERED_INPUT and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._readable.set()

    def eof_received(self) -> bool:
        self._eof = True
        self._readable.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted and self.defences is not None:
            self._admitted = False
            self.defences.gate.release(self.peer)
        if self._slow is not None:
            self._slow.done()
        self._eof = True
        self._readable.set()
        self._wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake(self._drain_waiter)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # used by the session

    @property
    def at_eof(self) -> bool:
        return self._eof

    def will_read(self) -> None:
        """Call before looking at the buffer; then :meth:`wait_readable` cannot miss input
        that arrives between the look and the wait."""
        self._readable.clear()

    def wake(self) -> None:
        """Wake a :meth:`wait_readable` as input would (IMAP IDLE's mailbox changes)."""
        self._readable.set()

    async def wait_readable(self) -> None:
        """Until input (or its end) arrives after the last :meth:`will_read`."""
        self.resume_reading()
        self._waiting_input = True
        try:
            await self._readable.wait()
        finally:
            self._waiting_input = False

    def command_done(self) -> None:
        """A whole command (with its literals) has been read: the slow-client clock stops."""
        if self._slow is not None:
            self._slow.done()

    def _refuse(self, reason: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            log.info("%s %s: %s", self.protocol_name, self.peer, reason)
            self.transport.write(self.refusal(reason))
            self.transport.close()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self._eof and (self.transport is None or self.transport.is_closing()):
            raise ConnectionClosed
        while self._writing_paused and not self._eof:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade to TLS; input buffered before the handshake is dropped."""
        assert self.transport is not None
        self.drop_input()
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport, self, context, server_side=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        )  # fmt: skip
        if transport is None:
            raise ConnectionClosed
        self.transport = transport
        self.tls_active = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
