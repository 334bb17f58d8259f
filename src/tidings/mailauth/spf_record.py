"""SPF records and macros (RFC 7208 §4.5, §4.6, §5, §6, §7, §12): text → frozen values → text.

Pure: no DNS here. :func:`parse_record` checks the whole record before anything is evaluated,
because a syntax error anywhere is a permerror even past a matching ``all`` (§4.6).
:func:`expand` turns a parsed macro-string into text given a :class:`MacroContext`; the one
macro that needs DNS, ``%{p}``, is looked up by the caller and handed in.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SPFSyntaxError(ValueError):
    """Text that breaks RFC 7208's grammar; during check_host() it is a permerror."""


# -- macro-strings (§7.1) --------------------------------------------------------------------

# macro-letter; c, r and t are allowed only in an explanation string (§7.1).
MACRO_LETTERS = frozenset("slodiphv")
EXP_ONLY_LETTERS = frozenset("crt")
DELIMITERS = frozenset(".-+,/_=")


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Macro:
    """``%{letter digits r delimiters}``; an upper-case letter means URL-escape (§7.3)."""

    letter: str  # lower case
    digits: int | None = None  # keep this many right-hand parts
    reverse: bool = False
    delimiters: str = ""  # empty: "."
    escape: bool = False


MacroString = tuple[Literal | Macro, ...]

_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")


def parse_macro_string(text: str, *, explanation: bool = False) -> MacroString:
    """Parse a macro-string (§7.1). ``explanation`` allows SP and the c, r, t letters."""
    out: list[Literal | Macro] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "%":
            # macro-literal = %x21-24 / %x26-7E; explanation-string adds SP (§6.2).
            if not ("\x21" <= ch <= "\x7e" or (explanation and ch == " ")):
                raise SPFSyntaxError(f"character {ch!r} not allowed")
            literal.append(ch)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
            i += 2
            continue
        m = _MACRO.match(text, i)
        if not m:
            raise SPFSyntaxError(f"bad macro at {text[i : i + 8]!r}")
        letter = m.group(1).lower()
        allowed = MACRO_LETTERS | EXP_ONLY_LETTERS if explanation else MACRO_LETTERS
        if letter not in allowed:
            raise SPFSyntaxError(f"macro letter {m.group(1)!r} not allowed here")
        digits = int(m.group(2)) if m.group(2) else None
        if digits == 0:
            raise SPFSyntaxError("macro digit transformer must be nonzero")  # §7.3
        if literal:
            out.append(Literal("".join(literal)))
            literal = []
        out.append(
            Macro(
                letter,
                digits,
                bool(m.group(3)),
                m.group(4),
                escape=m.group(1).isupper(),
            )
        )
        i = m.end()
    if literal:
        out.append(Literal("".join(literal)))
    return tuple(out)


_TOPLABEL = r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN_END = re.compile(r"\." + _TOPLABEL + r"\.?\Z")


def parse_domain_spec(text: str) -> MacroString:
    """domain-spec = macro-string domain-end (§7.1): it must end in a macro or in
    "." toplabel ["."], so ``a:museum`` and ``a:1.2.3.4`` are syntax errors."""
    if not text:
        raise SPFSyntaxError("empty domain-spec")
    parts = parse_macro_string(text)
    # A macro-expand at the end (including %%, %_, %-) is a valid domain-end; those three
    # parse as literals, so look at the source text for them.
    if isinstance(parts[-1], Macro) or re.search(r"(?<!%)(?:%%)*%[%_-]\Z", text):
        return parts
    tail = ""
    for part in reversed(parts):
        if not isinstance(part, Literal):
            break
        tail = part.text + tail
    if not _DOMAIN_END.search(tail):
        raise SPFSyntaxError(f"domain-spec {text!r} does not end in a valid top label")
    return parts


def macro_letters(ms: MacroString) -> frozenset[str]:
    return frozenset(p.letter for p in ms if isinstance(p, Macro))


@dataclass(frozen=True)
class MacroContext:
    """What the macro letters stand for in one check_host() (§7.2)."""

    sender: str  # <sender>; local-part "postmaster" when it had none (§4.3)
    domain: str  # <domain> being evaluated
    ip: IPAddress  # <ip>, IPv4-mapped addresses already made IPv4
    helo: str = ""
    receiver: str = "unknown"  # %{r}: the host doing the check
    timestamp: int = 0  # %{t}
    validated_name: str = "unknown"  # %{p}, looked up by the caller when needed

    @property
    def local_part(self) -> str:
        return self.sender.rpartition("@")[0]

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]


def ip_dotted(ip: IPAddress) -> str:
    """%{i}: dotted quad for IPv4; for IPv6 dot-separated nibbles (§7.3)."""
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


def _macro_value(letter: str, ctx: MacroContext) -> str:
    match letter:
        case "s":
            return ctx.sender
        case "l":
            return ctx.local_part
        case "o":
            return ctx.sender_domain
        case "d":
            return ctx.domain
        case "i":
            return ip_dotted(ctx.ip)
        case "p":
            return ctx.validated_name
        case "v":
            return "in-addr" if ctx.ip.version == 4 else "ip6"
        case "h":
            return ctx.helo
        case "c":
            return str(ctx.ip)  # §7.3: the readable form, e.g. 2001:db8::cb01
        case "r":
            return ctx.receiver
        case "t":
            return str(ctx.timestamp)
    raise SPFSyntaxError(f"unknown macro letter {letter!r}")  # pragma: no cover


def _transform(value: str, macro: Macro) -> str:
    """§7.3: split on the delimiters, optionally reverse, keep the right-hand ``digits``
    parts, rejoin with dots; then URL-escape for upper-case letters."""
    if macro.digits is not None or macro.reverse or macro.delimiters:
        delims = macro.delimiters or "."
        parts = re.split("[" + re.escape(delims) + "]", value)
        if macro.reverse:
            parts.reverse()
        if macro.digits is not None:
            parts = parts[-macro.digits :]
        value = ".".join(parts)
    if macro.escape:
        value = urllib.parse.quote(value, safe="-._~")  # RFC 3986 unreserved stays
    return value


def expand(ms: MacroString, ctx: MacroContext) -> str:
    """The text of a macro-string in ``ctx`` (§7.3)."""
    return "".join(
        p.text if isinstance(p, Literal) else _transform(_macro_value(p.letter, ctx), p) for p in ms
    )


def expand_domain(ms: MacroString, ctx: MacroContext) -> str:
    """A domain-spec's target name: a trailing dot dropped, and labels removed from the left
    until it fits in 253 characters (§7.3)."""
    name = expand(ms, ctx)
    if name.endswith("."):
        name = name[:-1]
    while len(name) > 253 and "." in name:
        name = name.partition(".")[2]
    return name


# -- records (§4.5, §4.6.1, §5, §6) ----------------------------------------------------------

QUALIFIERS = "+-?~"
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
# Mechanisms (and the redirect modifier) that cost a DNS lookup (§4.6.4).
DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})


@dataclass(frozen=True)
class Mechanism:
    qualifier: str  # one of "+-?~"
    kind: str  # lower-case mechanism name
    domain: MacroString | None = None  # target domain-spec; None: <domain>
    network: IPNetwork | None = None  # ip4, ip6
    cidr4: int = 32  # a, mx
    cidr6: int = 128


@dataclass(frozen=True)
class Record:
    mechanisms: tuple[Mechanism, ...] = ()
    redirect: MacroString | None = None
    explanation: MacroString | None = None  # exp=
    unknown: tuple[tuple[str, MacroString], ...] = field(default=())


_VERSION = re.compile(r"v=spf1(?: |\Z)", re.IGNORECASE)
_NAME = re.compile(r"([+\-?~]?)([A-Za-z][A-Za-z0-9_.\-]*)")
_DUAL_CIDR = re.compile(
    r"(?P<rest>.*?)(?:/(?P<c4>0|[1-9][0-9]*))?(?://(?P<c6>0|[1-9][0-9]*))?\Z", re.DOTALL
)
_IP_CIDR = re.compile(r"(?P<addr>[0-9A-Fa-f:.]+)(?:/(?P<len>0|[1-9][0-9]*))?\Z")


def is_spf_record(text: str) -> bool:
    """§4.5: a record is SPF if it begins with "v=spf1" followed by a space or its end."""
    return _VERSION.match(text) is not None


def parse_record(text: str) -> Record:
    """Parse a whole SPF record. Raises :class:`SPFSyntaxError` for anything wrong in it."""
    if not is_spf_record(text):
        raise SPFSyntaxError("not an SPF record")
    return _parse_record_cached(text)


@lru_cache(maxsize=2048)
def _parse_record_cached(text: str) -> Record:
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, MacroString] = {}
    unknown: list[tuple[str, MacroString]] = []
    # terms = *( 1*SP ( directive / modifier ) ); only SP separates terms (§4.6.1, §12).
    for term in text[6:].split(" "):
        if not term:
            continue
        m = _NAME.match(term)
        if not m:
            raise SPFSyntaxError(f"unrecognised term {term!r}")
        qualifier, name = m.group(1), m.group(2)
        rest = term[m.end() :]
        if not qualifier and rest.startswith("="):
            key = name.lower()
            value = rest[1:]
            if key in ("redirect", "exp"):
                if key in modifiers:
                    raise SPFSyntaxError(f"{key}= appears twice")  # §6
                modifiers[key] = parse_domain_spec(value)
            else:
                unknown.append((name, parse_macro_string(value)))  # §6: ignored, but checked
            continue
        mechanisms.append(_parse_mechanism(qualifier or "+", name.lower(), rest, term))
    return Record(
        tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"), tuple(unknown)
    )


def _parse_mechanism(qualifier: str, kind: str, rest: str, term: str) -> Mechanism:
    if kind not in MECHANISMS:
        raise SPFSyntaxError(f"unknown mechanism in {term!r}")
    if kind == "all":  # §5.1
        if rest:
            raise SPFSyntaxError(f"'all' takes no argument: {term!r}")
        return Mechanism(qualifier, kind)
    if kind in ("include", "exists"):  # §5.2, §5.7
        if not rest.startswith(":"):
            raise SPFSyntaxError(f"{kind} needs ':' domain-spec: {term!r}")
        return Mechanism(qualifier, kind, parse_domain_spec(rest[1:]))
    if kind == "ptr":  # §5.5
        if not rest:
            return Mechanism(qualifier, kind)
        if not rest.startswith(":"):
            raise SPFSyntaxError(f"bad ptr mechanism {term!r}")
        return Mechanism(qualifier, kind, parse_domain_spec(rest[1:]))
    if kind in ("ip4", "ip6"):  # §5.6
        return Mechanism(qualifier, kind, network=_parse_network(kind, rest, term))
    # a, mx: [ ":" domain-spec ] [ dual-cidr-length ] (§5.3, §5.4)
    m = _DUAL_CIDR.match(rest)
    assert m is not None  # every string matches: rest can absorb it all
    spec, c4, c6 = m.group("rest"), m.group("c4"), m.group("c6")
    cidr4 = int(c4) if c4 is not None else 32
    cidr6 = int(c6) if c6 is not None else 128
    if cidr4 > 32 or cidr6 > 128:
        raise SPFSyntaxError(f"CIDR length out of range in {term!r}")
    domain: MacroString | None = None
    if spec:
        if not spec.startswith(":"):
            raise SPFSyntaxError(f"bad {kind} mechanism {term!r}")
        domain = parse_domain_spec(spec[1:])
    return Mechanism(qualifier, kind, domain, cidr4=cidr4, cidr6=cidr6)


def _parse_network(kind: str, rest: str, term: str) -> IPNetwork:
    m = _IP_CIDR.match(rest[1:]) if rest.startswith(":") else None
    if not m:
        raise SPFSyntaxError(f"bad {kind} mechanism {term!r}")
    try:
        address: IPAddress = (
            ipaddress.IPv4Address(m.group("addr"))
            if kind == "ip4"
            else ipaddress.IPv6Address(m.group("addr"))
        )
    except ValueError:
        raise SPFSyntaxError(f"bad address in {term!r}") from None
    length = int(m.group("len")) if m.group("len") is not None else address.max_prefixlen
    if length > address.max_prefixlen:
        raise SPFSyntaxError(f"CIDR length out of range in {term!r}")
    return ipaddress.ip_network(f"{address}/{length}", strict=False)


__all__ = [
    "DNS_MECHANISMS",
    "Literal",
    "Macro",
    "MacroContext",
    "MacroString",
    "Mechanism",
    "Record",
    "SPFSyntaxError",
    "expand",
    "expand_domain",
    "ip_dotted",
    "is_spf_record",
    "macro_letters",
    "parse_domain_spec",
    "parse_macro_string",
    "parse_record",
]
