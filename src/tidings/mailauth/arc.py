"""ARC (RFC 8617): verifying the Authenticated Received Chain of forwarded mail.

A forwarder (a mailing list, an alias service) that changes a message breaks its DKIM signature
and sends it from an IP the author's SPF does not list, so DMARC fails. If it sealed the message
with an ARC set, the chain says what it saw on arrival; a receiver that trusts the sealer may
let the message through (§7.2; RFC 7489 §7.2 local policy override "forwarded").

dkimpy does the canonicalisation and cryptography, and DNS goes through :mod:`tidings.dns`:

1. :func:`prepare` (pure, and immediate for a message without ARC fields): find the ARC sets,
   check their structure (§5.2 steps 1-3: complete sets numbered 1..N, the newest seal not
   ``cv=fail``) and list the key records every ARC-Seal and ARC-Message-Signature needs.
2. Those key records fetched concurrently on the loop.
3. :func:`verify_prepared` (pure, run in a thread: dkimpy's RSA is pure Python, milliseconds a
   signature): dkimpy's ARC verification with a ``dnsfunc`` that answers from step 2 only, so
   it never blocks on DNS.

Choices where the RFC leaves room:

* the result is one of §4.4's chain validation statuses, ``none``, ``pass`` or ``fail``; a chain
  that dkimpy calls "terminated" (an older seal that says ``cv=fail``) is ``fail``;
* a key lookup that fails temporarily makes its signature fail, so the chain fails, but the
  result keeps ``temperror=True``: such a ``fail`` may have been a ``pass``, and the verdict may
  ask the sender to retry rather than act on it. It is never a ``pass`` for policy;
* more than :data:`MAX_INSTANCES` sets (§4.2.1: i= is 1 to 50) or an obsolete algorithm
  (``rsa-sha1``, RFC 8301 §3.1) → ``fail`` without any DNS work.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dkim as dkimpy
from dkim.util import InvalidTagValueList

from tidings.dns import DNSTempError, NXDomain, Resolver
from tidings.mailauth.canonical import parse_tags
from tidings.mailauth.dkim import MIN_RSA_BITS, OBSOLETE_ALGORITHMS
from tidings.mailauth.results import comment_text, has_field, pvalue

MAX_INSTANCES = 50  # §4.2.1
_SET_HEADERS = (b"arc-authentication-results", b"arc-message-signature", b"arc-seal")


class Result(enum.StrEnum):
    """§4.4 chain validation status (also the Authentication-Results "arc" result, §10.2)."""

    PASS = "pass"  # noqa: S105 (a result, not a password)
    FAIL = "fail"
    NONE = "none"


@dataclass(frozen=True)
class ARCResult:
    """The verdict on a message's ARC chain."""

    result: Result
    instances: int = 0  # N, the highest i= (0 without ARC headers)
    sealers: tuple[str, ...] = ()  # ARC-Seal d= of instance 1, 2, ... N (lower case)
    oldest_pass: int | None = None  # §5.2 step 6; 0 when every AMS still validates
    remote_ip: str = ""
    temperror: bool = False  # a key lookup failed temporarily: a fail that might be a pass
    comment: str = ""

    @property
    def latest_sealer(self) -> str:
        """The domain that sealed last (instance N): the one a trust decision is about."""
        return self.sealers[-1] if self.sealers else ""

    def auth_results(self) -> str:
        """This result as an Authentication-Results resinfo (RFC 8617 §10.2, RFC 8601 §2.2)."""
        chain = f"i={self.instances}" if self.instances else ""
        if self.sealers:
            chain += " sealed by " + ", ".join(self.sealers)
        notes = [chain] if chain else []
        if self.comment and self.result is not Result.PASS:
            notes.append(self.comment)
        text = f"arc={self.result}"
        note = comment_text("; ".join(notes))
        if note:
            text += f" ({note})"
        if self.result is Result.PASS and self.oldest_pass is not None:
            text += f" header.oldest-pass={self.oldest_pass}"
        if self.remote_ip:
            text += f" smtp.remote-ip={pvalue(self.remote_ip)}"
        return text


# -- step 1: the sets, checked without DNS --------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A message whose ARC sets are well formed, with the key records they need; or the verdict
    already reached (``verdict`` set, nothing to look up)."""

    message: bytes
    instances: int
    sealers: tuple[str, ...]
    key_names: tuple[str, ...] = ()
    verdict: ARCResult | None = None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def prepare(message: bytes, remote_ip: str = "") -> Prepared:
    """Step 1: the ARC sets of ``message`` and the key records their signatures name."""
    if not has_field(message, b"arc-"):
        return Prepared(message, 0, (), verdict=ARCResult(Result.NONE, remote_ip=remote_ip))
    try:
        arc = dkimpy.ARC(message, minkey=MIN_RSA_BITS)
        count, found = arc.sorted_arc_headers()
    except Exception as e:  # the sender's bytes: a verdict, never a crash
        verdict = ARCResult(Result.FAIL, remote_ip=remote_ip, comment=f"unparseable: {e}")
        return Prepared(message, 0, (), verdict=verdict)
    count = int(count)
    # Fields named ARC-* whose i= could not be read are left out by dkimpy; they still make
    # the message ARC-signed (§5.2 step 1: such a chain fails rather than counting as none).
    names = [h[0].lower() for h in arc.headers]
    if not count and not any(n in _SET_HEADERS for n in names):
        return Prepared(message, 0, (), verdict=ARCResult(Result.NONE, remote_ip=remote_ip))

    seals: dict[int, dict[bytes, bytes]] = {}
    tags_by_set: list[dict[bytes, bytes]] = []
    for instance, (name, value) in found:
        if name.lower() == b"arc-authentication-results":
            continue
        try:
            tags = parse_tags(value)
        except InvalidTagValueList:
            tags = {}
        tags_by_set.append(tags)
        if name.lower() == b"arc-seal":
            seals[instance] = tags
    sealers = tuple(
        _text(seals.get(i, {}).get(b"d", b"")).rstrip(".").lower() for i in range(1, count + 1)
    )

    def failed(comment: str) -> Prepared:
        verdict = ARCResult(Result.FAIL, count, sealers, remote_ip=remote_ip, comment=comment)
        return Prepared(message, count, sealers, verdict=verdict)

    arc_fields = sum(1 for n in names if n in _SET_HEADERS)
    problem = _structure_problem(count, [(i, h[0].lower()) for i, h in found], arc_fields)
    if problem:
        return failed(problem)
    if seals[count].get(b"cv", b"").strip().lower() == b"fail":
        return failed(f"ARC-Seal i={count} says cv=fail")  # §5.2 step 2
    for tags in tags_by_set:
        algorithm = _text(tags.get(b"a", b"")).strip().lower()
        if algorithm in OBSOLETE_ALGORITHMS:
            return failed(f"{algorithm} is not acceptable (RFC 8301)")
    key_names = sorted({_key_name(t) for t in tags_by_set if _key_name(t)})
    return Prepared(message, count, sealers, tuple(key_names))


def _structure_problem(count: int, sets: list[tuple[int, bytes]], arc_fields: int) -> str:
    """§5.2 step 3 (and §4.2.1's bound): why the sets are not exactly one of each field for
    every instance 1..N, or ""."""
    if count > MAX_INSTANCES:
        return f"{count} ARC sets, more than {MAX_INSTANCES}"
    seen = Counter(sets)
    for instance in range(1, count + 1):
        for name in _SET_HEADERS:
            if seen[(instance, name)] != 1:
                return f"ARC set i={instance} is incomplete or duplicated"
    if len(sets) != 3 * count:
        return "ARC field with an instance outside 1..N"
    if arc_fields != len(sets):
        return "ARC field without a readable i="
    return ""


def _key_name(tags: Mapping[bytes, bytes]) -> str:
    """Where the key for a seal or signature is published (RFC 6376 §3.6.2.1), lower case."""
    selector, domain = tags.get(b"s", b"").strip(), tags.get(b"d", b"").strip()
    if not selector or not domain:
        return ""
    return _normalise_name(selector + b"._domainkey." + domain)


def _normalise_name(name: bytes) -> str:
    return _text(name).strip().rstrip(".").lower()


# -- step 3: dkimpy, answered from the prefetched keys ------------------------------------------


class KeyLookup(enum.Enum):
    """Why step 2 has no key record to give."""

    NO_KEY = "no key"
    TEMPERROR = "temperror"


@dataclass(frozen=True)
class _Keys:
    """dkimpy's ``dnsfunc``, answering from what step 2 fetched, and noting temporary failures
    it had to report."""

    records: Mapping[str, list[bytes] | KeyLookup]
    temporary: set[str] = field(default_factory=set, hash=False)

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        key = _normalise_name(name)
        found = self.records.get(key, KeyLookup.NO_KEY)
        if found is KeyLookup.TEMPERROR:
            self.temporary.add(key)
            raise dkimpy.DnsTimeoutError(f"key lookup for {key} failed")
        if isinstance(found, KeyLookup) or not found:
            return None  # dkimpy: "missing public key", the signature fails
        return _usable(key, found)


def _usable(name: str, records: list[bytes]) -> bytes:
    """Of several TXT records, the first that is a key dkimpy can use (RFC 6376 §3.6.2.2)."""
    for record in records:
        try:
            dkimpy.evaluate_pk(name.encode(), record)
        except Exception:  # noqa: S112 (the sender's text; the next record may do)
            continue
        return record
    return records[0]


def verify_prepared(
    prepared: Prepared, keys: Mapping[str, list[bytes] | KeyLookup], remote_ip: str = ""
) -> ARCResult:
    """Step 3: dkimpy's chain validation (§5.2 steps 4-7) with step 2's key records."""
    if prepared.verdict is not None:
        return prepared.verdict
    dnsfunc = _Keys(keys)
    try:
        arc = dkimpy.ARC(prepared.message, minkey=MIN_RSA_BITS)
        cv, data, reason = arc.verify(dnsfunc=dnsfunc)
    except Exception as e:  # dkimpy on hostile input: a verdict, never a crash
        cv, data, reason = dkimpy.CV_Fail, [], f"cannot verify: {e}"
    if cv == dkimpy.CV_Pass:
        return ARCResult(
            Result.PASS, prepared.instances, prepared.sealers, _oldest_pass(data), remote_ip
        )
    if cv == dkimpy.CV_None:
        return ARCResult(Result.NONE, remote_ip=remote_ip)
    comment = _text(reason) if isinstance(reason, bytes) else str(reason)
    if dnsfunc.temporary:
        names = ", ".join(sorted(dnsfunc.temporary))
        comment = f"temporary DNS failure looking up {names}; {comment}"
    return ARCResult(
        Result.FAIL, prepared.instances, prepared.sealers, None, remote_ip,
        temperror=bool(dnsfunc.temporary), comment=comment,
    )  # fmt: skip


def _oldest_pass(data: list[dict[str, Any]]) -> int:
    """§5.2 step 6: the lowest instance from N down whose AMS still validates; 0 when all do
    (RFC 8617 §10.2's header.oldest-pass)."""
    oldest = 0
    for result in data:  # dkimpy lists instance N first
        if not result.get("ams-valid"):
            break
        oldest = int(result["instance"])
    return 0 if oldest == 1 else oldest


# -- the whole check ------------------------------------------------------------------------------


async def fetch_key(resolver: Resolver, name: str) -> list[bytes] | KeyLookup:
    """Step 2 for one key name: its TXT records."""
    try:
        records = await resolver.txt_bytes(name)
    except DNSTempError:
        return KeyLookup.TEMPERROR
    except NXDomain:
        return KeyLookup.NO_KEY
    return records or KeyLookup.NO_KEY


async def verify_chain(resolver: Resolver, message: bytes, *, remote_ip: str = "") -> ARCResult:
    """The ARC chain of ``message`` validated (``arc=none`` without one). Parsing and
    cryptography run in worker threads, DNS on the loop; ``remote_ip`` is only reported."""
    prepared = await asyncio.to_thread(prepare, message, remote_ip)
    if prepared.verdict is not None:
        return prepared.verdict
    keys = await fetch_keys(resolver, prepared)
    return await asyncio.to_thread(verify_prepared, prepared, keys, remote_ip)


async def fetch_keys(resolver: Resolver, prepared: Prepared) -> dict[str, list[bytes] | KeyLookup]:
    """Step 2: every seal and message-signature key ``prepared`` names, fetched at once."""
    if prepared.verdict is not None:
        return {}
    found = await asyncio.gather(*(fetch_key(resolver, n) for n in prepared.key_names))
    return dict(zip(prepared.key_names, found, strict=True))


__all__ = [
    "MAX_INSTANCES",
    "ARCResult",
    "KeyLookup",
    "Prepared",
    "Result",
    "fetch_key",
    "fetch_keys",
    "prepare",
    "verify_chain",
    "verify_prepared",
]
