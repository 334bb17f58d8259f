"""The DKIM helper steps of tidings.mailauth.canonical give dkimpy's bytes, on a generated corpus.

Each helper replaces a step dkimpy runs with regular expressions (RFC 6376 §3.4 canonicalisation,
§3.7 the b= value removed, the message split into fields and body); dkimpy stays the reference,
so every test here compares with dkimpy's own function on the same input, errors included.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tidings.mailauth import canonical
from tidings.mailauth.dkim import (
    KeyLookup,
    Result,
    Signature,
    canonical_body,
    check_signature,
    prepare,
    signed_header_bytes,
    verify_prepared,
)

# Pieces chosen to hit every branch of dkimpy's patterns: WSP runs, every line ending and lone
# CR/LF, folding, tag separators, base64 characters, colons and mbox "From " lines.
_PIECES = [
    b" ", b"\t", b"  ", b" \t ", b"\r", b"\n", b"\r\n", b"\r\n ", b"\r\n\t", b"\r\n\r\n",
    b"a", b"Z", b"9", b"+", b"/", b"=", b";", b":", b"b=", b" b=", b";b =", b"bh=", b"x",
    b"From ", b"Subject:", b"\x00", b"\x0b", b"\x0c", b"\x7f", b"\xc3\xa9", b"text words",
]  # fmt: skip
chunks = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)
_NAMES = [b"From", b"To", b"Subject", b"DKIM-Signature", b"X-A", b"from", b"X b", b""]
_VALUES = [b" a@example.com", b"\tvalue", b" two  words\t", b"", b" folded\r\n next", b"x:y"]


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Header-shaped lines (with now and then a malformed one), then maybe a body."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["field", "field", "field", "continuation", "chunk"]))
        if kind == "field":
            line = draw(st.sampled_from(_NAMES)) + b":" + draw(st.sampled_from(_VALUES))
        elif kind == "continuation":
            line = draw(st.sampled_from([b" ", b"\t"])) + draw(chunks)
        else:
            line = draw(chunks)
        lines.append(line + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])))
    body = draw(st.none() | chunks)
    if body is None:
        return b"".join(lines)
    return b"".join(lines) + draw(st.sampled_from([b"\r\n", b"\n"])) + body


def outcome(function: Callable[[bytes], object], value: bytes) -> tuple[object, ...]:
    """What ``function`` gives for ``value``, or the type and text of what it raises."""
    try:
        return ("value", function(value))
    except Exception as e:  # comparing errors too: the verdict's comment quotes them
        return ("error", type(e), str(e))


@given(messages() | chunks)
@example(b"From: a\r\n\r\nbody\r\n")
@example(b"\r\nbody only\r\n")
@example(b"From: a\r\nno colon here\r\n\r\n")
@example(b" continuation first\r\n\r\n")
@example(b"From: a\r\n\r\nbare\nLF\r\n")
@example(b"From mbox line\r\nTo: b\r\n\r\n")
def test_split_message_is_rfc822_parse(message: bytes) -> None:
    assert outcome(canonical.split_message, message) == outcome(dkim.rfc822_parse, message)


@given(st.lists(st.sampled_from([b"ab\r\n", b"\r\n", b"\n", b"\r", b"x"]), max_size=30))
def test_bare_lf_is_found_across_pieces(parts: list[bytes]) -> None:
    message = b"".join(parts)
    expected = message.replace(b"\r\n", b"").count(b"\n") > 0
    original = canonical._PIECE
    for piece in (1, 2, 3, 7):
        canonical._PIECE = piece
        try:
            assert canonical._has_bare_lf(message) is expected
        finally:
            canonical._PIECE = original


@st.composite
def signature_values(draw: st.DrawFn) -> bytes:
    """DKIM-Signature (or ARC) values: tags, FWS, a b= in odd places, a CRLF at the end."""
    tags = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from([b"v", b"a", b"b", b"bh", b"d", b"z", b" b", b"\r\n b"]))
        eq = draw(st.sampled_from([b"=", b" =", b"\r\n =", b"= ", b"=\r\n\t"]))
        tags.append(name + eq + draw(chunks))
    value = draw(st.sampled_from([b";", b"; ", b";\r\n "])).join(tags)
    return draw(st.sampled_from([b"", b" "])) + value + draw(st.sampled_from([b"", b"\r\n", b"\n"]))


@given(signature_values() | chunks)
@example(b" v=1; b=abc\r\n def=; bh=xyz\r\n")
@example(b" b=ab \r\n")
@example(b"b=ab")
def test_b_value_removal_is_dkimpy_s(value: bytes) -> None:
    assert canonical.without_b_value(value) == dkim.RE_BTAG.sub(rb"\1", value)


def _dkimpy_tags(value: bytes) -> dict[bytes, bytes] | type[Exception]:
    try:
        return dkim.util.parse_tag_value(value)  # type: ignore[no-any-return]
    except dkim.util.InvalidTagValueList as e:
        return type(e)


@given(signature_values() | chunks)
@example(b"v=1; a=rsa-sha256;")
@example(b"v=1;; a=x")
@example(b"v=1; v=2")
@example(b"1a=2; b=3")
@example(b"a b=c")
@example(b" ; ")
@example(b"")
def test_tag_lists_read_as_dkimpy_reads_them(value: bytes) -> None:
    try:
        ours: dict[bytes, bytes] | type[Exception] = canonical.parse_tags(value)
    except dkim.util.InvalidTagValueList as e:
        ours = type(e)
    assert ours == _dkimpy_tags(value)


@given(st.sampled_from([*_NAMES, b"X-Name ", b"MiXeD"]), chunks)
def test_relaxed_header_is_dkimpy_s(name: bytes, value: bytes) -> None:
    ((expected_name, expected_value),) = Relaxed.canonicalize_headers([(name, value)])
    assert canonical.relaxed_header(name, value) == (expected_name, expected_value)


@given(chunks | messages())
@example(b"")
@example(b"\r\n")
@example(b" \t\r\n\r\n")
@example(b"a \t b  \r\nc\t\r\n\r\n\r\n")
def test_relaxed_body_is_dkimpy_s(body: bytes) -> None:
    assert canonical.relaxed_body(body) == Relaxed.canonicalize_body(body)


_C_VALUES = [b"relaxed/relaxed", b"simple/simple", b"relaxed/simple", b"simple/relaxed"]


@given(chunks | messages(), st.sampled_from(_C_VALUES), st.integers(1, 40))
def test_canonical_body_in_pieces_is_dkimpy_s(body: bytes, c: bytes, piece: int) -> None:
    from tidings.mailauth import dkim as module

    policy = CanonicalizationPolicy.from_c_value(c)
    original = module.BODY_PIECE
    module.BODY_PIECE = piece
    try:
        assert canonical_body(policy, body) == policy.canonicalize_body(body)
    finally:
        module.BODY_PIECE = original


@given(
    chunks | messages(),
    st.sampled_from(_C_VALUES),
    st.integers(1, 40),
    st.none() | st.integers(0, 300),
)
def test_body_hash_in_pieces_is_dkimpy_s(
    body: bytes, c: bytes, piece: int, limit: int | None
) -> None:
    """The body hash (cut to l=) of a body read through a view, a piece at a time."""
    from tidings.mailauth import dkim as module

    policy = CanonicalizationPolicy.from_c_value(c)
    canonical = policy.canonicalize_body(body)
    expected = hashlib.sha256(canonical if limit is None else canonical[:limit]).digest()
    original = module.BODY_PIECE
    module.BODY_PIECE = piece
    try:
        view = memoryview(b"header\r\n\r\n" + body)[10:]
        assert module._body_digest(policy, view, limit) == (expected, len(canonical))
    finally:
        module.BODY_PIECE = original


class _Collector:
    def __init__(self) -> None:
        self.data = b""

    def update(self, data: bytes) -> None:
        self.data += data


_SIG_FIELD = (
    b" v=1; a=rsa-sha256; d=example.com; s=sel; c={c};\r\n h={h}; bh=YWJj;\r\n"
    b" b=YWJj ZGVm\r\n ZGVm;"
)


@given(
    st.lists(
        st.tuples(st.sampled_from([*_NAMES[:-1], b"Cc", b"TO"]), chunks.map(lambda v: v + b"\r\n")),
        max_size=8,
    ),
    st.lists(st.sampled_from([b"from", b"to", b"subject", b"cc", b"x-a", b"date"]), max_size=6),
    st.sampled_from(_C_VALUES),
)
def test_signed_header_bytes_are_what_dkimpy_hashes(
    fields: list[tuple[bytes, bytes]], signed: list[bytes], c: bytes
) -> None:
    h = b":".join([b"from", *signed])
    field = (b"DKIM-Signature", _SIG_FIELD.replace(b"{c}", c).replace(b"{h}", h))
    sig = check_signature(field, 0)
    assert isinstance(sig, Signature), sig
    headers = [[n, v] for n, v in fields]
    policy = CanonicalizationPolicy.from_c_value(c)
    include = [*sig.signed_headers, b"from"]  # dkimpy's extra From, as its verifier adds
    collector = _Collector()
    dkim.hash_headers(
        collector, policy, policy.canonicalize_headers(headers), include, field, sig.tags
    )
    assert signed_header_bytes(headers, sig) == collector.data


# -- whole signatures: our verdict is dkimpy's ------------------------------------------------


@functools.cache
def _key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


_BODY_LINES = [b"text", b"", b"  spaced  out \t", b"\ttab", b"trailing ", b"a\tb  c", b"."]


@settings(max_examples=60)
@given(
    st.lists(st.sampled_from(_BODY_LINES), max_size=12),
    st.sampled_from([(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")]),
    st.sampled_from([b"", b"  folded\r\n  subject ", b"\tx  y"]),
    st.sampled_from(["none", "body", "header", "whitespace", "append"]),
    st.booleans(),
)
def test_verdicts_agree_with_dkimpy(
    lines: list[bytes],
    canon: tuple[bytes, bytes],
    subject: bytes,
    change: str,
    length: bool,
) -> None:
    pem, record = _key()
    body = b"".join(line + b"\r\n" for line in lines)
    message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject:" + subject + b"\r\n\r\n" + body
    signature = dkim.sign(
        message, b"sel", b"example.com", pem, canonicalize=canon, length=length,
        include_headers=[b"from", b"to", b"subject"],
    )  # fmt: skip
    signed = bytes(signature) + message
    if change == "body":
        signed += b"more\r\n"
    elif change == "header":
        signed = signed.replace(b"To: b@", b"To: c@")
    elif change == "whitespace":
        signed = signed.replace(b"To: b@", b"To:  b@").replace(b"text", b"text ")
    elif change == "append":
        signed += b"\r\n\r\n"
    (ours,) = verify_prepared(prepare(signed), [[record]])
    theirs = dkim.verify(signed, dnsfunc=lambda name, timeout=5: record, minkey=1024)
    if ours.result is Result.POLICY:  # l= left part of the body unsigned; dkimpy passes it
        assert theirs
        return
    assert (ours.result is Result.PASS) == theirs, (ours, change)


def test_a_missing_key_is_not_a_crypto_result() -> None:
    pem, _ = _key()
    message = b"From: a@example.com\r\n\r\nbody\r\n"
    signed = bytes(dkim.sign(message, b"sel", b"example.com", pem)) + message
    (result,) = verify_prepared(prepare(signed), [KeyLookup.NO_KEY])
    assert result.result is Result.PERMERROR


@pytest.mark.parametrize("size", [0, 1, 5000, 300_000])
def test_large_bodies_hash_like_dkimpy(size: int) -> None:
    body = (b"line  with\t spaces \r\n" * (size // 20 + 1))[:size] + b"\r\n\r\n"
    for c in _C_VALUES:
        policy = CanonicalizationPolicy.from_c_value(c)
        assert canonical_body(policy, body) == policy.canonicalize_body(body)


def test_a_long_line_of_whitespace_is_linear() -> None:
    """dkimpy's first relaxed pattern takes time quadratic in a WSP line's length (128 ms for
    8 KB, hours for a megabyte); ours must give its bytes for a megabyte at once."""
    small = b" \t" * 500 + b"x \t\r\n" + b"\t " * 500
    assert canonical.relaxed_body(small) == Relaxed.canonicalize_body(small)
    assert canonical.relaxed_body(b" \t" * 500_000) == b" \r\n"
    assert canonical.relaxed_body(b"x" + b" \t" * 500_000 + b"\r\n") == b"x\r\n"
    name, value = canonical.relaxed_header(b"Subject", b"\t " * 500_000 + b"x")
    assert (name, value) == (b"subject", b"x\r\n")
