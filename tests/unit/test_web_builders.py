"""The pure parts of the HTTP listener: autoconfig XML, autodiscover, the Apple profile, the
MTA-STS policy and host names, and the metrics' reason labels."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from tidings import metrics
from tidings.address import parse_mailbox
from tidings.config import Config, build_config
from tidings.dnsrecords import (
    Kind,
    configured_mta_sts_policy,
    expected_records,
    mta_sts_id,
    mta_sts_policy,
)
from tidings.web.autoconfig import (
    AUTODISCOVER_RESPONSE_NS,
    OUTLOOK_RESPONSE_NS,
    ClientSettings,
    Endpoint,
    autodiscover_address,
    autodiscover_response,
    mobileconfig,
    thunderbird_config,
)
from tidings.web.mtasts import policy_domain
from tidings.web.site import request_host


def config(**sections: dict[str, object]) -> Config:
    data = {"server": {"hostname": "Mail.Example.org"}, **sections}
    return build_config(data, {}, "/srv/tidings")


DEFAULT = ClientSettings.from_config(config())
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"


# --- what clients are told ----------------------------------------------------------------------


def test_client_settings_default_to_the_public_ports_implicit_tls_first() -> None:
    assert DEFAULT.hostname == "mail.example.org"
    assert [(e.protocol, e.port, e.implicit_tls) for e in DEFAULT.endpoints] == [
        ("imap", 993, True),
        ("imap", 143, False),
        ("pop3", 995, True),
        ("pop3", 110, False),
        ("smtp", 465, True),
        ("smtp", 587, False),
    ]


def test_client_settings_leave_out_port_0_and_disabled_listeners() -> None:
    settings = ClientSettings.from_config(
        config(autoconfig={"imaps": 10993, "pop3s": 0}, listen={"submission": "", "pop3": ""})
    )
    assert [(e.protocol, e.port) for e in settings.endpoints] == [
        ("imap", 10993),
        ("imap", 143),
        ("smtp", 465),
    ]


def test_autoconfig_port_out_of_range_is_a_config_error() -> None:
    from tidings.config import ConfigError

    with pytest.raises(ConfigError, match=r"^autoconfig\.imaps: must be a port"):
        config(autoconfig={"imaps": 70000})
    with pytest.raises(ConfigError, match=r"^mta_sts\.mode: expected one of"):
        config(mta_sts={"mode": "strict"})
    with pytest.raises(ConfigError, match=r"^mta_sts\.max_age: must be 1 to 31557600"):
        config(mta_sts={"max_age": 0})


def test_thunderbird_config_lists_every_endpoint() -> None:
    root = ET.fromstring(thunderbird_config("example.org", DEFAULT))
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    assert provider.findtext("domain") == "example.org"
    servers = [
        (
            s.tag,
            s.get("type"),
            s.findtext("hostname"),
            s.findtext("port"),
            s.findtext("socketType"),
            s.findtext("authentication"),
            s.findtext("username"),
        )
        for s in provider
        if s.tag in ("incomingServer", "outgoingServer")
    ]
    host, auth, user = "mail.example.org", "password-cleartext", "%EMAILADDRESS%"
    assert servers == [
        ("incomingServer", "imap", host, "993", "SSL", auth, user),
        ("incomingServer", "imap", host, "143", "STARTTLS", auth, user),
        ("incomingServer", "pop3", host, "995", "SSL", auth, user),
        ("incomingServer", "pop3", host, "110", "STARTTLS", auth, user),
        ("outgoingServer", "smtp", host, "465", "SSL", auth, user),
        ("outgoingServer", "smtp", host, "587", "STARTTLS", auth, user),
    ]


def autodiscover_request(address: str, namespace: str = REQUEST_NS) -> bytes:
    root = ET.Element("Autodiscover", xmlns=namespace)
    request = ET.SubElement(root, "Request")
    ET.SubElement(request, "EMailAddress").text = address
    ET.SubElement(request, "AcceptableResponseSchema").text = OUTLOOK_RESPONSE_NS
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def test_autodiscover_request_address_with_or_without_namespace() -> None:
    assert autodiscover_address(autodiscover_request("alice@example.org")) == "alice@example.org"
    assert autodiscover_address(autodiscover_request(" bob@example.org\n", "")) == "bob@example.org"
    utf16 = autodiscover_request("carol@example.org").decode().replace("utf-8", "utf-16")
    assert autodiscover_address(utf16.encode("utf-16")) == "carol@example.org"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not an XML document"),
        (b"alice@example.org", "not an XML document"),
        (b"<Autodiscover><Request/></Autodiscover>", "no EMailAddress"),
        (b"<Autodiscover><EMailAddress></EMailAddress></Autodiscover>", "no EMailAddress"),
        (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx"><!ENTITY y "&x;&x;&x;">]>'
            b"<Autodiscover><EMailAddress>&y;@example.org</EMailAddress></Autodiscover>",
            "document type declaration",
        ),
        (
            b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a><EMailAddress>x@y.example'
            b"</EMailAddress></a>",
            "document type declaration",
        ),
    ],
)
def test_autodiscover_request_refused(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        autodiscover_address(body)


def protocols(body: bytes) -> list[dict[str, str]]:
    root = ET.fromstring(body)
    assert root.tag == f"{{{AUTODISCOVER_RESPONSE_NS}}}Autodiscover"
    ns = {"o": OUTLOOK_RESPONSE_NS}
    account = root.find("o:Response/o:Account", ns)
    assert account is not None
    assert account.findtext("o:AccountType", namespaces=ns) == "email"
    assert account.findtext("o:Action", namespaces=ns) == "settings"
    return [
        {child.tag.partition("}")[2]: child.text or "" for child in p}
        for p in account.findall("o:Protocol", ns)
    ]


def test_autodiscover_response_imap_and_smtp_over_implicit_tls() -> None:
    found = protocols(autodiscover_response("alice@example.org", DEFAULT))
    common = {
        "Server": "mail.example.org",
        "DomainRequired": "off",
        "LoginName": "alice@example.org",
        "SPA": "off",
        "SSL": "on",
        "AuthRequired": "on",
    }
    assert found == [
        {"Type": "IMAP", "Port": "993", **common},
        {"Type": "SMTP", "Port": "465", **common},
    ]


def test_autodiscover_response_starttls_only_and_pop3_without_imap() -> None:
    settings = ClientSettings(
        "mail.example.org", (Endpoint("pop3", 110, False), Endpoint("smtp", 587, False))
    )
    found = protocols(autodiscover_response("a@example.org", settings))
    assert [(p["Type"], p["Port"], p["SSL"], p.get("Encryption")) for p in found] == [
        ("POP3", "110", "off", "TLS"),
        ("SMTP", "587", "off", "TLS"),
    ]


def test_autodiscover_response_escapes_what_it_carries() -> None:
    body = autodiscover_response('"a<b>&c"@example.org', DEFAULT)
    assert protocols(body)[0]["LoginName"] == '"a<b>&c"@example.org'


def test_mobileconfig_is_a_profile_with_one_mail_payload() -> None:
    profile = plistlib.loads(mobileconfig(parse_mailbox("Alice@Example.org"), DEFAULT))
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == "alice@example.org"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (
        "mail.example.org",
        993,
    )
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (
        "mail.example.org",
        465,
    )
    assert mail["IncomingMailServerUseSSL"] is mail["OutgoingMailServerUseSSL"] is True
    assert mail["IncomingMailServerUsername"] == mail["OutgoingMailServerUsername"]
    assert mail["OutgoingPasswordSameAsIncomingPassword"] is True
    assert profile["PayloadIdentifier"].startswith("org.example.tidings.")
    assert mail["PayloadIdentifier"].startswith(profile["PayloadIdentifier"] + ".")
    # The same address gives the same identifiers (a new download replaces the profile);
    # another address, others.
    again = plistlib.loads(mobileconfig(parse_mailbox("alice@example.org"), DEFAULT))
    other = plistlib.loads(mobileconfig(parse_mailbox("bob@example.org"), DEFAULT))
    assert again["PayloadUUID"] == profile["PayloadUUID"] != other["PayloadUUID"]
    assert profile["PayloadUUID"] != mail["PayloadUUID"]


def test_mobileconfig_needs_incoming_and_outgoing() -> None:
    settings = ClientSettings("mail.example.org", (Endpoint("imap", 993, True),))
    with pytest.raises(ValueError, match="no incoming or no outgoing"):
        mobileconfig(parse_mailbox("a@example.org"), settings)


# --- MTA-STS ------------------------------------------------------------------------------------


def test_mta_sts_policy_from_config_and_its_id_in_the_dns_records() -> None:
    cfg = config(mta_sts={"mode": "enforce", "max_age": 86400})
    policy = configured_mta_sts_policy(cfg)
    assert policy == "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmax_age: 86400\r\n"
    # RFC 8461 §3.2: key/value lines.
    assert dict(line.split(": ") for line in policy.splitlines()) == {
        "version": "STSv1",
        "mode": "enforce",
        "mx": "mail.example.org",
        "max_age": "86400",
    }
    records = expected_records("example.org", "mail.example.org", sts_policy=policy)
    (sts,) = [r for r in records if r.kind is Kind.MTA_STS]
    assert sts.value == f"v=STSv1; id={mta_sts_id(policy)}"
    assert mta_sts_id(policy) != mta_sts_id(configured_mta_sts_policy(config()))
    # The default config serves the policy `dns records` printed before it was configurable.
    assert configured_mta_sts_policy(config()) == mta_sts_policy("mail.example.org")


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("mta-sts.example.org", "example.org"),
        ("mta-sts.sub.example.org", "sub.example.org"),
        ("example.org", None),
        ("mail.example.org", None),
        ("mta-sts.", None),
        ("xmta-sts.example.org", None),
    ],
)
def test_policy_domain(host: str, domain: str | None) -> None:
    assert policy_domain(host) == domain


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("MTA-STS.Example.org", "mta-sts.example.org"),
        ("mta-sts.example.org:8443", "mta-sts.example.org"),
        ("mta-sts.example.org.", "mta-sts.example.org"),
        ("[::1]:8080", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_request_host(header: str, host: str) -> None:
    request = make_mocked_request("GET", "/", headers={"Host": header})
    assert request_host(request) == host


# --- metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            "550 5.1.1 <x@example.org>: Recipient address rejected: no such user",
            "unknown_recipient",
        ),
        ("554 5.7.1 <x@other.example>: Relay access denied", "relay_denied"),
        ("550 5.7.1 Email rejected per DMARC policy for example.com", "dmarc_reject"),
        ("553 5.7.1 Sender address <x> is not yours", "sender_not_owned"),
        ("452 4.2.2 <x@example.org>: Mailbox full, try again later", "mailbox_full"),
        ("452 4.5.3 Too many recipients", "too_many_recipients"),
        ("552 5.3.4 Message too big", "too_big"),
        ("550 5.6.11 Message contains bare CR or LF", "bare_line_ending"),
        ("451 4.3.0 Message not stored", "temporary_failure"),
        ("452 4.3.1 Message not stored (mail system full)", "storage_full"),
        ("451 4.7.24 Temporary DNS failure checking SPF", "spf_temperror"),
        ("550 5.7.26 something new", "5.7.26"),
        ("421 closing", "421"),
        ("nonsense", "other"),
    ],
)
def test_rejection_reason(reply: str, reason: str) -> None:
    assert metrics.rejection_reason(reply) == reason


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_smtp_reply_counts_accepted_and_refused() -> None:
    accepted = sample("tidings_smtp_messages_accepted_total", service="submission")
    refused = sample(
        "tidings_smtp_rejections_total", service="smtp", stage="rcpt", reason="unknown_recipient"
    )
    metrics.smtp_reply("submission", "data", "250 2.0.0 Ok: queued as X")
    metrics.smtp_reply("submission", "rcpt", None)  # an accepted recipient is not a message
    metrics.smtp_reply("smtp", "rcpt", "550 5.1.1 <x@example.org>: no such user")
    assert sample("tidings_smtp_messages_accepted_total", service="submission") == accepted + 1
    assert (
        sample(
            "tidings_smtp_rejections_total",
            service="smtp",
            stage="rcpt",
            reason="unknown_recipient",
        )
        == refused + 1
    )


def test_exposition_parses_and_has_no_created_series() -> None:
    metrics.mailauth_results("pass", [], "none")
    metrics.set_queue({"queued": 2, "held": 1}, 12.5)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {
        "tidings_connections",
        "tidings_smtp_messages_accepted",
        "tidings_smtp_rejections",
        "tidings_mailauth_results",
        "tidings_delivery_attempts",
        "tidings_logins",
        "tidings_auth_failures",
        "tidings_sessions",
        "tidings_queue_size",
        "tidings_queue_oldest_age_seconds",
        "tidings_store_up",
    } <= set(families)
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)
    assert sample("tidings_mailauth_results_total", method="dkim", result="none") >= 1
    assert sample("tidings_queue_size", state="queued") == 2
    assert sample("tidings_queue_size", state="sending") == 0
    assert sample("tidings_queue_oldest_age_seconds") == 12.5
