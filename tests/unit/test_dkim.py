"""DKIM's pure steps: signature tag checks (RFC 6376 §3.5, §6.1.1), key record checks
(§3.6.1), verification with keys handed in directly, and the Authentication-Results text."""

from __future__ import annotations

import base64

import dkim
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from tidings.mailauth.dkim import (
    MAX_SIGNATURES,
    DKIMResult,
    KeyLookup,
    Result,
    Signature,
    check_signature,
    prepare,
    verify_prepared,
)

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"
# A fixed "now": test ids are built from it and must be the same in every xdist worker.
NOW = 1_795_463_890.0
B64 = base64.b64encode(b"x" * 32).decode()


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(65537, 1024)  # the smallest RFC 8301 allows: fast to make
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def ed_key() -> tuple[bytes, str]:
    key = nacl.signing.SigningKey.generate()
    public = key.verify_key.encode(nacl.encoding.Base64Encoder).decode()
    return key.encode(nacl.encoding.Base64Encoder), f"v=DKIM1; k=ed25519; p={public}"


def header(tags: str) -> tuple[bytes, bytes]:
    return (b"DKIM-Signature", b" " + tags.encode() + b"\r\n")


def sig(**tags: str) -> str:
    base = {"v": "1", "a": "rsa-sha256", "d": "example.com", "s": "sel", "h": "from:to",
            "bh": B64, "b": B64}  # fmt: skip
    base.update(tags)
    return "; ".join(f"{k}={v}" for k, v in base.items() if v != "-")


@pytest.mark.parametrize(
    ("tags", "result", "why"),
    [
        (sig(), None, ""),
        (sig(a="rsa-sha1"), Result.FAIL, "RFC 8301"),
        (sig(a="hmac-sha3"), Result.NEUTRAL, "unknown algorithm"),
        (sig(v="2"), Result.PERMERROR, "version"),
        (sig(bh="-"), Result.PERMERROR, "bh="),
        (sig(d="-", s="-"), Result.PERMERROR, "d=, s="),
        (sig(h="to:subject"), Result.PERMERROR, "From is not signed"),
        (sig(i="@evil.example"), Result.PERMERROR, "i="),
        (sig(i="user@mail.example.com"), None, ""),
        (sig(i="user@notexample.com"), Result.PERMERROR, "i="),
        (sig(b="not base64!"), Result.PERMERROR, "base64"),
        (sig(l="12x"), Result.PERMERROR, "l="),
        (sig(q="http/well-known"), Result.PERMERROR, "q="),
        (sig(c="fancy/simple"), Result.PERMERROR, "canonicalization"),
        (sig(t=str(int(NOW)), x=str(int(NOW) - 10)), Result.PERMERROR, "x= is before t="),
        (sig(x=str(int(NOW) - 3600)), Result.FAIL, "expired"),
        (sig(x=str(int(NOW) - 60)), None, ""),  # within the allowed clock skew
        (sig(d="exa mple.com"), Result.PERMERROR, "d="),
        ("v=1; a=rsa-sha256; a=rsa-sha256", Result.PERMERROR, "syntax"),
        ("garbage without tags", Result.PERMERROR, "syntax"),
    ],
)
def test_signature_tags(tags: str, result: Result | None, why: str) -> None:
    checked = check_signature(header(tags), NOW)
    if result is None:
        assert isinstance(checked, Signature), checked
        return
    assert isinstance(checked, DKIMResult)
    assert checked.result is result
    assert why in checked.comment


def test_signature_fields() -> None:
    checked = check_signature(header(sig(s="a.b", h="From : To", l="10")), NOW)
    assert isinstance(checked, Signature)
    assert checked.key_name == "a.b._domainkey.example.com"
    assert checked.signed_headers == (b"from", b"to")
    assert checked.identity == "@example.com"
    assert checked.body_length == 10


def test_prepare() -> None:
    assert prepare(MESSAGE).signatures == ()
    many = b"".join(b"DKIM-Signature: " + sig().encode() + b"\r\n" for _ in range(20)) + MESSAGE
    assert len(prepare(many).signatures) == MAX_SIGNATURES
    # a header dkimpy cannot read: every signature is a permerror, none is verified
    broken = b"DKIM-Signature: " + sig().encode() + b"\r\nno colon here\r\n" + MESSAGE
    (only,) = prepare(broken).signatures
    assert isinstance(only, DKIMResult) and only.result is Result.PERMERROR


def signed(key: bytes, algorithm: bytes = b"rsa-sha256", **kw: object) -> bytes:
    d = dkim.DKIM(MESSAGE, signature_algorithm=algorithm)
    return bytes(d.sign(b"sel", b"example.com", key, **kw)) + MESSAGE


def verify(message: bytes, *records: str | KeyLookup) -> DKIMResult:
    """The verdict on ``message``'s one signature, with these key records (or lookup outcome)."""
    first = records[0]
    keys = first if isinstance(first, KeyLookup) else [str(r).encode() for r in records]
    (result,) = verify_prepared(prepare(message), [keys])
    return result


def test_verify_with_keys_given(rsa_key: tuple[bytes, str], ed_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    result = verify(signed(pem), record)
    assert (result.result, result.key_bits) == (Result.PASS, 1024)
    seed, ed_record = ed_key
    assert verify(signed(seed, b"ed25519-sha256"), ed_record).result is Result.PASS
    # the wrong key type for a= (§6.1.2 step 6)
    assert verify(signed(seed, b"ed25519-sha256"), record).result is Result.PERMERROR
    assert verify(signed(pem), "garbage;;").result is Result.PERMERROR
    assert verify(signed(pem), "v=DKIM1; k=rsa; p=").result is Result.PERMERROR  # revoked
    assert verify(signed(pem), "v=DKIM2; " + record[9:]).result is Result.PERMERROR
    assert verify(signed(pem), KeyLookup.NO_KEY).result is Result.PERMERROR
    assert verify(signed(pem), KeyLookup.TEMPERROR).result is Result.TEMPERROR
    # several records: the first usable one is used
    assert verify(signed(pem), "v=spf1 -all", record).result is Result.PASS


def test_key_record_flags(rsa_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    assert verify(signed(pem), record + "; h=sha1").result is Result.PERMERROR  # §3.6.1 h=
    assert verify(signed(pem), record + "; h=sha1:sha256").result is Result.PASS
    sub = signed(pem, identity=b"u@mail.example.com")
    assert verify(sub, record + "; t=s").result is Result.PERMERROR  # §3.6.1 t=s
    assert verify(sub, record).result is Result.PASS
    altered = signed(pem).replace(b"body", b"bodY")
    assert verify(altered, record).result is Result.FAIL
    assert verify(altered, record + "; t=y").result is Result.NEUTRAL  # testing mode


def test_header_b_prefixes_tell_signatures_apart() -> None:
    one = "abcdefgh" + "A" * 40
    two = "abcdefgh" + "B" * 40
    message = b"".join(
        b"DKIM-Signature: " + sig(b=b, a="rsa-sha1").encode() + b"\r\n" for b in (one, two)
    )
    first, second = verify_prepared(prepare(message + MESSAGE), [None, None])
    assert (first.header_b, second.header_b) == ("abcdefghA", "abcdefghB")


def test_auth_results_text() -> None:
    result = DKIMResult(Result.PASS, "example.com", "sel", "rsa-sha256", "@example.com",
                        "abc/def+", 2048, comment="2048-bit rsa key")  # fmt: skip
    assert result.auth_results() == (
        "dkim=pass (2048-bit rsa key) header.d=example.com header.i=@example.com "
        'header.s=sel header.a=rsa-sha256 header.b="abc/def+"'
    )
    # values from a hostile signature cannot break out of the header
    evil = DKIMResult(Result.FAIL, "x.example\r\nX-Evil: 1", 's"el', comment="a)b\r\nc")
    text = evil.auth_results()
    assert "\r" not in text and "\n" not in text
    assert 'header.d="x.exampleX-Evil: 1"' in text and 'header.s="s\\"el"' in text
    assert "(a b c)" in text


_ED = nacl.signing.SigningKey.generate()
_ED_SIGNED = signed(_ED.encode(nacl.encoding.Base64Encoder), b"ed25519-sha256")
_ED_PUBLIC = _ED.verify_key.encode(nacl.encoding.Base64Encoder)


@given(st.binary(max_size=200) | st.builds(lambda b: b"k=ed25519; p=" + b, st.binary(max_size=60)))
def test_any_key_record_gives_a_verdict(record: bytes) -> None:
    (result,) = verify_prepared(prepare(_ED_SIGNED), [[record]])
    assert result.result in (Result.PERMERROR, Result.FAIL, Result.NEUTRAL)
    (good,) = verify_prepared(prepare(_ED_SIGNED), [[record, b"k=ed25519; p=" + _ED_PUBLIC]])
    assert good.result in (Result.PASS, Result.PERMERROR, Result.FAIL, Result.NEUTRAL)


@given(st.binary(max_size=400))
def test_any_signature_field_gives_a_verdict(value: bytes) -> None:
    message = b"DKIM-Signature:" + value.replace(b"\n", b" ") + b"\r\n" + MESSAGE
    results = verify_prepared(prepare(message), [[b"k=ed25519; p=" + _ED_PUBLIC]])
    assert len(results) == 1


@given(
    st.lists(
        st.sampled_from([b"text", b"  ", b"\t", b"a  b\t", b" x ", b"", b"line with words"]),
        max_size=60,
    ),
    st.sampled_from([b"relaxed/relaxed", b"simple/simple", b"relaxed/simple", b"simple/relaxed"]),
    st.integers(min_value=1, max_value=40),
    st.sampled_from([b"", b"tail", b"  ", b"\r\n\r\n"]),
)
def test_canonicalising_in_pieces_gives_the_same_body(
    lines: list[bytes], c: bytes, piece: int, tail: bytes
) -> None:
    from dkim.canonicalization import CanonicalizationPolicy

    from tidings.mailauth import dkim as module

    body = b"".join(line + b"\r\n" for line in lines) + tail
    policy = CanonicalizationPolicy.from_c_value(c)
    original = module.BODY_PIECE
    module.BODY_PIECE = piece
    try:
        assert module.canonical_body(policy, body) == policy.canonicalize_body(body)
    finally:
        module.BODY_PIECE = original
