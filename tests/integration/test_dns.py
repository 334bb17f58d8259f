"""tidings.dns against a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from dnsserver import DNSTestServer
from tidings.config import DNSConfig
from tidings.dns import MX, DNSTempError, InvalidName, NXDomain, Resolver, is_null_mx

ZONE = {
    "example.test": [
        ("A", "192.0.2.1"),
        ("A", "192.0.2.2"),
        ("AAAA", "2001:db8::1"),
        ("MX", (20, "mx2.example.test")),
        ("MX", (10, "mx1.example.test")),
        ("TXT", ["v=spf1 ", "ip4:192.0.2.0/24 ", "-all"]),
        ("TXT", "something else"),
    ],
    "www.example.test": [("CNAME", "example.test")],
    "nodata.example.test": [("TXT", "only text")],
    "nullmx.example.test": [("MX", (0, ""))],
    "big.example.test": [("TXT", "k=rsa; p=" + "A" * 1500)],
    "slow.example.test": [("TIMEOUT", None)],
    "loop.example.test": [("CNAME", "loop.example.test")],
    "1.2.0.192.in-addr.arpa": [("PTR", "Mail.Example.test")],
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa": [
        ("PTR", "v6.example.test")
    ],
}


@pytest.fixture
def server() -> Iterator[DNSTestServer]:
    with DNSTestServer(ZONE) as s:
        yield s


@pytest.fixture
def resolver(server: DNSTestServer) -> Resolver:
    return Resolver([server.address], timeout=2.0)


def queries(server: DNSTestServer, name: str) -> int:
    return sum(1 for n, _ in server.queries if n == name)


async def test_typed_answers(resolver: Resolver) -> None:
    v4 = ipaddress.IPv4Address
    assert await resolver.a("example.test") == [v4("192.0.2.1"), v4("192.0.2.2")]
    assert await resolver.aaaa("example.test") == [ipaddress.IPv6Address("2001:db8::1")]
    assert await resolver.addresses("example.test", 4) == await resolver.a("example.test")
    # lowest preference first; each entry is a (preference, host) tuple too
    assert await resolver.mx("example.test") == [(10, "mx1.example.test"), (20, "mx2.example.test")]
    # RFC 7208 §3.3: one record's strings are joined with nothing between them
    assert sorted(await resolver.txt("example.test")) == [
        "something else",
        "v=spf1 ip4:192.0.2.0/24 -all",
    ]
    assert await resolver.ptr("192.0.2.1") == ["Mail.Example.test"]
    assert await resolver.ptr(ipaddress.IPv6Address("2001:db8::1")) == ["v6.example.test"]


async def test_cname_is_followed(resolver: Resolver) -> None:
    assert len(await resolver.a("WWW.example.test.")) == 2


async def test_nxdomain_nodata_and_temporary_failure_are_distinct(resolver: Resolver) -> None:
    with pytest.raises(NXDomain):
        await resolver.txt("nowhere.example.test")
    assert await resolver.a("nodata.example.test") == []
    assert await resolver.mx("nodata.example.test") == []
    with pytest.raises(DNSTempError):  # SERVFAIL
        await resolver.txt("slow.example.test")
    with pytest.raises(DNSTempError):  # a CNAME loop: SERVFAIL from the recursive server
        await resolver.a("loop.example.test")
    assert not issubclass(DNSTempError, NXDomain)


async def test_names_that_cannot_exist(resolver: Resolver, server: DNSTestServer) -> None:
    for name in ("a" * 64 + ".example.test", "a..example.test", "", "."):
        with pytest.raises(InvalidName):
            await resolver.a(name)
    assert server.queries == []  # refused before any query
    with pytest.raises(NXDomain):  # InvalidName is an NXDomain to callers that don't care
        await resolver.txt("x" * 300)


async def test_null_mx(resolver: Resolver) -> None:
    records = await resolver.mx("nullmx.example.test")
    assert records == [MX(0, "")]
    assert is_null_mx(records)
    assert not is_null_mx(await resolver.mx("example.test"))


async def test_large_answer_falls_back_to_tcp(resolver: Resolver) -> None:
    (record,) = await resolver.txt("big.example.test")
    assert record == "k=rsa; p=" + "A" * 1500
    assert (await resolver.txt_bytes("big.example.test"))[0].startswith(b"k=rsa; p=AAA")


async def test_timeout_is_temporary_and_does_not_block_the_loop() -> None:
    with DNSTestServer(ZONE, timeouts="drop") as server:
        resolver = Resolver([server.address], timeout=0.5)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        with pytest.raises(DNSTempError):
            await resolver.txt("slow.example.test")
        elapsed = time.monotonic() - started
        task.cancel()
        assert 0.4 < elapsed < 3
        assert ticks >= 10  # the event loop kept running while the query waited
        # a temporary failure is not cached: the next lookup asks again
        with pytest.raises(DNSTempError):
            await resolver.txt("slow.example.test")
        assert queries(server, "slow.example.test") >= 2


async def test_answers_are_cached_positive_and_negative(
    resolver: Resolver, server: DNSTestServer
) -> None:
    for _ in range(3):
        await resolver.a("example.test")
        await resolver.a("nodata.example.test")
        with pytest.raises(NXDomain):
            await resolver.a("nowhere.example.test")
    assert queries(server, "example.test") == 1
    assert queries(server, "nodata.example.test") == 1
    assert queries(server, "nowhere.example.test") == 1
    resolver.clear_cache()
    await resolver.a("example.test")
    assert queries(server, "example.test") == 2


async def test_cache_honours_ttl() -> None:
    with DNSTestServer(ZONE, ttl=1) as server:
        resolver = Resolver([server.address], timeout=2.0)
        await resolver.a("example.test")
        await resolver.a("example.test")
        assert queries(server, "example.test") == 1
        await asyncio.sleep(1.2)
        await resolver.a("example.test")
        assert queries(server, "example.test") == 2


async def test_cache_is_bounded(server: DNSTestServer) -> None:
    resolver = Resolver([server.address], timeout=2.0, cache_size=2)
    for name in ("example.test", "nodata.example.test", "nullmx.example.test"):
        await resolver.a(name)
    assert len(resolver._cache) == 2
    await resolver.a("example.test")  # evicted as least recently used: asked again
    assert queries(server, "example.test") == 2


async def test_concurrent_identical_lookups_share_one_query(
    resolver: Resolver, server: DNSTestServer
) -> None:
    results = await asyncio.gather(*(resolver.mx("example.test") for _ in range(20)))
    assert all(r == results[0] for r in results)
    assert queries(server, "example.test") == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_query(resolver: Resolver) -> None:
    first = asyncio.create_task(resolver.a("example.test"))
    second = asyncio.create_task(resolver.a("example.test"))
    await asyncio.sleep(0)  # both are now waiting on the one query
    first.cancel()
    assert len(await second) == 2
    assert first.cancelled()


async def test_from_config_uses_host_port_nameservers(server: DNSTestServer) -> None:
    resolver = Resolver.from_config(DNSConfig(nameservers=(server.address,), timeout=1.5))
    assert resolver.timeout == 1.5
    assert await resolver.a("example.test")


async def test_unreachable_nameserver_is_a_temporary_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resolver = Resolver([f"127.0.0.1:{port}"], timeout=0.5)
    with pytest.raises(DNSTempError):
        await resolver.a("example.test")
