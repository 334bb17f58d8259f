"""The SMTP protocol engine: aiosmtpd's ``SMTP``, extended, and the listener that runs it.

aiosmtpd owns the connection, command dispatch, timeouts and STARTTLS. Tidings adds what a
mail exchanger needs and aiosmtpd lacks: ESMTP extensions in EHLO (PIPELINING, CHUNKING,
ENHANCEDSTATUSCODES, SMTPUTF8), strict path parsing, enhanced status codes on every reply,
BDAT (RFC 3030), and a DATA reader that takes the socket's data in large chunks and finds the
end-of-data marker itself instead of reading line by line. Policy — who may send what to whom —
is not here: it lives in the handler's ``handle_MAIL``/``handle_RCPT``/``handle_DATA`` hooks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self, cast

from aiosmtpd.smtp import SMTP, Envelope, Session

from tidings import metrics
from tidings.address import Address, AddressError, parse_params, parse_path
from tidings.config import Config
from tidings.guard import Defences, SlowClientGuard

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
TLS_HANDSHAKE_TIMEOUT = 30.0
END_OF_DATA = b"\r\n.\r\n"
# RFC 5321 §3.8: a server that must stop says 421 and closes, between transactions.
SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"
# Commands that move no mail (RFC 5321 §4.1.4 has no limit; Postfix calls them junk): too many
# of them between two accepted messages end the session.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "EHLO", "HELO"})
# Enhanced status codes (RFC 3463) for replies whose text does not carry one already.
DEFAULT_ENHANCED = {
    211: "2.0.0", 214: "2.0.0", 221: "2.0.0", 250: "2.0.0", 251: "2.1.5", 252: "2.5.0",
    421: "4.3.0", 450: "4.2.0", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0", 455: "4.5.4",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 521: "5.3.2",
    530: "5.7.0", 534: "5.7.9", 535: "5.7.8", 538: "5.7.11", 550: "5.0.0", 551: "5.1.6",
    552: "5.3.4", 553: "5.1.3", 554: "5.0.0", 555: "5.5.4",
}  # fmt: skip
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


def with_enhanced_code(reply: str) -> str:
    """Add an RFC 3463 enhanced status code to a reply that lacks one (RFC 2034 §3).

    220 is left alone: it is the greeting, which must start with the domain (RFC 5321 §4.2)
    and which RFC 2034 §3 exempts, or the go-ahead for STARTTLS.
    """
    if (
        len(reply) < 3
        or not reply[:3].isdigit()
        or reply[0] not in "245"
        or reply[3:4] not in ("", " ", "-")
        or reply.startswith("220")
        or _HAS_ENHANCED.match(reply)
    ):
        return reply
    code = int(reply[:3])
    enhanced = DEFAULT_ENHANCED.get(code, f"{reply[0]}.0.0")
    return f"{reply[:3]}{reply[3:4] or ' '}{enhanced} {reply[4:]}".rstrip()


class TidingsEnvelope(Envelope):
    """aiosmtpd's envelope plus what Tidings keeps during one transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.sender: Address | None = None
        self.recipients: list[Address] = []
        self.resolutions: list[Any] = []
        self.declared_size: int | None = None
        self.bdat: bytearray | None = None
        self.bdat_failed: str | None = None
        # The SPF check a handler may start at MAIL FROM and await at the end of DATA.
        self.spf_check: asyncio.Task[Any] | None = None
        # For the transaction's log line, set by the DATA hook: the queue id (the id in the
        # 250 reply), the Message-ID header, the size as stored, and the hook's own fields.
        self.queue_id: str | None = None
        self.message_id: str = ""
        self.message_size: int | None = None
        self.log_fields: dict[str, Any] = {}


class SmtpSessions:
    """The open SMTP sessions of the process, so that a stop can end each one at the right
    moment (RFC 5321 §3.8): at once with 421 when it is between transactions or still
    giving its envelope, after its reply when it is in DATA or BDAT."""

    def __init__(self) -> None:
        self.open: set[TidingsSMTP] = set()
        self.closing = False
        self._empty = asyncio.Event()

    def add(self, session: TidingsSMTP) -> None:
        self.open.add(session)
        if self.closing:
            session.request_shutdown()

    def discard(self, session: TidingsSMTP) -> None:
        self.open.discard(session)
        if self.closing and not self.open:
            self._empty.set()

    async def shutdown(self, grace: float) -> tuple[int, int]:
        """Say 421 to every idle session, let those in DATA finish for up to ``grace``
        seconds, then drop the rest (they got no 250, so they keep their message and try
        again). Returns (sessions told 421 at once, sessions dropped after the grace)."""
        self.closing = True
        sessions = list(self.open)
        for session in sessions:
            session.request_shutdown()
        busy = sum(1 for s in sessions if s.in_data_transaction)
        if self.open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), grace)
        left = list(self.open)
        for session in left:
            session.abort()
        return len(sessions) - busy, len(left)


def _finishes_before_stop(
    method: Callable[[TidingsSMTP, str | None], Awaitable[None]],
) -> Callable[[TidingsSMTP, str | None], Awaitable[None]]:
    """DATA and BDAT run to their reply even when a stop is asked for meanwhile; the 421
    follows the reply."""

    @functools.wraps(method)
    async def run(self: TidingsSMTP, arg: str | None) -> None:
        if self.shutting_down and not self.in_data_transaction:
            return  # the 421 is out already; this command came too late
        self._in_data = True
        try:
            await method(self, arg)
        finally:
            self._in_data = False
            self._command_done()
        if self.shutting_down and not self.in_data_transaction:
            self.say_goodbye()

    return run


class TidingsSMTP(SMTP):
    """aiosmtpd's protocol engine with the extensions a modern MX speaks."""

    # The name in log lines; the registry a stop reaches the session through (set by the
    # listener's factory).
    protocol_name = "smtp"
    sessions: SmtpSessions | None = None
    metrics_service = "smtp"  # the service label of the SMTP metrics
    # Set by the listener: the connection limits and the slow-client rule (guard.py).
    defences: Defences | None = None

    def __init__(
        self,
        handler: Any,
        *,
        hostname: str,
        max_message_size: int,
        max_command_line: int,
        timeout: float,
        bare_line_endings: str,
        tls_context: ssl.SSLContext | None,
        implicit_tls: bool = False,
        max_errors: int = 0,
        max_junk_commands: int = 0,
    ) -> None:
        super().__init__(
            handler,
            hostname=hostname,
            ident="Tidings ESMTP",
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=None if implicit_tls else tls_context,
            timeout=timeout,
            auth_required=False,
            auth_require_tls=True,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
        )
        self.max_message_size = max_message_size
        # aiosmtpd looks a command's limit up in command_size_limits after EHLO (its class-wide
        # defaultdict of 512); this session's own mapping applies the configured limit to all.
        self.command_size_limit = max_command_line
        self.command_size_limits = collections.defaultdict(lambda: max_command_line)
        self.bare_line_endings = bare_line_endings
        self.implicit_tls = implicit_tls
        self._started_tls = False
        self._in_data = False
        self.shutting_down = False
        # Per-session abuse limits (0: none); both counts restart with each accepted message.
        self.max_errors = max_errors
        self.max_junk_commands = max_junk_commands
        self._errors = 0
        self._junk = 0
        self._admitted = False
        self._refused = False
        self._slow: SlowClientGuard | None = None
        for name in JUNK_COMMANDS & self._smtp_methods.keys():
            self._smtp_methods[name] = self._counted_as_junk(self._smtp_methods[name])

    @classmethod
    def from_config(
        cls, handler: Any, config: Config, tls: ssl.SSLContext | None, *, implicit_tls: bool = False
    ) -> Self:
        """A session for one connection, with the limits of ``config``."""
        limits = config.limits
        return cls(
            handler,
            hostname=config.server.hostname,
            max_message_size=limits.max_message_size,
            max_command_line=limits.max_command_line,
            timeout=limits.smtp_timeout,
            bare_line_endings=limits.bare_line_endings,
            tls_context=tls,
            implicit_tls=implicit_tls,
            max_errors=limits.max_errors,
            max_junk_commands=limits.max_junk_commands,
        )

    # aiosmtpd creates these; Tidings' versions carry more state.
    def _create_envelope(self) -> TidingsEnvelope:
        return TidingsEnvelope()

    # Typed views of aiosmtpd's optional attributes. They must not raise: aiosmtpd inspects
    # every member of the protocol object when it is created, before these are set.
    @property
    def env(self) -> TidingsEnvelope:
        return cast(TidingsEnvelope, self.envelope)

    @property
    def sess(self) -> Session:
        return cast(Session, self.session)

    def _reset_transaction(self) -> None:
        self._set_rset_state()  # type: ignore[no-untyped-call]

    def _reset_envelope(self) -> None:
        self._set_post_data_state()  # type: ignore[no-untyped-call]

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or getattr(self, "_started_tls", False)

    async def push(self, status: str) -> None:  # type: ignore[override]
        if self.transport is None or self.transport.is_closing():
            return  # a 421 has been said and the connection is closing
        await super().push(with_enhanced_code(status))
        if status[:1] == "5" and self.max_errors:
            self._errors += 1
            if self._errors >= self.max_errors:
                self._close_with("421 4.7.0 Too many errors; closing the connection")

    # --- abuse limits (guard.py) -------------------------------------------------------------

    def _counted_as_junk(
        self, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        async def counted(arg: str | None) -> None:
            self._junk += 1
            if self.max_junk_commands and self._junk > self.max_junk_commands:
                self._close_with("421 4.7.0 Too many commands without mail; closing the connection")
                return
            await method(arg)

        return counted

    def message_accepted(self) -> None:
        """A message got its 250: the session is doing what it is for."""
        self._errors = self._junk = 0

    def _close_with(self, reply: str) -> None:
        """Say ``reply`` and close; commands the client pipelined behind are not run
        (``_reset_timeout`` stops every dispatch once the transport is closing)."""
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            log.info("%s %s: %s", self.protocol_name, self._peer_text(), reply)
            transport.write(f"{reply}\r\n".encode())
            transport.close()

    def _peer_text(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else "?"

    def data_received(self, data: bytes) -> None:
        if self._slow is not None:
            self._slow.received(len(data))
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this as it dispatches each command (and DATA/BDAT as chunks arrive).
        if (
            self.transport is not None
            and self.transport.is_closing()
            and self._handler_coroutine is asyncio.current_task()
        ):
            # Closed by aiosmtpd itself (too many unknown commands) or by us: a command the
            # client pipelined behind must not run (a DATA there would reach delivery unseen).
            self._reader._buffer.clear()  # type: ignore[attr-defined]
            raise asyncio.CancelledError
        super()._reset_timeout(duration)
        if not self._in_data:
            self._command_done()

    def _command_done(self) -> None:
        if self._slow is not None:
            self._slow.done()

    def _waiting_for_client(self) -> bool:
        return getattr(self._reader, "_waiter", None) is not None

    # --- stopping (RFC 5321 §3.8) ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.defences is not None:
            peer = transport.get_extra_info("peername")
            reason = self.defences.gate.admit(str(peer[0]) if isinstance(peer, tuple) else "?")
            if reason is not None:
                # RFC 5321 §3.1: a server may answer the connection with 421 and close it.
                self._refused = True
                log.info("%s %s: %s", self.protocol_name, peer, reason)
                cast(asyncio.WriteTransport, transport).write(
                    f"421 4.7.0 {self.hostname} {reason}\r\n".encode()
                )
                transport.close()
                return
            self._admitted = True
            self._slow = self.defences.slow_client_guard(
                self._waiting_for_client,
                lambda: self._close_with("421 4.4.2 Too slow; closing the connection"),
            )
        super().connection_made(transport)
        if self.sessions is not None:
            self.sessions.add(self)

    def eof_received(self) -> bool:
        """The client has hung up: aiosmtpd cancels the session task, but a task cancelled
        before its first step (a client that connects and closes at once) never reaches the
        code that closes the connection, which then sat half-open until the idle timeout,
        holding its place under the connection limits. Nothing more will be said: close."""
        super().eof_received()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._admitted and self.defences is not None:
            self._admitted = False
            self.defences.gate.release(self._peer_text())
        self._command_done()
        super().connection_lost(error)
        if self.sessions is not None:
            self.sessions.discard(self)

    @property
    def in_data_transaction(self) -> bool:
        """In DATA or BDAT, or between the BDAT chunks of one message."""
        return self._in_data or (self.envelope is not None and self.env.bdat is not None)

    def request_shutdown(self) -> None:
        """421 now, or after the reply of the DATA/BDAT transaction under way."""
        self.shutting_down = True
        if not self.in_data_transaction:
            self.say_goodbye()

    def say_goodbye(self) -> None:
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(SHUTTING_DOWN)
            transport.close()

    def abort(self) -> None:
        """Drop the connection without a word (the grace period is over)."""
        if self.transport is not None:
            cast(asyncio.WriteTransport, self.transport).abort()

    # --- the transaction's log line --------------------------------------------------------------

    def log_context(self) -> dict[str, Any]:
        """Fields of this session for log lines (a subclass adds the user)."""
        return {}

    def log_transaction(
        self, envelope: TidingsEnvelope, reply: str, recipients: Sequence[str] | None = None
    ) -> None:
        """One line for a transaction's outcome: accepted (the 250 with its queue id) or
        refused (at MAIL, RCPT — ``recipients`` are then the refused ones — or DATA)."""
        stage = "data" if recipients is None else "rcpt" if recipients else "mail"
        metrics.smtp_reply(self.metrics_service, stage, reply)
        if not log.isEnabledFor(logging.INFO):
            return
        peer = self.sess.peer
        rcpts = [_printable(r) for r in (envelope.rcpt_tos if recipients is None else recipients)]
        fields: dict[str, Any] = {
            "service": self.protocol_name,
            "queue_id": envelope.queue_id or "",
            "client": str(peer[0]) if isinstance(peer, tuple) else str(peer),
            "helo": _printable(self.sess.host_name or ""),
            **self.log_context(),
            "mail_from": _printable(envelope.mail_from or ""),
            "rcpts": len(rcpts),
            "to": rcpts,
            "size": envelope.message_size,
            "message_id": envelope.message_id,
            "result": with_enhanced_code(reply),
            **envelope.log_fields,
        }
        text = " ".join(
            f"from=<{value}>"
            if key == "mail_from"
            else f"{_TEXT_KEYS.get(key, key)}={_text_value(value)}"
            for key, value in fields.items()
            if key != "service"
        )
        log.info("%s %s", self.protocol_name, text, extra=fields)

    async def _hook(self, name: str, *args: Any) -> str | None:
        hook: Callable[..., Any] | None = self._handle_hooks.get(name)
        if hook is None:
            return None
        result: str = await hook(self, self.sess, self.env, *args)
        return result

    # --- EHLO ----------------------------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        if not _is_utf8(hostname):
            await self.push("501 5.5.4 EHLO name is not valid UTF-8")
            return
        self._reset_transaction()
        self.sess.extended_smtp = True
        self.sess.host_name = hostname
        lines = [
            f"{self.hostname} greets {hostname}",
            f"SIZE {self.max_message_size}",
            "PIPELINING",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
        ]
        if self.tls_context and not self.tls_active:
            lines.append("STARTTLS")
        extra = await self._hook("EHLO_EXTENSIONS")
        if extra:
            lines.extend(extra.split("\n"))
        replies = [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]
        # One write for the whole reply; push() would add enhanced codes, which EHLO must not.
        await super().push("\r\n".join(replies))

    async def smtp_HELO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        if not _is_utf8(hostname):
            await self.push("501 5.5.4 HELO name is not valid UTF-8")
            return
        self._reset_transaction()
        self.sess.extended_smtp = False
        self.sess.host_name = hostname
        await super().push(f"250 {self.hostname}")

    async def smtp_AUTH(self, arg: str | None) -> None:
        await self.push("502 5.5.1 AUTH is not available on this port")

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        """RFC 3207 with the event loop's own TLS (uvloop's is native code; aiosmtpd's
        STARTTLS layers asyncio's pure-Python SSL protocol, several times the CPU per byte)."""
        if self.tls_active:
            await self.push("503 5.5.1 TLS is already active")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 4.7.0 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        transport = cast(asyncio.WriteTransport, self.transport)
        assert transport is not None
        # RFC 3207 §4.2 (and the STARTTLS command-injection attacks): anything the client sent
        # after STARTTLS in clear text is discarded, not read as commands under TLS.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        try:
            tls_transport = await self.loop.start_tls(
                transport,
                self,
                self.tls_context,
                server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.info("STARTTLS with %s failed: %s", self.sess.peer, e)
            transport.close()
            return
        if tls_transport is None:
            transport.close()
            return
        self._started_tls = True
        self._original_transport = transport
        self._reader._transport = tls_transport  # type: ignore[attr-defined]
        self._writer._transport = tls_transport  # type: ignore[attr-defined]
        self.transport = tls_transport
        # RFC 3207 §4.2: forget what the client said before TLS.
        peer = self.sess.peer
        self._reset_transaction()
        self.session = self._create_session()
        self.sess.peer = peer
        self.sess.ssl = {"ssl_object": tls_transport.get_extra_info("ssl_object")}
        self._tls_handshake_okay = True

    # --- MAIL / RCPT ---------------------------------------------------------------------------

    async def _need_helo(self) -> bool:
        if not self.sess.host_name:
            await self.push("503 5.5.1 Send EHLO or HELO first")
            return True
        return False

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self._need_helo():
            return
        if self.env.sender is not None or self.env.mail_from is not None:
            await self.push("503 5.5.1 Sender already given; send RSET to start over")
            return
        if not arg or arg[:5].upper() != "FROM:":
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        try:
            address, param_text = parse_path(arg[5:], allow_null=True)
            params = parse_params(param_text)
        except AddressError as e:
            await self.push(f"501 5.1.7 Bad sender address syntax: {e}")
            return
        if params and not self.sess.extended_smtp:
            await self.push("501 5.5.4 Parameters need EHLO")
            return
        reply = self._check_mail_params(params)
        if reply:
            await self.push(reply)
            return
        if address and not address.local.isascii() and "SMTPUTF8" not in params:
            await self.push("553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter")
            return
        status = await self._hook("MAIL", address, params)
        if status is not None and not status.startswith("2"):
            refused = TidingsEnvelope()
            refused.mail_from = str(address) if address else ""
            self.log_transaction(refused, status, ())
        if status is None or status.startswith("250"):
            self.env.sender = address
            self.env.mail_from = str(address) if address else ""
            self.env.mail_options = [f"{k}={v}" if v else k for k, v in params.items()]
            self.env.smtp_utf8 = "SMTPUTF8" in params
        await self.push(status or "250 2.1.0 Sender OK")

    def _check_mail_params(self, params: dict[str, str | None]) -> str | None:
        for key, value in params.items():
            if key == "SIZE":
                if not value or not _is_number(value):
                    return "501 5.5.4 SIZE needs a number"
                if int(value) > self.max_message_size:
                    return f"552 5.3.4 Message size exceeds the limit of {self.max_message_size}"
                self.env.declared_size = int(value)
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    return "501 5.5.4 BODY must be 7BIT or 8BITMIME"
            elif key == "SMTPUTF8":
                if value is not None:
                    return "501 5.5.4 SMTPUTF8 takes no value"
            else:
                return f"555 5.5.4 MAIL parameter {key} is not supported"
        return None

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._need_helo():
            return
        if self.env.mail_from is None:
            await self.push("503 5.5.1 Send MAIL first")
            return
        if not arg or arg[:3].upper() != "TO:":
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            address, param_text = parse_path(arg[3:], allow_null=False)
            params = parse_params(param_text)
        except AddressError as e:
            await self.push(f"501 5.1.3 Bad recipient address syntax: {e}")
            return
        assert address is not None
        if params:
            await self.push(f"555 5.5.4 RCPT parameter {next(iter(params))} is not supported")
            return
        if not address.local.isascii() and not self.env.smtp_utf8:
            await self.push("553 5.6.7 Non-ASCII address needs SMTPUTF8 in MAIL FROM")
            return
        status = await self._hook("RCPT", address, params)
        if status is not None and not status.startswith("2"):
            self.log_transaction(self.env, status, [str(address)])
        if status is None:
            self.env.recipients.append(address)
            self.env.rcpt_tos.append(str(address))
        await self.push(status or "250 2.1.5 Recipient OK")

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        self._reset_transaction()
        await self.push("250 2.0.0 Reset")

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.push("252 2.5.0 Cannot verify the user, but will try delivery")

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push("250 2.0.0 OK")

    # --- DATA ----------------------------------------------------------------------------------

    @_finishes_before_stop
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self._need_helo():
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.env.bdat is not None:
            await self.push("503 5.5.1 DATA cannot follow BDAT")
            return
        if not self.env.rcpt_tos:
            await self.push("503 5.5.1 Send RCPT first (no valid recipients)")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body, too_big = await self._read_dot_data()
        if too_big:
            envelope = self.env
            self._reset_envelope()
            reply = f"552 5.3.4 Message too big: the limit is {self.max_message_size} bytes"
            self.log_transaction(envelope, reply)
            await self.push(reply)
            return
        # RFC 5321 §4.5.2: remove the leading dot of every dot-stuffed line.
        if body.startswith(b"."):
            body = body[1:]
        await self._finish_message(bytes(body).replace(b"\r\n.", b"\r\n"))

    async def _read_dot_data(self) -> tuple[bytearray, bool]:
        """Read DATA up to CRLF.CRLF in large chunks; returns (raw body, too big).

        The body keeps its final CRLF. Bytes after the marker (pipelined commands) go back to
        the reader. Past the size limit the data is read and dropped, keeping only a tail long
        enough to see the marker, so a huge message costs no memory.
        """
        reader = self._reader
        buf = bytearray(b"\r\n")  # a virtual CRLF so that ".\r\n" at once ends an empty body
        scanned = 0
        too_big = False
        # Past this the body is over the limit whatever follows: the limit, the virtual CRLF,
        # and the end-of-data marker's own bytes.
        limit = self.max_message_size + 2 + len(END_OF_DATA)
        while True:
            idx = buf.find(END_OF_DATA, max(0, scanned - 4))
            if idx >= 0:
                rest = buf[idx + len(END_OF_DATA) :]
                if rest:
                    reader._buffer[0:0] = rest  # type: ignore[attr-defined]  # pipelined commands
                too_big = too_big or idx > self.max_message_size
                return (bytearray() if too_big else buf[2 : idx + 2]), too_big
            scanned = len(buf)
            if scanned > limit:
                too_big = True
                del buf[:-4]
                scanned = len(buf)
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                raise ConnectionResetError("connection closed during DATA")
            self._reset_timeout()
            buf += chunk

    # --- BDAT (RFC 3030) -----------------------------------------------------------------------

    @_finishes_before_stop
    async def smtp_BDAT(self, arg: str | None) -> None:
        words = (arg or "").split()
        if (
            not 1 <= len(words) <= 2
            or not _is_number(words[0])
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            # The size is unknown, so the chunk cannot be skipped: the session is lost.
            self._close_with("501 5.5.4 Syntax: BDAT size [LAST]; closing the connection")
            return
        size, last = int(words[0]), len(words) == 2
        refusal = await self._bdat_refusal()
        data = await self._read_exactly(size, keep=refusal is None)
        envelope = self.env
        if refusal is not None:
            await self.push(refusal)
            return
        if envelope.bdat is None:
            envelope.bdat = bytearray()
        if envelope.bdat_failed is None and len(envelope.bdat) + size > self.max_message_size:
            envelope.bdat_failed = (
                f"552 5.3.4 Message too big: the limit is {self.max_message_size} bytes"
            )
            envelope.bdat = bytearray()
        if envelope.bdat_failed is None:
            envelope.bdat += data
        if not last:
            await self.push(envelope.bdat_failed or f"250 2.0.0 {size} octets received")
            return
        if envelope.bdat_failed is not None:
            failed = envelope.bdat_failed
            self._reset_envelope()
            self.log_transaction(envelope, failed)
            await self.push(failed)
            return
        await self._finish_message(bytes(envelope.bdat))

    async def _bdat_refusal(self) -> str | None:
        if not self.sess.host_name:
            return "503 5.5.1 Send EHLO first"
        if self.env.mail_from is None:
            return "503 5.5.1 Send MAIL first"
        if not self.env.rcpt_tos:
            return "503 5.5.1 Send RCPT first (no valid recipients)"
        return None

    async def _read_exactly(self, size: int, *, keep: bool) -> bytes:
        """Read a BDAT chunk piece by piece, the idle timer restarting with each piece (a large
        chunk on a slow link may take longer than one timeout); when not keeping it (or past
        the limit), drop it as it comes."""
        keep = keep and size <= self.max_message_size
        pieces: list[bytes] = []
        remaining = size
        while remaining:
            piece = await self._reader.read(min(remaining, READ_CHUNK))
            if not piece:
                raise ConnectionResetError("connection closed during BDAT")
            self._reset_timeout()
            remaining -= len(piece)
            if keep:
                pieces.append(piece)
        return b"".join(pieces)

    # --- end of a message ----------------------------------------------------------------------

    async def _finish_message(self, body: bytes) -> None:
        """Check line endings, hand the message to the DATA hook, reply, reset the envelope."""
        envelope = self.env
        body, problem = check_line_endings(body, self.bare_line_endings)
        if problem:
            self._reset_envelope()
            self.log_transaction(envelope, problem)
            await self.push(problem)
            return
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"  # a BDAT message may stop mid-line; stored lines end in CRLF
        envelope.content = body
        envelope.original_content = body
        envelope.message_size = len(body)
        try:
            status = await self._hook("DATA")
        finally:
            self._reset_envelope()
        reply = status or "250 2.0.0 OK"
        # Logged before the reply is sent: a client gone meanwhile does not unmake the commit.
        self.log_transaction(envelope, reply)
        if reply.startswith("250"):
            self.message_accepted()
        await self.push(reply)


_TEXT_KEYS = {"queue_id": "id", "message_id": "msgid"}


def _printable(text: str) -> str:
    """Client-supplied text made safe for a log line (no control characters), bounded."""
    return "".join(c if c.isprintable() else "?" for c in text)[:512]


def _text_value(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list):
        return ",".join(f"<{v}>" for v in value) or "-"
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or '"' in text) else text


def _is_utf8(text: str) -> bool:
    """aiosmtpd decodes arguments with surrogateescape: bytes that were not UTF-8 come back
    as lone surrogates, which no reply can echo."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²" and "١", which int() refuses."""
    return text.isascii() and text.isdigit()


_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def check_line_endings(body: bytes, policy: str) -> tuple[bytes, str | None]:
    """Refuse or repair bare CR / bare LF (RFC 5321 §2.3.8), the stuff of SMTP smuggling.

    Returns (body, None) when acceptable — repaired to CRLF under "normalize" — or
    (body, reply) when refused.
    """
    crlf = body.count(b"\r\n")
    if body.count(b"\n") == crlf and body.count(b"\r") == crlf:
        return body, None
    if policy == "normalize":
        return _BARE.sub(b"\r\n", body), None
    return body, "550 5.6.11 Message contains bare CR or LF; lines must end with CRLF"
