"""check_host() and spf_for_session() on an in-memory resolver: the rules the conformance suite
covers less directly (identity selection, limits, timing, the Authentication-Results text)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from tidings.dns import MX, DNSTempError, NXDomain, Resolver
from tidings.mailauth.spf import Result, SPFResult, check_host, spf_for_session

TEMP = "TEMP"


class FakeResolver(Resolver):
    """tidings.dns.Resolver's API over a dict: name → {type: [values]} (TEMP: DNSTempError)."""

    def __init__(self, zone: dict[str, dict[str, Any]], delay: float = 0.0) -> None:
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.delay = delay
        self.asked: list[tuple[str, str]] = []

    async def _get(self, name: str, rtype: str) -> list[Any]:
        self.asked.append((name.lower(), rtype))
        if self.delay:
            await asyncio.sleep(self.delay)
        entry = self.zone.get(name.lower().rstrip("."))
        if entry is None:
            raise NXDomain(name)
        value = entry.get(rtype, [])
        if value == TEMP:
            raise DNSTempError(name)
        return list(value)

    async def txt(self, name: str) -> list[str]:
        return await self._get(name, "TXT")

    async def a(self, name: str) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address(v) for v in await self._get(name, "A")]

    async def aaaa(self, name: str) -> list[ipaddress.IPv6Address]:
        return [ipaddress.IPv6Address(v) for v in await self._get(name, "AAAA")]

    async def mx(self, name: str) -> list[MX]:
        return [MX(p, h) for p, h in await self._get(name, "MX")]

    async def ptr(self, ip: Any) -> list[str]:
        import dns.reversename

        rev = dns.reversename.from_address(str(ip)).to_text(omit_final_dot=True)
        return await self._get(rev, "PTR")


ZONE: dict[str, dict[str, Any]] = {
    "example.com": {"TXT": ["v=spf1 ip4:192.0.2.0/24 mx -all exp=why.example.com"],
                    "MX": [(10, "mx.example.com")]},
    "why.example.com": {"TXT": ["%{i} may not send for %{d} (%{s}, seen by %{r})"]},
    "mx.example.com": {"A": ["198.51.100.7"], "AAAA": ["2001:db8::7"]},
    "helo.example.net": {"TXT": ["v=spf1 a -all"], "A": ["203.0.113.5"]},
    "soft.example.com": {"TXT": ["v=spf1 ~all"]},
    "neutral.example.com": {"TXT": ["v=spf1 ?all", "not spf"]},
    "two.example.com": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "void.example.com": {"TXT": ["v=spf1 a:n1.example.com a:n2.example.com a:n3.example.com +all"]},
    "voidok.example.com": {"TXT": ["v=spf1 a:n1.example.com a:n2.example.com +all"]},
    "many.example.com": {"TXT": ["v=spf1 " + "a " * 11 + "+all"], "A": ["10.0.0.1"]},
    "ten.example.com": {"TXT": ["v=spf1 " + "a " * 10 + "+all"], "A": ["10.0.0.1"]},
    "temp.example.com": {"TXT": TEMP},
    "inc-none.example.com": {"TXT": ["v=spf1 include:nothing.example.com -all"]},
    "nothing.example.com": {"A": ["10.0.0.9"]},
    "mxorder.example.com": {"TXT": ["v=spf1 mx -all"],
                            "MX": [(10, "good.example.com"), (20, "broken.example.com")]},
    "mxerrfirst.example.com": {"TXT": ["v=spf1 mx -all"],
                               "MX": [(10, "broken.example.com"), (20, "good.example.com")]},
    "good.example.com": {"A": ["192.0.2.99"]},
    "broken.example.com": {"A": TEMP},
    "6.example.com": {"TXT": ["v=spf1 ip6:2001:db8::/32 ip4:192.0.2.1 -all"]},
}  # fmt: skip


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(ZONE)


async def check(resolver: Resolver, ip: str, domain: str, **kw: Any) -> SPFResult:
    return await check_host(resolver, ip, domain, f"user@{domain}", "helo.example.net", **kw)


@pytest.mark.parametrize(
    ("ip", "domain", "expected"),
    [
        ("192.0.2.10", "example.com", Result.PASS),
        ("198.51.100.7", "example.com", Result.PASS),  # via mx
        ("2001:db8::7", "example.com", Result.PASS),
        ("203.0.113.1", "example.com", Result.FAIL),
        ("::ffff:192.0.2.10", "example.com", Result.PASS),  # IPv4-mapped is IPv4 (§5)
        ("203.0.113.1", "soft.example.com", Result.SOFTFAIL),
        ("203.0.113.1", "neutral.example.com", Result.NEUTRAL),
        ("203.0.113.1", "nothing.example.com", Result.NONE),  # no SPF record
        ("203.0.113.1", "absent.example.com", Result.NONE),  # NXDOMAIN
        ("203.0.113.1", "localhost", Result.NONE),  # not a multi-label name (§4.3)
        ("203.0.113.1", "two.example.com", Result.PERMERROR),  # two records (§4.5)
        ("203.0.113.1", "temp.example.com", Result.TEMPERROR),
        ("203.0.113.1", "void.example.com", Result.PERMERROR),  # 3 void lookups (§4.6.4)
        ("203.0.113.1", "voidok.example.com", Result.PASS),
        ("203.0.113.1", "many.example.com", Result.PERMERROR),  # 11 DNS terms
        ("203.0.113.1", "ten.example.com", Result.PASS),
        ("203.0.113.1", "inc-none.example.com", Result.PERMERROR),  # include of none
        ("192.0.2.99", "mxorder.example.com", Result.PASS),  # a match before the error
        ("192.0.2.99", "mxerrfirst.example.com", Result.TEMPERROR),  # the error comes first
        ("2001:db8:1::1", "6.example.com", Result.PASS),
        ("192.0.2.1", "6.example.com", Result.PASS),
    ],
)
async def test_results(resolver: FakeResolver, ip: str, domain: str, expected: Result) -> None:
    outcome = await check(resolver, ip, domain)
    assert outcome.result is expected, outcome.comment


async def test_fail_carries_the_expanded_explanation(resolver: FakeResolver) -> None:
    outcome = await check(resolver, "203.0.113.1", "example.com", receiver="mx.tidings.test")
    assert outcome.result is Result.FAIL
    assert outcome.explanation == (
        "203.0.113.1 may not send for example.com (user@example.com, seen by mx.tidings.test)"
    )
    assert outcome.reply_text == outcome.explanation


async def test_no_explanation_without_exp(resolver: FakeResolver) -> None:
    outcome = await check(resolver, "203.0.113.1", "6.example.com")
    assert outcome.result is Result.FAIL
    assert outcome.explanation is None
    assert "203.0.113.1" in outcome.reply_text


async def test_exp_is_looked_up_only_for_fail(resolver: FakeResolver) -> None:
    await check(resolver, "192.0.2.10", "example.com")
    assert ("why.example.com", "TXT") not in resolver.asked


async def test_mail_from_is_checked_when_present(resolver: FakeResolver) -> None:
    outcome = await spf_for_session(resolver, "192.0.2.10", "alice@example.com", "helo.example.net")
    assert (outcome.result, outcome.identity, outcome.domain) == (
        Result.PASS, "mailfrom", "example.com",
    )  # fmt: skip
    assert outcome.auth_results() == (
        "spf=pass (example.com designates 192.0.2.10 as permitted sender) "
        "smtp.mailfrom=alice@example.com"
    )


async def test_null_sender_checks_helo_as_postmaster(resolver: FakeResolver) -> None:
    outcome = await spf_for_session(resolver, "203.0.113.5", "", "helo.example.net")
    assert outcome.result is Result.PASS
    assert outcome.identity == "helo"
    assert outcome.sender == "postmaster@helo.example.net"  # §2.4
    assert outcome.auth_results().endswith(" smtp.helo=helo.example.net")
    literal = await spf_for_session(resolver, "203.0.113.5", "", "[203.0.113.5]")
    assert literal.result is Result.NONE


async def test_empty_local_part_is_postmaster(resolver: FakeResolver) -> None:
    outcome = await check_host(resolver, "192.0.2.10", "example.com", "@example.com")
    assert outcome.sender == "postmaster@example.com"  # §4.3


async def test_auth_results_property_value_when_local_part_needs_quoting(
    resolver: FakeResolver,
) -> None:
    outcome = await spf_for_session(resolver, "192.0.2.10", "a b@example.com", "h.example.net")
    assert outcome.auth_results().endswith(" smtp.mailfrom=example.com")


async def test_slow_dns_becomes_temperror_at_the_time_limit() -> None:
    slow = FakeResolver(ZONE, delay=0.2)
    outcome = await check(slow, "203.0.113.1", "example.com", time_limit=0.1)
    assert outcome.result is Result.TEMPERROR
    assert "0.1s" in outcome.comment
