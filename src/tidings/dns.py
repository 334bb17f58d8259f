"""The one DNS resolver everything uses: SPF, DKIM, DMARC, the outbound queue, ``dns check``.

It wraps dnspython's asyncio resolver (so a lookup never blocks the event loop) behind a small
typed API whose outcomes are the three a mail check must keep apart:

* an answer, possibly empty — *no data* (RCODE 0 with no records of the type) is ``[]``;
* :class:`NXDomain` — the name does not exist (RCODE 3);
* :class:`DNSTempError` — timeout, SERVFAIL, REFUSED, network trouble: try again later.

SPF's void-lookup limit (RFC 7208 §4.6.4) counts both no-data and NXDOMAIN, and a TEMPERROR must
never be mistaken for either. Answers, positive and negative, are cached for their TTL in a bounded
LRU, and concurrent identical queries share one query in flight: one inbound message asks
SPF, DKIM and DMARC about the same few names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from tidings.config import parse_hostport

if TYPE_CHECKING:
    from tidings.config import DNSConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Negative answers without an SOA to say how long they hold (RFC 2308 §5) are kept this long.
DEFAULT_NEGATIVE_TTL = 60.0
# No answer is trusted for longer than a day, whatever its TTL says.
MAX_TTL = 86400.0


class DNSError(Exception):
    """Base of the resolver's errors."""


class DNSTempError(DNSError):
    """The question could not be answered now (timeout, SERVFAIL, …): a temporary failure."""


class NXDomain(DNSError):
    """The name does not exist (RCODE 3, RFC 1035 §4.1.1)."""


class InvalidName(NXDomain):
    """Text that cannot be a DNS name (empty or over-long label): no such name can exist."""


class MX(NamedTuple):
    """One MX record (RFC 1035 §3.3.9); ``host`` is ``""`` for the root (null MX, RFC 7505)."""

    preference: int
    host: str


class SRV(NamedTuple):
    """One SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


def is_null_mx(records: Sequence[MX]) -> bool:
    """RFC 7505 §3: a single MX of preference 0 naming the root means "accepts no mail"."""
    return len(records) == 1 and records[0].preference == 0 and records[0].host == ""


def to_name(name: str) -> dns.name.Name:
    """An absolute DNS name from text, label by label (no escape processing: SPF macros may
    produce names with ``%`` or spaces, which are valid octets in a label). A trailing dot is
    ignored; non-ASCII labels are IDNA-encoded. Raises :class:`InvalidName`."""
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise InvalidName("empty domain name")
    labels: list[bytes] = []
    for label in text.split("."):
        if label.isascii():
            labels.append(label.encode("ascii"))
            continue
        try:
            labels.append(label.encode("idna"))
        except UnicodeError:
            raise InvalidName(f"not a valid IDN label: {label!r}") from None
    try:
        return dns.name.Name([*labels, b""])
    except dns.exception.DNSException as e:
        raise InvalidName(f"{name!r}: {e}") from None


def name_text(name: dns.name.Name) -> str:
    """The inverse of :func:`to_name`: labels joined by dots, no trailing dot, no escaping."""
    return ".".join(label.decode("utf-8", "replace") for label in name.labels if label)


def _join_txt(strings: Sequence[bytes]) -> bytes:
    # RFC 7208 §3.3 (and RFC 6376 §3.6.2.2): the strings of one TXT record are concatenated
    # without any separator.
    return b"".join(strings)


class _Answer(NamedTuple):
    records: tuple[object, ...] | None  # None: NXDOMAIN
    ttl: float


_CacheKey = tuple[str, dns.rdatatype.RdataType]  # (lower-case name text, type)


def _records_of(answer: _Answer, name: str) -> tuple[object, ...]:
    if answer.records is None:
        raise NXDomain(f"{name.rstrip('.')}: no such domain")
    return answer.records


class Resolver:
    """Asynchronous, caching DNS lookups with a typed result per record type.

    ``nameservers`` are ``host:port`` strings (``[v6]:port``; port 53 when absent); empty means
    the system's resolvers. ``timeout`` bounds one whole lookup, retries included.
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        timeout: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        self.timeout = timeout
        self.cache_size = cache_size
        self._cache: OrderedDict[_CacheKey, tuple[float, _Answer]] = OrderedDict()
        self._inflight: dict[_CacheKey, asyncio.Task[_Answer]] = {}
        self._dns = self._make_resolver(nameservers, timeout)

    @classmethod
    def from_config(cls, config: DNSConfig) -> Resolver:
        return cls(config.nameservers, config.timeout)

    @staticmethod
    def _make_resolver(nameservers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            servers: list[dns.nameserver.Nameserver] = []
            for ns in nameservers:
                host, port = parse_hostport(ns, default_port=53)
                servers.append(dns.nameserver.Do53Nameserver(host, port))
            resolver.nameservers = servers
        else:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1"]
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.cache = None  # ours knows NXDOMAIN from no-data
        resolver.retry_servfail = False
        return resolver

    # -- typed lookups -------------------------------------------------------------------------

    async def txt(self, name: str) -> list[str]:
        """The TXT records at ``name``, each one's strings joined (RFC 7208 §3.3), as text.
        Bytes that are not UTF-8 become U+FFFD, so a non-ASCII record stays detectable."""
        return [t.decode("utf-8", "replace") for t in await self.txt_bytes(name)]

    async def txt_bytes(self, name: str) -> list[bytes]:
        """The TXT records at ``name``, each one's strings joined, as bytes (for dkimpy)."""
        records = await self._records(name, dns.rdatatype.TXT)
        return [_join_txt(r.strings) for r in records]  # type: ignore[attr-defined]

    async def a(self, name: str) -> list[ipaddress.IPv4Address]:
        records = await self._records(name, dns.rdatatype.A)
        return [ipaddress.IPv4Address(r.address) for r in records]  # type: ignore[attr-defined]

    async def aaaa(self, name: str) -> list[ipaddress.IPv6Address]:
        records = await self._records(name, dns.rdatatype.AAAA)
        return [ipaddress.IPv6Address(r.address) for r in records]  # type: ignore[attr-defined]

    async def addresses(self, name: str, version: int) -> list[IPAddress]:
        """A (``version`` 4) or AAAA (6) records."""
        if version == 4:
            return list(await self.a(name))
        return list(await self.aaaa(name))

    async def mx(self, name: str) -> list[MX]:
        """MX records, lowest preference first (equal preferences keep the server's order)."""
        records = await self._records(name, dns.rdatatype.MX)
        mxs = [
            MX(int(r.preference), name_text(r.exchange))  # type: ignore[attr-defined]
            for r in records
        ]
        return sorted(mxs, key=lambda m: m.preference)

    async def srv(self, name: str) -> list[SRV]:
        """SRV records (RFC 2782, RFC 6186), lowest priority first."""
        records = await self._records(name, dns.rdatatype.SRV)
        srvs = [
            SRV(int(r.priority), int(r.weight), int(r.port), name_text(r.target))  # type: ignore[attr-defined]
            for r in records
        ]
        return sorted(srvs, key=lambda s: s.priority)

    async def ptr(self, ip: str | IPAddress) -> list[str]:
        """The names a reverse lookup of ``ip`` gives (RFC 1035 §3.5, RFC 3596 §2.5)."""
        rev = dns.reversename.from_address(str(ip))
        records = await self._lookup(rev, dns.rdatatype.PTR)
        return [name_text(r.target) for r in records]  # type: ignore[attr-defined]

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- machinery -----------------------------------------------------------------------------

    async def _records(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[object, ...]:
        # Keyed by the name's text: building and hashing a dns.name.Name for every cache hit
        # cost a checked message about 50 µs of the event loop's time for three lookups.
        key = (name[:-1] if name.endswith(".") else name).lower(), rdtype
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            self._cache.move_to_end(key)
            return _records_of(cached[1], name)
        return await self._lookup(to_name(name), rdtype, key)

    async def _lookup(
        self,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        key: _CacheKey | None = None,
    ) -> tuple[object, ...]:
        key = key or (name_text(qname).lower(), rdtype)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            answer = cached[1]
        else:
            task = self._inflight.get(key)
            if task is None or task.get_loop() is not asyncio.get_running_loop():
                task = asyncio.ensure_future(self._query(qname, rdtype))
                self._inflight[key] = task
                task.add_done_callback(functools.partial(self._settle, key))
            # One caller giving up must not cancel the query the others are waiting for.
            answer = await asyncio.shield(task)
        return _records_of(answer, name_text(qname))

    def _settle(self, key: _CacheKey, task: asyncio.Task[_Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return  # temporary failures are not cached
        answer = task.result()
        if answer.ttl <= 0 or self.cache_size <= 0:
            return
        self._cache[key] = (time.monotonic() + answer.ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Answer:
        try:
            answer = await self._dns.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False, lifetime=self.timeout
            )
        except dns.resolver.NXDOMAIN as e:
            responses = e.responses()  # type: ignore[no-untyped-call]
            return _Answer(None, _negative_ttl(responses.values()))
        except dns.exception.Timeout:
            raise DNSTempError(f"{name_text(qname)}/{rdtype.name}: timed out") from None
        except dns.resolver.NoNameservers:
            raise DNSTempError(f"{name_text(qname)}/{rdtype.name}: server failure") from None
        except (dns.exception.DNSException, OSError) as e:
            raise DNSTempError(f"{name_text(qname)}/{rdtype.name}: {e}") from None
        if answer.rrset is None:
            return _Answer((), _negative_ttl([answer.response]))
        ttl = min(max(answer.expiration - time.time(), 0.0), MAX_TTL)
        return _Answer(tuple(answer.rrset), ttl)


def _negative_ttl(responses: Iterable[object]) -> float:
    """RFC 2308 §5: a negative answer holds for min(SOA TTL, SOA MINIMUM) of its authority."""
    ttls: list[float] = []
    for response in responses:
        if not isinstance(response, dns.message.Message):
            continue
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                with contextlib.suppress(IndexError, AttributeError):
                    ttls.append(float(min(rrset.ttl, rrset[0].minimum)))
    return min(min(ttls) if ttls else DEFAULT_NEGATIVE_TTL, MAX_TTL)


__all__ = [
    "MX",
    "DNSError",
    "DNSTempError",
    "IPAddress",
    "InvalidName",
    "NXDomain",
    "Resolver",
    "is_null_mx",
    "name_text",
    "to_name",
]
