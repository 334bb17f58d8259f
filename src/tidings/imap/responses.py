"""IMAP responses as bytes (RFC 3501 §7 and the extensions' response grammar).

Pure, like the parser: the session decides what to say, this module decides the octets —
which string form a value takes, how a sequence set is compressed, where a literal goes.
Every function returns one whole response line (or continuation) ending in CRLF.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from tidings.imap.parser import ParseError, encode_mailbox_name
from tidings.imap.sequence import compress, compress_ordered

CRLF = b"\r\n"
# A quoted string longer than this is sent as a literal: clients cope with either, and a
# literal costs no escaping.
_MAX_QUOTED = 1024
_ASTRING_BYTES = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_LINE_BREAKS = re.compile(r"[\r\n]+")


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Atom:
    """Sent as it is: a flag, a keyword such as ``NIL``-free capability, a number-like token."""

    text: str


@dataclass(frozen=True, slots=True)
class Literal:
    """Always a literal, whatever the bytes (message bodies, BODY[...] sections)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes already in IMAP syntax, spliced in unchanged."""

    data: bytes


Value: TypeAlias = "int | str | bytes | Atom | Literal | Raw | Sequence[Value] | None"


def literal(data: bytes) -> bytes:
    """RFC 3501 §4.3: ``{n}`` CRLF and the n octets."""
    return b"{%d}\r\n" % len(data) + data


def quoted(data: bytes) -> bytes:
    """RFC 3501 §4.3 quoted string; the caller has checked the bytes are quotable."""
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value: str | bytes) -> bytes:
    """``string``: quoted when 7-bit without CR/LF/NUL and not long, else a literal.

    RFC 3501 §4.3: 8-bit and line breaks can only travel in literals. Text is UTF-8.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) <= _MAX_QUOTED and _QUOTABLE.fullmatch(data):
        return quoted(data)
    return literal(data)


def astring(value: str | bytes) -> bytes:
    """``astring``: a bare atom when every octet is an ASTRING-CHAR, else :func:`string`.

    ``NIL`` is quoted so that no client confuses it with nil where an nstring could be.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    if _ASTRING_BYTES.fullmatch(data) and data.upper() != b"NIL":
        return data
    return string(data)


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else string(value)


def mailbox(name: str) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 §5.1.3) as an astring."""
    return astring(encode_mailbox_name(name))


def encode(value: Value) -> bytes:
    """A value tree as IMAP: None → NIL, int → number, str/bytes → string, list → ( ... )."""
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, str | bytes):
        return string(value)
    if isinstance(value, Atom):
        return value.text.encode("ascii")
    if isinstance(value, Literal):
        return literal(value.data)
    if isinstance(value, Raw):
        return value.data
    return b"(" + b" ".join(encode(v) for v in value) + b")"


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Junk)``: flags are atoms (RFC 3501 §9 flag-list)."""
    return b"(" + " ".join(flags).encode("ascii") + b")"


def _text(text: str) -> bytes:
    """resp-text: no CR or LF may get into a response line (RFC 3501 §9 TEXT-CHAR)."""
    return _LINE_BREAKS.sub(" ", text).encode("utf-8")


# --- status responses ---------------------------------------------------------------------------


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """``tag OK|NO|BAD [code] text`` (RFC 3501 §7.1)."""
    prefix = f"[{code}] " if code else ""
    return tag.encode("ascii") + b" " + status.encode("ascii") + b" " + _text(prefix + text) + CRLF


def ok(tag: str, text: str = "completed", code: str | None = None) -> bytes:
    return tagged(tag, "OK", text, code)


def no(tag: str, text: str, code: str | None = None) -> bytes:
    return tagged(tag, "NO", text, code)


def bad(tag: str, text: str, code: str | None = None) -> bytes:
    return tagged(tag, "BAD", text, code)


def untagged_status(status: str, text: str, code: str | None = None) -> bytes:
    """``* OK|NO|BAD|BYE|PREAUTH [code] text`` — greetings, alerts, BYE."""
    return tagged("*", status, text, code)


def bye(text: str, code: str | None = None) -> bytes:
    return untagged_status("BYE", text, code)


def continuation(text: str = "Ready") -> bytes:
    """RFC 3501 §7.5 command continuation request."""
    return b"+ " + _text(text) + CRLF


def error_response(error: ParseError) -> bytes:
    """What to answer a command the parser or reader refused (``* BAD`` without a tag)."""
    return tagged(error.tag or "*", error.status, error.reason, error.code)


# Response codes (RFC 3501 §7.1, RFC 5530, RFC 4315, RFC 7162, RFC 7889) ------------------------

ALERT = "ALERT"
ALREADYEXISTS = "ALREADYEXISTS"
AUTHENTICATIONFAILED = "AUTHENTICATIONFAILED"
AUTHORIZATIONFAILED = "AUTHORIZATIONFAILED"
CANNOT = "CANNOT"
CLIENTBUG = "CLIENTBUG"
CLOSED = "CLOSED"  # RFC 7162 §3.2.11
CONTACTADMIN = "CONTACTADMIN"
EXPUNGEISSUED = "EXPUNGEISSUED"
INUSE = "INUSE"
LIMIT = "LIMIT"
NOMODSEQ = "NOMODSEQ"
NONEXISTENT = "NONEXISTENT"
NOPERM = "NOPERM"
OVERQUOTA = "OVERQUOTA"
PRIVACYREQUIRED = "PRIVACYREQUIRED"
READ_ONLY = "READ-ONLY"
READ_WRITE = "READ-WRITE"
SERVERBUG = "SERVERBUG"
TOOBIG = "TOOBIG"
TRYCREATE = "TRYCREATE"
UIDNOTSTICKY = "UIDNOTSTICKY"
UNAVAILABLE = "UNAVAILABLE"


def badcharset_code(charsets: Sequence[str] = ("US-ASCII", "UTF-8")) -> str:
    return f"BADCHARSET ({' '.join(charsets)})" if charsets else "BADCHARSET"


def capability_code(capabilities: Iterable[str]) -> str:
    return "CAPABILITY " + " ".join(capabilities)


def permanentflags_code(flags: Iterable[str]) -> str:
    return "PERMANENTFLAGS (" + " ".join(flags) + ")"


def uidvalidity_code(uidvalidity: int) -> str:
    return f"UIDVALIDITY {uidvalidity}"


def uidnext_code(uidnext: int) -> str:
    return f"UIDNEXT {uidnext}"


def unseen_code(seq: int) -> str:
    return f"UNSEEN {seq}"


def highestmodseq_code(modseq: int) -> str:
    return f"HIGHESTMODSEQ {modseq}"


def appenduid_code(uidvalidity: int, uid: int) -> str:
    """RFC 4315 §3."""
    return f"APPENDUID {uidvalidity} {uid}"


def copyuid_code(uidvalidity: int, pairs: Iterable[tuple[int, int]]) -> str:
    """RFC 4315 §3 COPYUID: source and destination sets in corresponding order.

    Pairs are sorted by source UID and each set keeps that order, so ``1:3`` → ``7,9,8`` stays
    paired rather than each side being sorted on its own.
    """
    ordered = sorted(pairs)
    sources = compress_ordered([s for s, _ in ordered])
    targets = compress_ordered([t for _, t in ordered])
    return f"COPYUID {uidvalidity} {sources} {targets}"


def modified_code(numbers: Iterable[int]) -> str:
    """RFC 7162 §3.1.3: messages a STORE UNCHANGEDSINCE left alone."""
    return f"MODIFIED {compress(numbers)}"


# --- untagged data ------------------------------------------------------------------------------


def _untagged(*parts: bytes) -> bytes:
    return b"* " + b" ".join(parts) + CRLF


def exists(count: int) -> bytes:
    return b"* %d EXISTS\r\n" % count


def recent(count: int) -> bytes:
    return b"* %d RECENT\r\n" % count


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def flags(names: Iterable[str]) -> bytes:
    return _untagged(b"FLAGS", flag_list(names))


def capability(capabilities: Iterable[str]) -> bytes:
    return _untagged(b"CAPABILITY", " ".join(capabilities).encode("ascii"))


def enabled(capabilities: Iterable[str]) -> bytes:
    """RFC 5161 §3.2; sent even when nothing was enabled."""
    return _untagged(b"ENABLED", *(c.encode("ascii") for c in capabilities))


def _delimiter(delimiter: str | None) -> bytes:
    return b"NIL" if delimiter is None else quoted(delimiter.encode("ascii"))


def list_(
    attributes: Iterable[str],
    delimiter: str | None,
    name: str,
    extended: Sequence[tuple[str, Value]] = (),
    *,
    kind: str = "LIST",
) -> bytes:
    """``* LIST (\\HasNoChildren) "/" name`` with RFC 5258 §9 extended items
    (``("CHILDINFO" ("SUBSCRIBED"))``, ``("OLDNAME" (old))``); ``kind="LSUB"`` for LSUB."""
    parts = [kind.encode("ascii"), flag_list(attributes), _delimiter(delimiter), mailbox(name)]
    if extended:
        items = b" ".join(string(tag) + b" " + encode(value) for tag, value in extended)
        parts.append(b"(" + items + b")")
    return _untagged(*parts)


def lsub(attributes: Iterable[str], delimiter: str | None, name: str) -> bytes:
    return list_(attributes, delimiter, name, kind="LSUB")


def status(name: str, items: Sequence[tuple[str, int]]) -> bytes:
    """``* STATUS name (MESSAGES 3 UIDNEXT 9)`` (RFC 3501 §7.2.4)."""
    pairs = " ".join(f"{item} {value}" for item, value in items).encode("ascii")
    return _untagged(b"STATUS", mailbox(name), b"(" + pairs + b")")


def search(numbers: Iterable[int], modseq: int | None = None) -> bytes:
    """``* SEARCH 2 3 6``; RFC 7162 §3.1.5 adds ``(MODSEQ n)`` when MODSEQ was searched.

    Per RFC 7162 the MODSEQ part is left out when nothing matched.
    """
    found = [b"%d" % n for n in numbers]
    if modseq is not None and found:
        found.append(b"(MODSEQ %d)" % modseq)
    return _untagged(b"SEARCH", *found)


def esearch(
    tag: str | None,
    numbers: Sequence[int],
    returns: Collection[str],
    *,
    uid: bool = False,
    modseq: int | None = None,
) -> bytes:
    """RFC 4731 §3.1 ``* ESEARCH (TAG "a") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9``.

    MIN, MAX and ALL are left out when nothing matched; COUNT is always given when asked.
    """
    parts: list[bytes] = []
    if tag is not None:
        parts.append(b"(TAG " + quoted(tag.encode("ascii")) + b")")
    if uid:
        parts.append(b"UID")
    if numbers:
        if "MIN" in returns:
            parts.append(b"MIN %d" % min(numbers))
        if "MAX" in returns:
            parts.append(b"MAX %d" % max(numbers))
    if "COUNT" in returns:
        parts.append(b"COUNT %d" % len(numbers))
    if numbers and "ALL" in returns:
        parts.append(b"ALL " + compress(numbers).encode("ascii"))
    if modseq is not None and numbers:
        parts.append(b"MODSEQ %d" % modseq)
    return _untagged(b"ESEARCH", *parts)


def vanished(uids: Iterable[int], *, earlier: bool = False) -> bytes:
    """RFC 7162 §3.2.10 ``* VANISHED (EARLIER) 41,43:116``."""
    head = b"VANISHED (EARLIER)" if earlier else b"VANISHED"
    return _untagged(head, compress(uids).encode("ascii"))


def fetch(seq: int, items: Sequence[tuple[str, Value]]) -> bytes:
    """``* 12 FETCH (UID 7 FLAGS (\\Seen) BODY[] {n}...)`` (RFC 3501 §7.4.2).

    Names are written as given (``BodySection.response_name()`` for sections); values go
    through :func:`encode`, so a body is ``Literal(data)`` and a flag list ``Raw(...)``.
    """
    body = b" ".join(name.encode("ascii") + b" " + encode(value) for name, value in items)
    return b"* %d FETCH (" % seq + body + b")" + CRLF


def id_(parameters: Sequence[tuple[str, str | None]] | None) -> bytes:
    """RFC 2971 §3.2 ``* ID ("name" "Tidings")`` or ``* ID NIL``."""
    if parameters is None:
        return _untagged(b"ID", b"NIL")
    pairs = b" ".join(string(k) + b" " + nstring(v) for k, v in parameters)
    return _untagged(b"ID", b"(" + pairs + b")")


Namespaces: TypeAlias = Sequence[tuple[str, str | None]] | None


def namespace(personal: Namespaces, other: Namespaces = None, shared: Namespaces = None) -> bytes:
    """RFC 2342 §5 ``* NAMESPACE (("" "/")) NIL NIL``."""

    def group(entries: Namespaces) -> bytes:
        if not entries:
            return b"NIL"
        inner = b"".join(
            b"(" + string(encode_mailbox_name(prefix)) + b" " + _delimiter(delim) + b")"
            for prefix, delim in entries
        )
        return b"(" + inner + b")"

    return _untagged(b"NAMESPACE", group(personal), group(other), group(shared))


def quota(root: str, resources: Sequence[tuple[str, int, int]]) -> bytes:
    """RFC 9208 §5.1 ``* QUOTA "" (STORAGE 10 512)``: (name, usage, limit) triples."""
    triples = " ".join(f"{name} {usage} {limit}" for name, usage, limit in resources)
    return _untagged(b"QUOTA", astring(root), b"(" + triples.encode("ascii") + b")")


def quotaroot(name: str, roots: Iterable[str]) -> bytes:
    """RFC 9208 §5.2 ``* QUOTAROOT INBOX ""``."""
    return _untagged(b"QUOTAROOT", mailbox(name), *(astring(r) for r in roots))
