"""tidings.imap.search: every RFC 3501 §6.4.4 key, MODSEQ (RFC 7162), decoding, bad input.

Keys come from real SEARCH commands through the parser; messages are real bytes through
``mime.analyze``, so the tests exercise what the session will pass in.
"""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.imap.parser import AndKey, NotKey, Search, SearchKey, parse_command
from tidings.imap.search import SearchMessage, body_text, matches, needs_info, needs_raw
from tidings.mime import MessageInfo, analyze

LARGEST_SEQ = 5
LARGEST_UID = 50


def key(criteria: str | bytes) -> SearchKey:
    """The key of ``a SEARCH <criteria>``; non-ASCII text goes in as a UTF-8 literal."""
    data = criteria.encode() if isinstance(criteria, str) else criteria
    command = parse_command(b"a SEARCH " + data).command
    assert isinstance(command, Search)
    return command.key


def literal(text: str) -> bytes:
    data = text.encode()
    return b"{%d}\r\n" % len(data) + data


def utf8(name: str, text: str) -> bytes:
    """``CHARSET UTF-8 <name> <literal>`` as a client sends non-ASCII criteria."""
    return b"CHARSET UTF-8 " + name.encode() + b" " + literal(text)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def message(
    raw: bytes,
    *,
    seq: int = 1,
    uid: int = 10,
    flags: tuple[str, ...] = (),
    internaldate: datetime = datetime(2024, 3, 5, 12, 0, tzinfo=UTC),
    modseq: int = 1,
) -> SearchMessage:
    return SearchMessage(
        seq=seq,
        uid=uid,
        flags=frozenset(flags),
        internaldate=internaldate,
        size=len(raw),
        modseq=modseq,
        info=analyze(raw),
        raw=raw,
    )


def hit(criteria: str | bytes | SearchKey, msg: SearchMessage) -> bool:
    k = key(criteria) if isinstance(criteria, str | bytes) else criteria
    return matches(k, msg, largest_seq=LARGEST_SEQ, largest_uid=LARGEST_UID)


PST = timezone(timedelta(hours=-8))
CET = timezone(timedelta(hours=1))

# Seen, answered, flagged; written late on 5 March in California (already 6 March in UTC).
PLAIN = message(
    crlf(
        "Date: Tue, 05 Mar 2024 23:30:00 -0800\n"
        'From: "Alice Example" <alice@example.org>\n'
        "To: Bob <bob@example.net>\n"
        "Cc: carol@example.com\n"
        "Bcc: dave@example.com\n"
        "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus Berlin\n"
        "X-Mailer: Test\n"
        "  Mailer 2.0\n"
        "Message-ID: <1@example.org>\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "Hello world, see you tomorrow.\n"
    ),
    seq=3,
    uid=30,
    flags=("\\Seen", "\\Answered", "\\Flagged", "$Important"),
    internaldate=datetime(2024, 3, 5, 23, 30, tzinfo=PST),
    modseq=7,
)
# Recent, draft, deleted; no From/To/Cc/Bcc/Date; just after midnight on 6 March in Paris.
BARE = message(
    crlf("Subject: hi\n\nbody only\n"),
    seq=5,
    uid=50,
    flags=("\\Recent", "\\Draft", "\\Deleted"),
    internaldate=datetime(2024, 3, 6, 0, 10, tzinfo=CET),
    modseq=12,
)
MESSAGES = {"plain": PLAIN, "bare": BARE}

# (criteria, {message: expected}) — every RFC 3501 §6.4.4 key, both ways where it has two.
CASES: list[tuple[str, dict[str, bool]]] = [
    ("ALL", {"plain": True, "bare": True}),
    # flags
    ("ANSWERED", {"plain": True, "bare": False}),
    ("UNANSWERED", {"plain": False, "bare": True}),
    ("DELETED", {"plain": False, "bare": True}),
    ("UNDELETED", {"plain": True, "bare": False}),
    ("DRAFT", {"plain": False, "bare": True}),
    ("UNDRAFT", {"plain": True, "bare": False}),
    ("FLAGGED", {"plain": True, "bare": False}),
    ("UNFLAGGED", {"plain": False, "bare": True}),
    ("SEEN", {"plain": True, "bare": False}),
    ("UNSEEN", {"plain": False, "bare": True}),
    ("RECENT", {"plain": False, "bare": True}),
    ("OLD", {"plain": True, "bare": False}),
    ("NEW", {"plain": False, "bare": True}),
    ("KEYWORD $Important", {"plain": True, "bare": False}),
    ("KEYWORD $IMPORTANT", {"plain": True, "bare": False}),  # RFC 3501 §9: case-insensitive
    ("KEYWORD $Other", {"plain": False, "bare": False}),
    ("UNKEYWORD $important", {"plain": False, "bare": True}),
    # envelope fields
    ("FROM alice", {"plain": True, "bare": False}),
    ('FROM "ALICE EXAMPLE"', {"plain": True, "bare": False}),
    ("FROM example.org", {"plain": True, "bare": False}),
    ("FROM bob", {"plain": False, "bare": False}),
    ('FROM ""', {"plain": True, "bare": False}),  # empty: has the field
    ("TO bob@EXAMPLE.net", {"plain": True, "bare": False}),
    ("TO carol", {"plain": False, "bare": False}),
    ("CC carol", {"plain": True, "bare": False}),
    ("CC dave", {"plain": False, "bare": False}),
    ("BCC dave", {"plain": True, "bare": False}),
    ('BCC ""', {"plain": True, "bare": False}),
    ('SUBJECT "aus berlin"', {"plain": True, "bare": False}),
    ("SUBJECT HI", {"plain": False, "bare": True}),
    ('SUBJECT ""', {"plain": True, "bare": True}),
    ("SUBJECT =?UTF-8?Q?", {"plain": False, "bare": False}),  # decoded, not the raw word
    # HEADER: other fields from the bytes, unfolded; the envelope fields as above
    ('HEADER X-Mailer "mailer 2.0"', {"plain": True, "bare": False}),
    ('HEADER x-mailer ""', {"plain": True, "bare": False}),
    ('HEADER X-Mailer "test  mailer"', {"plain": True, "bare": False}),  # CRLF gone, WSP kept
    ("HEADER Message-ID 1@EXAMPLE", {"plain": True, "bare": False}),
    ("HEADER from alice", {"plain": True, "bare": False}),
    ('HEADER Subject ""', {"plain": True, "bare": True}),
    ('HEADER Date "23:30"', {"plain": True, "bare": False}),
    ('HEADER X-Absent ""', {"plain": False, "bare": False}),
    # BODY and TEXT
    ('BODY "hello WORLD"', {"plain": True, "bare": False}),
    ("BODY berlin", {"plain": False, "bare": False}),  # only in the header
    ("BODY only", {"plain": False, "bare": True}),
    ('BODY ""', {"plain": True, "bare": True}),
    ("TEXT berlin", {"plain": True, "bare": False}),
    ("TEXT tomorrow", {"plain": True, "bare": False}),
    ("TEXT x-mailer", {"plain": True, "bare": False}),  # the header includes field names
    ("TEXT nowhere", {"plain": False, "bare": False}),
    # internal date, in its own zone (RFC 3501 §6.4.4: disregarding time and timezone)
    ("ON 5-Mar-2024", {"plain": True, "bare": False}),
    ("ON 6-Mar-2024", {"plain": False, "bare": True}),
    ("BEFORE 6-Mar-2024", {"plain": True, "bare": False}),
    ("BEFORE 5-Mar-2024", {"plain": False, "bare": False}),
    ("SINCE 5-Mar-2024", {"plain": True, "bare": True}),
    ('SINCE "6-Mar-2024"', {"plain": False, "bare": True}),
    # sent date, from Date:; BARE has none and never matches
    ("SENTON 5-Mar-2024", {"plain": True, "bare": False}),
    ("SENTON 6-Mar-2024", {"plain": False, "bare": False}),
    ("SENTBEFORE 6-Mar-2024", {"plain": True, "bare": False}),
    ("SENTBEFORE 5-Mar-2024", {"plain": False, "bare": False}),
    ("SENTSINCE 5-Mar-2024", {"plain": True, "bare": False}),
    ("SENTSINCE 6-Mar-2024", {"plain": False, "bare": False}),
    ("NOT SENTON 6-Mar-2024", {"plain": True, "bare": True}),
    # sequence numbers (largest 5) and UIDs (largest 50)
    ("3", {"plain": True, "bare": False}),
    ("1:2,4", {"plain": False, "bare": False}),
    ("*", {"plain": False, "bare": True}),
    ("2:*", {"plain": True, "bare": True}),
    ("*:4", {"plain": False, "bare": True}),  # 4:5 written backwards
    ("5:3", {"plain": True, "bare": True}),
    ("UID 30", {"plain": True, "bare": False}),
    ("UID 31:*", {"plain": False, "bare": True}),
    ("UID *", {"plain": False, "bare": True}),
    ("UID 60:*", {"plain": False, "bare": True}),  # RFC 3501 §6.4.8: * is the last UID
    ("UID 1:29,31:49", {"plain": False, "bare": False}),
    # RFC 7162 §3.1.5 MODSEQ: equal or greater
    ("MODSEQ 7", {"plain": True, "bare": True}),
    ("MODSEQ 8", {"plain": False, "bare": True}),
    ('MODSEQ "/flags/\\\\draft" all 12', {"plain": False, "bare": True}),
    ("MODSEQ 13", {"plain": False, "bare": False}),
    # NOT, OR, lists, and the implicit AND
    ("NOT SEEN", {"plain": False, "bare": True}),
    ("NOT NOT SEEN", {"plain": True, "bare": False}),
    ("OR SEEN DRAFT", {"plain": True, "bare": True}),
    ("OR (SEEN DRAFT) FROM nobody", {"plain": False, "bare": False}),
    ("OR (SEEN FLAGGED) BODY only", {"plain": True, "bare": True}),
    ("(SEEN FLAGGED)", {"plain": True, "bare": False}),
    ("(SEEN)", {"plain": True, "bare": False}),
    ("NOT (OR SEEN DRAFT)", {"plain": False, "bare": False}),
    ("NOT OLD", {"plain": False, "bare": True}),  # not "NOT NEW"
    ("SEEN FROM alice SINCE 1-Mar-2024 LARGER 10", {"plain": True, "bare": False}),
    ("DELETED SUBJECT hi UID 50 3", {"plain": False, "bare": False}),
    ("OR 3 UID 50", {"plain": True, "bare": True}),
    ("SMALLER 100000 LARGER 1", {"plain": True, "bare": True}),
    ("SMALLER 100", {"plain": False, "bare": True}),
]


@pytest.mark.parametrize(
    ("criteria", "name", "expected"),
    [(c, name, e) for c, by_message in CASES for name, e in by_message.items()],
)
def test_key(criteria: str, name: str, expected: bool) -> None:
    assert hit(criteria, MESSAGES[name]) is expected


def test_every_rfc3501_key_is_in_the_table() -> None:
    words = {w.strip("()") for criteria, _ in CASES for w in criteria.split()}
    every = {
        "ALL", "ANSWERED", "BCC", "BEFORE", "BODY", "CC", "DELETED", "DRAFT", "FLAGGED", "FROM",
        "HEADER", "KEYWORD", "LARGER", "NEW", "NOT", "OLD", "ON", "OR", "RECENT", "SEEN",
        "SENTBEFORE", "SENTON", "SENTSINCE", "SINCE", "SMALLER", "SUBJECT", "TEXT", "TO", "UID",
        "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNKEYWORD", "UNSEEN", "MODSEQ",
    }  # fmt: skip
    assert every - words == set()


def test_new_is_recent_and_unseen() -> None:
    recent_seen = message(b"\r\n", flags=("\\Recent", "\\Seen"))
    assert not hit("NEW", recent_seen)
    assert hit("NOT NEW", recent_seen)
    assert not hit("OLD", recent_seen)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("LARGER {size}", False),
        ("LARGER {below}", True),
        ("LARGER 0", True),
        ("SMALLER {size}", False),
        ("SMALLER {above}", True),
        ("SMALLER 1", False),
    ],
)
def test_size_is_strict(criteria: str, expected: bool) -> None:
    size = PLAIN.size
    text = criteria.format(size=size, below=size - 1, above=size + 1)
    assert hit(text, PLAIN) is expected


def test_star_on_an_empty_mailbox_names_nothing() -> None:
    k = key("UID *")
    assert not matches(k, PLAIN, largest_seq=0, largest_uid=0)


# --- non-ASCII: RFC 2047 headers, base64 and quoted-printable bodies, HTML ------------------

MULTI = crlf(
    "From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <jm@example.de>\n"
    "Subject: =?UTF-8?B?R3LDvMOfZQ==?= =?UTF-8?Q?_aus_K=C3=B6ln?=\n"
    "X-Greeting: =?iso-8859-1?q?Gr=FC=DFe?=\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="outer"\n'
    "\n"
    "preamble is not searched: PREAMBLEWORD\n"
    "--outer\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: base64\n"
    "\n" + base64.encodebytes("Viele Grüße aus der Domstadt\n".encode()).decode() + "--outer\n"
    "Content-Type: text/plain; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "Sch=F6ne Gr=FC=DFe, ein sehr langer Satz der hier um=\n"
    "gebrochen wird.\n"
    "--outer\n"
    "Content-Type: text/html; charset=utf-8\n"
    "\n"
    "<html><head><style>p { color: red } .STYLEWORD {}</style></head>\n"
    "<body><p>Liebe Gr&uuml;&szlig;e &amp; <b>fett</b>gedruckt</p>"
    "<script>var SCRIPTWORD = 1;</script><!-- COMMENTWORD --></body></html>\n"
    "--outer\n"
    "Content-Type: application/octet-stream\n"
    "Content-Transfer-Encoding: base64\n"
    "\n" + base64.encodebytes(b"ATTACHMENTWORD in a binary part").decode() + "--outer\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "Subject: =?UTF-8?Q?Weitergeleitet_=C3=A4?=\n"
    "From: inner@example.com\n"
    "\n"
    "INNERBODY text of the forwarded message\n"
    "--outer--\n"
    "epilogue EPILOGUEWORD\n"
)
NONASCII = message(MULTI)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        (utf8("SUBJECT", "Grüße"), True),  # base64 encoded-word
        (utf8("SUBJECT", "GRÜSSE"), True),  # casefold: ß is ss
        (utf8("SUBJECT", "Grüße aus Köln"), True),  # adjacent words joined (RFC 2047 §6.2)
        (utf8("FROM", "jürgen müller"), True),  # Latin-1 encoded-word
        (utf8("HEADER X-Greeting", "grüße"), True),
        (utf8("BODY", "Viele Grüße"), True),  # base64 UTF-8 part
        (utf8("BODY", "schöne grüsse"), True),  # quoted-printable Latin-1 part
        (utf8("BODY", "umgebrochen"), True),  # soft line break undone
        (utf8("BODY", "liebe grüße & fettgedruckt"), True),  # HTML: entities, inline tags
        (utf8("BODY", "Weitergeleitet ä"), True),  # message/rfc822: inner header
        (b"BODY innerbody", True),  # ... and inner body
        (b"BODY STYLEWORD", False),
        (b"BODY SCRIPTWORD", False),
        (b"BODY COMMENTWORD", False),
        (b"BODY <p>", False),
        (b"BODY ATTACHMENTWORD", False),  # not text: not searched
        (b"BODY PREAMBLEWORD", False),
        (b"BODY EPILOGUEWORD", False),
        (b"BODY R3LDvMOfZQ", False),  # the encoded form is not the text
        (utf8("TEXT", "grüße aus köln"), True),  # header half of TEXT
        (utf8("TEXT", "Domstadt"), True),  # body half of TEXT
        (utf8("SUBJECT", "Domstadt"), False),
        # A decomposed ü (as some clients send) finds the composed one.
        (utf8("SUBJECT", "Gru\u0308ße"), True),
    ],
)
def test_nonascii(criteria: bytes, expected: bool) -> None:
    assert hit(criteria, NONASCII) is expected


def test_8bit_header_fields_are_decoded() -> None:
    raw = b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nX-Latin: Gr\xfc\xdfe\r\n\r\n"
    m = message(raw)
    assert hit(utf8("SUBJECT", "grüße"), m)
    assert hit(utf8("HEADER X-Latin", "grüße"), m)
    assert hit(utf8("TEXT", "GRÜSSE"), m)


def test_body_text() -> None:
    text = body_text(MULTI, analyze(MULTI))
    assert "Viele Grüße aus der Domstadt\n" in text
    assert "Schöne Grüße, ein sehr langer Satz der hier umgebrochen wird." in text
    assert "Liebe Grüße & fettgedruckt" in text
    assert "Subject: Weitergeleitet ä\nFrom: inner@example.com\n" in text
    assert "\r" not in text
    for absent in ("ATTACHMENT", "PREAMBLE", "EPILOGUE", "STYLEWORD", "SCRIPTWORD", "<"):
        assert absent not in text


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        # Declared charset, strictly.
        ("charset=koi8-r", "Привет".encode("koi8-r"), "Привет"),
        # No charset / US-ASCII with UTF-8 in it: UTF-8.
        ("", "Grüße".encode(), "Grüße"),
        ("charset=us-ascii", "Grüße".encode(), "Grüße"),
        # Unknown charset: UTF-8 if it is, else Latin-1.
        ("charset=x-unknown", "Grüße".encode(), "Grüße"),
        ("charset=x-unknown", "Grüße".encode("latin-1"), "Grüße"),
        # Declared UTF-8 but Latin-1 bytes: Latin-1, so every word stays findable.
        ("charset=utf-8", "Grüße".encode("latin-1"), "Grüße"),
        # A known non-UTF-8 charset that does not fit: its own reading, with replacements.
        ("charset=shift_jis", b"ok \x81", "ok \ufffd"),
        # A text codec that is not a charset for mail bytes does not raise.
        ("charset=idna", b"\xff\xfe", "ÿþ"),
    ],
)
def test_charset_fallbacks(header: str, body: bytes, expected: str) -> None:
    ctype = f"Content-Type: text/plain; {header}\r\n" if header else ""
    raw = ctype.encode() + b"\r\n" + body
    assert body_text(raw, analyze(raw)) == expected


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"R3LDvMOfZQ==", "Grüße"),
        (b"R3LDv\r\nMOfZQ==\r\n", "Grüße"),  # line breaks
        (b"R3LDvMOfZQ", "Grüße"),  # padding missing
        (b"R3L!DvM*OfZQ==", "Grüße"),  # junk skipped (RFC 2045 §6.8)
        (b"R3LDvMOfZQ=A", "Grüße"),  # data after the padding
        (b"!!!", ""),
        (b"Q", ""),  # a lone sextet is no byte
    ],
)
def test_lenient_base64(encoded: bytes, expected: str) -> None:
    raw = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    raw += encoded
    assert body_text(raw, analyze(raw)).startswith(expected)


def test_text_of_a_message_rfc822_at_the_top() -> None:
    raw = crlf("Content-Type: message/rfc822\n\nSubject: inside\n\nforwarded words\n")
    assert body_text(raw, analyze(raw)) == "Subject: inside\n\nforwarded words\n"


# --- dates at the edges of time zones -------------------------------------------------------


@pytest.mark.parametrize(
    ("internaldate", "on"),
    [
        (datetime(2024, 3, 5, 23, 59, 59, tzinfo=timezone(timedelta(hours=-12))), date(2024, 3, 5)),
        (datetime(2024, 3, 6, 0, 0, 0, tzinfo=timezone(timedelta(hours=14))), date(2024, 3, 6)),
        (datetime(2024, 3, 6, 0, 0, 0, tzinfo=UTC), date(2024, 3, 6)),
        (datetime(2024, 3, 5, 23, 59, 59, tzinfo=UTC), date(2024, 3, 5)),
        (
            datetime(2024, 2, 29, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=45))),
            date(2024, 2, 29),
        ),
        (datetime(2023, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-1))), date(2023, 12, 31)),
    ],
)
def test_internal_date_in_its_own_zone(internaldate: datetime, on: date) -> None:
    m = message(b"\r\n", internaldate=internaldate)
    day = on.strftime("%d-%b-%Y")
    next_day = (on + timedelta(days=1)).strftime("%d-%b-%Y")
    prev_day = (on - timedelta(days=1)).strftime("%d-%b-%Y")
    assert hit(f"ON {day}", m)
    assert hit(f"SINCE {day}", m)
    assert not hit(f"SINCE {next_day}", m)
    assert hit(f"BEFORE {next_day}", m)
    assert not hit(f"BEFORE {day}", m)
    assert not hit(f"ON {prev_day}", m)
    assert not hit(f"ON {next_day}", m)


@pytest.mark.parametrize(
    ("date_field", "on"),
    [
        ("Wed, 06 Mar 2024 00:30:00 +0900", "6-Mar-2024"),  # 5 March in UTC
        ("Tue, 05 Mar 2024 23:30:00 -0800", "5-Mar-2024"),  # 6 March in UTC
        ("Tue, 05 Mar 2024 23:30:00 -0000", "5-Mar-2024"),  # zone unknown (RFC 5322 §3.3)
        ("5 Mar 2024 23:30 GMT", "5-Mar-2024"),  # no day name, no seconds
        ("Tue, 5 Mar 24 23:30:00 EST", "5-Mar-2024"),  # obsolete year and zone (§4.3)
    ],
)
def test_sent_date_in_its_own_zone(date_field: str, on: str) -> None:
    m = message(f"Date: {date_field}\r\n\r\n".encode())
    assert hit(f"SENTON {on}", m)
    assert hit(f"SENTSINCE {on}", m)
    assert not hit(f"SENTBEFORE {on}", m)


@pytest.mark.parametrize("date_field", ["", "yesterday", "Tue, 99 Foo 2024", "\xff\xfe"])
def test_unparseable_sent_date_never_matches(date_field: str) -> None:
    m = message(b"Date: " + date_field.encode("utf-8", "surrogateescape") + b"\r\n\r\n")
    for criteria in ("SENTON 5-Mar-2024", "SENTBEFORE 1-Jan-2100", "SENTSINCE 1-Jan-1900"):
        assert not hit(criteria, m)
        assert hit("NOT " + criteria, m)


# --- what the session must load -------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "info", "raw"),
    [
        ("ALL", False, False),
        ("SEEN UNKEYWORD x", False, False),
        ("ON 1-Jan-2024 LARGER 5 UID 1:* 1:3 MODSEQ 4", False, False),
        ("FROM x", True, False),
        ("OR TO x CC y", True, False),
        ("NOT (BCC x SUBJECT y)", True, False),
        ("HEADER FROM x", True, False),
        ("SENTON 1-Jan-2024", True, False),
        ("HEADER X-Spam yes", True, True),
        ("BODY x", True, True),
        ("TEXT x", True, True),
        ("NOT (OR SEEN (DRAFT BODY x))", True, True),
    ],
)
def test_needs(criteria: str, info: bool, raw: bool) -> None:
    k = key(criteria)
    assert (needs_info(k), needs_raw(k)) == (info, raw)


def test_only_what_is_needed_is_passed() -> None:
    """With exactly what needs_info/needs_raw ask for, every table key evaluates."""
    for criteria, by_message in CASES:
        k = key(criteria)
        for name, expected in by_message.items():
            full = MESSAGES[name]
            slim = SearchMessage(
                full.seq,
                full.uid,
                full.flags,
                full.internaldate,
                full.size,
                full.modseq,
                info=full.info if needs_info(k) else None,
                raw=full.raw if needs_raw(k) else None,
            )
            got = matches(k, slim, largest_seq=LARGEST_SEQ, largest_uid=LARGEST_UID)
            assert got is expected, criteria


def test_stored_info_gives_the_same_answers() -> None:
    assert NONASCII.info is not None
    stored = MessageInfo.from_json(NONASCII.info.to_json())
    m = SearchMessage(1, 10, frozenset(), NONASCII.internaldate, NONASCII.size, 1, stored, MULTI)
    assert hit(utf8("SUBJECT", "grüße"), m)
    assert hit(utf8("BODY", "schöne grüße"), m)


def test_info_is_computed_from_raw_when_missing() -> None:
    m = SearchMessage(1, 10, frozenset(), PLAIN.internaldate, PLAIN.size, 1, None, PLAIN.raw)
    assert hit("FROM alice SENTON 5-Mar-2024 BODY hello", m)


@pytest.mark.parametrize("criteria", ["FROM x", "SENTON 1-Jan-2024", "BODY x", "HEADER X-A b"])
def test_missing_input_is_the_callers_error(criteria: str) -> None:
    m = SearchMessage(1, 10, frozenset(), PLAIN.internaldate, PLAIN.size, 1)
    with pytest.raises(ValueError, match="needs the message"):
        hit(criteria, m)


def test_cheap_keys_decide_first() -> None:
    """An AND whose flag key fails does not need the text at all."""
    m = SearchMessage(1, 10, frozenset(), PLAIN.internaldate, PLAIN.size, 1)
    assert not hit("BODY x SEEN", m)
    assert hit("OR BODY x UNSEEN", m)


def test_and_of_nothing_is_all() -> None:
    assert matches(AndKey(()), BARE, largest_seq=LARGEST_SEQ, largest_uid=LARGEST_UID)


# --- malformed messages ---------------------------------------------------------------------

MALFORMED = [
    b"",
    b"\r\n",
    b"no header, no blank line",
    b"Subject: =?utf-8?b?!!!?= =?x-unknown?q?=FF?= =?utf-8?q?=?=\r\n\r\n",
    b"Subject: \xff\xfe\x00 8-bit\r\nFrom: \x80\x81 <\xff@\xfe>\r\n\r\n\xff\xfe body",
    b"Content-Type: text/plain; charset=x-unknown\r\n\r\n\xff\xfe\xfd",
    b"Content-Type: text/plain; charset=utf-16\r\n\r\n\xff",
    b"Content-Type: text/plain; charset=punycode\r\n\r\n\xff-\xfe",
    b'Content-Type: text/plain; charset="\x00"\r\n\r\nx',
    b"Content-Type: text/plain; charset=\xff\xfe\r\n\r\nx",
    b"Content-Transfer-Encoding: base64\r\n\r\n====!!!===\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=4=\xff",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\nunterminated",
    b"Content-Type: multipart/mixed\r\n\r\n--b\r\nno boundary parameter",
    b"Content-Type: message/rfc822\r\n\r\n" * 80,
    b"Content-Type: text/html\r\n\r\n<<<<<script><style<!--<p>&#xffffffff;&bogus;<a href='x",
    b"Content-Type: text/html\r\n\r\n" + b"<" * 20000,
    # Unclosed openers: linear, not quadratic, in the HTML reduction.
    b"Content-Type: text/html\r\n\r\n" + b"<script" * 50_000,
    b"Content-Type: text/html\r\n\r\n" + b"<!--<style>" * 50_000,
    b"Subject: x\r\n folded only\r\n\tmore\r\n: no name\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_messages_do_not_raise(raw: bytes) -> None:
    m = message(raw)
    assert m.info is not None
    body_text(raw, m.info)
    for criteria in (
        "TEXT x",
        "BODY x",
        'BODY ""',
        "HEADER Subject x",
        "HEADER X-Other x",
        "FROM x",
        "SENTON 1-Jan-2024",
        utf8("TEXT", "Grüße"),
    ):
        assert hit(criteria, m) in (True, False)
    assert hit('BODY ""', m)  # an empty string is in every text, even an empty one


# --- property: any key over any small message -----------------------------------------------

_PIECES = [
    b"\r\n",
    b"\n",
    b" ",
    b":",
    b"--b",
    b"--b--",
    b"=?utf-8?q?",
    b"=?utf-8?b?",
    b"?=",
    b"=FC",
    b"\xff",
    b"\xc3\xbc",
    b"<p>",
    b"&amp;",
    b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n",
    b"From: a <b@c>\r\n",
    b"Date: Tue, 05 Mar 2024 23:30:00 -0800\r\n",
    b"Date: junk\r\n",
    b"X-A: \r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/html; charset=iso-8859-1\r\n",
    b"Content-Type: text/plain; charset=x-unknown\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
]
raw_messages = st.lists(st.one_of(st.binary(max_size=6), st.sampled_from(_PIECES)), max_size=30)

_words = st.text(alphabet="abü ß-:<>&=?Gr", max_size=5).map(lambda s: literal(s).decode())
_dates = st.dates(min_value=date(1990, 1, 1), max_value=date(2030, 12, 31)).map(
    lambda d: d.strftime("%d-%b-%Y")
)
_numbers = st.one_of(st.integers(1, 60).map(str), st.just("*"))
_sets = st.lists(
    st.tuples(_numbers, st.one_of(st.none(), _numbers)).map(
        lambda r: r[0] if r[1] is None else f"{r[0]}:{r[1]}"
    ),
    min_size=1,
    max_size=3,
).map(",".join)
_FLAG_WORDS = (
    "ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED UNDELETED UNDRAFT "
    "UNFLAGGED UNSEEN"
)


def _keyed(words: str, argument: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``WORD argument`` for one of the space-separated ``words``."""
    return st.tuples(st.sampled_from(words.split(" ")), argument).map(" ".join)


_leaf = st.one_of(
    st.sampled_from(_FLAG_WORDS.split(" ")),
    _keyed("KEYWORD UNKEYWORD", st.sampled_from(["$a", "Junk"])),
    _keyed("FROM TO CC BCC SUBJECT BODY TEXT", _words),
    _keyed("HEADER", _keyed("X-A Subject from Date Content-Type", _words)),
    _keyed("BEFORE ON SINCE SENTBEFORE SENTON SENTSINCE", _dates),
    _keyed("LARGER SMALLER", st.integers(0, 500).map(str)),
    _sets,
    _keyed("UID", _sets),
    _keyed("MODSEQ", st.integers(0, 20).map(str)),
)
_criteria = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        inner.map("NOT {}".format),
        st.tuples(inner, inner).map(lambda t: f"OR {t[0]} {t[1]}"),
        st.lists(inner, min_size=1, max_size=3).map(lambda ks: "(" + " ".join(ks) + ")"),
    ),
    max_leaves=6,
)
_zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_messages = st.builds(
    lambda raw, flags, when, zone, seq, uid, modseq: message(
        b"".join(raw),
        seq=seq,
        uid=uid,
        flags=tuple(flags),
        internaldate=when.replace(tzinfo=zone),
        modseq=modseq,
    ),
    raw_messages,
    st.sets(st.sampled_from(["\\Seen", "\\Recent", "\\Draft", "\\Deleted", "$A", "junk"])),
    st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2030, 1, 1)),
    _zones,
    st.integers(1, LARGEST_SEQ),
    st.integers(1, LARGEST_UID),
    st.integers(1, 20),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_criteria, min_size=1, max_size=3).map(" ".join), _messages)
def test_random_keys_never_raise(criteria: str, msg: SearchMessage) -> None:
    k = key(b"CHARSET UTF-8 " + criteria.encode())
    got = hit(k, msg)
    assert isinstance(got, bool)
    assert hit(NotKey(k), msg) is not got
    assert msg.info is not None and msg.raw is not None
    stored = MessageInfo.from_json(msg.info.to_json())
    again = SearchMessage(
        msg.seq, msg.uid, msg.flags, msg.internaldate, msg.size, msg.modseq, stored, msg.raw
    )
    assert hit(k, again) is got
