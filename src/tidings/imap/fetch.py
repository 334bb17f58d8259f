"""The items of an untagged FETCH response for one message (RFC 3501 §6.4.5, §7.4.2). Pure.

The session asks :func:`needs_info` and :func:`needs_raw` what to load, builds a
:class:`FetchMessage`, and writes ``responses.fetch(seq, fetch_items(...))``. ENVELOPE and
BODYSTRUCTURE come from the ``MessageInfo`` stored at delivery; body sections are slices of the
stored bytes, sent as literals byte for byte — never decoded or re-encoded, so 8-bit and
malformed messages come back exactly as they were received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tidings.imap.parser import BodySection, FetchAttribute, FetchItem, Section
from tidings.imap.responses import Literal, Raw, Value, flag_list
from tidings.mime import (
    MessageInfo,
    bodystructure_sexp,
    envelope_sexp,
    header_fields,
    section_bytes,
)


@dataclass(frozen=True, slots=True)
class FetchMessage:
    """What FETCH needs of one message (the session loads info/raw only when needed)."""

    seq: int
    uid: int
    flags: tuple[str, ...]
    """Stored flags and keywords, e.g. ("\\Seen", "$Label1"); never \\Recent."""
    recent: bool
    """Add \\Recent to FLAGS (RFC 3501 §2.3.2: a session property, not a stored flag)."""
    internaldate: datetime
    """Timezone-aware."""
    size: int
    """RFC822.SIZE."""
    modseq: int
    info: MessageInfo | None = None
    """Given when ``needs_info(attributes)``."""
    raw: bytes | None = None
    """The stored bytes; given when ``needs_raw(attributes)``."""
    envelope: bytes | None = None
    """The ENVELOPE's stored wire form: enough instead of ``info`` when
    ``needs_envelope_only(attributes)``."""


# Items answered from MessageInfo, and items answered from the bytes; body sections use both,
# except BODY[] (the whole message), which is only the bytes.
_INFO_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.HEADER", "RFC822.TEXT"})
_RAW_ITEMS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})
_WHOLE = Section()


def needs_info(attributes: Sequence[FetchAttribute]) -> bool:
    """Whether answering needs the message's MessageInfo (its MIME structure and offsets)."""
    return any(
        (isinstance(a, FetchItem) and a.name in _INFO_ITEMS)
        or (isinstance(a, BodySection) and a.section != _WHOLE)
        for a in attributes
    )


def needs_envelope_only(attributes: Sequence[FetchAttribute]) -> bool:
    """Whether ENVELOPE is the only thing asked that needs MessageInfo: a client's first sync
    (``FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)``) is answered from stored bytes alone."""
    return not any(
        (isinstance(a, FetchItem) and a.name in _INFO_ITEMS and a.name != "ENVELOPE")
        or isinstance(a, BodySection)
        or (isinstance(a, FetchItem) and a.name in _RAW_ITEMS)
        for a in attributes
    )


def needs_raw(attributes: Sequence[FetchAttribute]) -> bool:
    """Whether answering needs the message's stored bytes (any body text)."""
    return any(
        isinstance(a, BodySection) or (isinstance(a, FetchItem) and a.name in _RAW_ITEMS)
        for a in attributes
    )


def fetch_items(
    attributes: Sequence[FetchAttribute],
    msg: FetchMessage,
    *,
    add_uid: bool = False,
    add_modseq: bool = False,
    add_flags: bool = False,
) -> list[tuple[str, Value]]:
    """(name, value) pairs for ``responses.fetch``, in the order asked, each name once.

    ``add_uid``: a UID FETCH answers with UID even when not asked (RFC 3501 §6.4.8); it goes
    first. ``add_flags``: this fetch set \\Seen, so FLAGS is sent (RFC 3501 §6.4.5 "SHOULD");
    ``add_modseq``: CONDSTORE is on for this FETCH (RFC 7162 §3.1.4.1). These two go last.
    Attributes with the same response name (BODY[1] and BODY.PEEK[1]) are answered once, by the
    first: a client could not tell two answers apart.

    Raises ValueError when info or raw is needed but missing — a session bug, never answered
    with wrong data.
    """
    asked: dict[str, FetchAttribute] = {}
    for attribute in attributes:
        asked.setdefault(_response_name(attribute), attribute)
    items: list[tuple[str, Value]] = []
    if add_uid and "UID" not in asked:
        items.append(("UID", msg.uid))
    items.extend((name, _value(attribute, msg)) for name, attribute in asked.items())
    if add_flags and "FLAGS" not in asked:
        items.append(("FLAGS", _flags(msg)))
    if add_modseq and "MODSEQ" not in asked:
        items.append(("MODSEQ", _modseq(msg)))
    return items


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_internaldate(when: datetime) -> str:
    """RFC 3501 §9 date-time: ``17-Jul-1996 02:44:25 -0700``, the day space-padded.

    Month names are English whatever the locale (so no strftime). An offset that is not whole
    minutes (historic local mean times) cannot be written; the time is given in UTC instead so
    the instant stays exact.
    """
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("INTERNALDATE needs a timezone-aware datetime")
    if offset % timedelta(minutes=1):
        when, offset = when.astimezone(UTC), timedelta(0)
    minutes = offset // timedelta(minutes=1)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (
        f"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{minutes:02d}"
    )


def _response_name(attribute: FetchAttribute) -> str:
    if isinstance(attribute, BodySection):
        return attribute.response_name()
    return attribute.name


def _value(attribute: FetchAttribute, msg: FetchMessage) -> Value:
    if isinstance(attribute, BodySection):
        return Literal(_body_section(attribute, msg))
    answer = _SIMPLE.get(attribute.name)
    if answer is None:
        raise ValueError(f"unknown FETCH attribute {attribute.name!r}")
    return answer(msg)


def _flags(msg: FetchMessage) -> Value:
    """\\Recent is per session, so it is added here rather than stored (RFC 3501 §2.3.2)."""
    return Raw(flag_list((*msg.flags, "\\Recent") if msg.recent else msg.flags))


def _modseq(msg: FetchMessage) -> Value:
    """RFC 7162 §3.1.4.1: ``MODSEQ (n)``, the value in parentheses."""
    return Raw(b"(%d)" % msg.modseq)


def _info(msg: FetchMessage) -> MessageInfo:
    if msg.info is None:
        raise ValueError("FETCH needs the message's MessageInfo (see needs_info)")
    return msg.info


def _raw(msg: FetchMessage) -> bytes:
    if msg.raw is None:
        raise ValueError("FETCH needs the message's bytes (see needs_raw)")
    return msg.raw


def _parsed(msg: FetchMessage) -> tuple[bytes, MessageInfo]:
    """Bytes and the info computed from them; offsets into other bytes would be wrong data."""
    raw, info = _raw(msg), _info(msg)
    if info.size != len(raw):
        raise ValueError(f"MessageInfo is for {info.size} octets, the message has {len(raw)}")
    return raw, info


def _section(msg: FetchMessage, section: Section) -> bytes:
    """The text of BODY[section] before any partial (RFC 3501 §6.4.5).

    A part that does not exist, or HEADER/TEXT after a part that is not message/rfc822, is an
    empty string: RFC 3501 names no error for it and common servers answer so.
    """
    if section == _WHOLE:
        return _raw(msg)
    raw, info = _parsed(msg)
    text = section.text or ""
    subset = text.startswith("HEADER.FIELDS")
    words = [str(n) for n in section.part]
    if text:
        words.append("HEADER" if subset else text)
    data = section_bytes(raw, info, ".".join(words))
    if data is None:
        return b""
    if subset:
        return header_fields(data, section.fields, not_=text == "HEADER.FIELDS.NOT")
    return data


def _body_section(attribute: BodySection, msg: FetchMessage) -> bytes:
    """BODY[section]<origin.length>: a partial is taken after subsetting the header, and an
    origin past the end gives an empty string (RFC 3501 §6.4.5)."""
    data = _section(msg, attribute.section)
    if attribute.partial is None:
        return data
    origin, length = attribute.partial
    return data[origin : origin + length]


# RFC822, RFC822.HEADER and RFC822.TEXT are BODY[], BODY.PEEK[HEADER] and BODY[TEXT] under
# their own names (RFC 3501 §6.4.5).
_SIMPLE: dict[str, Callable[[FetchMessage], Value]] = {
    "FLAGS": _flags,
    "INTERNALDATE": lambda m: format_internaldate(m.internaldate),
    "RFC822.SIZE": lambda m: m.size,
    "UID": lambda m: m.uid,
    "MODSEQ": _modseq,
    "ENVELOPE": lambda m: Raw(m.envelope if m.envelope is not None else envelope_sexp(_info(m))),
    "BODYSTRUCTURE": lambda m: Raw(bodystructure_sexp(_info(m), True)),
    "BODY": lambda m: Raw(bodystructure_sexp(_info(m), False)),
    "RFC822": lambda m: Literal(_raw(m)),
    "RFC822.HEADER": lambda m: Literal(_section(m, Section(text="HEADER"))),
    "RFC822.TEXT": lambda m: Literal(_section(m, Section(text="TEXT"))),
}
