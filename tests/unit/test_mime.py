"""tidings.mime: ENVELOPE, BODY/BODYSTRUCTURE and BODY[section] from stored bytes.

Each case is a real-world-shaped message with its expected wire forms, checked by hand against
RFC 3501 §7.4.2 (sizes are counted in the bodies as written here; CRLF line ends throughout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tidings import mime
from tidings.mime import (
    MessageInfo,
    analyze,
    bodystructure_sexp,
    decode_header_text,
    envelope_sexp,
    header_fields,
    iter_parts,
    parse_section,
    section_bytes,
)


def crlf(text: str) -> bytes:
    """A message written with \\n in this file, as the CRLF bytes it is on the wire."""
    return text.encode("utf-8").replace(b"\n", b"\r\n")


def flat(text: str) -> bytes:
    """An expected wire form written over several lines: joined by a space, or by nothing
    where a line starts with "|" (as between the bodies of a multipart, RFC 3501 §9)."""
    out = ""
    for raw_line in text.strip().splitlines():
        line = raw_line.strip()
        out += line[1:] if line.startswith("|") else (" " if out else "") + line
    return out.encode()


@dataclass
class Case:
    name: str
    raw: bytes
    envelope: bytes
    body: bytes
    bodystructure: bytes
    sections: dict[str, bytes | None] = field(default_factory=dict)


# RFC 3501 §8's example message (the FETCH 12 FULL exchange), with a short body.
RFC3501_HEADER = crlf(
    """Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

"""
)
SIMPLE = Case(
    "simple text (RFC 3501 §8 example)",
    RFC3501_HEADER + crlf("Hello\nworld\n"),
    flat(
        """("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)"
        "IMAP4rev1 WG mtg summary and minutes"
        (("Terry Gray" NIL "gray" "cac.washington.edu"))
        (("Terry Gray" NIL "gray" "cac.washington.edu"))
        (("Terry Gray" NIL "gray" "cac.washington.edu"))
        ((NIL NIL "imap" "cac.washington.edu"))
        ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL
        "<B27397-0100000@cac.washington.edu>")"""
    ),
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 2)',
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 2 NIL NIL NIL NIL)',
    {
        "HEADER": RFC3501_HEADER,
        "TEXT": b"Hello\r\nworld\r\n",
        "1": b"Hello\r\nworld\r\n",
        "1.MIME": RFC3501_HEADER,  # a single-part message's part 1 header is the message header
        "2": None,
        "1.1": None,
        "1.HEADER": None,  # HEADER after a number needs a message/rfc822 part
    },
)

ALTERNATIVE = Case(
    "multipart/alternative",
    crlf(
        """From: Alice Example <alice@example.com>
To: bob@example.org
Subject: lunch?
Date: Tue, 1 Apr 2025 12:00:00 +0200
Message-ID: <alt-1@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary=XX

--XX
Content-Type: text/plain; charset=utf-8

Hi there
--XX
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<p>Hi there</p>
--XX--
"""
    ),
    flat(
        """("Tue, 1 Apr 2025 12:00:00 +0200" "lunch?"
        (("Alice Example" NIL "alice" "example.com"))
        (("Alice Example" NIL "alice" "example.com"))
        (("Alice Example" NIL "alice" "example.com"))
        ((NIL NIL "bob" "example.org")) NIL NIL NIL "<alt-1@example.com>")"""
    ),
    flat(
        """(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 8 1)
        |("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 15 1) "ALTERNATIVE")"""
    ),
    flat(
        """(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 8 1 NIL NIL NIL NIL)
        |("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 15 1 NIL NIL NIL NIL)
        "ALTERNATIVE" ("BOUNDARY" "XX") NIL NIL NIL)"""
    ),
    {
        "1": b"Hi there",
        "2": b"<p>Hi there</p>",
        "1.MIME": b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
        "2.MIME": crlf(
            "Content-Type: text/html; charset=utf-8\n"
            "Content-Transfer-Encoding: quoted-printable\n\n"
        ),
        "TEXT": crlf(
            "--XX\nContent-Type: text/plain; charset=utf-8\n\nHi there\n--XX\n"
            "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n"
            "\n<p>Hi there</p>\n--XX--\n"
        ),
        "3": None,
        "1.1": None,
        "0": None,
    },
)

MIXED = Case(
    "multipart/mixed with RFC 2231 filenames (UTF-8, ISO-8859-1, continuations)",
    crlf(
        """From: b@example.com
Subject: files
Content-Type: multipart/mixed; boundary="=_b1"

This is a MIME message.
--=_b1
Content-Type: text/plain

See attached.
--=_b1
Content-Type: application/pdf; name="=?UTF-8?B?w6kucGRm?="
Content-Disposition: attachment; filename*=UTF-8''%C3%A9t%C3%A9.pdf; size=4
Content-Transfer-Encoding: base64
Content-ID: <att1@example.com>
Content-Description: Summer report

AAAA
--=_b1
Content-Type: text/plain; charset=iso-8859-1;
 name*0*=iso-8859-1'fr'caf%E9; name*1="-menu.txt"
Content-Disposition: inline;
 filename*0*=iso-8859-1'fr'caf%E9;
 filename*1="-menu.txt"
Content-Language: fr, en
Content-Location: http://example.com/menu.txt
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

menu
--=_b1--
epilogue
"""
    ),
    flat(
        """(NIL "files" ((NIL NIL "b" "example.com")) ((NIL NIL "b" "example.com"))
        ((NIL NIL "b" "example.com")) NIL NIL NIL NIL NIL)"""
    ),
    flat(
        """(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 13 1)
        |("APPLICATION" "PDF" ("NAME" "=?UTF-8?B?w6kucGRm?=") "<att1@example.com>"
        "Summer report" "BASE64" 4)
        |("TEXT" "PLAIN" ("CHARSET" "iso-8859-1" "NAME" "=?UTF-8?B?Y2Fmw6ktbWVudS50eHQ=?=")
        NIL NIL "7BIT" 4 1) "MIXED")"""
    ),
    flat(
        """(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 13 1 NIL NIL NIL NIL)
        |("APPLICATION" "PDF" ("NAME" "=?UTF-8?B?w6kucGRm?=") "<att1@example.com>"
        "Summer report" "BASE64" 4 NIL
        ("ATTACHMENT" ("FILENAME" "=?UTF-8?B?w6l0w6kucGRm?=" "SIZE" "4")) NIL NIL)
        |("TEXT" "PLAIN" ("CHARSET" "iso-8859-1" "NAME" "=?UTF-8?B?Y2Fmw6ktbWVudS50eHQ=?=")
        NIL NIL "7BIT" 4 1 "Q2hlY2sgSW50ZWdyaXR5IQ=="
        ("INLINE" ("FILENAME" "=?UTF-8?B?Y2Fmw6ktbWVudS50eHQ=?=")) ("fr" "en")
        "http://example.com/menu.txt") "MIXED" ("BOUNDARY" "=_b1") NIL NIL NIL)"""
    ),
    {"1": b"See attached.", "2": b"AAAA", "3": b"menu", "4": None},
)

NESTED = Case(
    "multipart/alternative inside multipart/mixed",
    crlf(
        """From: c@example.com
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

plain
--inner
Content-Type: text/html

<b>html</b>
--inner--

--outer
Content-Type: image/png
Content-Disposition: attachment; filename=dot.png
Content-Transfer-Encoding: base64

iVBO
--outer--
"""
    ),
    flat(
        """(NIL NIL ((NIL NIL "c" "example.com")) ((NIL NIL "c" "example.com"))
        ((NIL NIL "c" "example.com")) NIL NIL NIL NIL NIL)"""
    ),
    flat(
        """((("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1)
        |("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1) "ALTERNATIVE")
        |("IMAGE" "PNG" NIL NIL NIL "BASE64" 4) "MIXED")"""
    ),
    flat(
        """((("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)
        |("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1 NIL NIL NIL NIL)
        "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)
        |("IMAGE" "PNG" NIL NIL NIL "BASE64" 4 NIL ("ATTACHMENT" ("FILENAME" "dot.png")) NIL NIL)
        "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)"""
    ),
    {
        "1": crlf(
            "--inner\nContent-Type: text/plain\n\nplain\n--inner\nContent-Type: text/html\n\n"
            "<b>html</b>\n--inner--\n"
        ),
        "1.MIME": b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n",
        "1.1": b"plain",
        "1.2": b"<b>html</b>",
        "1.2.MIME": b"Content-Type: text/html\r\n\r\n",
        "1.3": None,
        "2": b"iVBO",
        "1.1.1": None,
        "1.TEXT": None,
    },
)

INNER_MESSAGE = crlf(
    """From: d@example.org
To: c@example.com
Subject: report
Date: Tue, 1 Apr 2025 10:00:00 +0000
Content-Type: multipart/mixed; boundary=in

--in
Content-Type: text/plain

body
--in
Content-Type: application/octet-stream

xyz
--in--"""
)
FORWARD = Case(
    "message/rfc822 attachment containing a multipart",
    crlf(
        """From: c@example.com
Subject: Fwd: report
Content-Type: multipart/mixed; boundary=fw

--fw
Content-Type: text/plain

Forwarded below.
--fw
Content-Type: message/rfc822

"""
    )
    + INNER_MESSAGE
    + crlf("\n--fw--\n"),
    flat(
        """(NIL "Fwd: report" ((NIL NIL "c" "example.com")) ((NIL NIL "c" "example.com"))
        ((NIL NIL "c" "example.com")) NIL NIL NIL NIL NIL)"""
    ),
    flat(
        """(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 16 1)
        |("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 240
        ("Tue, 1 Apr 2025 10:00:00 +0000" "report" ((NIL NIL "d" "example.org"))
        ((NIL NIL "d" "example.org")) ((NIL NIL "d" "example.org"))
        ((NIL NIL "c" "example.com")) NIL NIL NIL NIL)
        (("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 1)
        |("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 3) "MIXED") 15) "MIXED")"""
    ),
    flat(
        """(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 16 1 NIL NIL NIL NIL)
        |("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 240
        ("Tue, 1 Apr 2025 10:00:00 +0000" "report" ((NIL NIL "d" "example.org"))
        ((NIL NIL "d" "example.org")) ((NIL NIL "d" "example.org"))
        ((NIL NIL "c" "example.com")) NIL NIL NIL NIL)
        (("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 1 NIL NIL NIL NIL)
        |("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 3 NIL NIL NIL NIL) "MIXED"
        ("BOUNDARY" "in") NIL NIL NIL) 15 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "fw") NIL NIL NIL)"""
    ),
    {
        "1": b"Forwarded below.",
        "2": INNER_MESSAGE,
        "2.MIME": b"Content-Type: message/rfc822\r\n\r\n",
        "2.HEADER": INNER_MESSAGE[: INNER_MESSAGE.index(b"\r\n\r\n") + 4],
        "2.TEXT": INNER_MESSAGE[INNER_MESSAGE.index(b"\r\n\r\n") + 4 :],
        "2.1": b"body",
        "2.1.MIME": b"Content-Type: text/plain\r\n\r\n",
        "2.2": b"xyz",
        "2.3": None,
        "1.HEADER": None,
    },
)

ENCODED_WORDS = Case(
    "encoded-words in UTF-8 and ISO-8859-1: ENVELOPE keeps them as they appear",
    crlf(
        """From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>
To: =?UTF-8?B?5bGx55Sw?= <yamada@example.jp>, "Doe, John" <john@example.net>
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=
 =?UTF-8?Q?_aus_K=C3=B6ln?=
Date: 1 Apr 2025 10:00 -0000

x
"""
    ),
    flat(
        """("1 Apr 2025 10:00 -0000" "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= =?UTF-8?Q?_aus_K=C3=B6ln?="
        (("=?ISO-8859-1?Q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))
        (("=?ISO-8859-1?Q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))
        (("=?ISO-8859-1?Q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))
        (("=?UTF-8?B?5bGx55Sw?=" NIL "yamada" "example.jp")("Doe, John" NIL "john" "example.net"))
        NIL NIL NIL NIL)"""
    ),
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 1)',
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 1 NIL NIL NIL NIL)',
    {"1": b"x\r\n"},
)

GROUPS = Case(
    "group syntax (RFC 5322 §A.1.3), empty group, source route, comment as name",
    crlf(
        """From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>
To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;
Cc: Undisclosed recipients:;
Bcc: <@relay.test,@r2.test:jane@far.test>, solo@e.test (Solo Person), nobody
Reply-To:
Subject: groups

"""
    ),
    flat(
        """(NIL "groups" (("Pete" NIL "pete" "silly.test")) (("Pete" NIL "pete" "silly.test"))
        (("Pete" NIL "pete" "silly.test"))
        ((NIL NIL "A Group" NIL)("Ed Jones" NIL "c" "a.test")(NIL NIL "joe" "where.test")
        |("John" NIL "jdoe" "one.test")(NIL NIL NIL NIL))
        ((NIL NIL "Undisclosed recipients" NIL)(NIL NIL NIL NIL))
        ((NIL "@relay.test,@r2.test" "jane" "far.test")("Solo Person" NIL "solo" "e.test")
        |(NIL NIL "nobody" "MISSING_DOMAIN")) NIL NIL)"""
    ),
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)',
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)',
    {"1": b"", "TEXT": b""},
)

NO_DATE_NO_FROM = Case(
    "missing Date and From: NIL, and Sender/Reply-To have nothing to default to",
    crlf("Subject: anonymous\nTo: x@example.com\n\nhi\n"),
    b'(NIL "anonymous" NIL NIL NIL ((NIL NIL "x" "example.com")) NIL NIL NIL NIL)',
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 1)',
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 1 NIL NIL NIL NIL)',
    {"1": b"hi\r\n", "HEADER": b"Subject: anonymous\r\nTo: x@example.com\r\n\r\n"},
)

SENDER_REPLY_TO = Case(
    "explicit Sender and Reply-To, quoting and escaping in strings",
    crlf(
        """From: "Q \\"uote\\" \\\\ Me" <q@example.com>
Sender: list-bounces@lists.example.com
Reply-To: list@lists.example.com
Subject: a "quoted" \\ subject

."""
    ),
    flat(
        """(NIL "a \\"quoted\\" \\\\ subject" (("Q \\"uote\\" \\\\ Me" NIL "q" "example.com"))
        ((NIL NIL "list-bounces" "lists.example.com")) ((NIL NIL "list" "lists.example.com"))
        NIL NIL NIL NIL NIL)"""
    ),
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1)',
    b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1 NIL NIL NIL NIL)',
    {"1": b"."},
)

DIGEST = Case(
    "multipart/digest: parts without Content-Type are message/rfc822 (RFC 2046 §5.1.5)",
    crlf(
        """Content-Type: multipart/digest; boundary=d

--d

Subject: one

1
--d--
"""
    ),
    b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
    flat(
        """(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 17
        (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)
        ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1) 3) "DIGEST")"""
    ),
    flat(
        """(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 17
        (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)
        ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1 NIL NIL NIL NIL) 3
        NIL NIL NIL NIL) "DIGEST" ("BOUNDARY" "d") NIL NIL NIL)"""
    ),
    {
        "1": b"Subject: one\r\n\r\n1",
        "1.MIME": b"\r\n",
        "1.HEADER": b"Subject: one\r\n\r\n",
        "1.TEXT": b"1",
        "1.1": b"1",
    },
)

CASES = [
    SIMPLE,
    ALTERNATIVE,
    MIXED,
    NESTED,
    FORWARD,
    ENCODED_WORDS,
    GROUPS,
    NO_DATE_NO_FROM,
    SENDER_REPLY_TO,
    DIGEST,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_envelope(case: Case) -> None:
    assert envelope_sexp(analyze(case.raw)) == case.envelope


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_body_and_bodystructure(case: Case) -> None:
    info = analyze(case.raw)
    assert bodystructure_sexp(info, extended=False) == case.body
    assert bodystructure_sexp(info, extended=True) == case.bodystructure


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sections(case: Case) -> None:
    info = analyze(case.raw)
    assert section_bytes(case.raw, info, "") == case.raw
    for section, expected in case.sections.items():
        assert section_bytes(case.raw, info, section) == expected, section


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_json_round_trip(case: Case) -> None:
    info = analyze(case.raw)
    text = info.to_json()
    assert text.isascii()
    assert MessageInfo.from_json(text) == info


def test_rfc3501_header_size() -> None:
    # RFC 3501 §8 shows this header as a literal of 342 octets.
    info = analyze(SIMPLE.raw)
    assert len(section_bytes(SIMPLE.raw, info, "HEADER") or b"") == 342


def test_part_numbers_in_document_order() -> None:
    info = analyze(FORWARD.raw)
    assert [s for s, _ in iter_parts(info)] == ["1", "2", "2.1", "2.2"]
    info = analyze(NESTED.raw)
    assert [s for s, _ in iter_parts(info)] == ["1", "1.1", "1.2", "2"]
    info = analyze(SIMPLE.raw)
    assert [s for s, _ in iter_parts(info)] == ["1"]


def test_rfc822_with_single_part_inside() -> None:
    inner = crlf("Subject: in\n\nline one\nline two\n")
    raw = crlf("Content-Type: message/rfc822\n\n") + inner
    info = analyze(raw)
    # A top-level message/rfc822: part 1 is the body (the inner message), 1.1 the inner body.
    assert section_bytes(raw, info, "1") == inner
    assert section_bytes(raw, info, "1.HEADER") == crlf("Subject: in\n\n")
    assert section_bytes(raw, info, "1.TEXT") == crlf("line one\nline two\n")
    assert section_bytes(raw, info, "1.1") == crlf("line one\nline two\n")
    assert section_bytes(raw, info, "1.1.MIME") == crlf("Subject: in\n\n")
    assert section_bytes(raw, info, "1.2") is None
    assert bodystructure_sexp(info, False) == (
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 35 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 20 2) 4)'
    )


# ---------------------------------------------------------------------------------------------
# SEARCH headers


def test_search_headers_are_decoded() -> None:
    s = analyze(ENCODED_WORDS.raw).search
    assert s.from_ == "André Pirard <PIRARD@vm1.ulg.ac.be>"
    assert s.to == '山田 <yamada@example.jp>, "Doe, John" <john@example.net>'
    assert s.subject == "Grüße aus Köln"  # whitespace between adjacent words dropped
    assert s.date == datetime(2025, 4, 1, 10, 0)  # "-0000": no zone known (RFC 5322 §3.3)
    assert s.cc is None
    assert s.bcc is None
    assert s.message_id is None


def test_search_date_and_duplicates() -> None:
    raw = crlf(
        "To: a@x.test\nTo: b@y.test\nDate: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        "Message-ID: <m@x>\nSubject: first\nSubject: second\n\n"
    )
    info = analyze(raw)
    assert info.search.to == "a@x.test, b@y.test"  # every occurrence is searchable
    assert info.search.subject == "first"
    assert info.envelope.subject == "first"  # the envelope takes the first
    assert info.search.date == datetime(
        1996, 7, 17, 2, 23, 25, tzinfo=timezone(-timedelta(hours=7))
    )
    assert info.search.message_id == "<m@x>"
    assert analyze(crlf("Date: yesterday\n\n")).search.date is None


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("=?ISO-8859-1?Q?caf=E9?=", "café"),
        ("=?utf-8?b?w6k=?=", "é"),
        ("=?utf-8?b?w6k?=", "é"),  # missing padding
        ("=?UTF-8*en?Q?a_b?=", "a b"),  # RFC 2231 §5 language
        ("a =?utf-8?q?b?= c", "a b c"),
        ("=?utf-8?q?a?=  \t =?utf-8?q?b?=", "ab"),
        ("=?x-unknown?q?abc?=", "abc"),
        ("=?idna?q?=FF?=", "\ufffd"),  # a strict codec falls back to UTF-8
        ("=?utf-8?x?abc?=", "=?utf-8?x?abc?="),  # not an encoding: left alone
        ("plain", "plain"),
    ],
)
def test_decode_header_text(text: str, decoded: str) -> None:
    assert decode_header_text(text) == decoded


def test_eight_bit_headers_are_literals_in_envelope_and_decoded_for_search() -> None:
    raw = b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nFrom: caf\xe9 <c@x.test>\r\n\r\n"
    info = analyze(raw)
    env = envelope_sexp(info)
    # As they appear, so in literals (RFC 3501 §4.3): 8-bit cannot go in a quoted string.
    assert env.startswith(b'(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe (({4}\r\ncaf\xe9 NIL "c" "x.test"))')
    assert info.search.subject == "Grüße"
    assert info.search.from_ == "café <c@x.test>"  # invalid UTF-8 read as Latin-1
    assert MessageInfo.from_json(info.to_json()) == info


# ---------------------------------------------------------------------------------------------
# Malformed input: degrade, never raise


def test_multipart_without_boundary_is_text_plain() -> None:
    raw = crlf("Content-Type: multipart/mixed\n\n--x\n\nhi\n--x--\n")
    info = analyze(raw)
    assert bodystructure_sexp(info, False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 18 4)'
    )


def test_invalid_content_type_is_text_plain() -> None:
    for ctype in ("garbage", "text/", "/plain", "te xt/plain", ""):
        info = analyze(crlf(f"Content-Type: {ctype}\n\nhi\n"))
        assert (info.body.type, info.body.subtype, info.body.params) == (
            "text",
            "plain",
            (("charset", "US-ASCII"),),
        ), ctype


def test_multipart_without_boundary_lines_has_one_empty_text_part() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=nope\n\njust text\n")
    info = analyze(raw)
    assert info.body.parts == ()
    # RFC 3501 §9 needs 1*body; Dovecot writes an empty text/plain part.
    assert bodystructure_sexp(info, False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0) "MIXED")'
    )
    assert section_bytes(raw, info, "1") is None
    assert section_bytes(raw, info, "TEXT") == b"just text\r\n"


def test_unterminated_multipart_runs_to_the_end() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n")
    info = analyze(raw)
    assert section_bytes(raw, info, "1") == b"one"
    assert section_bytes(raw, info, "2") == b"two\r\n"


def test_bare_lf_line_ends() -> None:
    raw = (
        b"Subject: lf\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\none\ntwo\n--b\n\nthree\n--b--\n"
    )
    info = analyze(raw)
    assert section_bytes(raw, info, "HEADER") == (
        b"Subject: lf\nContent-Type: multipart/mixed; boundary=b\n\n"
    )
    assert section_bytes(raw, info, "1") == b"one\ntwo"
    assert section_bytes(raw, info, "1.MIME") == b"Content-Type: text/plain\n\n"
    assert section_bytes(raw, info, "2") == b"three"
    assert section_bytes(raw, info, "2.MIME") == b"\n"
    assert info.envelope.subject == "lf"
    assert [p.lines for _, p in iter_parts(info)] == [2, 1]


def test_no_header_body_separator() -> None:
    raw = b"Subject: only a header\r\nFrom: a@b.test"
    info = analyze(raw)
    assert info.envelope.subject == "only a header"
    assert section_bytes(raw, info, "HEADER") == raw
    assert section_bytes(raw, info, "TEXT") == b""
    assert info.body.size == 0
    # RFC 3501 §6.4.5: no blank line is added when the message has none.
    assert header_fields(raw, ["subject"]) == b"Subject: only a header\r\n"


def test_no_header_at_all() -> None:
    raw = b"\r\njust a body\r\n"
    info = analyze(raw)
    assert section_bytes(raw, info, "HEADER") == b"\r\n"
    assert section_bytes(raw, info, "TEXT") == b"just a body\r\n"
    assert envelope_sexp(info) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_boundary_prefix_is_not_a_boundary() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=ab\n\n"
        "--ab\n\none\n--abc\nstill one\n--ab \n\ntwo\n--ab--\n"
    )
    info = analyze(raw)
    assert section_bytes(raw, info, "1") == crlf("one\n--abc\nstill one")
    assert section_bytes(raw, info, "2") == b"two"  # trailing whitespace after it is allowed


def test_deep_nesting_is_capped() -> None:
    depth = mime.MAX_DEPTH + 10
    raw = (
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(depth)
        )
        + b"\r\ninnermost\r\n"
    )
    info = analyze(raw)
    sections = [s for s, _ in iter_parts(info)]
    assert len(sections) == mime.MAX_DEPTH
    deepest = [p for _, p in iter_parts(info)][-1]
    assert (deepest.type, deepest.subtype) == ("text", "plain")
    assert raw[deepest.body_start : deepest.end].endswith(b"innermost\r\n")
    _check_invariants(raw, info)


def test_too_many_parts_are_left_out() -> None:
    raw = crlf("Content-Type: multipart/mixed; boundary=b\n\n") + b"--b\r\n\r\nx\r\n" * (
        mime.MAX_PARTS + 50
    )
    info = analyze(raw)
    assert len(info.body.parts) == mime.MAX_PARTS - 1
    _check_invariants(raw, info)


def test_rfc2231_edge_cases() -> None:
    raw = crlf(
        "Content-Type: application/octet-stream; name=plain; name*=utf-8''%E2%9C%93;\n"
        ' title*0="a"; title*1="b"; title*3="lost"; x*=\'\'%41; y*=bad\'%ZZ; z=a=b;\n'
        ' NAME=dup; junk; empty=""\n\n'
    )
    info = analyze(raw)
    assert info.body.params == (
        ("name", "✓"),
        ("title", "ab"),  # a gap in the continuation numbers ends it (RFC 2231 §3)
        ("x", "A"),
        ("y", "bad'%ZZ"),
        ("z", "a=b"),
        ("empty", ""),
    )


def test_content_type_comments_and_case() -> None:
    raw = crlf('Content-Type: (c) Text/HTML (c) ; Charset="UTF-8" (the charset)\n\n<p>\n')
    info = analyze(raw)
    assert (info.body.type, info.body.subtype, info.body.params) == (
        "text",
        "html",
        (("charset", "UTF-8"),),
    )


# ---------------------------------------------------------------------------------------------
# Section specs and HEADER.FIELDS


@pytest.mark.parametrize(
    ("section", "parsed"),
    [
        ("", ((), "")),
        ("HEADER", ((), "HEADER")),
        ("text", ((), "TEXT")),
        ("1", ((1,), "")),
        ("1.2.3", ((1, 2, 3), "")),
        ("1.2.MIME", ((1, 2), "MIME")),
        ("2.HEADER", ((2,), "HEADER")),
        ("MIME", None),
        ("0", None),
        ("01", None),
        ("1..2", None),
        ("1.", None),
        ("HEADER.FIELDS", None),
        ("1.MIME.1", None),
        ("١", None),  # a digit, but not an ASCII one
    ],
)
def test_parse_section(section: str, parsed: tuple[tuple[int, ...], str] | None) -> None:
    assert parse_section(section) == parsed


def test_header_fields() -> None:
    header = crlf("Subject: a\n b\nFrom: x@y.test\nX-Other: 1\nsubject: again\n\n")
    assert header_fields(header, ["SUBJECT"]) == crlf("Subject: a\n b\nsubject: again\n\n")
    assert header_fields(header, [b"from", "x-other"], not_=True) == crlf(
        "Subject: a\n b\nsubject: again\n\n"
    )
    assert header_fields(header, ["nothing"]) == b"\r\n"  # the blank line is always there


# ---------------------------------------------------------------------------------------------
# Shared invariants (also used by the property tests)


def parse_sexp(data: bytes) -> object:
    """A minimal reader for RFC 3501 parenthesised data: lists, NIL, numbers, strings."""
    pos = 0

    def value() -> object:
        nonlocal pos
        c = data[pos : pos + 1]
        if c == b"(":
            pos += 1
            items: list[object] = []
            while data[pos : pos + 1] != b")":
                if not data[pos : pos + 1]:
                    raise ValueError("unbalanced")
                items.append(value())
                if data[pos : pos + 1] == b" ":
                    pos += 1
            pos += 1
            return items
        if c == b'"':
            pos += 1
            out = bytearray()
            while data[pos : pos + 1] != b'"':
                if data[pos : pos + 1] == b"\\":
                    pos += 1
                if not data[pos : pos + 1] or data[pos : pos + 1] in b"\r\n":
                    raise ValueError("bad quoted string")
                out += data[pos : pos + 1]
                pos += 1
            pos += 1
            return bytes(out)
        if c == b"{":
            close = data.index(b"}\r\n", pos)
            n = int(data[pos + 1 : close])
            pos = close + 3 + n
            return data[close + 3 : pos]
        if data.startswith(b"NIL", pos):
            pos += 3
            return None
        start = pos
        while data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise ValueError(f"unexpected {data[pos : pos + 10]!r}")
        return int(data[start:pos])

    result = value()
    if pos != len(data):
        raise ValueError("trailing data")
    return result


def _check_invariants(raw: bytes, info: MessageInfo) -> None:
    assert info.size == len(raw)
    assert MessageInfo.from_json(info.to_json()) == info
    env = parse_sexp(envelope_sexp(info))
    assert isinstance(env, list)
    assert len(env) == 10
    for extended in (False, True):
        assert isinstance(parse_sexp(bodystructure_sexp(info, extended)), list)

    def offsets(part: mime.BodyPart, lo: int, hi: int) -> None:
        assert lo <= part.header_start <= part.body_start <= part.end <= hi
        for child in part.parts:
            offsets(child, part.body_start, part.end)
        if part.message is not None:
            offsets(part.message.body, part.body_start, part.end)

    offsets(info.body, 0, len(raw))
    assert info.body.header_start == 0
    assert info.body.end == len(raw)
    for section, part in iter_parts(info):
        assert section_bytes(raw, info, section) == raw[part.body_start : part.end]
        mime_header = raw[part.header_start : part.body_start]
        assert section_bytes(raw, info, section + ".MIME") == mime_header


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_invariants_on_cases(case: Case) -> None:
    _check_invariants(case.raw, analyze(case.raw))


def test_json_keeps_dates_and_zones() -> None:
    for date in ("Wed, 17 Jul 1996 02:23:25 +0530", "Wed, 17 Jul 1996 02:23:25 -0000"):
        info = analyze(crlf(f"Date: {date}\n\n"))
        back = MessageInfo.from_json(info.to_json())
        assert back.search.date is not None
        assert back.search.date.utcoffset() == (info.search.date or datetime.now(UTC)).utcoffset()
    with pytest.raises(ValueError, match="MessageInfo"):
        MessageInfo.from_json("[2]")
    with pytest.raises(ValueError, match="MessageInfo"):
        MessageInfo.from_json("[1]")
