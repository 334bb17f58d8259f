"""``tidings dns records`` and ``tidings dns check`` run as a user runs them, against a real DNS
server on loopback.

The zone is built from what ``dns records --json`` prints, so "publish what it says, and the
check passes" is tested end to end. Tests that only read DNS run on SQLite (the store holds
nothing but the domain); the DKIM test writes key rows, so it runs on both backends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.reversename
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from dnsserver import DNSTestServer
from helpers import add_domain, tidings, write_config

DOMAIN = "tidings.test"
HOST = "mx.tidings.test"  # write_config's server.hostname
HOST_V4 = "192.0.2.25"
HOST_V6 = "2001:db8::25"


def reverse(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


@pytest.fixture
def dns_server() -> Iterator[DNSTestServer]:
    with DNSTestServer() as server:
        yield server


def make_config(tmp_path: Path, db_url: str, server: DNSTestServer) -> Path:
    asyncio.run(add_domain(db_url, DOMAIN))
    return write_config(tmp_path, db_url, dns={"nameservers": [server.address], "timeout": 2.0})


@pytest.fixture
def config(tmp_path: Path, dns_server: DNSTestServer) -> Path:
    return make_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'tidings.db'}", dns_server)


def records(config: Path) -> list[dict[str, Any]]:
    result = tidings(config, "dns", "records", DOMAIN, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["domain"], data["hostname"]) == (DOMAIN, HOST)
    return list(data["records"])


def zone_for(recs: list[dict[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    """The zone an admin gets by publishing every record, plus the host's A/AAAA and PTRs."""
    zone: dict[str, list[tuple[str, Any]]] = {
        HOST: [("A", HOST_V4), ("AAAA", HOST_V6)],
        reverse(HOST_V4): [("PTR", HOST)],
        reverse(HOST_V6): [("PTR", HOST)],
    }
    for r in recs:
        value: Any = r["value"]
        if r["type"] == "MX":
            preference, host = value.split()
            value = (int(preference), host)
        elif r["type"] == "SRV":
            priority, weight, port, target = value.split()
            value = (int(priority), int(weight), int(port), target)
        zone.setdefault(r["name"].rstrip("."), []).append((r["type"], value))
    return zone


def check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return tidings(config, "dns", "check", DOMAIN, *extra)


def line_of(stdout: str, label: str) -> str:
    for line in stdout.splitlines():
        if line.split(None, 1)[1].startswith(label + " "):
            return line
    raise AssertionError(f"no line for {label!r} in:\n{stdout}")


def test_published_records_pass(config: Path, dns_server: DNSTestServer) -> None:
    dns_server.set_zone(zone_for(records(config)))
    result = check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    *lines, summary = result.stdout.splitlines()
    assert all(line.startswith("OK ") for line in lines), result.stdout
    for label in ("MX", "SPF", "DMARC", "MTA-STS", "TLS-RPT", "SRV submissions", "autoconfig"):
        line_of(result.stdout, label)
    assert line_of(result.stdout, f"reverse DNS {HOST_V4}")
    assert line_of(result.stdout, f"reverse DNS {HOST_V6}")
    assert summary == f"{DOMAIN}: all 6 required OK"


def test_missing_spf_and_differing_dmarc_fail(config: Path, dns_server: DNSTestServer) -> None:
    zone = zone_for(records(config))
    zone[DOMAIN] = [r for r in zone[DOMAIN] if r[0] != "TXT"]
    zone[f"_dmarc.{DOMAIN}"] = [("TXT", "v=DMARC1; p=none")]
    zone[f"_mta-sts.{DOMAIN}"] = []  # a recommended record missing does not fail the check
    dns_server.set_zone(zone)
    result = check(config)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"tidings: {DOMAIN}: 2 of 6 required wrong (SPF, DMARC); 1 recommended missing or different"
    ]
    assert line_of(result.stdout, "SPF").startswith("missing ")
    dmarc = line_of(result.stdout, "DMARC")
    assert dmarc.startswith("differs ")
    assert 'found "v=DMARC1; p=none"' in dmarc
    assert line_of(result.stdout, "MTA-STS").startswith("missing ")
    assert "(recommended)" in line_of(result.stdout, "MTA-STS")


def test_other_spf_that_authorises_the_host_is_not_an_error(
    config: Path, dns_server: DNSTestServer
) -> None:
    zone = zone_for(records(config))
    zone[DOMAIN] = [r for r in zone[DOMAIN] if r[0] != "TXT"] + [("TXT", "v=spf1 mx ~all")]
    dns_server.set_zone(zone)
    result = check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    spf = line_of(result.stdout, "SPF")
    assert spf.startswith("differs ") and "still authorises" in spf


def test_spf_that_does_not_authorise_the_host_fails(
    config: Path, dns_server: DNSTestServer
) -> None:
    zone = zone_for(records(config))
    zone[DOMAIN] = [r for r in zone[DOMAIN] if r[0] != "TXT"] + [
        ("TXT", "v=spf1 ip4:10.0.0.1 -all")
    ]
    dns_server.set_zone(zone)
    result = check(config)
    assert result.returncode == 1
    assert f"SPF gives fail for {HOST_V4}" in line_of(result.stdout, "SPF")


def test_reverse_dns_mismatch_reported(config: Path, dns_server: DNSTestServer) -> None:
    zone = zone_for(records(config))
    zone[reverse(HOST_V4)] = [("PTR", "dsl-192-0-2-25.isp.example")]
    del zone[reverse(HOST_V6)]
    dns_server.set_zone(zone)
    result = check(config)
    assert result.returncode == 1
    v4 = line_of(result.stdout, f"reverse DNS {HOST_V4}")
    assert v4.startswith("differs ")
    assert "dsl-192-0-2-25.isp.example" in v4 and "forward-confirmed" in v4
    assert line_of(result.stdout, f"reverse DNS {HOST_V6}").startswith("missing ")
    assert "reverse DNS" in result.stderr


def test_mx_host_that_does_not_resolve_reported(config: Path, dns_server: DNSTestServer) -> None:
    zone = zone_for(records(config))
    zone[DOMAIN].append(("MX", (20, "backup.tidings.test")))
    dns_server.set_zone(zone)
    result = check(config)
    assert result.returncode == 1
    assert line_of(result.stdout, "MX").startswith("OK ")  # the server's host is there
    backup = line_of(result.stdout, "MX host backup.tidings.test")
    assert backup.startswith("missing ") and "no A or AAAA" in backup
    assert "MX host backup.tidings.test" in result.stderr


def test_check_json(config: Path, dns_server: DNSTestServer) -> None:
    zone = zone_for(records(config))
    del zone[f"autoconfig.{DOMAIN}"]
    dns_server.set_zone(zone)
    result = check(config, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert (data["domain"], data["hostname"]) == (DOMAIN, HOST)
    by_label = {r["label"]: r for r in data["results"]}
    assert by_label["MX"]["status"] == "OK"
    assert by_label["MX"]["found"] == [f"10 {HOST}."]
    assert by_label["autoconfig"] == {
        "label": "autoconfig",
        "name": f"autoconfig.{DOMAIN}",
        "type": "CNAME",
        "required": False,
        "status": "missing",
        "failed": False,
        "expected": f"{HOST}.",
        "found": [],
        "detail": f"expected CNAME {HOST}.",
    }
    assert by_label["host address"]["found"] == [HOST_V4, HOST_V6]


def test_unreachable_resolver_is_an_error_not_missing(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'tidings.db'}"
    asyncio.run(add_domain(db_url, DOMAIN))
    # Nothing listens on the discard port: every lookup times out.
    config = write_config(tmp_path, db_url, dns={"nameservers": ["127.0.0.1:9"], "timeout": 0.3})
    result = check(config)
    assert result.returncode == 1
    assert line_of(result.stdout, "MX").startswith("error ")
    assert "timed out" in line_of(result.stdout, "MX")


def test_unknown_domain(config: Path) -> None:
    for action in ("records", "check"):
        result = tidings(config, "dns", action, "nope.test")
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "tidings: unknown domain 'nope.test' (add it with `tidings domain add`)"
        ]


def private_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


async def insert_dkim_keys(db_url: str, keys: dict[str, tuple[str, str]]) -> None:
    from sqlalchemy import insert, select

    from tidings.store.accounts import now
    from tidings.store.db import Store
    from tidings.store.models import DkimKey, Domain

    store = await Store.open(db_url, migrate=False)
    try:
        async with store.write() as conn:
            domain_id = await conn.scalar(select(Domain.id).where(Domain.name == DOMAIN))
            for selector, (algorithm, pem) in keys.items():
                await conn.execute(
                    insert(DkimKey).values(
                        domain_id=domain_id,
                        selector=selector,
                        algorithm=algorithm,
                        private_key=pem,
                        created_at=now(),
                    )
                )
    finally:
        await store.close()


def test_dkim_records_from_the_store(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    config = make_config(tmp_path, db_url, dns_server)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    asyncio.run(
        insert_dkim_keys(
            db_url,
            {
                "rsa1": ("rsa-sha256", private_pem(rsa_key)),
                "ed1": ("ed25519-sha256", private_pem(ed_key)),
            },
        )
    )
    recs = records(config)
    dkim = {r["label"]: r for r in recs if r["label"].startswith("DKIM")}
    assert set(dkim) == {"DKIM rsa1", "DKIM ed1"}
    assert dkim["DKIM rsa1"]["name"] == f"rsa1._domainkey.{DOMAIN}."
    assert dkim["DKIM rsa1"]["required"] is True
    assert dkim["DKIM rsa1"]["value"].startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    assert dkim["DKIM ed1"]["value"].startswith("v=DKIM1; k=ed25519; p=")
    # The 2048-bit key's record is over 255 octets: two strings in the zone-file text.
    assert dkim["DKIM rsa1"]["zone"].count('" "') == 1

    text = tidings(config, "dns", "records", DOMAIN)
    assert text.returncode == 0
    assert dkim["DKIM ed1"]["zone"] in text.stdout.splitlines()

    zone = zone_for(recs)
    dns_server.set_zone(zone)
    result = check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert line_of(result.stdout, "DKIM rsa1").startswith("OK ")

    # Another key published under the selector: the record differs, and it is required.
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    public = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    zone[f"ed1._domainkey.{DOMAIN}"] = [("TXT", f"v=DKIM1; p={base64.b64encode(public).decode()}")]
    dns_server.set_zone(zone)
    result = check(config)
    assert result.returncode == 1
    assert line_of(result.stdout, "DKIM ed1").startswith("differs ")
    assert "DKIM ed1" in result.stderr
