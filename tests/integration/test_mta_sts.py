"""MTA-STS outbound (RFC 8461): the queue honours other domains' policies.

"The Internet" is this machine: a loopback DNS server publishes the ``_mta-sts`` TXT records,
MX records and the ``mta-sts.DOMAIN`` addresses; an HTTPS server on loopback serves the
policies with a certificate a test CA issued (the server trusts that CA through
``relay.ca_file`` and fetches from ``mta_sts.policy_port``); SMTP peers on 127.0.0.1-3 are the
mail hosts:

* 127.0.0.1 — STARTTLS with a certificate from the test CA for ``mx.good.test``;
* 127.0.0.2 — STARTTLS with a self-signed certificate;
* 127.0.0.3 — no STARTTLS at all.

One ``tidings serve`` (SQLite: nothing here depends on the store) serves the end-to-end cases;
the policy cache is tested in-process against the same DNS and HTTPS servers.
"""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_queue import ALICE, message, queue_json, run, submit, wait_for

from dnsserver import DNSTestServer
from helpers import TidingsServer, add_users, write_config
from peer import SMTPPeer
from tidings.config import Config, ConfigError, build_config, replace_section
from tidings.dns import Resolver
from tidings.queue.mtasts import PolicyCache, PolicyError, verified_context


@pytest.fixture
def backend() -> str:
    """MTA-STS does not touch the store beyond the queue: SQLite is enough."""
    return "sqlite"


# --- a test CA --------------------------------------------------------------------------------


class CA:
    """A certificate authority of its own, written to ``directory/ca.pem``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tidings Test CA")])
        cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def issue(self, label: str, names: list[str]) -> tuple[Path, Path]:
        """A leaf certificate for ``names`` (SAN DNS names): its file and its key's file."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / f"{label}.pem", self.directory / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


# --- a policy server over HTTPS ---------------------------------------------------------------


@dataclass
class Served:
    body: str
    status: int = 200
    content_type: str = "text/plain"
    location: str = ""


class PolicyServer:
    """HTTPS on 127.0.0.1: ``policies[host]`` answers GET /.well-known/mta-sts.txt on that
    Host; ``fetches`` counts requests per host."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.policies: dict[str, Served] = {}
        self.fetches: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").rpartition(":")[0].lower()
                outer.fetches[host] = outer.fetches.get(host, 0) + 1
                served = outer.policies.get(host)
                if served is None or self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                body = served.body.encode()
                self.send_response(served.status)
                self.send_header("Content-Type", served.content_type)
                self.send_header("Content-Length", str(len(body)))
                if served.location:
                    self.send_header("Location", served.location)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def policy(mode: str, *mx: str, max_age: int = 86400) -> Served:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return Served("\r\n".join(lines) + "\r\n")


# Domain → (policy mode and mx patterns, MX host, its address).
DOMAINS: dict[str, tuple[Served, str, str]] = {
    "good.test": (policy("enforce", "mx.good.test"), "mx.good.test", "127.0.0.1"),
    "wild.test": (policy("enforce", "*.good.test"), "mx.good.test", "127.0.0.1"),
    "nomatch.test": (policy("enforce", "mail.elsewhere.test"), "mx.good.test", "127.0.0.1"),
    "plain.test": (policy("enforce", "*.plain.test"), "mx.plain.test", "127.0.0.3"),
    "badcert.test": (policy("enforce", "mx.badcert.test"), "mx.badcert.test", "127.0.0.2"),
    "testing.test": (policy("testing", "mx.testing.test"), "mx.testing.test", "127.0.0.2"),
}


def zone() -> dict[str, list[tuple[str, Any]]]:
    records: dict[str, list[tuple[str, Any]]] = {
        "mx.good.test": [("A", "127.0.0.1")],
        "mx.plain.test": [("A", "127.0.0.3")],
        "mx.badcert.test": [("A", "127.0.0.2")],
        "mx.testing.test": [("A", "127.0.0.2")],
        # for the cache tests: policies that come and go
        "_mta-sts.cache.test": [("TXT", "v=STSv1; id=one")],
        "mta-sts.cache.test": [("A", "127.0.0.1")],
        "_mta-sts.wrongname.test": [("TXT", "v=STSv1; id=one")],
        "mta-sts.wrongname.test": [("A", "127.0.0.1")],  # not in the HTTPS certificate
    }
    for domain, (_served, mx, _ip) in DOMAINS.items():
        records[domain] = [("MX", (10, mx))]
        records[f"_mta-sts.{domain}"] = [("TXT", "v=STSv1; id=20240101")]
        records[f"mta-sts.{domain}"] = [("A", "127.0.0.1")]
    # An MX the policy does not name, preferred over the one it names: never used.
    records["good.test"].append(("MX", (5, "stray.good.test")))
    records["stray.good.test"] = [("A", "127.0.0.2")]
    return records


@dataclass
class World:
    ca: CA
    dns: DNSTestServer
    https: PolicyServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("mta-sts")
    ca = CA(directory)
    names = [f"mta-sts.{d}" for d in [*DOMAINS, "cache.test"]]
    https = PolicyServer(*ca.issue("policy", names))
    for domain, (served, _mx, _ip) in DOMAINS.items():
        https.policies[f"mta-sts.{domain}"] = served
    https.policies["mta-sts.wrongname.test"] = policy("enforce", "mx.good.test")
    # TTL 0: the resolver keeps nothing, so a changed record is seen at once.
    with DNSTestServer(zone(), ttl=0) as dns:
        try:
            yield World(ca, dns, https)
        finally:
            https.stop()


# --- end to end -------------------------------------------------------------------------------


def recipient_rows(config: Path) -> dict[str, dict[str, Any]]:
    return {r["recipient"]: r for m in queue_json(config) for r in m["recipients"]}


def test_outbound_policies_end_to_end(world: World, tmp_path: Path) -> None:
    """One server, one message per domain; each domain's policy decides its fate."""
    good_cert = world.ca.issue("mx", ["mx.good.test"])
    with (
        SMTPPeer(starttls=True, certificate=good_cert, hostname="mx.good.test") as good,
        SMTPPeer("127.0.0.2", good.port, starttls=True, hostname="mx.self.test") as selfsigned,
        SMTPPeer("127.0.0.3", good.port) as plain,
    ):
        db_url = f"sqlite+aiosqlite:///{tmp_path / 'tidings.db'}"
        run(add_users(db_url, ALICE))
        config = write_config(
            tmp_path,
            db_url,
            dns={"nameservers": [world.dns.address], "timeout": 1.0},
            relay={"port": good.port, "timeout": 5.0, "ca_file": str(world.ca.path)},
            mta_sts={"policy_port": world.https.port},
            queue={"retry_schedule": [1.0]},
        )
        server = TidingsServer(config).start()
        try:
            recipients = [f"bob@{d}" for d in DOMAINS]
            submit(server, recipients, [message(to=", ".join(recipients))])

            # enforce + a matching MX with a valid certificate: delivered over TLS, and the
            # lower-preference MX the policy does not name is never used.
            good.wait_until_sync(
                lambda p: (
                    {r for t in p.transactions for r in t.recipients}
                    >= {"bob@good.test", "bob@wild.test"}
                ),
                20,
                "good.test and wild.test delivered",
            )
            assert all(t.tls for t in good.transactions)
            assert all(t.accepted for t in good.transactions)

            # testing + a self-signed certificate: delivered anyway, the log says what
            # enforce would have done.
            selfsigned.wait_until_sync(
                lambda p: any("bob@testing.test" in t.recipients for t in p.transactions),
                20,
                "testing.test delivered",
            )
            [testing] = [t for t in selfsigned.transactions if "bob@testing.test" in t.recipients]
            assert testing.tls  # opportunistic TLS, as without a policy
            wait_for(
                lambda: (
                    "mta-sts testing: mx.testing.test[127.0.0.2] has no valid TLS" in server.log()
                ),
                what="the testing-mode log line",
            )
            assert "enforce would defer the message" in server.log()

            # The enforce failures: deferred (retried), never bounced, never in clear text.
            def deferred() -> bool:
                log = server.log()
                return all(
                    f"to=bob@{d} relay=- status=deferred" in log
                    for d in ("nomatch.test", "plain.test", "badcert.test")
                )

            wait_for(deferred, what="the enforce failures deferred")
            rows = recipient_rows(config)
            assert set(rows) == {"bob@nomatch.test", "bob@plain.test", "bob@badcert.test"}
            for row in rows.values():
                assert row["state"] in ("queued", "sending")
                assert "MTA-STS" in row["last_error"], row
            assert (
                "names none of its MX hosts mx.good.test" in rows["bob@nomatch.test"]["last_error"]
            )
            assert "offers no STARTTLS" in rows["bob@plain.test"]["last_error"]
            assert "has no valid TLS" in rows["bob@badcert.test"]["last_error"]
            assert "certificate verify failed" in rows["bob@badcert.test"]["last_error"]
            assert plain.connections, "the MX without STARTTLS was tried"
            assert plain.transactions == []  # … and nothing went in clear text
            stray = {r for t in selfsigned.transactions for r in t.recipients}
            assert stray == {"bob@testing.test"}  # not good.test's stray MX, not badcert.test
            assert "status=bounced" not in server.log()
        finally:
            server.stop()


# --- the policy cache, in-process -------------------------------------------------------------


def cache_for(world: World, clock: list[float] | None = None) -> PolicyCache:
    config = replace_section(Config(), "relay", ca_file=str(world.ca.path))
    resolver = Resolver([world.dns.address], timeout=1.0)
    now = clock if clock is not None else [0.0]
    return PolicyCache(
        resolver, verified_context(config), port=world.https.port, clock=lambda: now[0]
    )


def set_txt(world: World, domain: str, value: str | None) -> None:
    world.dns.zone.pop(f"_mta-sts.{domain}", None)
    if value is not None:
        world.dns.add(f"_mta-sts.{domain}", [("TXT", value)])


async def test_cache_refetches_on_a_new_id_and_keeps_a_policy_when_fetching_fails(
    world: World,
) -> None:
    host = "mta-sts.cache.test"
    world.https.policies[host] = policy("enforce", "mx1.cache.test", max_age=100)
    set_txt(world, "cache.test", "v=STSv1; id=one")
    clock = [0.0]
    cache = cache_for(world, clock)
    before = world.https.fetches.get(host, 0)

    first = await cache.policy("cache.test")
    assert first is not None and first.mx == ("mx1.cache.test",)
    assert await cache.policy("Cache.Test.") == first  # same id: from the cache
    assert world.https.fetches[host] == before + 1

    # A new id: fetched again.
    world.https.policies[host] = policy("enforce", "mx2.cache.test", max_age=100)
    set_txt(world, "cache.test", "v=STSv1; id=two")
    second = await cache.policy("cache.test")
    assert second is not None and second.mx == ("mx2.cache.test",)
    assert world.https.fetches[host] == before + 2

    # Another new id, but the policy server fails: the cached policy still applies (§5.1).
    world.https.policies[host] = Served("oops", status=500)
    set_txt(world, "cache.test", "v=STSv1; id=three")
    assert await cache.policy("cache.test") == second
    assert world.https.fetches[host] == before + 3

    # The TXT record disappears: the cached policy still applies until it expires …
    set_txt(world, "cache.test", None)
    assert await cache.policy("cache.test") == second
    # … and then there is none.
    clock[0] = 101.0
    assert await cache.policy("cache.test") is None


async def test_no_cached_policy_and_a_failing_fetch_means_no_policy(world: World) -> None:
    host = "mta-sts.cache.test"
    set_txt(world, "cache.test", "v=STSv1; id=four")
    world.https.policies[host] = Served("version: STSv1\r\n", status=404)
    cache = cache_for(world)
    assert await cache.policy("cache.test") is None
    # The failure is remembered for a while: no second fetch right away.
    count = world.https.fetches[host]
    assert await cache.policy("cache.test") is None
    assert world.https.fetches[host] == count


@pytest.mark.parametrize(
    ("served", "problem"),
    [
        (Served("", status=301, location="https://elsewhere.test/"), "HTTP 301"),
        (Served(policy("enforce", "a.b").body, content_type="text/html"), "content type"),
        (Served("version: STSv1\r\n" + "x: y\r\n" * 20000), "larger than 65536"),
        (Served("version: STSv1\r\nmode: enforce\r\nmax_age: 5\r\n"), "no mx field"),
    ],
)
async def test_fetch_refuses_what_rfc_8461_refuses(
    world: World, served: Served, problem: str
) -> None:
    world.https.policies["mta-sts.cache.test"] = served
    with pytest.raises(PolicyError, match=problem):
        await cache_for(world).fetch("cache.test")


async def test_fetch_needs_a_certificate_for_the_policy_host(world: World) -> None:
    with pytest.raises(PolicyError, match="certificate"):
        await cache_for(world).fetch("wrongname.test")
    # and without the test CA, not even the right name verifies
    cache = PolicyCache(
        Resolver([world.dns.address], timeout=1.0),
        verified_context(Config()),
        port=world.https.port,
    )
    with pytest.raises(PolicyError, match="certificate"):
        await cache.fetch("good.test")


async def test_no_txt_record_means_no_policy_and_no_fetch(world: World) -> None:
    before = dict(world.https.fetches)
    assert await cache_for(world).policy("nothing-here.test") is None
    assert world.https.fetches == before


def test_policy_port_and_ca_file_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"mta_sts\.policy_port"):
        build_config({"mta_sts": {"policy_port": 0}}, {}, ".")
    config = build_config({"relay": {"ca_file": "/nonexistent/ca.pem"}}, {}, ".")
    with pytest.raises(ConfigError, match=r"relay\.ca_file"):
        verified_context(config)
    assert build_config({}, {"TIDINGS_MTA_STS__OUTBOUND": "false"}, ".").mta_sts.outbound is False
