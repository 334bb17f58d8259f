"""A loopback SMTP peer for tests of the outbound queue: the remote MX Tidings relays to.

aiosmtpd's protocol engine (not Tidings' own, so the two check each other), served by
``loop.create_server`` on any loopback address (all of 127/8 answers on Linux, so several peers
can each be "a host" on port 25-like ports of their own). It records what arrives and answers
the way a test scripts it::

    async with SMTPPeer(data_replies=["451 4.3.0 try later"], reject=["gone@remote.test"]) as mx:
        ...  # relay to mx.host, mx.port
        [message] = await mx.wait_for(1)
        assert message.recipients == ("bob@remote.test",) and message.tls is False

Two ways to run it:

- ``async with SMTPPeer(...)``: in the test's own event loop. Simplest for async tests whose
  client runs in the same loop; the peer only answers while the test awaits.
- ``with SMTPPeer(...)``: in a thread with its own loop, for sync tests and for tests that block
  (``tidings serve`` in a child process, ``subprocess.run``, ``time.sleep``) while the queue
  connects. Wait with ``wait_for_sync``/``wait_until_sync`` there; the async waits work too.

Scripts (``mail_replies``, ``rcpt_replies``, ``data_replies``) are consumed in order, one entry
per command across all connections; ``None`` means "the default answer" and after the last entry
every answer is the default (250). An entry is a reply line (``"451 4.3.0 try later"``; lines of
a multi-line reply joined with CRLF); a 421 reply also closes the connection (RFC 5321 §3.8);
:data:`DROP` closes it at once without a reply, as a crashed host would. ``reject`` answers
the recipients it names (any case) with its reply, or ``550 5.1.1``, every time and without
using up an ``rcpt_replies`` entry.

With ``starttls`` the peer offers STARTTLS (RFC 3207) with a self-signed certificate naming
``hostname``, localhost, 127.0.0.1 and ::1, made once per process; ``peer.cert_path`` is the
file a client trusts to verify it. ``certificate=(cert_path, key_path)`` serves that pair
instead (a certificate a test CA issued, say).

``on_connect`` sets what a new connection gets: ``"serve"`` (SMTP), ``"close"`` (closed at once:
a dead host), ``"silent"`` (accepted, never greeted: a hung host), or a reply such as
``"554 5.7.1 go away"`` sent as the greeting before closing (RFC 5321 §3.1).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import ssl
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tidings.tls import write_self_signed

DROP = "<drop>"  # a script entry: close the connection without answering
DEFAULT_MAX_SIZE = 32 * 1024 * 1024


@dataclass(frozen=True)
class Received:
    """One transaction that reached the end of DATA, whatever the peer answered."""

    sender: str  # "" for the null reverse-path (a bounce)
    recipients: tuple[str, ...]
    content: bytes  # as sent, dot-unstuffed, CRLF line endings
    tls: bool  # whether STARTTLS had been done on the connection
    ehlo: str | None  # the name the client gave at EHLO (or HELO)
    mail_options: tuple[str, ...]  # e.g. ("BODY=8BITMIME", "SMTPUTF8", "SIZE=123")
    connection: int  # the number of the connection it came on (0, 1, ...)
    reply: str  # the peer's answer; "" when the script dropped the connection
    login: str | None = None  # the user the client authenticated as, with ``auth``

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("2")


@dataclass
class Connection:
    """One connection the peer accepted; updated as it goes on."""

    number: int
    transactions: int = 0  # how many reached the end of DATA
    tls: bool = False
    closed: bool = False


class SMTPPeer:
    """An SMTP sink on ``host``:``port`` (0: a free port, read ``peer.port`` after start)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        hostname: str = "mx.peer.test",
        starttls: bool = False,
        require_starttls: bool = False,
        smtputf8: bool = True,
        pipelining: bool = False,
        max_size: int | None = DEFAULT_MAX_SIZE,
        mail_replies: Iterable[str | None] = (),
        rcpt_replies: Iterable[str | None] = (),
        data_replies: Iterable[str | None] = (),
        reject: Mapping[str, str] | Iterable[str] = (),
        on_connect: str = "serve",
        certificate: tuple[Path, Path] | None = None,
        auth: tuple[str, str] | None = None,
        data_gate: threading.Event | None = None,
    ) -> None:
        self.host = host
        # While set up and not yet set, every DATA waits before its reply: mail in progress.
        self.data_gate = data_gate
        # (user, password) a smarthost requires (AUTH PLAIN/LOGIN, only under STARTTLS); every
        # attempt is kept in ``logins`` as (user, password, accepted).
        self.auth = auth
        self.logins: list[tuple[str, str, bool]] = []
        self.certificate = certificate
        self.port = port
        self.hostname = hostname
        self.starttls = starttls or require_starttls or auth is not None
        self.require_starttls = require_starttls
        self.smtputf8 = smtputf8
        self.pipelining = pipelining
        self.max_size = max_size
        self.on_connect = on_connect
        self.scripts = {
            "MAIL": deque(mail_replies),
            "RCPT": deque(rcpt_replies),
            "DATA": deque(data_replies),
        }
        if isinstance(reject, Mapping):
            self.reject = {a.lower(): r for a, r in reject.items()}
        else:
            self.reject = {a.lower(): f"550 5.1.1 <{a}>: no such user" for a in reject}
        self.transactions: list[Received] = []
        self.connections: list[Connection] = []
        self.cert_path: Path | None = None  # the certificate to trust, with ``starttls``
        self._tls_context: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._live: set[Any] = set()  # protocols with an open connection
        self._changed = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None

    # --- what arrived ----------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def messages(self) -> list[Received]:
        """The transactions the peer accepted (a 2xx at the end of DATA)."""
        return [t for t in self.transactions if t.accepted]

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Wait until ``n`` messages were accepted; the accepted messages."""
        await self.wait_until(lambda p: len(p.messages) >= n, timeout, f"{n} messages")
        return self.messages

    async def wait_until(
        self, predicate: Callable[[SMTPPeer], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        """Wait until ``predicate(peer)`` holds; TimeoutError saying what arrived otherwise.
        Works from any event loop, the peer's own or another thread's."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(self._timeout_message(what or "condition", timeout))
            entry = (loop, loop.create_future())
            with self._changed:
                self._waiters.append(entry)
            try:
                if not predicate(self):  # a change may have come before we registered
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(entry[1], remaining)
            finally:
                with self._changed:
                    self._waiters.remove(entry)

    def wait_for_sync(self, n: int, timeout: float = 10.0) -> list[Received]:
        """``wait_for`` for a sync test (the peer in its thread)."""
        self.wait_until_sync(lambda p: len(p.messages) >= n, timeout, f"{n} messages")
        return self.messages

    def wait_until_sync(
        self, predicate: Callable[[SMTPPeer], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(self._timeout_message(what or "condition", timeout))

    def _timeout_message(self, what: str, timeout: float) -> str:
        seen = [(t.sender, t.recipients, t.reply) for t in self.transactions]
        return (
            f"SMTP peer {self.host}:{self.port}: no {what} within {timeout}s; "
            f"{len(self.connections)} connections, transactions {seen}"
        )

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
            waiters = list(self._waiters)
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    # --- running in the test's loop --------------------------------------------------------

    async def start(self) -> SMTPPeer:
        loop = asyncio.get_running_loop()
        if self.starttls:
            self.cert_path, key = self.certificate or _certificate(self.hostname)
            self._tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls_context.load_cert_chain(self.cert_path, key)
        self._server = await loop.create_server(lambda: self._protocol(loop), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every open connection (a peer never outlives its test)."""
        if self._server is None:
            return
        self._server.close()
        for protocol in list(self._live):
            if protocol.transport is not None:
                protocol.transport.abort()
        for _ in range(200):  # connection_lost comes a loop iteration or two later
            if not self._live:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # and then aiosmtpd's handler tasks see their cancellation
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> SMTPPeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- running in a thread ---------------------------------------------------------------

    def __enter__(self) -> SMTPPeer:
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._serve_in_thread(started, failure),),
            name=f"smtp-peer-{self.host}",
            daemon=True,
        )
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("SMTP peer did not start")
        if failure:
            raise failure[0]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread_loop is not None and self._thread_stop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_stop.set)
        if self._thread is not None:
            self._thread.join(30)
        self._thread = self._thread_loop = self._thread_stop = None

    async def _serve_in_thread(
        self, started: threading.Event, failure: list[BaseException]
    ) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_stop = asyncio.Event()
        try:
            await self.start()
        except BaseException as e:
            failure.append(e)
            return
        finally:
            started.set()
        try:
            await self._thread_stop.wait()
        finally:
            await self.stop()

    # --- connections -----------------------------------------------------------------------

    def _protocol(self, loop: asyncio.AbstractEventLoop) -> asyncio.BaseProtocol:
        connection = Connection(len(self.connections))
        self.connections.append(connection)
        self._notify()
        if self.on_connect == "serve":
            return _PeerSMTP(
                self,
                connection,
                hostname=self.hostname,
                tls_context=self._tls_context,
                require_starttls=self.require_starttls,
                enable_SMTPUTF8=self.smtputf8,
                data_size_limit=self.max_size,
                loop=loop,
                **(
                    {"authenticator": self._authenticate, "auth_required": True}
                    if self.auth is not None
                    else {}
                ),
            )
        return _Unwelcoming(self, connection)

    def _authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.auth is not None
        user, password = data.login.decode(), data.password.decode()
        accepted = (user, password) == self.auth
        self.logins.append((user, password, accepted))
        return AuthResult(success=accepted, handled=False, auth_data=data)

    def _opened(self, protocol: Any) -> None:
        self._live.add(protocol)

    def _closed(self, protocol: Any, connection: Connection) -> None:
        self._live.discard(protocol)
        connection.closed = True
        self._notify()

    # --- the handler hooks (aiosmtpd calls them with the protocol as ``server``) ------------

    def _scripted(self, command: str) -> str | None:
        script = self.scripts[command]
        return script.popleft() if script else None

    async def handle_MAIL(
        self,
        server: _PeerSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        reply = self._scripted("MAIL")
        if reply is not None and not reply.startswith("2"):
            return await self._answer(server, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return reply or "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: _PeerSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        rejected = self.reject.get(address.lower())
        if rejected is not None:
            return rejected
        reply = self._scripted("RCPT")
        if reply is not None and not reply.startswith("2"):
            return await self._answer(server, reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return reply or "250 2.1.5 OK"

    async def handle_EHLO(
        self,
        server: _PeerSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd reads commands line by line, so it can take pipelined ones (RFC 2920);
        with ``pipelining`` it says so."""
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: _PeerSMTP, session: Session, envelope: Envelope) -> str:
        while self.data_gate is not None and not self.data_gate.is_set():
            await asyncio.sleep(0.02)
        reply = self._scripted("DATA") or f"250 2.0.0 OK: queued as {len(self.transactions)}"
        sender = envelope.mail_from or ""
        self.transactions.append(
            Received(
                sender="" if sender == "<>" else sender,
                recipients=tuple(envelope.rcpt_tos),
                content=envelope.original_content or b"",
                tls=session.ssl is not None,
                ehlo=session.host_name,
                mail_options=tuple(envelope.mail_options),
                connection=server.connection.number,
                reply="" if reply == DROP else reply,
                login=session.auth_data.login.decode() if session.auth_data else None,
            )
        )
        server.connection.transactions += 1
        self._notify()
        return await self._answer(server, reply)

    async def _answer(self, server: _PeerSMTP, reply: str) -> str:
        if reply == DROP:
            server.transport.abort()
            await asyncio.Future()  # cancelled with the connection's handler task
        if reply.startswith("421"):
            # Closed after the reply is written: close() flushes what is buffered first.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return reply


class _PeerSMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's SMTP for one connection, with the peer as its handler."""

    def __init__(self, peer: SMTPPeer, connection: Connection, **kwargs: Any) -> None:
        super().__init__(peer, **kwargs)
        self.peer = peer
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # called again, on the TLS transport, by STARTTLS
        self.peer._opened(self)
        if self.session is not None and self.session.ssl is not None:
            self.connection.tls = True

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.peer._closed(self, self.connection)


class _Unwelcoming(asyncio.Protocol):
    """A connection that never gets SMTP: closed at once, left silent, or refused by a
    greeting."""

    def __init__(self, peer: SMTPPeer, connection: Connection) -> None:
        self.peer = peer
        self.connection = connection
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer._opened(self)
        if self.peer.on_connect == "close":
            transport.abort()
        elif self.peer.on_connect != "silent":
            transport.write(self.peer.on_connect.encode() + b"\r\n")
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.peer._closed(self, self.connection)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_certificates: dict[str, tuple[Path, Path]] = {}
_certificates_lock = threading.Lock()


def _certificate(hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``hostname``, localhost and the loopback addresses, made
    once per test process (an RSA key takes a while) in a directory removed at exit."""
    with _certificates_lock:
        if hostname not in _certificates:
            directory = Path(tempfile.mkdtemp(prefix="tidings-peer-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            cert, key = directory / "cert.pem", directory / "key.pem"
            write_self_signed(cert, key, hostname)
            _certificates[hostname] = (cert, key)
        return _certificates[hostname]
