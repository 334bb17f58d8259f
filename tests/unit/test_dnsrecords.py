"""The records ``tidings dns records`` prints, and the pure parts of ``dns check``."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tidings.dnsrecords import (
    CheckReport,
    DkimKey,
    Finding,
    Record,
    RecordError,
    Status,
    check_json,
    dkim_txt,
    expected_records,
    finding_line,
    has_version,
    is_spf,
    mta_sts_id,
    mta_sts_policy,
    normalise_spf,
    records_json,
    render_zone,
    summary_line,
    tags,
    txt_strings,
    zone_line,
)
from tidings.dnsrecords import Kind as K


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


STS_ID = mta_sts_id(mta_sts_policy("mail.example.org"))


def test_zone_lines_exact() -> None:
    zone = render_zone("Example.org", expected_records("Example.org.", "MAIL.example.org"))
    assert zone.splitlines() == [
        "; DNS records for example.org, from `tidings dns records`",
        "; required",
        "example.org. 3600 IN MX 10 mail.example.org.",
        'example.org. 3600 IN TXT "v=spf1 a:mail.example.org -all"',
        "_dmarc.example.org. 3600 IN TXT "
        '"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"',
        "; recommended",
        f'_mta-sts.example.org. 3600 IN TXT "v=STSv1; id={STS_ID}"',
        "mta-sts.example.org. 3600 IN CNAME mail.example.org.",
        '_smtp._tls.example.org. 3600 IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.org"',
        "_submissions._tcp.example.org. 3600 IN SRV 0 1 465 mail.example.org.",
        "_submission._tcp.example.org. 3600 IN SRV 10 1 587 mail.example.org.",
        "_imaps._tcp.example.org. 3600 IN SRV 0 1 993 mail.example.org.",
        "_imap._tcp.example.org. 3600 IN SRV 10 1 143 mail.example.org.",
        "_pop3s._tcp.example.org. 3600 IN SRV 0 1 995 mail.example.org.",
        "_pop3._tcp.example.org. 3600 IN SRV 10 1 110 mail.example.org.",
        "autoconfig.example.org. 3600 IN CNAME mail.example.org.",
        "autodiscover.example.org. 3600 IN CNAME mail.example.org.",
    ]


def test_required_and_recommended() -> None:
    records = expected_records("example.org", "mail.example.org")
    assert [r.label for r in records if r.required] == ["MX", "SPF", "DMARC"]
    assert all(not r.required for r in records if r.kind in (K.SRV, K.HOST_ALIAS, K.MTA_STS))


def test_idn_domain_is_published_as_a_labels() -> None:
    line = zone_line(expected_records("bücher.example", "mail.bücher.example")[0])
    assert line == "xn--bcher-kva.example. 3600 IN MX 10 mail.xn--bcher-kva.example."


@pytest.mark.parametrize(
    ("length", "sizes"),
    [(0, [0]), (1, [1]), (255, [255]), (256, [255, 1]), (600, [255, 255, 90])],
)
def test_txt_split_at_255_octets(length: int, sizes: list[int]) -> None:
    value = "x" * length
    strings = txt_strings(value)
    assert [len(s) for s in strings] == sizes
    assert b"".join(strings) == value.encode()


def test_txt_split_counts_octets_not_characters() -> None:
    strings = txt_strings("é" * 200)  # 400 octets
    assert [len(s) for s in strings] == [255, 145]


def test_txt_quoting_escapes_quote_and_backslash() -> None:
    record = Record("x", K.SPF, "example.org", "TXT", 'a"b\\c\x01', True, 60)
    assert zone_line(record) == 'example.org. 60 IN TXT "a\\"b\\\\c\\001"'


def test_dkim_rsa_record(rsa_key: rsa.RSAPrivateKey) -> None:
    value = dkim_txt(pem(rsa_key))
    assert value.startswith("v=DKIM1; k=rsa; p=")
    der = base64.b64decode(tags(value)["p"])
    public = serialization.load_der_public_key(der)
    assert public.public_numbers() == rsa_key.public_key().public_numbers()  # type: ignore[union-attr]
    records = expected_records("example.org", "mail.example.org", [DkimKey("s1", pem(rsa_key))])
    dkim = next(r for r in records if r.kind is K.DKIM)
    assert (dkim.name, dkim.required, dkim.label) == ("s1._domainkey.example.org", True, "DKIM s1")
    # A 2048-bit key does not fit one string: two quoted strings that join to the value.
    line = zone_line(dkim)
    prefix = "s1._domainkey.example.org. 3600 IN TXT "
    assert line.startswith(prefix)
    quoted = line[len(prefix) :]
    assert quoted.startswith('"') and quoted.endswith('"')
    parts = quoted[1:-1].split('" "')
    assert [len(p) for p in parts] == [255, len(value) - 255]
    assert "".join(parts) == value


def test_dkim_ed25519_record() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    value = dkim_txt(pem(key))
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(tags(value)["p"])
    assert raw == key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    line = zone_line(Record("d", K.DKIM, "e._domainkey.x.org", "TXT", value, True))
    assert line == f'e._domainkey.x.org. 3600 IN TXT "{value}"'


def test_dkim_unreadable_key() -> None:
    with pytest.raises(RecordError, match="cannot read the private key"):
        dkim_txt("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_mta_sts_id_stable_and_follows_the_policy() -> None:
    policy = mta_sts_policy("mail.example.org")
    assert policy == (
        "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
    )
    assert mta_sts_id(policy) == mta_sts_id(mta_sts_policy("mail.example.org"))
    assert mta_sts_id(policy) != mta_sts_id(mta_sts_policy("mx2.example.org"))
    assert mta_sts_id(policy) != mta_sts_id(mta_sts_policy("mail.example.org", "enforce"))
    assert mta_sts_id(policy).isalnum() and len(mta_sts_id(policy)) <= 32  # RFC 8461 §3.1


def test_records_json_shape() -> None:
    records = expected_records("example.org", "mail.example.org")
    data = json.loads(json.dumps(records_json("example.org", "mail.example.org", records)))
    assert data["domain"] == "example.org"
    assert data["hostname"] == "mail.example.org"
    first = data["records"][0]
    assert first == {
        "label": "MX",
        "name": "example.org.",
        "ttl": 3600,
        "class": "IN",
        "type": "MX",
        "value": "10 mail.example.org.",
        "required": True,
        "zone": "example.org. 3600 IN MX 10 mail.example.org.",
    }
    spf = data["records"][1]
    assert spf["value"] == "v=spf1 a:mail.example.org -all"  # unquoted, joined


def test_comparison_helpers() -> None:
    assert normalise_spf("  v=spf1   A:Mail.Example.org\t-all ") == "v=spf1 a:mail.example.org -all"
    assert tags(" v = DMARC1 ;p=quarantine;  rua = mailto:x@y ; ") == {
        "v": "DMARC1",
        "p": "quarantine",
        "rua": "mailto:x@y",
    }
    assert has_version("v=DMARC1; p=none", "DMARC1")
    assert has_version("V = dmarc1;p=none", "DMARC1")
    assert not has_version("p=none; v=DMARC1", "DMARC1")
    assert is_spf("v=spf1") and is_spf("V=SPF1 -all")
    assert not is_spf("v=spf10 -all") and not is_spf("spf2.0/pra -all")


def finding(status: Status, *, required: bool = True, tolerated: bool = False) -> Finding:
    return Finding("SPF", "example.org", "TXT", required, status, "v=spf1", (), "d", tolerated)


def test_failed_only_for_required_not_ok_not_tolerated() -> None:
    assert not finding(Status.OK).failed
    assert finding(Status.MISSING).failed
    assert finding(Status.ERROR).failed
    assert not finding(Status.DIFFERS, tolerated=True).failed
    assert not finding(Status.MISSING, required=False).failed


def test_check_lines_summary_and_json() -> None:
    report = CheckReport(
        "example.org",
        "mail.example.org",
        (
            Finding("MX", "example.org", "MX", True, Status.OK, "10 m.", ("10 m.",), "10 m."),
            Finding("SPF", "example.org", "TXT", True, Status.MISSING, "v=spf1", (), "expected"),
            Finding("autoconfig", "autoconfig.example.org", "CNAME", False, Status.MISSING, "m."),
        ),
    )
    assert [finding_line(f) for f in report.findings] == [
        "OK       MX                   example.org MX: 10 m.",
        "missing  SPF                  example.org TXT: expected",
        "missing  autoconfig           autoconfig.example.org CNAME (recommended): ",
    ]
    assert summary_line(report) == (
        "example.org: 1 of 2 required wrong (SPF); 1 recommended missing or different"
    )
    data = json.loads(json.dumps(check_json(report)))
    assert data["ok"] is False
    assert data["summary"] == summary_line(report)
    assert data["results"][1] == {
        "label": "SPF",
        "name": "example.org",
        "type": "TXT",
        "required": True,
        "status": "missing",
        "failed": True,
        "expected": "v=spf1",
        "found": [],
        "detail": "expected",
    }
    ok = CheckReport("example.org", "m", report.findings[:1])
    assert ok.ok and summary_line(ok) == "example.org: all 1 required OK"
