"""DMARC (RFC 7489): does the From domain's owner vouch for this message, and what does it ask
us to do when not?

Three parts: :func:`parse_record` (pure, §6.3, §6.4), :func:`find_policy` (DNS, §6.6.3) and
:func:`evaluate` (pure: alignment §3.1, policy §6.3, sampling §6.6.4); :func:`check_dmarc` runs
them for a message, and :func:`dmarc_disposition` applies local policy to the outcome.

Choices where the RFC leaves room:

* several From domains (one From with several addresses, or several From fields): each domain
  is checked, and the result with the strictest disposition is kept (§6.6.1: "apply the most
  strict policy selected among the checks that fail");
* no From domain at all (no From field, or no address with a domain): the message cannot be
  authenticated; the result is ``permerror`` with an empty ``header_from`` and disposition
  ``none``, and :func:`dmarc_disposition`'s ``no_from`` decides what a site does with that;
* more than one DMARC record at the policy domain, or one without a usable ``p=`` and no
  usable ``rua=`` (§6.6.3 steps 5 and 6: no DMARC processing): ``permerror``, disposition
  ``none``; a bad ``p=``/``sp=`` with a usable ``rua=`` is read as ``p=none`` (step 6);
* a DNS failure looking up the policy: ``temperror``, disposition ``none`` (§6.6.3 leaves it to
  the receiver; the SMTP layer may answer 451);
* optional tags with bad values (``pct=abc``, ``adkim=x``) take their defaults.
"""

from __future__ import annotations

import enum
import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from publicsuffixlist import PublicSuffixList

from tidings.dns import DNSTempError, NXDomain, Resolver
from tidings.mailauth.dkim import DKIMResult
from tidings.mailauth.dkim import Result as DKIMVerdict
from tidings.mailauth.results import comment_text, fields_named, header_section, pvalue
from tidings.mailauth.spf import Result as SPFVerdict
from tidings.mailauth.spf import SPFResult


class Result(enum.StrEnum):
    """RFC 7489 §11.2 (the Authentication-Results method "dmarc")."""

    PASS = "pass"  # noqa: S105 (a result, not a password)
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Policy(enum.StrEnum):
    """§6.3 p=: what the domain owner asks for; also the disposition we arrive at."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    def relaxed(self) -> Policy:
        """§6.6.4: the next less strict policy, for messages that pct= leaves out."""
        return {Policy.REJECT: Policy.QUARANTINE}.get(self, Policy.NONE)


_SEVERITY = {Policy.NONE: 0, Policy.QUARANTINE: 1, Policy.REJECT: 2}


class Alignment(enum.StrEnum):
    """§3.1: relaxed (same organisational domain) or strict (the same domain)."""

    RELAXED = "r"
    STRICT = "s"


@dataclass(frozen=True)
class DMARCRecord:
    """A parsed DMARC policy record (§6.3)."""

    policy: Policy
    subdomain_policy: Policy | None = None  # sp=; None: p= applies to subdomains too
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    policy_invalid: bool = False  # p=/sp= was unusable and p=none was assumed (§6.6.3 step 6)


class DMARCRecordError(ValueError):
    """A DMARC record that cannot be used (§6.6.3 step 6: no DMARC processing)."""


class NotDMARC(DMARCRecordError):
    """TXT that is not a DMARC record at all (§6.6.3 step 2: discarded)."""


# -- the record (§6.3, §6.4) ---------------------------------------------------------------------

_VERSION = re.compile(r"[ \t]*v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)", re.IGNORECASE)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?\Z")


def is_dmarc_record(text: str) -> bool:
    """§6.3 v=: the first tag, with the value "DMARC1" exactly (the tag name is ABNF text, so
    any case)."""
    match = _VERSION.match(text)
    return match is not None and "DMARC1" in match.group(0)


def parse_record(text: str) -> DMARCRecord:
    """A DMARC record's tags (§6.3); unknown tags are ignored, the first of a repeated tag
    counts. Raises :class:`NotDMARC` or :class:`DMARCRecordError`."""
    if not is_dmarc_record(text):
        raise NotDMARC("not a DMARC record")
    tags: dict[str, str] = {}
    for item in text.split(";")[1:]:
        name, eq, value = item.partition("=")
        name = name.strip(" \t").lower()
        if eq and name and name not in tags:
            tags[name] = value.strip(" \t")
    rua = _uris(tags.get("rua", ""))
    policy = _policy(tags.get("p"))
    subdomain_policy = _policy(tags["sp"]) if "sp" in tags else None
    invalid = policy is None or ("sp" in tags and subdomain_policy is None)
    if invalid and not rua:
        raise DMARCRecordError("no valid p= (or sp=) and no rua=")
    if invalid:
        policy, subdomain_policy = Policy.NONE, None
    assert policy is not None
    return DMARCRecord(
        policy,
        subdomain_policy,
        _alignment(tags.get("adkim")),
        _alignment(tags.get("aspf")),
        _pct(tags.get("pct")),
        rua,
        _uris(tags.get("ruf", "")),
        invalid,
    )


def _policy(value: str | None) -> Policy | None:
    try:
        return Policy((value or "").lower())
    except ValueError:
        return None


def _alignment(value: str | None) -> Alignment:
    return Alignment.STRICT if (value or "").lower() == "s" else Alignment.RELAXED


def _pct(value: str | None) -> int:
    if value is not None and re.fullmatch(r"[0-9]{1,3}", value) and int(value) <= 100:
        return int(value)
    return 100


def _uris(value: str) -> tuple[str, ...]:
    """§6.4 dmarc-uri list: the syntactically valid ones."""
    uris = (u.strip(" \t") for u in value.split(","))
    return tuple(u for u in uris if _URI.match(u))


# -- domains (§3.1, §3.2, §6.6.1) ----------------------------------------------------------------

_psl: PublicSuffixList | None = None
_DOMAIN = re.compile(r"[^\s@()<>\[\]:;\\,\"]+\.[^\s@()<>\[\]:;\\,\".]+\Z")


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """§3.2: the public suffix (per the Public Suffix List) plus one label; a name that is
    itself a public suffix is its own organisational domain. Remembered: the list is loaded
    once and never changes, and mail comes from the same domains again and again."""
    global _psl  # noqa: PLW0603 (loaded once, on first use)
    if _psl is None:
        _psl = PublicSuffixList()
    domain = domain.lower().rstrip(".")
    found = _psl.privatesuffix(domain)
    return str(found) if found else domain


def aligned(
    domain: str,
    from_domain: str,
    mode: Alignment,
    org_domain: Callable[[str], str] = organizational_domain,
) -> bool:
    """§3.1.1 (DKIM) and §3.1.2 (SPF): is ``domain`` aligned with the From domain?"""
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not domain or not from_domain:
        return False
    if domain == from_domain:
        return True
    return mode is Alignment.RELAXED and org_domain(domain) == org_domain(from_domain)


def from_domains(header: bytes) -> list[str]:
    """The distinct domains of the From field's addresses (RFC 5322 §3.6.2), of every From
    field, lower case, in order; addresses without a plausible domain are skipped."""
    values = [f.value.decode("utf-8", "replace") for f in fields_named(header, b"from")]
    return list(_domains_of(tuple(values)))


@functools.lru_cache(maxsize=4096)
def _domains_of(values: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`from_domains` of these From values; remembered, as senders send many messages
    with the same From and parsing addresses costs more than the rest of DMARC."""
    domains: list[str] = []
    for _, address in getaddresses(list(values)):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" in address and _DOMAIN.match(domain) and domain not in domains:
            domains.append(domain)
    return tuple(domains)


# -- policy discovery (§6.6.3) -------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLookup:
    """What §6.6.3 found: a record and where, or the error (``none`` when nothing was found)."""

    record: DMARCRecord | None
    domain: str = ""  # the policy domain (the From domain or its organisational domain)
    error: Result = Result.NONE  # meaningful when record is None
    comment: str = ""


async def _records_at(resolver: Resolver, domain: str) -> list[str]:
    try:
        texts = await resolver.txt(f"_dmarc.{domain}")
    except NXDomain:
        return []
    return [t for t in texts if is_dmarc_record(t)]  # §6.6.3 steps 2 and 4


async def find_policy(
    resolver: Resolver,
    from_domain: str,
    org_domain: Callable[[str], str] = organizational_domain,
) -> PolicyLookup:
    """§6.6.3: the record at ``_dmarc.<From domain>``, else at the organisational domain."""
    domain = from_domain
    try:
        records = await _records_at(resolver, domain)
        if not records and org_domain(from_domain) != from_domain:
            domain = org_domain(from_domain)
            records = await _records_at(resolver, domain)
    except DNSTempError as e:
        return PolicyLookup(None, domain, Result.TEMPERROR, f"policy lookup failed: {e}")
    if not records:
        return PolicyLookup(None, "", Result.NONE, f"no DMARC record for {from_domain}")
    if len(records) > 1:
        return PolicyLookup(None, domain, Result.PERMERROR, f"{domain} has several DMARC records")
    record = _parsed(records[0])
    if isinstance(record, str):
        return PolicyLookup(None, domain, Result.PERMERROR, f"{domain}: {record}")
    return PolicyLookup(record, domain)


@functools.lru_cache(maxsize=2048)
def _parsed(text: str) -> DMARCRecord | str:
    """:func:`parse_record`, remembered (a record is looked up for every message from its
    domain, and the DNS cache hands back the same text until its TTL runs out); an unusable
    record gives the reason."""
    try:
        return parse_record(text)
    except DMARCRecordError as e:
        return str(e)


# -- evaluation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DMARCResult:
    """DMARC's verdict on one message.

    ``policy`` is what the domain asked for (p= or sp=), None without a usable record;
    ``disposition`` is what it asks of this message after pct= sampling (§6.6.4); local policy
    on top of that is :func:`dmarc_disposition`'s.
    """

    result: Result
    header_from: str  # "" when the message has no From domain
    policy_domain: str = ""
    policy: Policy | None = None
    disposition: Policy = Policy.NONE
    record: DMARCRecord | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled_out: bool = False  # pct= left this message out of the policy
    comment: str = ""

    def auth_results(self) -> str:
        """This result as an Authentication-Results resinfo (RFC 7489 §11.2, RFC 8601)."""
        notes: list[str] = []
        if self.record is not None:
            notes.append(f"p={self.record.policy}")
            if self.record.subdomain_policy is not None:
                notes.append(f"sp={self.record.subdomain_policy}")
            notes.append(f"dis={self.disposition}")
        if self.comment and self.result is not Result.PASS:
            notes.append(comment_text(self.comment))
        text = f"dmarc={self.result}"
        if notes:
            text += f" ({' '.join(notes)})"
        if self.header_from:
            text += f" header.from={pvalue(self.header_from)}"
        return text


def evaluate(
    from_domain: str,
    lookup: PolicyLookup,
    spf: SPFResult | None,
    dkim: Sequence[DKIMResult],
    *,
    rng: Callable[[], float] = random.random,
    org_domain: Callable[[str], str] = organizational_domain,
) -> DMARCResult:
    """§6.6.2 - §6.6.4 for one From domain, given what policy discovery found.

    Pass needs an SPF pass for an aligned MAIL FROM domain or a DKIM pass for an aligned d=
    (§4.2); a DKIM ``policy`` (unsigned body after l=) is not a pass. ``rng`` returns a float in
    [0, 1) and is asked only when pct= is below 100.
    """
    record = lookup.record
    if record is None:
        return DMARCResult(lookup.error, from_domain, lookup.domain, comment=lookup.comment)
    policy = record.policy
    if lookup.domain.lower() != from_domain.lower() and record.subdomain_policy is not None:
        policy = record.subdomain_policy  # §6.3 sp=: found at the organisational domain
    dkim_ok = any(
        r.result is DKIMVerdict.PASS and aligned(r.domain, from_domain, record.adkim, org_domain)
        for r in dkim
    )
    spf_ok = (
        spf is not None
        and spf.result is SPFVerdict.PASS
        and aligned(spf.domain, from_domain, record.aspf, org_domain)
    )
    result = Result.PASS if dkim_ok or spf_ok else Result.FAIL
    disposition, sampled_out = Policy.NONE, False
    if result is Result.FAIL:
        disposition = policy
        if record.pct < 100 and not rng() * 100 < record.pct:
            disposition, sampled_out = policy.relaxed(), True  # §6.6.4
    return DMARCResult(
        result, from_domain, lookup.domain, policy, disposition, record,
        spf_ok, dkim_ok, sampled_out, _explain(result, spf_ok, dkim_ok, sampled_out),
    )  # fmt: skip


def _explain(result: Result, spf_ok: bool, dkim_ok: bool, sampled_out: bool) -> str:
    if result is Result.PASS:
        return " and ".join(n for n, ok in (("SPF", spf_ok), ("DKIM", dkim_ok)) if ok) + " aligned"
    return "no aligned SPF or DKIM pass" + ("; pct= sampled out" if sampled_out else "")


_RESULT_RANK = {
    Result.PASS: 0,
    Result.NONE: 1,
    Result.TEMPERROR: 2,
    Result.PERMERROR: 3,
    Result.FAIL: 4,
}


def strictest(results: Sequence[DMARCResult]) -> DMARCResult:
    """§6.6.1: of several From domains' results, the strictest disposition (then the worst
    result)."""
    return max(results, key=lambda r: (r.disposition.severity, _RESULT_RANK[r.result]))


async def check_dmarc(
    resolver: Resolver,
    message: bytes,
    *,
    spf: SPFResult | None,
    dkim: Sequence[DKIMResult],
    rng: Callable[[], float] = random.random,
    org_domain: Callable[[str], str] = organizational_domain,
) -> DMARCResult:
    """DMARC for ``message`` (its header is enough) given its SPF (MAIL FROM) and DKIM
    results."""
    domains = from_domains(header_section(message))
    if not domains:
        return DMARCResult(Result.PERMERROR, "", comment="no From domain")
    results: list[DMARCResult] = []
    for domain in domains:
        lookup = await find_policy(resolver, domain, org_domain)
        results.append(evaluate(domain, lookup, spf, dkim, rng=rng, org_domain=org_domain))
    return strictest(results)


def dmarc_disposition(
    result: DMARCResult,
    *,
    ceiling: Policy = Policy.REJECT,
    no_from: Policy = Policy.NONE,
) -> Policy:
    """What to do with the message: the DMARC disposition, capped by local policy.

    ``ceiling`` is the strictest action a site allows (``Policy.QUARANTINE``: "never reject,
    only quarantine"; ``Policy.NONE``: report only), as §6.7 lets a receiver override the
    owner's policy. ``no_from`` is the action for a message with no From domain, which DMARC
    cannot evaluate (RFC 5322 §3.6 requires one).
    """
    wanted = result.disposition
    if result.result is Result.PERMERROR and not result.header_from:
        wanted = no_from
    return wanted if wanted.severity <= ceiling.severity else ceiling


__all__ = [
    "Alignment",
    "DMARCRecord",
    "DMARCRecordError",
    "DMARCResult",
    "NotDMARC",
    "Policy",
    "PolicyLookup",
    "Result",
    "aligned",
    "check_dmarc",
    "dmarc_disposition",
    "evaluate",
    "find_policy",
    "from_domains",
    "is_dmarc_record",
    "organizational_domain",
    "parse_record",
    "strictest",
]
