"""What IMAP needs from a stored message, computed once at delivery. Pure, no I/O.

``analyze(raw)`` walks the message's bytes once and returns a ``MessageInfo``: the ENVELOPE
fields, the MIME tree with byte offsets of every part, and the decoded header fields SEARCH
uses. It is stored beside the message (``to_json``) so FETCH never parses MIME again: ENVELOPE
and BODYSTRUCTURE are rendered from it, and ``BODY[1.2.MIME]`` is a slice of the stored bytes.

Offsets are computed here, not by ``email.parser`` (which gives none): a small boundary scanner
over the raw bytes finds the parts (RFC 2046 §5.1.1), and each part's header is read as a text
of fields. The stdlib is used where it helps: ``email.utils`` for dates, the codec registry for
charsets.

Nothing here raises on bad input; malformed MIME degrades as RFC 2045 asks and as common
servers do: an unparseable Content-Type, or a multipart without a boundary, is text/plain
(RFC 2045 §5.2); an unterminated multipart ends where its parent ends; a header without a blank
line runs to the end of its part; nesting deeper than ``MAX_DEPTH`` is text/plain.

On the wire, type, subtype, encoding, disposition and parameter names are upper-case, as in
RFC 3501's examples; a parameter value that RFC 2231 decoded to non-ASCII text is sent as an
RFC 2047 encoded-word, which IMAP4rev1 clients decode (ENVELOPE strings are sent as they appear).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

T = TypeVar("T")

MAX_DEPTH = 50
"""Multipart/message nesting beyond this is not parsed: the part is text/plain."""
MAX_PARTS = 10_000
"""Parts beyond this many in one message are left out of the tree (memory stays bounded); their
bytes are still in the parent's body, and a multipart or message past it is text/plain."""

_JSON_VERSION = 1

# ---------------------------------------------------------------------------------------------
# The data stored per message


@dataclass(frozen=True, slots=True)
class EnvelopeAddress:
    """One address structure of RFC 3501 §7.4.2 ENVELOPE, strings as they appear in the header.

    A group start has ``host`` None and the group's phrase in ``mailbox``; a group end has both
    None.
    """

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """RFC 3501 §7.4.2 ENVELOPE: header text as it appears (unfolded, encoded-words kept).

    An empty address tuple is NIL. ``sender`` and ``reply_to`` already default to ``from_``.
    """

    date: str | None
    subject: str | None
    from_: tuple[EnvelopeAddress, ...]
    sender: tuple[EnvelopeAddress, ...]
    reply_to: tuple[EnvelopeAddress, ...]
    to: tuple[EnvelopeAddress, ...]
    cc: tuple[EnvelopeAddress, ...]
    bcc: tuple[EnvelopeAddress, ...]
    in_reply_to: str | None
    message_id: str | None


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One MIME entity and where it lies in the raw message.

    ``header_start``..``body_start`` is its header including the delimiting blank line (when
    there is one); ``body_start``..``end`` its body, in transfer encoding, without the line break
    that belongs to the next boundary (RFC 2046 §5.1.1). ``type``, ``subtype``, ``encoding``,
    ``disposition`` and parameter names are lower-case; parameter values are decoded (RFC 2231);
    ``id``, ``description``, ``md5`` and ``location`` are as they appear.
    """

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...]
    id: str | None
    description: str | None
    encoding: str
    md5: str | None
    disposition: str | None
    disposition_params: tuple[tuple[str, str], ...]
    language: tuple[str, ...]
    location: str | None
    header_start: int
    body_start: int
    end: int
    lines: int
    """Lines of the body (text/* and message/rfc822 only; 0 for others)."""
    parts: tuple[BodyPart, ...] = ()
    """The children of a multipart (possibly none, when no boundary line was found)."""
    message: EmbeddedMessage | None = None
    """The encapsulated message of a message/rfc822 part."""

    @property
    def size(self) -> int:
        """Octets of the body in its transfer encoding (RFC 3501 body-fld-octets)."""
        return self.end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart"


@dataclass(frozen=True, slots=True)
class EmbeddedMessage:
    """The message inside a message/rfc822 part: its envelope and its top-level entity."""

    envelope: Envelope
    body: BodyPart


@dataclass(frozen=True, slots=True)
class SearchHeaders:
    """Header fields SEARCH matches, RFC 2047-decoded; None when the field is absent.

    Address fields are the whole decoded field text (all occurrences joined by ", "), so a
    substring search finds a display name as well as an address (RFC 3501 §6.4.4).
    """

    from_: str | None
    to: str | None
    cc: str | None
    bcc: str | None
    subject: str | None
    date: datetime | None
    message_id: str | None


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Everything FETCH and SEARCH need from one message's bytes."""

    size: int
    envelope: Envelope
    body: BodyPart
    """The top-level entity: header_start 0, end ``size``."""
    search: SearchHeaders

    def to_json(self) -> str:
        """A compact, ASCII-only text for a TEXT column; ``from_json`` gives back an equal value."""
        return json.dumps(
            [
                _JSON_VERSION,
                self.size,
                _env_out(self.envelope),
                _part_out(self.body),
                _search_out(self.search),
            ],
            separators=(",", ":"),
        )

    @staticmethod
    def search_headers_from_json(text: str) -> SearchHeaders:
        """Only the SEARCH header fields of a ``to_json`` text: SEARCH FROM/SUBJECT/SENT* on a
        large mailbox skips building the envelope and the MIME tree of every message."""
        return _from_stored(text, lambda data: _search_in(data[4]))

    @classmethod
    def from_json(cls, text: str) -> MessageInfo:
        """Inverse of ``to_json``; ValueError if the text is not one of its outputs."""
        return _from_stored(
            text,
            lambda d: cls(int(d[1]), _env_in(d[2]), _part_in(d[3]), _search_in(d[4])),
        )


def _from_stored(text: str, build: Callable[[Any], T]) -> T:
    """``build`` applied to a ``to_json`` text's fields; ValueError for anything else."""
    try:
        data = json.loads(text)
        if data[0] != _JSON_VERSION:
            raise ValueError(f"unknown MessageInfo version {data[0]!r}")
        return build(data)
    except (LookupError, TypeError, AttributeError) as e:
        raise ValueError(f"not a stored MessageInfo: {e}") from e


@dataclass(frozen=True, slots=True)
class StoredForm:
    """What is stored beside a message's bytes: the analysis as JSON, and the ENVELOPE in wire
    form, which a client's first sync fetches for every message."""

    structure: str
    envelope: bytes


def stored_form(info: MessageInfo) -> StoredForm:
    return StoredForm(info.to_json(), envelope_sexp(info))


# ---------------------------------------------------------------------------------------------
# analyze: raw bytes → MessageInfo


def analyze(raw: bytes) -> MessageInfo:
    """Parse a message once; never raises (malformed input degrades, see the module doc)."""
    fields, body = _Scanner(raw).entity(0, len(raw), 0, ("text", "plain"))
    return MessageInfo(len(raw), _envelope(fields), body, _search_headers(fields))


def _body_start(raw: bytes, start: int, end: int) -> int:
    """Where the body begins: after the first empty line, or ``end`` if there is none.

    Every line up to the blank line is header: a line without a colon is a malformed field,
    not the start of the body (RFC 2046 §5.1.1 lets a part begin with its body only after an
    empty line). Bare LF ends lines as CRLF does.
    """
    if raw.startswith(b"\r\n", start, end):
        return start + 2
    if raw.startswith(b"\n", start, end):
        return start + 1
    crlf = raw.find(b"\n\r\n", start, end)
    # Only look for a bare-LF blank line before the CRLF one: a scan to the end would cost.
    lf = raw.find(b"\n\n", start, end if crlf < 0 else crlf + 2)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return end


# RFC 5322 §2.2: field-name is printable US-ASCII except colon; obsolete syntax allows WSP
# before the colon (§4.5). The value runs over continuation lines (those starting with WSP).
_FIELD = re.compile(r"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_FOLD = re.compile(r"\r?\n")


def _fields(raw: bytes, start: int, end: int) -> dict[str, list[str]]:
    """Header fields by lower-cased name → unfolded values (RFC 5322 §2.2.3), in order.

    Bytes are decoded as UTF-8 with surrogateescape so 8-bit headers survive unchanged: the
    renderers turn them back into the same bytes.
    """
    text = raw[start:end].decode("utf-8", "surrogateescape")
    fields: dict[str, list[str]] = {}
    for m in _FIELD.finditer(text):
        value = m.group(2)
        if "\n" in value:
            value = _FOLD.sub("", value)
        fields.setdefault(m.group(1).lower(), []).append(value.strip(" \t\r"))
    return fields


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    """The first occurrence of a field; RFC 5322 §3.6 allows one, later copies are ignored."""
    values = fields.get(name)
    return values[0] if values else None


class _Scanner:
    """One walk over one message: the bytes, and how many more parts it may have."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.budget = MAX_PARTS

    def entity(
        self, start: int, end: int, depth: int, default: tuple[str, str]
    ) -> tuple[dict[str, list[str]], BodyPart]:
        """The MIME entity in raw[start:end] with its header fields, children included."""
        raw = self.raw
        self.budget -= 1
        body_start = _body_start(raw, start, end)
        fields = _fields(raw, start, body_start)
        ctype, params = _content_type(_first(fields, "content-type"), default)
        if ctype[0] == "multipart" and not _param(params, "boundary"):
            ctype, params = ("text", "plain"), (("charset", "US-ASCII"),)  # RFC 2045 §5.2
        nested = ctype[0] == "multipart" or ctype == ("message", "rfc822")
        if nested and (depth >= MAX_DEPTH or self.budget <= 0):
            ctype, params = ("text", "plain"), (("charset", "US-ASCII"),)
            nested = False
        disposition, disposition_params = _disposition(_first(fields, "content-disposition"))
        parts: tuple[BodyPart, ...] = ()
        message = None
        lines = 0
        if nested and ctype[0] == "multipart":
            boundary = _param(params, "boundary") or ""
            child_default = ("message", "rfc822") if ctype[1] == "digest" else ("text", "plain")
            parts = self.children(body_start, end, boundary, depth + 1, child_default)
        elif nested:
            inner_fields, inner = self.entity(body_start, end, depth + 1, ("text", "plain"))
            message = EmbeddedMessage(_envelope(inner_fields), inner)
            lines = _count_lines(raw, body_start, end)
        elif ctype[0] == "text":
            lines = _count_lines(raw, body_start, end)
        return fields, BodyPart(
            type=ctype[0],
            subtype=ctype[1],
            params=params,
            id=_first(fields, "content-id"),
            description=_first(fields, "content-description"),
            encoding=_encoding(_first(fields, "content-transfer-encoding")),
            md5=_first(fields, "content-md5"),
            disposition=disposition,
            disposition_params=disposition_params,
            language=_language(_first(fields, "content-language")),
            location=_first(fields, "content-location"),
            header_start=start,
            body_start=body_start,
            end=end,
            lines=lines,
            parts=parts,
            message=message,
        )

    def children(
        self, start: int, end: int, boundary: str, depth: int, default: tuple[str, str]
    ) -> tuple[BodyPart, ...]:
        """Split a multipart body at its boundary lines (RFC 2046 §5.1.1).

        A delimiter is ``--boundary`` at the start of a line followed by optional whitespace;
        the line break before it belongs to it, not to the part. ``--boundary--`` closes the
        multipart; without it the last part runs to ``end``. Preamble and epilogue are not parts.
        """
        raw = self.raw
        dash = b"--" + boundary.encode("utf-8", "surrogateescape")
        needle = b"\n" + dash
        parts: list[BodyPart] = []
        part_start = -1  # -1: still in the preamble
        pos = start
        while True:
            if pos == start and raw.startswith(dash, start, end):
                line = start
            else:
                hit = raw.find(needle, pos, end)
                if hit < 0:
                    break
                line = hit + 1
            after = line + len(dash)
            is_close = raw.startswith(b"--", after, end)
            eol = raw.find(b"\n", after, end)
            line_end = end if eol < 0 else eol + 1
            if not is_close and raw[after:line_end].strip(b" \t\r\n"):
                pos = line if line > start else start + 1  # "--boundaryX" is not ours
                continue
            if part_start >= 0:
                part_end = line - 1 if line > start and raw[line - 1] == 0x0A else line
                if part_end > part_start and raw[part_end - 1] == 0x0D:
                    part_end -= 1
                parts.append(self.entity(part_start, max(part_start, part_end), depth, default)[1])
            if is_close or self.budget <= 0:
                return tuple(parts)
            part_start = line_end
            pos = line_end
            if pos >= end:
                break
        if part_start >= 0:  # unterminated: the last part runs to the end of the parent
            parts.append(self.entity(part_start, end, depth, default)[1])
        return tuple(parts)


def _count_lines(raw: bytes, start: int, end: int) -> int:
    """Text lines of a body: line breaks, plus one for a last line without one."""
    if end <= start:
        return 0
    n = raw.count(b"\n", start, end)
    return n if raw[end - 1] == 0x0A else n + 1


# ---------------------------------------------------------------------------------------------
# MIME header fields (RFC 2045, RFC 2183, RFC 2231, RFC 3282)

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")


def _strip_comments(text: str) -> str:
    """Remove RFC 822 comments outside quoted strings (RFC 2045 §5.1 allows them anywhere)."""
    if "(" not in text:
        return text
    out: list[str] = []
    depth = 0
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and (quoted or depth):
            if not depth:
                out.append(text[i : i + 2])
            i += 2
            continue
        if quoted:
            quoted = c != '"'
            out.append(c)
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            quoted = c == '"'
            out.append(c)
        i += 1
    return "".join(out)


def _split_params(text: str) -> list[tuple[str, str]]:
    """``; name=value`` pairs, quoted-strings unquoted; lenient about unquoted spaces."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        semi = text.find(";", i)
        eq = text.find("=", i)
        if eq < 0:
            break
        if 0 <= semi < eq:  # a piece without "=": skip it
            i = semi + 1
            continue
        name = text[i:eq].strip(" \t;").lower()
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            chars: list[str] = []
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            value = "".join(chars)
            semi = text.find(";", i)
            i = n if semi < 0 else semi + 1
        else:
            semi = text.find(";", i)
            stop = n if semi < 0 else semi
            value = text[i:stop].strip(" \t")
            i = stop + 1
        if name:
            out.append((name, value))
    return out


_RFC2231 = re.compile(r"([^*]+)\*(?:([0-9]+)(\*)?)?")


def _decode_params(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Join RFC 2231 continuations and decode charsets; the first of duplicate names wins.

    ``name*=charset'lang'%XX`` and ``name*0*=…; name*1=…`` become ``name`` with a decoded
    value, which replaces a plain ``name`` given beside it (RFC 2231 §4).
    """
    if not any("*" in name for name, _ in pairs):
        seen: dict[str, str] = {}
        for name, value in pairs:
            seen.setdefault(name, value)
        return tuple(seen.items())
    order: list[str] = []
    plain: dict[str, str] = {}
    pieces: dict[str, dict[int, tuple[str, bool]]] = {}
    for name, value in pairs:
        m = _RFC2231.fullmatch(name)
        if m is None:
            if name not in plain:
                plain[name] = value
                order.append(name)
            continue
        base, index, star = m.group(1), m.group(2), m.group(3)
        if base not in plain and base not in pieces:
            order.append(base)
        segs = pieces.setdefault(base, {})
        key = -1 if index is None else int(index)
        segs.setdefault(key, (value, index is None or star is not None))
    result: dict[str, str] = {}
    for base in order:
        if base in result:
            continue
        if base in pieces:
            result[base] = _join_rfc2231(pieces[base])
        else:
            result[base] = plain[base]
    return tuple(result.items())


def _join_rfc2231(segs: dict[int, tuple[str, bool]]) -> str:
    if -1 in segs:
        ordered = [segs[-1]]
    else:
        ordered = []
        i = 0
        while i in segs:
            ordered.append(segs[i])
            i += 1
    if not ordered:
        return ""
    charset = "us-ascii"
    data = bytearray()
    for n, (value, extended) in enumerate(ordered):
        if extended:
            text = value
            if n == 0 and value.count("'") >= 2:
                charset, _lang, text = value.split("'", 2)
            data += unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
        else:
            data += value.encode("utf-8", "surrogateescape")
    return _decode_charset(bytes(data), charset)


def _decode_charset(data: bytes, charset: str) -> str:
    """Bytes in a named charset → str; an unknown or empty charset is read as UTF-8."""
    name = charset.strip().lower() or "utf-8"
    if name in ("us-ascii", "ascii"):
        name = "utf-8"  # 8-bit in a "us-ascii" value is nearly always UTF-8
    try:
        if codecs.lookup(name)._is_text_encoding:
            return data.decode(name, "replace")
    except (LookupError, ValueError, TypeError):  # unknown, or a codec like idna that is strict
        pass
    return data.decode("utf-8", "replace")


def _content_type(
    value: str | None, default: tuple[str, str]
) -> tuple[tuple[str, str], tuple[tuple[str, str], ...]]:
    """(type, subtype), params. Absent or invalid → the default (RFC 2045 §5.2, RFC 2046 §5.1.5)."""
    if value is None:
        params: tuple[tuple[str, str], ...] = ()
        if default == ("text", "plain"):
            params = (("charset", "US-ASCII"),)
        return default, params
    value = _strip_comments(value)
    head, _, rest = value.partition(";")
    mtype, slash, subtype = head.partition("/")
    mtype, subtype = mtype.strip(" \t").lower(), subtype.strip(" \t").lower()
    if not slash or not _TOKEN.fullmatch(mtype) or not _TOKEN.fullmatch(subtype):
        return ("text", "plain"), (("charset", "US-ASCII"),)
    params = _decode_params(_split_params(rest))
    if mtype == "text" and _param(params, "charset") is None:
        params = (*params, ("charset", "US-ASCII"))  # RFC 2046 §4.1.2 default, as Dovecot shows
    return (mtype, subtype), params


def _param(params: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _disposition(value: str | None) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """RFC 2183 Content-Disposition: type and decoded parameters."""
    if value is None:
        return None, ()
    value = _strip_comments(value)
    head, _, rest = value.partition(";")
    head = head.strip(" \t").lower()
    if not head:
        return None, ()
    return head, _decode_params(_split_params(rest))


def _encoding(value: str | None) -> str:
    """RFC 2045 §6.1 Content-Transfer-Encoding, default 7bit."""
    if value is None:
        return "7bit"
    words = _strip_comments(value).split()
    return words[0].lower() if words else "7bit"


def _language(value: str | None) -> tuple[str, ...]:
    """RFC 3282 Content-Language: comma-separated tags."""
    if value is None:
        return ()
    return tuple(t for t in (s.strip(" \t") for s in _strip_comments(value).split(",")) if t)


# ---------------------------------------------------------------------------------------------
# ENVELOPE (RFC 3501 §7.4.2) and address lists (RFC 5322 §3.4)


def _envelope(fields: dict[str, list[str]]) -> Envelope:
    """The envelope of a header; Sender and Reply-To absent or empty default to From."""
    from_ = _addresses(_first(fields, "from"))
    sender = _addresses(_first(fields, "sender")) or from_
    reply_to = _addresses(_first(fields, "reply-to")) or from_
    return Envelope(
        date=_first(fields, "date"),
        subject=_first(fields, "subject"),
        from_=from_,
        sender=sender,
        reply_to=reply_to,
        to=_addresses(_first(fields, "to")),
        cc=_addresses(_first(fields, "cc")),
        bcc=_addresses(_first(fields, "bcc")),
        in_reply_to=_first(fields, "in-reply-to"),
        message_id=_first(fields, "message-id"),
    )


_ADDR_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)
      | (?P<quoted>"(?:[^"\\]|\\.)*(?:"|\\?$))
      | (?P<literal>\[(?:[^\]\\]|\\.)*(?:\]|\\?$))
      | (?P<special>[<>@,;:()])
      | (?P<atom>[^ \t\r\n"\[\]<>@,;:()\\]+)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)

# Token kinds: "w" word (atom, or the unquoted text of a quoted string), "l" domain literal,
# "c" comment text, or the special character itself.
_Token = tuple[str, str]


def _address_tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        m = _ADDR_TOKEN.match(text, i)
        assert m is not None  # "other" matches any character
        kind = m.lastgroup
        i = m.end()
        if kind == "ws":
            continue
        tok = m.group()
        if kind == "quoted":
            body = tok[1:-1] if len(tok) > 1 and tok.endswith('"') else tok[1:]
            out.append(("w", _UNESCAPE.sub(r"\1", body)))
        elif kind == "literal":
            out.append(("l", tok))
        elif kind == "special" and tok == "(":
            depth, j = 1, i
            while j < n and depth:
                c = text[j]
                if c == "\\":
                    j += 1
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                j += 1
            out.append(("c", _UNESCAPE.sub(r"\1", text[i : j - 1 if depth == 0 else j])))
            i = j
        elif kind == "special" and tok == ")":
            continue  # stray
        elif kind in ("atom", "other"):
            out.append(("w", tok))
        else:
            out.append((tok, tok))
    return out


def _addresses(value: str | None) -> tuple[EnvelopeAddress, ...]:
    """An address-list header → address structures, groups per RFC 3501 §7.4.2."""
    if value is None:
        return ()
    toks = _address_tokens(value)
    out: list[EnvelopeAddress] = []
    in_group = False
    i, n = 0, len(toks)
    while i < n:
        item: list[_Token] = []
        angle = False
        while i < n:
            kind = toks[i][0]
            if kind == "<":
                angle = True
            elif kind == ">":
                angle = False
            elif not angle and (
                kind in (",", ";") or (kind == ":" and not in_group and _is_phrase(item))
            ):
                break
            item.append(toks[i])
            i += 1
        if i < n and toks[i][0] == ":":
            out.append(EnvelopeAddress(None, None, _phrase(item) or "", None))
            in_group = True
            i += 1
            continue
        address = _mailbox(item)
        if address is not None:
            out.append(address)
        if i < n and toks[i][0] == ";" and in_group:
            out.append(EnvelopeAddress(None, None, None, None))
            in_group = False
        i += 1
    if in_group:
        out.append(EnvelopeAddress(None, None, None, None))
    return tuple(out)


def _is_phrase(item: list[_Token]) -> bool:
    return all(kind in ("w", "c") for kind, _ in item)


def _phrase(item: Iterable[_Token]) -> str | None:
    words = [text for kind, text in item if kind == "w"]
    return " ".join(words) if words else None


def _join(tokens: list[_Token]) -> str:
    """Tokens of a local part or domain back to text; a space only between two words."""
    out: list[str] = []
    prev = ""
    for kind, text in tokens:
        if kind == "w" and prev == "w":
            out.append(" ")
        out.append(text)
        prev = kind
    return "".join(out)


def _mailbox(item: list[_Token]) -> EnvelopeAddress | None:
    """name-addr or addr-spec; a missing local part or domain is named as Dovecot names it."""
    if not item:
        return None
    comment = next((text for kind, text in reversed(item) if kind == "c"), None)
    kinds = [kind for kind, _ in item]
    adl = None
    if "<" in kinds:
        lt = kinds.index("<")
        name = _phrase(item[:lt])
        spec = item[lt + 1 :]
        if ">" in [k for k, _ in spec]:
            spec = spec[: [k for k, _ in spec].index(">")]
        spec_kinds = [k for k, _ in spec]
        if ":" in spec_kinds:  # obsolete source route (RFC 5322 §4.4)
            colon = spec_kinds.index(":")
            adl = "".join(text for kind, text in spec[:colon] if kind != "c") or None
            spec = spec[colon + 1 :]
    else:
        name = None
        spec = item
    if name is None:
        name = comment
    spec = [t for t in spec if t[0] != "c"]
    if not spec and "<" not in kinds:
        return None
    spec_kinds = [k for k, _ in spec]
    if "@" in spec_kinds:
        at = len(spec_kinds) - 1 - spec_kinds[::-1].index("@")
        local, domain = spec[:at], spec[at + 1 :]
    else:
        local, domain = spec, []
    mailbox = _join(local) or "MISSING_MAILBOX"
    host = _join(domain) or "MISSING_DOMAIN"
    if "<" in kinds and not spec:  # "<>": the null reverse path
        mailbox, host = "MISSING_MAILBOX", "MISSING_DOMAIN"
    return EnvelopeAddress(name, adl, mailbox, host)


# ---------------------------------------------------------------------------------------------
# SEARCH headers: RFC 2047 decoding

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t]+(?==\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)")


def decode_header_text(value: str) -> str:
    """RFC 2047 encoded-words → text; 8-bit bytes read as UTF-8, else as Latin-1.

    Whitespace between adjacent encoded-words is dropped (RFC 2047 §6.2). Words that do not
    decode are left as they are.
    """
    value = _clean_8bit(value)
    if "=?" not in value:
        return value
    value = _BETWEEN_WORDS.sub(r"\1", value)
    return _ENCODED_WORD.sub(_decode_word, value)


def _decode_word(m: re.Match[str]) -> str:
    charset = m.group(1).split("*", 1)[0]  # RFC 2231 §5: charset*language
    text = m.group(3)
    try:
        if m.group(2) in "bB":
            data = base64.b64decode(text + "=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.encode("ascii"), header=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return m.group()
    return _decode_charset(data, charset)


def _clean_8bit(value: str) -> str:
    """Undo surrogateescape: invalid UTF-8 in a header is most often Latin-1."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def _search_headers(fields: dict[str, list[str]]) -> SearchHeaders:
    def joined(name: str) -> str | None:
        values = fields.get(name)
        return None if values is None else ", ".join(decode_header_text(v) for v in values)

    return SearchHeaders(
        from_=joined("from"),
        to=joined("to"),
        cc=joined("cc"),
        bcc=joined("bcc"),
        subject=None if (s := _first(fields, "subject")) is None else decode_header_text(s),
        date=_parse_date(_first(fields, "date")),
        message_id=_first(fields, "message-id"),
    )


def _parse_date(value: str | None) -> datetime | None:
    """RFC 5322 §3.3 date-time (and its obsolete forms) via email.utils; junk → None."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(_clean_8bit(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# Rendering the IMAP wire forms (RFC 3501 §7.4.2, formal syntax §9)

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")


def imap_string(value: str | bytes | None) -> bytes:
    """nstring: NIL, a quoted string, or a literal when CR, LF or 8-bit bytes are in it.

    NUL cannot be sent in either form (RFC 3501 §9: CHAR8 excludes it), so it is dropped.
    """
    if value is None:
        return b"NIL"
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"\x00" in data:
        data = data.replace(b"\x00", b"")
    if _QUOTABLE.fullmatch(data):
        if b'"' in data or b"\\" in data:
            data = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def _wire_value(value: str) -> bytes:
    """A decoded parameter value for the wire: 7-bit as is, Unicode as an RFC 2047 word.

    Values decoded from RFC 2231 (or raw UTF-8) are sent as ``=?UTF-8?B?…?=``, which IMAP4rev1
    clients decode in filenames; undecodable 8-bit stays as its bytes, in a literal.
    """
    if value.isascii():
        return imap_string(value)
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return imap_string(value)
    return imap_string(b"=?UTF-8?B?" + base64.b64encode(data) + b"?=")


def _params_sexp(params: Sequence[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return (
        b"("
        + b" ".join(imap_string(name.upper()) + b" " + _wire_value(value) for name, value in params)
        + b")"
    )


def _addresses_sexp(addresses: Sequence[EnvelopeAddress]) -> bytes:
    if not addresses:
        return b"NIL"
    return (
        b"("
        + b"".join(
            b"("
            + b" ".join(
                (
                    imap_string(a.name),
                    imap_string(a.adl),
                    imap_string(a.mailbox),
                    imap_string(a.host),
                )
            )
            + b")"
            for a in addresses
        )
        + b")"
    )


def _envelope_sexp(env: Envelope) -> bytes:
    return (
        b"("
        + b" ".join(
            (
                imap_string(env.date),
                imap_string(env.subject),
                _addresses_sexp(env.from_),
                _addresses_sexp(env.sender),
                _addresses_sexp(env.reply_to),
                _addresses_sexp(env.to),
                _addresses_sexp(env.cc),
                _addresses_sexp(env.bcc),
                imap_string(env.in_reply_to),
                imap_string(env.message_id),
            )
        )
        + b")"
    )


def envelope_sexp(info: MessageInfo) -> bytes:
    """The ENVELOPE FETCH item's value (RFC 3501 §7.4.2)."""
    return _envelope_sexp(info.envelope)


def bodystructure_sexp(info: MessageInfo, extended: bool) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY (without extension data), RFC 3501 §7.4.2."""
    out: list[bytes] = []
    _body_sexp(info.body, extended, out)
    return b"".join(out)


# What Dovecot sends for a multipart with no parts: "1*body" needs at least one (§9).
_EMPTY_TEXT = b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'


def _body_sexp(part: BodyPart, extended: bool, out: list[bytes]) -> None:
    out.append(b"(")
    if part.is_multipart:
        if not part.parts:
            out.append(_EMPTY_TEXT)
        for child in part.parts:
            _body_sexp(child, extended, out)
        out.append(b" " + imap_string(part.subtype.upper()))
        if extended:
            out.append(b" " + _params_sexp(part.params) + b" " + _extension_tail(part))
        out.append(b")")
        return
    out.append(
        b" ".join(
            (
                imap_string(part.type.upper()),
                imap_string(part.subtype.upper()),
                _params_sexp(part.params),
                imap_string(part.id),
                imap_string(part.description),
                imap_string(part.encoding.upper()),
                b"%d" % part.size,
            )
        )
    )
    if part.message is not None:
        out.append(b" " + _envelope_sexp(part.message.envelope) + b" ")
        _body_sexp(part.message.body, extended, out)
        out.append(b" %d" % part.lines)
    elif part.type == "text":
        out.append(b" %d" % part.lines)
    if extended:
        out.append(b" " + imap_string(part.md5) + b" " + _extension_tail(part))
    out.append(b")")


def _extension_tail(part: BodyPart) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc."""
    if part.disposition is None:
        dsp = b"NIL"
    else:
        dsp = (
            b"("
            + imap_string(part.disposition.upper())
            + b" "
            + _params_sexp(part.disposition_params)
            + b")"
        )
    if not part.language:
        lang = b"NIL"
    elif len(part.language) == 1:
        lang = imap_string(part.language[0])
    else:
        lang = b"(" + b" ".join(imap_string(t) for t in part.language) + b")"
    return dsp + b" " + lang + b" " + imap_string(part.location)


# ---------------------------------------------------------------------------------------------
# BODY[section]: slices of the stored bytes (RFC 3501 §6.4.5)

_SECTION_TEXT = ("HEADER", "TEXT", "MIME")


def find_part(info: MessageInfo, path: Sequence[int]) -> BodyPart | None:
    """The part a numeric section path names, or None (RFC 3501 §6.4.5 numbering).

    A non-multipart message's part 1 is its own top-level entity; a multipart's parts are
    1..n; a message/rfc822 part's numbers go into its encapsulated message the same way.
    """
    node = info.body
    children: tuple[BodyPart, ...] = node.parts if node.is_multipart else (node,)
    for number in path:
        if not 1 <= number <= len(children):
            return None
        node = children[number - 1]
        children = _numbered(node)
    return node


def iter_parts(info: MessageInfo) -> Iterator[tuple[str, BodyPart]]:
    """Every numbered part with its section number ("1", "1.2", …), depth first."""
    top = info.body
    yield from _walk("", top.parts if top.is_multipart else (top,))


def _walk(prefix: str, children: tuple[BodyPart, ...]) -> Iterator[tuple[str, BodyPart]]:
    for number, child in enumerate(children, 1):
        section = f"{prefix}{number}"
        yield section, child
        yield from _walk(section + ".", _numbered(child))


def _numbered(part: BodyPart) -> tuple[BodyPart, ...]:
    if part.is_multipart:
        return part.parts
    if part.message is not None:
        inner = part.message.body
        return inner.parts if inner.is_multipart else (inner,)
    return ()


def parse_section(section: str) -> tuple[tuple[int, ...], str] | None:
    """ "1.2.MIME" → ((1, 2), "MIME"); "" → ((), ""); None if not a section this module serves."""
    if not section:
        return (), ""
    pieces = section.split(".")
    text = ""
    if pieces[-1].upper() in _SECTION_TEXT:
        text = pieces.pop().upper()
    path: list[int] = []
    for piece in pieces:
        if not piece.isdigit() or not piece.isascii() or piece[0] == "0" or len(piece) > 9:
            return None
        path.append(int(piece))
    if text == "MIME" and not path:
        return None  # RFC 3501 §6.4.5: MIME must be prefixed by a part number
    return tuple(path), text


def section_bytes(raw: bytes, info: MessageInfo, section: str) -> bytes | None:
    """The bytes of ``BODY[section]`` for "", "TEXT", "HEADER", "1.2", "1.2.MIME", "3.HEADER"….

    None means the part does not exist, or HEADER/TEXT follows a part that is not
    message/rfc822. RFC 3501 does not say what FETCH answers then; servers answer without an
    error, with an empty string (``BODY[9] ""``) or NIL, and the caller should do the same.
    HEADER.FIELDS is the caller's: take "…HEADER" here, then ``header_fields``. Header sections
    include the blank line when the message has one (RFC 3501 §6.4.5).
    """
    parsed = parse_section(section)
    if parsed is None:
        return None
    path, text = parsed
    if not path:
        entity = info.body
        if text == "HEADER":
            return raw[entity.header_start : entity.body_start]
        if text == "TEXT":
            return raw[entity.body_start : entity.end]
        return raw
    part = find_part(info, path)
    if part is None:
        return None
    if text == "":
        return raw[part.body_start : part.end]
    if text == "MIME":
        return raw[part.header_start : part.body_start]
    if part.message is None:
        return None
    inner = part.message.body
    if text == "HEADER":
        return raw[inner.header_start : inner.body_start]
    return raw[inner.body_start : inner.end]


_HEADER_LINE = re.compile(rb"[^\n]*(?:\n|\Z)")


def header_fields(header: bytes, names: Iterable[str | bytes], not_: bool = False) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT of a header section (RFC 3501 §6.4.5).

    Fields keep their folding and line ends; matching is case-insensitive; the blank line is
    added when the header had one (and only then).
    """
    wanted = {(n.encode("ascii", "replace") if isinstance(n, str) else n).lower() for n in names}
    out: list[bytes] = []
    keep = False
    blank = False
    for m in _HEADER_LINE.finditer(header):
        line = m.group()
        if not line:
            break
        if line in (b"\r\n", b"\n"):
            blank = True
            break
        if line[0] in b" \t":
            if keep:
                out.append(line)
            continue
        colon = line.find(b":")
        name = (line[:colon] if colon >= 0 else line).rstrip(b" \t\r\n").lower()
        keep = (name in wanted) != not_ and colon >= 0
        if keep:
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    if blank:
        out.append(b"\r\n")
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# JSON form: positional arrays, so the stored text stays small


def _addr_out(addresses: tuple[EnvelopeAddress, ...]) -> list[list[str | None]]:
    return [[a.name, a.adl, a.mailbox, a.host] for a in addresses]


def _addr_in(data: Any) -> tuple[EnvelopeAddress, ...]:
    return tuple(EnvelopeAddress(a[0], a[1], a[2], a[3]) for a in data)


def _env_out(env: Envelope) -> list[Any]:
    return [
        env.date,
        env.subject,
        _addr_out(env.from_),
        _addr_out(env.sender),
        _addr_out(env.reply_to),
        _addr_out(env.to),
        _addr_out(env.cc),
        _addr_out(env.bcc),
        env.in_reply_to,
        env.message_id,
    ]


def _env_in(d: Any) -> Envelope:
    return Envelope(
        d[0],
        d[1],
        _addr_in(d[2]),
        _addr_in(d[3]),
        _addr_in(d[4]),
        _addr_in(d[5]),
        _addr_in(d[6]),
        _addr_in(d[7]),
        d[8],
        d[9],
    )


def _pairs_in(data: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in data)


def _part_out(p: BodyPart) -> list[Any]:
    message = None
    if p.message is not None:
        message = [_env_out(p.message.envelope), _part_out(p.message.body)]
    return [
        p.type,
        p.subtype,
        [list(kv) for kv in p.params],
        p.id,
        p.description,
        p.encoding,
        p.md5,
        p.disposition,
        [list(kv) for kv in p.disposition_params],
        list(p.language),
        p.location,
        p.header_start,
        p.body_start,
        p.end,
        p.lines,
        [_part_out(c) for c in p.parts],
        message,
    ]


def _part_in(d: Any) -> BodyPart:
    message = None
    if d[16] is not None:
        message = EmbeddedMessage(_env_in(d[16][0]), _part_in(d[16][1]))
    return BodyPart(
        type=d[0],
        subtype=d[1],
        params=_pairs_in(d[2]),
        id=d[3],
        description=d[4],
        encoding=d[5],
        md5=d[6],
        disposition=d[7],
        disposition_params=_pairs_in(d[8]),
        language=tuple(d[9]),
        location=d[10],
        header_start=int(d[11]),
        body_start=int(d[12]),
        end=int(d[13]),
        lines=int(d[14]),
        parts=tuple(_part_in(c) for c in d[15]),
        message=message,
    )


def _search_out(s: SearchHeaders) -> list[Any]:
    date = None if s.date is None else s.date.isoformat()
    return [s.from_, s.to, s.cc, s.bcc, s.subject, date, s.message_id]


def _search_in(d: Any) -> SearchHeaders:
    date = None if d[5] is None else datetime.fromisoformat(d[5])
    return SearchHeaders(d[0], d[1], d[2], d[3], d[4], date, d[6])
