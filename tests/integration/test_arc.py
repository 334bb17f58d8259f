"""ARC (RFC 8617) against a real DNS server on loopback, and end to end through the MX listener:
chains sealed here with dkimpy's ``arc_sign`` (RSA keys made for the test, published in a
DNSTestServer zone), checked through tidings.dns; a trusted sealer's passing chain lets mail
that fails DMARC in (RFC 8617 §7.2, RFC 7489 §7.2 "forwarded")."""

from __future__ import annotations

import base64
import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).parents[1]))

from dnsserver import DNSTestServer
from helpers import TidingsServer, add_users, stored_messages, write_config
from tidings.dns import Resolver
from tidings.mailauth.arc import Result, verify_chain
from tidings.mailauth.dmarc import Policy
from tidings.mailauth.spf import Result as SPF
from tidings.mailauth.spf import SPFResult
from tidings.mailauth.verdict import judge

ALICE = "alice@example.org"
KEYS = {
    d: rsa.generate_private_key(65537, 2048)
    for d in ("origin.example", "forwarder.example", "list.example", "slow.example")
}


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def key_record(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


ZONE = {
    # The author's domain: only 192.0.2.99 may send for it, and failing mail is to be refused.
    "origin.example": [("TXT", "v=spf1 ip4:192.0.2.99 -all")],
    "_dmarc.origin.example": [("TXT", "v=DMARC1; p=reject")],
    "sel._domainkey.origin.example": [("TXT", key_record(KEYS["origin.example"]))],
    "arc._domainkey.forwarder.example": [("TXT", key_record(KEYS["forwarder.example"]))],
    "arc._domainkey.list.example": [("TXT", key_record(KEYS["list.example"]))],
    "arc._domainkey.slow.example": [("TIMEOUT", None)],
}

ORIGINAL = (
    b"From: Author <author@origin.example>\r\nTo: alice@example.org\r\n"
    b"Subject: forwarded\r\nMessage-ID: <1@origin.example>\r\n\r\nHello from the author.\r\n"
)


def authored() -> bytes:
    """The author's message, DKIM-signed by origin.example (DMARC-aligned)."""
    sig = dkim.sign(
        ORIGINAL, b"sel", b"origin.example", pem(KEYS["origin.example"]),
        include_headers=[b"from", b"to", b"subject", b"message-id"],
    )  # fmt: skip
    return bytes(sig) + ORIGINAL


def forward(message: bytes, sealer: str, *, arc: str | None = None, footer: bool = True) -> bytes:
    """``sealer`` receives ``message``, records its verdict, appends its footer (breaking the
    author's DKIM body hash) and seals the result with a new ARC set."""
    verdict = f"Authentication-Results: {sealer}; spf=pass smtp.mailfrom=origin.example"
    verdict += "; dkim=pass header.d=origin.example; dmarc=pass header.from=origin.example"
    if arc is not None:
        verdict += f"; arc={arc}"
    message = verdict.encode() + b"\r\n" + message
    if footer:
        message += f"-- \r\nSent through {sealer}\r\n".encode()
    selector, domain = b"arc", sealer.encode()
    fields = dkim.arc_sign(message, selector, domain, pem(KEYS[sealer]), domain)
    assert fields, "dkimpy sealed nothing"
    return b"".join(fields) + message


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with DNSTestServer(ZONE) as server:
        yield server


@pytest.fixture
def resolver(dns_server: DNSTestServer) -> Resolver:
    return Resolver([dns_server.address], timeout=2.0)


# -- verification through tidings.dns -------------------------------------------------------------


async def test_one_and_two_hop_chains_pass(resolver: Resolver) -> None:
    one = forward(authored(), "list.example")
    result = await verify_chain(resolver, one, remote_ip="192.0.2.5")
    assert (result.result, result.sealers, result.oldest_pass) == (
        Result.PASS, ("list.example",), 0,
    ), result.comment  # fmt: skip
    two = forward(one, "forwarder.example", arc="pass", footer=False)
    result = await verify_chain(resolver, two)
    assert result.result is Result.PASS, result.comment
    assert result.sealers == ("list.example", "forwarder.example") and result.instances == 2


async def test_altered_after_the_last_seal_fails(resolver: Resolver) -> None:
    sealed = forward(authored(), "forwarder.example")
    result = await verify_chain(resolver, sealed.replace(b"Hello", b"Jello"))
    assert result.result is Result.FAIL and not result.temperror


async def test_broken_chain_fails(resolver: Resolver) -> None:
    one = forward(authored(), "list.example")
    two = forward(one, "forwarder.example", arc="pass", footer=False)
    # Instance 1's seal claimed to have seen nothing wrong, then a line of it is lost.
    broken = two.replace(b"ARC-Seal: i=1; cv=none", b"ARC-Seal: i=1; cv=pass")
    assert broken != two
    assert (await verify_chain(resolver, broken)).result is Result.FAIL


async def test_no_arc_headers_is_none(resolver: Resolver, dns_server: DNSTestServer) -> None:
    before = len(dns_server.queries)
    result = await verify_chain(resolver, authored(), remote_ip="192.0.2.5")
    assert result.result is Result.NONE
    assert result.auth_results() == "arc=none smtp.remote-ip=192.0.2.5"
    assert len(dns_server.queries) == before, "no DNS work for a message without ARC"


async def test_seal_key_temperror_fails_and_is_not_forgiven(resolver: Resolver) -> None:
    """A seal whose key cannot be fetched (SERVFAIL): the chain fails, marked temperror. The
    verdict does not override DMARC on it; for a trusted sealer it asks for a retry (451)."""
    sealed = forward(authored(), "slow.example")
    result = await verify_chain(resolver, sealed)
    assert result.result is Result.FAIL and result.temperror
    spf = SPFResult(SPF.FAIL, "origin.example", "author@origin.example", "127.0.0.1")
    verdict = await judge(resolver, sealed, spf, authserv_id="mx.test")
    assert verdict.refusal is not None and verdict.refusal.startswith("550 5.7.1")
    verdict = await judge(
        resolver, sealed, spf, authserv_id="mx.test", trusted_arc_sealers=["slow.example"]
    )
    assert verdict.refusal is not None and verdict.refusal.startswith("451 4.7.5"), verdict


async def test_judge_overrides_dmarc_only_for_a_trusted_sealer(resolver: Resolver) -> None:
    sealed = forward(authored(), "forwarder.example")
    spf = SPFResult(SPF.FAIL, "origin.example", "author@origin.example", "127.0.0.1")
    untrusted = await judge(
        resolver, sealed, spf, authserv_id="mx.test", trusted_arc_sealers=["list.example"]
    )
    assert untrusted.disposition is Policy.REJECT and untrusted.refusal is not None
    trusted = await judge(
        resolver, sealed, spf, authserv_id="mx.test", trusted_arc_sealers=["Forwarder.Example."]
    )
    assert (trusted.disposition, trusted.refusal) == (Policy.NONE, None)
    header = b" ".join(trusted.header.split())
    assert b"dmarc=fail (p=reject dis=none" in header, header
    assert b"override=forwarded, ARC sealed by trusted forwarder.example" in header
    assert b"arc=pass (i=1 sealed by forwarder.example)" in header
    assert b"smtp.remote-ip=127.0.0.1" in header
    # A broken chain from the trusted sealer is not forgiven.
    altered = await judge(
        resolver, sealed.replace(b"Hello", b"Jello"), spf, authserv_id="mx.test",
        trusted_arc_sealers=["forwarder.example"],
    )  # fmt: skip
    assert altered.disposition is Policy.REJECT and b"arc=fail" in altered.header


# -- end to end: the real server --------------------------------------------------------------


def send(server: TidingsServer, msg: bytes) -> tuple[int, bytes]:
    """The forwarder relays the message with its envelope unchanged, from 127.0.0.1, which
    origin.example's SPF does not list."""
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("forwarder.example")
        client.mail("author@origin.example")
        assert client.rcpt(ALICE)[0] == 250
        return client.data(msg)


def arc_server(
    tmp_path: Path, db_url: str, dns: DNSTestServer, sealers: list[str]
) -> TidingsServer:
    tmp_path.mkdir()
    config = write_config(
        tmp_path,
        db_url,
        dns={"nameservers": [dns.address], "timeout": 1.0},
        mailauth={"trusted_networks": [], "trusted_arc_sealers": sealers},
    )
    return TidingsServer(config).start()


async def test_forwarded_mail_is_delivered_only_through_a_trusted_sealer(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    await add_users(db_url, ALICE)
    forwarded = forward(authored(), "forwarder.example")

    server = arc_server(tmp_path / "untrusting", db_url, dns_server, [])
    try:
        code, reply = send(server, forwarded)
        assert (code, reply[:5]) == (550, b"5.7.1"), reply
        assert b"DMARC policy for origin.example" in reply
    finally:
        server.stop()
    assert await stored_messages(db_url, ALICE) == []

    server = arc_server(tmp_path / "trusting", db_url, dns_server, ["forwarder.example"])
    try:
        code, reply = send(server, forwarded)
        assert code == 250, reply
    finally:
        server.stop()
    (inbox,) = await stored_messages(db_url, ALICE)
    header = b" ".join(inbox[: inbox.index(b"\r\nReceived: ")].split()).decode()
    assert header.startswith("Authentication-Results: mx.tidings.test;"), header
    for verdict in ("spf=fail", "dkim=fail", "dmarc=fail", "override=forwarded", "arc=pass"):
        assert verdict in header, header
    assert inbox.endswith(b"Sent through forwarder.example\r\n")
    assert await stored_messages(db_url, ALICE, "Junk") == []
