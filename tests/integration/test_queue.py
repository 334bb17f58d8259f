"""The outbound queue end to end: submission → queue → a peer MTA on loopback.

MX records come from a DNS server on loopback; the peers are aiosmtpd sinks on 127.0.0.1 at
the port ``relay.port`` names, so "the Internet" is this machine. 127.0.0.2 on the same port
has nobody listening: a mail host that is down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email
import email.policy
import json
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dnsserver import DNSTestServer
from helpers import TidingsServer, add_alias, add_users, stored_messages, tidings, write_config
from peer import SMTPPeer
from pg import free_port

ALICE = "alice@example.org"
ZONE: dict[str, list[tuple[str, Any]]] = {
    "remote.test": [("MX", (10, "mx1.remote.test")), ("MX", (20, "mx2.remote.test"))],
    "mx1.remote.test": [("A", "127.0.0.2")],  # down
    "mx2.remote.test": [("A", "127.0.0.1")],
    "direct.test": [("MX", (10, "mx.direct.test"))],
    "mx.direct.test": [("A", "127.0.0.1")],
    "implicit.test": [("A", "127.0.0.1")],  # no MX: its own address takes mail
    "nullmx.test": [("MX", (0, ""))],
    "twohosts.test": [("MX", (10, "a.twohosts.test")), ("MX", (20, "b.twohosts.test"))],
    "a.twohosts.test": [("A", "127.0.0.1")],
    "b.twohosts.test": [("A", "127.0.0.3")],
}


def run(coro: Any) -> Any:
    """Run a coroutine to the end from sync code, even inside an async test."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def message(n: int = 0, to: str = "bob@remote.test") -> bytes:
    return (
        f"From: Alice <{ALICE}>\r\nTo: {to}\r\nSubject: note {n}\r\n"
        f"Message-ID: <note-{n}@example.org>\r\n\r\nHello number {n}.\r\n"
    ).encode()


def submit(server: TidingsServer, recipients: list[str], contents: list[bytes]) -> None:
    with smtplib.SMTP(*server.addresses["submission"], timeout=60) as client:
        client.starttls(context=client_tls())
        client.login(ALICE, "secret")
        for content in contents:
            client.sendmail(ALICE, recipients, content)


def queue_json(config: Path) -> list[dict[str, Any]]:
    result = tidings(config, "queue", "list", "--json")
    assert result.returncode == 0, result.stderr
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what or "condition not met")
        time.sleep(0.1)


async def wait_for_mail(db_url: str, address: str, n: int, timeout: float = 20.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        found = await stored_messages(db_url, address)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with DNSTestServer(ZONE) as server:
        yield server


def relay_server(
    tmp_path: Path,
    db_url: str,
    dns: DNSTestServer,
    port: int,
    *,
    add_user: bool = True,
    **queue: object,
) -> TidingsServer:
    if add_user:
        run(add_users(db_url, ALICE))
    config = write_config(
        tmp_path,
        db_url,
        dns={"nameservers": [dns.address], "timeout": 1.0},
        relay={"port": port, "timeout": 5.0},
        queue={"retry_schedule": [0.5], **queue},
    )
    return TidingsServer(config).start()


def test_lowest_mx_down_falls_back_to_the_next(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer(starttls=True) as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        try:
            submit(server, ["bob@remote.test", "carol@remote.test"], [message()])
            [received] = peer.wait_for_sync(1, timeout=20)
            assert sorted(received.recipients) == ["bob@remote.test", "carol@remote.test"]
            assert received.sender == ALICE
            assert received.tls  # STARTTLS was offered, so it was used
            assert received.ehlo == "mx.tidings.test"
            assert b"Subject: note 0" in received.content
            wait_for(lambda: queue_json(server.config) == [], what="queue empty")
            assert "127.0.0.2" in server.log()  # the first MX was tried
        finally:
            server.stop()


def test_host_closing_during_data_passes_the_message_to_the_next_mx(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with (
        SMTPPeer(data_replies=["421 4.3.2 shutting down"]) as first,
        SMTPPeer(host="127.0.0.3", port=first.port) as second,
    ):
        server = relay_server(tmp_path, db_url, dns_server, first.port)
        try:
            submit(server, ["x@twohosts.test"], [message(to="x@twohosts.test")])
            [received] = second.wait_for_sync(1, timeout=20)
            wait_for(lambda: queue_json(server.config) == [], what="queue empty")
        finally:
            server.stop()
    assert [t.reply[:3] for t in first.transactions] == ["421"]
    assert received.recipients == ("x@twohosts.test",)
    assert len(second.messages) == 1


def test_no_mx_uses_the_domains_address(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer() as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        try:
            submit(server, ["someone@implicit.test"], [message(to="someone@implicit.test")])
            [received] = peer.wait_for_sync(1, timeout=20)
            assert received.recipients == ("someone@implicit.test",)
            assert not received.tls
        finally:
            server.stop()


def test_temporary_failures_are_retried_until_delivered(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    replies = ["451 4.3.0 try again later", "452 4.3.1 out of space"]
    with SMTPPeer(data_replies=replies, pipelining=True) as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        try:
            submit(server, ["bob@direct.test"], [message()])
            peer.wait_for_sync(1, timeout=20)
            assert [t.reply[:3] for t in peer.transactions] == ["451", "452", "250"]
            wait_for(lambda: queue_json(server.config) == [], what="queue empty")
        finally:
            server.stop()


async def test_permanent_failure_bounces_to_the_sender(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer(reject=["gone@direct.test"], pipelining=True) as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        try:
            submit(server, ["gone@direct.test", "here@direct.test"], [message(7)])
            [received] = peer.wait_for_sync(1, timeout=20)
            assert received.recipients == ("here@direct.test",)
            [dsn] = await wait_for_mail(db_url, ALICE, 1)
        finally:
            server.stop()
    report = email.message_from_bytes(dsn, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["To"] == ALICE
    text, status, headers = report.iter_parts()
    assert "gone@direct.test" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    status_text = status.as_bytes().decode()
    assert "Final-Recipient: rfc822; gone@direct.test" in status_text
    assert "Status: 5.1.1" in status_text
    assert "Remote-MTA: dns; mx.direct.test" in status_text
    assert "here@direct.test" not in status_text  # delivered, so not reported
    assert b"Subject: note 7" in headers.get_payload(decode=True)
    assert queue_json(server.config) == []


async def test_null_mx_bounces_without_trying(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer() as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        try:
            submit(server, ["x@nullmx.test"], [message(to="x@nullmx.test")])
            [dsn] = await wait_for_mail(db_url, ALICE, 1)
        finally:
            server.stop()
        assert peer.transactions == []
    assert b"Status: 5.1.10" in dsn


async def test_expired_message_bounces(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer(rcpt_replies=["450 4.2.0 greylisted"] * 1000) as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port, max_age=2.0)
        try:
            submit(server, ["bob@direct.test"], [message()])
            [dsn] = await wait_for_mail(db_url, ALICE, 1)
        finally:
            server.stop()
    assert b"Status: 4.4.7" in dsn
    assert b"450 4.2.0 greylisted" in dsn
    assert peer.messages == []


async def test_forwarding_alias_relays_inbound_mail(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer() as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        await add_alias(db_url, "fwd@example.org", "far@direct.test")
        time.sleep(0.6)  # the server sees directory changes within half a second
        try:
            with smtplib.SMTP(*server.smtp) as client:
                client.sendmail("s@sender.example", ["fwd@example.org"], message(3))
            [received] = peer.wait_for_sync(1, timeout=20)
        finally:
            server.stop()
    assert received.recipients == ("far@direct.test",)
    assert received.sender == "s@sender.example"


def test_queue_cli_and_connection_reuse(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    """Messages wait while the peer is down; the CLI shows, holds, deletes and retries them;
    when it is back, the rest go over one connection."""
    port = free_port()  # nobody listens yet
    server = relay_server(
        tmp_path, db_url, dns_server, port, retry_schedule=[3600.0], connections_per_domain=1
    )
    try:
        submit(server, ["bob@direct.test"], [message(n) for n in range(5)])
        wait_for(
            lambda: all(m["recipients"][0]["attempts"] == 1
                        and m["recipients"][0]["state"] == "queued"
                        for m in queue_json(server.config))
            and len(queue_json(server.config)) == 5,
            what="five deferred messages",
        )  # fmt: skip
        listing = queue_json(server.config)
        first, second = listing[0]["queue_id"], listing[1]["queue_id"]
        assert listing[0]["sender"] == ALICE
        assert "Connection refused" in listing[0]["recipients"][0]["last_error"]

        shown = tidings(server.config, "queue", "show", first)
        assert shown.returncode == 0 and "Subject: note" in shown.stdout
        assert tidings(server.config, "queue", "hold", first).returncode == 0
        assert tidings(server.config, "queue", "delete", second).returncode == 0
        missing = tidings(server.config, "queue", "show", "NOSUCHID")
        assert missing.returncode == 1 and "NOSUCHID" in missing.stderr

        with SMTPPeer(port=port) as peer:
            assert tidings(server.config, "queue", "retry").returncode == 0
            peer.wait_for_sync(3, timeout=20)
            wait_for(lambda: len(queue_json(server.config)) == 1, what="only the held one left")
            [held] = queue_json(server.config)
            assert held["queue_id"] == first and held["recipients"][0]["state"] == "held"
            assert len(peer.connections) == 1 and peer.connections[0].transactions == 3

            assert tidings(server.config, "queue", "release", first).returncode == 0
            peer.wait_for_sync(4, timeout=20)
            wait_for(lambda: queue_json(server.config) == [], what="queue empty")
        subjects = sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in peer.messages)
        assert len(subjects) == 4 and len(set(subjects)) == 4
    finally:
        server.stop()


def test_mail_queued_while_the_runner_is_full_goes_out_when_it_has_room(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    """Mail committed while the runner has ``max_in_flight`` messages in progress waits in
    the queue table and goes out as soon as those finish, not when some lease ends."""
    gate = threading.Event()
    with SMTPPeer(data_gate=gate) as peer:
        server = relay_server(
            tmp_path, db_url, dns_server, peer.port, max_in_flight=2, lease=3600.0
        )
        try:
            # The first two are taken at once and held in DATA; the other ten come while the
            # runner is full.
            submit(server, ["bob@direct.test"], [message(n, "bob@direct.test") for n in range(12)])
            states = sorted(m["recipients"][0]["state"] for m in queue_json(server.config))
            assert states == ["queued"] * 10 + ["sending"] * 2
            gate.set()
            wait_all_relayed(peer, server, 12, timeout=30)
        finally:
            server.stop()


def subject(received: Any) -> bytes:
    return bytes(received.content.split(b"Subject: ")[1].split(b"\r\n")[0])


def wait_all_relayed(peer: SMTPPeer, server: TidingsServer, n: int, timeout: float) -> None:
    """Until the peer has ``n`` different messages and nothing is left in the queue."""
    peer.wait_until_sync(
        lambda p: len({subject(m) for m in p.messages}) == n, timeout, f"all {n} messages"
    )
    wait_for(lambda: queue_json(server.config) == [], what="queue empty")


def test_sigkill_while_relaying_loses_nothing(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    """500 messages queued; the server is killed while it relays them and started again:
    the peer ends up with every one at least once, and the queue is empty."""
    port = free_port()  # the peer is down while the messages are submitted
    server = relay_server(tmp_path, db_url, dns_server, port, lease=2.0)
    try:
        submit(server, ["bob@direct.test"], [message(n, "bob@direct.test") for n in range(500)])
        with SMTPPeer(port=port) as peer:
            peer.wait_until_sync(lambda p: len(p.messages) >= 50, 60, "50 messages")
            server.kill()
            before = len({subject(m) for m in peer.messages})
            assert before < 500, "everything was relayed before the kill: nothing tested"
            server.start()
            wait_all_relayed(peer, server, 500, timeout=120)
    finally:
        server.stop()
    assert {subject(m) for m in peer.messages} == {f"note {n}".encode() for n in range(500)}


def test_two_processes_share_one_queue_without_double_sends(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    """1,000 messages submitted to two processes while the peer is down: every retry is a
    claim both processes race for (FOR UPDATE SKIP LOCKED); each message arrives once."""
    if db_url.startswith("sqlite"):
        pytest.skip("several processes share a queue on PostgreSQL")
    port = free_port()
    servers = []
    for name in ("one", "two"):
        directory = tmp_path / name
        directory.mkdir()
        servers.append(relay_server(directory, db_url, dns_server, port, add_user=name == "one"))
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(
                    submit,
                    server,
                    ["bob@direct.test"],
                    [message(n, "bob@direct.test") for n in range(i, 1000, 2)],
                )
                for i, server in enumerate(servers)
            ]
            for job in jobs:
                job.result()
        with SMTPPeer(port=port) as peer:
            peer.wait_for_sync(1000, timeout=120)
            wait_for(lambda: queue_json(servers[0].config) == [], what="queue empty")
            time.sleep(1)  # a double send would arrive now
    finally:
        for server in servers:
            server.stop()
    subjects = [subject(m) for m in peer.messages]
    assert len(subjects) == 1000
    assert set(subjects) == {f"note {n}".encode() for n in range(1000)}
    sent = [s.log().count("status=sent") for s in servers]
    print(f"relayed by process one: {sent[0]} transactions, by process two: {sent[1]}")


def txt_lookup(server: DNSTestServer) -> Any:
    """A dkimpy ``dnsfunc`` asking the loopback DNS server, as the receiving MTA would."""
    import dns.resolver

    host, _, port = server.address.rpartition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(answer[0].strings)

    return lookup


def published(output: str) -> tuple[str, str]:
    """(name, value) of the zone-file TXT line ``tidings dkim generate`` prints."""
    line = next(x for x in output.splitlines() if " TXT " in x)
    name = line.split()[0].rstrip(".")
    value = "".join(part for part in line.split('"')[1::2])
    return name, value


def test_peer_verifies_our_dkim_signatures(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    import dkim

    with SMTPPeer() as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        try:
            # Selectors of their own: the DNS server is shared with the other backend's run.
            tag = "pg" if db_url.startswith("postgresql") else "lite"
            for selector, algorithm in ((f"r{tag}", "rsa"), (f"e{tag}", "ed25519")):
                result = tidings(
                    server.config, "dkim", "generate", "example.org",
                    "--selector", selector, "--algorithm", algorithm,
                )  # fmt: skip
                assert result.returncode == 0, result.stderr
                name, value = published(result.stdout)
                dns_server.add(name, [("TXT", value)])
            time.sleep(0.6)  # the server sees new keys within half a second
            submit(server, ["bob@direct.test"], [message(1, "bob@direct.test")])
            [received] = peer.wait_for_sync(1, timeout=20)
        finally:
            server.stop()
    content = received.content
    assert content.count(b"DKIM-Signature:") == 2
    verifier = dkim.DKIM(content)
    lookup = txt_lookup(dns_server)
    assert verifier.verify(idx=0, dnsfunc=lookup)
    assert verifier.verify(idx=1, dnsfunc=lookup)
    # Anything changed on the way breaks them.
    tampered = content.replace(b"Hello number 1.", b"Hello number 2.")
    assert not dkim.verify(tampered, dnsfunc=lookup)


async def test_a_bounce_that_fails_is_not_bounced(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    """A message from <> (itself a bounce) forwarded to a host that refuses it is dropped with
    a log line: no DSN to anyone, no loop."""
    with SMTPPeer(reject=["far@direct.test"]) as peer:
        server = relay_server(tmp_path, db_url, dns_server, peer.port)
        await add_alias(db_url, "fwd@example.org", "far@direct.test")
        time.sleep(0.6)
        try:
            with smtplib.SMTP(*server.smtp) as client:
                client.sendmail("", ["fwd@example.org"], message(4))
            wait_for(lambda: "null sender, no DSN" in server.log(), what="the bounce dropped")
            wait_for(lambda: queue_json(server.config) == [], what="queue empty")
        finally:
            server.stop()
    assert peer.messages == []
    assert await stored_messages(db_url, ALICE) == []


def test_smarthost_takes_everything(tmp_path: Path, db_url: str, dns_server: DNSTestServer) -> None:
    """With relay.smarthost, no MX is looked up: even a domain without DNS goes there."""
    with SMTPPeer() as smarthost:
        run(add_users(db_url, ALICE))
        config = write_config(
            tmp_path,
            db_url,
            dns={"nameservers": [dns_server.address], "timeout": 1.0},
            relay={"smarthost": f"127.0.0.1:{smarthost.port}"},
        )
        server = TidingsServer(config).start()
        try:
            submit(
                server, ["who@no-such-domain.invalid"], [message(5, "who@no-such-domain.invalid")]
            )
            [received] = smarthost.wait_for_sync(1, timeout=20)
        finally:
            server.stop()
    assert received.recipients == ("who@no-such-domain.invalid",)


def smarthost_server(
    tmp_path: Path, db_url: str, dns: DNSTestServer, peer: SMTPPeer, password: str
) -> TidingsServer:
    """Relaying through ``peer`` as smarthost by name (localhost, which its certificate
    names), trusting its certificate through relay.ca_file, with the given password."""
    run(add_users(db_url, ALICE))
    relay: dict[str, object] = {
        "smarthost": f"localhost:{peer.port}",
        "smarthost_username": "relay-user",
        "smarthost_password": password,
        "timeout": 5.0,
    }
    if peer.cert_path is not None:
        relay["ca_file"] = str(peer.cert_path)
    config = write_config(
        tmp_path,
        db_url,
        dns={"nameservers": [dns.address], "timeout": 1.0},
        relay=relay,
        queue={"retry_schedule": [60.0]},
    )
    return TidingsServer(config).start()


def test_smarthost_auth_over_verified_tls(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer(auth=("relay-user", "s3cret pass")) as smarthost:
        server = smarthost_server(tmp_path, db_url, dns_server, smarthost, "s3cret pass")
        try:
            submit(server, ["who@far.example"], [message(6, "who@far.example")])
            [received] = smarthost.wait_for_sync(1, timeout=20)
            wait_for(lambda: queue_json(server.config) == [], what="queue empty")
        finally:
            server.stop()
    assert received.accepted and received.tls
    assert received.login == "relay-user"
    assert received.recipients == ("who@far.example",)


def test_smarthost_refusing_the_password_keeps_the_message_queued(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer(auth=("relay-user", "s3cret pass")) as smarthost:
        server = smarthost_server(tmp_path, db_url, dns_server, smarthost, "wrong")
        try:
            submit(server, ["who@far.example"], [message(7, "who@far.example")])
            wait_for(lambda: smarthost.logins != [], what="an AUTH attempt")
            wait_for(
                lambda: queue_json(server.config)[0]["recipients"][0]["attempts"] == 1,
                what="the attempt recorded",
            )
            [row] = queue_json(server.config)
        finally:
            server.stop()
    assert smarthost.logins == [("relay-user", "wrong", False)]
    assert smarthost.messages == []
    # A refused login is the smarthost's trouble (or ours), not the message's: it waits for
    # the next attempt, with the smarthost's answer as the reason.
    [recipient] = row["recipients"]
    assert recipient["recipient"] == "who@far.example"
    assert "smarthost AUTH" in recipient["last_error"]


def test_smarthost_without_tls_never_gets_the_password(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    with SMTPPeer() as smarthost:  # no STARTTLS, so no AUTH either
        server = smarthost_server(tmp_path, db_url, dns_server, smarthost, "s3cret pass")
        try:
            submit(server, ["who@far.example"], [message(8, "who@far.example")])
            wait_for(
                lambda: queue_json(server.config)[0]["recipients"][0]["attempts"] == 1,
                what="the attempt recorded",
            )
            [row] = queue_json(server.config)
        finally:
            server.stop()
    assert smarthost.messages == []
    assert "offers no TLS" in row["recipients"][0]["last_error"]
    assert "s3cret" not in server.log()
