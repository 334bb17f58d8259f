"""The IMAP listeners (143 with STARTTLS, 993 with TLS), talked to with imaplib, imapclient and
a raw client that sees exact responses.

One server per backend serves most of this module (each test logs in as its own account).
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from imap_client import Reply, Wire
from imapclient import IMAPClient

from helpers import TidingsServer, add_users, deliver_messages, mailbox_state, write_config
from pg import PostgresServer

PASSWORD = "secret"
FAST_AUTH = {
    "auth_failure_delay": 0,
    "auth_max_failures_per_ip": 50,
    "auth_max_failures_per_account": 5,
}


def simple(subject: str, body: str = "Hello.\r\n", sender: str = "a@sender.example") -> bytes:
    return (
        f"From: Ann Sender <{sender}>\r\nTo: someone@example.org\r\nSubject: {subject}\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <{uuid.uuid4().hex}@x>\r\n"
        f"\r\n{body}"
    ).encode()


def multipart() -> bytes:
    """multipart/mixed: an alternative (text + html), a message/rfc822, a named attachment."""
    inner = EmailMessage()
    inner["From"] = "inner@sender.example"
    inner["Subject"] = "Inner"
    inner.set_content("inner body\n")
    outer = EmailMessage()
    outer["From"] = "Zoë <z@sender.example>"
    outer["To"] = "someone@example.org"
    outer["Subject"] = "Grüße aus Köln"
    outer["Date"] = "Tue, 24 Nov 2026 08:00:00 +0000"
    outer.set_content("plain text part\n")
    outer.add_alternative("<p>html part</p>\n", subtype="html")
    outer.add_attachment(inner)
    outer.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream",
                         filename="Überblick.bin")  # fmt: skip
    return outer.as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


@dataclass
class Site:
    server: TidingsServer
    db_url: str
    directory: Path

    @property
    def imap(self) -> tuple[str, int]:
        return "localhost", self.server.addresses["imap"][1]

    @property
    def imaps(self) -> tuple[str, int]:
        return "localhost", self.server.addresses["imaps"][1]

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.directory / "data/tls/cert.pem"))

    def account(self, messages: list[bytes] | None = None) -> str:
        address = f"u{uuid.uuid4().hex[:10]}@example.org"
        asyncio.run(add_users(self.db_url, address))
        if messages:
            self.deliver(address, messages)
        return address

    def deliver(self, address: str, messages: list[bytes]) -> None:
        asyncio.run(deliver_messages(self.db_url, address, messages))

    def client(self, address: str) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL(*self.imaps, ssl_context=self.tls, timeout=30)
        client.login(address, PASSWORD)
        return client

    def wire(self, address: str | None = None) -> Wire:
        wire = Wire(self.imaps, self.tls)
        if address is not None:
            assert wire.command(f'LOGIN "{address}" "{PASSWORD}"').ok
        return wire


def start_site(directory: Path, db_url: str, **sections: dict[str, object]) -> Site:
    limits = {**FAST_AUTH, **sections.pop("limits", {})}
    config = write_config(directory, db_url, limits=limits, **sections)
    return Site(TidingsServer(config).start(), db_url, directory)


@pytest.fixture(scope="module")
def site(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = start_site(tmp_path_factory.mktemp("imap"), module_db)
    try:
        yield s
    finally:
        s.server.stop()


def fetch_map(reply: Reply) -> dict[int, bytes]:
    out = {}
    for line in reply.lines(b"FETCH"):
        seq = int(line.split(b" ")[1])
        out[seq] = line
    return out


# --- connecting and logging in -------------------------------------------------------------------


def test_port_143_offers_no_login_before_starttls(site: Site) -> None:
    address = site.account()
    wire = Wire(site.imap)
    assert b"STARTTLS" in wire.greeting and b"LOGINDISABLED" in wire.greeting
    caps = wire.command("CAPABILITY")
    assert b"AUTH=" not in caps.untagged[0]
    refused = wire.command(f'LOGIN "{address}" "{PASSWORD}"')
    assert refused.status == "NO" and b"[PRIVACYREQUIRED]" in refused.text
    assert wire.command("AUTHENTICATE PLAIN").status == "NO"
    assert wire.command("STARTTLS").ok
    wire.start_tls(site.tls)
    caps = wire.command("CAPABILITY")
    assert b"AUTH=PLAIN" in caps.untagged[0] and b"LOGINDISABLED" not in caps.untagged[0]
    assert wire.command(f'LOGIN "{address}" "{PASSWORD}"').ok
    wire.close()


def test_imaplib_starttls_login_and_logout(site: Site) -> None:
    address = site.account([simple("hi")])
    client = imaplib.IMAP4(*site.imap, timeout=30)
    client.starttls(site.tls)
    assert client.login(address, PASSWORD)[0] == "OK"
    assert client.select("INBOX") == ("OK", [b"1"])
    assert client.logout()[0] == "BYE"


def test_starttls_with_pipelined_command_is_refused(site: Site) -> None:
    wire = Wire(site.imap)
    wire.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
    time.sleep(0.3)
    reply = wire.read_until("a")
    assert reply.status == "BAD"
    wire.close()


def test_login_and_authenticate_over_993(site: Site) -> None:
    address = site.account()
    client = imaplib.IMAP4_SSL(*site.imaps, ssl_context=site.tls, timeout=30)
    assert "AUTH=PLAIN" in client.capabilities
    user = address.encode()
    typ, data = client.authenticate("PLAIN", lambda _: b"\0" + user + b"\0" + PASSWORD.encode())
    assert typ == "OK"
    assert b"[CAPABILITY" in data[0] and b"UIDPLUS" in data[0]
    client.logout()
    wire = site.wire()
    # SASL-IR (RFC 4959), and LOGIN's two challenges.
    import base64

    ir = base64.b64encode(b"\0" + user + b"\0" + PASSWORD.encode()).decode()
    assert wire.command(f"AUTHENTICATE PLAIN {ir}").ok
    wire.close()


def test_wrong_password_is_authenticationfailed(site: Site) -> None:
    address = site.account()
    wire = site.wire()
    reply = wire.command(f'LOGIN "{address}" "wrong"')
    assert reply.status == "NO" and b"[AUTHENTICATIONFAILED]" in reply.text
    assert wire.command(f'LOGIN "{address}" "{PASSWORD}"').ok
    wire.close()


def test_commands_in_wrong_state_and_unknown_commands_are_bad(site: Site) -> None:
    wire = site.wire()
    assert wire.command("SELECT INBOX").status == "BAD"
    assert wire.command("FROBNICATE").status == "BAD"
    wire.close()
    wire = site.wire(site.account())
    assert wire.command("FETCH 1 FLAGS").status == "BAD"  # nothing selected
    assert wire.command("LOGIN a b").status == "BAD"  # already authenticated
    wire.close()


# --- selecting -----------------------------------------------------------------------------------


def test_select_reports_the_mailbox(site: Site) -> None:
    address = site.account([simple("one"), simple("two")])
    wire = site.wire(address)
    reply = wire.command("SELECT INBOX")
    assert reply.ok and b"[READ-WRITE]" in reply.text
    text = str(reply)
    assert "* 2 EXISTS" in text and "* 2 RECENT" in text
    assert re.search(r"\* OK \[UIDVALIDITY \d+\]", text)
    assert "[UIDNEXT 3]" in text and "[UNSEEN 1]" in text and "[HIGHESTMODSEQ " in text
    assert "\\*" in text  # PERMANENTFLAGS allow new keywords
    # \Recent belongs to the first session only (RFC 3501 §2.3.2).
    other = site.wire(address)
    assert "* 0 RECENT" in str(other.command("SELECT INBOX"))
    examined = other.command("EXAMINE INBOX")
    assert b"[READ-ONLY]" in examined.text
    wire.close()
    other.close()


def test_select_missing_mailbox(site: Site) -> None:
    wire = site.wire(site.account())
    reply = wire.command("SELECT Nowhere")
    assert reply.status == "NO" and b"[NONEXISTENT]" in reply.text
    wire.close()


# --- FETCH ---------------------------------------------------------------------------------------


def test_fetch_items_and_seen_flag(site: Site) -> None:
    address = site.account([simple("one", "Line one\r\nLine two\r\n")])
    client = site.client(address)
    client.select("INBOX")
    typ, data = client.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE UID)")
    assert typ == "OK"
    line = data[0]
    assert b"FLAGS (\\Recent)" in line and b"UID 1" in line
    assert b'"one"' in line and b'(("Ann Sender" NIL "a" "sender.example"))' in line
    typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: one\r\n\r\n"
    typ, data = client.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]  # PEEK left it unseen
    typ, data = client.fetch("1", "(BODY[TEXT]<5.3>)")
    assert data[0][0].endswith(b"BODY[TEXT]<5> {3}") and data[0][1] == b"one"
    assert b"\\Seen" in data[0][0] + data[1]  # BODY[...] set \Seen and says so
    typ, data = client.fetch("1", "(RFC822)")
    assert data[0][1] == simple_bytes_of(site, address)
    client.logout()


def simple_bytes_of(site: Site, address: str) -> bytes:
    from helpers import stored_messages

    return asyncio.run(stored_messages(site.db_url, address))[0]


def test_bodystructure_of_nested_multipart(site: Site) -> None:
    raw = multipart()
    address = site.account([raw])
    wire = site.wire(address)
    wire.command("SELECT INBOX")
    reply = wire.command("FETCH 1 (BODYSTRUCTURE ENVELOPE)")
    line = reply.untagged[0]
    assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8")' in line
    assert b'"ALTERNATIVE"' in line and b'"MIXED"' in line
    assert b'"MESSAGE" "RFC822"' in line
    assert b'"=?utf-8?' in line.lower() or b"=?UTF-8?" in line  # non-ASCII file name encoded
    # Sections of the attached message, and the MIME header of a part.
    reply = wire.command(
        "FETCH 1 (BODY.PEEK[2.HEADER.FIELDS (SUBJECT)] BODY.PEEK[1.2] BODY.PEEK[3.MIME])"
    )
    text = reply.untagged[0]
    assert b"Subject: Inner" in text
    assert b"<p>html part</p>" in text
    assert b"Content-Type: application/octet-stream" in text
    wire.close()


def test_fetch_of_8bit_message_is_byte_exact(site: Site) -> None:
    raw = b"From: x@sender.example\r\nSubject: caf\xe9\r\n\r\nna\xefve \xff bytes\r\n"
    address = site.account([raw])
    client = site.client(address)
    client.select("INBOX")
    _typ, data = client.fetch("1", "(BODY.PEEK[])")
    assert data[0][1].endswith(raw)
    client.logout()


# --- SEARCH --------------------------------------------------------------------------------------


def test_search_keys(site: Site) -> None:
    address = site.account(
        [simple("alpha", "apples\r\n"), simple("beta", "bananas\r\n"), multipart()]
    )
    client = site.client(address)
    client.select("INBOX")
    assert client.search(None, "SUBJECT", "beta") == ("OK", [b"2"])
    assert client.search(None, "BODY", "apples") == ("OK", [b"1"])
    assert client.search(None, "FROM", "Ann") == ("OK", [b"1 2"])
    assert client.search(None, "NOT", "FROM", "Ann") == ("OK", [b"3"])
    assert client.search(None, "OR", "SUBJECT", "alpha", "SUBJECT", "beta") == ("OK", [b"1 2"])
    assert client.search(None, "SENTSINCE", "24-Nov-2026") == ("OK", [b"3"])
    assert client.search(None, "LARGER", "1000") == ("OK", [b"3"])
    assert client.uid("SEARCH", "2:*") == ("OK", [b"2 3"])
    client.store("2", "+FLAGS", "\\Flagged")
    assert client.search(None, "FLAGGED") == ("OK", [b"2"])
    assert client.search(None, "UNFLAGGED", "RECENT") == ("OK", [b"1 3"])
    # CHARSET UTF-8 with a literal: the encoded-word subject, decoded.
    client.literal = "Grüße".encode()
    assert client.search("UTF-8", "SUBJECT") == ("OK", [b"3"])
    client.logout()


def test_esearch_return_options(site: Site) -> None:
    address = site.account([simple("a"), simple("b"), simple("c")])
    wire = site.wire(address)
    wire.command("SELECT INBOX")
    reply = wire.command("UID SEARCH RETURN (MIN MAX COUNT) ALL")
    assert reply.untagged == [b'* ESEARCH (TAG "t3") UID MIN 1 MAX 3 COUNT 3']
    reply = wire.command("SEARCH RETURN () 2:3")
    assert reply.untagged == [b'* ESEARCH (TAG "t4") ALL 2:3']
    wire.close()


# --- STORE, COPY, MOVE, EXPUNGE -------------------------------------------------------------------


def test_store_flags_and_keywords(site: Site) -> None:
    address = site.account([simple("a"), simple("b")])
    wire = site.wire(address)
    wire.command("SELECT INBOX")
    reply = wire.command("STORE 1:2 +FLAGS (\\Seen $Important)")
    assert reply.ok
    assert any(b"$Important" in line for line in reply.lines(b"FLAGS"))  # new keyword announced
    assert len(reply.lines(b"FETCH")) == 2
    reply = wire.command("STORE 1 -FLAGS.SILENT (\\Seen)")
    assert reply.ok and not reply.lines(b"FETCH")
    reply = wire.command("UID STORE 2 FLAGS (\\Draft)")
    assert reply.untagged[-1].startswith(b"* 2 FETCH (UID 2 FLAGS (\\Draft \\Recent)")
    state = asyncio.run(mailbox_state(site.db_url, address))
    assert state.flags == {1: "$Important", 2: "\\Draft"}
    wire.close()


def test_condstore_unchangedsince(site: Site) -> None:
    address = site.account([simple("a"), simple("b")])
    wire = site.wire(address)
    assert b"CONDSTORE" in wire.command("ENABLE CONDSTORE").untagged[0]
    wire.command("SELECT INBOX")
    reply = wire.command("FETCH 1:2 (MODSEQ)")
    modseqs = [int(re.search(rb"MODSEQ \((\d+)\)", x).group(1)) for x in reply.untagged]  # type: ignore[union-attr]
    reply = wire.command(f"STORE 1 (UNCHANGEDSINCE {modseqs[0]}) +FLAGS (\\Flagged)")
    assert reply.ok and b"MODIFIED" not in reply.text
    reply = wire.command(f"STORE 1 (UNCHANGEDSINCE {modseqs[0]}) +FLAGS (\\Seen)")
    assert b"[MODIFIED 1]" in reply.text
    reply = wire.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {modseqs[1]})")
    assert len(reply.untagged) == 1 and b"MODSEQ" in reply.untagged[0]
    wire.close()


def test_copy_move_and_expunge(site: Site) -> None:
    address = site.account([simple("a"), simple("b"), simple("c")])
    wire = site.wire(address)
    wire.command("SELECT INBOX")
    reply = wire.command("COPY 1:2 Archive")
    assert re.search(rb"\[COPYUID \d+ 1:2 1:2\]", reply.text)
    reply = wire.command("MOVE 1 Trash")
    assert b"[COPYUID" in reply.untagged[0] and reply.untagged[1] == b"* 1 EXPUNGE"
    reply = wire.command("COPY 1 Nowhere")
    assert b"[TRYCREATE]" in reply.text
    wire.command("STORE 2 +FLAGS.SILENT (\\Deleted)")
    reply = wire.command("EXPUNGE")
    assert reply.untagged == [b"* 2 EXPUNGE"]
    assert asyncio.run(mailbox_state(site.db_url, address)).uids == [2]
    assert asyncio.run(mailbox_state(site.db_url, address, "Archive")).uids == [1, 2]
    assert asyncio.run(mailbox_state(site.db_url, address, "Trash")).uids == [1]
    # UID EXPUNGE only takes the UIDs named.
    wire.command("SELECT Archive")
    wire.command("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    reply = wire.command("UID EXPUNGE 2")
    assert reply.untagged == [b"* 2 EXPUNGE"]
    assert wire.command("CLOSE").ok  # expunges UID 1 silently
    assert asyncio.run(mailbox_state(site.db_url, address, "Archive")).uids == []
    wire.close()


# --- APPEND and mailboxes ------------------------------------------------------------------------


def test_append_with_flags_date_and_literal_plus(site: Site) -> None:
    address = site.account()
    wire = site.wire(address)
    message = simple("appended")
    reply = wire.command('APPEND Drafts (\\Draft \\Seen) "05-Jan-2026 09:30:00 +0200" \x00',
                         literals=[message])  # fmt: skip
    assert reply.ok and re.search(rb"\[APPENDUID \d+ 1\]", reply.text)
    wire.send(b"x APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
    assert wire.read_until("x").ok
    reply = wire.command("APPEND Nowhere \x00", literals=[message])
    assert b"[TRYCREATE]" in reply.text
    wire.command("SELECT Drafts")
    reply = wire.command("FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])")
    # The same instant, kept in UTC.
    assert b'INTERNALDATE " 5-Jan-2026 07:30:00 +0000"' in reply.untagged[0]
    assert b"\\Draft" in reply.untagged[0] and message in reply.untagged[0]
    wire.close()


def test_mailbox_management_and_list(site: Site) -> None:
    address = site.account([simple("keep me")])
    client = site.client(address)
    assert client.create("Projects/2026/Q4")[0] == "OK"
    assert client.create("Projects")[0] == "NO"  # made as a superior already
    _, data = client.list('""', "*")
    names = [line.rsplit(b" ", 1)[1].strip(b'"') for line in data]
    assert b"Projects/2026/Q4" in names and b"Projects/2026" in names
    assert any(b"\\Sent" in line and b"Sent" in line for line in data)
    _, data = client.list('""', "%")
    assert all(b"/" not in line.rsplit(b" ", 1)[1] for line in data)
    assert client.rename("Projects", "Work")[0] == "OK"
    _, data = client.list('""', "Work/*")
    assert len(data) == 2
    assert client.delete("Work/2026/Q4")[0] == "OK"
    assert client.delete("INBOX")[0] == "NO"
    assert client.subscribe("Work")[0] == "OK"
    assert client.unsubscribe("Work")[0] == "OK"
    _, data = client.lsub('""', "Work")
    assert data == [None]
    # RENAME INBOX moves its messages and leaves it empty (RFC 3501 §6.3.5).
    assert client.rename("INBOX", "Old-Inbox")[0] == "OK"
    assert client.select("INBOX") == ("OK", [b"0"])
    assert client.select("Old-Inbox") == ("OK", [b"1"])
    _typ, data = client.status("Old-Inbox", "(MESSAGES UNSEEN UIDNEXT SIZE)")
    assert re.search(rb"MESSAGES 1 UNSEEN 1 UIDNEXT 2 SIZE \d+", data[0])
    client.logout()


def test_list_extended_and_status(site: Site) -> None:
    address = site.account()
    wire = site.wire(address)
    reply = wire.command('LIST (SPECIAL-USE) "" "*" RETURN (STATUS (MESSAGES UIDNEXT))')
    listed = reply.lines(b"LIST")
    assert {line.rsplit(b" ", 1)[1] for line in listed} == {
        b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive",
    }  # fmt: skip
    assert len(reply.lines(b"STATUS")) == 5
    reply = wire.command('LIST "" ""')
    assert reply.untagged == [b'* LIST (\\Noselect) "/" ""']
    reply = wire.command('LIST (SUBSCRIBED) "" "INBOX"')
    assert b"\\Subscribed" in reply.untagged[0]
    reply = wire.command("CREATE Receipts (USE (\\Sent))")
    assert reply.status == "NO"  # an account has one \Sent
    wire.close()


def test_namespace_id_quota_unselect(site: Site) -> None:
    wire = site.wire(site.account([simple("x")]))
    assert wire.command("NAMESPACE").untagged == [b'* NAMESPACE (("" "/")) NIL NIL']
    assert b'"name" "Tidings"' in wire.command('ID ("name" "test")').untagged[0]
    assert wire.command("GETQUOTAROOT INBOX").untagged == [b"* QUOTAROOT INBOX"]
    assert wire.command('SETQUOTA "" (STORAGE 10)').status == "NO"
    wire.command("SELECT INBOX")
    assert wire.command("UNSELECT").ok
    assert wire.command("FETCH 1 FLAGS").status == "BAD"
    wire.close()


# --- several sessions ----------------------------------------------------------------------------


def test_idle_sees_smtp_delivery_within_a_second(site: Site) -> None:
    address = site.account()
    wire = site.wire(address)
    wire.command("SELECT INBOX")
    wire.send(b"i1 IDLE\r\n")
    assert wire.response().startswith(b"+")
    started = time.monotonic()
    with smtplib.SMTP(*site.server.smtp, timeout=30) as smtp:
        smtp.sendmail("x@sender.example", [address], simple("pushed"))
    lines = []
    while b"EXISTS" not in b" ".join(lines):
        lines.append(wire.response())
    assert time.monotonic() - started < 2.0
    assert b"* 1 EXISTS" in lines
    wire.send(b"DONE\r\n")
    assert wire.read_until("i1").ok
    wire.close()


def test_two_sessions_see_each_others_changes(site: Site) -> None:
    address = site.account([simple("a"), simple("b"), simple("c")])
    one, two = site.wire(address), site.wire(address)
    one.command("SELECT INBOX")
    two.command("SELECT INBOX")
    one.command("STORE 2 +FLAGS.SILENT (\\Flagged \\Deleted)")
    reply = two.command("NOOP")
    assert reply.untagged == [b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Deleted))"]
    one.command("EXPUNGE")
    # A FETCH may not carry EXPUNGE (RFC 3501 §7.4.1): the numbers stay as they were.
    reply = two.command("FETCH 3 (UID)")
    assert reply.untagged == [b"* 3 FETCH (UID 3)"]
    reply = two.command("NOOP")
    assert reply.untagged == [b"* 2 EXPUNGE"]
    reply = two.command("FETCH 2 (UID)")
    assert reply.untagged == [b"* 2 FETCH (UID 3)"]
    one.close()
    two.close()


def test_qresync_resynchronises_after_expunges(site: Site) -> None:
    address = site.account([simple(str(i)) for i in range(5)])
    wire = site.wire(address)
    wire.command("ENABLE QRESYNC")
    reply = wire.command("SELECT INBOX")
    validity = int(re.search(r"UIDVALIDITY (\d+)", str(reply)).group(1))  # type: ignore[union-attr]
    modseq = int(re.search(r"HIGHESTMODSEQ (\d+)", str(reply)).group(1))  # type: ignore[union-attr]
    wire.command("UNSELECT")
    other = site.wire(address)
    other.command("SELECT INBOX")
    other.command("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    other.command("STORE 5 +FLAGS.SILENT (\\Seen)")
    other.command("EXPUNGE")
    other.close()
    reply = wire.command(f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:5))")
    assert reply.ok
    assert b"* VANISHED (EARLIER) 2,4" in reply.untagged
    assert any(line.startswith(b"* 3 FETCH (UID 5 FLAGS (\\Seen") for line in reply.untagged)
    # While selected, expunges arrive as VANISHED.
    other = site.wire(address)
    other.command("SELECT INBOX")
    other.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.command("EXPUNGE")
    other.close()
    assert b"* VANISHED 1" in wire.command("NOOP").untagged
    wire.close()


# --- limits and bad input ------------------------------------------------------------------------


def test_bad_input_gets_bad_and_others_are_served(site: Site) -> None:
    address = site.account([simple("x")])
    wire = site.wire(address)
    wire.command("SELECT INBOX")
    assert wire.command("FETCH 0:2 FLAGS").status == "BAD"
    assert wire.command("FETCH 5 FLAGS").status == "BAD"
    assert wire.command("FETCH 1 (FLAGS").status == "BAD"
    wire.send(b"big LOGIN {100000}\r\n")
    reply = wire.read_until("big")
    assert reply.status == "BAD" and b"TOOBIG" in reply.text
    wire.send(b"long NOOP " + b"x" * 70000 + b"\r\n")
    assert wire.read_until("long").status == "BAD"
    wire.send(b"\x00\xff garbage\r\n")
    assert wire.response().startswith(b"* BAD")
    other = site.wire(address)
    assert other.command("SELECT INBOX").ok
    assert wire.command("NOOP").ok
    wire.close()
    other.close()


def test_append_over_the_limit_is_toobig(tmp_path: Path, module_db: str) -> None:
    s = start_site(tmp_path, module_db, limits={"max_message_size": 10000})
    try:
        wire = s.wire(s.account())
        assert b"APPENDLIMIT=10000" in wire.command("CAPABILITY").untagged[0]
        wire.send(b"a APPEND INBOX {20000}\r\n")
        reply = wire.read_until("a")
        assert reply.status == "NO" and b"[TOOBIG]" in reply.text
        assert wire.command("NOOP").ok
        wire.close()
    finally:
        s.server.stop()


# --- a real client library -----------------------------------------------------------------------


def test_imapclient_session(site: Site) -> None:
    address = site.account([simple("one"), multipart()])
    with IMAPClient(site.imaps[0], port=site.imaps[1], ssl_context=site.tls, timeout=30) as c:
        c.login(address, PASSWORD)
        assert c.has_capability("MOVE") and c.has_capability("QRESYNC")
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 2
        found = c.search(["SUBJECT", "Grüße"], charset="UTF-8")
        assert found == [2]
        data = c.fetch([1, 2], ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE"])
        assert data[1][b"ENVELOPE"].subject == b"one"
        assert data[2][b"BODYSTRUCTURE"].is_multipart
        c.add_flags([1], [b"\\Answered"])
        assert b"\\Answered" in c.get_flags([1])[1]
        c.move([1], "Archive")
        assert c.select_folder("Archive")[b"EXISTS"] == 1
        folders = {name for _, _, name in c.list_folders()}
        assert {"INBOX", "Sent", "Archive"} <= folders


# --- timers, login limits, several processes ---------------------------------------------------


def test_autologout_before_login(tmp_path: Path, module_db: str) -> None:
    # limits.imap_timeout is 30 minutes by default; before login a tenth of it applies.
    s = start_site(tmp_path, module_db, limits={"imap_timeout": 3})
    try:
        wire = Wire(s.imaps, s.tls)
        started = time.monotonic()
        assert wire.response().startswith(b"* BYE Autologout")
        assert time.monotonic() - started < 2.5
        # A logged-in session is given the whole timeout, IDLE included.
        wire = s.wire(s.account())
        wire.command("SELECT INBOX")
        time.sleep(1)
        assert wire.command("NOOP").ok
        wire.close()
    finally:
        s.server.stop()


def test_failed_logins_are_limited_per_account(site: Site) -> None:
    address = site.account()
    wire = site.wire()
    for _ in range(5):  # limits.auth_max_failures_per_account in this module
        assert b"[AUTHENTICATIONFAILED]" in wire.command(f'LOGIN "{address}" "guess"').text
    reply = wire.command(f'LOGIN "{address}" "{PASSWORD}"')
    assert reply.status == "NO" and b"[UNAVAILABLE]" in reply.text
    assert f"imap 127.0.0.1: authentication failed for '{address}'" in site.server.log()
    wire.close()


def test_idle_on_one_process_sees_mail_delivered_by_another(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Two Tidings processes on one PostgreSQL: LISTEN/NOTIFY carries the change."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with postgres.database() as url:
        first = start_site(tmp_path / "a", url)
        second = start_site(tmp_path / "b", url)
        try:
            address = first.account([simple("before")])
            wire = first.wire(address)
            wire.command("SELECT INBOX")
            wire.send(b"i IDLE\r\n")
            assert wire.response().startswith(b"+")
            with smtplib.SMTP(*second.server.smtp, timeout=30) as smtp:
                smtp.sendmail("x@sender.example", [address], simple("from the other process"))
            started = time.monotonic()
            lines: list[bytes] = []
            while not any(b"EXISTS" in line for line in lines):
                lines.append(wire.response())
            assert time.monotonic() - started < 2.0
            assert b"* 2 EXISTS" in lines
            # Flags changed through the second process reach the first one's IDLE too.
            other = second.wire(address)
            other.command("SELECT INBOX")
            other.command("STORE 1 +FLAGS.SILENT (\\Flagged)")
            line = wire.response()
            while b"FETCH" not in line:
                line = wire.response()
            assert line == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"
            wire.send(b"DONE\r\n")
            assert wire.read_until("i").ok
            wire.close()
            other.close()
        finally:
            first.server.stop()
            second.server.stop()


def test_insecure_auth_when_the_admin_allows_it(tmp_path: Path, module_db: str) -> None:
    s = start_site(tmp_path, module_db, imap={"allow_insecure_auth": True})
    try:
        address = s.account([simple("x")])
        wire = Wire(s.imap)
        assert b"LOGINDISABLED" not in wire.greeting
        assert b"AUTH=PLAIN" in wire.greeting and b"STARTTLS" in wire.greeting
        assert wire.command(f'LOGIN "{address}" "{PASSWORD}"').ok
        assert b"* 1 EXISTS" in wire.command("SELECT INBOX").untagged
        wire.close()
    finally:
        s.server.stop()
