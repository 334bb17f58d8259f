"""The POP3 listeners (110 with STLS, 995 with TLS), talked to with poplib and raw sockets.

One server per backend serves most of this module (each test logs in as its own account);
tests that need other settings start their own.
"""

from __future__ import annotations

import base64
import poplib
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import (
    TidingsServer,
    add_users,
    deliver_messages,
    mailbox_state,
    stored_messages,
    write_config,
)

PASSWORD = "secret"
MESSAGES = [
    b"From: a@sender.example\r\nSubject: one\r\n\r\nHello.\r\n",
    b"From: a@sender.example\r\nSubject: two\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n",
    b"From: a@sender.example\r\nSubject: three\r\n\r\nl1\r\nl2\r\nl3\r\nl4\r\n",
]
# Failed logins in this module must not lock the test client out (each test has its own
# account; the per-IP limit is tested from other loopback addresses).
FAST_AUTH = {
    "auth_failure_delay": 0,
    "auth_max_failures_per_ip": 5,
    "auth_max_failures_per_account": 3,
}


@dataclass
class Site:
    server: TidingsServer
    db_url: str
    directory: Path

    @property
    def pop3(self) -> tuple[str, int]:
        return "localhost", self.server.addresses["pop3"][1]

    @property
    def pop3s(self) -> tuple[str, int]:
        return "localhost", self.server.addresses["pop3s"][1]

    @property
    def tls(self) -> ssl.SSLContext:
        """Trust the server's self-signed certificate, and check the name (localhost)."""
        return ssl.create_default_context(cafile=str(self.directory / "data/tls/cert.pem"))

    async def account(self, messages: list[bytes] | None = None) -> str:
        address = f"u{uuid.uuid4().hex[:10]}@example.org"
        await add_users(self.db_url, address)
        if messages:
            await deliver_messages(self.db_url, address, messages)
        return address

    def login(self, address: str, password: str = PASSWORD) -> poplib.POP3_SSL:
        client = poplib.POP3_SSL(*self.pop3s, context=self.tls, timeout=30)
        client.user(address)
        client.pass_(password)
        return client


def start_site(directory: Path, db_url: str, **sections: dict[str, object]) -> Site:
    limits = {**FAST_AUTH, **sections.pop("limits", {})}
    config = write_config(directory, db_url, limits=limits, **sections)
    return Site(TidingsServer(config).start(), db_url, directory)


@pytest.fixture(scope="module")
def site(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = start_site(tmp_path_factory.mktemp("pop3"), module_db)
    try:
        yield s
    finally:
        s.server.stop()


class Raw:
    """A line-at-a-time client for what poplib will not send."""

    def __init__(
        self,
        address: tuple[str, int],
        source: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        sock = socket.create_connection(
            address, timeout=30, source_address=(source, 0) if source else None
        )
        self.sock = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def cmd(self, line: bytes | str) -> bytes:
        self.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def multiline(self) -> bytes:
        """Everything up to and including the terminating ``.`` line, as sent."""
        data = b""
        while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
            line = self.line()
            assert line, "connection closed inside a multi-line response"
            data += line
        return data

    def starttls(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def unstuff(data: bytes) -> bytes:
    """The message from a multi-line response body as sent (RFC 1939 §3)."""
    assert data.endswith(b".\r\n")
    lines = data[:-3].split(b"\r\n")[:-1]
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def expect_error(call: object, *args: object, contains: str = "") -> str:
    with pytest.raises(poplib.error_proto) as info:
        call(*args)  # type: ignore[operator]
    text = str(info.value.args[0].decode() if isinstance(info.value.args[0], bytes) else info.value)
    assert text.startswith("-ERR"), text
    assert contains in text, text
    return text


# --- capabilities, TLS, authentication ----------------------------------------------------------


async def test_capa_before_and_after_stls(site: Site) -> None:
    client = poplib.POP3(*site.pop3, timeout=30)
    assert client.getwelcome().startswith(b"+OK ")
    caps = client.capa()
    for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
        assert cap in caps, cap
    assert caps["IMPLEMENTATION"] == ["Tidings"]
    assert "USER" not in caps and "SASL" not in caps  # not usable before TLS
    client.stls(site.tls)
    caps = client.capa()
    assert "STLS" not in caps
    assert "USER" in caps and caps["SASL"] == ["PLAIN", "LOGIN"]
    expect_error(client._shortcmd, "STLS", contains="Already using TLS")
    client.quit()


async def test_capa_on_pop3s(site: Site) -> None:
    client = poplib.POP3_SSL(*site.pop3s, context=site.tls, timeout=30)
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps and "SASL" in caps
    client.quit()


async def test_no_password_before_tls_on_110(site: Site) -> None:
    address = await site.account(MESSAGES)
    client = poplib.POP3(*site.pop3, timeout=30)
    expect_error(client.user, address, contains="[AUTH] Plaintext authentication disallowed")
    expect_error(client.pass_, PASSWORD, contains="[AUTH]")
    plain = base64.b64encode(f"\0{address}\0{PASSWORD}".encode()).decode()
    expect_error(client._shortcmd, f"AUTH PLAIN {plain}", contains="[AUTH]")
    client.stls(site.tls)
    client.user(address)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    assert client.stat() == (3, sum(map(len, MESSAGES)))
    client.quit()


async def test_plaintext_injected_before_stls_is_discarded(site: Site) -> None:
    """RFC 2595 §4: commands pipelined with STLS must not run inside the TLS session."""
    raw = Raw(site.pop3)
    raw.send(b"STLS\r\nCAPA\r\n")
    assert raw.line().startswith(b"+OK")
    raw.starttls(site.tls)
    assert raw.cmd("NOOP").startswith(b"-ERR")  # NOOP before login; not a CAPA listing
    assert raw.cmd("QUIT").startswith(b"+OK")
    raw.close()


async def test_user_pass_and_failures(site: Site) -> None:
    address = await site.account(MESSAGES)
    client = poplib.POP3_SSL(*site.pop3s, context=site.tls, timeout=30)
    expect_error(client.pass_, PASSWORD, contains="USER first")
    client.user(address)
    expect_error(client.pass_, "wrong", contains="[AUTH] Authentication failed")
    # After a failed PASS, USER starts over (RFC 1939 §7).
    expect_error(client.pass_, PASSWORD, contains="USER first")
    client.user("nobody@example.org")
    expect_error(client.pass_, PASSWORD, contains="[AUTH] Authentication failed")
    client.user(address.upper())  # addresses are case-insensitive
    assert client.pass_(PASSWORD).startswith(b"+OK Logged in, 3 messages")
    client.quit()


async def test_sasl_plain_and_login(site: Site) -> None:
    address = await site.account(MESSAGES)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    raw = Raw(site.pop3s, tls=site.tls)
    assert raw.greeting.startswith(b"+OK")
    assert raw.cmd("AUTH") == b"+OK Supported mechanisms follow\r\n"
    assert raw.multiline() == b"PLAIN\r\nLOGIN\r\n.\r\n"
    assert raw.cmd("AUTH CRAM-MD5").startswith(b"-ERR Unsupported")
    assert raw.cmd("AUTH PLAIN !!!").startswith(b"-ERR Invalid base64")
    assert raw.cmd("AUTH PLAIN") == b"+ \r\n"
    assert raw.cmd("*").startswith(b"-ERR Authentication cancelled")
    other = b64("bob@example.org\0" + address + "\0" + PASSWORD)
    assert raw.cmd(f"AUTH PLAIN {other}").startswith(b"-ERR Authorization identity")
    assert raw.cmd("AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
    assert raw.cmd(b64(address)) == b"+ UGFzc3dvcmQ6\r\n"
    assert raw.cmd(b64("wrong")).startswith(b"-ERR [AUTH] Authentication failed")
    assert raw.cmd("AUTH PLAIN") == b"+ \r\n"
    assert raw.cmd(b64("\0" + address + "\0" + PASSWORD)).startswith(b"+OK Logged in, 3")
    assert raw.cmd("AUTH PLAIN =").startswith(b"-ERR AUTH is not valid after login")
    assert raw.cmd("QUIT").startswith(b"+OK")
    raw.close()
    # SASL-IR style: the initial response on the AUTH line, for both mechanisms.
    plain = b64(address + "\0" + address + "\0" + PASSWORD)
    for command in (f"AUTH PLAIN {plain}", f"AUTH LOGIN {b64(address)}"):
        client = poplib.POP3_SSL(*site.pop3s, context=site.tls, timeout=30)
        if command.startswith("AUTH LOGIN"):
            assert client._shortcmd(command) == b"+ UGFzc3dvcmQ6"
            assert client._shortcmd(b64(PASSWORD)).startswith(b"+OK Logged in")
        else:
            assert client._shortcmd(command).startswith(b"+OK Logged in")
        client.quit()


async def test_auth_failures_are_rate_limited_per_ip(site: Site) -> None:
    source = f"127.0.{uuid.uuid4().int % 200 + 20}.{uuid.uuid4().int % 250 + 2}"
    address = await site.account()
    for i in range(FAST_AUTH["auth_max_failures_per_ip"]):
        raw = Raw(site.pop3s, source, site.tls)
        raw.send(f"USER guess{i}@example.org\r\nPASS nope\r\n".encode())
        assert raw.line().startswith(b"+OK")
        assert raw.line().startswith(b"-ERR [AUTH]")
        raw.close()
    raw = Raw(site.pop3s, source, site.tls)
    raw.send(f"USER {address}\r\nPASS {PASSWORD}\r\n".encode())
    raw.line()
    # Even the right password is refused while the client is over its limit.
    assert raw.line().startswith(b"-ERR [SYS/TEMP] Too many failed logins")
    raw.close()
    client = site.login(address)  # other clients are not affected
    client.quit()


async def test_auth_failures_are_rate_limited_per_account(site: Site) -> None:
    address = await site.account()
    for i in range(FAST_AUTH["auth_max_failures_per_account"]):
        source = f"127.1.{i}.{uuid.uuid4().int % 250 + 2}"
        raw = Raw(site.pop3s, source, site.tls)
        raw.send(f"USER {address}\r\nPASS wrong{i}\r\n".encode())
        raw.line()
        assert raw.line().startswith(b"-ERR [AUTH]")
        raw.close()
    client = poplib.POP3_SSL(*site.pop3s, context=site.tls, timeout=30)
    client.user(address)
    expect_error(client.pass_, PASSWORD, contains="[SYS/TEMP] Too many failed logins")
    client.quit()


# --- the maildrop -------------------------------------------------------------------------------


async def test_stat_list_uidl_retr_top(site: Site) -> None:
    address = await site.account(MESSAGES)
    stored = await stored_messages(site.db_url, address)
    state = await mailbox_state(site.db_url, address)
    client = site.login(address)
    assert client.stat() == (3, sum(map(len, stored)))
    _, listing, _ = client.list()
    assert listing == [f"{n} {len(m)}".encode() for n, m in enumerate(stored, 1)]
    assert client.list(2) == f"+OK 2 {len(stored[1])}".encode()
    _, uidls, _ = client.uidl()
    assert uidls == [
        f"{n} {state.uidvalidity}.{uid}".encode() for n, uid in enumerate(state.uids, 1)
    ]
    assert client.uidl(3) == f"+OK 3 {state.uidvalidity}.{state.uids[2]}".encode()
    for n, message in enumerate(stored, 1):
        status, lines, _ = client.retr(n)
        assert status == f"+OK {len(message)} octets".encode()
        assert b"\r\n".join(lines) + b"\r\n" == message  # poplib unstuffs the dots
    _, lines, _ = client.top(3, 2)
    assert lines == [b"From: a@sender.example", b"Subject: three", b"", b"l1", b"l2"]
    _, lines, _ = client.top(3, 0)
    assert lines[-1] == b"" and b"l1" not in lines
    assert client.noop() == b"+OK"
    for n in (0, 4, 999999):
        expect_error(client.retr, n, contains="No such message")
        expect_error(client.list, n, contains="No such message")
        expect_error(client.top, n, 1, contains="No such message")
    client.rset()
    client.quit()
    assert (await mailbox_state(site.db_url, address)).uids == state.uids  # nothing deleted


async def test_retr_bytes_are_exactly_stuffed(site: Site) -> None:
    body = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nx.\r\n\r\n.\r\n"
    address = await site.account([body])
    (stored,) = await stored_messages(site.db_url, address)
    raw = Raw(site.pop3s, tls=site.tls)
    raw.cmd(f"USER {address}")
    assert raw.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    assert raw.cmd("LIST 1") == f"+OK 1 {len(stored)}\r\n".encode()
    assert raw.cmd("RETR 1") == f"+OK {len(stored)} octets\r\n".encode()
    sent = raw.multiline()
    assert sent.endswith(b"Subject: dots\r\n\r\n..\r\n...\r\n..x\r\nx.\r\n\r\n..\r\n.\r\n")
    assert unstuff(sent) == stored
    raw.cmd("QUIT")
    raw.close()


async def test_dele_rset_quit_expunges(site: Site) -> None:
    address = await site.account(MESSAGES)
    before = await mailbox_state(site.db_url, address)
    stored = await stored_messages(site.db_url, address)
    client = site.login(address)
    assert client.dele(1) == b"+OK Message 1 deleted"
    expect_error(client.dele, 1, contains="Message 1 is deleted")
    expect_error(client.retr, 1, contains="Message 1 is deleted")
    expect_error(client.list, 1, contains="deleted")
    assert client.stat() == (2, len(stored[1]) + len(stored[2]))
    _, listing, _ = client.list()
    assert [line.split()[0] for line in listing] == [b"2", b"3"]
    client.rset()
    assert client.stat()[0] == 3
    client.dele(1)
    client.dele(3)
    assert client.quit().startswith(b"+OK")
    after = await mailbox_state(site.db_url, address)
    assert after.uids == [before.uids[1]]
    assert after.highestmodseq > before.highestmodseq
    assert after.used_bytes == before.used_bytes - len(stored[0]) - len(stored[2])
    assert after.uidvalidity == before.uidvalidity
    # UIDL of what is left does not change.
    client = site.login(address)
    assert client.uidl(1) == f"+OK 1 {before.uidvalidity}.{before.uids[1]}".encode()
    assert client.retr(1)[2] == len(stored[1])
    client.quit()


async def test_quit_expunge_deletes_unshared_blobs(site: Site) -> None:
    address = await site.account()
    await deliver_messages(site.db_url, address, [b"Subject: unique\r\n\r\nx\r\n"] * 2)
    before = await mailbox_state(site.db_url, address)
    client = site.login(address)
    client.dele(1)
    client.dele(2)
    client.quit()
    after = await mailbox_state(site.db_url, address)
    assert after.uids == [] and after.used_bytes == 0
    # Other tests may add blobs meanwhile; ours (two) are gone unless someone added as many.
    assert after.blobs <= before.blobs - 2 or after.blobs < before.blobs + 10


async def test_dropped_connection_deletes_nothing(site: Site) -> None:
    address = await site.account(MESSAGES)
    raw = Raw(site.pop3s, tls=site.tls)
    raw.cmd(f"USER {address}")
    raw.cmd(f"PASS {PASSWORD}")
    assert raw.cmd("DELE 1").startswith(b"+OK")
    assert raw.cmd("DELE 2").startswith(b"+OK")
    raw.close()  # no QUIT
    deadline = time.monotonic() + 10
    while True:  # the lock is released once the server notices the close
        try:
            client = site.login(address)
            break
        except poplib.error_proto as e:
            assert b"IN-USE" in e.args[0] and time.monotonic() < deadline
            time.sleep(0.05)
    assert client.stat()[0] == 3
    client.quit()
    assert len((await mailbox_state(site.db_url, address)).uids) == 3


async def test_second_login_gets_in_use(site: Site) -> None:
    address = await site.account(MESSAGES)
    first = site.login(address)
    second = poplib.POP3_SSL(*site.pop3s, context=site.tls, timeout=30)
    second.user(address)
    expect_error(second.pass_, PASSWORD, contains="[IN-USE]")
    # Over port 110 after STLS, too.
    third = poplib.POP3(*site.pop3, timeout=30)
    third.stls(site.tls)
    third.user(address)
    expect_error(third.pass_, PASSWORD, contains="[IN-USE]")
    first.quit()
    second.user(address)
    assert second.pass_(PASSWORD).startswith(b"+OK")
    second.quit()
    third.quit()


async def test_maildrop_is_fixed_at_login(site: Site) -> None:
    address = await site.account(MESSAGES[:1])
    client = site.login(address)
    await deliver_messages(site.db_url, address, MESSAGES[1:])
    assert client.stat()[0] == 1
    assert len(client.uidl()[1]) == 1
    client.dele(1)
    client.quit()
    client = site.login(address)
    assert client.stat()[0] == 2
    client.quit()


async def test_commands_in_the_wrong_state(site: Site) -> None:
    address = await site.account(MESSAGES)
    client = poplib.POP3_SSL(*site.pop3s, context=site.tls, timeout=30)
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL"):
        expect_error(client._shortcmd, command, contains="not valid before login")
    client.user(address)
    client.pass_(PASSWORD)
    for command in ("USER x", "PASS x", "AUTH PLAIN", "STLS"):
        expect_error(client._shortcmd, command, contains="not valid after login")
    assert client.stat()[0] == 3
    client.quit()


async def test_bad_input(site: Site) -> None:
    address = await site.account(MESSAGES)
    raw = Raw(site.pop3)
    assert raw.cmd("XYZZY") == b"-ERR Unknown command: XYZZY\r\n"
    assert raw.cmd("RETR one").startswith(b"-ERR Invalid message number")
    assert raw.cmd(b"NOOP " + b"x" * 5000 + b"\r\n") == b"-ERR Line too long\r\n"
    assert raw.cmd(b"\xff\xfe\r\n").startswith(b"-ERR Command is not UTF-8")
    assert raw.cmd("").startswith(b"-ERR Empty command")
    assert raw.cmd("CAPA").startswith(b"+OK")  # the session goes on
    raw.multiline()
    assert raw.cmd("STLS").startswith(b"+OK")
    raw.starttls(site.tls)
    raw.cmd(f"USER {address}")
    assert raw.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    assert raw.cmd("RETR 1").startswith(b"+OK")
    raw.multiline()
    for _ in range(30):  # too many bad commands end the session
        reply = raw.cmd("BOGUS")
        if not reply or b"too many bad commands" in reply:
            break
    assert b"too many bad commands" in reply
    assert raw.line() == b""
    raw.close()
    client = site.login(address)  # the lock went with the connection; nothing was deleted
    assert client.stat()[0] == 3
    client.quit()


async def test_pipelining(site: Site) -> None:
    address = await site.account(MESSAGES)
    raw = Raw(site.pop3s, tls=site.tls)
    raw.send(f"USER {address}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nRETR 2\r\n"
             "LIST\r\nQUIT\r\n".encode())  # fmt: skip
    assert raw.line().startswith(b"+OK")
    assert raw.line().startswith(b"+OK Logged in")
    assert raw.line().startswith(b"+OK 3 ")
    assert raw.line().startswith(b"+OK")
    raw.multiline()
    assert raw.line() == b"+OK Message 1 deleted\r\n"
    assert raw.line().startswith(b"+OK")
    raw.multiline()
    assert raw.line().startswith(b"+OK 2 messages")
    raw.multiline()
    assert raw.line().startswith(b"+OK")
    raw.close()
    assert len((await mailbox_state(site.db_url, address)).uids) == 2


async def test_seen_flag_on_retr(site: Site) -> None:
    address = await site.account(MESSAGES)
    client = site.login(address)
    client.retr(2)
    client.top(3, 0)
    client.quit()
    state = await mailbox_state(site.db_url, address)
    flags = [state.flags[uid] for uid in state.uids]
    assert flags == ["", "\\Seen", ""]


async def test_bare_line_feeds_in_stored_data_cannot_break_framing(site: Site) -> None:
    address = await site.account()
    # A message stored with bare LFs (not something SMTP stores, but another path might).
    await deliver_messages(site.db_url, address, [b"Subject: lf\n\n.\nline\n.\r\nend"])
    client = site.login(address)
    status, lines, _ = client.retr(1)
    assert lines == [b"Subject: lf", b"", b".", b"line", b".", b"end"]
    octets = sum(len(line) + 2 for line in lines)
    assert status == f"+OK {octets} octets".encode()
    assert client.stat()[0] == 1  # the session is still in step
    client.quit()


async def test_empty_maildrop(site: Site) -> None:
    address = await site.account()
    client = site.login(address)
    assert client.stat() == (0, 0)
    assert client.list()[1] == []
    assert client.uidl()[1] == []
    assert client.quit().endswith(b"(maildrop empty)")


# --- other settings -----------------------------------------------------------------------------


async def test_keep_on_server_and_insecure_auth(module_db: str, tmp_path: Path) -> None:
    site = start_site(
        tmp_path, module_db, pop3={"keep_on_server": True, "allow_insecure_auth": True}
    )
    try:
        address = await site.account(MESSAGES)
        before = await mailbox_state(site.db_url, address)
        client = poplib.POP3(*site.pop3, timeout=30)
        assert "USER" in client.capa() and "STLS" in client.capa()
        client.user(address)  # allowed in clear text by the config
        client.pass_(PASSWORD)
        client.retr(1)
        client.dele(1)
        client.dele(2)
        client.quit()
        after = await mailbox_state(site.db_url, address)
        assert after.uids == before.uids  # still there for IMAP
        assert [after.flags[u] for u in after.uids] == ["\\Seen \\Deleted", "\\Deleted", ""]
        assert after.used_bytes == before.used_bytes
        assert after.highestmodseq > before.highestmodseq
        client = site.login(address)  # \Deleted messages are not offered again
        _, uidls, _ = client.uidl()
        assert uidls == [f"1 {before.uidvalidity}.{before.uids[2]}".encode()]
        client.quit()
    finally:
        site.server.stop()


async def test_autologout_deletes_nothing(module_db: str, tmp_path: Path) -> None:
    site = start_site(tmp_path, module_db, limits={"pop3_timeout": 1}, listen={"smtp": ""})
    try:
        address = await site.account(MESSAGES)
        client = site.login(address)
        client.dele(1)
        time.sleep(1.5)
        assert client.file.readline().startswith(b"-ERR Autologout")
        assert client.file.readline() == b""
        assert len((await mailbox_state(site.db_url, address)).uids) == 3
    finally:
        site.server.stop()


async def test_in_use_across_processes(module_db: str, site: Site, tmp_path: Path) -> None:
    """Two Tidings processes on one PostgreSQL database: the lock holds across them."""
    if module_db.startswith("sqlite"):
        pytest.skip("SQLite is one process's store; the lock is in-process there")
    other = start_site(tmp_path, module_db, listen={"smtp": ""})
    try:
        address = await site.account(MESSAGES)
        first = site.login(address)
        second = poplib.POP3_SSL(*other.pop3s, context=other.tls, timeout=30)
        second.user(address)
        expect_error(second.pass_, PASSWORD, contains="[IN-USE]")
        first.quit()
        second.user(address)
        assert second.pass_(PASSWORD).startswith(b"+OK")
        second.quit()
    finally:
        other.server.stop()
