"""IMAP command framing (literals, LITERAL+, limits) and fuzzing of the reader and parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.imap import parser as p
from tidings.imap import responses as r


def events(reader: p.CommandReader, *chunks: bytes) -> list[p.ReadEvent]:
    """What a session sees feeding ``chunks`` one by one, draining events after each."""
    seen: list[p.ReadEvent] = []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            event = reader.next_event()
            if isinstance(event, p.NeedMore):
                break
            seen.append(event)
            if isinstance(event, p.ReadError) and event.error.fatal:
                return seen
    return seen


CONT = p.SendContinuation()


def test_simple_commands_pipelined() -> None:
    got = events(p.CommandReader(), b"a NOOP\r\nb CAPABILITY\r\nc LOG", b"OUT\r\n")
    assert got == [
        p.CommandReady(b"a NOOP\r\n"),
        p.CommandReady(b"b CAPABILITY\r\n"),
        p.CommandReady(b"c LOGOUT\r\n"),
    ]


def test_byte_by_byte() -> None:
    wire = b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n"
    got = events(p.CommandReader(), *(wire[i : i + 1] for i in range(len(wire))))
    assert got == [CONT, CONT, p.CommandReady(wire)]
    assert p.parse_command(wire) == p.Request("a", p.Login("alice", "secret"))


def test_synchronising_literal_waits_for_continuation() -> None:
    reader = p.CommandReader()
    assert events(reader, b"a APPEND INBOX (\\Seen) {11}\r\n") == [CONT]
    assert events(reader, b"Hello\r\n", b"World") == []
    assert events(reader, b"\r\n") == [
        p.CommandReady(b"a APPEND INBOX (\\Seen) {11}\r\nHello\r\nWorld\r\n")
    ]
    assert not reader.buffered


def test_literal_plus_sends_no_continuation() -> None:
    wire = b"a APPEND INBOX {3+}\r\nabc\r\nb NOOP\r\n"
    assert events(p.CommandReader(), wire) == [
        p.CommandReady(b"a APPEND INBOX {3+}\r\nabc\r\n"),
        p.CommandReady(b"b NOOP\r\n"),
    ]


def test_bare_lf_is_a_line_end_and_made_crlf() -> None:
    got = events(p.CommandReader(), b"a LOGIN {1}\nx y\n")
    assert got == [CONT, p.CommandReady(b"a LOGIN {1}\r\nx y\r\n")]
    assert p.parse_command(b"a LOGIN {1}\r\nx y\r\n").command == p.Login("x", "y")


def test_literal_with_line_ends_and_braces_inside() -> None:
    body = b"x {5}\r\n{3+}\r\n"
    wire = b"a APPEND INBOX {%d}\r\n" % len(body) + body + b"\r\n"
    assert events(p.CommandReader(), wire) == [CONT, p.CommandReady(wire)]
    assert p.parse_command(wire).command == p.Append("INBOX", body)


def test_too_big_append_literal_is_no_toobig_without_continuation() -> None:
    reader = p.CommandReader(max_append=10)
    got = events(reader, b"a APPEND INBOX {11}\r\nb NOOP\r\n")
    assert len(got) == 2 and isinstance(got[0], p.ReadError)
    error = got[0].error
    assert (error.tag, error.status, error.code, error.fatal) == ("a", "NO", "TOOBIG", False)
    assert r.error_response(error) == b"a NO [TOOBIG] Literal too big\r\n"
    assert got[1] == p.CommandReady(b"b NOOP\r\n")  # the client abandoned the APPEND


def test_append_limit_is_separate_from_other_literals() -> None:
    reader = p.CommandReader(max_literal=4, max_append=100)
    assert events(reader, b"a append INBOX {50}\r\n") == [CONT]
    got = events(p.CommandReader(max_literal=4), b"a LOGIN {5}\r\n")
    assert isinstance(got[0], p.ReadError)
    assert r.error_response(got[0].error) == b"a BAD [TOOBIG] Literal too big\r\n"


def test_too_big_nonsynchronising_literal_is_fatal() -> None:
    got = events(p.CommandReader(max_append=10), b"a APPEND INBOX {11+}\r\nHello World\r\n")
    assert len(got) == 1 and isinstance(got[0], p.ReadError)
    error = got[0].error
    assert (error.tag, error.status, error.code, error.fatal) == ("a", "BAD", "TOOBIG", True)


def test_total_command_size_is_bounded() -> None:
    reader = p.CommandReader(max_literal=10, max_command=40)
    got = events(reader, b"a SEARCH TEXT {10+}\r\n0123456789 TEXT {10+}\r\n0123456789\r\n")
    assert isinstance(got[0], p.ReadError) and got[0].error.fatal


def test_line_too_long_is_skipped_then_refused() -> None:
    reader = p.CommandReader(max_line=20)
    got = events(reader, b"a1 SEARCH TEXT " + b"x" * 30, b"y" * 50, b"z\r\nb NOOP\r\n")
    assert len(got) == 2 and isinstance(got[0], p.ReadError)
    assert (got[0].error.tag, got[0].error.reason, got[0].error.fatal) == (
        "a1", "Line too long", False)  # fmt: skip
    assert got[1] == p.CommandReady(b"b NOOP\r\n")
    assert len(reader._buf) == 0  # nothing of the long line was kept


def test_line_too_long_ending_in_literal_plus_is_fatal() -> None:
    got = events(p.CommandReader(max_line=20), b"a LOGIN " + b"x" * 30 + b" {5+}\r\nhello")
    assert isinstance(got[0], p.ReadError) and got[0].error.fatal


def test_line_too_long_without_tag() -> None:
    got = events(p.CommandReader(max_line=10), b"(" * 30 + b"\r\n")
    assert isinstance(got[0], p.ReadError) and got[0].error.tag is None
    assert r.error_response(got[0].error) == b"* BAD Line too long\r\n"


def test_next_line_for_sasl_and_idle() -> None:
    reader = p.CommandReader(max_line=10)
    reader.feed(b"dGVzdA==\r\nDONE\nb")
    assert reader.next_line() == p.LineReady(b"dGVzdA==")
    assert reader.next_line() == p.LineReady(b"DONE")
    assert reader.next_line() == p.NeedMore()
    assert reader.buffered  # RFC 3501 §6.2.1: the session refuses STARTTLS with this
    reader.feed(b"x" * 20)
    event = reader.next_line()
    assert isinstance(event, p.ReadError) and event.error.fatal


# --- fuzzing --------------------------------------------------------------------------------------

VALID = [
    b"a LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
    b'a APPEND Drafts (\\Draft $x) "17-Jul-1996 02:44:25 -0700" {5}\r\nhello\r\n',
    b"a UID FETCH 1:*,7 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100> UID) "
    b"(CHANGEDSINCE 5 VANISHED)\r\n",
    b"a SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR (FROM {3}\r\nbob NOT SEEN) UID 1:5,7 "
    b'SINCE 1-Feb-2020 MODSEQ "/flags/\\\\seen" all 5\r\n',
    b"a SELECT INBOX (CONDSTORE QRESYNC (67890007 2005 41,43:211 (1:10 41:50)))\r\n",
    b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("%" &ZeVnLIqe-/*) RETURN (CHILDREN STATUS '
    b"(MESSAGES UNSEEN))\r\n",
    b"a STORE 1:3 (UNCHANGEDSINCE 7) -FLAGS.SILENT (\\Seen \\Deleted)\r\n",
    b'a ID ("name" "x" "version" NIL)\r\n',
    b"a CREATE &AKM-/x (USE (\\Sent))\r\n",
    b"a UID MOVE 1:* Trash\r\n",
    b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b'a SETQUOTA "" (STORAGE 512)\r\n',
]
TOKENS = [b" ", b"(", b")", b"{", b"}", b"{5}\r\n", b"{0+}\r\n", b"\r\n", b"\"", b"\\", b"*",
          b"%", b"&", b"-", b"[", b"]", b"<", b">", b".", b":", b",", b"NIL", b"0",
          b"4294967296", b"99999999999999999999999", b"\x00", b"\xff", b"NOT ", b"OR ", b"UID ",
          b"BODY[", b"HEADER.FIELDS ", b"&2D0-"]  # fmt: skip


def parse_or_refuse(data: bytes) -> None:
    try:
        request = p.parse_command(data)
    except p.ParseError as e:
        assert e.reason and "\n" not in e.reason and "\r" not in e.reason
        assert e.status in ("BAD", "NO")
        r.error_response(e)
    else:
        assert isinstance(request.command, p.Command)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_refuse(data: bytes) -> None:
    parse_or_refuse(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["delete", "insert", "token", "flip", "truncate"]))
        if op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=2000, deadline=None)
@given(mutated())
def test_mutated_commands_parse_or_refuse(data: bytes) -> None:
    parse_or_refuse(data)


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(mutated(), st.binary(max_size=300)).flatmap(
        lambda data: st.tuples(st.just(data), st.lists(st.integers(1, 40), max_size=20))
    )
)
def test_reader_frames_anything_with_bounded_work(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    reader = p.CommandReader(max_line=64, max_literal=32, max_append=48, max_command=200)
    chunks: list[bytes] = []
    pos = 0
    for size in cuts:
        chunks.append(data[pos : pos + size])
        pos += size
    chunks.append(data[pos:])
    steps = 0
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            steps += 1
            assert steps <= 2 * len(data) + 2 * len(chunks) + 10, "the reader is not progressing"
            event = reader.next_event()
            if isinstance(event, p.NeedMore):
                break
            if isinstance(event, p.CommandReady):
                assert len(event.data) <= 200
                parse_or_refuse(event.data)
            elif isinstance(event, p.ReadError):
                r.error_response(event.error)
                if event.error.fatal:
                    return
    assert len(reader._buf) <= 64 + 1


@pytest.mark.parametrize("wire", VALID)
def test_valid_corpus_parses_through_the_reader(wire: bytes) -> None:
    got = [e for e in events(p.CommandReader(), wire) if not isinstance(e, p.SendContinuation)]
    assert len(got) == 1 and isinstance(got[0], p.CommandReady)
    assert p.parse_command(got[0].data).tag == "a"
