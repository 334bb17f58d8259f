"""Abusive clients (guard.py and each session's counts): connection limits per address and
in all, slow clients, too many errors or idle commands, SMTP smuggling and header injection.

Every limit is set low in the config so that a test reaches it in a few commands; what the
test checks is what a client sees: the refusal in its protocol's words, then the close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from smtp_client import Wire

from helpers import TidingsServer, add_users, stored_messages, write_config

ALICE = "alice@example.org"
BOB = "bob@example.org"
LIMITS = {
    "max_connections_per_ip": 4,
    "max_connections": 0,
    "command_deadline": 1.5,
    "min_transfer_rate": 50,
    "max_errors": 3,
    "max_junk_commands": 5,
}


class Line:
    """A raw line-oriented client for any of the three protocols."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        source: str | None = None,
        tls: bool = False,
        timeout: float = 15,
    ) -> None:
        sock = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock)
        self.sock = sock
        self.buffer = b""

    def line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def until(self, prefix: str) -> str:
        """Lines up to the first that starts with ``prefix``."""
        while not (line := self.line()).startswith(prefix):
            pass
        return line

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def closed(self) -> bool:
        """Whether the server has closed the connection (after any pending lines)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TidingsServer]:
    """A server with every abuse limit low; connection tests need no store beyond SQLite."""
    tmp = tmp_path_factory.mktemp("abuse")
    db_url = f"sqlite+aiosqlite:///{tmp / 'tidings.db'}"
    config = write_config(tmp, db_url, limits=LIMITS)
    server = TidingsServer(config).start()
    asyncio.run(add_users(db_url, ALICE, BOB))
    try:
        yield server
    finally:
        server.stop()


def greeted(server: TidingsServer, name: str, **kw: object) -> Line:
    """A connection whose greeting has been read, retrying while the server still counts
    connections a previous test closed."""
    deadline = time.monotonic() + 10
    while True:
        client = Line(server.addresses[name], **kw)  # type: ignore[arg-type]
        greeting = client.line()
        if "Too many connections" not in greeting or time.monotonic() > deadline:
            assert greeting.startswith(("220", "* OK", "+OK")), greeting
            return client
        client.close()
        time.sleep(0.1)


# --- connection limits ---------------------------------------------------------------------------


def test_connections_per_address_are_counted_over_every_listener(limited: TidingsServer) -> None:
    held = [
        greeted(limited, "smtp"),
        greeted(limited, "submission"),
        greeted(limited, "imap"),
        greeted(limited, "pop3"),
    ]
    try:
        smtp = Line(limited.smtp)
        assert smtp.line() == (
            "421 4.7.0 mx.tidings.test Too many connections from your address; try again later"
        )
        assert smtp.closed()
        imap = Line(limited.addresses["imap"])
        assert imap.line() == (
            "* BYE [UNAVAILABLE] Too many connections from your address; try again later"
        )
        assert imap.closed()
        pop3 = Line(limited.addresses["pop3"])
        assert pop3.line() == (
            "-ERR [SYS/TEMP] Too many connections from your address; try again later"
        )
        assert pop3.closed()
        # Over implicit TLS the refusal comes after the handshake, in the protocol's words.
        imaps = Line(limited.addresses["imaps"], tls=True)
        assert imaps.line().startswith("* BYE [UNAVAILABLE] Too many connections")

        # Another client address is not held back by this one's connections.
        other = Line(limited.smtp, source="127.0.0.2")
        assert other.line().startswith("220 ")
        other.close()

        # A closed connection frees its place.
        held.pop().close()
        held.append(greeted(limited, "smtp"))
        assert held[-1].cmd("EHLO c.example").startswith("250")
    finally:
        for client in held:
            client.close()


@pytest.mark.parametrize("name", ["smtp", "submission", "imap", "pop3"])
def test_clients_that_hang_up_at_once_free_their_places(limited: TidingsServer, name: str) -> None:
    """A connection closed before its greeting is read must not sit half-open on the server
    (it once did on SMTP until the 5-minute idle timeout), holding a place under the limit."""
    for _ in range(2 * LIMITS["max_connections_per_ip"]):
        socket.create_connection(limited.addresses[name]).close()
    held = [greeted(limited, name) for _ in range(LIMITS["max_connections_per_ip"])]
    for client in held:
        client.close()


def test_connections_in_all_are_limited(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'tidings.db'}",
        limits={"max_connections": 2, "max_connections_per_ip": 0},
    )
    server = TidingsServer(config).start()
    held: list[Line] = []
    try:
        held = [greeted(server, "smtp"), greeted(server, "imap", source="127.0.0.2")]
        late = Line(server.addresses["pop3"], source="127.0.0.3")
        assert late.line() == "-ERR [SYS/TEMP] Too many connections; try again later"
        assert late.closed()
    finally:
        for client in held:
            client.close()
        server.stop()


# --- slow clients --------------------------------------------------------------------------------


def trickle(client: Line, data: bytes, *, seconds: float = 8) -> str:
    """Send ``data`` one byte every 0.25 s (4 bytes/s) until the server answers or closes."""
    client.sock.settimeout(0.25)
    deadline = time.monotonic() + seconds
    for byte in data:
        try:
            client.sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            assert time.monotonic() < deadline, "the server let the slow client go on"
            continue
        client.buffer += chunk
        break
    client.sock.settimeout(5)
    return client.line()


@pytest.mark.parametrize(
    ("name", "command", "reply"),
    [
        ("smtp", b"EHLO a-slow-client.example.org\r\n", "421 4.4.2 Too slow; closing"),
        ("imap", b"a1 LOGIN someone@example.org secretsecret\r\n", "* BYE [UNAVAILABLE] Too slow"),
        ("pop3", b"USER someone@example.org\r\n", "-ERR [SYS/TEMP] Too slow"),
    ],
)
def test_a_command_trickled_byte_by_byte_is_cut_off(
    limited: TidingsServer, name: str, command: bytes, reply: str
) -> None:
    client = greeted(limited, name)
    started = time.monotonic()
    try:
        assert trickle(client, command).startswith(reply)
        assert client.closed()
        # The deadline is 1.5 s; the rule looks again every deadline/4.
        assert time.monotonic() - started < 6
    finally:
        client.close()


async def test_message_data_trickled_is_cut_off_and_not_stored(limited: TidingsServer) -> None:
    db_url = str(limited.config.parent / "tidings.db")
    client = greeted(limited, "smtp")
    try:
        assert client.cmd("EHLO c.example").startswith("250")
        client.until("250 ")
        assert client.cmd("MAIL FROM:<s@sender.example>").startswith("250")
        assert client.cmd("RCPT TO:<alice@example.org>").startswith("250")
        assert client.cmd("DATA").startswith("354")
        body = b"Subject: slow\r\n\r\n" + b"x" * 200 + b"\r\n.\r\n"
        assert trickle(client, body).startswith("421 4.4.2 Too slow")
    finally:
        client.close()
    assert await stored_messages(f"sqlite+aiosqlite:///{db_url}", ALICE) == []


async def test_idle_clients_and_steady_transfers_are_not_slow(limited: TidingsServer) -> None:
    """Silence between commands is the idle timeout's business, not the slow-client rule's;
    message data arriving for longer than the deadline at a fair rate is fine."""
    db_url = f"sqlite+aiosqlite:///{limited.config.parent / 'tidings.db'}"
    before = len(await stored_messages(db_url, BOB))
    smtp = greeted(limited, "smtp")
    imap = greeted(limited, "imap")
    try:
        assert imap.cmd("a1 CAPABILITY").startswith("* CAPABILITY")
        imap.until("a1 OK")
        assert smtp.cmd("EHLO c.example").startswith("250")
        smtp.until("250 ")
        time.sleep(3)  # twice the deadline
        assert smtp.cmd("NOOP").startswith("250")
        assert imap.cmd("a2 NOOP").startswith("a2 OK")
        assert smtp.cmd("MAIL FROM:<s@sender.example>").startswith("250")
        assert smtp.cmd("RCPT TO:<bob@example.org>").startswith("250")
        assert smtp.cmd("DATA").startswith("354")
        smtp.sock.sendall(b"Subject: steady\r\n\r\n")
        for _ in range(30):  # 3 s at 10 KB/s: twice the deadline, well over the minimum rate
            smtp.sock.sendall(b"y" * 998 + b"\r\n")
            time.sleep(0.1)
        assert smtp.cmd(".").startswith("250")
    finally:
        smtp.close()
        imap.close()
    assert len(await stored_messages(db_url, BOB)) == before + 1


# --- errors and commands that move no mail --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bad", "last"),
    [
        ("smtp", "MAIL FROM:<broken", "421 4.7.0 Too many errors; closing the connection"),
        ("imap", "a1 FROBNICATE", "* BYE Too many errors; closing the connection"),
        ("pop3", "FROBNICATE", None),
    ],
)
def test_too_many_errors_close_the_session(
    limited: TidingsServer, name: str, bad: str, last: str | None
) -> None:
    client = greeted(limited, name)
    try:
        if name == "smtp":
            client.cmd("EHLO c.example")
            client.until("250 ")
        replies = [client.cmd(bad) for _ in range(3)]
        assert replies[0].startswith(("501", "a1 BAD", "-ERR"))
        if name == "pop3":
            assert replies[2].endswith("too many bad commands, closing the connection")
        else:
            assert client.line() == last
        assert client.closed()
    finally:
        client.close()


@pytest.mark.parametrize(
    ("name", "junk", "last"),
    [
        ("smtp", "NOOP", "421 4.7.0 Too many commands without mail; closing the connection"),
        ("imap", "a CAPABILITY", "* BYE Too many commands without logging in; closing the"),
        ("pop3", "CAPA", "-ERR Too many commands without logging in; closing the connection"),
    ],
)
def test_too_many_commands_that_move_nothing_close_the_session(
    limited: TidingsServer, name: str, junk: str, last: str
) -> None:
    client = greeted(limited, name)
    terminator = {"smtp": "250 ", "imap": "a OK", "pop3": "."}[name]
    try:
        for _ in range(5):
            client.sock.sendall(junk.encode() + b"\r\n")
            client.until(terminator)
        client.sock.sendall(junk.encode() + b"\r\n")
        assert client.line().startswith(last)
        assert client.closed()
    finally:
        client.close()


async def test_smtp_counts_start_over_with_each_accepted_message(limited: TidingsServer) -> None:
    """An MTA that sends RSET between messages is doing its job, however many it sends."""
    db_url = f"sqlite+aiosqlite:///{limited.config.parent / 'tidings.db'}"
    before = len(await stored_messages(db_url, BOB))
    w = Wire(limited.smtp)
    try:
        w.cmd("EHLO c.example")
        for n in range(3):
            for _ in range(4):
                assert w.cmd("RSET").startswith("250")
            assert w.cmd("MAIL FROM:<s@sender.example>").startswith("250")
            assert w.cmd("RCPT TO:<bob@example.org>").startswith("250")
            assert w.cmd("DATA").startswith("354")
            assert w.cmd(b"Subject: %d\r\n\r\nbody\r\n." % n).startswith("250")
        assert w.cmd("QUIT").startswith("221")
    finally:
        w.close()
    assert len(await stored_messages(db_url, BOB)) == before + 3


# --- SMTP smuggling and header injection (every backend) -----------------------------------------


@pytest.fixture(scope="module")
def normalizing_server(
    module_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TidingsServer]:
    config = write_config(
        tmp_path_factory.mktemp("smuggling"), module_db, limits={"bare_line_endings": "normalize"}
    )
    server = TidingsServer(config).start()
    asyncio.run(add_users(module_db, ALICE, BOB))
    try:
        yield server
    finally:
        server.stop()


SMUGGLED_ENDS = [
    b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r", b"\r.\n", b"\n..\r\n",
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n",
]  # fmt: skip


@pytest.mark.parametrize("smuggled", SMUGGLED_ENDS)
async def test_no_end_of_data_variant_yields_a_second_message(
    smuggled: bytes, normalizing_server: TidingsServer, module_db: str
) -> None:
    before = len(await stored_messages(module_db, ALICE))
    marker = b"smuggle-%d" % SMUGGLED_ENDS.index(smuggled)
    for bdat in (False, True):
        w = Wire(normalizing_server.smtp)
        try:
            w.cmd("EHLO c.example")
            w.cmd("MAIL FROM:<s@sender.example>")
            w.cmd("RCPT TO:<alice@example.org>")
            payload = (
                b"Subject: " + marker + b"\r\n\r\nfirst" + smuggled
                + b"MAIL FROM:<evil@sender.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
                + b"Subject: smuggled\r\n\r\nx\r\n"
            )  # fmt: skip
            if bdat:
                reply = w.cmd(b"BDAT %d LAST\r\n" % len(payload) + payload[:-2])
            else:
                assert w.cmd("DATA").startswith("354")
                reply = w.cmd(payload + b".")
            assert reply.startswith("250"), reply
            assert w.cmd("NOOP").startswith("250")  # one reply for one message, in step
        finally:
            w.close()
    alice = await stored_messages(module_db, ALICE)
    assert len(alice) == before + 2
    assert all(marker in m for m in alice[before:])
    assert await stored_messages(module_db, BOB) == []


async def test_header_injection_through_envelope_addresses_is_refused(
    normalizing_server: TidingsServer, module_db: str
) -> None:
    w = Wire(normalizing_server.smtp)
    try:
        w.cmd("EHLO c.example")
        for line in (
            b"MAIL FROM:<s@sender.example\rX-Injected: yes>",
            b"MAIL FROM:<s\r@sender.example>",
            b'MAIL FROM:<"s\rX-Injected: yes"@sender.example>',
        ):
            assert w.cmd(line).startswith("501 5.1.7"), line
        # A bare LF ends aiosmtpd's line: what follows is a separate (unknown) command.
        w.send(b"MAIL FROM:<s@sender.example>\nX-Injected: yes\r\n")
        assert w.reply().startswith("250")
        assert w.reply().startswith("500")
        assert w.cmd(b"RCPT TO:<alice@example.org\rX-Injected: yes>").startswith("501 5.1.3")
        assert w.cmd("RCPT TO:<alice@example.org>").startswith("250")
        assert w.cmd("DATA").startswith("354")
        assert w.cmd(b"Subject: clean\r\n\r\nbody\r\n.").startswith("250")
    finally:
        w.close()
    stored = [m for m in await stored_messages(module_db, ALICE) if b"Subject: clean" in m]
    assert len(stored) == 1
    assert b"X-Injected" not in stored[0]
