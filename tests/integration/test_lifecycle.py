"""Signals and logs of a running server: SIGTERM ends sessions politely and loses nothing
acknowledged, SIGHUP takes a renewed certificate and config, the log follows one message by its
queue id (as text or JSON) and never shows a password."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import imaplib
import itertools
import json
import poplib
import re
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from smtp_client import Wire

from helpers import (
    TidingsServer,
    add_alias,
    add_users,
    open_store,
    stored_messages,
    write_config,
)
from peer import SMTPPeer
from tidings.tls import write_self_signed

USERS = [f"user{i}@example.org" for i in range(3)]
FORWARDED = "fwd@example.org"  # an alias to FAR: its mail goes through the queue
FAR = "far@remote.test"
CLIENTS = 8
SIGNAL_AFTER = 40  # acknowledged messages before SIGTERM
SUBJECT = re.compile(rb"^Subject: (load-\d+)\r$", re.MULTILINE)


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what or "condition not met")
        time.sleep(0.05)


def exit_code(server: TidingsServer, timeout: float = 30.0) -> int:
    assert server.process is not None
    return server.process.wait(timeout)


# --- SIGTERM -------------------------------------------------------------------------------------


def load_message(n: int) -> bytes:
    return (
        f"From: load@sender.example\r\nSubject: load-{n}\r\n"
        f"Message-ID: <load-{n}@sender.example>\r\n\r\n".encode()
        + b"a line of the body, long enough to take a moment to send\r\n" * 300
    )


def subjects(bodies: list[bytes]) -> Counter[int]:
    found: Counter[int] = Counter()
    for body in bodies:
        m = SUBJECT.search(body)
        assert m is not None
        found[int(m.group(1)[5:])] += 1
    return found


def reply_codes(error: Exception) -> set[int]:
    """The reply codes an aiosmtplib refusal carries."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return {r.code for r in error.recipients}
    return {getattr(error, "code", 0)}


async def test_sigterm_under_load_loses_nothing_acknowledged(tmp_path: Path, db_url: str) -> None:
    """Clients sending when SIGTERM comes get a 250 for what is stored, then 421 or a closed
    connection; queued mail (forwarded to another domain) is relayed after the restart."""
    await add_users(db_url, *USERS)
    await add_alias(db_url, FORWARDED, FAR)
    with SMTPPeer() as far:
        config = write_config(tmp_path, db_url, relay={"smarthost": f"127.0.0.1:{far.port}"})
        server = TidingsServer(config).start()
        acknowledged: dict[int, str] = {}  # message number → recipient
        endings: Counter[str] = Counter()
        numbers = itertools.count()
        signalled = asyncio.Event()

        async def client() -> None:
            host, port = server.smtp
            smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=30)
            try:
                await smtp.connect()
                while True:
                    n = next(numbers)
                    rcpt = FORWARDED if n % 5 == 0 else USERS[n % len(USERS)]
                    await smtp.sendmail("load@sender.example", [rcpt], load_message(n))
                    acknowledged[n] = rcpt
                    if len(acknowledged) >= SIGNAL_AFTER and not signalled.is_set():
                        signalled.set()
                        server.signal(signal.SIGTERM)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                # aiosmtplib mostly notices the close before it reads the 421 that came first.
                assert signalled.is_set(), "only the stop may close a connection"
                endings["closed"] += 1
            except aiosmtplib.SMTPException as e:
                assert signalled.is_set(), f"refused before the stop: {e}"
                assert reply_codes(e) == {421}, f"a stop answers 421, not {e}"
                endings["421"] += 1
            finally:
                smtp.close()

        try:
            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(CLIENTS))), 60)
            assert exit_code(server) == 0, server.log()[-3000:]
        finally:
            server.kill()
        assert sum(endings.values()) == CLIENTS
        assert "SMTP sessions told 421 at once" in server.log()
        assert len(acknowledged) >= SIGNAL_AFTER

        stored: Counter[int] = Counter()
        for user in USERS:
            stored.update(subjects(await stored_messages(db_url, user)))
        local = {n for n, rcpt in acknowledged.items() if rcpt != FORWARDED}
        assert sorted(local - set(stored)) == [], "acknowledged but not stored"
        assert max(stored.values()) == 1, "a message was stored twice"

        # What was queued for the other domain reaches it once the server is back.
        forwarded = {n for n, rcpt in acknowledged.items() if rcpt == FORWARDED}
        server.start()
        try:
            await far.wait_until(
                lambda peer: forwarded <= set(subjects([m.content for m in peer.messages])),
                timeout=30,
                what="every acknowledged forward",
            )
        finally:
            server.stop()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sigterm_says_421_bye_and_err_and_finishes_data(tmp_path: Path, db_url: str) -> None:
    """RFC 5321 §3.8: an idle SMTP session hears 421 at once, one in DATA finishes with its
    250 and then hears 421; IMAP says BYE, POP3 -ERR; no new connection is accepted."""
    await add_users(db_url, "bob@example.org")
    server = TidingsServer(write_config(tmp_path, db_url)).start()
    try:
        idle = Wire(server.smtp)
        assert idle.cmd("EHLO idle.example").startswith("250")
        busy = Wire(server.smtp)
        busy.cmd("EHLO busy.example")
        assert busy.cmd("MAIL FROM:<a@sender.example>").startswith("250")
        assert busy.cmd("RCPT TO:<bob@example.org>").startswith("250")
        assert busy.cmd("DATA").startswith("354")
        busy.send(b"From: a@sender.example\r\nSubject: mid-data\r\n\r\nfirst half\r\n")
        chunked = Wire(server.smtp)  # RFC 3030: between the BDAT chunks of one message
        chunked.cmd("EHLO chunked.example")
        chunked.cmd("MAIL FROM:<b@sender.example>")
        chunked.cmd("RCPT TO:<bob@example.org>")
        first_chunk = b"Subject: chunked\r\n\r\none, "
        chunked.send(b"BDAT %d\r\n" % len(first_chunk) + first_chunk)
        assert chunked.reply().startswith("250")
        imap = socket.create_connection(server.addresses["imap"], timeout=10)
        imap_greeting = imap.recv(4096)
        pop3 = socket.create_connection(server.addresses["pop3"], timeout=10)
        pop3_greeting = pop3.recv(4096)
        assert imap_greeting.startswith(b"* OK") and pop3_greeting.startswith(b"+OK")

        server.signal(signal.SIGTERM)
        assert idle.reply().startswith("421 4.3.2 ")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(server.smtp, timeout=5)
        assert imap.recv(4096).startswith(b"* BYE ")
        assert pop3.recv(4096).startswith(b"-ERR [SYS/TEMP] ")

        busy.send(b"second half\r\n.\r\n")
        assert busy.reply().startswith("250 2.0.0 Ok: queued as ")
        assert busy.reply().startswith("421 4.3.2 ")
        last_chunk = b"two\r\n"
        chunked.send(b"BDAT %d LAST\r\n" % len(last_chunk) + last_chunk)
        assert chunked.reply().startswith("250 2.0.0 Ok: queued as ")
        assert chunked.reply().startswith("421 4.3.2 ")
        assert exit_code(server) == 0
    finally:
        server.kill()
    for sock in (imap, pop3):
        sock.close()
    stored = await stored_messages(db_url, "bob@example.org")
    assert len(stored) == 2
    assert any(b"first half\r\nsecond half\r\n" in body for body in stored)
    assert any(b"\r\n\r\none, two\r\n" in body for body in stored)


# --- SIGHUP --------------------------------------------------------------------------------------


def peer_fingerprint(address: tuple[str, int]) -> str:
    with (
        socket.create_connection(address, timeout=10) as raw,
        client_tls().wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


def hangup(server: TidingsServer, outcome: str) -> None:
    """SIGHUP, then wait for the log line of its ``outcome`` ("reloaded" or "reload failed")."""
    before = server.log().count(outcome)
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.log().count(outcome) > before, what=f"{outcome!r} in the log")


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sighup_reloads_certificate_and_config(tmp_path: Path, db_url: str) -> None:
    await add_users(db_url, "bob@example.org")
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    write_self_signed(cert, key, "mx.tidings.test")
    first = file_fingerprint(cert)
    sections: dict[str, dict[str, object]] = {"tls": {"cert": str(cert), "key": str(key)}}
    config = write_config(tmp_path, db_url, **sections)
    server = TidingsServer(config).start()
    try:
        assert peer_fingerprint(server.addresses["imaps"]) == first
        session = imaplib.IMAP4_SSL(*server.addresses["imaps"], ssl_context=client_tls())
        session.login("bob@example.org", "secret")

        write_self_signed(cert, key, "mx.tidings.test")  # renewed: same names, a new key
        second = file_fingerprint(cert)
        assert second != first
        hangup(server, "reloaded")
        for listener in ("imaps", "submissions", "pop3s"):
            assert peer_fingerprint(server.addresses[listener]) == second, listener
        # The session opened before goes on with the certificate it started with.
        assert session.select("INBOX")[0] == "OK"
        assert session.noop()[0] == "OK"

        # A broken pair is refused; the running one stays.
        cert.write_text("not a certificate\n")
        hangup(server, "reload failed")
        assert peer_fingerprint(server.addresses["imaps"]) == second
        # So is a config that does not parse.
        good = config.read_text()
        config.write_text(good + "[limits\n")
        hangup(server, "reload failed")
        assert "not valid TOML" in server.log()

        # A smaller message size limit and a quieter log apply to new sessions at once.
        write_self_signed(cert, key, "mx.tidings.test")
        config.write_text(
            good.replace("[database]", '[log]\nlevel = "WARNING"\n\n[database]')
            + "\n[limits]\nmax_message_size = 2048\n"
        )
        hangup(server, "reloaded")
        smtp = Wire(server.smtp)
        assert "SIZE 2048" in smtp.cmd("EHLO client.example")
        smtp.cmd("MAIL FROM:<a@sender.example>")
        smtp.cmd("RCPT TO:<bob@example.org>")
        smtp.cmd("DATA")
        assert smtp.cmd(b"Subject: quiet\r\n\r\nshort\r\n.").startswith("250")
        smtp.close()
        assert session.noop()[0] == "OK"
        session.logout()
        assert server.stop() == 0
    finally:
        server.kill()
    after_reload = server.log().rpartition("reloaded")[2]
    assert "smtp id=" not in after_reload, "INFO lines are off after log.level = WARNING"


# --- logs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_json_log_follows_a_message_by_queue_id(tmp_path: Path, db_url: str) -> None:
    """--log-format json: every line is an object; one submitted message is found by its
    queue id in the submission, local delivery and relay lines, with its Message-ID."""
    await add_users(db_url, "alice@example.org", "bob@example.org")
    with SMTPPeer() as far:
        config = write_config(tmp_path, db_url, relay={"smarthost": f"127.0.0.1:{far.port}"})
        server = TidingsServer(config, options=["--log-format", "json"]).start()
        try:
            host, port = server.addresses["submissions"]
            async with aiosmtplib.SMTP(
                hostname=host, port=port, use_tls=True, tls_context=client_tls()
            ) as smtp:
                await smtp.login("alice@example.org", "secret")
                _, reply = await smtp.sendmail(
                    "alice@example.org",
                    ["bob@example.org", FAR],
                    b"From: alice@example.org\r\nSubject: followed\r\n"
                    b"Message-ID: <followed-1@example.org>\r\n\r\nHello.\r\n",
                )
                with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                    await smtp.sendmail("alice@example.org", ["nobody@example.org"], b"x\r\n")
            queue_id = reply.rpartition(" ")[2]
            await far.wait_for(1, timeout=20)
            wait_for(lambda: "status=sent" in server.log(), what="the relay line")
        finally:
            assert server.stop() == 0
    records = [json.loads(line) for line in server.log().splitlines()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    mine = [r for r in records if r.get("queue_id") == queue_id]
    by_kind = {r["message"].split(" ", 1)[0]: r for r in mine}
    assert set(by_kind) == {"submission", "delivered", "relay"}, mine
    submitted = by_kind["submission"]
    assert submitted["user"] == "alice@example.org"
    assert submitted["client"] == "127.0.0.1"
    assert submitted["mail_from"] == "alice@example.org"
    assert submitted["to"] == ["bob@example.org", FAR]
    assert submitted["message_id"] == "<followed-1@example.org>"
    assert submitted["result"] == f"250 2.0.0 Ok: queued as {queue_id}"
    assert submitted["size"] > 0
    assert by_kind["delivered"]["to"] == ["bob@example.org"]
    relayed = by_kind["relay"]
    assert relayed["status"] == "sent" and relayed["to"] == [FAR]
    assert relayed["message_id"] == "<followed-1@example.org>"
    [refused] = [r for r in records if r.get("to") == ["nobody@example.org"]]
    assert refused["result"].startswith("550 5.1.1") and refused["queue_id"] == ""


PASSWORD = "Zebra-Quartz-7731-unlikely"
WRONG = "Otter-Basalt-4410-unlikely"
BODY_MARK = "Body-Marker-9152-unlikely"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_passwords_and_bodies_never_reach_the_log(tmp_path: Path, db_url: str) -> None:
    """Logins over submission, IMAP and POP3 (right and wrong passwords, every mechanism),
    with the log at DEBUG: neither password, in clear or base64, nor a body shows up."""
    from tidings.auth import hash_password
    from tidings.store import accounts

    user = "carol@example.org"
    async with open_store(db_url) as store:
        await accounts.add_domain(store, "example.org")
        await accounts.add_account(store, user, hash_password(PASSWORD))
    server = TidingsServer(
        write_config(tmp_path, db_url, limits={"auth_failure_delay": 0.0}),
        options=["--log-level", "DEBUG"],
    ).start()
    try:
        host, port = server.addresses["submissions"]
        for mechanism in ("PLAIN", "LOGIN"):
            async with aiosmtplib.SMTP(
                hostname=host, port=port, use_tls=True, tls_context=client_tls()
            ) as smtp:
                with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                    await smtp.login(user, WRONG)
                method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
                await method(user, PASSWORD)
                await smtp.sendmail(
                    user, [user], f"From: {user}\r\nSubject: s\r\n\r\n{BODY_MARK}\r\n".encode()
                )

        imap = imaplib.IMAP4_SSL(*server.addresses["imaps"], ssl_context=client_tls())
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(user, WRONG)
        imap.login(user, PASSWORD)
        imap.select("INBOX")
        imap.fetch("1", "(BODY[])")
        imap.logout()
        imap = imaplib.IMAP4_SSL(*server.addresses["imaps"], ssl_context=client_tls())
        imap.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
        imap.logout()

        pop3 = poplib.POP3_SSL(*server.addresses["pop3s"], context=client_tls())
        pop3.user(user)
        with pytest.raises(poplib.error_proto):
            pop3.pass_(WRONG)
        pop3.quit()
        pop3 = poplib.POP3_SSL(*server.addresses["pop3s"], context=client_tls())
        pop3.user(user)
        pop3.pass_(PASSWORD)
        pop3.retr(1)
        pop3.quit()
        pop3 = poplib.POP3_SSL(*server.addresses["pop3s"], context=client_tls())
        blob = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        assert pop3._shortcmd(f"AUTH PLAIN {blob}").startswith(b"+OK")
        pop3.quit()
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "carol@example.org logged in" in log, "the logins were logged, by account"
    secrets = [PASSWORD, WRONG, BODY_MARK]
    secrets += [base64.b64encode(s.encode()).decode() for s in (PASSWORD, WRONG)]
    for password in (PASSWORD, WRONG):
        plain = f"\0{user}\0{password}".encode()
        secrets.append(base64.b64encode(plain).decode())
    for secret in secrets:
        assert secret not in log, f"{secret!r} is in the server log"
