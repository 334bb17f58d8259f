"""Message submission on 587 (STARTTLS) and 465 (implicit TLS), with a real smtplib client.

What a user sees: no AUTH offered or taken before TLS, AUTH required before MAIL, only their
own addresses as sender, Date and Message-ID added when missing, and local recipients served
at once through the same door as port 25.
"""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import TidingsServer, add_alias, add_users, stored_messages, write_config

ALICE = "alice@example.org"
BOB = "bob@example.org"


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test server's certificate is self-signed
    return context


def message(sender: str, to: str = BOB, extra: str = "") -> bytes:
    return (f"From: Sender <{sender}>\r\nTo: {to}\r\nSubject: hello\r\n{extra}\r\nHi.\r\n").encode()


@pytest.fixture
def submission_server(tmp_path: Path, db_url: str) -> Iterator[TidingsServer]:
    import asyncio

    asyncio.run(add_users(db_url, ALICE, BOB))
    asyncio.run(add_alias(db_url, "sales@example.org", ALICE))
    config = write_config(
        tmp_path,
        db_url,
        limits={"auth_failure_delay": 0, "auth_max_failures_per_ip": 3},
    )
    server = TidingsServer(config).start()
    try:
        yield server
    finally:
        server.stop()


def logged_in(server: TidingsServer, user: str = ALICE) -> smtplib.SMTP:
    client = smtplib.SMTP(*server.addresses["submission"], timeout=30)
    client.starttls(context=client_tls())
    client.login(user, "secret")
    return client


def test_no_auth_before_tls(submission_server: TidingsServer) -> None:
    with smtplib.SMTP(*submission_server.addresses["submission"], timeout=30) as client:
        code, text = client.ehlo("client.test")
        assert code == 250
        assert b"STARTTLS" in text and b"AUTH" not in text
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==")
        assert code == 538 and b"5.7.11" in text
        code, text = client.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530 and b"5.7.0" in text
        client.starttls(context=client_tls())
        code, text = client.ehlo("client.test")
        assert b"AUTH PLAIN LOGIN" in text


def test_mail_needs_auth_even_under_tls(submission_server: TidingsServer) -> None:
    with smtplib.SMTP(*submission_server.addresses["submission"], timeout=30) as client:
        client.starttls(context=client_tls())
        client.ehlo("client.test")
        code, text = client.docmd("MAIL", f"FROM:<{ALICE}>")
        assert (code, text[:5]) == (530, b"5.7.0")


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_wrong_password_then_rate_limit(submission_server: TidingsServer) -> None:
    with smtplib.SMTP(*submission_server.addresses["submission"], timeout=30) as client:
        client.starttls(context=client_tls())
        client.ehlo("client.test")
        for _ in range(3):
            code, text = client.docmd("AUTH", "PLAIN " + plain(ALICE, "wrong"))
            assert (code, text[:5]) == (535, b"5.7.8")
        # The limit is reached: even the right password is not checked now.
        code, text = client.docmd("AUTH", "PLAIN " + plain(ALICE, "secret"))
        assert (code, text[:5]) == (454, b"4.7.0")
    assert "authentication failed for 'alice@example.org'" in submission_server.log()


async def test_submit_on_587_to_a_local_user_adds_date_and_message_id(
    submission_server: TidingsServer, db_url: str
) -> None:
    with logged_in(submission_server) as client:
        refused = client.sendmail(ALICE, [BOB], message(ALICE))
        assert refused == {}
    [stored] = await stored_messages(db_url, BOB)
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed["Subject"] == "hello"
    assert parsed["Date"] is not None
    assert parsed["Message-ID"].endswith("@mx.tidings.test>")
    assert "ESMTPSA" in parsed["Received"]


def test_many_sessions_logging_in_at_once_all_succeed(
    submission_server: TidingsServer,
) -> None:
    """Twelve logins in parallel from one address with a limit of three failures: attempts
    in progress wait for each other instead of being refused."""
    import concurrent.futures

    def session(_: int) -> int:
        with logged_in(submission_server) as client:
            code, _text = client.noop()
            return code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert list(pool.map(session, range(12))) == [250] * 12


async def test_submit_on_465_with_auth_login(submission_server: TidingsServer, db_url: str) -> None:
    host, port = submission_server.addresses["submissions"]
    with smtplib.SMTP_SSL(host, port, context=client_tls(), timeout=30) as client:
        client.ehlo("client.test")
        assert "auth" in client.esmtp_features
        client.login(ALICE, "secret")  # smtplib tries CRAM-MD5 (not offered), then PLAIN
        client.docmd("RSET")
        code, _ = client.docmd("AUTH", "LOGIN")
        assert code == 503  # already authenticated
        dated = message(ALICE, extra="Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n")
        client.sendmail(ALICE, [BOB], dated)
    [stored] = await stored_messages(db_url, BOB)
    assert b"Date: Mon, 23 Nov 2026 10:00:00 +0000" in stored
    assert stored.count(b"\r\nDate:") + stored.startswith(b"Date:") == 1


def test_auth_login_mechanism_by_hand(submission_server: TidingsServer) -> None:
    with smtplib.SMTP(*submission_server.addresses["submission"], timeout=30) as client:
        client.starttls(context=client_tls())
        client.ehlo("client.test")
        code, text = client.docmd("AUTH", "LOGIN")
        assert (code, text) == (334, b"VXNlcm5hbWU6")
        code, text = client.docmd(base64.b64encode(ALICE.encode()).decode())
        assert (code, text) == (334, b"UGFzc3dvcmQ6")
        code, text = client.docmd(base64.b64encode(b"secret").decode())
        assert code == 235


def test_someone_elses_sender_is_refused(submission_server: TidingsServer) -> None:
    with logged_in(submission_server) as client:
        code, text = client.docmd("MAIL", f"FROM:<{BOB}>")
        assert code == 553 and text.startswith(b"5.7.1")
        code, text = client.docmd("MAIL", "FROM:<ceo@bank.example>")
        assert code == 553
        # The envelope is hers, the header From is not: refused at the end of DATA.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(ALICE, [BOB], message(BOB))
        assert refused.value.smtp_code == 553
        assert b"5.7.1" in refused.value.smtp_error


async def test_alias_and_subaddress_may_be_used_as_sender(
    submission_server: TidingsServer, db_url: str
) -> None:
    with logged_in(submission_server) as client:
        client.sendmail("sales@example.org", [BOB], message("sales@example.org"))
        client.sendmail("alice+lists@example.org", [BOB], message("alice+lists@example.org"))
    assert len(await stored_messages(db_url, BOB)) == 2


def test_unknown_local_recipient_is_refused(submission_server: TidingsServer) -> None:
    with logged_in(submission_server) as client:
        client.mail(ALICE)
        code, text = client.rcpt("nobody@example.org")
        assert code == 550 and b"5.1.1" in text


def test_config_names_the_listeners(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, db_url, listen={"submission": "127.0.0.1:0", "submissions": ""})
    server = TidingsServer(config).start()
    try:
        assert "submission" in server.addresses and "submissions" not in server.addresses
    finally:
        server.stop()


def test_header_from_must_be_one_field_of_owned_addresses(
    submission_server: TidingsServer,
) -> None:
    with logged_in(submission_server) as client:
        two_froms = b"From: alice@example.org\r\n" + message(ALICE)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(ALICE, [BOB], two_froms)
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.6.0")
        mixed = message(ALICE).replace(
            f"From: Sender <{ALICE}>".encode(),
            f"From: Sender <{ALICE}>, Boss <{BOB}>".encode(),
        )
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(ALICE, [BOB], mixed)
        assert refused.value.smtp_code == 553
        folded = message(ALICE).replace(
            f"From: Sender <{ALICE}>".encode(), f"From: Sender\r\n <{ALICE}>".encode()
        )
        assert client.sendmail(ALICE, [BOB], folded) == {}


async def test_swaks_submits_over_starttls(submission_server: TidingsServer, db_url: str) -> None:
    """swaks (Debian's package), as an administrator would test a new server."""
    host, port = submission_server.addresses["submission"]
    result = subprocess.run(
        ["swaks", "--server", f"{host}:{port}", "--tls", "--auth", "PLAIN",
         "--auth-user", ALICE, "--auth-password", "secret",
         "--from", ALICE, "--to", BOB, "--header", "Subject: from swaks"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout and "250 2.0.0 Ok: queued as" in result.stdout
    [stored] = await stored_messages(db_url, BOB)
    assert b"Subject: from swaks" in stored
