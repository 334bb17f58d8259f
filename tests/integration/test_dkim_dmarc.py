"""DKIM verification and DMARC evaluation against a real DNS server on loopback: messages are
signed here with dkimpy (RSA 2048, ed25519, and deliberately bad keys and algorithms), their keys
and DMARC records published in a DNSTestServer zone, and checked through tidings.dns."""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).parents[1]))

from dnsserver import DNSTestServer
from tidings.dns import Resolver
from tidings.mailauth.dkim import DKIMResult, Result, verify_message
from tidings.mailauth.dmarc import Policy, check_dmarc, dmarc_disposition
from tidings.mailauth.dmarc import Result as DMARC
from tidings.mailauth.results import (
    authentication_results,
    header_fields,
    is_ours,
    strip_authentication_results,
)
from tidings.mailauth.spf import Result as SPF
from tidings.mailauth.spf import SPFResult

# -- keys and signing ---------------------------------------------------------------------------


def _is_probable_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(24):
        x = pow(random.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        n = random.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if _is_probable_prime(n):
            return n


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key of ``bits`` bits; below 1024 built from primes here, as cryptography will not
    generate such (RFC 8301) keys itself."""
    if bits >= 1024:
        return rsa.generate_private_key(65537, bits)
    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    )
    return numbers.private_key()


def rsa_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def rsa_record(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


class _Signer(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's signer with extra tags (x=, t=) put into the signature before it is signed."""

    def __init__(self, message: bytes, extra: dict[bytes, bytes], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.extra = extra

    def gen_header(self, fields: list[tuple[bytes, bytes]], *args: Any, **kw: Any) -> bytes:
        fields = [(k, self.extra.get(k, v)) for k, v in fields]
        at = [k for k, _ in fields].index(b"bh")
        fields[at:at] = [(k, v) for k, v in self.extra.items() if k not in dict(fields)]
        return super().gen_header(fields, *args, **kw)  # type: ignore[no-any-return]


def sign(
    message: bytes,
    selector: str,
    domain: str,
    key: bytes,
    *,
    algorithm: bytes = b"rsa-sha256",
    canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
    length: bool = False,
    extra: dict[bytes, bytes] | None = None,
) -> bytes:
    """``message`` with a DKIM-Signature prepended."""
    signer = _Signer(message, extra or {}, signature_algorithm=algorithm)
    signature = signer.sign(
        selector.encode(), domain.encode(), key, canonicalize=canon, length=length,
        include_headers=[b"from", b"to", b"subject"],
    )  # fmt: skip
    return bytes(signature) + message


MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@tidings.test\r\n"
    b"Subject: quarterly figures\r\n"
    b"\r\n"
    b"The figures are attached.\r\n"
    b"  With trailing space  \r\n"
)


def message(from_: str = "Alice <alice@example.com>") -> bytes:
    return MESSAGE.replace(b"Alice <alice@example.com>", from_.encode())


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa_key(2048)
        self.rsa_pem = rsa_pem(self.rsa)
        ed = nacl.signing.SigningKey.generate()
        self.ed_private = ed.encode(nacl.encoding.Base64Encoder)
        self.ed_record = "v=DKIM1; k=ed25519; p=" + ed.verify_key.encode(
            nacl.encoding.Base64Encoder
        ).decode("ascii")
        self.small = {bits: rsa_key(bits) for bits in (512, 768)}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def zone(keys: Keys) -> dict[str, list[tuple[str, Any]]]:
    rsa_txt = rsa_record(keys.rsa)
    return {
        "rsa._domainkey.example.com": [("TXT", rsa_txt)],
        "ed._domainkey.example.com": [("TXT", keys.ed_record)],
        "k512._domainkey.example.com": [("TXT", rsa_record(keys.small[512]))],
        "k768._domainkey.example.com": [("TXT", rsa_record(keys.small[768]))],
        "revoked._domainkey.example.com": [("TXT", "v=DKIM1; k=rsa; p=")],
        "slow._domainkey.example.com": [("TIMEOUT", None)],
        "rsa._domainkey.other.example": [("TXT", rsa_txt)],
        "rsa._domainkey.mail.strict.example": [("TXT", rsa_txt)],
        "rsa._domainkey.mail.relaxed.example": [("TXT", rsa_txt)],
        "_dmarc.example.com": [
            ("TXT", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@x.example")
        ],
        "_dmarc.strict.example": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")],
        "_dmarc.relaxed.example": [("TXT", "v=DMARC1; p=reject")],
        "_dmarc.none.example": [("TXT", "v=DMARC1; p=none")],
        "_dmarc.quarantine.example": [("TXT", "v=DMARC1; p=quarantine")],
        "_dmarc.pct0.example": [("TXT", "v=DMARC1; p=reject; pct=0")],
        "_dmarc.half.example": [("TXT", "v=DMARC1; p=quarantine; pct=50")],
        "_dmarc.slowdmarc.example": [("TIMEOUT", None)],
        "_dmarc.two.example": [("TXT", "v=DMARC1; p=reject"), ("TXT", "v=DMARC1; p=none")],
    }


@pytest.fixture(scope="module")
def dns_server(keys: Keys) -> Iterator[DNSTestServer]:
    with DNSTestServer(zone(keys)) as s:
        yield s


@pytest.fixture
def resolver(dns_server: DNSTestServer) -> Resolver:
    return Resolver([dns_server.address], timeout=2.0)


def spf(result: SPF, domain: str) -> SPFResult:
    return SPFResult(result, domain, f"bounce@{domain}", "192.0.2.1")


# -- DKIM ---------------------------------------------------------------------------------------


async def test_rsa_and_ed25519_signatures_pass(resolver: Resolver, keys: Keys) -> None:
    for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")):
        signed = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem, canon=canon)
        (result,) = await verify_message(resolver, signed)
        assert result.result is Result.PASS, (canon, result)
        assert (result.domain, result.selector, result.key_bits) == ("example.com", "rsa", 2048)
        assert result.algorithm == "rsa-sha256"
    signed = sign(MESSAGE, "ed", "example.com", keys.ed_private, algorithm=b"ed25519-sha256")
    (result,) = await verify_message(resolver, signed)
    assert result.result is Result.PASS
    assert result.algorithm == "ed25519-sha256"  # RFC 8463


async def test_unsigned_message_has_no_results(resolver: Resolver) -> None:
    assert await verify_message(resolver, MESSAGE) == ()


async def test_altered_body_or_header_fails(resolver: Resolver, keys: Keys) -> None:
    signed = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem)
    (body,) = await verify_message(resolver, signed.replace(b"attached", b"enclosed"))
    assert body.result is Result.FAIL
    assert "body hash" in body.comment
    (head,) = await verify_message(resolver, signed.replace(b"quarterly", b"annual"))
    assert head.result is Result.FAIL
    # relaxed canonicalisation forgives whitespace changes (RFC 6376 §3.4.4)
    (ws,) = await verify_message(
        resolver, signed.replace(b"  With trailing space  ", b"  With  trailing space")
    )
    assert ws.result is Result.PASS


async def test_missing_or_revoked_key_is_a_permerror(resolver: Resolver, keys: Keys) -> None:
    # RFC 6376 §6.1.2: no key record → PERMFAIL (no key for signature)
    for selector in ("gone", "revoked"):
        signed = sign(MESSAGE, selector, "example.com", keys.rsa_pem)
        (result,) = await verify_message(resolver, signed)
        assert result.result is Result.PERMERROR, selector


async def test_key_lookup_failure_is_a_temperror(resolver: Resolver, keys: Keys) -> None:
    signed = sign(MESSAGE, "slow", "example.com", keys.rsa_pem)
    (result,) = await verify_message(resolver, signed)  # SERVFAIL
    assert result.result is Result.TEMPERROR
    with DNSTestServer(zone(keys), timeouts="drop") as dropping:
        started = time.monotonic()
        quick = Resolver([dropping.address], timeout=0.3)
        (result,) = await verify_message(quick, signed)  # no answer at all
        assert result.result is Result.TEMPERROR
        assert time.monotonic() - started < 3


async def test_rsa_sha1_fails(resolver: Resolver, keys: Keys) -> None:
    signed = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem, algorithm=b"rsa-sha1")
    (result,) = await verify_message(resolver, signed)
    assert result.result is Result.FAIL  # RFC 8301 §3.1
    assert "RFC 8301" in result.comment


@pytest.mark.parametrize("bits", [512, 768])
async def test_short_rsa_keys_fail(resolver: Resolver, keys: Keys, bits: int) -> None:
    signed = sign(MESSAGE, f"k{bits}", "example.com", rsa_pem(keys.small[bits]))
    (result,) = await verify_message(resolver, signed)
    assert result.result is Result.FAIL  # RFC 8301 §3.2
    assert result.key_bits == bits


async def test_expired_signature_fails(resolver: Resolver, keys: Keys) -> None:
    now = int(time.time())
    expired = {b"t": str(now - 86400).encode(), b"x": str(now - 3600).encode()}
    signed = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem, extra=expired)
    (result,) = await verify_message(resolver, signed)
    assert result.result is Result.FAIL
    assert "expired" in result.comment
    valid = {b"t": str(now).encode(), b"x": str(now + 3600).encode()}
    signed = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem, extra=valid)
    assert (await verify_message(resolver, signed))[0].result is Result.PASS
    # the same signature checked two hours later has expired
    (later,) = await verify_message(resolver, signed, now=now + 7200)
    assert later.result is Result.FAIL


async def test_each_of_several_signatures_is_reported(resolver: Resolver, keys: Keys) -> None:
    good = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem)
    tampered = sign(MESSAGE.replace(b"attached", b"enclosed"), "ed", "example.com",
                    keys.ed_private, algorithm=b"ed25519-sha256")  # fmt: skip
    both = tampered[: tampered.index(b"From:")] + good
    first, second = await verify_message(resolver, both)
    assert (first.result, first.selector) == (Result.FAIL, "ed")
    assert (second.result, second.selector) == (Result.PASS, "rsa")
    assert first.header_b != second.header_b and len(first.header_b) >= 8


async def test_body_length_limit_is_suspicious(resolver: Resolver, keys: Keys) -> None:
    signed = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem, length=True)
    (whole,) = await verify_message(resolver, signed)
    assert whole.result is Result.PASS  # l= covers the whole body: nothing unsigned
    assert whole.body_length is not None
    appended = signed + b"Click here: http://phish.example/\r\n"
    (result,) = await verify_message(resolver, appended)
    assert result.result is Result.POLICY
    assert "unsigned" in result.comment
    dmarc = await check_dmarc(resolver, appended, spf=None, dkim=[result])
    assert dmarc.result is DMARC.FAIL  # a policy result is not a pass for DMARC


async def test_verification_does_not_block_the_event_loop(resolver: Resolver, keys: Keys) -> None:
    big = MESSAGE + (b"y" * 998 + b"\r\n") * 4000  # ~4 MB
    signed = sign(big, "rsa", "example.com", keys.rsa_pem, canon=(b"relaxed", b"relaxed"))
    stamps: list[float] = []

    async def ticker() -> None:
        while True:
            stamps.append(time.monotonic())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    (result,) = await verify_message(resolver, signed)
    elapsed = time.monotonic() - started
    task.cancel()
    assert result.result is Result.PASS
    longest_gap = max(b - a for a, b in itertools.pairwise(stamps))
    assert longest_gap < max(0.05, elapsed / 3), (longest_gap, elapsed)


async def test_judge_does_small_messages_on_the_loop(
    resolver: Resolver, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message of a few KB costs less to check than a hand-over to a thread: none is made."""
    from tidings.mailauth import verdict

    async def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a small message went to a thread")

    monkeypatch.setattr(verdict.asyncio, "to_thread", no_thread)
    signed = sign(MESSAGE + b"x" * 5000 + b"\r\n", "rsa", "example.com", keys.rsa_pem)
    result = await verdict.judge(
        resolver, signed, spf(SPF.NONE, "example.com"), authserv_id="mx.tidings.test"
    )
    assert b"dkim=pass" in result.header and b"dmarc=pass" in result.header


async def test_judge_does_not_block_the_loop_on_a_big_message(
    resolver: Resolver, keys: Keys
) -> None:
    from tidings.mailauth import verdict

    big = MESSAGE + (b"y  " * 332 + b"\r\n") * 4000  # ~4 MB, every line with WSP runs
    signed = sign(big, "rsa", "example.com", keys.rsa_pem, canon=(b"relaxed", b"relaxed"))
    stamps: list[float] = []

    async def ticker() -> None:
        while True:
            stamps.append(time.monotonic())
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    result = await verdict.judge(
        resolver, signed, spf(SPF.NONE, "example.com"), authserv_id="mx.tidings.test"
    )
    elapsed = time.monotonic() - started
    task.cancel()
    assert b"dkim=pass" in result.header
    longest_gap = max(b - a for a, b in itertools.pairwise(stamps))
    assert longest_gap < max(0.05, elapsed / 3), (longest_gap, elapsed)


# -- DMARC --------------------------------------------------------------------------------------


async def dkim_for(resolver: Resolver, msg: bytes) -> tuple[DKIMResult, ...]:
    return await verify_message(resolver, msg)


async def test_aligned_dkim_passes_dmarc(resolver: Resolver, keys: Keys) -> None:
    signed = sign(MESSAGE, "rsa", "example.com", keys.rsa_pem)
    result = await check_dmarc(resolver, signed, spf=None, dkim=await dkim_for(resolver, signed))
    assert result.result is DMARC.PASS
    assert result.dkim_aligned and not result.spf_aligned
    assert (result.header_from, result.policy_domain) == ("example.com", "example.com")
    assert result.disposition is Policy.NONE and result.policy is Policy.REJECT


async def test_unaligned_dkim_domain_fails_dmarc(resolver: Resolver, keys: Keys) -> None:
    signed = sign(MESSAGE, "rsa", "other.example", keys.rsa_pem)
    dkim_results = await dkim_for(resolver, signed)
    assert dkim_results[0].result is Result.PASS  # a good signature, by someone else
    result = await check_dmarc(resolver, signed, spf=None, dkim=dkim_results)
    assert result.result is DMARC.FAIL
    assert result.disposition is Policy.REJECT
    assert dmarc_disposition(result) is Policy.REJECT
    assert dmarc_disposition(result, ceiling=Policy.QUARANTINE) is Policy.QUARANTINE
    # an SPF pass for an aligned MAIL FROM domain is enough on its own
    rescued = await check_dmarc(
        resolver, signed, spf=spf(SPF.PASS, "bounces.example.com"), dkim=dkim_results
    )
    assert rescued.result is DMARC.PASS and rescued.spf_aligned


async def test_subdomain_uses_the_organisational_policy(resolver: Resolver) -> None:
    msg = message("news@news.example.com")
    result = await check_dmarc(resolver, msg, spf=spf(SPF.FAIL, "news.example.com"), dkim=())
    assert result.header_from == "news.example.com"
    assert result.policy_domain == "example.com"  # no record at _dmarc.news.example.com
    assert result.policy is Policy.QUARANTINE  # sp=, not p=reject
    assert result.disposition is Policy.QUARANTINE


@pytest.mark.parametrize(
    ("domain", "disposition"),
    [("none.example", Policy.NONE), ("quarantine.example", Policy.QUARANTINE),
     ("relaxed.example", Policy.REJECT)],
)  # fmt: skip
async def test_dispositions(resolver: Resolver, domain: str, disposition: Policy) -> None:
    result = await check_dmarc(resolver, message(f"x@{domain}"), spf=None, dkim=())
    assert result.result is DMARC.FAIL
    assert result.disposition is disposition


async def test_pct_sampling(resolver: Resolver) -> None:
    zero = await check_dmarc(resolver, message("x@pct0.example"), spf=None, dkim=())
    assert zero.policy is Policy.REJECT
    assert zero.disposition is Policy.QUARANTINE and zero.sampled_out  # RFC 7489 §6.6.4
    half = message("x@half.example")
    hit = await check_dmarc(resolver, half, spf=None, dkim=(), rng=lambda: 0.49)
    miss = await check_dmarc(resolver, half, spf=None, dkim=(), rng=lambda: 0.5)
    assert hit.disposition is Policy.QUARANTINE and not hit.sampled_out
    assert miss.disposition is Policy.NONE and miss.sampled_out


async def test_strict_and_relaxed_alignment(resolver: Resolver, keys: Keys) -> None:
    for domain, expected in (("strict.example", DMARC.FAIL), ("relaxed.example", DMARC.PASS)):
        signed = sign(message(f"x@{domain}"), "rsa", f"mail.{domain}", keys.rsa_pem)
        dkim_results = await dkim_for(resolver, signed)
        assert dkim_results[0].result is Result.PASS
        result = await check_dmarc(resolver, signed, spf=spf(SPF.PASS, f"mail.{domain}"),
                                   dkim=dkim_results)  # fmt: skip
        assert result.result is expected, domain


async def test_multiple_from_domains_take_the_strictest(resolver: Resolver, keys: Keys) -> None:
    msg = message("a@none.example, b@relaxed.example")
    result = await check_dmarc(resolver, msg, spf=None, dkim=())
    assert result.header_from == "relaxed.example"
    assert result.disposition is Policy.REJECT
    two_fields = b"From: a@quarantine.example\r\n" + message("b@none.example")
    result = await check_dmarc(resolver, two_fields, spf=None, dkim=())
    assert (result.header_from, result.disposition) == ("quarantine.example", Policy.QUARANTINE)
    same = message("a@relaxed.example, b@RELAXED.example")
    signed = sign(same, "rsa", "mail.relaxed.example", keys.rsa_pem)
    passed = await check_dmarc(resolver, signed, spf=None, dkim=await dkim_for(resolver, signed))
    assert passed.result is DMARC.PASS  # one domain, written twice


async def test_no_from_is_unauthenticatable(resolver: Resolver) -> None:
    msg = b"To: bob@tidings.test\r\nSubject: no author\r\n\r\nhi\r\n"
    result = await check_dmarc(resolver, msg, spf=spf(SPF.PASS, "example.com"), dkim=())
    assert result.result is DMARC.PERMERROR
    assert result.header_from == "" and result.disposition is Policy.NONE
    assert dmarc_disposition(result) is Policy.NONE
    assert dmarc_disposition(result, no_from=Policy.REJECT) is Policy.REJECT
    assert dmarc_disposition(result, no_from=Policy.REJECT, ceiling=Policy.QUARANTINE) is (
        Policy.QUARANTINE
    )


async def test_policy_lookup_errors(resolver: Resolver) -> None:
    unknown = await check_dmarc(resolver, message("x@nowhere.example"), spf=None, dkim=())
    assert unknown.result is DMARC.NONE and unknown.disposition is Policy.NONE
    slow = await check_dmarc(resolver, message("x@slowdmarc.example"), spf=None, dkim=())
    assert slow.result is DMARC.TEMPERROR
    two = await check_dmarc(resolver, message("x@two.example"), spf=None, dkim=())
    assert two.result is DMARC.PERMERROR and two.disposition is Policy.NONE


# -- Authentication-Results end to end ------------------------------------------------------------


async def test_header_replaces_a_forged_verdict(resolver: Resolver, keys: Keys) -> None:
    forged = (
        b"Authentication-Results: MX.Tidings.Test;\r\n\tdkim=pass header.d=example.com\r\n"
        b"Authentication-Results: upstream.example; spf=pass\r\n"
    )
    signed = sign(MESSAGE, "rsa", "other.example", keys.rsa_pem)
    received = forged + signed
    spf_result = spf(SPF.FAIL, "example.com")
    dkim_results = await verify_message(resolver, received)
    dmarc = await check_dmarc(resolver, received, spf=spf_result, dkim=dkim_results)
    header = authentication_results("mx.tidings.test", spf=spf_result, dkim=dkim_results,
                                    dmarc=dmarc)  # fmt: skip
    delivered = header + strip_authentication_results(received, "mx.tidings.test")
    fields, stray = header_fields(delivered.split(b"\r\n\r\n")[0] + b"\r\n")
    ours = [f for f in fields if is_ours(f, "mx.tidings.test")]
    assert len(ours) == 1 and not stray
    text = ours[0].value.decode()
    assert "spf=fail" in text and "dkim=pass" in text and "header.d=other.example" in text
    assert "dmarc=fail (p=reject" in text and "header.from=example.com" in text
    assert b"upstream.example; spf=pass" in delivered  # someone else's verdict is kept
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
