"""DKIM verification (RFC 6376, with RFC 8301's algorithm rules and RFC 8463's ed25519).

dkimpy is the verifier of record: it parses the signatures' tags and the key records, selects
the signed fields, and verifies ed25519 signatures whole. For rsa-sha256, the signature nearly
every message carries, the hot steps are done faster with the same bytes as result: the
canonicalisation and message split by :mod:`tidings.mailauth.canonical`, the hashes by hashlib
and the RSA check by ``cryptography``. DNS goes through :mod:`tidings.dns`. Three steps:

1. :func:`prepare` (pure): split the message, check every DKIM-Signature's tags (§3.5, §6.1.1).
   Some signatures are decided here (expired, rsa-sha1, bad syntax).
2. The key records, ``<s>._domainkey.<d>`` TXT, fetched concurrently on the loop (§3.6.2).
3. :func:`verify_prepared` (pure): check each key record (§3.6.1) and the signature itself.

Steps 1 and 3 are pure so that a caller can run them where they cost least: on the event loop
for a small message, in a worker thread for a big one (see :mod:`tidings.mailauth.verdict`).

Each signature gets its own :class:`DKIMResult`, in message order; an unsigned message gives
none. Results use RFC 8601 §2.7.1's words. Choices where the RFCs leave room:

* no key record (NXDOMAIN or no TXT) → ``permerror`` (§6.1.2: PERMFAIL, no key for signature);
  a revoked (empty ``p=``), unparseable or mismatched key → ``permerror``; a DNS temporary
  failure → ``temperror``;
* ``rsa-sha1`` → ``fail`` (RFC 8301 §3.1: MUST NOT be considered valid); an RSA key under 1024
  bits → ``fail`` (RFC 8301 §3.2); ``x=`` in the past → ``fail`` (§3.5);
* ``l=`` that leaves part of the body unsigned → ``policy``, even when the signed part verifies:
  anyone can append content below the signed part (§8.2), so such a signature does not vouch for
  what the reader sees, and DMARC does not count it. An ``l=`` covering the whole body is
  harmless and can ``pass``; an ``l=`` longer than the body fails.
* an unknown ``a=`` → ``neutral`` (could not be processed); a key in testing mode (``t=y``,
  §3.6.1) turns a failing signature into ``neutral``;
* at most :data:`MAX_SIGNATURES` signatures are examined (the rest are not reported), so a
  message cannot make us do unbounded DNS and RSA work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import enum
import functools
import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import dkim as dkimpy
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Relaxed,
    Simple,
)
from dkim.util import InvalidTagValueList

from tidings.dns import DNSTempError, NXDomain, Resolver
from tidings.mailauth.canonical import (
    canonical_body_piece,
    parse_tags,
    relaxed_header,
    split_at_body,
    without_b_value,
)
from tidings.mailauth.results import (
    comment_text,
    has_field,
    header_fields,
    pvalue,
    split_header,
)

MIN_RSA_BITS = 1024  # RFC 8301 §3.2
MAX_SIGNATURES = 8
CLOCK_SKEW = 300  # seconds of slack for x= (§3.5), for senders with a slow clock
B_PREFIX = 8  # RFC 6008 §4: header.b is at least the first 8 characters of b=

# RFC 8301 §3.1 and RFC 8463 §3: the algorithms a signature may use, and their key type.
ALGORITHMS = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}
OBSOLETE_ALGORITHMS = {"rsa-sha1"}
_REQUIRED_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")  # §3.5
_DOMAIN = re.compile(r"[^\s()<>\[\]:;@\\,\"]+\Z")
_SELECTOR = re.compile(r"[^\s.]+(\.[^\s.]+)*")
_NUMBER = re.compile(rb"\d{1,76}")


class Result(enum.StrEnum):
    """RFC 8601 §2.7.1."""

    PASS = "pass"  # noqa: S105 (a result, not a password)
    FAIL = "fail"
    NEUTRAL = "neutral"
    POLICY = "policy"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    NONE = "none"


@dataclass(frozen=True)
class DKIMResult:
    """The verdict on one DKIM-Signature, with what Authentication-Results reports of it."""

    result: Result
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i=, or "@" + d= when absent (§3.5)
    header_b: str = ""  # a unique prefix of b= (RFC 6008)
    key_bits: int | None = None
    body_length: int | None = None  # l=
    comment: str = ""

    def with_header_b(self, header_b: str) -> DKIMResult:
        """This result with another header.b (``dataclasses.replace`` costs several times more,
        and every signed message needs one)."""
        return DKIMResult(
            self.result, self.domain, self.selector, self.algorithm, self.identity, header_b,
            self.key_bits, self.body_length, self.comment,
        )  # fmt: skip

    def auth_results(self) -> str:
        """This result as an Authentication-Results resinfo (RFC 8601 §2.7.1, RFC 6008)."""
        parts = [f"dkim={self.result}"]
        if self.comment:
            parts.append(f"({comment_text(self.comment)})")
        if self.domain:
            parts.append(f"header.d={pvalue(self.domain)}")
        if self.identity:
            parts.append(f"header.i={pvalue(self.identity)}")
        if self.selector:
            parts.append(f"header.s={pvalue(self.selector)}")
        if self.algorithm:
            parts.append(f"header.a={pvalue(self.algorithm)}")
        if self.header_b:
            parts.append(f"header.b={pvalue(self.header_b)}")
        return " ".join(parts)


# -- step 1: the signatures, checked without DNS --------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One DKIM-Signature field whose tags passed the checks of §3.5 and §6.1.1."""

    tags: dict[bytes, bytes] = field(hash=False)
    header: tuple[bytes, bytes]  # (name, raw value) as dkimpy's parser gives it
    domain: str
    selector: str
    algorithm: str
    identity: str
    signed_headers: tuple[bytes, ...]
    canonicalization: bytes
    body_length: int | None

    @property
    def key_name(self) -> str:
        """§3.6.2.1: where the key is published."""
        return f"{self.selector}._domainkey.{self.domain}"

    def result(self, result: Result, comment: str, key_bits: int | None = None) -> DKIMResult:
        return DKIMResult(
            result, self.domain, self.selector, self.algorithm, self.identity,
            _b_value(self.tags), key_bits, self.body_length, comment,
        )  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """A message split for dkimpy, and per signature either its checked tags or its verdict.
    ``body`` is a view into the message when it could be read without a copy."""

    headers: list[list[bytes]] = field(hash=False)
    body: bytes | memoryview
    signatures: tuple[Signature | DKIMResult, ...]


def _b_value(tags: dict[bytes, bytes]) -> str:
    return "".join(tags.get(b"b", b"").decode("ascii", "replace").split())


def _unfolded(value: bytes) -> bytes:
    """A tag value without whitespace (what base64 decoding needs, §3.5 b= and bh=)."""
    return b"".join(value.split())


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def prepare(message: bytes, now: float | None = None) -> Prepared:
    """Step 1: every DKIM-Signature of ``message`` (the first :data:`MAX_SIGNATURES`), checked."""
    now = time.time() if now is None else now
    if not has_field(message, b"dkim-signature"):
        return Prepared([], b"", ())
    try:
        headers, start = split_at_body(message)
    except dkimpy.MessageFormatError as e:
        # dkimpy cannot read the header, so no signature can be verified: each is a permerror.
        header, _ = split_header(message)
        fields, _ = header_fields(header)
        count = sum(1 for f in fields if f.name.lower() == b"dkim-signature")
        verdict = DKIMResult(Result.PERMERROR, comment=f"unparseable message header: {e}")
        return Prepared([], b"", (verdict,) * min(count, MAX_SIGNATURES))
    sig_headers = [h for h in headers if h[0].lower() == b"dkim-signature"][:MAX_SIGNATURES]
    signatures = tuple(check_signature((h[0], h[1]), now) for h in sig_headers)
    body = memoryview(message)[start:] if isinstance(start, int) else start
    return Prepared(headers, body, signatures)


def check_signature(header: tuple[bytes, bytes], now: float) -> Signature | DKIMResult:
    """§3.5 and §6.1.1 on one DKIM-Signature: its tags, or the verdict they already force."""
    try:
        tags = parse_tags(header[1])
    except InvalidTagValueList as e:
        return DKIMResult(Result.PERMERROR, comment=f"signature syntax error: {e}")
    domain = _text(tags.get(b"d", b"")).rstrip(".")
    selector = _text(tags.get(b"s", b""))
    algorithm = _text(tags.get(b"a", b"")).lower()
    identity = _text(tags[b"i"]) if b"i" in tags else f"@{domain}"
    body_length = int(tags[b"l"]) if _NUMBER.fullmatch(tags.get(b"l", b"")) else None

    def verdict(result: Result, comment: str) -> DKIMResult:
        return DKIMResult(
            result, domain, selector, algorithm, identity, _b_value(tags),
            body_length=body_length, comment=comment,
        )  # fmt: skip

    if not all(t in tags for t in _REQUIRED_TAGS):
        missing = ", ".join(f"{t.decode()}=" for t in _REQUIRED_TAGS if t not in tags)
        return verdict(Result.PERMERROR, f"signature lacks {missing}")
    if tags[b"v"] != b"1":
        return verdict(Result.PERMERROR, "unknown signature version")
    if algorithm in OBSOLETE_ALGORITHMS:
        return verdict(Result.FAIL, f"{algorithm} is not acceptable (RFC 8301)")
    if algorithm not in ALGORITHMS:
        return verdict(Result.NEUTRAL, f"unknown algorithm {algorithm}")
    problem = _tag_problem(tags, domain, selector, identity)
    if problem:
        return verdict(Result.PERMERROR, problem)
    try:
        canonicalization = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return verdict(Result.PERMERROR, "unknown canonicalization")
    expires = int(tags[b"x"]) if b"x" in tags else None
    if expires is not None and b"t" in tags and expires < int(tags[b"t"]):
        return verdict(Result.PERMERROR, "x= is before t=")
    if expires is not None and expires < now - CLOCK_SKEW:
        return verdict(Result.FAIL, "signature expired")  # §3.5 x=
    signed = tuple(h.strip().lower() for h in tags[b"h"].split(b":"))
    if b"from" not in signed:
        return verdict(Result.PERMERROR, "From is not signed")  # §6.1.1
    return Signature(
        tags, header, domain, selector, algorithm, identity, signed,
        canonicalization.to_c_value(), body_length,
    )  # fmt: skip


def _tag_problem(tags: dict[bytes, bytes], domain: str, selector: str, identity: str) -> str:
    """The first §3.5 syntax rule ``tags`` break, or ""."""
    if not _DOMAIN.match(domain) or "." not in domain:
        return "d= is not a domain"
    if not _SELECTOR.fullmatch(selector):
        return "s= is not a selector"
    for tag in (b"b", b"bh"):
        try:
            base64.b64decode(_unfolded(tags[tag]), validate=True)
        except (binascii.Error, ValueError):
            return f"{tag.decode()}= is not base64"
    if not tags[b"b"].strip():
        return "b= is empty"
    i_domain = identity.rpartition("@")[2].lower()
    if "@" not in identity or not (
        i_domain == domain.lower() or i_domain.endswith("." + domain.lower())
    ):
        return "i= is not within d="
    for tag in (b"l", b"t", b"x"):
        if tag in tags and not _NUMBER.fullmatch(tags[tag]):
            return f"{tag.decode()}= is not a number"
    if b"q" in tags and b"dns/txt" not in [q.strip() for q in tags[b"q"].split(b":")]:
        return "no supported q= method"
    return ""


def _shorten_b(results: tuple[DKIMResult, ...]) -> tuple[DKIMResult, ...]:
    """RFC 6008 §4: header.b is the shortest prefix of b= (8 characters at least) that tells
    a signature from the message's others."""
    out: list[DKIMResult] = []
    for mine in results:
        full = mine.header_b
        others = [r.header_b for r in results if r.header_b != full]
        length = B_PREFIX
        while length < len(full) and any(o.startswith(full[:length]) for o in others):
            length += 1
        out.append(mine if length >= len(full) else mine.with_header_b(full[:length]))
    return tuple(out)


# -- step 3: keys and signatures ------------------------------------------------------------------


class KeyLookup(enum.Enum):
    """Why step 2 has no key records to give."""

    NO_KEY = "no key"
    TEMPERROR = "temperror"


class _Verifier(dkimpy.DKIM):  # type: ignore[misc]
    """dkimpy's verification step on a message already split, with a key already loaded: for
    the algorithms other than rsa-sha256 (ed25519-sha256), which dkimpy verifies whole."""

    def __init__(self, headers: list[list[bytes]], body: bytes) -> None:
        super().__init__(None, minkey=MIN_RSA_BITS)
        self.headers = headers
        self.body = body

    def check(self, sig: Signature, pk: object, bits: int, ktag: bytes) -> bool:
        self.pk, self.keysize, self.ktag, self.seqtlsrpt = pk, bits, ktag, False
        return bool(
            self.verify_sig_process(dict(sig.tags), list(sig.signed_headers), sig.header, None)
        )


# A body longer than this is canonicalised a piece at a time (see canonical_body).
BODY_PIECE = 256 * 1024
_LINE_WITH_TEXT = re.compile(rb"[^ \t\r\n][ \t]*\r\n")
_TEXT = re.compile(rb"[^ \t\r\n]")


def canonical_body(policy: CanonicalizationPolicy, body: bytes | memoryview) -> bytes:
    """dkimpy's body canonicalisation (RFC 6376 §3.4.3, §3.4.4), done a piece at a time (see
    :func:`canonical_pieces`)."""
    return b"".join(canonical_pieces(policy, body))


def canonical_pieces(policy: CanonicalizationPolicy, body: bytes | memoryview) -> Iterator[bytes]:
    """The canonical body in pieces of about :data:`BODY_PIECE` octets.

    An operation on a whole body of megabytes holds the GIL all along (a copy, a regular
    expression), so it would stall the event loop while a worker thread runs it; between
    pieces the loop gets its turn. Both algorithms change lines independently except for empty
    lines at the very end, so pieces that each end with a line holding text canonicalise to the
    same bytes as the whole. The two algorithms are :mod:`tidings.mailauth.canonical`'s, which
    give dkimpy's bytes faster.
    """
    if policy.body_algorithm is Relaxed:
        relaxed = True
    elif policy.body_algorithm is Simple:
        relaxed = False
    else:  # not a c= value dkimpy knows today; let it say what it means
        yield bytes(policy.canonicalize_body(bytes(body)))
        return
    start = 0
    while True:
        end = len(body)
        if end - start > BODY_PIECE:
            found = _LINE_WITH_TEXT.search(body, start + BODY_PIECE)
            if found and _TEXT.search(body, found.end()):  # else only empty lines follow
                end = found.end()
        yield canonical_body_piece(relaxed, bytes(body[start:end]))
        if end == len(body):
            return
        start = end


def _body_digest(
    policy: CanonicalizationPolicy, body: bytes | memoryview, limit: int | None
) -> tuple[bytes, int]:
    """The SHA-256 of the canonical body's first ``limit`` octets (all without l=), and the
    canonical body's whole length (§3.7, §3.5 l=), without ever holding the whole of it."""
    digest, length = hashlib.sha256(), 0
    for piece in canonical_pieces(policy, body):
        if limit is None or length < limit:
            digest.update(piece if limit is None else piece[: limit - length])
        length += len(piece)
    return digest.digest(), length


def signed_header_bytes(headers: list[list[bytes]], sig: Signature) -> bytes:
    """§3.7: what the signature of ``sig`` covers, the way dkimpy's ``hash_headers`` feeds its
    hasher: the signed fields (dkimpy selects them) canonicalised, then the DKIM-Signature
    field itself without its b= value and trailing CRLF.

    dkimpy canonicalises every field of the message before it selects; only the selected ones
    are canonicalised here. As dkimpy does, an extra From field counts whenever From is signed,
    so a second From cannot go unseen.
    """
    signed = list(sig.signed_headers)
    if b"from" in signed:
        signed.append(b"from")
    selected = dkimpy.select_headers(headers, signed)
    name, value = sig.header[0], without_b_value(sig.header[1])
    if sig.canonicalization.startswith(b"relaxed/"):
        fields = [relaxed_header(n, v) for n, v in selected]
        name, value = relaxed_header(name, value)
    else:
        fields = [(n, v) for n, v in selected]
    fields.append((name, value.rstrip()))
    return b"".join(n + b":" + v for n, v in fields)


def _check_rsa_sha256(
    headers: list[list[bytes]], body_digest: bytes, sig: Signature, key: rsa.RSAPublicKey
) -> bool:
    """§6.1.3 for rsa-sha256, given the canonical body's hash (cut to l=): the body hash, then
    the signature over the signed header fields, by ``cryptography`` (dkimpy's own RSA is pure
    Python, several times slower, and this runs for every signed message)."""
    if body_digest != base64.b64decode(_unfolded(sig.tags[b"bh"])):
        raise dkimpy.ValidationError("body hash mismatch")
    signature = base64.b64decode(_unfolded(sig.tags[b"b"]))
    try:
        key.verify(
            signature, signed_header_bytes(headers, sig), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


def verify_prepared(
    prepared: Prepared, keys: Sequence[list[bytes] | KeyLookup | None]
) -> tuple[DKIMResult, ...]:
    """Step 3: the verdict on each signature of ``prepared``, given step 2's key records for
    it (None where step 1 already decided)."""
    results: list[DKIMResult] = []
    for sig, records in zip(prepared.signatures, keys, strict=True):
        if isinstance(sig, DKIMResult):
            results.append(sig)
        else:
            results.append(_verify_one(prepared, sig, records))
    return _shorten_b(tuple(results))


def _verify_one(
    prepared: Prepared, sig: Signature, records: list[bytes] | KeyLookup | None
) -> DKIMResult:
    if records is KeyLookup.TEMPERROR:
        return sig.result(Result.TEMPERROR, f"key lookup for {sig.key_name} failed")
    if records is None or records is KeyLookup.NO_KEY or not records:
        return sig.result(Result.PERMERROR, f"no key for signature at {sig.key_name}")  # §6.1.2
    key = _choose_key(sig, records)
    if isinstance(key, str):
        return sig.result(Result.PERMERROR, key)
    pk, bits, ktag, testing = key
    if ktag == b"rsa" and bits < MIN_RSA_BITS:
        return sig.result(Result.FAIL, f"{bits}-bit key is too short (RFC 8301)", key_bits=bits)
    verdict = _check_crypto(prepared, sig, pk, bits, ktag)
    if testing and verdict.result is Result.FAIL:
        comment = f"{verdict.comment}; key in testing mode"
        return dataclasses.replace(verdict, result=Result.NEUTRAL, comment=comment)
    return verdict


def _choose_key(sig: Signature, records: list[bytes]) -> tuple[object, int, bytes, bool] | str:
    """§3.6.1, §6.1.2: the first key record usable for ``sig``, or why none is."""
    problem = "no usable key record"
    for record in records:
        found = _check_key(sig, record)
        if not isinstance(found, str):
            return found
        problem = found
    return problem


@functools.lru_cache(maxsize=4096)
def _key_tags(record: bytes) -> dict[bytes, bytes] | None:
    """A key record's tags (None: unreadable), remembered like :func:`_public_key`; only read."""
    try:
        return dict(parse_tags(record))
    except InvalidTagValueList:
        return None


def _check_key(sig: Signature, record: bytes) -> tuple[object, int, bytes, bool] | str:
    tags = _key_tags(record)
    if tags is None:
        return "key record syntax error"
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        return "key record version is not DKIM1"
    if b"p" in tags and not tags[b"p"].strip():
        return "key revoked"  # §3.6.1 p=
    if _text(tags.get(b"k", b"rsa")).lower() != ALGORITHMS[sig.algorithm]:
        return "key type does not match a="  # §6.1.2 step 6
    hashes = [h.strip().lower() for h in tags.get(b"h", b"").split(b":") if h.strip()]
    if hashes and sig.algorithm.rpartition("-")[2].encode() not in hashes:
        return "hash algorithm not allowed by the key"  # §3.6.1 h=
    flags = [f.strip() for f in tags.get(b"t", b"").split(b":")]
    if b"s" in flags and sig.identity.rpartition("@")[2].lower() != sig.domain.lower():
        return "key forbids subdomains in i="  # §3.6.1 t=s
    key = _public_key(sig.key_name.encode(), record)
    if isinstance(key, str):
        return key
    pk, bits, ktag = key
    return pk, bits, ktag, b"y" in flags


@functools.lru_cache(maxsize=4096)
def _public_key(name: bytes, record: bytes) -> tuple[object, int, bytes] | str:
    """dkimpy's reading of a key record (its ASN.1 parse is a tenth of a verification),
    remembered: a sender signs many messages with one key. The result is only read."""
    try:
        pk, bits, ktag, _ = dkimpy.evaluate_pk(name, record)
    except Exception as e:  # a record from DNS is the sender's text: nothing in it may escape
        return f"bad key record: {e}"
    return pk, int(bits), ktag


@functools.lru_cache(maxsize=4096)
def _rsa_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    """The ``cryptography`` key for dkimpy's reading of an RSA key record, remembered too."""
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _check_crypto(
    prepared: Prepared, sig: Signature, pk: object, bits: int, ktag: bytes
) -> DKIMResult:
    """The body hash and the signature (§6.1.3): rsa-sha256 here, the others by dkimpy."""
    policy = CanonicalizationPolicy.from_c_value(sig.canonicalization)
    digest, unsigned = b"", 0
    ours = ktag == b"rsa" and sig.algorithm == "rsa-sha256"
    if ours or sig.body_length is not None:
        digest, length = _body_digest(policy, prepared.body, sig.body_length)
        if sig.body_length is not None and sig.body_length > length:
            return sig.result(Result.FAIL, "l= is longer than the body", key_bits=bits)
        unsigned = 0 if sig.body_length is None else length - sig.body_length
    try:
        if ours:
            assert isinstance(pk, dict)
            key = _rsa_key(pk["modulus"], pk["publicExponent"])
            good = _check_rsa_sha256(prepared.headers, digest, sig, key)
        else:
            body = bytes(prepared.body)
            good = _Verifier(prepared.headers, body).check(sig, pk, bits, ktag)
    except dkimpy.ValidationError:
        return sig.result(Result.FAIL, "body hash did not verify", key_bits=bits)
    except Exception as e:  # dkimpy on hostile input: a verdict, never a crash
        return sig.result(Result.PERMERROR, f"cannot verify: {e}", key_bits=bits)
    kind = f"{bits}-bit {ktag.decode()} key"
    if not good:
        return sig.result(Result.FAIL, f"signature did not verify, {kind}", key_bits=bits)
    if unsigned:
        return sig.result(
            Result.POLICY, f"l= leaves {unsigned} octets of the body unsigned", key_bits=bits
        )
    return sig.result(Result.PASS, kind, key_bits=bits)


# -- the whole check ------------------------------------------------------------------------------


async def fetch_key(resolver: Resolver, name: str) -> list[bytes] | KeyLookup:
    """Step 2 for one signature: its key records (§3.6.2.2: each record's strings joined)."""
    try:
        records = await resolver.txt_bytes(name)
    except DNSTempError:
        return KeyLookup.TEMPERROR
    except NXDomain:
        return KeyLookup.NO_KEY
    return records or KeyLookup.NO_KEY


async def verify_message(
    resolver: Resolver, message: bytes, *, now: float | None = None
) -> tuple[DKIMResult, ...]:
    """Every DKIM signature of ``message`` verified; empty when it has none (``dkim=none``).
    Parsing and cryptography run in worker threads, DNS on the loop."""
    prepared = await asyncio.to_thread(prepare, message, now)
    if not prepared.signatures:
        return ()
    keys = await fetch_keys(resolver, prepared)
    return await asyncio.to_thread(verify_prepared, prepared, keys)


async def fetch_keys(
    resolver: Resolver, prepared: Prepared
) -> list[list[bytes] | KeyLookup | None]:
    """Step 2 for every signature of ``prepared`` at once (None where step 1 decided)."""

    async def key_for(sig: Signature | DKIMResult) -> list[bytes] | KeyLookup | None:
        return None if isinstance(sig, DKIMResult) else await fetch_key(resolver, sig.key_name)

    if len(prepared.signatures) == 1:  # the usual case: no tasks to gather
        return [await key_for(prepared.signatures[0])]
    return list(await asyncio.gather(*(key_for(s) for s in prepared.signatures)))


__all__ = [
    "ALGORITHMS",
    "BODY_PIECE",
    "MAX_SIGNATURES",
    "MIN_RSA_BITS",
    "DKIMResult",
    "KeyLookup",
    "Prepared",
    "Result",
    "Signature",
    "canonical_body",
    "check_signature",
    "fetch_key",
    "fetch_keys",
    "prepare",
    "signed_header_bytes",
    "verify_message",
    "verify_prepared",
]
