"""The SMTP client the relay worker talks to other mail hosts with.

Small on purpose: what an MTA needs to hand over mail, and PIPELINING (RFC 2920), which
aiosmtplib lacks: with it, MAIL, every RCPT and DATA leave in one write and their replies come
back together, so a message costs two round trips instead of three plus one per recipient —
on the Internet, where a round trip is tens of milliseconds, that is most of the time a
delivery takes. STARTTLS goes through the event loop's own TLS (RFC 3207), AUTH PLAIN (RFC
4954) is there for a smarthost. Reply parsing (RFC 5321 §4.2) is apart from the I/O.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; be generous with what others send.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200
_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -]|\r?\n|$)(.*?)\r?\n?$", re.DOTALL)


class ConnectionFailed(Exception):
    """The connection could not be made, broke, timed out or spoke no SMTP: try another host."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply on one line, as logs and bounces show it: ``550 5.1.1 no such user``."""
        return f"{self.code} {' '.join(line for line in self.lines if line)}".strip()

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class ReplyParser:
    """Collects the lines of one reply: ``feed`` each line; it returns the Reply once the
    last line (``NNN `` rather than ``NNN-``) came."""

    def __init__(self) -> None:
        self._code: bytes | None = None
        self._lines: list[str] = []

    def feed(self, line: bytes) -> Reply | None:
        m = _REPLY_LINE.match(line)
        if m is None or (self._code is not None and m.group(1) != self._code):
            raise ConnectionFailed(f"not an SMTP reply: {line[:100]!r}")
        if len(self._lines) >= MAX_REPLY_LINES:
            raise ConnectionFailed("reply too long")
        self._code = m.group(1)
        self._lines.append(m.group(3).decode("utf-8", "replace"))
        if m.group(2) == b"-":
            return None
        reply = Reply(int(self._code), tuple(self._lines))
        self._code, self._lines = None, []
        return reply


def dot_stuffed(content: bytes) -> bytes:
    """The message as sent after DATA (RFC 5321 §4.5.2): lines starting with "." get another,
    and the end-of-data line follows."""
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def extensions(ehlo: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) and their parameters; the first line is the greeting."""
    found: dict[str, str] = {}
    for line in ehlo.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            found[keyword.upper()] = params
    return found


@dataclass
class Transaction:
    """The replies of one mail transaction."""

    mail: Reply
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None


class SMTPClient:
    """One connection to a mail host."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.tls = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        local_hostname: str,
        command_timeout: float,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> SMTPClient:
        """Connect (over TLS at once when ``tls`` is given: port 465), read the greeting, EHLO."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=tls,
                    server_hostname=server_hostname if tls else None,
                    limit=MAX_REPLY_LINE,
                ),
                command_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise ConnectionFailed(_describe(e)) from e
        client = cls(reader, writer, command_timeout)
        client.tls = tls is not None
        try:
            greeting = await client.read_reply()
            if greeting.code != 220:
                raise ConnectionFailed(f"greeting: {greeting.text}")
            await client.ehlo(local_hostname)
        except BaseException:
            client.close()
            raise
        return client

    async def ehlo(self, local_hostname: str) -> None:
        reply = await self.command(f"EHLO {local_hostname}")
        if reply.code == 250:
            self.extensions = extensions(reply)
            return
        reply = await self.command(f"HELO {local_hostname}")  # RFC 5321 §3.2
        if reply.code != 250:
            raise ConnectionFailed(f"HELO: {reply.text}")
        self.extensions = {}

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions

    async def starttls(
        self, context: ssl.SSLContext, server_hostname: str, local_hostname: str
    ) -> None:
        """RFC 3207: upgrade, then EHLO again (what was learnt before TLS is forgotten)."""
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise ConnectionFailed(f"STARTTLS: {reply.text}")
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context, server_hostname=server_hostname), self.timeout
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise ConnectionFailed(f"TLS handshake: {_describe(e)}") from e
        self.tls = True
        await self.ehlo(local_hostname)

    async def login(self, username: str, password: str) -> Reply:
        """AUTH PLAIN with an initial response (RFC 4954 §4, RFC 4616)."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
        return await self.command(f"AUTH PLAIN {token}")

    async def send(
        self, sender: str, recipients: Sequence[str], content: bytes, options: Sequence[str] = ()
    ) -> Transaction:
        """One transaction. With PIPELINING, MAIL, the RCPTs and DATA go out together (RFC 2920
        §3.1) and the message follows if DATA was answered 354 with a recipient accepted."""
        mail_line = f"MAIL FROM:<{sender}>" + "".join(f" {o}" for o in options)
        rcpt_lines = [f"RCPT TO:<{r}>" for r in recipients]
        if self.supports("PIPELINING"):
            self._write(*[mail_line, *rcpt_lines, "DATA"])
            mail = await self.read_reply()
            rcpts = [await self.read_reply() for _ in rcpt_lines]
            go_ahead = await self.read_reply()
            transaction = Transaction(mail, rcpts)
            if go_ahead.code != 354:
                transaction.data = go_ahead if mail.ok and any(r.ok for r in rcpts) else None
                return transaction
            if not (mail.ok and any(r.ok for r in rcpts)):
                # RFC 2920 §3.1: DATA was accepted although nobody can receive the message;
                # end it empty, and ignore the reply.
                self.writer.write(b".\r\n")
                await self.read_reply()
                return transaction
        else:
            mail = await self.command(mail_line)
            transaction = Transaction(mail)
            if not mail.ok:
                return transaction
            transaction.rcpts = [await self.command(line) for line in rcpt_lines]
            if not any(r.ok for r in transaction.rcpts):
                return transaction
            go_ahead = await self.command("DATA")
            if go_ahead.code != 354:
                transaction.data = go_ahead
                return transaction
        self.writer.write(dot_stuffed(content))
        transaction.data = await self.read_reply()
        return transaction

    async def rset(self) -> None:
        await self.command("RSET")

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()

    @property
    def is_open(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    async def command(self, line: str) -> Reply:
        self._write(line)
        return await self.read_reply()

    def _write(self, *lines: str) -> None:
        if self.writer.is_closing():
            raise ConnectionFailed("connection closed")
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode("utf-8"))

    async def read_reply(self) -> Reply:
        """The next reply, all its lines within ``timeout`` (a timer, not a task per line:
        a relayed message reads four replies)."""
        parser = ReplyParser()
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    line = await self.reader.readline()
                    if not line:
                        raise ConnectionFailed("connection closed by the host")
                    reply = parser.feed(line)
                    if reply is not None:
                        break
        except TimeoutError as e:
            raise ConnectionFailed("timed out waiting for a reply") from e
        except (OSError, ValueError, asyncio.LimitOverrunError, ssl.SSLError) as e:
            raise ConnectionFailed(_describe(e)) from e
        if reply.code == 421:
            # RFC 5321 §3.8: the host is closing the connection.
            self.close()
            raise ConnectionFailed(reply.text)
        return reply


def _describe(error: BaseException) -> str:
    return " ".join((str(error) or type(error).__name__).split())[:300]
