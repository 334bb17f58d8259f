"""DKIM signing of outgoing mail (RFC 6376 §5, RSA per RFC 8301, Ed25519 per RFC 8463).

The submission listener calls :func:`sign_message` from a worker thread with the keys of the
message's From domain and prepends what it returns. Everything here is synchronous and keeps
no mutable state, so any number of threads may sign at once.

dkimpy canonicalises and selects the header fields (the same code that verifies on port 25,
so signer and verifier cannot disagree on them); the signature operations are
``cryptography``'s (OpenSSL): dkimpy's RSA is pure Python, ten times slower. Reading an RSA
PEM (OpenSSL checks the key) costs as much as a hundred signatures, so parsed keys are
remembered (:func:`load_signing_key`).

Choices where the RFCs leave room:

* ``c=relaxed/relaxed``: survives the header refolding and trailing-space changes relays do
  (§3.4.2, §3.4.4); no ``l=``, since a body length lets anyone append unsigned text (§8.2);
  ``t=`` and no ``x=``; no ``i=`` (it defaults to ``@d=``, §3.5).
* ``h=`` lists the fields of :data:`SIGNED_FIELDS` that are present, once per occurrence
  (§5.4.2) — never an absent one, so a mailing list may still add its List-* fields — and
  those of :data:`OVERSIGNED_FIELDS` one extra time, so adding another instance of, say, From
  or Subject above the signed one breaks the signature (§8.15).
* A domain with several keys gets one signature per key (§4 lets a message carry several):
  an RSA and an Ed25519 key give a dual signature that verifiers without Ed25519 still
  accept, and two keys of one type carry a domain through a key rotation. RSA comes first,
  for verifiers that only look at the first signature.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import (
    CanonicalizationPolicy,
    correct_empty_body,
    strip_trailing_lines,
)

from tidings.mailauth.dkim import MIN_RSA_BITS, canonical_body

RSA_BITS = 2048  # RFC 8301 §3.2: at least 1024, SHOULD be 2048
RSA_EXPONENT = 65537
FOLD_WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD be no longer
B64_LINE = 76
KEY_CACHE_SIZE = 1024

# The key types a signing key may have → the a= of its signatures (RFC 8301 §3.1, RFC 8463 §3).
SIGNATURE_ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}

CANONICALIZATION = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")

# RFC 6376 §5.4.1's list, then fields that carry as much meaning: the originator and message
# identity (RFC 5322 §3.6), the MIME fields that decide how the body is shown (RFC 2045 §3),
# and List-Unsubscribe-Post, which RFC 8058 §4 requires to be signed.
SIGNED_FIELDS: frozenset[bytes] = frozenset(
    (
        b"from", b"reply-to", b"subject", b"date", b"to", b"cc",
        b"resent-date", b"resent-from", b"resent-to", b"resent-cc",
        b"in-reply-to", b"references",
        b"list-id", b"list-help", b"list-unsubscribe", b"list-subscribe", b"list-post",
        b"list-owner", b"list-archive",
        b"sender", b"message-id", b"resent-sender", b"resent-message-id",
        b"mime-version", b"content-type", b"content-transfer-encoding",
        b"content-id", b"content-description", b"content-disposition",
        b"list-unsubscribe-post",
    )
)  # fmt: skip

# Fields a message has at most once (RFC 5322 §3.6; MIME-Version and the Content-* fields of
# the top entity, RFC 2045 §3): a second one can only be an addition meant to be displayed
# instead, so h= names each once more than it occurs (§8.15). From is the one §5.4 insists on.
OVERSIGNED_FIELDS: frozenset[bytes] = frozenset(
    (
        b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id",
        b"in-reply-to", b"references",
        b"mime-version", b"content-type", b"content-transfer-encoding",
    )
)  # fmt: skip

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")


class SigningError(ValueError):
    """A message or key that cannot be signed with; the text says why in one line."""


@dataclass(frozen=True)
class SigningKey:
    """One key of a domain, ready to sign: ``algorithm`` is ``rsa`` or ``ed25519``."""

    domain: str  # d=, as DNS carries it (A-labels)
    selector: str  # s=
    algorithm: str
    private_key: PrivateKey = field(repr=False, compare=False)

    @property
    def signature_algorithm(self) -> str:
        """The a= tag of this key's signatures."""
        return SIGNATURE_ALGORITHMS[self.algorithm]


def key_type(algorithm: str) -> str:
    """``rsa`` or ``ed25519`` from a key type or an a= name (``rsa-sha256``), or SigningError."""
    name = algorithm.strip().lower()
    for kind, signature_algorithm in SIGNATURE_ALGORITHMS.items():
        if name in (kind, signature_algorithm):
            return kind
    raise SigningError(f"unknown DKIM key algorithm {algorithm!r} (use rsa or ed25519)")


def generate_private_key(algorithm: str) -> str:
    """A new private key as unencrypted PKCS#8 PEM, the form the dkim_keys table keeps."""
    key: PrivateKey
    if key_type(algorithm) == "rsa":
        key = rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=RSA_BITS)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode("ascii")


def load_signing_key(domain: str, selector: str, algorithm: str, pem: str) -> SigningKey:
    """A :class:`SigningKey` from a stored row; SigningError when the PEM is unreadable or
    is not a key of ``algorithm``. Parsed keys are remembered, so calling this for every
    message costs a dictionary lookup."""
    kind = key_type(algorithm)
    if not (_NAME.fullmatch(domain) and _NAME.fullmatch(selector)):
        # They are written into the field as they are (§3.5: d= and s= are DNS names).
        raise SigningError(f"DKIM key {selector!r} of {domain!r}: not a DNS name")
    key = _parse_private_key(pem)
    if isinstance(key, str):
        raise SigningError(f"DKIM key {selector} of {domain}: {key}")
    expected = rsa.RSAPrivateKey if kind == "rsa" else ed25519.Ed25519PrivateKey
    if not isinstance(key, expected):
        raise SigningError(f"DKIM key {selector} of {domain} is not an {kind} key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        # RFC 8301 §3.2: verifiers do not accept signatures by a shorter key.
        raise SigningError(f"DKIM key {selector} of {domain}: {key.key_size} bits is too short")
    return SigningKey(domain.rstrip(".").lower(), selector, kind, key)


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _parse_private_key(pem: str) -> PrivateKey | str:
    """The key in ``pem``, or why there is none. Safe from any thread, as is signing with the
    key objects it returns (OpenSSL keeps no per-call state in them)."""
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        return f"cannot read the private key: {e}"
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return f"unsupported key type {type(key).__name__} (use rsa or ed25519)"
    return key


# -- signing ------------------------------------------------------------------------------------


def signed_field_names(headers: Sequence[Sequence[bytes]]) -> list[bytes]:
    """The h= list for a message with these header fields (name, value), lower case: each
    signed field once per occurrence, in message order, then each over-signed one again."""
    names = [name.lower() for name, _ in headers if name.lower() in SIGNED_FIELDS]
    extra = [name for name in dict.fromkeys(names) if name in OVERSIGNED_FIELDS]
    return names + extra


def relaxed_body(body: bytes) -> bytes:
    """§3.4.4 on ``body``, by dkimpy. Its two whitespace passes take longer than an RSA
    signature on a 4 KB body, and on most bodies change nothing; so they run only when the body
    has whitespace for them to change (a tab, two spaces in a row, a space before a line end).
    The end-of-body steps always run."""
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        return canonical_body(CANONICALIZATION, body)
    return bytes(correct_empty_body(strip_trailing_lines(body)))


def sign_message(message: bytes, keys: Sequence[SigningKey], now: int | None = None) -> bytes:
    """The DKIM-Signature fields for ``message`` (header and body, CRLF line endings), one per
    key, RSA first, to be prepended to it as they are; each ends in CRLF. No keys, no fields.

    Raises SigningError for a header section dkimpy cannot read or a message without From
    (§5.4: From MUST be signed)."""
    if not keys:
        return b""
    try:
        headers, body = dkimpy.rfc822_parse(message)
    except dkimpy.MessageFormatError as e:
        raise SigningError(f"cannot sign: {e}") from None
    signed = signed_field_names(headers)
    if b"from" not in signed:
        raise SigningError("cannot sign a message without a From field")
    # Only signed fields are hashed (§3.7), so only they are canonicalised.
    canonical_headers = CANONICALIZATION.canonicalize_headers(
        [h for h in headers if h[0].lower() in SIGNED_FIELDS]
    )
    # The body hash is the same for every key (one c=, one hash function).
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    timestamp = int(time.time()) if now is None else now
    ordered = sorted(keys, key=lambda k: k.algorithm != "rsa")
    return b"".join(
        _signature_field(key, canonical_headers, signed, body_hash, timestamp) for key in ordered
    )


def _signature_field(
    key: SigningKey,
    canonical_headers: list[tuple[bytes, bytes]],
    signed: list[bytes],
    body_hash: bytes,
    timestamp: int,
) -> bytes:
    """One DKIM-Signature field: its tags with b= empty are hashed after the signed fields
    (§3.7), then the signature goes into b=."""
    unsigned = _unsigned_field(key, signed, body_hash.decode("ascii"), timestamp)
    name, _, value = unsigned.partition(b":")
    digest = hashlib.sha256()
    dkimpy.hash_headers(digest, CANONICALIZATION, canonical_headers, signed, (name, value), None)
    if isinstance(key.private_key, rsa.RSAPrivateKey):
        signature = key.private_key.sign(
            digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        )
    else:
        signature = key.private_key.sign(digest.digest())  # RFC 8463 §3: the hash is signed
    return unsigned + _fold_base64(base64.b64encode(signature)) + b"\r\n"


def _unsigned_field(key: SigningKey, signed: list[bytes], body_hash: str, timestamp: int) -> bytes:
    """``DKIM-Signature: v=1; ...; b=`` folded to :data:`FOLD_WIDTH`, with b= on a line of its
    own so that the signature fills whole lines after it."""
    tags = [
        ("v", "1"),
        ("a", key.signature_algorithm),
        ("c", CANONICALIZATION.to_c_value().decode("ascii")),
        ("d", key.domain),
        ("s", key.selector),
        ("t", str(timestamp)),
    ]
    # Each token is written whole; the header may break before any of them. h= may break after
    # each of its colons (§3.5: FWS is allowed around ":").
    h_tokens = [name.decode("ascii") + ":" for name in signed]
    h_tokens[0] = " h=" + h_tokens[0]
    h_tokens[-1] = h_tokens[-1][:-1] + ";"
    tokens = [f" {tag}={value};" for tag, value in tags] + h_tokens + [f" bh={body_hash};"]
    lines = ["DKIM-Signature:"]
    for token in tokens:
        if len(lines[-1]) + len(token) > FOLD_WIDTH:
            lines.append("\t" + token.lstrip(" "))
        else:
            lines[-1] += token
    lines.append("\tb=")
    return "\r\n".join(lines).encode("ascii")


def _fold_base64(value: bytes) -> bytes:
    """b= after its ``\\tb=``: continuation lines of :data:`B64_LINE` characters (§3.5: FWS may
    appear anywhere in base64 values)."""
    first = B64_LINE - len("b=")
    pieces = [value[:first]]
    pieces += [value[i : i + B64_LINE] for i in range(first, len(value), B64_LINE)]
    return b"\r\n\t".join(pieces)


__all__ = [
    "OVERSIGNED_FIELDS",
    "SIGNATURE_ALGORITHMS",
    "SIGNED_FIELDS",
    "SigningError",
    "SigningKey",
    "generate_private_key",
    "key_type",
    "load_signing_key",
    "sign_message",
    "signed_field_names",
]
