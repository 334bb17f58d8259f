"""Authentication-Results (RFC 8601): rendering our header, and removing forged ones that claim
our authserv-id (§5), on arbitrary header blocks too."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.mailauth.dkim import DKIMResult
from tidings.mailauth.dkim import Result as DKIM
from tidings.mailauth.dmarc import DMARCResult, Policy, Result, parse_record
from tidings.mailauth.results import (
    authentication_results,
    authserv_id_of,
    fields_named,
    header_fields,
    split_header,
    strip_authentication_results,
)
from tidings.mailauth.spf import Result as SPF
from tidings.mailauth.spf import SPFResult

OURS = "mx.tidings.test"


def test_render_everything() -> None:
    spf = SPFResult(SPF.PASS, "example.com", "bounce@example.com", "192.0.2.1")
    dkim = [DKIMResult(DKIM.PASS, "example.com", "s1", "ed25519-sha256", "@example.com",
                       "abcdefgh", 256, comment="256-bit ed25519 key")]  # fmt: skip
    dmarc = DMARCResult(Result.PASS, "example.com", "example.com", Policy.REJECT,
                        record=parse_record("v=DMARC1; p=reject"))  # fmt: skip
    header = authentication_results(OURS, spf=spf, dkim=dkim, dmarc=dmarc)
    assert header.startswith(b"Authentication-Results: mx.tidings.test;\r\n\tspf=pass")
    assert header.endswith(b"header.from=example.com\r\n")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert all(line.startswith(b"\t") for line in header.split(b"\r\n")[1:-1])
    (field,), stray = header_fields(header)
    assert not stray and authserv_id_of(field.value) == OURS
    resinfos = [r.strip() for r in field.value.decode().split(";")[1:]]
    assert [r.split("=")[0] for r in resinfos] == ["spf", "dkim", "dmarc"]


def test_render_none_and_unsigned() -> None:
    assert authentication_results(OURS) == b"Authentication-Results: mx.tidings.test; none\r\n"
    assert authentication_results(OURS, dkim=[], linesep=b"\n") == (
        b"Authentication-Results: mx.tidings.test;\n\tdkim=none\n"
    )
    assert authentication_results("odd id") == b'Authentication-Results: "odd id"; none\r\n'


@pytest.mark.parametrize(
    "forged",
    [
        b"Authentication-Results: mx.tidings.test; dkim=pass\r\n",
        b"authentication-results: MX.Tidings.Test.; dkim=pass\r\n",
        b"AUTHENTICATION-RESULTS : mx.tidings.test;\r\n\tdkim=pass\r\n  header.d=bank.example\r\n",
        b"Authentication-Results:\r\n mx.tidings.test; dkim=pass\r\n",
        b"Authentication-Results: (a (nested) comment) mx.tidings.test; spf=pass\r\n",
        b'Authentication-Results: "mx.tidings.test"; spf=pass\r\n',
        b"Authentication-Results: mx.tidings.test 1; spf=pass\r\n",
        b"Authentication-Results: mx.tidings.test\n",
    ],
)
def test_forged_fields_are_removed(forged: bytes) -> None:
    message = (
        b"Received: from x\r\n"
        + forged
        + b"Subject: hi\r\n\r\nAuthentication-Results: "
        + (b"mx.tidings.test; body text stays\r\n")
    )
    stripped = strip_authentication_results(message, OURS)
    assert stripped == (
        b"Received: from x\r\nSubject: hi\r\n\r\nAuthentication-Results: "
        b"mx.tidings.test; body text stays\r\n"
    )


def test_other_verdicts_and_lookalikes_are_kept() -> None:
    header = (
        b"Authentication-Results: upstream.example; spf=pass\r\n"
        b"Authentication-Results: mx.tidings.test.evil.example; dkim=pass\r\n"
        b"Authentication-Results: evilmx.tidings.test; dkim=pass\r\n"
        b"X-Authentication-Results: mx.tidings.test; dkim=pass\r\n"
        b"Subject: mx.tidings.test\r\n"
    )
    assert strip_authentication_results(header, OURS) == header


def test_leading_continuation_lines_are_dropped() -> None:
    # they would continue the header we prepend
    message = b" ; dkim=pass header.d=bank.example\r\n\tmore\r\nSubject: s\r\n\r\nbody"
    assert strip_authentication_results(message, OURS) == b"Subject: s\r\n\r\nbody"


def test_split_header() -> None:
    assert split_header(b"A: 1\r\nB: 2\r\n\r\nbody\r\n") == (b"A: 1\r\nB: 2\r\n", b"\r\nbody\r\n")
    assert split_header(b"A: 1\n\nbody") == (b"A: 1\n", b"\nbody")
    assert split_header(b"A: 1\r\n") == (b"A: 1\r\n", b"")
    assert split_header(b"\r\nbody") == (b"", b"\r\nbody")


# -- property: nothing in, an A-R of ours out ------------------------------------------------------

_ID_SPELLINGS = st.sampled_from(
    [OURS, OURS.upper(), OURS + ".", f'"{OURS}"', f"(c) {OURS}", f"({OURS}) x", "other.test",
     f"{OURS}x", f"\r\n {OURS}", '"mx.tidings\\.test"', ""]
)  # fmt: skip
_NAMES = st.sampled_from(
    ["Authentication-Results", "authentication-results", "AUTHENTICATION-RESULTS ",
     "Subject", "From", "X-Authentication-Results", "Received", "from \t", "FROM", "Fromage"]
)  # fmt: skip
_TEXT = st.text(alphabet=st.sampled_from(list('ab ;=()"\\\t\r\n:.@')), max_size=20)
_LINE_END = st.sampled_from(["\r\n", "\n", "\r", "\r\n ", "\r\n\t", "\n "])


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            parts.append(draw(_TEXT))
        else:
            name = draw(_NAMES)
            value = draw(_ID_SPELLINGS) + draw(_TEXT)
            parts.append(f"{name}:{draw(_LINE_END)}{value}")
        parts.append(draw(_LINE_END))
    return "".join(parts).encode("utf-8")


def _claims_ours(output: bytes) -> bool:
    """An independent reading: any unfolded line naming our id as an A-R's authserv-id."""
    header, _ = split_header(output)
    unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", header)
    for line in re.split(rb"\r\n|\r|\n", unfolded):
        match = re.match(rb"authentication-results[ \t]*:(.*)", line, re.IGNORECASE | re.DOTALL)
        if match and authserv_id_of(match.group(1)) == OURS:
            return True
    return False


@given(header_blocks())
def test_stripping_structured_blocks(block: bytes) -> None:
    for message in (block, block + b"\r\n\r\nbody"):
        out = strip_authentication_results(message, OURS)
        assert not _claims_ours(out)
        fields, _ = header_fields(split_header(out)[0])
        assert not any(
            f.name.lower() == b"authentication-results" and authserv_id_of(f.value) == OURS
            for f in fields
        )
        assert strip_authentication_results(out, OURS) == out  # idempotent
        assert out.endswith(split_header(message)[1])  # the body is untouched


@given(st.binary(max_size=300))
def test_stripping_arbitrary_bytes(block: bytes) -> None:
    out = strip_authentication_results(block, OURS)
    assert not _claims_ours(out)
    assert len(out) <= len(block)


# -- the fast paths give what the general code gives ------------------------------------------


def _split_header_by_regex(message: bytes) -> tuple[bytes, bytes]:
    """split_header as first written: one regular expression."""
    match = re.search(rb"(?:^|\n)(\r?\n)", message)
    if match is None:
        return message, b""
    return message[: match.start(1)], message[match.start(1) :]


_LINES = st.lists(st.sampled_from([b"A: 1", b"", b" x", b"\r", b"\n", b"\r\n", b"b"]), max_size=12)


@given(st.binary(max_size=200) | header_blocks() | _LINES.map(b"".join))
def test_split_header_is_the_regular_expression(message: bytes) -> None:
    assert split_header(message) == _split_header_by_regex(message)


@given(header_blocks(), st.sampled_from([b"", b"\r\n\r\nbody\r\n"]))
def test_nothing_to_strip_is_returned_as_is(block: bytes, body: bytes) -> None:
    message = block + body
    header = split_header(message)[0]
    if b"authentication-results" not in header.lower() and header[:1] not in (b" ", b"\t"):
        assert strip_authentication_results(message, OURS) == message


@given(
    header_blocks() | st.binary(max_size=200),
    st.sampled_from([b"from", b"subject", b"authentication-results"]),
)
def test_fields_named_is_header_fields_filtered(block: bytes, name: bytes) -> None:
    expected = [f for f in header_fields(block)[0] if f.name.lower() == name]
    assert fields_named(block, name) == expected
    crlf = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    expected = [f for f in header_fields(crlf)[0] if f.name.lower() == name]
    assert fields_named(crlf, name) == expected  # the CRLF-only fast path


@given(header_blocks() | st.binary(max_size=200))
def test_unfolded_values_are_the_regular_expression_s(block: bytes) -> None:
    for field in header_fields(block)[0]:
        _, _, value = field.raw.partition(b":")
        assert field.value == re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")
