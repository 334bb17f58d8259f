"""Delivery status notifications: the bounce the queue sends a sender (RFC 3464, RFC 6522).

Pure: facts in, message bytes out. :func:`build_dsn` composes a ``multipart/report`` with three
parts — a plain-English explanation, the machine-readable ``message/delivery-status``, and the
original message's header section (or the whole message) — for recipients whose delivery
failed for good or is delayed.

The output is always 7-bit with CRLF line endings, so it can be relayed to any MX. The original
is returned as it is (``text/rfc822-headers`` or ``message/rfc822``) when it is ASCII with CRLF
line endings and lines of at most 998 octets. When it is not — 8-bit headers from an SMTPUTF8
sender (RFC 6532), bare CR or LF, NUL — the header section stays ``text/rfc822-headers`` but in
quoted-printable, which RFC 6522 allows for headers that need it, and the whole message becomes
``message/global`` in base64 (RFC 6532 §3.7); either way decoding gives back the exact bytes.
``message/global-headers`` (RFC 6533 §6.3) is not used: parsers that do not know it, Python's
email among them, take it for an embedded message and cannot decode it. Non-ASCII recipient
addresses are written in RFC 6533 §3's ``utf-8-addr-xtext`` form so the status part stays ASCII.
The one 8-bit line possible is To, when the sender's own address is non-ASCII: such an address
only exists in SMTPUTF8 mail, so it is written as UTF-8 (RFC 6532 §3.2).

Every value that comes from outside (addresses, remote replies, host names) is reduced to one
line before it is written, so a reply with CR or LF in it cannot add a header field or a status
field.
"""

from __future__ import annotations

import base64
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from tidings.mailauth.results import split_header

ACTIONS = ("failed", "delayed")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")  # RFC 3463 §2
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # RFC 5322 §3.6.4, no spaces or brackets
MAX_DIAGNOSTIC = 900  # keeps every folded line far below RFC 5322 §2.1.1's 998
FOLD_WIDTH = 78


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the DSN reports on (one RFC 3464 §2.3 per-recipient group)."""

    address: str  # the original recipient, as given at RCPT TO
    status: str  # RFC 3463 code: "5.1.1", or "4.4.7" for a message that expired in the queue
    diagnostic: str | None  # the remote reply, e.g. "550 5.1.1 no such user"
    remote_mta: str | None  # host name of the MX that answered, if one did
    action: str = "failed"  # "failed" or "delayed" (RFC 3464 §2.3.3)
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None  # only for "delayed" (RFC 3464 §2.3.9)


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[FailedRecipient],
    original: bytes,
    arrival: datetime,
    queue_id: str | None = None,
    now: datetime | None = None,
    return_content: bool = False,
) -> bytes:
    """The complete DSN message to ``sender`` about ``recipients`` of ``original``.

    The caller sends it with the null reverse-path, ``MAIL FROM:<>`` (RFC 5321 §6.1, §4.5.5),
    so that it is never bounced in turn; and for the same reason there is no DSN to the null
    sender: asking for one raises ValueError. Naive datetimes are taken as UTC (SQLite hands
    them back so).
    """
    to = _one_line(sender).strip()
    if not to or to == "<>":
        raise ValueError("no DSN to the null sender (RFC 5321 §6.1): a bounce is not bounced")
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    for r in recipients:
        if r.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {r.action!r}")
        if not _STATUS.fullmatch(r.status):
            raise ValueError(f"status must be an RFC 3463 code such as 5.1.1, got {r.status!r}")
    mta = _host(reporting_mta)
    if not mta:
        raise ValueError("reporting_mta must be a host name")
    now = _aware(now or datetime.now(UTC))
    failed = any(r.action == "failed" for r in recipients)
    subject = (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )

    explanation = _text_part(_explanation(mta, recipients, queue_id, failed, return_content))
    status = _status_part(mta, arrival, recipients)
    returned = _original_part(original, return_content)
    boundary = _boundary(explanation + status + returned)

    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(12)}@{mta}>",
    ]
    original_id = _message_id(original)
    if original_id:  # RFC 5322 §3.6.4: lets the sender's mail reader thread the bounce
        header += [f"In-Reply-To: {original_id}", f"References: {original_id}"]
    header += [
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: tells responders not to answer it
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="{boundary}"',
        "Content-Transfer-Encoding: 7bit",
    ]
    delimiter = b"\r\n--" + boundary.encode() + b"\r\n"
    return b"".join(
        [
            "\r\n".join(header).encode(),
            b"\r\n\r\nThis is a MIME-formatted delivery status notification.\r\n",
            delimiter[2:],
            explanation,
            delimiter,
            status,
            delimiter,
            returned,
            b"\r\n--" + boundary.encode() + b"--\r\n",
        ]
    )


def _explanation(
    mta: str,
    recipients: Sequence[FailedRecipient],
    queue_id: str | None,
    failed: bool,
    whole: bool,
) -> str:
    """The human-readable part (RFC 6522's first part): what happened, per recipient."""
    paragraphs = [f"This is the mail system at {mta}."]
    if failed:
        paragraphs.append(
            "Your message could not be delivered to one or more recipients. The details are "
            f"below; {'your message is' if whole else 'the headers of your message are'} "
            "attached."
        )
    else:
        paragraphs.append(
            "Your message has not been delivered yet to one or more recipients. The mail "
            "system will keep trying; you do not need to send it again."
        )
    if queue_id:
        paragraphs.append(f"Its queue id at {mta} was {_one_line(queue_id).strip()}.")
    blocks = ["\r\n\r\n".join("\r\n".join(textwrap.wrap(p, FOLD_WIDTH - 6)) for p in paragraphs)]
    for r in recipients:
        lines = [f"<{_one_line(r.address).strip()}>: {_what_happened(r)}"]
        if r.diagnostic:
            server = _host(r.remote_mta) if r.remote_mta else ""
            lines.append(f"    {'The server ' + server if server else 'The server'} answered:")
            lines += textwrap.wrap(
                _diagnostic(r.diagnostic),
                FOLD_WIDTH - 6,
                initial_indent="    ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        elif r.remote_mta:
            lines.append(f"    Last tried at {_host(r.remote_mta)}.")
        if r.action == "delayed" and r.will_retry_until:
            lines.append(f"    Retrying until {format_datetime(_aware(r.will_retry_until))}.")
        blocks.append("\r\n".join(lines))
    return "\r\n\r\n".join(blocks) + "\r\n"


def _what_happened(r: FailedRecipient) -> str:
    if r.action == "delayed":
        return "delivery is delayed; the mail system is still trying."
    if r.status.endswith(".4.7"):
        return "the message could not be delivered in time; the mail system gave up."
    if r.status.startswith("5."):
        return "delivery failed permanently."
    return "delivery failed."


def _text_part(text: str) -> bytes:
    """A text/plain part: 7bit when ASCII, else UTF-8 in quoted-printable (RFC 2045 §6.7)."""
    if text.isascii():
        head = "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit"
        return f"{head}\r\n\r\n{text}".encode()
    head = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
    return f"{head}\r\n\r\n".encode() + _quoted_printable(text.encode())


def _status_part(mta: str, arrival: datetime, recipients: Sequence[FailedRecipient]) -> bytes:
    """The message/delivery-status part: per-message fields, then one group per recipient
    (RFC 3464 §2.2, §2.3), each group preceded by an empty line (§2.1)."""
    groups = [[f"Reporting-MTA: dns; {mta}", f"Arrival-Date: {format_datetime(_aware(arrival))}"]]
    for r in recipients:
        fields = [
            f"Final-Recipient: {_address_type(r.address)}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta and _host(r.remote_mta):
            fields.append(f"Remote-MTA: dns; {_host(r.remote_mta)}")
        if r.diagnostic and _diagnostic(r.diagnostic):
            fields.append(_fold(f"Diagnostic-Code: smtp; {_diagnostic(r.diagnostic)}"))
        if r.last_attempt:
            fields.append(f"Last-Attempt-Date: {format_datetime(_aware(r.last_attempt))}")
        if r.action == "delayed" and r.will_retry_until:
            fields.append(f"Will-Retry-Until: {format_datetime(_aware(r.will_retry_until))}")
        groups.append(fields)
    body = "\r\n\r\n".join("\r\n".join(g) for g in groups) + "\r\n"
    return ("Content-Type: message/delivery-status\r\n\r\n" + body).encode("ascii")


def _original_part(original: bytes, whole: bool) -> bytes:
    """The returned original (RFC 3464 §2, RFC 6522's third part): its header section, or
    the whole message when ``whole``; as it is when 7-bit clean, else encoded so that it is
    and decoding gives the exact bytes back."""
    if whole:
        if _seven_bit_clean(original):
            return b"Content-Type: message/rfc822\r\n\r\n" + original
        # message/rfc822 may not be encoded (RFC 2046 §5.2.1); message/global may (RFC 6532 §3.7)
        encoded = base64.encodebytes(original).replace(b"\n", b"\r\n")
        head = "Content-Type: message/global\r\nContent-Transfer-Encoding: base64"
        return f"{head}\r\n\r\n".encode() + encoded
    header = split_header(original)[0]
    if _seven_bit_clean(header):
        return b"Content-Type: text/rfc822-headers\r\n\r\n" + header
    # RFC 6522 lets headers that are not 7-bit be sent as quoted-printable. Not
    # message/global-headers (RFC 6533 §6.3): parsers that do not know it (Python's email
    # among them) take any message/* for an embedded message and cannot decode it.
    try:
        header.decode()
        charset = "; charset=utf-8"  # RFC 6532 §3.2: non-ASCII header text is UTF-8
    except UnicodeDecodeError:
        charset = ""
    head = (
        f"Content-Type: text/rfc822-headers{charset}\r\nContent-Transfer-Encoding: quoted-printable"
    )
    return f"{head}\r\n\r\n".encode() + _quoted_printable(header)


def _seven_bit_clean(data: bytes) -> bool:
    """RFC 2045 §2.7 7bit data: ASCII, no NUL, CRLF only, lines of at most 998 octets."""
    if not data.isascii() or b"\0" in data:
        return False
    if re.search(rb"\r(?!\n)|(?<!\r)\n", data):
        return False
    return all(len(line) <= 998 for line in data.split(b"\r\n"))


def _quoted_printable(data: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable that decodes to exactly ``data``: CRLF is the only line
    break, a bare CR or LF is encoded like any other control, lines stay under 77 octets."""
    lines = []
    for line in data.split(b"\r\n"):
        out, current = [], ""
        for i, byte in enumerate(line):
            last = i == len(line) - 1
            plain = (33 <= byte <= 126 and byte != 61) or (byte in (9, 32) and not last)
            token = chr(byte) if plain else f"={byte:02X}"
            if len(current) + len(token) > 75:  # room for the soft break's "=" (rule 5)
                out.append(current + "=")
                current = ""
            current += token
        out.append(current)
        lines.append("\r\n".join(out))
    return "\r\n".join(lines).encode("ascii")


def _address_type(address: str) -> str:
    """RFC 3464 §2.3.2 address: ``rfc822; addr``, or for a non-ASCII address RFC 6533 §3's
    ``utf-8; `` with every character outside QCHAR written as ``\\x{HEX}``."""
    address = _one_line(address).strip()
    if address.isascii():
        return f"rfc822; {address}"
    return "utf-8; " + "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )


def _diagnostic(reply: str) -> str:
    """An SMTP reply as one ASCII line (RFC 3464 §2.3.6 is ``*text``): multi-line replies
    joined, other characters kept readable as ``\\x{HEX}``, long replies cut."""
    line = " ".join(_one_line(reply).split())
    line = "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in line)
    return line if len(line) <= MAX_DIAGNOSTIC else line[: MAX_DIAGNOSTIC - 3] + "..."


def _fold(field: str) -> str:
    """Fold a field at spaces to about 78 columns (RFC 5322 §2.2.3)."""
    lines: list[str] = []
    current = ""
    for word in field.split(" "):
        if current and len(current) + 1 + len(word) > FOLD_WIDTH:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\r\n ".join(lines)


def _one_line(value: str) -> str:
    """Control characters (CR and LF among them) become spaces: the value cannot start a new
    header or status field."""
    return _CONTROLS.sub(" ", value)


def _host(name: str) -> str:
    """A host name for a ``dns;`` field or the From domain: one word, ASCII (IDNA, RFC 5890)."""
    host = "".join(_one_line(name).split()).rstrip(".")
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return "".join(c if c.isascii() else "?" for c in host)


def _message_id(original: bytes) -> str | None:
    """The original's Message-ID when it is a plain ASCII msg-id, for In-Reply-To."""
    header = split_header(original)[0]
    m = re.search(rb"(?im)^message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^\r\n>]*>)", header)
    if m is None:
        return None
    value = m.group(1).decode("ascii", "replace")
    return value if _MESSAGE_ID.fullmatch(value) else None


def _boundary(content: bytes) -> str:
    """A boundary that occurs nowhere in the parts (RFC 2046 §5.1.1); "=_" cannot occur in
    quoted-printable or base64 text, so the first one almost always does."""
    while True:
        boundary = f"=_tidings_{secrets.token_hex(12)}"
        if boundary.encode() not in content:
            return boundary


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
