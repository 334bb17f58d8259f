"""The POP3 server: connections, the RFC 1939 state machine, and the maildrop it serves.

A session is AUTHORIZATION → TRANSACTION → UPDATE (RFC 1939 §3). The maildrop is the
account's INBOX as it was at login: messages delivered later wait for the next session, DELE
only marks, and the marks take effect in UPDATE, after QUIT, in one transaction; a connection
that ends any other way changes nothing. With ``pop3.keep_on_server`` the marked messages are
flagged ``\\Deleted`` instead of expunged, and stay visible to IMAP.

Messages flagged ``\\Deleted`` are left out of the maildrop in both modes: they are either on
their way out (an IMAP client deleted them and will expunge) or were already deleted by POP3
with keep_on_server, and a POP3 client must not download them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from tidings.auth import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    Authenticator,
    LoginRefused,
    SaslError,
    decode_base64,
    decode_plain,
    decode_utf8,
)
from tidings.connection import MAX_BUFFERED_INPUT, ClientConnection, ConnectionClosed
from tidings.pop3 import parser as p
from tidings.pop3.lock import MaildropLocks
from tidings.pop3.responses import (
    err,
    message_response,
    multiline,
    normalize_line_ends,
    ok,
    top_of,
    unique_id,
)
from tidings.store import mailbox as mb
from tidings.store.db import Store, StoreError, describe_db_error
from tidings.store.models import Blob
from tidings.store.notify import MailboxEvents

log = logging.getLogger(__name__)

# Read-ahead for RETR/TOP: clients fetch in order, so the next messages' bodies come in the
# same query, up to this many messages and bytes (bounded memory per session).
READ_AHEAD_MESSAGES = 32
READ_AHEAD_BYTES = 1024 * 1024
SASL_MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True)
class Pop3Settings:
    hostname: str
    keep_on_server: bool = False
    allow_insecure_auth: bool = False
    timeout: float = 600.0
    # -ERR replies to bad commands, and commands before login, after which the session is
    # closed (0: no limit).
    max_errors: int = 20
    max_junk_commands: int = 100


class Pop3Error(Exception):
    """A command refused: carries the ``-ERR`` line to send."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.reply = err(text, code)


class LineTooLong(Exception):
    pass


# --- the connection: buffered line input, output with flow control, STLS ---------------------


class Connection(ClientConnection):
    """One client connection; the session reads lines from it and writes bytes to it."""

    protocol_name = "pop3"

    def __init__(self, service: Pop3Service, implicit_tls: bool) -> None:
        super().__init__(implicit_tls, service.connections)
        self.service = service
        self._buffer = bytearray()

    def refusal(self, reason: str) -> bytes:
        return err(reason, "SYS/TEMP")  # RFC 3206 §4: a temporary condition

    def run_session(self) -> Coroutine[Any, Any, None]:
        return Session(self.service, self).run()

    def take_input(self, data: bytes) -> int:
        self._buffer += data
        return len(self._buffer)

    def drop_input(self) -> None:
        self._buffer.clear()

    async def readline(self, limit: int) -> bytes:
        """The next line with its LF; b"" at end of input; LineTooLong after skipping a line
        longer than ``limit``."""
        skipping = False
        while True:
            self.will_read()
            nl = self._buffer.find(b"\n")
            if nl >= 0:
                line = bytes(self._buffer[: nl + 1])
                del self._buffer[: nl + 1]
                self.command_done()
                if len(self._buffer) <= MAX_BUFFERED_INPUT // 2:
                    self.resume_reading()
                if skipping or len(line) > limit:
                    raise LineTooLong
                return line
            if len(self._buffer) > limit:
                self._buffer.clear()
                skipping = True
            if self.at_eof:
                return b""
            await self.wait_readable()


# --- the maildrop ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Maildrop:
    """The maildrop as it was at login: message n is ``messages[n - 1]``."""

    mailbox_id: int
    uidvalidity: int
    messages: tuple[mb.MessageRef, ...]


# --- the session -------------------------------------------------------------------------------

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"

# RFC 1939 §4-§6, RFC 2449 §5 (CAPA in both states), RFC 2595 §4 (STLS before login),
# RFC 5034 §4 (AUTH before login).
ALLOWED: dict[str, tuple[type[p.Command], ...]] = {
    AUTHORIZATION: (p.User, p.Pass, p.Auth, p.Capa, p.Stls, p.Quit),
    TRANSACTION: (
        p.Stat, p.List, p.Retr, p.Dele, p.Noop, p.Rset, p.Quit, p.Top, p.Uidl, p.Capa,
    ),
}  # fmt: skip


class Session:
    """One POP3 conversation, from greeting to close."""

    def __init__(self, service: Pop3Service, conn: Connection) -> None:
        self.service = service
        self.settings = service.settings
        self.store = service.store
        self.conn = conn
        self.state = AUTHORIZATION
        self.user: str | None = None  # given by USER, waiting for PASS
        self.account: str | None = None
        self.maildrop: Maildrop | None = None
        self.deleted: set[int] = set()  # message numbers marked by DELE
        self.retrieved: set[int] = set()  # message numbers sent whole by RETR
        self.bodies: dict[int, bytes] = {}  # read-ahead: message number → stored bytes
        self.bad_commands = 0
        self.commands_before_login = 0
        self.done = False

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.send(ok(f"{self.settings.hostname} Tidings POP3 server ready"))
            while not self.done:
                try:
                    async with asyncio.timeout(self.settings.timeout):
                        line = await self.conn.readline(p.MAX_COMMAND_LINE)
                except TimeoutError:
                    # RFC 1939 §3: the autologout timer ends the session without UPDATE.
                    self.send(err("Autologout; idle for too long"))
                    break
                except LineTooLong:
                    await self.bad("Line too long")
                    continue
                if not line:
                    break
                try:
                    command = p.parse_command(line)
                except p.ParseError as e:
                    await self.bad(str(e))
                    continue
                await self.dispatch(command)
                try:
                    # A client that stops reading must not hold its session (and the maildrop
                    # lock) forever: the autologout timer covers our output too.
                    async with asyncio.timeout(self.settings.timeout):
                        await self.conn.drain()
                except TimeoutError:
                    log.info("pop3 %s: client stopped reading; closing", self.conn.peer)
                    break
        except (ConnectionClosed, ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("pop3 %s: connection ended: %s", self.conn.peer, e)
        except Exception:
            log.exception("pop3 %s: session failed", self.conn.peer)
        finally:
            await self.end()

    async def end(self) -> None:
        self.conn.close()
        if self.maildrop is not None:
            maildrop, self.maildrop = self.maildrop, None
            await self.service.locks.release(maildrop.mailbox_id)

    def send(self, data: bytes) -> None:
        self.conn.write(data)

    async def bad(self, reason: str) -> None:
        self.bad_commands += 1
        limit = self.settings.max_errors
        if limit and self.bad_commands >= limit:
            self.send(err(f"{reason}; too many bad commands, closing the connection"))
            self.done = True
        else:
            self.send(err(reason))

    async def dispatch(self, command: p.Command) -> None:
        if self.state == AUTHORIZATION:
            self.commands_before_login += 1
            limit = self.settings.max_junk_commands
            if limit and self.commands_before_login > limit:
                self.send(err("Too many commands without logging in; closing the connection"))
                self.done = True
                return
        if not isinstance(command, ALLOWED[self.state]):
            name = type(command).__name__.upper()
            where = "before login" if self.state == AUTHORIZATION else "after login"
            await self.bad(f"{name} is not valid {where}")
            return
        handler: Callable[[p.Command], Awaitable[None]] = getattr(
            self, "do_" + type(command).__name__
        )
        try:
            await handler(command)
        except Pop3Error as e:
            self.send(e.reply)
        except (SQLAlchemyError, StoreError) as e:
            # RFC 3206 §4: SYS/TEMP, a temporary problem of ours; the session goes on.
            log.error("pop3 %s: %s", self.conn.peer, describe_db_error(e))
            self.send(err("Temporary server failure, try again later", "SYS/TEMP"))

    # --- AUTHORIZATION ------------------------------------------------------------------------

    @property
    def auth_allowed(self) -> bool:
        """RFC 2595 §2.2 / RFC 8314: passwords only over TLS unless the admin says otherwise."""
        return self.conn.tls_active or self.settings.allow_insecure_auth

    def capabilities(self) -> list[str]:
        """RFC 2449 §6; what is offered now (STLS before TLS, login methods when usable)."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == AUTHORIZATION:
            if self.auth_allowed:
                caps += ["USER", "SASL " + " ".join(SASL_MECHANISMS)]
            if not self.conn.tls_active and self.service.tls is not None:
                caps.append("STLS")
        caps.append("IMPLEMENTATION Tidings")
        return caps

    async def do_Capa(self, _: p.Capa) -> None:
        self.send(multiline(ok("Capability list follows"), self.capabilities()))

    async def do_Stls(self, _: p.Stls) -> None:
        if self.conn.tls_active:
            raise Pop3Error("Already using TLS")
        if self.service.tls is None:
            raise Pop3Error("TLS is not available")
        self.send(ok("Begin TLS negotiation"))
        await self.conn.drain()
        self.user = None  # RFC 2595 §4: nothing from before the handshake carries over
        await self.conn.start_tls(self.service.tls)

    def need_secure(self) -> None:
        if not self.auth_allowed:
            raise Pop3Error(
                "Plaintext authentication disallowed on non-secure connections; use STLS", "AUTH"
            )

    async def do_User(self, command: p.User) -> None:
        self.need_secure()
        self.user = command.name
        self.send(ok("Send PASS"))

    async def do_Pass(self, command: p.Pass) -> None:
        self.need_secure()
        if self.user is None:
            raise Pop3Error("Send USER first")
        user, self.user = self.user, None
        await self.login(user, command.password)

    async def do_Auth(self, command: p.Auth) -> None:
        self.need_secure()
        if command.mechanism is None:
            self.send(multiline(ok("Supported mechanisms follow"), SASL_MECHANISMS))
            return
        try:
            if command.mechanism == "PLAIN":
                response = await self.sasl_step("", command.initial_response)
                user, password = decode_plain(response)
            elif command.mechanism == "LOGIN":
                name = await self.sasl_step(LOGIN_USERNAME_CHALLENGE, command.initial_response)
                password_bytes = await self.sasl_step(LOGIN_PASSWORD_CHALLENGE, None)
                user = decode_utf8(name, "User name")
                password = decode_utf8(password_bytes, "Password")
            else:
                raise Pop3Error("Unsupported authentication mechanism")
        except SaslError as e:
            raise Pop3Error(str(e)) from None
        await self.login(user, password)

    async def sasl_step(self, challenge: str, initial: str | None) -> bytes:
        """One challenge and its response (RFC 5034 §4); ``=`` is an empty initial response."""
        if initial is not None:
            return b"" if initial == "=" else decode_base64(initial)
        self.send(f"+ {challenge}".encode() + b"\r\n")
        await self.conn.drain()
        try:
            async with asyncio.timeout(self.settings.timeout):
                line = await self.conn.readline(p.MAX_SASL_LINE)
        except LineTooLong:
            raise SaslError("Line too long") from None
        except TimeoutError:
            raise ConnectionClosed from None  # the autologout timer covers AUTH exchanges too
        if not line:
            raise ConnectionClosed
        text = p.strip_line_end(line).decode("ascii", errors="replace")
        if text == "*":
            raise SaslError("Authentication cancelled")
        return decode_base64(text)

    async def login(self, user: str, password: str) -> None:
        try:
            address = await self.service.authenticator.login(self.conn.peer, user, password, "pop3")
        except LoginRefused as e:
            raise Pop3Error(str(e), "SYS/TEMP" if e.temporary else "AUTH") from None
        await self.open_maildrop(address)

    async def open_maildrop(self, address: str) -> None:
        locks = self.service.locks
        try:
            async with self.store.read() as db:
                inbox = await mb.find_mailbox(db, address, "INBOX")
            if inbox is None:
                raise Pop3Error("This account has no INBOX", "SYS/PERM")
            if not await locks.acquire(inbox.id):
                raise Pop3Error("Maildrop is locked by another POP3 session", "IN-USE")
            try:
                async with self.store.read() as db:
                    rows = await mb.list_messages(db, inbox.id)
            except BaseException:
                await locks.release(inbox.id)
                raise
        except (SQLAlchemyError, StoreError) as e:
            log.error("pop3 %s: opening maildrop: %s", self.conn.peer, describe_db_error(e))
            raise Pop3Error("Temporary server failure, try again later", "SYS/TEMP") from None
        visible = tuple(m for m in rows if mb.DELETED_FLAG not in m.flag_set)
        self.maildrop = Maildrop(inbox.id, inbox.uidvalidity, visible)
        self.account = address
        self.state = TRANSACTION
        count, octets = self.stat()
        log.info("pop3 %s: %s logged in, %d messages", self.conn.peer, address, count)
        self.send(ok(f"Logged in, {count} messages ({octets} octets)"))

    async def do_Quit(self, _: p.Quit) -> None:
        self.done = True
        if self.state == AUTHORIZATION:
            self.send(ok(f"{self.settings.hostname} Tidings POP3 server signing off"))
            return
        # UPDATE state (RFC 1939 §6).
        try:
            removed = await self.update()
        except (SQLAlchemyError, StoreError, LookupError) as e:
            log.error("pop3 %s: UPDATE failed: %s", self.conn.peer, describe_db_error(e))
            raise Pop3Error("Some deleted messages not removed", "SYS/TEMP") from None
        left = len(self.maildrop.messages) - removed if self.maildrop else 0
        plural = "" if removed == 1 else "s"
        detail = "maildrop empty" if left == 0 else f"{removed} message{plural} deleted"
        self.send(ok(f"{self.settings.hostname} Tidings POP3 server signing off ({detail})"))

    async def update(self) -> int:
        """Apply the session's DELE marks and \\Seen flags in one transaction."""
        maildrop = self.maildrop
        assert maildrop is not None
        deleted_ids = [maildrop.messages[n - 1].id for n in sorted(self.deleted)]
        seen_ids = [maildrop.messages[n - 1].id for n in sorted(self.retrieved)]
        if not self.settings.keep_on_server:
            gone = set(deleted_ids)
            seen_ids = [i for i in seen_ids if i not in gone]
        if not deleted_ids and not seen_ids:
            return 0
        async with self.store.write() as db:
            if seen_ids:
                await mb.add_flag(db, maildrop.mailbox_id, seen_ids, mb.SEEN_FLAG)
            if self.settings.keep_on_server:
                await mb.add_flag(db, maildrop.mailbox_id, deleted_ids, mb.DELETED_FLAG)
            else:
                await mb.expunge_messages(db, maildrop.mailbox_id, deleted_ids)
        if self.service.events is not None:
            self.service.events.changed([maildrop.mailbox_id])
        return len(deleted_ids)

    # --- TRANSACTION --------------------------------------------------------------------------

    def stat(self) -> tuple[int, int]:
        assert self.maildrop is not None
        sizes = [m.size for n, m in enumerate(self.maildrop.messages, 1) if n not in self.deleted]
        return len(sizes), sum(sizes)

    def message(self, n: int) -> mb.MessageRef:
        assert self.maildrop is not None
        if not 1 <= n <= len(self.maildrop.messages):
            raise Pop3Error("No such message")
        if n in self.deleted:
            raise Pop3Error(f"Message {n} is deleted")
        return self.maildrop.messages[n - 1]

    def numbered(self) -> list[tuple[int, mb.MessageRef]]:
        assert self.maildrop is not None
        return [(n, m) for n, m in enumerate(self.maildrop.messages, 1) if n not in self.deleted]

    async def do_Stat(self, _: p.Stat) -> None:
        count, octets = self.stat()
        self.send(ok(f"{count} {octets}"))

    async def do_List(self, command: p.List) -> None:
        if command.msg is not None:
            self.send(ok(f"{command.msg} {self.message(command.msg).size}"))
            return
        count, octets = self.stat()
        lines = [f"{n} {m.size}" for n, m in self.numbered()]
        self.send(multiline(ok(f"{count} messages ({octets} octets)"), lines))

    async def do_Uidl(self, command: p.Uidl) -> None:
        assert self.maildrop is not None
        validity = self.maildrop.uidvalidity
        if command.msg is not None:
            uid = self.message(command.msg).uid
            self.send(ok(f"{command.msg} {unique_id(validity, uid)}"))
            return
        lines = [f"{n} {unique_id(validity, m.uid)}" for n, m in self.numbered()]
        self.send(multiline(ok("Unique-ID listing follows"), lines))

    async def do_Retr(self, command: p.Retr) -> None:
        body = normalize_line_ends(await self.body(command.msg))
        self.send(message_response(ok(f"{len(body)} octets"), body))
        self.retrieved.add(command.msg)

    async def do_Top(self, command: p.Top) -> None:
        body = normalize_line_ends(await self.body(command.msg))
        self.send(message_response(ok("Top of message follows"), top_of(body, command.lines)))

    async def do_Dele(self, command: p.Dele) -> None:
        self.message(command.msg)
        self.deleted.add(command.msg)
        self.bodies.pop(command.msg, None)
        self.send(ok(f"Message {command.msg} deleted"))

    async def do_Noop(self, _: p.Noop) -> None:
        self.send(ok())

    async def do_Rset(self, _: p.Rset) -> None:
        self.deleted.clear()
        count, octets = self.stat()
        self.send(ok(f"Maildrop has {count} messages ({octets} octets)"))

    async def body(self, n: int) -> bytes:
        """Message n's stored bytes; this and the next few come in one query (read-ahead)."""
        self.message(n)
        data = self.bodies.pop(n, None)
        if data is not None:
            return data
        self.bodies.clear()
        wanted: dict[int, int] = {}  # blob id → message number
        total = 0
        for k, m in self.numbered():
            if k < n:
                continue
            if wanted and (len(wanted) >= READ_AHEAD_MESSAGES or total + m.size > READ_AHEAD_BYTES):
                break
            wanted.setdefault(m.blob_id, k)
            total += m.size
        try:
            async with self.store.read() as db:
                rows = await db.execute(select(Blob.id, Blob.data).where(Blob.id.in_(list(wanted))))
                found = {blob_id: bytes(blob) for blob_id, blob in rows}
        except (SQLAlchemyError, StoreError) as e:
            log.error("pop3 %s: reading message: %s", self.conn.peer, describe_db_error(e))
            raise Pop3Error("Temporary server failure, try again later", "SYS/TEMP") from None
        for blob_id, k in wanted.items():
            if blob_id in found and k != n:
                self.bodies[k] = found[blob_id]
        target = self.message(n).blob_id
        if target not in found:
            raise Pop3Error(f"Message {n} was removed by another session")
        return found[target]


# --- the service -------------------------------------------------------------------------------


class Pop3Service:
    """What POP3 listeners share: store, settings, TLS, the maildrop locks, the login check."""

    def __init__(
        self,
        store: Store,
        settings: Pop3Settings,
        authenticator: Authenticator,
        tls: ssl.SSLContext | None,
        events: MailboxEvents | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.authenticator = authenticator
        self.tls = tls
        self.events = events  # told of what UPDATE changed, for IMAP sessions
        self.locks = MaildropLocks(store)
        self.connections: set[Connection] = set()

    def protocol_factory(self, implicit_tls: bool) -> Callable[[], asyncio.Protocol]:
        return lambda: Connection(self, implicit_tls)

    async def close(self) -> None:
        """Tell every client the server is going away (RFC 2449 §8 / RFC 3206 SYS/TEMP: try
        later) and drop the connection — no UPDATE, so nothing is deleted — and release the
        locks. A client waiting for a reply reads the -ERR as that reply."""
        tasks = [c.task for c in self.connections if c.task is not None]
        for c in list(self.connections):
            c.write(err("Server shutting down", "SYS/TEMP"))
            c.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.locks.close()
