"""The HTTP listener of a running server, fetched with urllib over HTTP and HTTPS: client
autoconfiguration checked against the config, the MTA-STS policy against `tidings dns
records`, /metrics after a known sequence of SMTP, submission, IMAP and POP3 actions, and
/healthz on both stores and with the PostgreSQL database gone."""

from __future__ import annotations

import asyncio
import imaplib
import json
import plistlib
import poplib
import smtplib
import ssl
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dnsserver import DNSTestServer
from helpers import TidingsServer, add_users, tidings, write_config
from pg import PostgresServer
from tidings.dnsrecords import mta_sts_id

ALICE = "alice@example.org"
PASSWORD = "secret"
HOSTNAME = "mx.tidings.test"
# Advertised ports differ from the defaults (and from the loopback ports the server listens
# on), POP3S is left out, and the STARTTLS submission listener is off.
AUTOCONFIG = {"imaps": 10993, "imap": 10143, "pop3s": 0, "pop3": 10110, "submissions": 10465}
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Site:
    server: TidingsServer
    directory: Path
    db_url: str

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.directory / "data/tls/cert.pem"))

    def get(
        self,
        path: str,
        *,
        host: str | None = None,
        data: bytes | None = None,
        https: bool = False,
    ) -> Reply:
        port = self.server.addresses["https" if https else "http"][1]
        url = f"{'https' if https else 'http'}://localhost:{port}{path}"
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        if host:
            request.add_header("Host", host)
        if data:
            request.add_header("Content-Type", "text/xml")
        try:
            with urllib.request.urlopen(
                request, timeout=30, context=self.tls if https else None
            ) as r:
                return Reply(r.status, r.headers["Content-Type"], r.read(), dict(r.headers))
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.headers["Content-Type"], e.read(), dict(e.headers))

    def metrics(self) -> Samples:
        reply = self.get("/metrics")
        assert reply.status == 200 and reply.content_type.startswith("text/plain")
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.body.decode())
            for s in family.samples
        }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def start_site(directory: Path, db_url: str, **sections: dict[str, object]) -> Site:
    config = write_config(
        directory,
        db_url,
        listen={"submission": ""},
        autoconfig=AUTOCONFIG,
        mta_sts={"mode": "enforce", "max_age": 86400},
        limits={"auth_failure_delay": 0},
        **sections,
    )
    return Site(TidingsServer(config).start(), directory, db_url)


@pytest.fixture(scope="module")
def site(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    asyncio.run(add_users(module_db, ALICE))
    s = start_site(tmp_path_factory.mktemp("web"), module_db)
    try:
        yield s
    finally:
        s.server.stop()


# --- autoconfiguration ---------------------------------------------------------------------------


def test_thunderbird_autoconfig_matches_the_config(site: Site) -> None:
    expected = [
        ("incomingServer", "imap", "10993", "SSL"),
        ("incomingServer", "imap", "10143", "STARTTLS"),
        ("incomingServer", "pop3", "10110", "STARTTLS"),
        ("outgoingServer", "smtp", "10465", "SSL"),
    ]
    for path, host in (
        (f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={ALICE}", None),
        ("/mail/config-v1.1.xml?emailaddress=Alice%40EXAMPLE.org", None),
        ("/mail/config-v1.1.xml", "autoconfig.example.org"),
        ("/.well-known/autoconfig/mail/config-v1.1.xml", "example.org:8080"),
    ):
        reply = site.get(path, host=host)
        assert reply.status == 200, (path, reply)
        assert reply.content_type.startswith("application/xml")
        root = ET.fromstring(reply.body)
        provider = root.find("emailProvider")
        assert provider is not None and provider.findtext("domain") == "example.org"
        servers = [
            (s.tag, s.get("type"), s.findtext("port"), s.findtext("socketType"))
            for s in provider
            if s.tag.endswith("Server")
        ]
        assert servers == expected, path
        assert {s.findtext("hostname") for s in provider if s.tag.endswith("Server")} == {HOSTNAME}
        assert {s.findtext("username") for s in provider if s.tag.endswith("Server")} == {
            "%EMAILADDRESS%"
        }


def test_autoconfig_only_for_our_domains(site: Site) -> None:
    path = "/.well-known/autoconfig/mail/config-v1.1.xml"
    assert site.get(f"{path}?emailaddress=a@other.example").status == 404
    assert site.get("/mail/config-v1.1.xml", host="autoconfig.other.example").status == 404
    assert site.get(f"{path}?emailaddress=not-an-address").status == 400
    assert site.get("/mobileconfig?emailaddress=a@other.example").status == 404
    assert site.get("/mobileconfig").status == 400
    request = autodiscover_request("a@other.example")
    assert site.get("/autodiscover/autodiscover.xml", data=request).status == 404
    assert site.get("/autodiscover/autodiscover.xml", data=b"<a>").status == 400


def autodiscover_request(address: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{REQUEST_NS}"><Request>'
        f"<EMailAddress>{address}</EMailAddress>"
        f"<AcceptableResponseSchema>{RESPONSE_NS}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode()


def test_autodiscover(site: Site) -> None:
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        reply = site.get(path, data=autodiscover_request("Alice@Example.org"))
        assert reply.status == 200 and reply.content_type.startswith("application/xml")
        ns = {"o": RESPONSE_NS}
        account = ET.fromstring(reply.body).find("o:Response/o:Account", ns)
        assert account is not None
        found = [
            (
                p.findtext("o:Type", namespaces=ns),
                p.findtext("o:Server", namespaces=ns),
                p.findtext("o:Port", namespaces=ns),
                p.findtext("o:SSL", namespaces=ns),
                p.findtext("o:LoginName", namespaces=ns),
            )
            for p in account.findall("o:Protocol", ns)
        ]
        assert found == [
            ("IMAP", HOSTNAME, "10993", "on", ALICE),
            ("SMTP", HOSTNAME, "10465", "on", ALICE),
        ]
    # Outlook only POSTs; a GET is not an autodiscover request.
    assert site.get("/autodiscover/autodiscover.xml").status == 405


def test_mobileconfig(site: Site) -> None:
    reply = site.get(f"/mobileconfig?emailaddress={ALICE}")
    assert reply.status == 200
    assert reply.content_type == "application/x-apple-aspen-config"
    assert reply.headers["Content-Disposition"] == 'attachment; filename="example.org.mobileconfig"'
    profile = plistlib.loads(reply.body)
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAddress"] == ALICE
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (
        HOSTNAME,
        10993,
    )
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (
        HOSTNAME,
        10465,
    )


# --- MTA-STS -------------------------------------------------------------------------------------


def test_mta_sts_policy_and_its_dns_record(site: Site) -> None:
    reply = site.get("/.well-known/mta-sts.txt", host="mta-sts.example.org", https=True)
    assert reply.status == 200 and reply.content_type.startswith("text/plain")
    policy = reply.body.decode()
    assert policy.splitlines() == [
        "version: STSv1",
        "mode: enforce",
        f"mx: {HOSTNAME}",
        "max_age: 86400",
    ]
    assert site.get("/.well-known/mta-sts.txt", host="MTA-STS.example.org:443").body == reply.body
    for host in ("mta-sts.other.example", "example.org", "localhost"):
        assert site.get("/.well-known/mta-sts.txt", host=host, https=True).status == 404, host
    # The _mta-sts TXT record `tidings dns records` prints names this very policy.
    done = tidings(site.directory / "tidings.toml", "dns", "records", "example.org", "--json")
    assert done.returncode == 0, done.stderr
    (record,) = [r for r in json.loads(done.stdout)["records"] if r["label"] == "MTA-STS"]
    assert record["value"] == f"v=STSv1; id={mta_sts_id(policy)}"


# --- health --------------------------------------------------------------------------------------


def test_healthz_over_http_and_https(site: Site) -> None:
    for https in (False, True):
        reply = site.get("/healthz", https=https)
        assert (reply.status, reply.body) == (200, b"ok\n")
    assert site.get("/no/such/page").status == 404


def test_healthz_503_when_the_postgres_database_is_gone(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    with postgres.database() as url:
        site = start_site(tmp_path, url)
        try:
            assert site.get("/healthz").status == 200
            dbname = url.rpartition("/")[2]
            with psycopg.connect(
                host=postgres.host, port=postgres.port, user="postgres", dbname="postgres",
                autocommit=True,
            ) as admin:  # fmt: skip
                admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            reply = site.get("/healthz")
            assert reply.status == 503, reply
            assert reply.body.startswith(b"store unavailable: ") and dbname.encode() in reply.body
            # Pages that need the store say so; /metrics still answers, with the store down.
            assert site.get(f"/mobileconfig?emailaddress={ALICE}").status == 503
            samples = site.metrics()
            assert value(samples, "tidings_store_up") == 0
        finally:
            site.server.stop()


# --- metrics -------------------------------------------------------------------------------------

ZONE = {
    "sender.example": [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
    "_dmarc.sender.example": [("TXT", "v=DMARC1; p=reject")],
    "reject.example": [("TXT", "v=spf1 -all")],
    "_dmarc.reject.example": [("TXT", "v=DMARC1; p=reject")],
    # The relay's MX lookup fails temporarily: the message is deferred and stays queued.
    "remote.example": [("TIMEOUT", None)],
}


def message(sender: str, to: str, subject: str) -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


def wait_for(site: Site, name: str, target: float, **labels: str) -> Samples:
    deadline = time.monotonic() + 20
    while True:
        samples = site.metrics()
        if value(samples, name, **labels) >= target or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


async def test_metrics_after_a_known_sequence(tmp_path: Path, db_url: str) -> None:
    await add_users(db_url, ALICE)
    with DNSTestServer(ZONE) as dns:
        site = start_site(
            tmp_path,
            db_url,
            dns={"nameservers": [dns.address], "timeout": 1.0},
            mailauth={"trusted_networks": []},
        )
        try:
            run_sequence(site)
        finally:
            site.server.stop()


def run_sequence(site: Site) -> None:
    # Port 25: three messages accepted, one unknown recipient, one DMARC reject.
    with smtplib.SMTP(*site.server.smtp, timeout=30) as client:
        refused = client.sendmail(
            "a@sender.example",
            [ALICE, "nobody@example.org"],
            message("a@sender.example", ALICE, "one"),
        )
        assert list(refused) == ["nobody@example.org"]
        for subject in ("two", "three"):
            client.sendmail(
                "a@sender.example", [ALICE], message("a@sender.example", ALICE, subject)
            )
    with smtplib.SMTP(*site.server.smtp, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("b@reject.example", [ALICE], message("b@reject.example", ALICE, "x"))
        assert caught.value.smtp_code == 550
    # Submission over implicit TLS: one login, one message for another domain (deferred).
    port = site.server.addresses["submissions"][1]
    with smtplib.SMTP_SSL("localhost", port, context=site.tls, timeout=30) as client:
        client.login(ALICE, PASSWORD)
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = ALICE, "x@remote.example", "out"
        mail.set_content("Hello.")
        client.send_message(mail)
    # One failed POP3 login.
    pop = poplib.POP3_SSL("localhost", site.server.addresses["pop3s"][1], context=site.tls)
    pop.user(ALICE)
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong")
    pop.close()
    # One IMAP login, still open while the metrics are read.
    imap = imaplib.IMAP4_SSL("localhost", site.server.addresses["imaps"][1], ssl_context=site.tls)
    try:
        imap.login(ALICE, PASSWORD)
        samples = wait_for(site, "tidings_delivery_attempts_total", 1, result="deferred")
        assert value(samples, "tidings_sessions", protocol="imap") == 1
    finally:
        imap.logout()

    def v(name: str, **labels: str) -> float:
        return value(samples, name, **labels)

    assert v("tidings_connections_total", listener="smtp") == 2
    assert v("tidings_connections_total", listener="submissions") == 1
    assert v("tidings_connections_total", listener="pop3s") == 1
    assert v("tidings_connections_total", listener="imaps") == 1
    assert v("tidings_connections_total", listener="http") >= 1
    assert v("tidings_smtp_messages_accepted_total", service="smtp") == 3
    assert v("tidings_smtp_messages_accepted_total", service="submission") == 1
    rejections = {
        (dict(labels)["stage"], dict(labels)["reason"]): n
        for (name, labels), n in samples.items()
        if name == "tidings_smtp_rejections_total"
    }
    assert rejections == {("rcpt", "unknown_recipient"): 1, ("data", "dmarc_reject"): 1}
    assert v("tidings_mailauth_results_total", method="spf", result="pass") == 3
    assert v("tidings_mailauth_results_total", method="spf", result="fail") == 1
    assert v("tidings_mailauth_results_total", method="dkim", result="none") == 4
    assert v("tidings_mailauth_results_total", method="dmarc", result="pass") == 3
    assert v("tidings_mailauth_results_total", method="dmarc", result="fail") == 1
    assert v("tidings_logins_total", protocol="imap") == 1
    assert v("tidings_logins_total", protocol="submission") == 1
    assert v("tidings_logins_total", protocol="pop3") == 0
    assert v("tidings_auth_failures_total", protocol="pop3", reason="invalid") == 1
    assert v("tidings_auth_failures_total", protocol="imap", reason="invalid") == 0
    assert v("tidings_delivery_attempts_total", result="deferred") == 1
    assert v("tidings_delivery_attempts_total", result="sent") == 0
    assert v("tidings_delivery_attempts_total", result="bounced") == 0
    assert v("tidings_queue_size", state="queued") == 1
    assert v("tidings_queue_oldest_age_seconds") > 0
    assert v("tidings_store_up") == 1
