"""tidings.imap.fetch: FETCH attributes + one message → the untagged FETCH response, on the wire.

Commands are parsed from real syntax, messages analysed from real bytes, and the expected
responses written out by hand from RFC 3501 §6.4.5 / §7.4.2 (CRLF line ends throughout).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.imap.fetch import (
    FetchMessage,
    fetch_items,
    format_internaldate,
    needs_info,
    needs_raw,
)
from tidings.imap.parser import Fetch, FetchAttribute, FetchItem, parse_command
from tidings.imap.responses import Literal, fetch
from tidings.mime import analyze


def crlf(text: str) -> bytes:
    """A message written with \\n in this file, as the CRLF bytes it is on the wire."""
    return text.encode("utf-8").replace(b"\n", b"\r\n")


def lit(data: bytes) -> bytes:
    """An IMAP literal (RFC 3501 §4.3)."""
    return b"{%d}\r\n" % len(data) + data


def attrs(text: str) -> tuple[FetchAttribute, ...]:
    """The attributes of ``a FETCH 1 <text>``, as the parser gives them to the session."""
    command = parse_command(b"a FETCH 1 " + text.encode("ascii")).command
    assert isinstance(command, Fetch)
    return command.attributes


PDT = timezone(timedelta(hours=-7))
WHEN = datetime(1996, 7, 17, 2, 44, 25, tzinfo=PDT)


def message(raw: bytes, **changes: Any) -> FetchMessage:
    msg = FetchMessage(
        seq=3,
        uid=7,
        flags=("\\Seen",),
        recent=False,
        internaldate=WHEN,
        size=len(raw),
        modseq=12,
        info=analyze(raw),
        raw=raw,
    )
    return replace(msg, **changes)


def wire(text: str, msg: FetchMessage, **options: bool) -> bytes:
    return fetch(msg.seq, fetch_items(attrs(text), msg, **options))


SIMPLE = crlf(
    """From: Alice <alice@example.org>
To: bob@example.net
Subject: Hello
Date: Wed, 17 Jul 1996 02:23:25 -0700
Message-ID: <1@example.org>

Hi Bob,
See you.
"""
)
SIMPLE_HEADER, SIMPLE_TEXT = SIMPLE.split(b"\r\n\r\n", 1)
SIMPLE_HEADER += b"\r\n\r\n"

ENVELOPE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700" "Hello" (("Alice" NIL "alice" "example.org")) '
    b'(("Alice" NIL "alice" "example.org")) (("Alice" NIL "alice" "example.org")) '
    b'((NIL NIL "bob" "example.net")) NIL NIL NIL "<1@example.org>")'
)

# multipart/mixed: 1 multipart/alternative (1.1 text/plain, 1.2 text/html),
# 2 message/rfc822 (non-multipart inside, a folded field), 3 application/octet-stream.
MIXED = crlf(
    """From: a@example.org
Subject: mixed
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

preamble
--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=utf-8

plain text
--inner
Content-Type: text/html; charset=utf-8

<p>html</p>
--inner--
--outer
Content-Type: message/rfc822
Content-Disposition: attachment

From: c@example.com
Subject: inner
X-Folded: one
 two

inner body
--outer
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

AAEC
--outer--
epilogue
"""
)
INNER_HEADER = b"From: c@example.com\r\nSubject: inner\r\nX-Folded: one\r\n two\r\n\r\n"


# --- the simple items ---------------------------------------------------------------------------


def test_simple_items() -> None:
    text = "(FLAGS INTERNALDATE RFC822.SIZE UID MODSEQ ENVELOPE BODY BODYSTRUCTURE)"
    assert wire(text, message(SIMPLE)) == (
        b'* 3 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 159'
        b" UID 7 MODSEQ (12) ENVELOPE " + ENVELOPE + b' BODY ("TEXT" "PLAIN" ("CHARSET"'
        b' "US-ASCII") NIL NIL "7BIT" 19 2) BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET"'
        b' "US-ASCII") NIL NIL "7BIT" 19 2 NIL NIL NIL NIL))\r\n'
    )


def test_macros_expand_in_rfc_order() -> None:
    """RFC 3501 §6.4.5: ALL = FLAGS INTERNALDATE RFC822.SIZE ENVELOPE."""
    assert wire("ALL", message(SIMPLE)) == (
        b'* 3 FETCH (FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 159'
        b" ENVELOPE " + ENVELOPE + b")\r\n"
    )


@pytest.mark.parametrize(
    ("flags", "recent", "expected"),
    [
        ((), False, b"()"),
        ((), True, b"(\\Recent)"),
        (("\\Seen", "$Label1"), False, b"(\\Seen $Label1)"),
        (("\\Answered", "\\Seen"), True, b"(\\Answered \\Seen \\Recent)"),
    ],
)
def test_flags(flags: tuple[str, ...], recent: bool, expected: bytes) -> None:
    msg = message(SIMPLE, flags=flags, recent=recent)
    assert wire("FLAGS", msg) == b"* 3 FETCH (FLAGS " + expected + b")\r\n"


def test_large_numbers() -> None:
    msg = message(SIMPLE, uid=4294967295, modseq=9223372036854775807, size=3_000_000_000)
    assert wire("(UID MODSEQ RFC822.SIZE)", msg) == (
        b"* 3 FETCH (UID 4294967295 MODSEQ (9223372036854775807) RFC822.SIZE 3000000000)\r\n"
    )


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (WHEN, "17-Jul-1996 02:44:25 -0700"),
        (datetime(2024, 3, 5, 9, 5, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
         " 5-Mar-2024 09:05:07 +0530"),
        (datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC), "31-Dec-2023 23:59:59 +0000"),
        (datetime(2001, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
         " 1-Jan-2001 00:00:00 -0330"),
        (datetime(2020, 2, 9, 12, 0, 0, tzinfo=timezone(timedelta(hours=14))),
         " 9-Feb-2020 12:00:00 +1400"),
        (datetime(2020, 11, 10, 1, 2, 3, tzinfo=timezone(timedelta(hours=-12))),
         "10-Nov-2020 01:02:03 -1200"),
        # An offset with seconds cannot be written: the same instant in UTC.
        (datetime(1880, 6, 1, 12, 0, 0, tzinfo=timezone(timedelta(minutes=9, seconds=21))),
         " 1-Jun-1880 11:50:39 +0000"),
    ],
)  # fmt: skip
def test_internaldate(when: datetime, text: str) -> None:
    assert format_internaldate(when) == text
    msg = message(SIMPLE, internaldate=when)
    assert wire("INTERNALDATE", msg) == b'* 3 FETCH (INTERNALDATE "' + text.encode() + b'")\r\n'


def test_internaldate_needs_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone"):
        format_internaldate(datetime(2020, 1, 1))


# --- RFC822 and the body sections of a simple message -------------------------------------------


def test_rfc822_items_keep_their_names() -> None:
    """RFC 3501 §6.4.5: RFC822, RFC822.HEADER, RFC822.TEXT are BODY[], BODY.PEEK[HEADER] and
    BODY[TEXT] under their own names."""
    assert wire("(RFC822.HEADER RFC822.TEXT RFC822)", message(SIMPLE)) == (
        b"* 3 FETCH (RFC822.HEADER {140}\r\n" + SIMPLE_HEADER
        + b" RFC822.TEXT {19}\r\nHi Bob,\r\nSee you.\r\n"
        + b" RFC822 {159}\r\n" + SIMPLE + b")\r\n"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "name", "data"),
    [
        ("BODY[]", "BODY[]", SIMPLE),
        ("BODY.PEEK[]", "BODY[]", SIMPLE),
        ("BODY[HEADER]", "BODY[HEADER]", SIMPLE_HEADER),
        ("BODY.PEEK[TEXT]", "BODY[TEXT]", SIMPLE_TEXT),
        # RFC 3501 §6.4.5: a non-multipart message has a part 1, its body.
        ("BODY[1]", "BODY[1]", SIMPLE_TEXT),
        ("BODY[2]", "BODY[2]", b""),
        ("BODY[1.1]", "BODY[1.1]", b""),
        ("BODY[1.HEADER]", "BODY[1.HEADER]", b""),
        ("BODY[1.TEXT]", "BODY[1.TEXT]", b""),
    ],
)
def test_simple_message_sections(text: str, name: str, data: bytes) -> None:
    assert (
        wire(text, message(SIMPLE)) == b"* 3 FETCH (" + name.encode() + b" " + lit(data) + b")\r\n"
    )


def test_body_section_is_a_literal_even_when_short() -> None:
    raw = b"Subject: x\r\n\r\nok"
    assert wire("BODY[TEXT]", message(raw)) == b"* 3 FETCH (BODY[TEXT] {2}\r\nok)\r\n"


# --- multipart, nested multipart, message/rfc822 ------------------------------------------------


@pytest.mark.parametrize(
    ("section", "data"),
    [
        ("1", b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain text\r\n"
              b"--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html</p>\r\n--inner--"),
        ("1.1", b"plain text"),
        ("1.2", b"<p>html</p>"),
        ("1.MIME", b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'),
        ("1.1.MIME", b"Content-Type: text/plain; charset=utf-8\r\n\r\n"),
        ("1.2.MIME", b"Content-Type: text/html; charset=utf-8\r\n\r\n"),
        ("2", INNER_HEADER + b"inner body"),
        ("2.MIME", b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"),
        ("2.HEADER", INNER_HEADER),
        ("2.TEXT", b"inner body"),
        ("2.1", b"inner body"),
        ("3", b"AAEC"),
        ("3.MIME", b"Content-Type: application/octet-stream\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\n"),
        ("HEADER", b"From: a@example.org\r\nSubject: mixed\r\nMIME-Version: 1.0\r\n"
                   b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'),
        ("TEXT", MIXED[MIXED.index(b"preamble"):]),
        ("", MIXED),
        # Parts that do not exist, and HEADER/TEXT after a part that is not message/rfc822.
        ("4", b""),
        ("1.3", b""),
        ("1.1.1", b""),
        ("2.2", b""),
        ("1.HEADER", b""),
        ("1.TEXT", b""),
        ("3.HEADER", b""),
        ("3.TEXT", b""),
        ("4.MIME", b""),
        ("3.HEADER.FIELDS (Subject)", b""),
    ],
)  # fmt: skip
def test_multipart_sections(section: str, data: bytes) -> None:
    expected = b"* 3 FETCH (BODY[" + section.encode() + b"] " + lit(data) + b")\r\n"
    assert wire(f"BODY.PEEK[{section}]", message(MIXED)) == expected


def test_multipart_body_and_bodystructure() -> None:
    assert wire("BODY", message(MIXED)) == (
        b'* 3 FETCH (BODY ((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 11 1) "ALTERNATIVE")'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 70 (NIL "inner" ((NIL NIL "c" "example.com"))'
        b' ((NIL NIL "c" "example.com")) ((NIL NIL "c" "example.com")) NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1) 6)'
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 4) "MIXED"))\r\n'
    )
    extended = wire("BODYSTRUCTURE", message(MIXED))
    assert extended.startswith(b"* 3 FETCH (BODYSTRUCTURE (((")
    assert b'("ATTACHMENT" NIL)' in extended  # extension data only in BODYSTRUCTURE
    assert extended.endswith(b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL))\r\n')


FORWARD = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nx"


@pytest.mark.parametrize(
    ("section", "data"),
    [
        # A top-level message/rfc822: part 1 is the encapsulated message (RFC 3501 §6.4.5).
        ("1", b"Subject: in\r\n\r\nx"),
        ("1.HEADER", b"Subject: in\r\n\r\n"),
        ("1.TEXT", b"x"),
        ("1.1", b"x"),
        ("1.2", b""),
        ("HEADER", b"Content-Type: message/rfc822\r\n\r\n"),
    ],
)
def test_top_level_message_rfc822(section: str, data: bytes) -> None:
    expected = b"* 3 FETCH (BODY[" + section.encode() + b"] " + lit(data) + b")\r\n"
    assert wire(f"BODY[{section}]", message(FORWARD)) == expected


# --- HEADER.FIELDS and HEADER.FIELDS.NOT --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "data"),
    [
        # Matching is case-insensitive; names are echoed as asked; the field keeps its
        # folding; the blank line is included (RFC 3501 §6.4.5).
        ("BODY.PEEK[2.HEADER.FIELDS (x-FOLDED SUBJECT)]",
         "BODY[2.HEADER.FIELDS (x-FOLDED SUBJECT)]",
         b"Subject: inner\r\nX-Folded: one\r\n two\r\n\r\n"),
        ("BODY[2.HEADER.FIELDS.NOT (Subject)]", "BODY[2.HEADER.FIELDS.NOT (Subject)]",
         b"From: c@example.com\r\nX-Folded: one\r\n two\r\n\r\n"),
        ("BODY[HEADER.FIELDS (Content-Type)]", "BODY[HEADER.FIELDS (Content-Type)]",
         b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'),
        ("BODY[HEADER.FIELDS.NOT (FROM content-type MIME-Version)]",
         "BODY[HEADER.FIELDS.NOT (FROM content-type MIME-Version)]",
         b"Subject: mixed\r\n\r\n"),
        ("BODY[HEADER.FIELDS (X-Absent)]", "BODY[HEADER.FIELDS (X-Absent)]", b"\r\n"),
        # A partial is taken after subsetting.
        ("BODY[2.HEADER.FIELDS (X-Folded)]<10.7>", "BODY[2.HEADER.FIELDS (X-Folded)]<10>",
         b"one\r\n t"),
    ],
)  # fmt: skip
def test_header_fields(text: str, name: str, data: bytes) -> None:
    expected = b"* 3 FETCH (" + name.encode() + b" " + lit(data) + b")\r\n"
    assert wire(text, message(MIXED)) == expected


def test_header_fields_without_blank_line() -> None:
    """A message with no body and no blank line: no blank line is made up (RFC 3501 §6.4.5)."""
    raw = b"Subject: only\r\nFrom: x@example.org\r\n"
    assert wire("(BODY[HEADER.FIELDS (FROM)] RFC822.TEXT)", message(raw)) == (
        b"* 3 FETCH (BODY[HEADER.FIELDS (FROM)] {21}\r\nFrom: x@example.org\r\n"
        b" RFC822.TEXT {0}\r\n)\r\n"
    )


# --- partials -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "data"),
    [
        ("BODY[]<0.4>", "BODY[]<0>", SIMPLE[:4]),
        ("BODY.PEEK[]<6.5>", "BODY[]<6>", b"Alice"),
        # RFC 3501 §6.4.5: truncated at the end, still answered as a partial.
        ("BODY[]<0.2048>", "BODY[]<0>", SIMPLE),
        ("BODY[TEXT]<140.10>", "BODY[TEXT]<140>", b""),
        ("BODY[TEXT]<9.100>", "BODY[TEXT]<9>", b"See you.\r\n"),
        ("BODY[TEXT]<19.1>", "BODY[TEXT]<19>", b""),
        ("BODY[]<4294967295.1>", "BODY[]<4294967295>", b""),
        ("BODY[1]<3.4>", "BODY[1]<3>", b"Bob,"),
        ("BODY[9]<0.4>", "BODY[9]<0>", b""),
    ],
)
def test_partials(text: str, name: str, data: bytes) -> None:
    assert (
        wire(text, message(SIMPLE)) == b"* 3 FETCH (" + name.encode() + b" " + lit(data) + b")\r\n"
    )


def test_partial_of_a_nested_part() -> None:
    assert wire("BODY[2.TEXT]<6.100>", message(MIXED)) == (
        b"* 3 FETCH (BODY[2.TEXT]<6> {4}\r\nbody)\r\n"
    )


# --- bytes as stored ----------------------------------------------------------------------------

EIGHT_BIT = (
    b"Subject: caf\xe9 \xff\r\n"
    b"From: \xc3\xa9l\xc3\xa8ve <e@example.org>\r\n"
    b"\r\n"
    b"Latin-1: caf\xe9\r\nbare LF\nbare CR\r\x00nul \x80\xfe\xff\r\n"
)


@pytest.mark.parametrize(
    ("text", "name", "data"),
    [
        ("RFC822", "RFC822", EIGHT_BIT),
        ("BODY[]", "BODY[]", EIGHT_BIT),
        ("RFC822.HEADER", "RFC822.HEADER", EIGHT_BIT[: EIGHT_BIT.index(b"\r\n\r\n") + 4]),
        ("BODY[HEADER.FIELDS (SUBJECT)]", "BODY[HEADER.FIELDS (SUBJECT)]",
         b"Subject: caf\xe9 \xff\r\n\r\n"),
        ("BODY[TEXT]", "BODY[TEXT]", EIGHT_BIT[EIGHT_BIT.index(b"\r\n\r\n") + 4 :]),
        ("BODY[1]", "BODY[1]", EIGHT_BIT[EIGHT_BIT.index(b"\r\n\r\n") + 4 :]),
        ("BODY[1]<12.2>", "BODY[1]<12>", b"\xe9\r"),
    ],
)  # fmt: skip
def test_8bit_bytes_are_sent_unchanged(text: str, name: str, data: bytes) -> None:
    assert (
        wire(text, message(EIGHT_BIT))
        == b"* 3 FETCH (" + name.encode() + b" " + lit(data) + b")\r\n"
    )


def test_bare_lf_message_unchanged() -> None:
    """Line ends are not normalised: a bare-LF message is served with its bare LFs."""
    raw = b"Subject: a\nFrom: b\n\nline\n"
    assert wire("(BODY[HEADER] BODY[TEXT])", message(raw)) == (
        b"* 3 FETCH (BODY[HEADER] {20}\r\nSubject: a\nFrom: b\n\n BODY[TEXT] {5}\r\nline\n)\r\n"
    )


def test_malformed_multipart_bytes_unchanged() -> None:
    """An unterminated multipart with an 8-bit part: its bytes are still served as stored."""
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n\xe0 bient\xf4t\r\n"
        b"--b\r\n\r\nno close\xff"
    )
    assert wire("(BODY[1] BODY[2])", message(raw)) == (
        b"* 3 FETCH (BODY[1] {9}\r\n\xe0 bient\xf4t BODY[2] {9}\r\nno close\xff)\r\n"
    )


# --- order, duplicates, added items -------------------------------------------------------------


def test_order_is_as_asked() -> None:
    assert wire("(RFC822.SIZE BODY[1] UID FLAGS)", message(SIMPLE)) == (
        b"* 3 FETCH (RFC822.SIZE 159 BODY[1] {19}\r\nHi Bob,\r\nSee you.\r\n UID 7"
        b" FLAGS (\\Seen))\r\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(UID FLAGS UID)", b"UID 7 FLAGS (\\Seen)"),
        ("(BODY[1] BODY.PEEK[1])", b"BODY[1] {19}\r\nHi Bob,\r\nSee you.\r\n"),
        ("(BODY.PEEK[TEXT]<0.2> BODY[TEXT]<0.5>)", b"BODY[TEXT]<0> {2}\r\nHi"),
        ("(RFC822 BODY[])", b"RFC822 " + lit(SIMPLE) + b" BODY[] " + lit(SIMPLE)),
        ("(BODY BODY[] BODY)", b'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 19 2)'
                               b" BODY[] " + lit(SIMPLE)),
    ],
)  # fmt: skip
def test_duplicates_answered_once(text: str, expected: bytes) -> None:
    assert wire(text, message(SIMPLE)) == b"* 3 FETCH (" + expected + b")\r\n"


def test_duplicates_given_directly() -> None:
    """Attributes that did not come through the parser's deduplication are answered once."""
    items = fetch_items([FetchItem("UID"), FetchItem("FLAGS"), FetchItem("UID")], message(SIMPLE))
    assert fetch(3, items) == b"* 3 FETCH (UID 7 FLAGS (\\Seen))\r\n"


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        # RFC 3501 §6.4.8: UID FETCH always answers with UID; first when not asked.
        ("FLAGS", {"add_uid": True}, b"UID 7 FLAGS (\\Seen)"),
        ("(FLAGS UID)", {"add_uid": True}, b"FLAGS (\\Seen) UID 7"),
        # RFC 7162 §3.1.4.1: MODSEQ with CONDSTORE, last when not asked.
        ("FLAGS", {"add_modseq": True}, b"FLAGS (\\Seen) MODSEQ (12)"),
        ("(MODSEQ FLAGS)", {"add_modseq": True}, b"MODSEQ (12) FLAGS (\\Seen)"),
        # RFC 3501 §6.4.5: flags changed by an implicit \Seen are sent.
        ("BODY[TEXT]<0.2>", {"add_flags": True}, b"BODY[TEXT]<0> {2}\r\nHi FLAGS (\\Seen)"),
        ("(FLAGS BODY[TEXT]<0.2>)", {"add_flags": True}, b"FLAGS (\\Seen) BODY[TEXT]<0> {2}\r\nHi"),
        ("BODY[TEXT]<0.2>", {"add_uid": True, "add_modseq": True, "add_flags": True},
         b"UID 7 BODY[TEXT]<0> {2}\r\nHi FLAGS (\\Seen) MODSEQ (12)"),
        ("(UID MODSEQ FLAGS)", {"add_uid": True, "add_modseq": True, "add_flags": True},
         b"UID 7 MODSEQ (12) FLAGS (\\Seen)"),
        ("RFC822.SIZE", {}, b"RFC822.SIZE 159"),
    ],
)  # fmt: skip
def test_added_items(text: str, options: dict[str, bool], expected: bytes) -> None:
    assert wire(text, message(SIMPLE), **options) == b"* 3 FETCH (" + expected + b")\r\n"


# --- what the session must load -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "info", "raw"),
    [
        ("FLAGS", False, False),
        ("INTERNALDATE", False, False),
        ("RFC822.SIZE", False, False),
        ("UID", False, False),
        ("MODSEQ", False, False),
        ("FAST", False, False),
        ("ENVELOPE", True, False),
        ("BODY", True, False),
        ("BODYSTRUCTURE", True, False),
        ("ALL", True, False),
        ("FULL", True, False),
        ("RFC822", False, True),
        ("BODY[]", False, True),
        ("BODY.PEEK[]<0.10>", False, True),
        ("RFC822.HEADER", True, True),
        ("RFC822.TEXT", True, True),
        ("BODY[HEADER]", True, True),
        ("BODY.PEEK[TEXT]", True, True),
        ("BODY[1]", True, True),
        ("BODY[1.2.MIME]", True, True),
        ("BODY[HEADER.FIELDS (From)]", True, True),
        ("BODY.PEEK[2.HEADER.FIELDS.NOT (From)]<0.1>", True, True),
        ("(UID RFC822 ENVELOPE)", True, True),
    ],
)
def test_needs(text: str, info: bool, raw: bool) -> None:
    attributes = attrs(text)
    assert (needs_info(attributes), needs_raw(attributes)) == (info, raw)
    # What needs_* say is enough: the rest may be left out...
    full = message(MIXED)
    lean = replace(full, info=full.info if info else None, raw=full.raw if raw else None)
    assert fetch_items(attributes, lean) == fetch_items(attributes, full)
    # ...and what they say is needed is checked, never guessed.
    if info:
        with pytest.raises(ValueError, match="MessageInfo"):
            fetch_items(attributes, replace(full, info=None))
    if raw:
        with pytest.raises(ValueError, match="bytes"):
            fetch_items(attributes, replace(full, raw=None))


def test_info_of_other_bytes_is_refused() -> None:
    msg = replace(message(SIMPLE), info=analyze(MIXED))
    with pytest.raises(ValueError, match="MessageInfo is for"):
        fetch_items(attrs("BODY[TEXT]"), msg)


def test_unknown_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown FETCH attribute"):
        fetch_items([FetchItem("X-GM-MSGID")], message(SIMPLE))


# --- properties ---------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [b"Subject: x\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n", b"\r\n", b"\n",
     b"--b\r\n", b"--b--\r\n", b"Content-Type: message/rfc822\r\n", b"body\xff", b" folded\r\n"]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    raw=st.lists(_PIECES, max_size=16).map(b"".join),
    origin=st.integers(0, 200),
    length=st.integers(1, 200),
)
def test_sections_are_slices_of_the_bytes(raw: bytes, origin: int, length: int) -> None:
    """Whatever the input: BODY[] is the bytes, HEADER + TEXT is the message, any section
    answers (possibly empty) and a partial is the slice of its section."""
    msg = message(raw)
    items = dict(
        fetch_items(
            attrs(
                f"(BODY[] BODY[HEADER] BODY[TEXT] BODY[1] BODY[1.MIME] BODY[2.1.HEADER]"
                f" BODY[1]<{origin}.{length}> BODY[HEADER.FIELDS (Subject)])"
            ),
            msg,
        )
    )
    whole, header, text, part = (
        items[name] for name in ("BODY[]", "BODY[HEADER]", "BODY[TEXT]", "BODY[1]")
    )
    assert whole == Literal(raw)
    assert _data(header) + _data(text) == raw
    assert _data(items[f"BODY[1]<{origin}>"]) == _data(part)[origin : origin + length]
    assert _data(part) in raw
    assert _data(items["BODY[1.MIME]"]) in raw


def _data(value: object) -> bytes:
    assert isinstance(value, Literal)
    return value.data


@pytest.mark.parametrize(
    ("text", "envelope_only"),
    [
        ("(UID FLAGS RFC822.SIZE ENVELOPE)", True),
        ("ALL", True),
        ("(FLAGS)", True),
        ("FULL", False),
        ("(ENVELOPE BODYSTRUCTURE)", False),
        ("(ENVELOPE BODY.PEEK[HEADER])", False),
        ("(ENVELOPE RFC822.HEADER)", False),
    ],
)
def test_a_first_sync_is_answered_from_the_stored_envelope(text: str, envelope_only: bool) -> None:
    from tidings.imap.fetch import needs_envelope_only
    from tidings.mime import stored_form

    attributes = attrs(text)
    assert needs_envelope_only(attributes) == envelope_only
    if envelope_only:
        full = message(MIXED)
        assert full.info is not None
        stored = replace(full, info=None, raw=None, envelope=stored_form(full.info).envelope)
        assert fetch_items(attributes, stored) == fetch_items(attributes, full)
