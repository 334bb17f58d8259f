"""Mail addresses: SMTP path parsing (RFC 5321 §4.1.2) and normalisation. Pure, no I/O.

Parsing is strict on purpose: an address that cannot be parsed exactly is refused rather than
guessed at, because a guess is how ``user@other.example@ours`` or ``user%other@ours`` style
tricks turn a server into an open relay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Non-ASCII Unicode scalar values: what UTF-8 can carry (RFC 3629). Surrogates are left out:
# they only appear when undecodable bytes were decoded with surrogateescape.
_NON_ASCII = r"\u0080-\ud7ff\ue000-\U0010ffff"
# RFC 5321 §4.1.2 atext (plus UTF-8 for SMTPUTF8, RFC 6531 §3.3).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-" + _NON_ASCII + "]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e' + _NON_ASCII + r']|\\[\x20-\x7e])*"')
_LETDIG = rf"[A-Za-z0-9{_NON_ASCII}]"
_LABEL = rf"(?:{_LETDIG}(?:[A-Za-z0-9\-{_NON_ASCII}]*{_LETDIG})?)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_ADDRESS_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]")
_AT_DOMAIN = rf"@(?:{_DOMAIN.pattern}|{_ADDRESS_LITERAL.pattern})"
_SOURCE_ROUTE = re.compile(rf"{_AT_DOMAIN}(?:,{_AT_DOMAIN})*:")
# A host name after IDNA encoding: LDH labels of 1-63 characters (RFC 1035 §2.3.1, RFC 5890).
_LDH_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_ASCII_DOMAIN = re.compile(rf"(?:{_LDH_LABEL}\.)*{_LDH_LABEL}")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e" + _NON_ASCII + "]+")

MAX_DOMAIN = 255


class AddressError(ValueError):
    """The text is not a valid address or path; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: local part as sent (case kept), domain lower-cased without trailing dot."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The form Tidings stores and looks up: the whole address lower-cased."""
        return f"{self.local.lower()}@{self.domain}"

    @property
    def is_quoted(self) -> bool:
        return self.local.startswith('"')


def normalize_domain(domain: str) -> str:
    """Lower-case, drop one trailing dot, and turn an internationalised name into A-labels."""
    domain = domain.strip(" \t\r\n")  # not str.strip(): U+0085, U+3000… are not ours to drop
    if domain.endswith("."):
        domain = domain[:-1]
    if domain.startswith("["):
        return domain.lower()
    if not domain.isascii():
        try:
            encoded = domain.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise AddressError(f"invalid internationalised domain {domain!r}") from e
        # IDNA 2003 mapping can turn a label into nothing, a space or more dots ("a.\u2488" →
        # "a.1."): what comes out must still be a host name (RFC 1035 §2.3.1, RFC 5321 §4.5.3.1.2).
        if not _ASCII_DOMAIN.fullmatch(encoded) or len(encoded) > MAX_DOMAIN:
            raise AddressError(f"invalid internationalised domain {domain!r}")
        domain = encoded
    return domain.lower()


def parse_domain(text: str) -> str:
    """A domain name given by an administrator → normalised, or AddressError."""
    text = text.strip()
    if not text or not _DOMAIN.fullmatch(text) or len(text) > MAX_DOMAIN:
        raise AddressError(f"invalid domain name {text!r}")
    if "." not in text.rstrip("."):
        raise AddressError(f"invalid domain name {text!r}: it needs at least one dot")
    return normalize_domain(text)


def parse_mailbox(text: str) -> Address:
    """``local@domain`` (no angle brackets) → Address, or AddressError."""
    local, domain = _split_mailbox(text)
    return Address(local, normalize_domain(domain))


def _split_mailbox(text: str) -> tuple[str, str]:
    m = _QUOTED_STRING.match(text) if text.startswith('"') else _DOT_STRING.match(text)
    if not m:
        raise AddressError(f"invalid local part in {text!r}")
    local, rest = m.group(0), text[m.end() :]
    if not rest.startswith("@"):
        raise AddressError(f"expected local@domain, got {text!r}")
    domain = rest[1:]
    if not (_DOMAIN.fullmatch(domain) or _ADDRESS_LITERAL.fullmatch(domain)):
        raise AddressError(f"invalid domain in {text!r}")
    if len(domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    return local, domain


def parse_path(arg: str, *, allow_null: bool) -> tuple[Address | None, str]:
    """Parse the argument after ``MAIL FROM:`` or ``RCPT TO:``.

    Returns (address, parameter text); address is None for the null path ``<>`` when
    ``allow_null``. A source route (``<@a,@b:user@c>``) is accepted and its route dropped,
    as RFC 5321 §3.6.1 and Appendix C allow; the mailbox after it is what counts.
    """
    arg = arg.lstrip(" ")
    if not arg.startswith("<"):
        raise AddressError("the address must be enclosed in <>")
    close = _find_closing_bracket(arg)
    inner, params = arg[1:close], arg[close + 1 :]
    if params and not params.startswith(" "):
        raise AddressError("expected a space between the address and its parameters")
    if inner == "":
        if not allow_null:
            raise AddressError("the null address <> is not allowed here")
        return None, params.strip()
    route = _SOURCE_ROUTE.match(inner)
    if route:
        inner = inner[route.end() :]
    return parse_mailbox(inner), params.strip()


def _find_closing_bracket(arg: str) -> int:
    """Index of the ``>`` closing the path, skipping over a quoted local part."""
    i, quoted = 1, False
    while i < len(arg):
        c = arg[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    raise AddressError("missing closing >")


def parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters (RFC 5321 §4.1.2 Mail-parameters) → {KEYWORD: value or None}."""
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(keyword) or (eq and not _ESMTP_VALUE.fullmatch(value)):
            raise AddressError(f"invalid parameter {item!r}")
        params[keyword.upper()] = value if eq else None
    return params
