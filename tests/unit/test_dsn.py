"""DSN composition (RFC 3464, RFC 6522): structure, per-recipient fields, the returned original,
and that nothing from outside can add a header or a status field."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.mailauth.results import split_header
from tidings.queue.dsn import FailedRecipient, build_dsn

ARRIVAL = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
NOW = datetime(2024, 3, 6, 9, 30, tzinfo=UTC)
HEADER = (
    b"Received: from client.example (client.example [192.0.2.7])\r\n"
    b"\tby mx.tidings.test with ESMTPS id abc; Fri, 1 Mar 2024 09:30:00 +0000\r\n"
    b"From: Alice <alice@tidings.test>\r\n"
    b"To: bob@remote.example, carol@remote.example\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <q1.2024@tidings.test>\r\n"
    b"Date: Fri, 1 Mar 2024 09:29:58 +0000\r\n"
)
ORIGINAL = HEADER + b"\r\nThe figures are attached.\r\n"
BOB = FailedRecipient(
    address="bob@remote.example",
    status="5.1.1",
    diagnostic="550 5.1.1 <bob@remote.example>: no such user",
    remote_mta="mx1.remote.example",
    last_attempt=NOW - timedelta(minutes=1),
)
CAROL = FailedRecipient(
    address="carol@remote.example",
    status="4.4.7",
    diagnostic="451 4.3.0 try again later",
    remote_mta="mx2.remote.example",
)
DAVE = FailedRecipient(
    address="dave@other.example", status="5.4.4", diagnostic=None, remote_mta=None
)


def dsn(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "mx.tidings.test",
        "sender": "alice@tidings.test",
        "recipients": [BOB, CAROL, DAVE],
        "original": ORIGINAL,
        "arrival": ARRIVAL,
        "queue_id": "Q7F3A",
        "now": NOW,
    }
    args.update(overrides)
    return build_dsn(**args)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(raw: bytes) -> list[EmailMessage]:
    report = parse(raw)
    payload = report.get_payload()
    assert isinstance(payload, list)
    return payload


def status_groups(raw: bytes) -> list[EmailMessage]:
    """The per-message group, then one group per recipient, as Python's parser splits them."""
    groups = parts(raw)[1].get_payload()
    assert isinstance(groups, list)
    return groups


def assert_seven_bit(raw: bytes) -> None:
    assert raw.isascii()
    assert b"\0" not in raw
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n", raw), "a bare CR or LF"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


# --- the report's structure (RFC 6522, RFC 3464 §2) ---------------------------------------


def test_top_level_header() -> None:
    message = parse(dsn())
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.tidings.test"
    assert message["To"].addresses[0].addr_spec == "alice@tidings.test"
    assert "Undelivered" in message["Subject"]
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert re.fullmatch(r"<[0-9a-f]+@mx\.tidings\.test>", message["Message-ID"])
    assert message["Auto-Submitted"] == "auto-replied"  # RFC 3834 §5
    assert message["MIME-Version"] == "1.0"
    assert message["In-Reply-To"] == "<q1.2024@tidings.test>"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert not message.defects


def test_three_parts_in_order() -> None:
    explanation, status, returned = parts(dsn())
    assert explanation.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() == "text/rfc822-headers"


def test_output_is_seven_bit_with_crlf() -> None:
    assert_seven_bit(dsn())
    assert_seven_bit(dsn(return_content=True))


def test_message_ids_differ() -> None:
    assert parse(dsn())["Message-ID"] != parse(dsn())["Message-ID"]


def test_delay_warning() -> None:
    until = NOW + timedelta(days=4)
    delayed = FailedRecipient(
        "bob@remote.example",
        "4.4.1",
        "451 4.4.1 no answer",
        "mx1.remote.example",
        action="delayed",
        will_retry_until=until,
    )
    raw = dsn(recipients=[delayed])
    assert "Delayed" in parse(raw)["Subject"]
    group = status_groups(raw)[1]
    assert group["Action"] == "delayed"
    assert parsedate_to_datetime(group["Will-Retry-Until"]) == until
    text = parts(raw)[0].get_content()
    assert "still trying" in text
    assert "do not need to send it again" in text


def test_failed_and_delayed_together_is_a_failure_report() -> None:
    delayed = FailedRecipient("x@remote.example", "4.4.1", None, None, action="delayed")
    raw = dsn(recipients=[BOB, delayed])
    assert "Undelivered" in parse(raw)["Subject"]
    assert [g["Action"] for g in status_groups(raw)[1:]] == ["failed", "delayed"]


# --- message/delivery-status fields (RFC 3464 §2.2, §2.3) ---------------------------------


def test_per_message_fields() -> None:
    per_message = status_groups(dsn())[0]
    assert per_message["Reporting-MTA"] == "dns; mx.tidings.test"
    assert parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL


def test_per_recipient_fields() -> None:
    bob, carol, dave = status_groups(dsn())[1:]
    assert bob["Final-Recipient"] == "rfc822; bob@remote.example"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.remote.example"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.example>: no such user"
    assert parsedate_to_datetime(bob["Last-Attempt-Date"]) == BOB.last_attempt

    assert carol["Final-Recipient"] == "rfc822; carol@remote.example"
    assert carol["Status"] == "4.4.7"
    assert carol["Remote-MTA"] == "dns; mx2.remote.example"
    assert carol["Last-Attempt-Date"] is None

    # No remote MTA answered: no Remote-MTA, no Diagnostic-Code.
    assert dave["Final-Recipient"] == "rfc822; dave@other.example"
    assert dave["Status"] == "5.4.4"
    assert dave["Remote-MTA"] is None
    assert dave["Diagnostic-Code"] is None
    assert dave["Will-Retry-Until"] is None


def test_status_part_is_ascii_groups_separated_by_blank_lines() -> None:
    raw = dsn()
    body = raw.split(b"Content-Type: message/delivery-status\r\n\r\n", 1)[1].split(b"\r\n--")[0]
    groups = body.split(b"\r\n\r\n")
    assert len(groups) == 4
    assert groups[0].startswith(b"Reporting-MTA: dns; mx.tidings.test\r\n")
    assert [g.split(b"\r\n")[0] for g in groups[1:]] == [
        b"Final-Recipient: rfc822; bob@remote.example",
        b"Final-Recipient: rfc822; carol@remote.example",
        b"Final-Recipient: rfc822; dave@other.example",
    ]


def test_multiline_reply_becomes_one_folded_field() -> None:
    reply = (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
        "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
        "550 5.1.1 unnecessary spaces."
    )
    raw = dsn(recipients=[FailedRecipient("bob@remote.example", "5.1.1", reply, "mx")])
    field = status_groups(raw)[1]["Diagnostic-Code"]
    assert field.startswith("smtp; 550-5.1.1 The email account")
    assert field.endswith("550 5.1.1 unnecessary spaces.")
    assert "\r" not in field
    assert "\n" not in field
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78 + 10


def test_long_diagnostic_is_cut() -> None:
    raw = dsn(recipients=[FailedRecipient("b@r.example", "5.0.0", "550 " + "x" * 5000, "mx")])
    assert_seven_bit(raw)
    assert len(status_groups(raw)[1]["Diagnostic-Code"]) < 1000


def test_non_ascii_recipient_is_xtext() -> None:
    """RFC 6533 §3: utf-8-addr-xtext keeps message/delivery-status ASCII."""
    raw = dsn(recipients=[FailedRecipient("jörg+x@bücher.example", "5.1.1", None, None)])
    assert_seven_bit(raw)
    final = status_groups(raw)[1]["Final-Recipient"]
    assert final == "utf-8; j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.example"
    # The explanation, for a person, shows the address as it is.
    assert "<jörg+x@bücher.example>" in parts(raw)[0].get_content()


def test_invalid_status_and_action_are_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        dsn(recipients=[FailedRecipient("b@r.example", "550", None, None)])
    with pytest.raises(ValueError, match="action"):
        dsn(recipients=[FailedRecipient("b@r.example", "2.0.0", None, None, action="delivered")])
    with pytest.raises(ValueError, match="recipient"):
        dsn(recipients=[])


def test_naive_datetimes_are_utc() -> None:
    raw = dsn(arrival=ARRIVAL.replace(tzinfo=None), now=NOW.replace(tzinfo=None))
    assert parsedate_to_datetime(status_groups(raw)[0]["Arrival-Date"]) == ARRIVAL
    assert parsedate_to_datetime(parse(raw)["Date"]) == NOW


# --- the explanation (RFC 6522's first part) ----------------------------------------------


def test_explanation_names_every_recipient_and_reply() -> None:
    text = parts(dsn())[0].get_content()
    assert "mx.tidings.test" in text
    assert "Q7F3A" in text
    for r in (BOB, CAROL, DAVE):
        assert f"<{r.address}>" in text
    assert "mx1.remote.example" in text
    assert "550 5.1.1 <bob@remote.example>: no such user" in text
    assert "451 4.3.0 try again later" in text
    assert "in time" in text  # 4.4.7: expired in the queue


def test_explanation_without_queue_id() -> None:
    assert "queue id" not in parts(dsn(queue_id=None))[0].get_content()


# --- the returned original (RFC 3464 §2, RFC 6522) ----------------------------------------


def test_original_header_byte_for_byte() -> None:
    raw = dsn()
    returned = parts(raw)[2]
    assert returned.get_payload(decode=True) == HEADER
    # And in the raw message exactly, between the part's header and the closing delimiter.
    assert b"Content-Type: text/rfc822-headers\r\n\r\n" + HEADER + b"\r\n--" in raw
    assert b"The figures are attached." not in raw


def test_return_content_gives_the_whole_message() -> None:
    raw = dsn(return_content=True)
    returned = parts(raw)[2]
    assert returned.get_content_type() == "message/rfc822"
    assert b"Content-Type: message/rfc822\r\n\r\n" + ORIGINAL + b"\r\n--" in raw
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "Quarterly figures"
    assert inner.get_content().rstrip() == "The figures are attached."


def test_eight_bit_headers_are_quoted_printable_and_exact() -> None:
    header = "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße 😀\r\n".encode()
    raw = dsn(original=header + b"\r\nHallo\r\n", sender="jörg@bücher.example")
    # The only 8-bit text is in To, which names the sender's own SMTPUTF8 address.
    assert "\r\nTo: <jörg@bücher.example>\r\n".encode() in raw
    assert_seven_bit(raw.replace("jörg@bücher.example".encode(), b"x@y"))
    returned = parts(raw)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Transfer-Encoding"] == "quoted-printable"
    assert returned.get_payload(decode=True) == header


def test_broken_headers_survive_exactly() -> None:
    """Bare CR, bare LF, NUL, Latin-1 (not UTF-8) and an over-long line: still 7-bit out,
    exact bytes back."""
    header = (
        b"X-A: bare\rcr\r\nX-B: bare\nlf\r\nX-C: nul\0\xe9t\xe9\r\nX-D: " + b"y" * 1200 + b"\r\n"
    )
    raw = dsn(original=header + b"\r\nbody\r\n")
    assert_seven_bit(raw)
    returned = parts(raw)[2]
    assert returned.get_payload(decode=True) == header
    assert returned.get_param("charset") is None  # not UTF-8: no charset claimed


def test_return_content_eight_bit_is_message_global_base64() -> None:
    original = "Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nÄpfel\r\n".encode()
    raw = dsn(original=original, return_content=True)
    assert_seven_bit(raw)
    section = raw.split(
        b"Content-Type: message/global\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    assert len(section) == 2
    encoded = section[1].split(b"\r\n--")[0]
    assert base64.b64decode(encoded) == original


def test_message_without_body_or_blank_line() -> None:
    raw = dsn(original=b"Subject: only a header\r\n")
    assert parts(raw)[2].get_payload(decode=True) == b"Subject: only a header\r\n"
    raw = dsn(original=b"")
    assert parts(raw)[2].get_payload(decode=True) in (b"", None)
    assert parse(raw)["In-Reply-To"] is None


# --- nothing from outside adds a field ----------------------------------------------------


INJECTIONS = [
    "550 no such user\r\nBcc: victim@example.com",
    "550 no\r\n\r\nFinal-Recipient: rfc822; forged@example.com",
    "550 x\nStatus: 2.0.0",
    "550 x\rAction: delivered",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_diagnostic_cannot_inject(payload: str) -> None:
    raw = dsn(recipients=[FailedRecipient("bob@remote.example", "5.1.1", payload, "mx\r\nX: y")])
    assert_no_injection(raw)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_addresses_cannot_inject(payload: str) -> None:
    address = "bob@remote.example" + payload.removeprefix("550 ")
    raw = dsn(
        recipients=[FailedRecipient(address, "5.1.1", None, None)],
        sender="alice@tidings.test\r\nBcc: victim@example.com",
        queue_id="Q1\r\nBcc: victim@example.com",
        reporting_mta="mx.tidings.test\r\nBcc: victim@example.com",
    )
    assert_no_injection(raw)


def assert_no_injection(raw: bytes) -> None:
    message = parse(raw)
    assert message["Bcc"] is None
    assert message["X"] is None
    groups = status_groups(raw)
    assert len(groups) == 2  # one per-message group, one recipient: nothing forged
    recipient = groups[1]
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1"
    assert recipient.get_all("Final-Recipient") == [recipient["Final-Recipient"]]
    assert recipient["Final-Recipient"] != "rfc822; forged@example.com"


@given(
    st.text(min_size=1, max_size=60),
    st.text(max_size=200),
    st.binary(max_size=300),
)
def test_any_input_gives_a_parseable_seven_bit_report(
    address: str, diagnostic: str, header: bytes
) -> None:
    raw = dsn(
        recipients=[FailedRecipient(address, "5.1.1", diagnostic, "mx.remote.example")],
        original=header,
    )
    assert_seven_bit(raw)
    assert len(status_groups(raw)) == 2
    assert (parts(raw)[2].get_payload(decode=True) or b"") == split_header(header)[0]


# --- never a bounce of a bounce (RFC 5321 §6.1, §4.5.5) -----------------------------------


@pytest.mark.parametrize("sender", ["", "<>", "  ", "\r\n"])
def test_null_sender_is_refused(sender: str) -> None:
    with pytest.raises(ValueError, match="null sender"):
        dsn(sender=sender)
