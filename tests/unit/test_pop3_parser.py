"""The POP3 command parser and response framing: tables of lines, and random bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.pop3 import parser as p
from tidings.pop3.responses import (
    dot_stuff,
    err,
    message_response,
    multiline,
    normalize_line_ends,
    ok,
    top_of,
    unique_id,
)

GOOD = [
    (b"USER alice@example.org\r\n", p.User("alice@example.org")),
    (b"user Alice\r\n", p.User("Alice")),
    (b"PASS secret\r\n", p.Pass("secret")),
    (b"PASS  two  spaces \r\n", p.Pass(" two  spaces ")),  # the rest of the line, as it is
    (b"pass p\xc3\xa4ss\r\n", p.Pass("päss")),
    (b"STAT\r\n", p.Stat()),
    (b"stat\n", p.Stat()),  # a bare LF ends a line too
    (b"LIST\r\n", p.List()),
    (b"LIST 3\r\n", p.List(3)),
    (b"RETR 1\r\n", p.Retr(1)),
    (b"RETR 0\r\n", p.Retr(0)),  # a number; "no such message" is the session's answer
    (b"DELE 12\r\n", p.Dele(12)),
    (b"NOOP\r\n", p.Noop()),
    (b"RSET\r\n", p.Rset()),
    (b"QUIT\r\n", p.Quit()),
    (b"Top 1 0\r\n", p.Top(1, 0)),
    (b"TOP 2 10\r\n", p.Top(2, 10)),
    (b"UIDL\r\n", p.Uidl()),
    (b"UIDL 7\r\n", p.Uidl(7)),
    (b"CAPA\r\n", p.Capa()),
    (b"STLS\r\n", p.Stls()),
    (b"AUTH\r\n", p.Auth(None)),
    (b"AUTH plain\r\n", p.Auth("PLAIN")),
    (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", p.Auth("PLAIN", "AGFsaWNlAHNlY3JldA==")),
    (b"AUTH PLAIN =\r\n", p.Auth("PLAIN", "=")),
    (b"AUTH LOGIN\r\n", p.Auth("LOGIN")),
    (b"AUTH SCRAM-SHA-256\r\n", p.Auth("SCRAM-SHA-256")),
    (b"STAT", p.Stat()),  # without a line end (the session strips it)
]

BAD = [
    (b"\r\n", "Empty command"),
    (b"XYZZY\r\n", "Unknown command: XYZZY"),
    (b"APOP alice 0123456789abcdef\r\n", "Unknown command: APOP"),
    (b"RETR\r\n", "Syntax: RETR msg"),
    (b"RETR 1 2\r\n", "Syntax: RETR msg"),
    (b"RETR -1\r\n", "Invalid message number"),
    (b"RETR +1\r\n", "Invalid message number"),
    (b"RETR one\r\n", "Invalid message number"),
    (b"RETR \xd9\xa1\r\n", "Invalid message number"),  # Arabic-Indic digit one
    (b"RETR 99999999999\r\n", "Invalid message number"),
    (b"RETR  1\r\n", "single spaces"),
    (b"RETR 1 \r\n", "single spaces"),
    (b"TOP 1\r\n", "Syntax: TOP msg n"),
    (b"TOP 1 -1\r\n", "Invalid message number"),
    (b"DELE\r\n", "Syntax: DELE msg"),
    (b"LIST 1 2\r\n", "Syntax: LIST [msg]"),
    (b"UIDL x\r\n", "Invalid message number"),
    (b"STAT 1\r\n", "Syntax: STAT"),
    (b"QUIT now\r\n", "Syntax: QUIT"),
    (b"USER\r\n", "Syntax: USER name"),
    (b"USER a b\r\n", "Syntax: USER name"),
    (b"PASS\r\n", "PASS needs a password"),
    (b"PASS \r\n", "PASS needs a password"),
    (b"AUTH PLAIN a b\r\n", "Syntax: AUTH"),
    (b"AUTH PL@IN\r\n", "Invalid mechanism name"),
    (b"STAT\0\r\n", "Control characters"),
    (b"ST\rAT\r\n", "Control characters"),
    (b"STAT \xff\r\n", "not UTF-8"),
    (b"NOOP " + b"x" * 600 + b"\r\n", "Line too long"),
]


@pytest.mark.parametrize(("line", "command"), GOOD, ids=[repr(g[0]) for g in GOOD])
def test_parse_good(line: bytes, command: p.Command) -> None:
    assert p.parse_command(line) == command


@pytest.mark.parametrize(("line", "reason"), BAD, ids=[repr(b[0][:30]) for b in BAD])
def test_parse_bad(line: bytes, reason: str) -> None:
    with pytest.raises(p.ParseError) as info:
        p.parse_command(line)
    assert reason in str(info.value)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_longest_accepted_line() -> None:
    line = b"PASS " + b"x" * (p.MAX_COMMAND_LINE - 7) + b"\r\n"
    assert len(line) == p.MAX_COMMAND_LINE
    assert p.parse_command(line) == p.Pass("x" * (p.MAX_COMMAND_LINE - 7))
    with pytest.raises(p.ParseError, match="Line too long"):
        p.parse_command(b"PASS x" + line[5:])


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_parse_or_fail_cleanly(line: bytes) -> None:
    try:
        command = p.parse_command(line)
    except p.ParseError as e:
        assert str(e) and "\n" not in str(e) and "\r" not in str(e)
        err(str(e))  # the reason can always be sent
    else:
        assert isinstance(command, p.Command)


KEYWORDS = ["USER", "PASS", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP",
            "UIDL", "CAPA", "STLS", "AUTH", "XYZ"]  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from(KEYWORDS),
    st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=12), max_size=3),
)
def test_keywords_with_random_arguments(keyword: str, args: list[str]) -> None:
    line = " ".join([keyword, *args]).encode("utf-8", "surrogatepass") + b"\r\n"
    try:
        command = p.parse_command(line)
    except p.ParseError:
        return
    assert type(command).__name__.upper() == keyword


# --- responses -----------------------------------------------------------------------------------

STUFFING = [
    (b"", b""),
    (b"a\r\nb\r\n", b"a\r\nb\r\n"),
    (b".\r\n", b"..\r\n"),
    (b".a\r\n..b\r\nc.\r\n", b"..a\r\n...b\r\nc.\r\n"),
    (b"x\r\n.\r\n.\r\n", b"x\r\n..\r\n..\r\n"),
]


@pytest.mark.parametrize(("message", "stuffed"), STUFFING)
def test_dot_stuff(message: bytes, stuffed: bytes) -> None:
    assert dot_stuff(message) == stuffed


def unstuff(response: bytes) -> bytes:
    """What a client does: drop the status line and terminator, remove one leading dot."""
    _status, _, rest = response.partition(b"\r\n")
    assert rest.endswith(b"\r\n.\r\n") or rest == b".\r\n"
    body = rest[: -len(b".\r\n")]
    lines = body.split(b"\r\n")[:-1]
    for line in lines:
        assert line != b".", "a lone dot inside the message would end it early"
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.sampled_from([b".", b"..", b"a", b".a", b"", b"\r", b" .", b"x.y"]), max_size=20)
)
def test_framing_round_trips(lines: list[bytes]) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    normalized = normalize_line_ends(message)
    response = message_response(ok("n octets"), normalized)
    assert unstuff(response) == normalized


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_any_stored_bytes_frame_safely(message: bytes) -> None:
    normalized = normalize_line_ends(message)
    assert normalized == b"" or normalized.endswith(b"\r\n")
    assert normalized.count(b"\n") == normalized.count(b"\r\n") == normalized.count(b"\r")
    assert unstuff(message_response(ok(), normalized)) == normalized


def test_normalize_line_ends() -> None:
    assert normalize_line_ends(b"a\r\nb\r\n") == b"a\r\nb\r\n"
    assert normalize_line_ends(b"a\nb") == b"a\r\nb\r\n"
    assert normalize_line_ends(b"a\n.\nb\r\n") == b"a\r\n.\r\nb\r\n"
    assert normalize_line_ends(b"a\rb\r\n") == b"a\r\nb\r\n"
    assert normalize_line_ends(b"no end") == b"no end\r\n"


TOP = b"Subject: x\r\nFrom: y\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"


@pytest.mark.parametrize(
    ("message", "lines", "expected"),
    [
        (TOP, 0, b"Subject: x\r\nFrom: y\r\n\r\n"),
        (TOP, 1, b"Subject: x\r\nFrom: y\r\n\r\nline 1\r\n"),
        (TOP, 3, TOP),
        (TOP, 100, TOP),
        (b"Subject: only a header\r\n", 5, b"Subject: only a header\r\n"),
        (b"S: x\r\n\r\n\r\n\r\nz\r\n", 2, b"S: x\r\n\r\n\r\n\r\n"),
    ],
)
def test_top_of(message: bytes, lines: int, expected: bytes) -> None:
    assert top_of(message, lines) == expected


def test_status_lines() -> None:
    assert ok() == b"+OK\r\n"
    assert ok("2 320") == b"+OK 2 320\r\n"
    assert err("locked", "IN-USE") == b"-ERR [IN-USE] locked\r\n"
    assert multiline(ok("x"), ["1 2", "3 4"]) == b"+OK x\r\n1 2\r\n3 4\r\n.\r\n"
    assert multiline(ok("x"), []) == b"+OK x\r\n.\r\n"


def test_unique_id_is_printable_and_short() -> None:
    uid = unique_id(0xFFFFFFFF, 0xFFFFFFFF)
    assert uid == "4294967295.4294967295"
    assert 1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)
