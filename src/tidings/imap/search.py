"""SEARCH keys evaluated against one message (RFC 3501 §6.4.4, RFC 7162 §3.1.5). Pure, no I/O.

The session parses SEARCH with :mod:`tidings.imap.parser`, asks :func:`needs_info` and
:func:`needs_raw` what to load for the key, and calls :func:`matches` once per message with a
:class:`SearchMessage`. Keys that only look at flags, numbers, sizes and dates never touch the
message's text, so the session can skip loading it.

Text matching (RFC 3501 §6.4.4): a key matches when its string is a substring of the decoded
field, case-insensitively. Both sides are case-folded (Unicode ``casefold``, so "STRASSE" finds
"Straße") and NFC-normalised (a client's decomposed "ü" finds a composed one). Headers are
unfolded and RFC 2047-decoded; bodies have their transfer encoding undone and are decoded with
their charset (RFC 3501 §6.4.4 requires both for non-ASCII search).

:func:`body_text` is the searchable text of a body, a function of the bytes and their
``MessageInfo`` only, so a full-text index can store exactly what BODY searches:

- every text/* leaf, walking multiparts and into message/rfc822 parts, whose headers are
  included too (they are text in the outer body; RFC 3501 §6.4.4 lets servers skip only
  terminal parts other than TEXT and MESSAGE); other parts are not searched;
- base64 and quoted-printable are undone leniently (junk characters skipped); any other
  transfer encoding is taken as is;
- the charset is tried strictly, then UTF-8 strictly; a part that is neither is read with its
  declared charset's replacement characters when that charset is a known non-UTF-8 one (the
  sender said so), else as Latin-1, which never fails and keeps every ASCII word findable;
- text/html is reduced to its text: script, style and comments dropped, tags removed (block
  tags become line breaks), character references decoded, so "Gr&uuml;&szlig;e" is found as
  "Grüße" and a tag name is not;
- line ends are "\\n".

Nothing here raises on a stored message: malformed MIME, 8-bit headers or bad base64 just
yield less text. :func:`matches` raises ValueError only when the caller did not pass the info
or bytes that :func:`needs_info` / :func:`needs_raw` asked for.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import assert_never

from tidings.imap.parser import (
    AllKey,
    AndKey,
    BodyKey,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SequenceKey,
    SizeKey,
    TextKey,
    UidKey,
)
from tidings.mime import BodyPart, MessageInfo, SearchHeaders, analyze, decode_header_text

__all__ = [
    "SearchMessage", "body_text", "matches", "needs_headers_only", "needs_info", "needs_raw",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class SearchMessage:
    """What SEARCH may look at in one message; ``info`` and ``raw`` only when the key needs them.

    ``flags`` holds the stored flags and keywords, plus ``\\Recent`` when the message is recent
    for this session (RFC 3501 §2.3.2). ``internaldate`` is timezone-aware.
    """

    seq: int
    uid: int
    flags: frozenset[str]
    internaldate: datetime
    size: int
    modseq: int
    info: MessageInfo | None = None
    raw: bytes | None = None
    headers: SearchHeaders | None = None
    """The decoded header fields alone, enough when :func:`needs_headers_only` says so:
    ``MessageInfo.search_headers_from_json`` reads them ten times faster than the whole."""


# Header keys answered from MessageInfo.search (already RFC 2047-decoded at delivery).
_INFO_HEADERS = {"from": "from_", "to": "to", "cc": "cc", "bcc": "bcc", "subject": "subject"}


def needs_info(key: SearchKey) -> bool:
    """Whether ``matches`` needs ``SearchMessage.info`` for this key.

    FROM/TO/CC/BCC/SUBJECT and SENT* read the decoded header fields stored in it; BODY, TEXT
    and other HEADER fields need it as well, for where the header ends and the parts lie.
    """
    return _any_leaf(key, _leaf_needs_info)


def needs_headers_only(key: SearchKey) -> bool:
    """Whether the decoded header fields (``SearchMessage.headers``) are all the key needs of
    ``info``: FROM/TO/CC/BCC/SUBJECT, HEADER of those fields, SENT* — no BODY or TEXT."""
    return not _any_leaf(key, _leaf_needs_more_than_headers)


def _leaf_needs_more_than_headers(key: SearchKey) -> bool:
    return _leaf_needs_info(key) and _leaf_needs_raw(key)


def needs_raw(key: SearchKey) -> bool:
    """Whether ``matches`` needs the message's bytes: BODY, TEXT, HEADER of another field."""
    return _any_leaf(key, _leaf_needs_raw)


def _leaf_needs_info(key: SearchKey) -> bool:
    if isinstance(key, DateKey):
        return key.field == "sent"
    return isinstance(key, HeaderKey | BodyKey | TextKey)


def _leaf_needs_raw(key: SearchKey) -> bool:
    if isinstance(key, HeaderKey):
        return key.name.lower() not in _INFO_HEADERS
    return isinstance(key, BodyKey | TextKey)


def _any_leaf(key: SearchKey, test: Callable[[SearchKey], bool]) -> bool:
    if isinstance(key, NotKey):
        return _any_leaf(key.key, test)
    if isinstance(key, OrKey):
        return _any_leaf(key.left, test) or _any_leaf(key.right, test)
    if isinstance(key, AndKey):
        return any(_any_leaf(k, test) for k in key.keys)
    return test(key)


def _cost(key: SearchKey) -> int:
    """Rough cost of a key, so AND and OR try the cheap side first and may skip the text.

    Shallow on purpose: a nested AND/OR counts as middling rather than being walked, so
    ordering stays cheap per message however deep the key.
    """
    while isinstance(key, NotKey):
        key = key.key
    if isinstance(key, OrKey | AndKey):
        return 1
    return _leaf_needs_info(key) + _leaf_needs_raw(key)


def matches(key: SearchKey, msg: SearchMessage, *, largest_seq: int, largest_uid: int) -> bool:
    """Whether ``msg`` satisfies ``key``; ``*`` in a set is ``largest_seq`` / ``largest_uid``.

    Never raises on message content. ValueError if the key needs ``info`` or ``raw`` and the
    message lacks it (``info`` alone is computed from ``raw`` when missing).
    """
    return _Evaluation(msg, largest_seq, largest_uid).test(key)


class _Evaluation:
    """One message against one key: caches the decoded texts that several keys may share."""

    __slots__ = (
        "_body",
        "_fields",
        "_flags",
        "_header",
        "_info",
        "largest_seq",
        "largest_uid",
        "msg",
    )

    def __init__(self, msg: SearchMessage, largest_seq: int, largest_uid: int) -> None:
        self.msg = msg
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid
        self._info: MessageInfo | None = msg.info
        self._flags: frozenset[str] | None = None
        self._fields: dict[str, list[str]] | None = None
        self._header: str | None = None
        self._body: str | None = None

    def test(self, key: SearchKey) -> bool:
        msg = self.msg
        match key:
            case AllKey():
                return True
            case FlagKey(flag, present):
                return (flag.casefold() in self.flags()) == present
            case HeaderKey(name, value):
                return self.header_matches(name, _fold(value))
            case BodyKey(value):
                return _fold(value) in self.body()
            case TextKey(value):
                needle = _fold(value)
                return needle in self.header() or needle in self.body()
            case DateKey():
                return self.date_matches(key)
            case SizeKey(relation, size):
                # RFC 3501 §6.4.4 LARGER / SMALLER: strictly.
                return msg.size > size if relation == "larger" else msg.size < size
            case SequenceKey(sequence_set):
                return sequence_set.contains(msg.seq, self.largest_seq)
            case UidKey(uids):
                return uids.contains(msg.uid, self.largest_uid)
            case ModSeqKey(modseq):
                # RFC 7162 §3.1.5: equal to or greater than; entry names only scope metadata
                # Tidings does not keep per flag, so the message's mod-sequence answers.
                return msg.modseq >= modseq
            case NotKey(inner):
                return not self.test(inner)
            case OrKey(left, right):
                first, second = sorted((left, right), key=_cost)
                return self.test(first) or self.test(second)
            case AndKey(keys):
                return all(self.test(k) for k in sorted(keys, key=_cost))
        assert_never(key)

    # --- what the keys look at, computed once per message -----------------------------------

    def flags(self) -> frozenset[str]:
        """Flags folded: flag and keyword names are case-insensitive (RFC 3501 §9 note 4)."""
        if self._flags is None:
            self._flags = frozenset(f.casefold() for f in self.msg.flags)
        return self._flags

    def info(self) -> MessageInfo:
        if self._info is None:
            if self.msg.raw is None:
                raise ValueError("this SEARCH key needs the message's MessageInfo")
            self._info = analyze(self.msg.raw)
        return self._info

    def raw(self) -> bytes:
        if self.msg.raw is None:
            raise ValueError("this SEARCH key needs the message's bytes")
        return self.msg.raw

    def fields(self) -> dict[str, list[str]]:
        """Top-level header fields by lower-cased name, unfolded and decoded."""
        if self._fields is None:
            self._fields = {}
            for name, value in _header_fields(self.raw(), self.info().body):
                self._fields.setdefault(name.lower(), []).append(value)
        return self._fields

    def header(self) -> str:
        """The top-level header as case-folded "Name: value" lines: TEXT's other half."""
        if self._header is None:
            raw, info = self.raw(), self.info()
            self._header = _fold(_header_text(_header_fields(raw, info.body)))
        return self._header

    def body(self) -> str:
        if self._body is None:
            self._body = _fold(body_text(self.raw(), self.info()))
        return self._body

    def search_headers(self) -> SearchHeaders:
        headers = self.msg.headers
        return headers if headers is not None else self.info().search

    def header_matches(self, name: str, needle: str) -> bool:
        """RFC 3501 §6.4.4 HEADER: the field exists and its text contains the string."""
        attribute = _INFO_HEADERS.get(name.lower())
        if attribute is not None:
            value: str | None = getattr(self.search_headers(), attribute)
            return value is not None and needle in _fold(value)
        return any(needle in _fold(v) for v in self.fields().get(name.lower(), ()))

    def date_matches(self, key: DateKey) -> bool:
        """BEFORE/ON/SINCE and SENT*: the date in the value's own zone, time disregarded.

        RFC 3501 §6.4.4 says "disregarding time and timezone": the calendar date the timestamp
        shows where it was written. A message without a parseable Date: never matches SENT*.
        """
        when: datetime | None = self.msg.internaldate
        if key.field == "sent":
            when = self.search_headers().date
        if when is None:
            return False
        return _compare(when.date(), key.relation, key.date)


def _compare(day: date, relation: str, wanted: date) -> bool:
    if relation == "before":
        return day < wanted
    if relation == "on":
        return day == wanted
    return day >= wanted  # since: "within or later than"


def _fold(text: str) -> str:
    """Caseless form for substring matching: case-folded, then NFC (RFC 3501 §6.4.4)."""
    text = text.casefold()
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


# --- header fields ------------------------------------------------------------------------------

# RFC 5322 §2.2: a field name is printable ASCII but colon, obsolete WSP before the colon (§4.5);
# the value runs over the continuation lines that start with WSP.
_FIELD = re.compile(r"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_LINE_BREAK = re.compile(r"\r?\n")


def _header_fields(raw: bytes, entity: BodyPart) -> Iterator[tuple[str, str]]:
    """(name, value) of each field in an entity's header: unfolded, RFC 2047-decoded.

    The bytes are read as UTF-8 with surrogateescape; ``decode_header_text`` reads invalid
    UTF-8 as Latin-1, one field at a time, so one bad field does not garble the others.
    """
    text = raw[entity.header_start : entity.body_start].decode("utf-8", "surrogateescape")
    for m in _FIELD.finditer(text):
        value = _LINE_BREAK.sub("", m.group(2)).strip(" \t\r")
        yield m.group(1), decode_header_text(value)


def _header_text(fields: Iterator[tuple[str, str]]) -> str:
    return "".join(f"{name}: {value}\n" for name, value in fields)


# --- body text ----------------------------------------------------------------------------------


def body_text(raw: bytes, info: MessageInfo) -> str:
    """The decoded searchable text of a message's body (see the module doc for the rules)."""
    pieces: list[str] = []
    _collect(raw, info.body, pieces)
    return "\n".join(pieces)


def _collect(raw: bytes, part: BodyPart, pieces: list[str]) -> None:
    """Append the text of ``part`` and its descendants, depth first, in message order."""
    if part.is_multipart:
        for child in part.parts:
            _collect(raw, child, pieces)
    elif part.message is not None:
        inner = part.message.body
        pieces.append(_header_text(_header_fields(raw, inner)))
        _collect(raw, inner, pieces)
    elif part.type == "text":
        pieces.append(_part_text(raw, part))


def _part_text(raw: bytes, part: BodyPart) -> str:
    data = _undo_transfer_encoding(raw[part.body_start : part.end], part.encoding)
    text = _decode_charset(data, _param(part, "charset"))
    if part.subtype == "html":
        text = _html_text(text)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text


def _param(part: BodyPart, name: str) -> str | None:
    return next((value for key, value in part.params if key == name), None)


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]+")


def _undo_transfer_encoding(data: bytes, encoding: str) -> bytes:
    """RFC 2045 §6: base64 and quoted-printable decoded; 7bit, 8bit, binary and unknown as is.

    Base64 skips characters outside its alphabet (RFC 2045 §6.8 tells decoders to ignore
    them) and drops a dangling sixth bit group, so damaged data yields what can be read.
    """
    if encoding == "base64":
        data = _NOT_BASE64.sub(b"", data)
        if len(data) % 4 == 1:
            data = data[:-1]
        try:
            return base64.b64decode(data + b"=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            return b""
    if encoding == "quoted-printable":
        try:
            return binascii.a2b_qp(data)
        except (binascii.Error, ValueError):
            return data
    return data


def _decode_charset(data: bytes, charset: str | None) -> str:
    """Bytes → text: declared charset, then UTF-8, each strictly; then a lenient reading.

    When neither fits, a known non-UTF-8 declared charset decodes with replacement characters;
    otherwise (declared UTF-8 or US-ASCII, unknown, or none) Latin-1, as 8-bit text in
    mislabelled mail most often is, and which keeps every ASCII byte as itself.
    """
    declared = _codec_name(charset)
    for name in (declared, "utf-8"):
        if name is not None:
            try:
                return data.decode(name)
            except (UnicodeError, ValueError, TypeError, LookupError):
                pass
    if declared is not None and declared not in ("ascii", "utf-8"):
        try:
            return data.decode(declared, "replace")
        except (UnicodeError, ValueError, TypeError, LookupError):
            pass
    return data.decode("latin-1")


def _codec_name(charset: str | None) -> str | None:
    """The codec for a MIME charset name, or None if unknown or not a text codec."""
    if not charset:
        return None
    try:
        info = codecs.lookup(charset.strip())
    except (LookupError, ValueError):
        return None
    return info.name if info._is_text_encoding else None


# --- HTML ---------------------------------------------------------------------------------------

# Elements whose content is not text, and comments; each opener with the closer that ends it.
_SKIP_OPEN = re.compile(r"<(script|style)\b[^<>]*>?|<!--", re.IGNORECASE)
_SKIP_CLOSE = {
    "script": re.compile(r"</script\s*>", re.IGNORECASE),
    "style": re.compile(r"</style\s*>", re.IGNORECASE),
    "": re.compile(r"-->"),
}
# [^<>] stops at the next "<", so unclosed "<" costs linear time, not quadratic.
_BLOCK_TAG = re.compile(
    r"<\s*/?\s*(?:br|p|div|tr|li|h[1-6]|table|blockquote|hr|pre)\b[^<>]*>", re.IGNORECASE
)
_TAG = re.compile(r"<[^<>]*>")


def _html_text(text: str) -> str:
    """The text of an HTML body: what a reader sees, for BODY and for the index.

    Not a renderer: script, style and comments go, block tags become line breaks, other tags
    vanish (so ``Gr<b>ü</b>ße`` stays one word), character references are decoded.
    """
    kept: list[str] = []
    pos = 0
    unclosed: set[str] = set()  # kinds with no closer left: searching again would be quadratic
    while (opener := _SKIP_OPEN.search(text, pos)) is not None:
        kind = (opener.group(1) or "").lower()
        kept.append(text[pos : opener.start()])
        closer = None if kind in unclosed else _SKIP_CLOSE[kind].search(text, opener.end())
        if closer is None:  # unterminated: drop only the opener, keep what follows
            unclosed.add(kind)
            pos = opener.end()
            continue
        pos = closer.end()
    kept.append(text[pos:])
    text = _TAG.sub("", _BLOCK_TAG.sub("\n", "".join(kept)))
    return html.unescape(text)
