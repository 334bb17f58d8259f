"""MTA-STS for outbound mail (RFC 8461): discover, fetch, parse and cache other domains' policies.

A domain that publishes a policy says that its mail hosts take mail over TLS with a certificate
that verifies: the ``_mta-sts`` TXT record announces it (with an ``id`` that changes whenever
the policy does, §3.1) and the policy itself is served over HTTPS at
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (§3.3). The parts:

* :func:`parse_txt` and :func:`parse_policy` read the record and the policy text; they are pure
  (no I/O) and never raise anything but :class:`PolicyError`, so they can be fuzzed.
* :func:`mx_matches` applies an ``mx`` pattern to an MX host name (§4.1).
* :class:`PolicyCache` finds the policy that applies to a domain now, fetching it when the TXT
  id says it changed and keeping it in memory for its ``max_age`` (§5.1). The cache lives in
  this process only: after a restart policies are fetched again.

The queue worker applies what it returns; TLS-RPT reports (RFC 8460) are not sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import aiohttp.abc

from tidings.config import Config, ConfigError, resolve_path
from tidings.dns import DNSError, Resolver

log = logging.getLogger(__name__)

# RFC 8461 §3.2: max_age is at most 31557600 seconds (about a year).
MAX_MAX_AGE = 31557600
# §3.3: senders may limit the size of a policy; 64 KiB is what the RFC suggests.
MAX_POLICY_SIZE = 64 * 1024
# §3.3: a policy fetch gives up after this long (the RFC suggests "a reasonable timeout").
FETCH_TIMEOUT = 30.0
# After a failed fetch, the same policy id is not asked for again this soon: a broken policy
# server does not cost every delivery attempt a fetch.
FETCH_BACKOFF = 60.0
POLICY_PATH = "/.well-known/mta-sts.txt"
MODES = ("enforce", "testing", "none")

# §3.1: sts-id = 1*32(ALPHA / DIGIT); §3.2 field names and values.
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")


class PolicyError(ValueError):
    """A TXT record or policy text that is not a valid MTA-STS one, or a fetch that failed."""


@dataclass(frozen=True)
class Policy:
    """One domain's MTA-STS policy (RFC 8461 §3.2)."""

    mode: str  # "enforce", "testing" or "none"
    mx: tuple[str, ...]  # patterns: "mail.example.com" or "*.example.com"
    max_age: int  # seconds

    def allows(self, host: str) -> bool:
        """Whether MX host ``host`` matches one of the policy's ``mx`` patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_txt(records: Sequence[str]) -> str:
    """The policy id of the ``_mta-sts`` TXT records (§3.1). Records that do not start with
    ``v=STSv1`` are ignored; there must be exactly one that does, and it must carry a valid id.
    Raises :class:`PolicyError` otherwise."""
    candidates = [r for r in records if r.startswith("v=STSv1")]
    if len(candidates) != 1:
        raise PolicyError(f"{len(candidates)} v=STSv1 TXT records (need exactly one)")
    fields: dict[str, str] = {}
    for raw in candidates[0].split(";"):
        part = raw.strip(" \t")
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise PolicyError(f"TXT field without '=': {part[:40]!r}")
        fields.setdefault(name.strip(" \t"), value.strip(" \t"))
    if fields.get("v") != "STSv1":
        raise PolicyError("TXT record: v=STSv1 must come first")
    policy_id = fields.get("id", "")
    if not _ID.fullmatch(policy_id):
        raise PolicyError(f"TXT record: bad id {policy_id[:40]!r}")
    return policy_id


def parse_policy(text: str) -> Policy:
    """The policy in ``text`` (§3.2): ``key: value`` lines ending in CRLF or LF. ``version``
    must be ``STSv1``; ``mode`` one of enforce, testing, none; ``max_age`` a number of seconds
    (more than 31557600 counts as 31557600); ``mx`` one or more patterns (none needed with
    mode none). Unknown fields are ignored; of a field other than ``mx`` given twice, the first
    counts. Raises :class:`PolicyError`."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.split("\n"):
        line = raw.removesuffix("\r")
        if not line.strip(" \t"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise PolicyError(f"not a policy line: {line[:60]!r}")
        value = value.strip(" \t")
        if name == "mx":
            mx.append(value)
        else:
            fields.setdefault(name, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version: expected STSv1, got {fields.get('version')!r}")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode: expected enforce, testing or none, got {mode!r}")
    max_age = fields.get("max_age", "")
    if not (max_age.isascii() and _MAX_AGE.fullmatch(max_age)):
        raise PolicyError(f"max_age: expected a number of seconds, got {max_age[:20]!r}")
    patterns = tuple(_valid_pattern(p) for p in mx)
    if not patterns and mode != "none":
        raise PolicyError("no mx field")
    return Policy(mode, patterns, min(int(max_age), MAX_MAX_AGE))


def _valid_pattern(pattern: str) -> str:
    name = pattern.lower().rstrip(".")
    labels = name.removeprefix("*.").split(".")
    if not name or not all(labels) or "*" in name.removeprefix("*.") or not name.isascii():
        raise PolicyError(f"mx: not a host name or *.domain pattern: {pattern[:60]!r}")
    return name


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: ``host`` is ``pattern``, or ``pattern`` is ``*.`` followed by the host
    without its first label (the wildcard stands for exactly one label). Case does not matter,
    nor a trailing dot."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first and dot and rest) and rest == pattern[2:]
    return host == pattern


def verified_context(config: Config) -> ssl.SSLContext:
    """A client context that checks the certificate chain and the host name (TLS ≥ 1.2),
    trusting the system store and ``relay.ca_file``. Raises ConfigError for an unusable file."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.relay.ca_file:
        path = resolve_path(config.base_dir, config.relay.ca_file)
        try:
            context.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"relay.ca_file: cannot load {path}: {e}") from None
    return context


class _DNSAdapter(aiohttp.abc.AbstractResolver):
    """aiohttp's host lookups through Tidings' one resolver (and its configured nameservers)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        found: list[aiohttp.abc.ResolveResult] = []
        versions = {socket.AF_INET: (4,), socket.AF_INET6: (6,)}.get(family, (6, 4))
        for version in versions:
            try:
                ips = await self.resolver.addresses(host, version)
            except DNSError:
                continue
            af = socket.AF_INET6 if version == 6 else socket.AF_INET
            found.extend(
                {"hostname": host, "host": str(ip), "port": port, "family": af,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}
                for ip in ips
            )  # fmt: skip
        if not found:
            raise OSError(f"{host}: no address")
        return found

    async def close(self) -> None:
        return None


@dataclass
class _Entry:
    policy_id: str
    policy: Policy
    expires: float  # on the cache's clock


class PolicyCache:
    """The MTA-STS policy of each domain the queue sends to, in memory (RFC 8461 §5.1)."""

    def __init__(
        self,
        resolver: Resolver,
        tls: ssl.SSLContext,
        *,
        port: int = 443,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.tls = tls
        self.port = port
        self.timeout = timeout
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._failed: dict[tuple[str, str], float] = {}  # (domain, id) → retry after
        self._locks: dict[str, asyncio.Lock] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The policy to apply to mail for ``domain`` now, or None. A policy whose TXT id is
        unchanged comes from the cache; a new id (or none cached) means a fetch. When the
        record cannot be found or the fetch fails, a cached policy that has not expired still
        applies (§5.1); otherwise there is none."""
        domain = domain.lower().rstrip(".")
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:  # concurrent deliveries to one domain share one fetch
            return await self._policy(domain)

    async def _policy(self, domain: str) -> Policy | None:
        now = self.clock()
        cached = self._entries.get(domain)
        if cached is not None and cached.expires <= now:
            del self._entries[domain]
            cached = None
        try:
            policy_id = parse_txt(await self.resolver.txt(f"_mta-sts.{domain}"))
        except (DNSError, PolicyError) as e:
            if cached is not None:
                log.info("mta-sts: %s: no usable TXT record (%s); using the cached policy",
                         domain, e)  # fmt: skip
            return cached.policy if cached else None
        if cached is not None and cached.policy_id == policy_id:
            return cached.policy
        if self._failed.get((domain, policy_id), 0.0) > now:
            return cached.policy if cached else None
        try:
            policy = await self.fetch(domain)
        except PolicyError as e:
            self._failed[(domain, policy_id)] = now + FETCH_BACKOFF
            if cached is not None:
                log.warning("mta-sts: %s: cannot fetch policy id %s (%s); using the cached "
                            "policy id %s", domain, policy_id, e, cached.policy_id)  # fmt: skip
                return cached.policy
            log.warning("mta-sts: %s: cannot fetch policy id %s (%s); none applies",
                        domain, policy_id, e)  # fmt: skip
            return None
        self._failed.pop((domain, policy_id), None)
        self._entries[domain] = _Entry(policy_id, policy, self.clock() + policy.max_age)
        log.info("mta-sts: %s: policy id %s: mode %s, mx %s, max_age %d", domain, policy_id,
                 policy.mode, ",".join(policy.mx) or "-", policy.max_age)  # fmt: skip
        return policy

    def url(self, domain: str) -> str:
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://mta-sts.{domain}{port}{POLICY_PATH}"

    async def fetch(self, domain: str) -> Policy:
        """Fetch and parse the policy of ``domain`` (§3.3): HTTPS with a certificate valid for
        ``mta-sts.DOMAIN``, a 200 answer of type text/plain, no redirects, at most 64 KiB."""
        url = self.url(domain)
        connector = aiohttp.TCPConnector(
            ssl=self.tls, resolver=_DNSAdapter(self.resolver), use_dns_cache=False
        )
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get(url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    raise PolicyError(f"{url}: HTTP {response.status}")
                if response.content_type != "text/plain":
                    raise PolicyError(f"{url}: content type {response.content_type!r}")
                body = b""
                async for chunk in response.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > MAX_POLICY_SIZE:
                        raise PolicyError(f"{url}: larger than {MAX_POLICY_SIZE} bytes")
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as e:
            raise PolicyError(f"{url}: {_describe(e)}") from e
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"{url}: not UTF-8 text") from None
        try:
            return parse_policy(text)
        except PolicyError as e:
            raise PolicyError(f"{url}: {e}") from None


def _describe(error: BaseException) -> str:
    return " ".join((str(error) or type(error).__name__).split())[:300]


__all__ = [
    "Policy",
    "PolicyCache",
    "PolicyError",
    "mx_matches",
    "parse_policy",
    "parse_txt",
    "verified_context",
]
