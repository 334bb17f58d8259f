"""The fuzz entry points of tidings.fuzz under hypothesis: byte soup, and inputs grown from
valid grammar pieces so that they get past the first check and reach deep code.

Each entry point raises only on an unhandled exception or a broken invariant, so each test
here is just "call it". The long runs are atheris's (``bash bench/fuzz.sh``); these keep every
target exercised on every test run, and the regression tests keep the crashes found fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings import fuzz

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BYTES = st.binary(max_size=400)


@pytest.fixture(autouse=True)
def _quiet_aiosmtpd() -> Iterator[None]:
    """aiosmtpd logs every unrecognised command at WARNING; thousands of inputs make noise."""
    logger = logging.getLogger("mail.log")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def mutated(seeds: list[bytes], tokens: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few deletions, insertions of grammar tokens or bytes, flips, truncation."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 5))):
            at = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["delete", "insert", "token", "token", "flip", "cut"]))
            if op == "delete":
                del data[at : at + draw(st.integers(1, 8))]
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=6))
            elif op == "token":
                data[at:at] = draw(st.sampled_from(tokens))
            elif op == "flip" and at < len(data):
                data[at] = draw(st.integers(0, 255))
            elif op == "cut":
                del data[at:]
        return bytes(data)

    return build()


def joined(pieces: list[bytes], max_size: int = 30) -> st.SearchStrategy[bytes]:
    return st.lists(
        st.one_of(st.sampled_from(pieces), st.binary(max_size=4)), max_size=max_size
    ).map(b"".join)


def run(target: str, data: bytes) -> None:
    """The target on ``data``; an exception of a known issue (tidings.fuzz.KNOWN_ISSUES, each
    held by a strict xfail test below) does not fail the test."""
    fuzz.run_target(target, data)


# --- IMAP ---------------------------------------------------------------------------------------

IMAP_TOKENS = [
    b" ",
    b"(",
    b")",
    b"{",
    b"}",
    b"{5}\r\n",
    b"{0+}\r\n",
    b"{3}\n",
    b"\r\n",
    b'"',
    b"\\",
    b"*",
    b"%",
    b"&",
    b"-",
    b"[",
    b"]",
    b"<",
    b">",
    b".",
    b":",
    b",",
    b"NIL",
    b"0",
    b"4294967296",
    b"99999999999999999999999",
    b"\x00",
    b"\xff",
    b"NOT ",
    b"OR ",
    b"UID ",
    b"BODY[",
    b"HEADER.FIELDS ",
    b"&2D0-",
    b"&AKM-",
    b"a ",
    b"$",
    b"RETURN (",
    b"CHARSET ",
    b"MODSEQ ",
    b"\\Seen",
    b"\\Recent",
    b"1-Jan-2024",
]
IMAP_COMMANDS = [
    b"LOGIN",
    b"SELECT",
    b"EXAMINE",
    b"CREATE",
    b"DELETE",
    b"RENAME",
    b"LIST",
    b"LSUB",
    b"STATUS",
    b"APPEND",
    b"FETCH",
    b"UID FETCH",
    b"STORE",
    b"UID STORE",
    b"SEARCH",
    b"UID SEARCH",
    b"COPY",
    b"MOVE",
    b"UID EXPUNGE",
    b"ID",
    b"ENABLE",
    b"SETQUOTA",
    b"GETQUOTA",
    b"GETQUOTAROOT",
    b"AUTHENTICATE",
]


@st.composite
def imap_commands(draw: st.DrawFn) -> bytes:
    """``tag COMMAND`` and arguments drawn from the tokens of the grammar."""
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(IMAP_COMMANDS))
        args = draw(joined([*IMAP_TOKENS, b"INBOX", b"1:*", b"FLAGS", b"ALL", b"7"], 12))
        lines.append(b"t " + name + b" " + args + b"\r\n")
    return bytes([draw(st.integers(0, 255))]) + b"".join(lines)


@SETTINGS
@given(BYTES)
def test_imap_bytes(data: bytes) -> None:
    run("imap", data)


@settings(SETTINGS, max_examples=600)
@given(mutated(fuzz.SEEDS["imap"], IMAP_TOKENS) | imap_commands())
def test_imap_structured(data: bytes) -> None:
    run("imap", data)


# --- POP3 ---------------------------------------------------------------------------------------

POP3_TOKENS = [
    b" ",
    b"  ",
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\xff",
    b"0",
    b"99999999999",
    b"\xd9\xa1",
    b"\xc2\xb2",
    b"USER ",
    b"PASS ",
    b"AUTH ",
    b"TOP ",
    b"LIST ",
    b"x" * 600,
]


@SETTINGS
@given(BYTES | mutated(fuzz.SEEDS["pop3"], POP3_TOKENS))
def test_pop3(data: bytes) -> None:
    run("pop3", data)


# --- SMTP ---------------------------------------------------------------------------------------

PATH_TOKENS = [
    b"<",
    b">",
    b"@",
    b'"',
    b"\\",
    b".",
    b",",
    b":",
    b"[",
    b"]",
    b" ",
    b"=",
    b"\xff",
    b"\xc3\xa9",
    b"xn--",
    b"-",
    b"+",
    b"%",
    b"@a,@b:",
    b"SIZE=",
    b"BODY=8BITMIME",
    b"SMTPUTF8",
    b"\xe2\x92\x88",
    b"\xef\xbc\x8e",
    b"IPv6:::1",
]


@SETTINGS
@given(BYTES | mutated(fuzz.SEEDS["smtp_path"], PATH_TOKENS))
def test_smtp_path(data: bytes) -> None:
    run("smtp_path", data)


DATA_PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"\r\n.\r\n",
    b"\r\n..\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"x",
    b"Subject: y\r\n",
    b" " * 40,
    b"z" * 300,
]
SMTP_LINES = [
    b"EHLO client.example\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"RCPT TO:<nobody@d.example>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"BDAT 4\r\nabcd",
    b"BDAT 0 LAST\r\n",
    b"BDAT 3 LAST\r\nxyz",
    b"BDAT x\r\n",
    b"VRFY a\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"\r\n",
    b"MAIL FROM:<\xff@x>\r\n",
    b"RCPT TO:<\xc3\xa9@x.example>\r\n",
    b"DATA x\r\n",
]


@st.composite
def smtp_sessions(draw: st.DrawFn) -> bytes:
    """A client stream: greeting, envelope, DATA bodies built from the pieces the end-of-data
    marker is made of, and more commands, pipelined."""
    head = draw(st.integers(0, 255))
    out = [
        b"EHLO client.example\r\n" if head & 1 else b"HELO c\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"RCPT TO:<c@d.example>\r\n",
    ]
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            out.append(b"DATA\r\n" + draw(joined(DATA_PIECES, 20)) + b"\r\n.\r\n")
        else:
            out.append(draw(st.sampled_from(SMTP_LINES)))
    return bytes([head]) + b"".join(out)


@SETTINGS
@given(BYTES)
def test_smtp_session_bytes(data: bytes) -> None:
    run("smtp_session", data)


@settings(SETTINGS, max_examples=400)
@given(smtp_sessions() | mutated(fuzz.SEEDS["smtp_session"], SMTP_LINES + DATA_PIECES))
def test_smtp_session_structured(data: bytes) -> None:
    run("smtp_session", data)


# --- MIME ---------------------------------------------------------------------------------------

MIME_PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b"--",
    b"--b",
    b"--b--",
    b":",
    b" ",
    b"\t",
    b'"',
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b",",
    b";",
    b"=?utf-8?q?",
    b"=?x?b?",
    b"?=",
    b"\xff",
    b"\xc3\xa9",
    b"\x00",
    b"\\",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: message/global\r\n",
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: text/plain; name*0*=utf-8''%C3; name*1*=%A9; x*=\r\n",
    b"Content-Disposition: attachment; filename*=''%ff\r\n",
    b"Content-Language: en, (c) de\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"From: a <b@c>, g: d@e;\r\n",
    b'To: "x\\" y" <@r:u@[1.2.3.4]>\r\n',
    b"Subject: =?utf-8?b?w6k=?=\r\n",
    b"Date: 1 Jan 2000 00:00 +0000\r\n",
    b"Date: 31 Feb 99999 25:61 -9999\r\n",
    b"Message-ID: <x@y>\r\n",
]


@SETTINGS
@given(BYTES | joined(MIME_PIECES, 40) | mutated(fuzz.SEEDS["mime"], MIME_PIECES))
def test_mime(data: bytes) -> None:
    run("mime", data)


# --- SPF ----------------------------------------------------------------------------------------

MACROS = [
    b"%{s}",
    b"%{l}",
    b"%{o}",
    b"%{d}",
    b"%{i}",
    b"%{p}",
    b"%{v}",
    b"%{h}",
    b"%{c}",
    b"%{r}",
    b"%{t}",
    b"%{d2}",
    b"%{ir}",
    b"%{l1r+-}",
    b"%{S}",
    b"%{D0}",
    b"%{x}",
    b"%{d99999999999999999999}",
    b"%%",
    b"%_",
    b"%-",
    b"%",
    b"%{",
    b"}",
    b"%{l.-+,/_=}",
]
SPF_TOKENS = [
    b" ",
    b"  ",
    b"+",
    b"-",
    b"~",
    b"?",
    b"all",
    b"a",
    b"mx",
    b"ptr",
    b"ip4:",
    b"ip6:",
    b"include:",
    b"exists:",
    b"redirect=",
    b"exp=",
    b"x=",
    b":",
    b"/",
    b"//",
    b"/0",
    b"/33",
    b"//129",
    b"192.0.2.1",
    b"::ffff:1.2.3.4",
    b"2001:db8::",
    b".example",
    b".com",
    b".",
    b"\n",
    b"\xff",
    *MACROS,
]


@st.composite
def spf_records(draw: st.DrawFn) -> bytes:
    terms = [b"v=spf1"]
    for _ in range(draw(st.integers(0, 8))):
        qualifier = draw(st.sampled_from([b"", b"+", b"-", b"~", b"?"]))
        kind = draw(
            st.sampled_from(
                [
                    b"all",
                    b"a",
                    b"mx",
                    b"ptr",
                    b"include",
                    b"exists",
                    b"ip4",
                    b"ip6",
                    b"redirect",
                    b"exp",
                    b"v",
                ]
            )
        )
        domain = b"".join(
            draw(
                st.lists(
                    st.sampled_from([*MACROS, b"_spf", b".", b"x", b".example", b".com"]),
                    max_size=5,
                )
            )
        )
        if kind in (b"ip4", b"ip6"):
            arg = b":" + draw(st.sampled_from([b"192.0.2.0", b"2001:db8::", b"1.2.3", b"::"]))
            arg += draw(st.sampled_from([b"", b"/24", b"/0", b"/32", b"/64", b"/129"]))
        elif kind in (b"redirect", b"exp", b"v"):
            qualifier, arg = b"", b"=" + domain
        else:
            arg = (b":" + domain if draw(st.booleans()) else b"") + draw(
                st.sampled_from([b"", b"/24", b"//64", b"/0//0", b"/33"])
            )
        terms.append(qualifier + kind + arg)
    record = b" ".join(terms)
    more = draw(
        st.lists(
            st.sampled_from(
                [
                    b"v=spf1 -all",
                    b"v=spf1 a include:%{d}.x.example",
                    b"%{i} not for %{d}",
                    b"v=spf1 redirect=%{d}",
                ]
            ),
            max_size=3,
        )
    )
    return b"\n".join([record, *more])


@SETTINGS
@given(BYTES | spf_records() | mutated(fuzz.SEEDS["spf_record"], SPF_TOKENS))
def test_spf_record(data: bytes) -> None:
    run("spf_record", data)


@SETTINGS
@given(
    BYTES
    | joined([*MACROS, b".", b"example", b".com", b" ", b"\n", b"a@b.example\n", b"\xff"], 12)
    | mutated(fuzz.SEEDS["spf_macro"], SPF_TOKENS)
)
def test_spf_macro(data: bytes) -> None:
    run("spf_macro", data)


# --- DMARC --------------------------------------------------------------------------------------

DMARC_TOKENS = [
    b";",
    b"=",
    b" ",
    b"\t",
    b",",
    b"!",
    b"v=DMARC1",
    b"p=",
    b"sp=",
    b"rua=",
    b"ruf=",
    b"pct=",
    b"adkim=",
    b"aspf=",
    b"reject",
    b"none",
    b"quarantine",
    b"s",
    b"mailto:a@b.example",
    b"!10m",
    b"100",
    b"101",
    b"\xff",
    b"From: ",
    b"\r\n",
    b"<a@b.example>",
    b"@",
    b".",
    b"(",
    b")",
    b'"',
]


@SETTINGS
@given(BYTES | joined(DMARC_TOKENS, 25) | mutated(fuzz.SEEDS["dmarc"], DMARC_TOKENS))
def test_dmarc(data: bytes) -> None:
    run("dmarc", data)


# --- the seeds, and the crashes the long runs found ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "seed"),
    [(name, seed) for name, seeds in fuzz.SEEDS.items() for seed in seeds],
)
def test_seeds_are_clean(target: str, seed: bytes) -> None:
    fuzz.TARGETS[target](seed)


def test_every_target_has_seeds() -> None:
    assert set(fuzz.SEEDS) == set(fuzz.TARGETS)


def test_invariant_violations_are_raised() -> None:
    with pytest.raises(fuzz.InvariantViolation):
        fuzz._sexp(b"(a")


# Regressions: the first two bugs the SMTP session target found, both fixed in smtp/server.py.


def test_ehlo_name_that_is_not_utf8_gets_501() -> None:
    """It was echoed in the 250, which could not be encoded: a 451 and a traceback."""
    fuzz.smtp_session(b"\x07EHLO \xff\r\nHELO \xfe\r\n")


def test_no_message_after_the_server_closed_the_connection() -> None:
    """After BDAT's syntax error (501 and close) the engine went on through the commands
    pipelined behind it, and a DATA there reached delivery unseen by the client."""
    fuzz.smtp_session(
        b"\x07EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT x\r\n"
        b"DATA\r\nSubject: smuggled\r\n\r\nbody\r\n.\r\n"
    )
    # The same after the guard's 421 for too many errors.
    fuzz.smtp_session(
        b"\x07EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
        + b"RSET x\r\n" * 25
        + b"DATA\r\nx\r\n.\r\n"
    )
    # And after aiosmtpd's own goodbye to a client sending unknown commands.
    fuzz.smtp_session(
        b"\x07EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
        + b"XYZZY\r\n" * 5
        + b"BDAT 5 LAST\r\nhello"
    )
