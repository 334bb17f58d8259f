"""SPF (RFC 7208): may this IP send mail for this MAIL FROM (or HELO) domain?

:func:`check_host` is §4's function, asynchronous on :mod:`tidings.dns`; :func:`spf_for_session`
applies the SMTP rules for which identity to check (§2.3, §2.4). Records are parsed whole by
:mod:`tidings.mailauth.spf_record` before evaluation. One check shares one budget of 10
DNS-querying terms and 2 void lookups across its includes and redirects (§4.6.4).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from tidings.dns import DNSTempError, InvalidName, NXDomain, Resolver
from tidings.mailauth.spf_record import (
    DNS_MECHANISMS,
    IPAddress,
    MacroContext,
    MacroString,
    Mechanism,
    Record,
    SPFSyntaxError,
    expand,
    expand_domain,
    is_spf_record,
    macro_letters,
    parse_macro_string,
    parse_record,
)

T = TypeVar("T")

MAX_DNS_TERMS = 10  # §4.6.4
MAX_VOID_LOOKUPS = 2  # §4.6.4
MAX_NAMES_PER_TERM = 10  # §4.6.4: MX hosts (more is a permerror), PTR names (rest ignored)
TIME_LIMIT = 20.0  # §4.6.4: "at least 20 seconds" before temperror


class Result(enum.StrEnum):
    """§2.6."""

    PASS = "pass"  # noqa: S105 (a result, not a password)
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


QUALIFIER_RESULTS = {"+": Result.PASS, "-": Result.FAIL, "~": Result.SOFTFAIL, "?": Result.NEUTRAL}


@dataclass(frozen=True)
class SPFResult:
    """The outcome of one SPF check.

    ``explanation`` is the text the domain published with ``exp=`` (§6.2), only for ``fail``
    and only when it could be fetched and expanded; otherwise None, and :attr:`reply_text` gives
    a local default for the SMTP reply.
    """

    result: Result
    domain: str  # the domain whose policy was checked
    sender: str  # <sender> as evaluated (postmaster@helo for a null MAIL FROM)
    ip: str
    identity: str = "mailfrom"  # or "helo" (RFC 8601 §2.7.2 property names)
    explanation: str | None = None
    comment: str = ""

    @property
    def reply_text(self) -> str:
        if self.explanation is not None:
            return self.explanation
        return f"SPF {self.result}: {self.ip} is not allowed to send mail for {self.domain}"

    def auth_results(self) -> str:
        """This result as an Authentication-Results resinfo (RFC 8601 §2.7.2)."""
        comment = f" ({_comment_safe(self.comment)})" if self.comment else ""
        if self.identity == "helo":
            prop = f"smtp.helo={_pvalue(self.domain)}"
        else:
            prop = f"smtp.mailfrom={_pvalue(self.sender)}"
        return f"spf={self.result}{comment} {prop}"


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\Z")


def _pvalue(address: str) -> str:
    # RFC 8601 §2.2 pvalue: local-part "@" domain, or the domain alone when the local-part
    # would need quoting.
    local, at, domain = address.rpartition("@")
    if at and _DOT_ATOM.match(local) and domain:
        return address
    return domain or address


def _comment_safe(text: str) -> str:
    if text.isprintable() and not _COMMENT_UNSAFE.search(text):
        return text  # the usual case, without a look at every character
    return "".join(c if c.isprintable() and c not in "()\\" else " " for c in text)


_COMMENT_UNSAFE = re.compile(r"[()\\]")


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass
class _Check:
    """One check_host() and everything it recurses into: shared limits and lookups."""

    resolver: Resolver
    ip: IPAddress
    sender: str
    helo: str
    receiver: str
    dns_terms: int = 0
    void_lookups: int = 0
    _validated: list[str] | None = field(default=None, repr=False)
    _ptr_void: bool = False

    def context(self, domain: str, validated_name: str = "unknown") -> MacroContext:
        return MacroContext(
            self.sender,
            domain,
            self.ip,
            self.helo,
            self.receiver,
            int(time.time()),
            validated_name,
        )

    # -- limits (§4.6.4) -----------------------------------------------------------------------

    def count_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def count_void(self) -> None:
        self.void_lookups += 1
        if self.void_lookups > MAX_VOID_LOOKUPS:
            raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")

    async def lookup(self, aw: Awaitable[list[T]], *, void: bool = True) -> list[T]:
        """A DNS answer; NXDOMAIN and no-data are [] and (when ``void``) count as void."""
        try:
            answer = await aw
        except InvalidName:
            return []  # cannot be queried, so cannot exist (§4.3 by analogy)
        except NXDomain:
            answer = []
        except DNSTempError as e:
            raise _TempError(str(e)) from None
        if not answer and void:
            self.count_void()
        return answer

    # -- macros --------------------------------------------------------------------------------

    async def expand(self, ms: MacroString, domain: str, *, as_domain: bool = True) -> str:
        name = "unknown"
        if "p" in macro_letters(ms):
            name = await self.validated_name(domain)
        ctx = self.context(domain, name)
        return expand_domain(ms, ctx) if as_domain else expand(ms, ctx)

    async def validated_names(self) -> list[str]:
        """§5.5: the PTR names of <ip> (the first 10) whose A/AAAA lead back to <ip>."""
        if self._validated is not None:
            return self._validated
        try:
            names = (await self.resolver.ptr(self.ip))[:MAX_NAMES_PER_TERM]
            self._ptr_void = not names
        except NXDomain:
            names, self._ptr_void = [], True
        except DNSTempError:
            names = []  # §5.5: a PTR lookup error makes the mechanism not match

        async def confirms(name: str) -> bool:
            try:
                return self.ip in await self.resolver.addresses(name, self.ip.version)
            except (NXDomain, DNSTempError):
                return False  # §5.5: an error on one name skips that name

        found = await asyncio.gather(*(confirms(n) for n in names))
        self._validated = [n for n, ok in zip(names, found, strict=True) if ok]
        return self._validated

    async def validated_name(self, domain: str) -> str:
        """%{p} (§7.3): a validated name, preferring <domain> itself, then its subdomains."""
        names = await self.validated_names()
        for name in names:
            if name.lower() == domain.lower():
                return name
        for name in names:
            if name.lower().endswith("." + domain.lower()):
                return name
        return names[0] if names else "unknown"

    # -- evaluation (§4.6, §5, §6) -------------------------------------------------------------

    async def record(self, domain: str) -> Record | None:
        """§4.4, §4.5: the one SPF record at ``domain``, or None when there is none."""
        try:
            texts = await self.resolver.txt(domain)
        except NXDomain:
            return None
        except DNSTempError as e:
            raise _TempError(str(e)) from None
        records = [t for t in texts if is_spf_record(t)]
        if not records:
            return None
        if len(records) > 1:
            raise _PermError(f"{domain} publishes {len(records)} SPF records")
        try:
            return parse_record(records[0])
        except SPFSyntaxError as e:
            raise _PermError(f"{domain}: {e}") from None

    async def evaluate(self, domain: str) -> tuple[Result, Record | None, str]:
        """check_host()'s core: the result, and the record and domain whose exp= applies."""
        record = await self.record(domain)
        if record is None:
            return Result.NONE, None, domain
        for mechanism in record.mechanisms:
            if await self.matches(mechanism, domain):
                return QUALIFIER_RESULTS[mechanism.qualifier], record, domain
        if record.redirect is not None:
            # §6.1: redirect counts as a DNS term; its record's result (and exp=) replace ours.
            self.count_term()
            target = await self.expand(record.redirect, domain)
            result, final, final_domain = await self.evaluate(target)
            if result is Result.NONE:
                raise _PermError(f"redirect to {target}, which has no SPF record")
            return result, final, final_domain
        return Result.NEUTRAL, record, domain  # §4.7

    async def matches(self, mech: Mechanism, domain: str) -> bool:
        kind = mech.kind
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            return mech.network is not None and self.ip in mech.network
        if kind in DNS_MECHANISMS:
            self.count_term()
        target = domain if mech.domain is None else await self.expand(mech.domain, domain)
        if kind == "include":
            return await self.include(target)
        if kind == "a":
            found = await self.lookup(self.resolver.addresses(target, self.ip.version))
            return self.in_cidr(found, mech)
        if kind == "mx":
            return await self.mx(target, mech)
        if kind == "ptr":
            return await self.ptr(target)
        if kind == "exists":
            # §5.7: always an A query, whatever the connection's IP version.
            return bool(await self.lookup(self.resolver.a(target)))
        raise _PermError(f"unknown mechanism {kind}")  # pragma: no cover: the parser refuses

    def in_cidr(self, addresses: list[IPAddress], mech: Mechanism) -> bool:
        prefix = mech.cidr4 if self.ip.version == 4 else mech.cidr6
        network = ipaddress.ip_network(f"{self.ip}/{prefix}", strict=False)
        return any(a in network for a in addresses)

    async def include(self, target: str) -> bool:
        """§5.2: pass matches; fail, softfail, neutral do not; none is a permerror."""
        result, _, _ = await self.evaluate(target)
        if result is Result.NONE:
            raise _PermError(f"include:{target} has no SPF record")
        return result is Result.PASS

    async def mx(self, target: str, mech: Mechanism) -> bool:
        """§5.4: any address of any MX host; more than 10 MX records is a permerror."""
        hosts = [m.host for m in await self.lookup(self.resolver.mx(target))]
        if len(hosts) > MAX_NAMES_PER_TERM:
            raise _PermError(f"mx:{target} has more than {MAX_NAMES_PER_TERM} MX records")
        hosts = [h for h in hosts if h]  # a null MX (RFC 7505) names no host
        answers = await asyncio.gather(
            *(self.lookup(self.resolver.addresses(h, self.ip.version), void=False) for h in hosts),
            return_exceptions=True,
        )
        # In MX order, as a sequential evaluation would meet them: a match before any error
        # wins, an error before any match is that error.
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            if self.in_cidr(answer, mech):
                return True
        return False

    async def ptr(self, target: str) -> bool:
        """§5.5: some validated name of <ip> is ``target`` or a subdomain of it."""
        validated = await self.validated_names()
        if self._ptr_void:
            self.count_void()
        low = target.lower()
        return any(n.lower() == low or n.lower().endswith("." + low) for n in validated)

    async def explain(self, record: Record, domain: str) -> str | None:
        """§6.2: the exp= text, or None if anything about it goes wrong (never an error)."""
        if record.explanation is None:
            return None
        try:
            target = await self.expand(record.explanation, domain)
            texts = await self.resolver.txt(target)
            if len(texts) != 1 or not texts[0].isascii():
                return None
            name = "unknown"
            ms = parse_macro_string(texts[0], explanation=True)
            if "p" in macro_letters(ms):
                name = await self.validated_name(domain)
            return expand(ms, self.context(domain, name))
        except (SPFSyntaxError, NXDomain, DNSTempError, _TempError, _PermError):
            return None


def _as_ip(ip: str | IPAddress) -> IPAddress:
    """<ip>, with an IPv4-mapped IPv6 address treated as the IPv4 address it is (§5)."""
    return _parse_ip(ip) if isinstance(ip, str) else _unmapped(ip)


@functools.lru_cache(maxsize=4096)
def _parse_ip(ip: str) -> IPAddress:
    """:func:`_as_ip` of a text address, remembered: a client sends many messages."""
    return _unmapped(ipaddress.ip_address(ip))


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_LABEL_OK = re.compile(r"[^.]{1,63}\Z")


def valid_domain(domain: str) -> bool:
    """§4.3: a multi-label name with no empty or over-long label (an address literal is not)."""
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or len(domain) > 253 or domain.startswith("["):
        return False
    labels = domain.split(".")
    return len(labels) > 1 and all(_LABEL_OK.match(label) for label in labels)


async def check_host(
    resolver: Resolver,
    ip: str | IPAddress,
    domain: str,
    sender: str,
    helo: str = "",
    *,
    identity: str = "mailfrom",
    receiver: str = "unknown",
    time_limit: float = TIME_LIMIT,
) -> SPFResult:
    """RFC 7208 §4: the SPF result for ``ip`` sending as ``sender`` under ``domain``."""
    address = _as_ip(ip)
    local, at, sender_domain = sender.rpartition("@")
    if not at:
        local, sender_domain = "", sender
    sender = f"{local or 'postmaster'}@{sender_domain}"  # §4.3
    domain = domain[:-1] if domain.endswith(".") else domain

    ip_text = str(address)

    def done(result: Result, comment: str, explanation: str | None = None) -> SPFResult:
        return SPFResult(result, domain, sender, ip_text, identity, explanation, comment)

    if not valid_domain(domain):
        return done(Result.NONE, f"{domain!r} is not a valid domain name")
    check = _Check(resolver, address, sender, helo, receiver)
    try:
        async with asyncio.timeout(time_limit):
            result, record, final_domain = await check.evaluate(domain)
            explanation = None
            if result is Result.FAIL and record is not None:
                explanation = await check.explain(record, final_domain)
    except _PermError as e:
        return done(Result.PERMERROR, str(e))
    except _TempError as e:
        return done(Result.TEMPERROR, str(e))
    except TimeoutError:
        return done(Result.TEMPERROR, f"SPF evaluation took over {time_limit:g}s")
    return done(result, _describe(result, address, domain), explanation)


def _describe(result: Result, ip: IPAddress, domain: str) -> str:
    match result:
        case Result.PASS:
            return f"{domain} designates {ip} as permitted sender"
        case Result.FAIL | Result.SOFTFAIL:
            return f"{domain} does not designate {ip} as permitted sender"
        case Result.NONE:
            return f"{domain} publishes no SPF record"
    return f"{ip} is neither permitted nor denied by {domain}"


async def check_helo(
    resolver: Resolver, ip: str | IPAddress, helo: str, *, receiver: str = "unknown"
) -> SPFResult:
    """§2.3: the HELO identity, checked as postmaster@helo."""
    return await check_host(
        resolver, ip, helo, f"postmaster@{helo}", helo, identity="helo", receiver=receiver
    )


async def spf_for_session(
    resolver: Resolver,
    ip: str | IPAddress,
    mail_from: str,
    helo: str,
    *,
    receiver: str = "unknown",
) -> SPFResult:
    """The SPF result an SMTP server acts on: MAIL FROM's (§2.4), or with a null reverse-path
    the HELO identity's (§2.4: <sender> is postmaster@helo)."""
    if not mail_from:
        return await check_helo(resolver, ip, helo, receiver=receiver)
    domain = mail_from.rpartition("@")[2]
    return await check_host(resolver, ip, domain, mail_from, helo, receiver=receiver)


__all__ = [
    "Result",
    "SPFResult",
    "check_helo",
    "check_host",
    "spf_for_session",
    "valid_domain",
]
