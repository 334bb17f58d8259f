"""SPF, DKIM and DMARC on the MX listener, end to end: real SMTP, real DNS on loopback.

The tests' client connects from 127.0.0.1, which the default config trusts; these servers
trust no network, so every message is checked as if it came from the internet.
"""

from __future__ import annotations

import base64
import os
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dnsserver import DNSTestServer
from helpers import TidingsServer, add_users, stored_messages, write_config
from tidings.dns import Resolver
from tidings.mailauth.checker import Checker, Settings
from tidings.mailauth.dmarc import Policy
from tidings.mailauth.spf import spf_for_session
from tidings.mailauth.verdict import judge

ALICE = "alice@example.org"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
KEY_RECORD = "v=DKIM1; k=rsa; p=" + base64.b64encode(
    KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode("ascii")
ZONE = {
    "sender.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.sender.example": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.sender.example": [("TXT", KEY_RECORD)],
    "reject.example": [("TXT", "v=spf1 -all")],
    "_dmarc.reject.example": [("TXT", "v=DMARC1; p=reject")],
    "quarantine.example": [("TXT", "v=spf1 -all")],
    "_dmarc.quarantine.example": [("TXT", "v=DMARC1; p=quarantine")],
    "slow.example": [("TIMEOUT", None)],
}


def message(from_domain: str, body: bytes = b"Hello.\r\n", extra: bytes = b"") -> bytes:
    return (
        extra + b"From: Sender <someone@" + from_domain.encode() + b">\r\n"
        b"To: alice@example.org\r\nSubject: checked\r\n"
        b"Message-ID: <1@" + from_domain.encode() + b">\r\n\r\n" + body
    )


def signed(msg: bytes) -> bytes:
    signature = dkim.sign(
        msg, b"sel", b"sender.example", KEY_PEM, include_headers=[b"from", b"to", b"subject"]
    )
    return bytes(signature) + msg


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with DNSTestServer(ZONE) as server:
        yield server


def mailauth_server(
    tmp_path: Path, db_url: str, dns: DNSTestServer, **mailauth: object
) -> TidingsServer:
    config = write_config(
        tmp_path,
        db_url,
        dns={"nameservers": [dns.address], "timeout": 1.0},
        mailauth={"trusted_networks": [], **mailauth},
    )
    return TidingsServer(config).start()


def send(server: TidingsServer, mail_from: str, msg: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("client.example")
        client.mail(mail_from)
        assert client.rcpt(ALICE)[0] == 250
        return client.data(msg)


@pytest.mark.parametrize("check_process", [True, False], ids=["check-process", "in-server"])
async def test_verdicts_and_where_mail_lands(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer, check_process: bool
) -> None:
    await add_users(db_url, ALICE)
    server = mailauth_server(tmp_path, db_url, dns_server, check_process=check_process)
    try:
        forged = b"Authentication-Results: mx.tidings.test; dmarc=pass header.from=evil.example\r\n"
        foreign = b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@y.example\r\n"
        good = signed(message("sender.example", extra=foreign))
        assert send(server, "someone@sender.example", forged + good)[0] == 250

        code, reply = send(server, "someone@reject.example", message("reject.example"))
        assert (code, reply[:5]) == (550, b"5.7.1"), reply
        assert b"DMARC policy for reject.example" in reply

        # Signed, then altered in transit, from an IP SPF does not allow: nothing aligns.
        altered = signed(message("sender.example")).replace(b"Hello.", b"Hullo.")
        code, reply = send(server, "bounce@reject.example", altered)
        assert (code, reply[:5]) == (550, b"5.7.1"), reply

        assert send(server, "someone@quarantine.example", message("quarantine.example"))[0] == 250

        code, reply = send(server, "someone@slow.example", message("slow.example"))
        assert code == 451 and reply.startswith(b"4.7."), reply
    finally:
        server.stop()

    (inbox,) = await stored_messages(db_url, ALICE)
    header = inbox[: inbox.index(b"\r\nReceived: ")].decode()
    assert header.startswith("Authentication-Results: mx.tidings.test;")
    for verdict in ("spf=pass", "dkim=pass", "dmarc=pass"):
        assert verdict in header, header
    assert inbox.count(b"Authentication-Results: mx.tidings.test") == 1, "forged verdict removed"
    assert b"Authentication-Results: other.example;" in inbox, "other hosts' verdicts stay"
    (junk,) = await stored_messages(db_url, ALICE, "Junk")
    assert b"dmarc=fail" in junk and b"header.from=quarantine.example" in junk


async def test_local_policy_can_cap_dmarc_at_quarantine(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    await add_users(db_url, ALICE)
    server = mailauth_server(tmp_path, db_url, dns_server, dmarc_max_disposition="quarantine")
    try:
        assert send(server, "someone@reject.example", message("reject.example"))[0] == 250
    finally:
        server.stop()
    assert await stored_messages(db_url, ALICE) == []
    (junk,) = await stored_messages(db_url, ALICE, "Junk")
    assert b"dmarc=fail (p=reject dis=reject" in junk


def check_processes(server: TidingsServer) -> list[int]:
    """The server's check processes (python -m tidings.mailauth.checker)."""
    assert server.process is not None
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == server.process.pid and b"tidings.mailauth.checker" in cmdline:
            found.append(int(stat.parent.name))
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def test_a_failing_check_process_costs_no_mail(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    """A check process that stops answering: the server judges the mail itself, replaces the
    process; one killed goes the same way; a server killed with SIGKILL leaves none behind."""
    await add_users(db_url, ALICE)
    server = mailauth_server(tmp_path, db_url, dns_server)
    try:
        (first,) = check_processes(server)
        assert send(server, "someone@sender.example", signed(message("sender.example")))[0] == 250
        os.kill(first, signal.SIGSTOP)  # hung: the server waits out its deadline, then judges
        assert send(server, "someone@sender.example", signed(message("sender.example")))[0] == 250
        assert "check process failed" in server.log()
        code, reply = send(server, "someone@reject.example", message("reject.example"))
        assert (code, reply[:5]) == (550, b"5.7.1"), reply
        wait_until(lambda: first not in check_processes(server), 10, "the hung process to go")
        wait_until(lambda: len(check_processes(server)) == 1, 30, "a new check process")
        (second,) = check_processes(server)
        os.kill(second, signal.SIGKILL)
        assert send(server, "someone@sender.example", signed(message("sender.example")))[0] == 250
        wait_until(lambda: len(check_processes(server)) == 1, 30, "a third check process")
        (third,) = check_processes(server)
        assert third not in (first, second)
        server.kill()
        wait_until(lambda: not Path(f"/proc/{third}").exists(), 10, "the orphan to exit")
    finally:
        server.stop()
    inbox = await stored_messages(db_url, ALICE)
    assert len(inbox) == 3
    for stored in inbox:
        assert b"dkim=pass" in stored and b"dmarc=pass" in stored, stored[:400]


async def test_the_check_process_gives_the_servers_own_verdicts(
    dns_server: DNSTestServer,
) -> None:
    """The same messages judged through a check process and in this process: the same header,
    disposition, refusal and message (a forged Authentication-Results removed by both)."""
    resolver = Resolver([dns_server.address], 1.0)
    settings = Settings(
        nameservers=(dns_server.address,),
        dns_timeout=1.0,
        authserv_id="mx.tidings.test",
        ceiling=Policy.REJECT,
        trusted_arc_sealers=(),
    )
    forged = b"Authentication-Results: mx.tidings.test; dmarc=pass header.from=x.example\r\n"
    cases = [
        ("someone@sender.example", signed(message("sender.example"))),
        ("someone@sender.example", forged + signed(message("sender.example"))),
        ("bounce@reject.example", signed(message("sender.example")).replace(b"Hello", b"Hullo")),
        ("someone@reject.example", message("reject.example")),
        ("someone@quarantine.example", message("quarantine.example")),
        ("someone@slow.example", message("slow.example")),
        # Over 64 KB: judged in this process even with a check process, the same way.
        (
            "someone@sender.example",
            signed(message("sender.example", body=(b"x" * 70 + b"\r\n") * 1000)),
        ),
    ]
    checker = Checker(settings, resolver)
    await checker.start()
    pid = checker.pid
    assert pid is not None
    try:
        for mail_from, msg in cases:
            spf = await spf_for_session(resolver, "192.0.2.7", mail_from, "client.example")
            there = await checker.judge(msg, spf)
            here = await judge(resolver, msg, spf, authserv_id="mx.tidings.test")
            assert checker.pid == pid, "no fallback: the process judged every message"
            assert there == here, mail_from
    finally:
        await checker.close()
    assert checker.pid is None
    assert (
        not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    )
