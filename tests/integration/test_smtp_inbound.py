"""The MX listener, talked to over real connections with smtplib and raw sockets."""

from __future__ import annotations

import re
import smtplib
import ssl
import time
import warnings
from pathlib import Path

import pytest
from smtp_client import Wire

from helpers import (
    TidingsServer,
    add_alias,
    add_domain,
    add_users,
    create_mailbox,
    queued,
    stored_messages,
    tidings,
    write_config,
)
from tidings.delivery import DIRECTORY_POLL_SECONDS

ALICE = "alice@example.org"
BOB = "bob@example.org"
MESSAGE = b"From: s@sender.example\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
ENHANCED = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def body_of(stored: bytes) -> bytes:
    """The message as sent: what follows the Received: field Tidings prepended."""
    assert stored.startswith(b"Received: from ")
    end = stored.index(b"\r\n", stored.index(b";\r\n\t") + 3) + 2
    return stored[end:]


@pytest.fixture
async def users(db_url: str) -> None:
    await add_users(db_url, ALICE, BOB)


async def test_ehlo_advertises_the_extensions(server: TidingsServer) -> None:
    with smtplib.SMTP(*server.smtp) as client:
        code, _ = client.ehlo("client.example")
        assert code == 250
        for ext in ("size", "pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes",
                    "chunking", "starttls"):  # fmt: skip
            assert client.has_extn(ext), ext
        assert "auth" not in client.esmtp_features
        assert int(client.esmtp_features["size"]) == 25 * 1024 * 1024


async def test_message_is_stored_with_received_header(
    server: TidingsServer, users: None, db_url: str
) -> None:
    body = MESSAGE + b".leading dot\r\n..two dots\r\n"
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("client.example")
        refused = client.sendmail("s@sender.example", [ALICE], body)
        assert refused == {}
    (stored,) = await stored_messages(db_url, ALICE)
    assert body_of(stored) == body, "dot-unstuffing must give back exactly what was sent"
    header = stored[: len(stored) - len(body)].decode()
    assert "from client.example ([127.0.0.1])" in header
    assert "by mx.tidings.test (Tidings) with ESMTP id " in header
    assert f"for <{ALICE}>" in header


async def test_every_reply_carries_an_enhanced_status_code(
    server: TidingsServer, users: None
) -> None:
    w = Wire(server.smtp)
    replies = [
        w.cmd("EHLO c.example"),
        w.cmd("NOOP"),
        w.cmd("MAIL FROM:<s@sender.example>"),
        w.cmd("MAIL FROM:<s@sender.example>"),  # nested
        w.cmd("RCPT TO:<nobody@example.org>"),
        w.cmd("RCPT TO:<x@elsewhere.example>"),
        w.cmd("RCPT TO:<alice@example.org> FOO=BAR"),
        w.cmd("RCPT TO:alice@example.org"),
        w.cmd("RCPT TO:<alice@example.org>"),
        w.cmd("DATA"),
    ]
    w.send(MESSAGE + b".\r\n")
    replies += [w.reply(), w.cmd("RSET"), w.cmd("VRFY alice"), w.cmd("HELP"), w.cmd("AUTH PLAIN"),
                w.cmd("XYZZY"), w.cmd(""), w.cmd("DATA"), w.cmd("QUIT")]  # fmt: skip
    for reply in replies[1:]:
        if not reply.startswith("354"):
            assert ENHANCED.match(reply), reply
    w.close()


async def test_null_sender_and_case_insensitive_recipient(
    server: TidingsServer, users: None, db_url: str
) -> None:
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("bounce.example")
        assert client.sendmail("<>", ["ALICE@Example.ORG."], MESSAGE) == {}
    assert len(await stored_messages(db_url, ALICE)) == 1


RELAY_ATTEMPTS = [
    ("<user@other.example>", "554 5.7.1"),
    ("<user%other.example@example.org>", "550 5.1.1"),
    ('<"user@other.example"@example.org>', "550 5.1.1"),
    ("<@example.org:user@other.example>", "554 5.7.1"),
    ("<@example.org,@example.org:user@other.example>", "554 5.7.1"),
    ("<user@other.example@example.org>", "501 5.1.3"),
    ("<user@OTHER.Example>", "554 5.7.1"),
    ("<user@other.example.>", "554 5.7.1"),
    ("<USER@OTHER.EXAMPLE.>", "554 5.7.1"),
    ("<user@[127.0.0.1]>", "554 5.7.1"),
    ("<user@[IPv6:::1]>", "554 5.7.1"),
    ("<user!other.example@example.org>", "550 5.1.1"),
    ("<other.example!user@example.org>", "550 5.1.1"),
    ("<user@example.org.other.example>", "554 5.7.1"),
    ("<user@sub.example.org>", "554 5.7.1"),
    ("<user@localhost>", "554 5.7.1"),
    ("<user@mx.tidings.test>", "554 5.7.1"),
]


async def test_open_relay_battery_is_refused_and_nothing_is_queued(
    server: TidingsServer, users: None, db_url: str
) -> None:
    w = Wire(server.smtp)
    w.cmd("EHLO relay-tester.example")
    assert w.cmd("MAIL FROM:<spammer@other.example>").startswith("250")
    for path, expected in RELAY_ATTEMPTS:
        reply = w.cmd(f"RCPT TO:{path}")
        assert reply.startswith(expected), (path, reply)
    assert w.cmd("DATA").startswith("503 5.5.1")
    # Even with one good recipient in the envelope, the bad ones were not added to it.
    assert w.cmd("RCPT TO:<alice@example.org>").startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.send(MESSAGE + b".\r\n")
    assert w.reply().startswith("250 2.0.0")
    w.close()
    assert await queued(db_url) == []
    assert len(await stored_messages(db_url, ALICE)) == 1


async def test_unknown_user_and_pipelined_transaction(
    server: TidingsServer, users: None, db_url: str
) -> None:
    w = Wire(server.smtp)
    w.cmd("EHLO c.example")
    w.send(
        b"MAIL FROM:<s@sender.example>\r\nRCPT TO:<nobody@example.org>\r\n"
        b"RCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
    )
    assert w.reply().startswith("250 2.1.0")
    assert w.reply().startswith("550 5.1.1 <nobody@example.org>")
    assert w.reply().startswith("250 2.1.5")
    assert w.reply().startswith("250 2.1.5")
    assert w.reply().startswith("354")
    # The message, the end marker and the next transaction arrive in one packet.
    w.send(MESSAGE + b".\r\nMAIL FROM:<t@sender.example>\r\nRCPT TO:<bob@example.org>\r\n"
           b"DATA\r\n")  # fmt: skip
    assert w.reply().startswith("250 2.0.0 Ok: queued as ")
    assert w.reply().startswith("250 2.1.0")
    assert w.reply().startswith("250 2.1.5")
    assert w.reply().startswith("354")
    w.send(b"Subject: second\r\n\r\nx\r\n.\r\nQUIT\r\n")
    assert w.reply().startswith("250 2.0.0")
    assert w.reply().startswith("221 2.0.0")
    assert len(await stored_messages(db_url, ALICE)) == 1
    assert [body_of(m) for m in await stored_messages(db_url, BOB)] == [
        MESSAGE,
        b"Subject: second\r\n\r\nx\r\n",
    ]


async def test_bdat_chunks(server: TidingsServer, users: None, db_url: str) -> None:
    w = Wire(server.smtp)
    w.cmd("EHLO c.example")
    # BDAT before any recipient: the chunk is still consumed, the session stays in step.
    w.send(b"BDAT 5\r\nhello")
    assert w.reply().startswith("503 5.5.1")
    w.cmd("MAIL FROM:<s@sender.example>")
    w.cmd("RCPT TO:<alice@example.org>")
    first, second = MESSAGE[:20], MESSAGE[20:] + b"\r\n.\r\nnot an end\r\n"
    w.send(b"BDAT %d\r\n%s" % (len(first), first))
    assert w.reply() == f"250 2.0.0 {len(first)} octets received"
    assert w.cmd("DATA").startswith("503 5.5.1")
    w.send(b"BDAT %d LAST\r\n%s" % (len(second), second))
    assert w.reply().startswith("250 2.0.0 Ok: queued as ")
    # BDAT 0 LAST with an empty message is legal.
    w.cmd("MAIL FROM:<s@sender.example>")
    w.cmd("RCPT TO:<alice@example.org>")
    assert w.cmd("BDAT 0 LAST").startswith("250 2.0.0 Ok")
    assert w.cmd("BDAT x").startswith("501 5.5.4")
    w.close()
    stored = await stored_messages(db_url, ALICE)
    assert [body_of(m) for m in stored] == [first + second, b""]


@pytest.mark.parametrize(
    "smuggled",
    [
        b"\n.\r\n",
        b"\n.\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r.\r",
        b"\n..\r\n",
    ],
)
async def test_smtp_smuggling_never_yields_two_messages(
    smuggled: bytes, server: TidingsServer, users: None, db_url: str
) -> None:
    w = Wire(server.smtp)
    w.cmd("EHLO c.example")
    w.cmd("MAIL FROM:<s@sender.example>")
    w.cmd("RCPT TO:<alice@example.org>")
    assert w.cmd("DATA").startswith("354")
    w.send(
        b"Subject: one\r\n\r\nfirst" + smuggled
        + b"MAIL FROM:<evil@sender.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nx\r\n.\r\n"
    )  # fmt: skip
    reply = w.reply()
    assert reply.startswith("550 5.6.11"), reply
    assert w.cmd("NOOP").startswith("250")
    w.close()
    assert await stored_messages(db_url, ALICE) == []
    assert await stored_messages(db_url, BOB) == []


async def test_bare_line_endings_normalized_when_configured(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, db_url, limits={"bare_line_endings": "normalize"})
    await add_users(db_url, ALICE, BOB)
    server = TidingsServer(config).start()
    try:
        w = Wire(server.smtp)
        w.cmd("EHLO c.example")
        w.cmd("MAIL FROM:<s@sender.example>")
        w.cmd("RCPT TO:<alice@example.org>")
        w.cmd("DATA")
        w.send(b"Subject: one\n\nfirst\n.\nRCPT TO:<bob@example.org>\r\nlast\r\n.\r\n")
        assert w.reply().startswith("250 2.0.0")
        w.close()
    finally:
        server.stop()
    (stored,) = await stored_messages(db_url, ALICE)
    assert (
        body_of(stored)
        == b"Subject: one\r\n\r\nfirst\r\n.\r\nRCPT TO:<bob@example.org>\r\nlast\r\n"
    )
    assert await stored_messages(db_url, BOB) == []


async def test_limits(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, db_url, limits={"max_message_size": 2000, "max_recipients": 3})
    await add_users(db_url, ALICE, BOB)
    server = TidingsServer(config).start()
    try:
        w = Wire(server.smtp)
        w.cmd("EHLO c.example")
        assert w.cmd("MAIL FROM:<s@sender.example> SIZE=5000").startswith("552 5.3.4")
        assert w.cmd("MAIL FROM:<s@sender.example> SIZE=100").startswith("250")
        for _ in range(3):
            assert w.cmd("RCPT TO:<alice@example.org>").startswith("250")
        assert w.cmd("RCPT TO:<bob@example.org>").startswith("452 4.5.3")
        assert w.cmd("DATA").startswith("354")
        w.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100 + b".\r\n")
        assert w.reply().startswith("552 5.3.4")
        # Overlong and garbage command lines, then the session still works.
        assert w.cmd("NOOP " + "x" * 5000).startswith("500 5.5.2")
        assert w.cmd(b"\xff\xfe garbage").startswith("500 5.5.2")
        assert w.cmd("MAIL FROM:<s@sender.example>").startswith("250")
        assert w.cmd("RCPT TO:<alice@example.org>").startswith("250")
        w.send(b"BDAT 3000 LAST\r\n" + b"y" * 3000)
        assert w.reply().startswith("552 5.3.4")
        assert w.cmd("NOOP").startswith("250")
        # Another client was never disturbed.
        with smtplib.SMTP(*server.smtp) as other:
            assert other.sendmail("s@sender.example", [BOB], MESSAGE) == {}
        w.close()
    finally:
        server.stop()
    assert await stored_messages(db_url, ALICE) == []
    assert len(await stored_messages(db_url, BOB)) == 1


async def test_starttls_then_delivery(server: TidingsServer, users: None, db_url: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("c.example")
        client.starttls(context=context)
        client.ehlo("c.example")
        assert not client.has_extn("starttls")
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        assert client.sendmail("s@sender.example", [ALICE], MESSAGE) == {}
    (stored,) = await stored_messages(db_url, ALICE)
    assert b"with ESMTPS id" in stored


async def test_tls_below_1_2_is_refused(server: TidingsServer) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("c.example")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, OSError)):
            client.starttls(context=context)


async def test_aliases_catch_all_subaddress_and_duplicates(
    server: TidingsServer, users: None, db_url: str
) -> None:
    await add_domain(db_url, "example.net")
    await add_alias(db_url, "team@example.org", ALICE, BOB, "carol@remote.example")
    await add_alias(db_url, "@example.net", ALICE)
    await add_alias(db_url, "loop1@example.org", "loop2@example.org")
    await add_alias(db_url, "loop2@example.org", "loop1@example.org")
    await create_mailbox(db_url, ALICE, "news")
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("c.example")
        # team → alice, bob, carol@remote; alice also named directly: she gets one copy.
        assert client.sendmail("s@sender.example", ["team@example.org", ALICE], MESSAGE) == {}
        assert (
            client.sendmail("s@sender.example", ["anything@example.net"], b"Subject: c\r\n\r\n")
            == {}
        )
        assert (
            client.sendmail("s@sender.example", ["alice+news@example.org"], b"Subject: n\r\n\r\n")
            == {}
        )
        assert (
            client.sendmail(
                "s@sender.example", ["alice+nofolder@example.org"], b"Subject: i\r\n\r\n"
            )
            == {}
        )
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            client.sendmail("s@sender.example", ["loop1@example.org"], MESSAGE)
        assert e.value.recipients["loop1@example.org"][0] == 550
    inbox = [body_of(m) for m in await stored_messages(db_url, ALICE)]
    assert inbox == [MESSAGE, b"Subject: c\r\n\r\n", b"Subject: i\r\n\r\n"]
    assert [body_of(m) for m in await stored_messages(db_url, ALICE, "news")] == [
        b"Subject: n\r\n\r\n"
    ]
    assert len(await stored_messages(db_url, BOB)) == 1
    assert await queued(db_url) == [("s@sender.example", "carol@remote.example")]


async def test_quota_gives_452_and_stores_nothing(tmp_path: Path, db_url: str) -> None:
    await add_users(db_url, ALICE, quota=3000)
    await add_users(db_url, BOB)
    config = write_config(tmp_path, db_url)
    server = TidingsServer(config).start()
    try:
        with smtplib.SMTP(*server.smtp) as client:
            client.ehlo("c.example")
            assert client.sendmail("s@sender.example", [ALICE], b"x" * 2000 + b"\r\n") == {}
            # Over quota for alice at DATA: refused for every recipient, stored for none.
            with pytest.raises(smtplib.SMTPDataError) as data_error:
                client.sendmail("s@sender.example", [ALICE, BOB], b"y" * 2000 + b"\r\n")
            assert data_error.value.smtp_code == 452
            assert data_error.value.smtp_error.startswith(b"4.2.2")
            assert client.sendmail("s@sender.example", [ALICE], b"z" * 500 + b"\r\n") == {}
            # The administrator lowers the quota below what is used: refused at RCPT already.
            assert tidings(config, "user", "quota", ALICE, "1K").returncode == 0
            time.sleep(DIRECTORY_POLL_SECONDS + 0.2)  # the server notices directory changes
            with pytest.raises(smtplib.SMTPRecipientsRefused) as rcpt_error:
                client.sendmail("s@sender.example", [ALICE], MESSAGE)
            assert rcpt_error.value.recipients[ALICE][0] == 452
            assert rcpt_error.value.recipients[ALICE][1].startswith(b"4.2.2")
    finally:
        server.stop()
    assert len(await stored_messages(db_url, ALICE)) == 2
    assert await stored_messages(db_url, BOB) == [], "no half-stored message"


async def test_mail_in_flight_for_a_removed_account_never_reaches_a_new_one(
    server: TidingsServer, server_config: Path, users: None, db_url: str
) -> None:
    """The account is removed between RCPT and DATA and a new one is added: its ids must be
    new, so the message cannot be filed under the old ids into someone else's mailbox."""
    w = Wire(server.smtp)
    w.cmd("EHLO c.example")
    w.cmd("MAIL FROM:<s@sender.example>")
    assert w.cmd("RCPT TO:<bob@example.org>").startswith("250")
    assert tidings(server_config, "user", "remove", BOB).returncode == 0
    add = tidings(server_config, "user", "add", "mallory@example.org", "--password-stdin",
                  input="pw\n")  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert w.cmd("DATA").startswith("354")
    w.send(MESSAGE + b".\r\n")
    assert w.reply().startswith("451 4.3.0")
    w.close()
    assert await stored_messages(db_url, "mallory@example.org") == []


async def test_a_message_of_exactly_the_limit_is_accepted_however_it_arrives(
    tmp_path: Path, db_url: str
) -> None:
    config = write_config(tmp_path, db_url, limits={"max_message_size": 2000})
    await add_users(db_url, ALICE)
    server = TidingsServer(config).start()
    body = (b"x" * 98 + b"\r\n") * 20  # 2000 bytes
    try:
        for split in (len(body), len(body) + 1, len(body) + 2, len(body) + 4):
            w = Wire(server.smtp)
            w.cmd("EHLO c.example")
            w.cmd("MAIL FROM:<s@sender.example>")
            w.cmd("RCPT TO:<alice@example.org>")
            assert w.cmd("DATA").startswith("354")
            wire = body + b".\r\n"
            w.send(wire[:split])
            time.sleep(0.05)
            w.send(wire[split:])
            assert w.reply().startswith("250 2.0.0"), split
            w.close()
    finally:
        server.stop()
    assert len(await stored_messages(db_url, ALICE)) == 4
