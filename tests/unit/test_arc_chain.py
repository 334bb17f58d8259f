"""ARC's pure steps (RFC 8617): set structure (§5.2 steps 1-3), chain validation with keys handed
in directly (§5.2 steps 4-7), and the Authentication-Results text (§10.2). Chains are sealed
here with dkimpy's ``arc_sign`` and RSA keys made for the test."""

from __future__ import annotations

import base64
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tidings.mailauth.arc import (
    MAX_INSTANCES,
    ARCResult,
    KeyLookup,
    Result,
    prepare,
    verify_prepared,
)

MESSAGE = (
    b"From: Author <author@origin.example>\r\nTo: list@lists.example\r\n"
    b"Subject: hello\r\nMessage-ID: <1@origin.example>\r\n\r\nThe body.\r\n"
)
KEYS = {d: rsa.generate_private_key(65537, 2048) for d in ("lists.example", "relay.example")}


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def record(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def seal(message: bytes, domain: str, arc: str | None = None) -> bytes:
    """``message`` as ``domain`` forwards it: its own verdict, then a new ARC set on top."""
    verdict = f"Authentication-Results: {domain}; spf=pass smtp.mailfrom=origin.example"
    if arc is not None:
        verdict += f"; arc={arc}"
    message = verdict.encode() + b"\r\n" + message
    fields = dkim.arc_sign(message, b"arc", domain.encode(), pem(KEYS[domain]), domain.encode())
    assert fields, "dkimpy sealed nothing"
    return b"".join(fields) + message


def keys() -> dict[str, list[bytes] | KeyLookup]:
    return {f"arc._domainkey.{d}": [record(k)] for d, k in KEYS.items()}


def verify(message: bytes, found: dict[str, list[bytes] | KeyLookup] | None = None) -> ARCResult:
    prepared = prepare(message, "192.0.2.1")
    return verify_prepared(prepared, keys() if found is None else found, "192.0.2.1")


ONE_HOP = seal(MESSAGE, "lists.example")
TWO_HOPS = seal(ONE_HOP, "relay.example", arc="pass")


def test_no_arc_headers_is_none_without_dns() -> None:
    prepared = prepare(MESSAGE)
    assert prepared.verdict == ARCResult(Result.NONE)
    assert prepared.key_names == ()
    assert verify(MESSAGE).auth_results() == "arc=none smtp.remote-ip=192.0.2.1"


def test_one_hop_passes() -> None:
    prepared = prepare(ONE_HOP)
    assert prepared.verdict is None
    assert prepared.key_names == ("arc._domainkey.lists.example",)
    result = verify(ONE_HOP)
    assert (result.result, result.instances, result.sealers) == (
        Result.PASS, 1, ("lists.example",),
    )  # fmt: skip
    assert result.oldest_pass == 0 and result.latest_sealer == "lists.example"
    assert result.auth_results() == (
        "arc=pass (i=1 sealed by lists.example) header.oldest-pass=0 smtp.remote-ip=192.0.2.1"
    )


def test_two_hops_pass_with_sealers_in_order() -> None:
    result = verify(TWO_HOPS)
    assert result.result is Result.PASS, result.comment
    assert result.sealers == ("lists.example", "relay.example")
    assert result.latest_sealer == "relay.example" and result.instances == 2
    assert result.oldest_pass == 0


def test_changed_after_the_first_seal_reports_oldest_pass() -> None:
    """The second hop altered the body before sealing: its own AMS holds, the first does not,
    so the chain still passes (§5.2) and oldest-pass names instance 2."""
    altered = ONE_HOP.replace(b"The body.", b"The body.\r\n-- \r\nlist footer")
    result = verify(seal(altered, "relay.example", arc="pass"))
    assert result.result is Result.PASS, result.comment
    assert result.oldest_pass == 2
    assert "header.oldest-pass=2" in result.auth_results()


def test_altered_after_the_last_seal_fails() -> None:
    result = verify(TWO_HOPS.replace(b"The body.", b"The b0dy."))
    assert result.result is Result.FAIL
    assert "Message-Signature" in result.comment
    assert result.auth_results().startswith("arc=fail (i=2 sealed by lists.example, relay.example")


def test_seal_over_a_failed_chain_fails() -> None:
    """The second sealer said cv=fail (§5.1.1): nothing the chain carries can be trusted."""
    result = verify(seal(ONE_HOP, "relay.example", arc="fail"))
    assert result.result is Result.FAIL
    assert "cv=fail" in result.comment
    assert prepare(seal(ONE_HOP, "relay.example", arc="fail")).key_names == ()


def test_broken_cv_chain_fails() -> None:
    """Instance 1's seal altered (its cv= rewritten): the seal no longer verifies."""
    broken = re.sub(rb"(ARC-Seal: i=1; )cv=none", rb"\1cv=pass", TWO_HOPS)
    assert broken != TWO_HOPS
    assert verify(broken).result is Result.FAIL


def test_missing_or_duplicated_sets_fail_without_dns() -> None:
    no_aar = re.sub(
        rb"ARC-Authentication-Results: i=1;[^\r]*\r\n(?:[ \t][^\r]*\r\n)*", b"", TWO_HOPS
    )
    prepared = prepare(no_aar)
    assert prepared.verdict is not None and prepared.verdict.result is Result.FAIL
    assert "i=1 is incomplete" in prepared.verdict.comment
    assert prepared.key_names == ()

    top = TWO_HOPS.split(b"ARC-Message-Signature", 1)[0]  # the i=2 ARC-Seal
    doubled = prepare(top + TWO_HOPS)
    assert doubled.verdict is not None and "duplicated" in doubled.verdict.comment


def test_too_many_instances_fail() -> None:
    bumped = re.sub(rb"\bi=2\b", f"i={MAX_INSTANCES + 1}".encode(), TWO_HOPS)
    prepared = prepare(bumped)
    assert prepared.verdict is not None and prepared.verdict.result is Result.FAIL


def test_missing_key_fails() -> None:
    found = keys()
    found["arc._domainkey.relay.example"] = KeyLookup.NO_KEY
    result = verify(TWO_HOPS, found)
    assert result.result is Result.FAIL and not result.temperror


def test_temporary_key_failure_fails_but_says_so() -> None:
    found = keys()
    found["arc._domainkey.relay.example"] = KeyLookup.TEMPERROR
    result = verify(TWO_HOPS, found)
    assert result.result is Result.FAIL and result.temperror
    assert "temporary DNS failure" in result.auth_results()


def test_first_usable_of_several_key_records() -> None:
    found = keys()
    found["arc._domainkey.lists.example"] = [b"v=spf1 -all", record(KEYS["lists.example"])]
    assert verify(ONE_HOP, found).result is Result.PASS


def test_garbage_never_raises() -> None:
    for message in (b"", b"ARC-Seal: i=1; cv=none\r\n\r\n", b"\x00\xff: \r\n\r\n", b"ARC-Seal: x"):
        result = verify(message)
        assert result.result in (Result.NONE, Result.FAIL)


@pytest.mark.parametrize("ip", ["2001:db8::1", "192.0.2.7"])
def test_auth_results_is_valid_rfc8601(ip: str) -> None:
    """authres (the RFC 8601 parser dkimpy uses) reads our resinfo back."""
    authres = pytest.importorskip("authres")
    text = ARCResult(
        Result.FAIL, 2, ("a.example", "b.example"), remote_ip=ip, comment="x (y) \\ z"
    ).auth_results()
    header = authres.AuthenticationResultsHeader.parse(
        f"Authentication-Results: mx.example; {text}"
    )
    (result,) = header.results
    assert (result.method, result.result) == ("arc", "fail")
