"""A real DNS server on loopback for tests: UDP and TCP on one ephemeral port, serving a zone the
test writes, the way a recursive resolver would answer a stub (CNAME chains followed, loops
answered SERVFAIL).

A zone maps names to records, each ``(type, value)``::

    {"example.com": [("TXT", "v=spf1 mx -all"), ("MX", (10, "mx.example.com")),
                     ("A", "192.0.2.1"), ("AAAA", "2001:db8::1")],
     "mx.example.com": [("A", "192.0.2.25")],
     "alias.example.com": [("CNAME", "example.com")],
     "slow.example.com": [("TIMEOUT", None)]}

Types: A, AAAA, MX ``(preference, host)`` (host "" is the root: null MX), SRV
``(priority, weight, port, target)``, PTR, CNAME, TXT and
SPF (type 99) as a string or a list of strings (one record's character-strings; a string over
255 octets is split). ``("TIMEOUT", None)`` makes every query for a type the name has no record
of fail: the server answers SERVFAIL, or with ``timeouts="drop"`` does not answer at all so the
client times out. A name not in the zone is NXDOMAIN; a name with no record of the asked type is
NOERROR with no answer (no data).

The server runs in threads (dnslib's DNSServer), so it answers both asyncio clients in the test
process and a ``tidings serve`` child pointed at ``server.address``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SRV, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

Zone = Mapping[str, Sequence[tuple[str, Any]]]

MAX_CNAME_CHAIN = 8


class _Drop(Exception):
    """Raised by the resolver to send no reply at all."""


class _Handler(DNSHandler):
    def handle(self) -> None:
        with contextlib.suppress(_Drop):
            super().handle()

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        packed: bytes = reply.pack()
        if self.protocol == "udp" and len(packed) > 512:
            # RFC 1035 §4.2.1: over UDP only 512 octets; TC set, the question kept (dnslib's own
            # truncate() drops it, which clients reject), and the client retries over TCP.
            truncated = request.reply()
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed


class _QuietLogger:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def key(name: str | bytes | DNSLabel) -> str:
    """The zone key of a name: octets as Latin-1 text, lower case, no trailing dot."""
    if isinstance(name, DNSLabel):
        raw = b".".join(name.label)
    elif isinstance(name, bytes):
        raw = name
    else:
        raw = name.encode("utf-8")
    return raw.decode("latin-1").rstrip(".").lower()


def label(name: str) -> DNSLabel:
    """A dnslib name made of ``name``'s octets, with no escape or IDNA processing."""
    text = name.rstrip(".")
    return DNSLabel([p.encode("utf-8") for p in text.split(".")] if text else [])


def _octets(text: str) -> bytes:
    # Test data writes raw octets as \\xNN escapes (code points below 256): keep them as octets.
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _txt(value: str | Sequence[str]) -> TXT:
    strings = [value] if isinstance(value, str) else list(value)
    chunks: list[bytes] = []
    for s in strings:
        data = _octets(s)
        chunks.extend(data[i : i + 255] for i in range(0, max(len(data), 1), 255))
    # RFC 1035 §3.3.14 requires at least one string; dnspython rejects a TXT with none as a
    # malformed message, so an empty list is served as one empty string.
    return TXT(chunks or [b""])


def _rdata(rtype: str, value: Any) -> Any:
    match rtype:
        case "A":
            return A(str(ipaddress.IPv4Address(value)))
        case "AAAA":
            return AAAA(tuple(ipaddress.IPv6Address(value).packed))
        case "MX":
            preference, host = value
            return MX(label(str(host)), int(preference))
        case "PTR":
            return PTR(label(value))
        case "CNAME":
            return CNAME(label(value))
        case "TXT" | "SPF":
            return _txt(value)
        case "SRV":
            priority, weight, port, target = value
            return SRV(int(priority), int(weight), int(port), label(str(target)))
    raise ValueError(f"unsupported record type {rtype!r}")


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, server: DNSTestServer) -> None:
        self.server = server

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qtype = QTYPE.get(request.q.qtype)
        owner = request.q.qname
        zone = self.server.zone
        self.server.log_query(key(owner), qtype)
        for _ in range(MAX_CNAME_CHAIN):
            entries = zone.get(key(owner))
            if entries is None:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            cnames = [v for t, v in entries if t == "CNAME"]
            if cnames and qtype != "CNAME":
                target = label(cnames[0])
                reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=self.server.ttl))
                owner = target
                continue
            matching = [(t, v) for t, v in entries if t == qtype]
            if not matching and any(t == "TIMEOUT" for t, _ in entries):
                if self.server.timeouts == "drop":
                    raise _Drop
                return self._servfail(request)
            for t, v in matching:
                reply.add_answer(
                    RR(owner, getattr(QTYPE, t), rdata=_rdata(t, v), ttl=self.server.ttl)
                )
            return reply
        return self._servfail(request)  # a CNAME loop (RFC 1034 §3.6.2)

    @staticmethod
    def _servfail(request: DNSRecord) -> DNSRecord:
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return reply


class DNSTestServer:
    """``with DNSTestServer(zone) as dns: ... dns.address`` → ``"127.0.0.1:PORT"``."""

    def __init__(
        self,
        zone: Zone | None = None,
        *,
        timeouts: str = "servfail",
        ttl: int = 300,
        host: str = "127.0.0.1",
    ) -> None:
        if timeouts not in ("servfail", "drop"):
            raise ValueError("timeouts must be 'servfail' or 'drop'")
        self.timeouts = timeouts
        self.ttl = ttl
        self.host = host
        self.port = 0
        self.zone: dict[str, list[tuple[str, Any]]] = {}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[DNSServer] = []
        self.set_zone(zone or {})

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_zone(self, zone: Zone) -> None:
        """Replace the whole zone (names are matched case-insensitively)."""
        normalised: dict[str, list[tuple[str, Any]]] = {}
        for name, records in zone.items():
            normalised.setdefault(key(name), []).extend((t.upper(), v) for t, v in records)
        self.zone = normalised

    def add(self, name: str, records: Iterable[tuple[str, Any]]) -> None:
        self.zone.setdefault(key(name), []).extend((t.upper(), v) for t, v in records)

    def log_query(self, name: str, qtype: str) -> None:
        with self._lock:
            self.queries.append((name, qtype))

    def start(self) -> DNSTestServer:
        resolver = _ZoneResolver(self)
        for _attempt in range(20):
            udp = DNSServer(
                resolver, address=self.host, port=0, logger=_QuietLogger(), handler=_Handler
            )
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    resolver, address=self.host, port=port, tcp=True,
                    logger=_QuietLogger(), handler=_Handler,
                )  # fmt: skip
            except OSError:  # that port is taken for TCP: try another
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                thread = threading.Thread(
                    target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
                )
                thread.start()
            return self
        raise RuntimeError("no free port for both UDP and TCP")

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> DNSTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
