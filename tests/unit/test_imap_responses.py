"""IMAP responses, byte for byte: status lines, codes, untagged data, strings, FETCH."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.imap import parser as p
from tidings.imap import responses as r


@pytest.mark.parametrize(
    ("made", "wire"),
    [
        (r.ok("a1"), b"a1 OK completed\r\n"),
        (r.ok("a1", "SELECT completed", r.READ_WRITE), b"a1 OK [READ-WRITE] SELECT completed\r\n"),
        (r.ok("a", "done", r.READ_ONLY), b"a OK [READ-ONLY] done\r\n"),
        (r.no("a", "no such mailbox", r.TRYCREATE), b"a NO [TRYCREATE] no such mailbox\r\n"),
        (r.bad("a", "what?"), b"a BAD what?\r\n"),
        (r.no("a", "x", r.TOOBIG), b"a NO [TOOBIG] x\r\n"),
        (r.no("a", "x", r.badcharset_code()), b"a NO [BADCHARSET (US-ASCII UTF-8)] x\r\n"),
        (r.ok("a", "x", r.uidvalidity_code(3857529045)), b"a OK [UIDVALIDITY 3857529045] x\r\n"),
        (r.untagged_status("OK", "Predicted next UID", r.uidnext_code(4392)),
         b"* OK [UIDNEXT 4392] Predicted next UID\r\n"),
        (r.untagged_status("OK", "Limited", r.permanentflags_code(["\\Deleted", "\\Seen", "\\*"])),
         b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"),
        (r.untagged_status("OK", "Highest", r.highestmodseq_code(715194045007)),
         b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"),
        (r.untagged_status("OK", "No mod-sequences", r.NOMODSEQ),
         b"* OK [NOMODSEQ] No mod-sequences\r\n"),
        (r.untagged_status("OK", "Previous mailbox closed", r.CLOSED),
         b"* OK [CLOSED] Previous mailbox closed\r\n"),
        (r.ok("a", "APPEND completed", r.appenduid_code(38505, 3955)),
         b"a OK [APPENDUID 38505 3955] APPEND completed\r\n"),
        (r.ok("a", "Done", r.copyuid_code(38505, [(304, 3956), (319, 3957), (320, 3958)])),
         b"a OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"),
        (r.ok("a", "Done", r.copyuid_code(9, [(3, 12), (1, 10), (2, 11), (5, 20)])),
         b"a OK [COPYUID 9 1:3,5 10:12,20] Done\r\n"),
        (r.no("a", "Some failed", r.modified_code([7, 9, 8])),
         b"a NO [MODIFIED 7:9] Some failed\r\n"),
        (r.untagged_status("OK", "Tidings ready", r.capability_code(["IMAP4rev1", "IDLE"])),
         b"* OK [CAPABILITY IMAP4rev1 IDLE] Tidings ready\r\n"),
        (r.no("a", "Login failed", r.AUTHENTICATIONFAILED),
         b"a NO [AUTHENTICATIONFAILED] Login failed\r\n"),
        (r.no("a", "x", r.ALREADYEXISTS), b"a NO [ALREADYEXISTS] x\r\n"),
        (r.no("a", "x", r.NONEXISTENT), b"a NO [NONEXISTENT] x\r\n"),
        (r.no("a", "x", r.OVERQUOTA), b"a NO [OVERQUOTA] x\r\n"),
        (r.no("a", "x", r.UNAVAILABLE), b"a NO [UNAVAILABLE] x\r\n"),
        (r.no("a", "x", r.CANNOT), b"a NO [CANNOT] x\r\n"),
        (r.no("a", "x", r.LIMIT), b"a NO [LIMIT] x\r\n"),
        (r.no("a", "x", r.SERVERBUG), b"a NO [SERVERBUG] x\r\n"),
        (r.untagged_status("OK", "x", r.ALERT), b"* OK [ALERT] x\r\n"),
        (r.bye("Logging out"), b"* BYE Logging out\r\n"),
        (r.ok("a", "two\r\nlines"), b"a OK two lines\r\n"),  # no response splitting
        (r.continuation(), b"+ Ready\r\n"),
        (r.continuation("idling"), b"+ idling\r\n"),
        (r.continuation(""), b"+ \r\n"),
    ],
)  # fmt: skip
def test_status_responses(made: bytes, wire: bytes) -> None:
    assert made == wire


@pytest.mark.parametrize(
    ("made", "wire"),
    [
        (r.exists(23), b"* 23 EXISTS\r\n"),
        (r.recent(0), b"* 0 RECENT\r\n"),
        (r.expunge(44), b"* 44 EXPUNGE\r\n"),
        (r.flags(["\\Answered", "\\Flagged", "$Junk"]),
         b"* FLAGS (\\Answered \\Flagged $Junk)\r\n"),
        (r.flags([]), b"* FLAGS ()\r\n"),
        (r.capability(["IMAP4rev1", "LITERAL+", "AUTH=PLAIN"]),
         b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\n"),
        (r.enabled(["CONDSTORE"]), b"* ENABLED CONDSTORE\r\n"),
        (r.enabled([]), b"* ENABLED\r\n"),
        (r.list_(["\\HasNoChildren"], "/", "INBOX"), b'* LIST (\\HasNoChildren) "/" INBOX\r\n'),
        (r.list_(["\\Noselect"], "/", ""), b'* LIST (\\Noselect) "/" ""\r\n'),
        (r.list_([], None, "foo"), b"* LIST () NIL foo\r\n"),
        (r.list_([], "\\", "a b"), b'* LIST () "\\\\" "a b"\r\n'),
        (r.list_(["\\Sent"], ".", "Entwürfe"), b'* LIST (\\Sent) "." Entw&APw-rfe\r\n'),
        (r.list_([], "/", "100%"), b'* LIST () "/" "100%"\r\n'),
        (r.list_([], "/", "nil"), b'* LIST () "/" "nil"\r\n'),
        (r.list_(["\\Subscribed"], "/", "Foo", [("CHILDINFO", ("SUBSCRIBED",))]),
         b'* LIST (\\Subscribed) "/" Foo ("CHILDINFO" ("SUBSCRIBED"))\r\n'),
        (r.lsub([], "/", "News/comp"), b'* LSUB () "/" News/comp\r\n'),
        (r.status("blurdybloop", [("MESSAGES", 231), ("UIDNEXT", 44292)]),
         b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n"),
        (r.status("my box", [("HIGHESTMODSEQ", 7)]), b'* STATUS "my box" (HIGHESTMODSEQ 7)\r\n'),
        (r.search([2, 3, 6]), b"* SEARCH 2 3 6\r\n"),
        (r.search([]), b"* SEARCH\r\n"),
        (r.search([2, 5], modseq=917162500), b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"),
        (r.search([], modseq=917162500), b"* SEARCH\r\n"),
        (r.esearch("A282", [2, 10, 11, 47], ["MIN", "MAX", "COUNT", "ALL"], uid=True),
         b'* ESEARCH (TAG "A282") UID MIN 2 MAX 47 COUNT 4 ALL 2,10:11,47\r\n'),
        (r.esearch("A283", [], ["MIN", "COUNT", "ALL"]), b'* ESEARCH (TAG "A283") COUNT 0\r\n'),
        (r.esearch("A284", [], ["MIN"]), b'* ESEARCH (TAG "A284")\r\n'),
        (r.esearch("t", [3, 1, 2], ["ALL"], modseq=9), b'* ESEARCH (TAG "t") ALL 1:3 MODSEQ 9\r\n'),
        (r.vanished([41, 43, 44, 45, 116]), b"* VANISHED 41,43:45,116\r\n"),
        (r.vanished(range(300, 311), earlier=True), b"* VANISHED (EARLIER) 300:310\r\n"),
        (r.id_([("name", "Tidings"), ("version", "0.1"), ("os", None)]),
         b'* ID ("name" "Tidings" "version" "0.1" "os" NIL)\r\n'),
        (r.id_(None), b"* ID NIL\r\n"),
        (r.namespace([("", "/")]), b'* NAMESPACE (("" "/")) NIL NIL\r\n'),
        (r.namespace([("", ".")], [("~", "/")], [("#shared/", "/"), ("#news.", ".")]),
         b'* NAMESPACE (("" ".")) (("~" "/")) (("#shared/" "/")("#news." "."))\r\n'),
        (r.quota("", [("STORAGE", 10, 512)]), b'* QUOTA "" (STORAGE 10 512)\r\n'),
        (r.quota("INBOX", [("STORAGE", 1, 2), ("MESSAGE", 3, 4)]),
         b"* QUOTA INBOX (STORAGE 1 2 MESSAGE 3 4)\r\n"),
        (r.quotaroot("INBOX", [""]), b'* QUOTAROOT INBOX ""\r\n'),
        (r.quotaroot("comp.mail.mime", []), b"* QUOTAROOT comp.mail.mime\r\n"),
    ],
)  # fmt: skip
def test_untagged_data(made: bytes, wire: bytes) -> None:
    assert made == wire


@pytest.mark.parametrize(
    ("value", "as_astring", "as_string"),
    [
        ("INBOX", b"INBOX", b'"INBOX"'),
        ("", b'""', b'""'),
        ("NIL", b'"NIL"', b'"NIL"'),
        ("a b", b'"a b"', b'"a b"'),
        ('say "hi"\\', b'"say \\"hi\\"\\\\"', b'"say \\"hi\\"\\\\"'),
        ("x]y", b"x]y", b'"x]y"'),
        ("(x)", b'"(x)"', b'"(x)"'),
        ("a{1}", b'"a{1}"', b'"a{1}"'),
        ("%*", b'"%*"', b'"%*"'),
        ("päss", b"{5}\r\np\xc3\xa4ss", b"{5}\r\np\xc3\xa4ss"),
        ("two\r\nlines", b"{10}\r\ntwo\r\nlines", b"{10}\r\ntwo\r\nlines"),
        (b"\x00", b"{1}\r\n\x00", b"{1}\r\n\x00"),
        (b"\x7f", b'"\x7f"', b'"\x7f"'),
        ("x" * 1025, b"x" * 1025, b"{1025}\r\n" + b"x" * 1025),  # a long atom is fine
    ],
)
def test_string_forms(value: str | bytes, as_astring: bytes, as_string: bytes) -> None:
    assert r.astring(value) == as_astring
    assert r.string(value) == as_string
    assert r.nstring(value) == as_string


def test_nstring_nil() -> None:
    assert r.nstring(None) == b"NIL"


def test_encode_value_tree() -> None:
    envelope = ("Wed, 17 Jul 1996", "IMAP4rev1 WG", [("Terry Gray", None, "gray", "cac.edu")],
                None, b"<B27397-0100000@cac.washington.edu>", 7, r.Atom("\\Seen"))  # fmt: skip
    assert r.encode(envelope) == (
        b'("Wed, 17 Jul 1996" "IMAP4rev1 WG" (("Terry Gray" NIL "gray" "cac.edu")) NIL '
        b'"<B27397-0100000@cac.washington.edu>" 7 \\Seen)'
    )
    assert r.encode([]) == b"()"
    assert r.encode(r.Raw(b"(a b)")) == b"(a b)"
    with pytest.raises(TypeError):
        r.encode(True)


def test_fetch_response_with_literal_body() -> None:
    section = p.BodySection(p.Section((), "HEADER.FIELDS", ("From",)), peek=True, partial=(0, 5))
    made = r.fetch(
        12,
        [
            ("UID", 4827313),
            ("FLAGS", r.Raw(r.flag_list(["\\Seen", "$Forwarded"]))),
            ("MODSEQ", r.Raw(b"(624140003)")),
            ("RFC822.SIZE", 44827),
            ("INTERNALDATE", "17-Jul-1996 02:44:25 -0700"),
            (section.response_name(), r.Literal(b"From:")),
            ("BODY[]", r.Literal(b"Subject: x\r\n\r\nhi\r\n")),
            ("BODY[2]", None),
        ],
    )
    assert made == (
        b"* 12 FETCH (UID 4827313 FLAGS (\\Seen $Forwarded) MODSEQ (624140003) RFC822.SIZE 44827 "
        b'INTERNALDATE "17-Jul-1996 02:44:25 -0700" BODY[HEADER.FIELDS (From)]<0> {5}\r\nFrom: '
        b"BODY[] {18}\r\nSubject: x\r\n\r\nhi\r\n BODY[2] NIL)\r\n"
    )


def test_error_response() -> None:
    with pytest.raises(p.ParseError) as info:
        p.parse_command(b"A7 XYZZY")
    assert r.error_response(info.value) == b"A7 BAD Unknown command XYZZY\r\n"
    with pytest.raises(p.ParseError) as info:
        p.parse_command(b"(bad")
    assert r.error_response(info.value) == b"* BAD Missing or invalid tag\r\n"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_mailbox_names_round_trip_through_the_wire(name: str) -> None:
    """Whatever name the store holds, LIST writes it so that the parser reads it back."""
    try:
        wire = r.mailbox(name)
    except UnicodeEncodeError:  # lone surrogates are not names
        return
    command = p.parse_command(b"a SELECT " + wire).command
    assert command == p.Select(p.normalize_inbox(name))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_any_bytes_round_trip_as_astring(value: bytes) -> None:
    try:
        expected = value.decode("utf-8")
    except UnicodeDecodeError:
        return
    command = p.parse_command(b"a LOGIN " + r.astring(value) + b" x").command
    assert command == p.Login(expected, "x")
