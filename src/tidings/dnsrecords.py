"""The DNS records a Tidings domain should publish, and a check of what is published.

Everything the records say follows from the config and the store: ``server.hostname`` is the MX
host, the SPF-authorised sender and the SRV target; each DKIM key in the store gives one key
record. Building and rendering them is pure (``expected_records``, ``render_zone``); checking is
async on the one :class:`~tidings.dns.Resolver`, so it asks the resolvers the server itself uses.

The choices, for a domain whose mail all comes and goes through this one host:

* SPF ``v=spf1 a:HOST -all`` names the host mail leaves from rather than ``mx``: putting a
  filtering service in front of the MX later must not silently change who may send. ``-all``
  because nothing else sends for the domain, and what a forwarder breaks DKIM still carries.
* DMARC ``p=quarantine`` with ``rua=mailto:postmaster@DOMAIN``: Tidings signs what it sends, so
  legitimate mail aligns; quarantine rather than reject so that a message broken by a mailing
  list lands in Junk instead of bouncing, while the aggregate reports show what fails.
  postmaster is the one address RFC 5321 §4.5.1 already requires to exist.
* MTA-STS in the mode of ``mta_sts.mode``, by default ``testing`` (RFC 8461 §5): a receiver
  never refuses mail because of it, so the self-signed default certificate cannot cost mail;
  TLS-RPT reports say when enforce is safe. The ``id`` is derived from the policy text the HTTP
  listener serves (:func:`mta_sts_policy`), so it moves by itself whenever the policy changes.
* SRV (RFC 6186, RFC 8314 §5.1) with the production ports, implicit TLS preferred (priority 0)
  over STARTTLS (priority 10).

MX, SPF, DMARC and each DKIM key are *required*: receivers judge mail by them. The rest are
*recommended*: clients and MTA-STS work without them.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import dns.rdatatype
import dns.reversename
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tidings.config import Config
from tidings.dns import DNSTempError, IPAddress, NXDomain, Resolver, is_null_mx, name_text, to_name
from tidings.mailauth import spf

T = TypeVar("T")

DEFAULT_TTL = 3600
MX_PREFERENCE = 10
# RFC 1035 §3.3.14: one <character-string> holds at most 255 octets.
MAX_TXT_STRING = 255
# RFC 8461 §3.2: a week, long enough to matter, short enough to change.
MTA_STS_MAX_AGE = 604800
MTA_STS_MODE = "testing"

# (service label, port, priority): RFC 6186 §3 and RFC 8314 §5.1; implicit TLS first.
SRV_SERVICES = (
    ("_submissions._tcp", 465, 0),
    ("_submission._tcp", 587, 10),
    ("_imaps._tcp", 993, 0),
    ("_imap._tcp", 143, 10),
    ("_pop3s._tcp", 995, 0),
    ("_pop3._tcp", 110, 10),
)
CLIENT_CONFIG_HOSTS = ("autoconfig", "autodiscover")


class RecordError(Exception):
    """A record cannot be built from what the store holds (an unreadable DKIM key)."""


class Kind(enum.StrEnum):
    MX = "mx"
    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"
    MTA_STS = "mta-sts"
    TLS_RPT = "tls-rpt"
    SRV = "srv"
    HOST_ALIAS = "host-alias"  # a name that must reach the server host (CNAME)


@dataclass(frozen=True)
class Record:
    """One record to publish. ``value`` is presentation text, except TXT: the joined string."""

    label: str
    kind: Kind
    name: str
    type: str
    value: str
    required: bool
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class DkimKey:
    selector: str
    private_key: str  # PEM


class Status(enum.StrEnum):
    OK = "OK"
    MISSING = "missing"
    DIFFERS = "differs"
    ERROR = "error"  # the lookup failed (timeout, SERVFAIL): not known either way


@dataclass(frozen=True)
class Finding:
    """What the check found for one record, or for one property of the server host."""

    label: str
    name: str
    type: str
    required: bool
    status: Status
    expected: str
    found: tuple[str, ...] = ()
    detail: str = ""
    # A published SPF record other than the suggested one that still authorises the host.
    tolerated: bool = False

    @property
    def failed(self) -> bool:
        return self.required and self.status is not Status.OK and not self.tolerated


@dataclass(frozen=True)
class CheckReport:
    domain: str
    hostname: str
    findings: tuple[Finding, ...]

    @property
    def failed(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.failed)

    @property
    def ok(self) -> bool:
        return not self.failed


# --- expected records (pure) -------------------------------------------------------------------


def dkim_txt(private_pem: str) -> str:
    """The key record for a private key: RFC 6376 §3.6.1 (RSA: base64 SubjectPublicKeyInfo),
    RFC 8463 §4.2 (ed25519: base64 of the raw 32-octet public key)."""
    try:
        key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise RecordError(f"cannot read the private key: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        k = "rsa"
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        k = "ed25519"
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        raise RecordError(f"unsupported key type {type(key).__name__} (use rsa or ed25519)")
    return f"v=DKIM1; k={k}; p={base64.b64encode(public).decode('ascii')}"


def mta_sts_policy(hostname: str, mode: str = MTA_STS_MODE, max_age: int = MTA_STS_MAX_AGE) -> str:
    """The policy file served at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``
    (RFC 8461 §3.2), CRLF lines; the one MX is this host."""
    mx = _ascii(hostname)
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: {max_age}\r\n"


def configured_mta_sts_policy(config: Config) -> str:
    """The policy as ``config`` has it: what the HTTP listener serves and the id is taken of."""
    return mta_sts_policy(config.server.hostname, config.mta_sts.mode, config.mta_sts.max_age)


def mta_sts_id(policy: str) -> str:
    """RFC 8461 §3.1: ``id`` changes whenever the policy does; derived from it, so it is stable
    across runs and moves by itself when the hostname or mode changes."""
    return hashlib.sha256(policy.encode("utf-8")).hexdigest()[:20]


def expected_records(
    domain: str,
    hostname: str,
    dkim_keys: Sequence[DkimKey] = (),
    ttl: int = DEFAULT_TTL,
    *,
    sts_policy: str | None = None,
) -> list[Record]:
    """Every record ``domain`` should publish, required ones first. ``sts_policy``: the
    MTA-STS policy text served (default: :func:`mta_sts_policy` with its defaults)."""
    domain, hostname = _ascii(domain), _ascii(hostname)
    host = f"{hostname}."
    report_to = f"mailto:postmaster@{domain}"

    def rec(label: str, kind: Kind, name: str, rtype: str, value: str, *, required: bool) -> Record:
        return Record(label, kind, name, rtype, value, required, ttl)

    records = [
        rec("MX", Kind.MX, domain, "MX", f"{MX_PREFERENCE} {host}", required=True),
        rec("SPF", Kind.SPF, domain, "TXT", f"v=spf1 a:{hostname} -all", required=True),
    ]
    for key in dkim_keys:
        name, value = f"{key.selector}._domainkey.{domain}", dkim_txt(key.private_key)
        records.append(rec(f"DKIM {key.selector}", Kind.DKIM, name, "TXT", value, required=True))
    dmarc = f"v=DMARC1; p=quarantine; rua={report_to}"
    sts = f"v=STSv1; id={mta_sts_id(sts_policy or mta_sts_policy(hostname))}"
    tlsrpt = f"v=TLSRPTv1; rua={report_to}"
    records += [
        rec("DMARC", Kind.DMARC, f"_dmarc.{domain}", "TXT", dmarc, required=True),
        rec("MTA-STS", Kind.MTA_STS, f"_mta-sts.{domain}", "TXT", sts, required=False),
        rec("MTA-STS host", Kind.HOST_ALIAS, f"mta-sts.{domain}", "CNAME", host, required=False),
        rec("TLS-RPT", Kind.TLS_RPT, f"_smtp._tls.{domain}", "TXT", tlsrpt, required=False),
    ]
    for service, port, priority in SRV_SERVICES:
        label = "SRV " + service.split(".")[0].lstrip("_")
        value = f"{priority} 1 {port} {host}"
        records.append(rec(label, Kind.SRV, f"{service}.{domain}", "SRV", value, required=False))
    for sub in CLIENT_CONFIG_HOSTS:
        records.append(rec(sub, Kind.HOST_ALIAS, f"{sub}.{domain}", "CNAME", host, required=False))
    return records


# --- rendering (pure) --------------------------------------------------------------------------


def txt_strings(value: str) -> list[bytes]:
    """A TXT value cut into <character-string>s of at most 255 octets (RFC 1035 §3.3.14);
    a receiver joins them back without separator (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
    data = value.encode("utf-8")
    return [data[i : i + MAX_TXT_STRING] for i in range(0, max(len(data), 1), MAX_TXT_STRING)]


def _quote(octets: bytes) -> str:
    # RFC 1035 §5.1: in a zone file `"` and `\` are escaped, other octets outside printable
    # ASCII are written \DDD.
    out = []
    for b in octets:
        if b in (0x22, 0x5C):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def zone_value(record: Record) -> str:
    if record.type == "TXT":
        return " ".join(_quote(s) for s in txt_strings(record.value))
    return record.value


def zone_line(record: Record) -> str:
    """``name TTL IN TYPE value`` with an absolute name."""
    return f"{_absolute(record.name)} {record.ttl} IN {record.type} {zone_value(record)}"


def render_zone(domain: str, records: Sequence[Record]) -> str:
    """The records as zone-file lines, required ones under their own comment."""
    lines = [f"; DNS records for {_ascii(domain)}, from `tidings dns records`"]
    for required, title in ((True, "required"), (False, "recommended")):
        group = [r for r in records if r.required == required]
        if group:
            lines.append(f"; {title}")
            lines += [zone_line(r) for r in group]
    return "\n".join(lines) + "\n"


def records_json(domain: str, hostname: str, records: Sequence[Record]) -> dict[str, object]:
    return {
        "domain": _ascii(domain),
        "hostname": _ascii(hostname),
        "records": [
            {
                "label": r.label,
                "name": _absolute(r.name),
                "ttl": r.ttl,
                "class": "IN",
                "type": r.type,
                "value": r.value,
                "required": r.required,
                "zone": zone_line(r),
            }
            for r in records
        ],
    }


def finding_line(f: Finding) -> str:
    need = "" if f.required else " (recommended)"
    text = f"{f.status.value:<8} {f.label:<20} {f.name} {f.type}"
    if f.status is Status.OK:
        return text + (f": {f.detail}" if f.detail else "")
    return f"{text}{need}: {f.detail}"


def summary_line(report: CheckReport) -> str:
    required = [f for f in report.findings if f.required]
    advisory = [f for f in report.findings if not f.required and f.status is not Status.OK]
    rest = f"; {len(advisory)} recommended missing or different" if advisory else ""
    if report.failed:
        names = ", ".join(f.label for f in report.failed)
        wrong = f"{len(report.failed)} of {len(required)} required wrong ({names})"
        return f"{report.domain}: {wrong}{rest}"
    return f"{report.domain}: all {len(required)} required OK{rest}"


def render_check(report: CheckReport) -> str:
    return "\n".join(finding_line(f) for f in report.findings) + "\n"


def check_json(report: CheckReport) -> dict[str, object]:
    return {
        "domain": report.domain,
        "hostname": report.hostname,
        "ok": report.ok,
        "summary": summary_line(report),
        "results": [
            {
                "label": f.label,
                "name": f.name,
                "type": f.type,
                "required": f.required,
                "status": f.status.value,
                "failed": f.failed,
                "expected": f.expected,
                "found": list(f.found),
                "detail": f.detail,
            }
            for f in report.findings
        ],
    }


# --- comparison (pure) -------------------------------------------------------------------------


def _plain(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _ascii(name: str) -> str:
    """A name as DNS carries it: lower case, no trailing dot, A-labels (RFC 5890 §2.3.2.1)."""
    return name_text(to_name(_plain(name)))


def _absolute(name: str) -> str:
    # Non-ASCII labels are published as A-labels (RFC 5890 §2.3.2.1).
    return name_text(to_name(name)) + "."


def normalise_spf(text: str) -> str:
    """SPF terms are case-insensitive and separated by any run of spaces (RFC 7208 §4.6.1)."""
    return " ".join(text.split()).lower()


def tags(text: str) -> dict[str, str]:
    """A tag-list (RFC 6376 §3.2; DMARC, MTA-STS and TLS-RPT use the same form) → {tag: value},
    whitespace around ``;`` and ``=`` dropped, tag names lower-cased."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq and name.strip():
            out.setdefault(name.strip().lower(), value.strip())
    return out


_VERSION = re.compile(r"\s*v\s*=\s*([^;\s]+)", re.IGNORECASE)


def has_version(text: str, version: str) -> bool:
    """Whether a TXT string starts with the tag ``v=version`` (case-insensitive)."""
    m = _VERSION.match(text)
    return bool(m and m.group(1).lower() == version.lower())


def is_spf(text: str) -> bool:
    """RFC 7208 §4.5: "v=spf1" then a space or the end."""
    return re.match(r"v=spf1(\s|$)", text, re.IGNORECASE) is not None


def _dkim_key_of(text: str) -> tuple[str, str]:
    t = tags(text)
    # RFC 6376 §3.6.1: k= defaults to rsa; p= may contain folding whitespace.
    return t.get("k", "rsa").lower(), "".join(t.get("p", "").split())


# --- the check (async) -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lookup(Generic[T]):
    value: T | None
    error: str = ""


async def _try(lookup: Awaitable[list[T]]) -> _Lookup[list[T]]:
    """A lookup whose NXDOMAIN is "nothing there" and whose temporary failure is kept apart."""
    try:
        return _Lookup(await lookup)
    except NXDomain:
        return _Lookup([])
    except DNSTempError as e:
        return _Lookup(None, str(e))


async def _addresses(resolver: Resolver, name: str) -> _Lookup[list[IPAddress]]:
    v4, v6 = await asyncio.gather(_try(resolver.a(name)), _try(resolver.aaaa(name)))
    if v4.value is None or v6.value is None:
        return _Lookup(None, v4.error or v6.error)
    return _Lookup([*v4.value, *v6.value])


async def _srv(resolver: Resolver, name: str) -> list[tuple[int, int, int, str]]:
    """SRV records (RFC 2782) as (priority, weight, port, target)."""
    return [(r.priority, r.weight, r.port, r.target) for r in await resolver.srv(name)]


def _finding(record: Record, status: Status, found: Sequence[str], detail: str) -> Finding:
    return Finding(
        record.label, record.name, record.type, record.required, status,
        record.value, tuple(found), detail,
    )  # fmt: skip


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


async def _check_txt(resolver: Resolver, record: Record, host_ips: Sequence[IPAddress]) -> Finding:
    got = await _try(resolver.txt(record.name))
    if got.value is None:
        return _finding(record, Status.ERROR, (), f"lookup failed: {got.error}")
    expected = f'expected "{record.value}"'
    match record.kind:
        case Kind.SPF:
            candidates = [t for t in got.value if is_spf(t)]
            same = [t for t in candidates if normalise_spf(t) == normalise_spf(record.value)]
        case Kind.DKIM:
            candidates = [t for t in got.value if "p" in tags(t)]
            same = [t for t in candidates if _dkim_key_of(t) == _dkim_key_of(record.value)]
        case _:
            version = tags(record.value)["v"]
            candidates = [t for t in got.value if has_version(t, version)]
            same = [t for t in candidates if tags(t) == tags(record.value)]
    if not candidates:
        return _finding(record, Status.MISSING, got.value, expected)
    if len(candidates) > 1 and record.kind is not Kind.DKIM:
        # RFC 7208 §4.5, RFC 7489 §6.6.3, RFC 8461 §3.1: more than one record means none.
        detail = f"{len(candidates)} records where one is allowed: {_quoted(candidates)}"
        return _finding(record, Status.DIFFERS, candidates, detail)
    if same:
        return _finding(record, Status.OK, same, "")
    detail = f"found {_quoted(candidates)}, {expected}"
    if record.kind is Kind.SPF:
        return await _judge_spf(resolver, record, candidates, host_ips, detail)
    return _finding(record, Status.DIFFERS, candidates, detail)


async def _judge_spf(
    resolver: Resolver,
    record: Record,
    found: Sequence[str],
    host_ips: Sequence[IPAddress],
    detail: str,
) -> Finding:
    """A different SPF record is the admin's to write (another sender, ``~all``): it only fails
    the check if it does not give ``pass`` for every address of the server host."""
    domain = record.name
    results = [
        await spf.check_host(resolver, ip, domain, f"postmaster@{domain}") for ip in host_ips
    ]
    if results and all(r.result is spf.Result.PASS for r in results):
        ips = ", ".join(r.ip for r in results)
        return Finding(
            record.label, record.name, record.type, record.required, Status.DIFFERS,
            record.value, tuple(found), f"{detail} (it still authorises {ips}: not an error)",
            tolerated=True,
        )  # fmt: skip
    verdicts = ", ".join(f"{r.result} for {r.ip}" for r in results) or "the host has no address"
    return _finding(record, Status.DIFFERS, found, f"{detail}; SPF gives {verdicts}")


async def _check_mx(resolver: Resolver, record: Record, hostname: str) -> Finding:
    got = await _try(resolver.mx(record.name))
    if got.value is None:
        return _finding(record, Status.ERROR, (), f"lookup failed: {got.error}")
    found = [f"{m.preference} {m.host}." for m in got.value]
    if not got.value:
        return _finding(record, Status.MISSING, found, f"expected {record.value}")
    if is_null_mx(got.value):
        return _finding(record, Status.DIFFERS, found, "null MX: the domain accepts no mail")
    if any(_plain(m.host) == hostname for m in got.value):
        return _finding(record, Status.OK, found, ", ".join(found))
    return _finding(record, Status.DIFFERS, found, f"found {', '.join(found)}, no {hostname}")


async def _check_srv(resolver: Resolver, record: Record, hostname: str) -> Finding:
    try:
        srvs = await _srv(resolver, record.name)
    except NXDomain:
        srvs = []
    except DNSTempError as e:
        return _finding(record, Status.ERROR, (), f"lookup failed: {e}")
    found = [f"{p} {w} {port} {target}." for p, w, port, target in srvs]
    port = int(record.value.split()[2])
    if not srvs:
        return _finding(record, Status.MISSING, found, f"expected {record.value}")
    if any(_plain(t) == hostname and p == port for _, _, p, t in srvs):
        return _finding(record, Status.OK, found, "")
    return _finding(
        record, Status.DIFFERS, found, f"found {', '.join(found)}, expected {record.value}"
    )


async def _check_alias(
    resolver: Resolver, record: Record, host_ips: Sequence[IPAddress]
) -> Finding:
    """A name that must reach the host: compared by the addresses it resolves to, so an A/AAAA
    copy of the host's addresses is as good as the CNAME (the resolver follows CNAMEs)."""
    got = await _addresses(resolver, record.name)
    if got.value is None:
        return _finding(record, Status.ERROR, (), f"lookup failed: {got.error}")
    found = sorted(str(ip) for ip in got.value)
    if not found:
        return _finding(record, Status.MISSING, found, f"expected CNAME {record.value}")
    if set(got.value) == set(host_ips):
        return _finding(record, Status.OK, found, "")
    host = ", ".join(sorted(str(ip) for ip in host_ips)) or "nothing"
    return _finding(
        record, Status.DIFFERS, found, f"resolves to {', '.join(found)}; the host to {host}"
    )


async def _check_host(resolver: Resolver, hostname: str) -> tuple[Finding, list[IPAddress]]:
    got = await _addresses(resolver, hostname)
    args = ("host address", hostname, "A/AAAA", True)
    if got.value is None:
        return Finding(*args, Status.ERROR, "", (), f"lookup failed: {got.error}"), []
    found = tuple(str(ip) for ip in got.value)
    if not found:
        detail = "the server host name has no A or AAAA record (RFC 5321 §5.1)"
        return Finding(*args, Status.MISSING, "", found, detail), []
    return Finding(*args, Status.OK, "", found, ", ".join(found)), list(got.value)


async def _check_ptr(resolver: Resolver, hostname: str, ip: IPAddress) -> Finding:
    """Forward-confirmed reverse DNS: the host's address must point back at the host name,
    which is also the name Tidings gives in EHLO — what receivers compare (RFC 8601 §3 iprev,
    and large receivers refuse mail from addresses without it)."""
    name = name_text(dns.reversename.from_address(str(ip)))
    args = (f"reverse DNS {ip}", name, "PTR", True)
    got = await _try(resolver.ptr(ip))
    if got.value is None:
        return Finding(*args, Status.ERROR, hostname, (), f"lookup failed: {got.error}")
    if not got.value:
        return Finding(*args, Status.MISSING, hostname, (), f"expected {hostname}.")
    if any(_plain(n) == hostname for n in got.value):
        return Finding(*args, Status.OK, hostname, tuple(got.value), f"{ip} -> {hostname}")
    names = ", ".join(got.value)
    return Finding(
        *args, Status.DIFFERS, hostname, tuple(got.value),
        f"{ip} points to {names}, not to {hostname} (no forward-confirmed reverse DNS)",
    )  # fmt: skip


async def _check_mx_host(resolver: Resolver, host: str) -> Finding:
    got = await _addresses(resolver, host)
    args = (f"MX host {host}", host, "A/AAAA", True)
    if got.value is None:
        return Finding(*args, Status.ERROR, "", (), f"lookup failed: {got.error}")
    if not got.value:
        return Finding(*args, Status.MISSING, "", (), "the MX host has no A or AAAA record")
    found = tuple(str(ip) for ip in got.value)
    return Finding(*args, Status.OK, "", found, ", ".join(found))


async def check_domain(
    resolver: Resolver,
    domain: str,
    hostname: str,
    dkim_keys: Sequence[DkimKey] = (),
    *,
    sts_policy: str | None = None,
) -> CheckReport:
    """Look up every expected record and the host's properties; nothing raises for DNS."""
    domain, hostname = _ascii(domain), _ascii(hostname)
    records = expected_records(domain, hostname, dkim_keys, sts_policy=sts_policy)
    host_finding, host_ips = await _check_host(resolver, hostname)

    def check(record: Record) -> Awaitable[Finding]:
        match record.kind:
            case Kind.MX:
                return _check_mx(resolver, record, hostname)
            case Kind.SRV:
                return _check_srv(resolver, record, hostname)
            case Kind.HOST_ALIAS:
                return _check_alias(resolver, record, host_ips)
        return _check_txt(resolver, record, host_ips)

    findings = list(await asyncio.gather(*(check(r) for r in records)))
    findings.append(host_finding)
    findings += await asyncio.gather(*(_check_ptr(resolver, hostname, ip) for ip in host_ips))
    mx = await _try(resolver.mx(domain))
    others = sorted({_plain(m.host) for m in mx.value or [] if m.host} - {hostname})
    findings += await asyncio.gather(*(_check_mx_host(resolver, h) for h in others))
    return CheckReport(domain, hostname, tuple(findings))


__all__ = [
    "CheckReport",
    "DkimKey",
    "Finding",
    "Record",
    "RecordError",
    "Status",
    "check_domain",
    "check_json",
    "configured_mta_sts_policy",
    "dkim_txt",
    "expected_records",
    "mta_sts_id",
    "mta_sts_policy",
    "records_json",
    "render_check",
    "render_zone",
    "summary_line",
    "txt_strings",
    "zone_line",
]
