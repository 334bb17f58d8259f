"""Outgoing DKIM signatures (tidings.mailauth.signing), checked by verifiers that are not ours:
dkimpy's ``verify`` with the key record ``dnsrecords.dkim_txt`` builds, Tidings' own port-25
verifier, and a strict one below that hashes exactly the fields h= names."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import parse_tag_value
from hypothesis import given
from hypothesis import strategies as st

from tidings.dnsrecords import dkim_txt
from tidings.mailauth.dkim import Result, prepare, verify_prepared
from tidings.mailauth.signing import (
    SigningError,
    SigningKey,
    generate_private_key,
    load_signing_key,
    relaxed_body,
    sign_message,
)

DOMAIN = "example.com"
NOW = 1_795_463_890
MESSAGE = (
    b"Received: from client by submission; Thu, 20 Nov 2025 09:12:44 +0100\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>,\r\n"
    b"  carol@example.org\r\n"
    b"Subject: The minutes\r\n"
    b"Date: Thu, 20 Nov 2025 09:12:44 +0100\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: Test 1.0\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"here are the minutes.\r\n"
)


@pytest.fixture(scope="module")
def pems() -> dict[str, str]:
    """One stored key of each type, under selectors named after them."""
    return {"rsa": generate_private_key("rsa"), "ed25519": generate_private_key("ed25519")}


@pytest.fixture(scope="module")
def keys(pems: dict[str, str]) -> dict[str, SigningKey]:
    return {kind: load_signing_key(DOMAIN, f"sel-{kind}", kind, pem) for kind, pem in pems.items()}


@pytest.fixture(scope="module")
def dnsfunc(pems: dict[str, str]) -> Callable[..., bytes]:
    """dkimpy's DNS hook: the record ``tidings dns records`` would tell the admin to publish."""
    records = {f"sel-{kind}._domainkey.{DOMAIN}.": dkim_txt(pem) for kind, pem in pems.items()}

    def lookup(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name.decode(), "").encode()

    return lookup


def signed(message: bytes, *keys: SigningKey) -> bytes:
    return sign_message(message, keys, now=NOW) + message


def dkimpy_verdicts(message: bytes, dnsfunc: Callable[..., bytes]) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of ``message``, top first."""
    verifier = dkim.DKIM(message)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return [_dkimpy_verdict(verifier, i, dnsfunc) for i in range(count)]


def _dkimpy_verdict(verifier: dkim.DKIM, index: int, dnsfunc: Callable[..., bytes]) -> bool:
    try:
        return bool(verifier.verify(idx=index, dnsfunc=dnsfunc))
    except dkim.DKIMException:  # a body hash mismatch is raised, not returned
        return False


def signature_tags(message: bytes, index: int = 0) -> dict[bytes, bytes]:
    headers, _ = dkim.rfc822_parse(message)
    values = [v for n, v in headers if n.lower() == b"dkim-signature"]
    return dict(parse_tag_value(values[index]))


def h_list(message: bytes, index: int = 0) -> list[str]:
    value = signature_tags(message, index)[b"h"].decode()
    return [name.strip() for name in value.split(":")]


def verify_as_h_says(message: bytes, public_key: rsa.RSAPublicKey) -> bool:
    """An RSA verifier that hashes exactly the fields h= names (§5.4.2, §6.1.3) and nothing
    more. dkimpy (and Tidings' own verifier) also hash one From beyond h=, which would hide
    a signer that forgets to over-sign; this one shows what h= alone protects."""
    headers, body = dkim.rfc822_parse(message)
    sig_header = next((n, v) for n, v in headers if n.lower() == b"dkim-signature")
    tags = parse_tag_value(sig_header[1])
    policy = CanonicalizationPolicy.from_c_value(tags[b"c"])
    body_hash = hashlib.sha256(policy.canonicalize_body(body)).digest()
    if base64.b64encode(body_hash) != tags[b"bh"]:
        return False
    include = [n.strip().lower() for n in re.split(rb":", tags[b"h"])]
    digest = hashlib.sha256()
    dkim.hash_headers(
        digest, policy, policy.canonicalize_headers(headers), include, sig_header, tags
    )
    signature = base64.b64decode(re.sub(rb"\s+", b"", tags[b"b"]))
    try:
        public_key.verify(
            signature, digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True


def public_rsa(key: SigningKey) -> rsa.RSAPublicKey:
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    return key.private_key.public_key()


# --- signatures that verify ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_signature_verifies_with_dkimpy(
    kind: str, keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    message = signed(MESSAGE, keys[kind])
    assert dkimpy_verdicts(message, dnsfunc) == [True]
    tags = signature_tags(message)
    assert tags[b"a"] == {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}[kind]
    assert tags[b"c"] == b"relaxed/relaxed"
    assert (tags[b"d"], tags[b"s"], tags[b"t"]) == (
        DOMAIN.encode(),
        f"sel-{kind}".encode(),
        b"%d" % NOW,
    )
    assert b"l" not in tags  # §8.2: a body length would let anyone append text
    assert b"x" not in tags


def test_dual_signature_gives_two_valid_signatures(
    keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes], pems: dict[str, str]
) -> None:
    fields = sign_message(MESSAGE, [keys["ed25519"], keys["rsa"]], now=NOW)
    assert fields.count(b"DKIM-Signature:") == 2
    message = fields + MESSAGE
    assert dkimpy_verdicts(message, dnsfunc) == [True, True]
    # RSA first, whatever order the keys came in: verifiers that read one signature know it.
    assert [signature_tags(message, i)[b"a"] for i in (0, 1)] == [b"rsa-sha256", b"ed25519-sha256"]

    # The port-25 verifier agrees.
    work = prepare(message, now=NOW)
    records = [[dkim_txt(pems[kind]).encode()] for kind in ("rsa", "ed25519")]
    results = verify_prepared(work, records)
    assert [r.result for r in results] == [Result.PASS, Result.PASS]
    assert [r.algorithm for r in results] == ["rsa-sha256", "ed25519-sha256"]


def test_fields_are_folded_and_end_in_crlf(keys: dict[str, SigningKey]) -> None:
    fields = sign_message(MESSAGE, [keys["rsa"], keys["ed25519"]], now=NOW)
    assert fields.endswith(b"\r\n")
    lines = fields[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
    assert all(line.startswith((b"DKIM-Signature: ", b"\t")) for line in lines)
    assert b"\n" not in fields.replace(b"\r\n", b"")


def test_no_keys_no_fields() -> None:
    assert sign_message(MESSAGE, []) == b""


# --- what the signature survives and what breaks it -------------------------------------------


def test_relaxed_canonicalization_survives_header_whitespace_changes(
    keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    message = signed(MESSAGE, keys["rsa"], keys["ed25519"])
    relayed = (
        message.replace(b"Subject: The minutes", b"subject:   The \t minutes   ")
        .replace(b"To: Bob <bob@example.org>,\r\n  carol", b"TO: Bob <bob@example.org>, carol")
        .replace(b"Date: Thu, 20 Nov 2025", b"Date: Thu,\r\n 20 Nov 2025")
    )
    assert relayed != message
    assert dkimpy_verdicts(relayed, dnsfunc) == [True, True]
    # ... and body whitespace: trailing spaces and blank lines at the end (§3.4.4).
    padded = relayed.replace(b"Hello Bob,\r\n", b"Hello  Bob, \t\r\n") + b"\r\n\r\n"
    assert dkimpy_verdicts(padded, dnsfunc) == [True, True]


def test_body_altered_after_signing_fails(
    keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    message = signed(MESSAGE, keys["rsa"], keys["ed25519"])
    assert dkimpy_verdicts(message.replace(b"the minutes", b"the money"), dnsfunc) == [False] * 2
    appended = message + b"\r\nP.S. wire the money to me\r\n"
    assert dkimpy_verdicts(appended, dnsfunc) == [False, False]


def test_signed_header_altered_fails(
    keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    message = signed(MESSAGE, keys["rsa"], keys["ed25519"])
    altered = message.replace(b"Subject: The minutes", b"Subject: Urgent payment")
    assert dkimpy_verdicts(altered, dnsfunc) == [False, False]


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_added_from_breaks_the_signature(
    where: str, keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    message = signed(MESSAGE, keys["rsa"], keys["ed25519"])
    # h= names From once more than the message has it (§8.15)...
    names = h_list(message)
    assert names.count("from") == 2
    forged = b"From: Mallory <boss@example.com>\r\n"
    if where == "top":
        tampered = forged + message
    else:
        tampered = message.replace(b"X-Mailer: Test 1.0\r\n", b"X-Mailer: Test 1.0\r\n" + forged)
    assert dkimpy_verdicts(tampered, dnsfunc) == [False, False]
    # ... which is what breaks it even for a verifier that hashes only what h= says.
    assert verify_as_h_says(message, public_rsa(keys["rsa"]))
    assert not verify_as_h_says(tampered, public_rsa(keys["rsa"]))


def test_added_subject_breaks_the_signature(keys: dict[str, SigningKey]) -> None:
    """The other fields a message has at most once are over-signed too (§8.15)."""
    message = signed(MESSAGE, keys["rsa"])
    tampered = b"Subject: Urgent: new bank details\r\n" + message
    assert verify_as_h_says(message, public_rsa(keys["rsa"]))
    assert not verify_as_h_says(tampered, public_rsa(keys["rsa"]))


def test_added_unsigned_field_keeps_the_signature(
    keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    """Relays add trace fields, lists add theirs: absent fields are not in h=, so they can."""
    message = signed(MESSAGE, keys["rsa"], keys["ed25519"])
    relayed = b"Received: by mx.example.org\r\nList-Id: <team.example.org>\r\n" + message
    assert dkimpy_verdicts(relayed, dnsfunc) == [True, True]


# --- h= -----------------------------------------------------------------------------------------


def test_h_lists_present_fields_and_oversigned_ones_once_more(keys: dict[str, SigningKey]) -> None:
    message = signed(MESSAGE, keys["ed25519"])
    present = ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]
    assert h_list(message) == present + present
    # Fields not in the message are not in h=, and neither are trace or unlisted fields.
    for absent in ("reply-to", "cc", "in-reply-to", "references", "list-id", "sender"):
        assert absent not in h_list(message)
    for unsigned in ("received", "x-mailer", "dkim-signature"):
        assert unsigned not in h_list(message)


def test_h_names_repeated_fields_once_per_occurrence(
    keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    """§5.4.2: a field present twice is named twice; one that may repeat legitimately (the
    Resent-* block of each resending) is not over-signed, so a later resender can add one."""
    resent = b"Resent-To: x@example.net\r\nResent-To: y@example.net\r\nReply-To: r@example.com\r\n"
    message = signed(resent + MESSAGE, keys["rsa"])
    names = h_list(message)
    assert names.count("resent-to") == 2
    assert names.count("reply-to") == 2  # once present, once over-signed
    assert dkimpy_verdicts(message, dnsfunc) == [True]
    again = b"Resent-To: z@example.net\r\n" + message
    assert dkimpy_verdicts(again, dnsfunc) == [True]


def test_bcc_is_never_signed(keys: dict[str, SigningKey]) -> None:
    """Bcc is removed from, or differs between, the recipients' copies."""
    message = signed(b"Bcc: hidden@example.net\r\n" + MESSAGE, keys["rsa"])
    assert "bcc" not in h_list(message)


# --- bad input ----------------------------------------------------------------------------------


def test_message_without_from_is_refused(keys: dict[str, SigningKey]) -> None:
    with pytest.raises(SigningError, match="From"):
        sign_message(b"To: b@example.org\r\nSubject: s\r\n\r\nbody\r\n", [keys["rsa"]])


def test_unreadable_header_is_refused(keys: dict[str, SigningKey]) -> None:
    with pytest.raises(SigningError):
        sign_message(b"From: a@example.com\r\nthis is not a header\r\n\r\nbody\r\n", [keys["rsa"]])


def test_load_signing_key_checks_the_pem(pems: dict[str, str]) -> None:
    with pytest.raises(SigningError, match="cannot read"):
        load_signing_key(DOMAIN, "s", "rsa", "-----BEGIN PRIVATE KEY-----\nbroken\n")
    with pytest.raises(SigningError, match="not an rsa key"):
        load_signing_key(DOMAIN, "s", "rsa", pems["ed25519"])
    with pytest.raises(SigningError, match="unknown DKIM key algorithm"):
        load_signing_key(DOMAIN, "s", "dsa", pems["rsa"])
    with pytest.raises(SigningError, match="not a DNS name"):
        load_signing_key(DOMAIN, "s; b=", "rsa", pems["rsa"])
    with pytest.raises(SigningError, match="512 bits is too short"):  # RFC 8301 §3.2
        load_signing_key(DOMAIN, "s", "rsa", short_rsa_pem(512))


def short_rsa_pem(bits: int) -> str:
    """An RSA key shorter than ``cryptography`` will generate, built from its primes (a
    stored key may still be one: an admin can write any row)."""

    def prime(size: int) -> int:
        while True:
            n = secrets.randbits(size) | (3 << (size - 2)) | 1  # p·q has all the bits
            if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
                return n

    e = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(e, phi) == 1:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    )  # fmt: skip
    return (
        numbers.private_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def test_load_signing_key_accepts_signature_algorithm_names_and_caches(
    pems: dict[str, str],
) -> None:
    first = load_signing_key("Example.COM.", "s", "ed25519-sha256", pems["ed25519"])
    second = load_signing_key(DOMAIN, "t", "ed25519", pems["ed25519"])
    assert (first.domain, first.algorithm, first.signature_algorithm) == (
        DOMAIN, "ed25519", "ed25519-sha256",
    )  # fmt: skip
    assert first.private_key is second.private_key  # parsed once
    assert isinstance(first.private_key, ed25519.Ed25519PrivateKey)


def test_generated_keys_are_pkcs8_of_the_right_size(pems: dict[str, str]) -> None:
    rsa_key = serialization.load_pem_private_key(pems["rsa"].encode(), password=None)
    assert pems["rsa"].startswith("-----BEGIN PRIVATE KEY-----")
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert dkim_txt(pems["ed25519"]).startswith("v=DKIM1; k=ed25519; p=")


# --- threads and canonicalisation ---------------------------------------------------------------


def test_signing_from_many_threads(
    keys: dict[str, SigningKey], dnsfunc: Callable[..., bytes]
) -> None:
    def sign_one(i: int) -> bytes:
        message = MESSAGE.replace(b"<m1@", b"<m%d@" % i).replace(b"minutes", b"minutes %d" % i)
        return signed(message, keys["rsa"], keys["ed25519"])

    with ThreadPoolExecutor(8) as pool:
        messages = list(pool.map(sign_one, range(64)))
    assert all(dkimpy_verdicts(m, dnsfunc) == [True, True] for m in messages)


LINES = st.lists(st.text(alphabet="ab \t", max_size=8), max_size=8)


@given(lines=LINES, end=st.sampled_from(["", "\r\n", "\r\n\r\n", " \r\n \r\n", "\t"]))
def test_relaxed_body_is_dkimpys(lines: list[str], end: str) -> None:
    """The shortcut past dkimpy's whitespace passes gives the bytes those passes give."""
    body = ("\r\n".join(lines) + end).encode()
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    assert relaxed_body(body) == relaxed.canonicalize_body(body)
