"""The pure parts of the SMTP engine: enhanced status codes and line-ending checks."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tidings.smtp.server import check_line_endings, with_enhanced_code

# --- with_enhanced_code (RFC 2034 §3, RFC 3463) --------------------------------------------

ADDED = [
    ("250 OK", "250 2.0.0 OK"),
    ("250", "250 2.0.0"),
    ("250-First line", "250-2.0.0 First line"),  # a continuation line keeps its hyphen
    ("221 Bye", "221 2.0.0 Bye"),
    ("251 User not local; will forward", "251 2.1.5 User not local; will forward"),
    ("252 Cannot VRFY", "252 2.5.0 Cannot VRFY"),
    ("421 Service not available", "421 4.3.0 Service not available"),
    ("450 Mailbox busy", "450 4.2.0 Mailbox busy"),
    ("451 Local error", "451 4.3.0 Local error"),
    ("452 Too many recipients", "452 4.3.1 Too many recipients"),
    ("454 TLS not available", "454 4.7.0 TLS not available"),
    ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
    ("501 Syntax: HELO hostname", "501 5.5.4 Syntax: HELO hostname"),
    ("502 Command not implemented", "502 5.5.1 Command not implemented"),
    ("503 Bad sequence", "503 5.5.1 Bad sequence"),
    ("504 Unrecognized authentication type", "504 5.5.4 Unrecognized authentication type"),
    ("530 Authentication required", "530 5.7.0 Authentication required"),
    ("535 Authentication failed", "535 5.7.8 Authentication failed"),
    ("550 No such user", "550 5.0.0 No such user"),
    ("552 Too much mail data", "552 5.3.4 Too much mail data"),
    ("553 Mailbox name not allowed", "553 5.1.3 Mailbox name not allowed"),
    ("554 Transaction failed", "554 5.0.0 Transaction failed"),
    ("555 Parameters not recognised", "555 5.5.4 Parameters not recognised"),
    # Codes without a table entry get the class's generic code.
    ("259 Odd", "259 2.0.0 Odd"),
    ("458 Odd", "458 4.0.0 Odd"),
    ("599 Odd", "599 5.0.0 Odd"),
    # Text that merely looks like a code is not one: a code is class.subject.detail then space.
    ("250 1.2.3 not a class", "250 2.0.0 1.2.3 not a class"),
    ("250 2.0.0x glued", "250 2.0.0 2.0.0x glued"),
    ("250 2.1000.0 detail too long", "250 2.0.0 2.1000.0 detail too long"),
]


@pytest.mark.parametrize(("reply", "expected"), ADDED)
def test_enhanced_code_is_added(reply: str, expected: str) -> None:
    assert with_enhanced_code(reply) == expected


KEPT = [
    # An existing code is kept, even one whose class differs from the reply's.
    "250 2.1.0 Sender OK",
    "250 2.0.0",
    "250-2.0.0 First line",
    "452-4.3.1 Too many recipients",
    "550 5.7.1 Relaying denied",
    "554 5.7.1 Message refused",
    "550 5.6.11 Message contains bare CR or LF",
    "250 4.0.0 mismatched but kept",
    # 3xx replies carry no enhanced code (RFC 3463 defines classes 2, 4 and 5 only).
    "334 VXNlcm5hbWU6",
    "354 End data with <CR><LF>.<CR><LF>",
    # Not a reply at all.
    "",
    "25",
    "abc",
    "OK 250",
    "999 Out of range",
    "150 Informational",
]


@pytest.mark.parametrize("reply", KEPT)
def test_reply_is_left_alone(reply: str) -> None:
    assert with_enhanced_code(reply) == reply


def test_greeting_is_left_alone() -> None:
    # aiosmtpd sends its greeting through push(), which TidingsSMTP runs through this function.
    # RFC 5321 §4.2: Greeting = "220 " (Domain / address-literal) [ SP textstring ]; RFC 2034 §3
    # exempts the initial greeting from enhanced codes.
    greeting = "220 mx.example.org Tidings ESMTP"
    assert with_enhanced_code(greeting) == greeting


_ENHANCED = re.compile(r"^(\d{3})[ -]([245])\.\d{1,3}\.\d{1,3}(?: |$)")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from("245"),
    st.integers(0, 99),
    st.sampled_from([" ", "-"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
)
def test_every_245_reply_ends_up_with_exactly_one_code(
    klass: str, rest: int, sep: str, text: str
) -> None:
    reply = f"{klass}{rest:02d}{sep}{text}"
    assume(not reply.startswith("220"))  # the greeting: see test_greeting_is_left_alone
    once = with_enhanced_code(reply)
    assert _ENHANCED.match(once), once
    assert once[:4] == reply[:4]  # code and separator untouched
    assert with_enhanced_code(once) == once  # idempotent


# --- check_line_endings (RFC 5321 §2.3.8: lines end with CRLF) -----------------------------

REJECT = "550 5.6.11 Message contains bare CR or LF; lines must end with CRLF"

CLEAN = [
    b"",
    b"Subject: hi\r\n\r\nbody\r\n",
    b"no final newline",
    b"\r\n\r\n",
    b"\r\n..\r\n",  # a stuffed dot is not a line-ending problem
    b"8bit \xff\xfe bytes\r\n",
]


@pytest.mark.parametrize("body", CLEAN)
@pytest.mark.parametrize("policy", ["reject", "normalize"])
def test_clean_bodies_pass_unchanged(body: bytes, policy: str) -> None:
    assert check_line_endings(body, policy) == (body, None)


BARE = [
    # (body, the body repaired to CRLF)
    (b"a\nb\r\n", b"a\r\nb\r\n"),  # bare LF
    (b"a\rb\r\n", b"a\r\nb\r\n"),  # bare CR
    (b"a\n", b"a\r\n"),
    (b"\r", b"\r\n"),
    (b"\n", b"\r\n"),
    (b"a\r\r\n", b"a\r\n\r\n"),  # CR before CRLF
    (b"a\n\rb", b"a\r\n\r\nb"),  # LF CR
    (b"\r\n\r", b"\r\n\r\n"),
    # SMTP smuggling (CVE-2023-51764 and friends): an end-of-data marker built with a bare LF
    # or bare CR, hoping a later hop sees the end of the message and a second one after it.
    (b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<a@b.example>\r\n", None),
    (b"Subject: x\r\n\r\nhi\r.\r\nMAIL FROM:<a@b.example>\r\n", None),
    (b"Subject: x\r\n\r\nhi\r\n.\nMAIL FROM:<a@b.example>\r\n", None),
    (b"Subject: x\r\n\r\nhi\r\n.\rMAIL FROM:<a@b.example>\r\n", None),
    (b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<a@b.example>\r\n", None),
    (b"\n.\r\n", b"\r\n.\r\n"),
    (b"\r.\r\n", b"\r\n.\r\n"),
    (b"a\r\n\n.\r\n", b"a\r\n\r\n.\r\n"),
]


@pytest.mark.parametrize(("body", "repaired"), BARE)
def test_bare_line_endings_are_rejected(body: bytes, repaired: bytes | None) -> None:
    assert check_line_endings(body, "reject") == (body, REJECT)


@pytest.mark.parametrize(("body", "repaired"), BARE)
def test_bare_line_endings_are_normalized(body: bytes, repaired: bytes | None) -> None:
    fixed, problem = check_line_endings(body, "normalize")
    assert problem is None
    if repaired is not None:
        assert fixed == repaired
    assert _has_no_bare_cr_or_lf(fixed)
    # Only line endings change: the rest of the bytes is the same, in the same order.
    assert fixed.replace(b"\r", b"").replace(b"\n", b"") == body.replace(b"\r", b"").replace(
        b"\n", b""
    )


def _has_no_bare_cr_or_lf(data: bytes) -> bool:
    without_crlf = data.replace(b"\r\n", b"")
    return b"\r" not in without_crlf and b"\n" not in without_crlf


_LINE_BYTES = st.binary() | st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"\xff"])
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(_LINE_BYTES)
def test_normalize_leaves_no_bare_cr_or_lf(data: bytes) -> None:
    fixed, problem = check_line_endings(data, "normalize")
    assert problem is None
    assert _has_no_bare_cr_or_lf(fixed)
    assert check_line_endings(fixed, "normalize") == (fixed, None)  # idempotent
    assert check_line_endings(fixed, "reject") == (fixed, None)  # and now acceptable


@settings(max_examples=500, deadline=None)
@given(_LINE_BYTES)
def test_reject_refuses_exactly_the_bodies_with_bare_cr_or_lf(data: bytes) -> None:
    body, problem = check_line_endings(data, "reject")
    assert body == data
    assert (problem is None) == _has_no_bare_cr_or_lf(data)
    if problem is not None:
        assert problem.startswith("550 5.6.11 ")
