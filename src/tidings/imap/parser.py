"""IMAP command bytes → typed commands (RFC 3501 §6, §9 and the extensions Tidings speaks).

Two pure halves. :class:`CommandReader` frames: it is fed bytes off the socket and says when
a whole command (its lines and literals, RFC 3501 §4.3 / RFC 7888) has arrived, when the client
is waiting for a continuation, or when a limit was hit. :func:`parse_command` turns one whole
command into a :class:`Request` of frozen dataclasses, or raises :class:`ParseError` carrying
what the server should answer, never another exception. Which commands a state allows, and
what they do, is the session's business.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Literal as L

from tidings.imap.sequence import InvalidSequenceSet, SequenceSet, parse_sequence_set

# RFC 7162 §4: servers should accept command lines of at least 8192 octets; Tidings takes more.
MAX_LINE = 65536
MAX_LITERAL = 65536  # one literal in anything but APPEND (LOGIN, SEARCH strings, ...)
MAX_APPEND = 50 * 1024 * 1024
MAX_NUMBER = 4294967295  # RFC 3501 §9 number: unsigned 32-bit
MAX_MODSEQ = 2**63 - 1  # RFC 7162 §7 mod-sequence-value: unsigned 63-bit
_MAX_DEPTH = 64  # nesting of SEARCH NOT/OR/() before the parser calls it abuse

ErrorStatus = L["BAD", "NO"]


class ParseError(Exception):
    """A command the server refuses before running it, with what to answer.

    ``tag`` is ``None`` when the tag itself could not be read (answer ``* BAD``). ``status``
    and ``code`` say the tagged reply (``NO [TOOBIG]`` for an APPEND literal past the limit,
    ``NO [BADCHARSET ...]`` for a SEARCH charset). ``fatal`` means the input stream can no
    longer be framed (a too-big non-synchronising literal is already on its way), so the
    session should answer and close the connection.
    """

    def __init__(
        self,
        reason: str,
        *,
        tag: str | None = None,
        status: ErrorStatus = "BAD",
        code: str | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tag = tag
        self.status: ErrorStatus = status
        self.code = code
        self.fatal = fatal


# --- framing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedMore:
    """Feed more bytes before asking again."""


@dataclass(frozen=True, slots=True)
class SendContinuation:
    """A synchronising literal was announced and accepted: send ``+ ...`` (RFC 3501 §7.5)."""


@dataclass(frozen=True, slots=True)
class CommandReady:
    """A whole command as it came on the wire (literals inline); give it to parse_command."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LineReady:
    """One plain line without its line end (an AUTHENTICATE response, IDLE's ``DONE``)."""

    line: bytes


@dataclass(frozen=True, slots=True)
class ReadError:
    """The command was refused while framing; answer ``error`` (and close if it is fatal)."""

    error: ParseError


ReadEvent = NeedMore | SendContinuation | CommandReady | LineReady | ReadError

_LITERAL_AT_END = re.compile(rb"\{([0-9]{1,20})(\+?)\}\r?\n\Z")
_FIRST_WORDS = re.compile(rb"([^ \r\n]{1,64}) ([A-Za-z]{1,32})")


class CommandReader:
    """Frame IMAP commands from a byte stream, within limits, without unbounded buffering.

    A line longer than ``max_line`` is skipped to its end (remembering only its tail) and
    then refused. A literal above the limit for its command is refused without a
    continuation (RFC 3501 §7.5: the client then abandons the command); the limit for an
    APPEND is ``max_append`` and the refusal ``NO [TOOBIG]`` (RFC 7889 §4), elsewhere
    ``BAD [TOOBIG]``. A non-synchronising literal (``{n+}``, RFC 7888 §3) above the limit is
    already being sent, so the error is fatal (RFC 7888 §4 allows closing the connection).
    """

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE,
        max_literal: int = MAX_LITERAL,
        max_append: int = MAX_APPEND,
        max_command: int | None = None,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
        self.max_command = max_command if max_command is not None else max_append + 4 * max_line
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._literal_left = 0
        self._discarding = False
        self._discard_head = b""
        self._discard_tail = b""
        self._scanned = 0  # how far the unfinished line was searched for LF already

    @property
    def pending_bytes(self) -> int:
        """Bytes received and not yet framed: the connection pauses reading above a bound."""
        return len(self._buf)

    @property
    def buffered(self) -> bool:
        """Bytes received and not yet consumed (RFC 3501 §6.2.1: none may follow STARTTLS)."""
        return bool(self._buf) or bool(self._parts)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> ReadEvent:
        """One plain line, for exchanges that are not commands (SASL, IDLE ``DONE``)."""
        self._scanned = 0
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > self.max_line:
                self._buf.clear()
                return ReadError(ParseError("Line too long", fatal=True))
            return NeedMore()
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if len(line) > self.max_line:
            return ReadError(ParseError("Line too long"))
        return LineReady(line[:-1] if line.endswith(b"\r") else line)

    def next_event(self) -> ReadEvent:
        """What the session should do next; call again after each event but NeedMore."""
        while True:
            if self._discarding:
                return self._discard()
            if self._literal_left:
                take = min(self._literal_left, len(self._buf))
                self._parts.append(bytes(self._buf[:take]))
                del self._buf[:take]
                self._scanned = 0
                self._literal_left -= take
                if self._literal_left:
                    return NeedMore()
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self.max_line:
                    self._start_discard()
                    continue
                return NeedMore()
            self._scanned = 0
            if end + 1 > self.max_line:
                self._start_discard()
                continue
            line = bytes(self._buf[: end + 1])
            del self._buf[: end + 1]
            if not line.endswith(b"\r\n"):
                line = line[:-1] + b"\r\n"  # a bare LF ends a line too, as most servers allow
            self._parts.append(line)
            self._size += len(line)
            marker = _LITERAL_AT_END.search(line)
            if marker is None:
                data = b"".join(self._parts)
                self._reset()
                if self._size_ok(data):
                    return CommandReady(data)
                return ReadError(ParseError("Command too long", tag=_tag_of(data)))
            size = int(marker.group(1))
            synchronising = not marker.group(2)
            refusal = self._literal_refusal(size, synchronising)
            if refusal is not None:
                return refusal
            self._size += size
            self._literal_left = size
            if synchronising:
                return SendContinuation()

    def _size_ok(self, data: bytes) -> bool:
        return len(data) <= self.max_command

    def _literal_refusal(self, size: int, synchronising: bool) -> ReadError | None:
        first = self._parts[0]
        words = _FIRST_WORDS.match(first)
        tag = _tag_of(first)
        is_append = words is not None and words.group(2).upper() == b"APPEND"
        limit = self.max_append if is_append else self.max_literal
        if size <= limit and self._size + size <= self.max_command:
            return None
        self._reset()
        error = ParseError(
            "Literal too big",
            tag=tag,
            status="NO" if is_append and synchronising else "BAD",
            code="TOOBIG",
            fatal=not synchronising,
        )
        return ReadError(error)

    def _reset(self) -> None:
        self._parts = []
        self._size = 0
        self._literal_left = 0

    def _start_discard(self) -> None:
        self._discarding = True
        self._scanned = 0
        head = self._parts[0] if self._parts else bytes(self._buf[:80])
        self._discard_head = head[:80]
        self._reset()

    def _discard(self) -> ReadEvent:
        end = self._buf.find(b"\n")
        if end < 0:
            self._discard_tail = (self._discard_tail + bytes(self._buf[-32:]))[-32:]
            self._buf.clear()
            return NeedMore()
        tail = (self._discard_tail + bytes(self._buf[max(0, end - 31) : end + 1]))[-32:]
        del self._buf[: end + 1]
        self._discarding = False
        self._discard_tail = b""
        marker = _LITERAL_AT_END.search(tail)
        # A {n+} at the end of the skipped line means n more bytes are coming unasked.
        fatal = marker is not None and bool(marker.group(2))
        return ReadError(ParseError("Line too long", tag=_tag_of(self._discard_head), fatal=fatal))


def _tag_of(data: bytes) -> str | None:
    match = _TAG.match(data)
    if match is None or data[match.end() : match.end() + 1] != b" ":
        return None
    return match.group().decode("ascii")


# --- character classes (RFC 3501 §9) -----------------------------------------------------------

_CTL = bytes(range(0x20)) + b"\x7f"
_ATOM_SPECIALS = set(b'(){ %*"\\]' + _CTL)
_ATOM_CHARS = bytes(c for c in range(1, 0x80) if c not in _ATOM_SPECIALS)


def _class(chars: bytes) -> bytes:
    return b"".join(re.escape(bytes([c])) for c in chars)


_ATOM = re.compile(b"[" + _class(_ATOM_CHARS) + b"]+")
_ASTRING_ATOM = re.compile(b"[" + _class(_ATOM_CHARS + b"]") + b"]+")
_LIST_ATOM = re.compile(b"[" + _class(_ATOM_CHARS + b"]%*") + b"]+")
_TAG = re.compile(b"[" + _class(bytes(c for c in _ATOM_CHARS + b"]" if c != ord("+"))) + b"]+")
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_LITERAL = re.compile(rb"\{([0-9]{1,20})(\+?)\}\r\n")
_NUMBER = re.compile(rb"[0-9]+")
_SEQUENCE = re.compile(rb"[0-9*:,$]+")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_SPEC = re.compile(rb"[A-Za-z0-9.]*")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|=")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{4})"'
)
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
    start=1)}  # fmt: skip


class _Cursor:
    """A position in one command's bytes; each method reads one RFC 3501 §9 production."""

    __slots__ = ("data", "depth", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def peek(self) -> bytes:
        return self.data[self.pos : self.pos + 1]

    def at_end(self) -> bool:
        return self.data[self.pos :] in (b"", b"\r\n", b"\n")

    def take(self, text: bytes) -> bool:
        """Consume ``text`` (ASCII letters case-insensitively) if it is next."""
        end = self.pos + len(text)
        if self.data[self.pos : end].upper() == text.upper():
            self.pos = end
            return True
        return False

    def expect(self, text: bytes, what: str) -> None:
        if not self.take(text):
            raise ParseError(f"Expected {what}")

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def match(self, pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
        found = pattern.match(self.data, self.pos)
        if found is not None:
            self.pos = found.end()
        return found

    def atom(self, what: str) -> str:
        found = self.match(_ATOM)
        if found is None:
            raise ParseError(f"Expected {what}")
        return found.group().decode("ascii")

    def keyword(self, what: str) -> str:
        return self.atom(what).upper()

    def number(self, what: str, *, nonzero: bool = False, top: int = MAX_NUMBER) -> int:
        found = self.match(_NUMBER)
        if found is None or len(found.group()) > 20:
            raise ParseError(f"Expected {what}")
        value = int(found.group())
        if value > top or (nonzero and value == 0):
            raise ParseError(f"{what.capitalize()} out of range")
        return value

    def quoted(self) -> bytes:
        found = self.match(_QUOTED)
        if found is None:
            raise ParseError("Invalid quoted string")
        return re.sub(rb"\\(.)", rb"\1", found.group(1))

    def literal(self) -> bytes:
        found = self.match(_LITERAL)
        if found is None:
            raise ParseError("Invalid literal")
        size = int(found.group(1))
        if size > len(self.data) - self.pos:
            raise ParseError("Literal runs past the end of the command")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self, what: str = "a string") -> bytes:
        head = self.peek()
        if head == b'"':
            return self.quoted()
        if head == b"{":
            return self.literal()
        raise ParseError(f"Expected {what}")

    def astring(self, what: str = "a string") -> bytes:
        if self.peek() in (b'"', b"{"):
            return self.string(what)
        found = self.match(_ASTRING_ATOM)
        if found is None:
            raise ParseError(f"Expected {what}")
        return found.group()

    def nstring(self, what: str = "a string or NIL") -> bytes | None:
        if self.peek() in (b'"', b"{"):
            return self.string(what)
        if self.take(b"NIL"):
            return None
        raise ParseError(f"Expected {what}")

    def text(self, what: str) -> str:
        """An astring as UTF-8 text (user names, passwords, header names)."""
        return _utf8(self.astring(what), what)

    def mailbox(self) -> str:
        return _mailbox(self.astring("a mailbox name"))

    def list_mailbox(self) -> str:
        """RFC 3501 §9 list-mailbox: an astring that may also hold the wildcards ``%`` ``*``."""
        if self.peek() in (b'"', b"{"):
            raw = self.string("a mailbox pattern")
        else:
            found = self.match(_LIST_ATOM)
            if found is None:
                raise ParseError("Expected a mailbox pattern")
            raw = found.group()
        try:
            return decode_mailbox_name(raw)
        except ValueError as e:
            raise ParseError(f"Invalid mailbox pattern: {e}") from None

    def sequence_set(self) -> SequenceSet:
        found = self.match(_SEQUENCE)
        if found is None:
            raise ParseError("Expected a sequence set")
        try:
            return parse_sequence_set(found.group())
        except InvalidSequenceSet as e:
            raise ParseError(str(e)) from None

    def paren_list(self, item: Callable[[], object], *, empty: bool = True) -> None:
        """``"(" [item *(SP item)] ")"``; ``item`` appends to wherever the caller collects."""
        self.expect(b"(", "(")
        if self.take(b")"):
            if not empty:
                raise ParseError("Empty list")
            return
        item()
        while not self.take(b")"):
            self.sp()
            item()

    def nested(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ParseError("Too deeply nested")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"Invalid UTF-8 in {what}") from None


# --- mailbox names (RFC 3501 §5.1.3 modified UTF-7) ---------------------------------------------


def encode_mailbox_name(name: str) -> str:
    """A mailbox name in modified UTF-7: printable ASCII as itself, ``&`` as ``&-``, the rest
    as UTF-16 in base64 with ``,`` for ``/`` between ``&`` and ``-`` (RFC 3501 §5.1.3)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            encoded = base64.b64encode("".join(run).encode("utf-16-be"), altchars=b"+,")
            out.append("&" + encoded.rstrip(b"=").decode("ascii") + "-")
            run.clear()

    for char in name:
        if " " <= char <= "~":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


def decode_mailbox_name(raw: bytes | str) -> str:
    """Modified UTF-7 to text; raises ValueError for anything not in canonical form.

    Canonical means re-encoding gives the same text back, which rejects printable ASCII in
    base64, stray bits, split runs and broken UTF-16 alike, so every name has one spelling.
    """
    text = raw if isinstance(raw, str) else raw.decode("latin-1")
    if any(not " " <= char <= "~" for char in text):
        raise ValueError("8-bit or control characters (names are modified UTF-7)")
    out: list[str] = []
    pos = 0
    while True:
        amp = text.find("&", pos)
        if amp < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:amp])
        end = text.find("-", amp + 1)
        if end < 0:
            raise ValueError("unterminated &-sequence")
        chunk = text[amp + 1 : end]
        pos = end + 1
        if not chunk:
            out.append("&")
            continue
        if not re.fullmatch(r"[A-Za-z0-9+,]+", chunk) or len(chunk) % 4 == 1:
            raise ValueError("bad base64 in &-sequence")
        padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
        try:
            out.append(base64.b64decode(padded, validate=True).decode("utf-16-be"))
        except (ValueError, UnicodeDecodeError):
            raise ValueError("bad UTF-16 in &-sequence") from None
    name = "".join(out)
    if encode_mailbox_name(name) != text:
        raise ValueError("not canonical modified UTF-7")
    return name


def normalize_inbox(name: str) -> str:
    """RFC 3501 §5.1: INBOX is case-insensitive; every other name is case-sensitive."""
    return "INBOX" if name.upper() == "INBOX" else name


def _mailbox(raw: bytes) -> str:
    try:
        return normalize_inbox(decode_mailbox_name(raw))
    except ValueError as e:
        raise ParseError(f"Invalid mailbox name: {e}") from None


# --- flags and dates ----------------------------------------------------------------------------

SYSTEM_FLAGS = {f.upper(): f for f in
                ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}  # fmt: skip


def _flag(cur: _Cursor) -> str:
    """RFC 3501 §9 flag, as stored: system flags in their canonical case, keywords as given.

    ``\\Recent`` is the server's to set (RFC 3501 §2.3.2), so no command may carry it.
    """
    if cur.take(b"\\"):
        name = "\\" + cur.atom("a flag")
        if name.upper() == "\\RECENT":
            raise ParseError("\\Recent cannot be set")
        canonical = SYSTEM_FLAGS.get(name.upper())
        if canonical is None:
            raise ParseError(f"Unknown system flag {name[:40]}")
        return canonical
    return cur.atom("a flag")


def _flag_list(cur: _Cursor) -> tuple[str, ...]:
    flags: list[str] = []
    cur.paren_list(lambda: flags.append(_flag(cur)))
    return tuple(dict.fromkeys(flags))


def _date(cur: _Cursor) -> date:
    """RFC 3501 §9 date: ``d-Mon-yyyy``, bare or in double quotes."""
    quoted = cur.take(b'"')
    found = cur.match(_DATE)
    if found is None or (quoted and not cur.take(b'"')):
        raise ParseError("Expected a date like 1-Feb-2024")
    day, month, year = found.groups()
    return _calendar_date(int(day), month, int(year))


def _calendar_date(day: int, month_name: bytes, year: int) -> date:
    month = _MONTHS.get(month_name.decode("ascii").upper())
    try:
        if month is None:
            raise ValueError
        return date(year, month, day)
    except ValueError:
        raise ParseError("Invalid date") from None


def _date_time(cur: _Cursor) -> datetime:
    """RFC 3501 §9 date-time: ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (APPEND's internal date)."""
    found = cur.match(_DATE_TIME)
    if found is None:
        raise ParseError("Invalid date-time")
    day, month, year, hh, mm, ss, sign, zone = found.groups()
    when = _calendar_date(int(day.strip() or b"0"), month, int(year))
    offset_minutes = int(zone[:2]) * 60 + int(zone[2:])
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 60 or int(zone[2:]) > 59 or int(zone[:2]) > 23:
        raise ParseError("Invalid date-time")
    tz = timezone(timedelta(minutes=-offset_minutes if sign == b"-" else offset_minutes))
    return datetime(when.year, when.month, when.day, int(hh), int(mm), min(int(ss), 59), tzinfo=tz)


# --- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Logout:
    pass


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class Authenticate:
    """RFC 3501 §6.2.2; ``initial_response`` is RFC 4959 SASL-IR base64 text (``=`` = empty)."""

    mechanism: str
    initial_response: str | None = None


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class QResync:
    """RFC 7162 §3.2.5 SELECT (QRESYNC (uidvalidity modseq [known-uids [seq-match-data]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_sequence: SequenceSet | None = None  # seq-match-data: sequence numbers ...
    known_sequence_uids: SequenceSet | None = None  # ... and the UIDs they correspond to


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT, or EXAMINE when ``read_only``; ``condstore``/``qresync`` from RFC 7162 §3.1.8."""

    mailbox: str
    read_only: bool = False
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True, slots=True)
class Create:
    """``use`` holds RFC 6154 §3 CREATE-SPECIAL-USE attributes (``(USE (\\Sent))``)."""

    mailbox: str
    use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete:
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    mailbox: str


@dataclass(frozen=True, slots=True)
class List:
    """LIST, plain (RFC 3501 §6.3.8) or extended (RFC 5258: ``extended`` is true then).

    ``selection`` ⊆ {SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE}; ``returns`` ⊆
    {SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS}; ``status_items`` is RFC 5819 LIST-STATUS.
    SUBSCRIBED selection implies the SUBSCRIBED return option (RFC 5258 §3.1), added here.
    """

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Lsub:
    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Append:
    mailbox: str
    message: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None


@dataclass(frozen=True, slots=True)
class Check:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Unselect:
    """RFC 3691: CLOSE without the expunge."""


@dataclass(frozen=True, slots=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE (RFC 4315 §2.1) restricted to ``uids``."""

    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Idle:
    """RFC 2177; the session sends ``+ idling`` and reads lines until ``DONE``."""


@dataclass(frozen=True, slots=True)
class Namespace:
    pass


@dataclass(frozen=True, slots=True)
class Id:
    """RFC 2971; ``None`` for ``ID NIL``, else field/value pairs (value ``None`` for NIL)."""

    parameters: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Enable:
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GetQuota:
    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot:
    mailbox: str


@dataclass(frozen=True, slots=True)
class SetQuota:
    root: str
    limits: tuple[tuple[str, int], ...]


# FETCH attributes (RFC 3501 §6.4.5) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchItem:
    """An attribute without a section: FLAGS, UID, ENVELOPE, RFC822.SIZE, MODSEQ, ..."""

    name: str


@dataclass(frozen=True, slots=True)
class Section:
    """RFC 3501 §6.4.5 section-spec: part numbers, then HEADER[.FIELDS[.NOT]], TEXT or MIME."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        words = [str(n) for n in self.part]
        if self.text:
            words.append(self.text)
        spec = ".".join(words)
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True, slots=True)
class BodySection:
    """BODY[section]<origin.length> or BODY.PEEK[...]; ``partial`` is (origin, length)."""

    section: Section = field(default_factory=Section)
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> str:
        """The name the FETCH response uses: no PEEK, only the origin (RFC 3501 §7.4.2)."""
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{self.section}]{origin}"


FetchAttribute = FetchItem | BodySection

_SIMPLE_FETCH = {"FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
                 "RFC822.TEXT", "ENVELOPE", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ"}  # fmt: skip
_MACROS = {  # RFC 3501 §6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH / UID FETCH with the RFC 7162 §3.1.4 / §3.2.6 modifiers.

    The session adds UID to the response of a UID FETCH (RFC 3501 §6.4.8) and MODSEQ when
    ``changed_since`` is given (RFC 7162 §3.1.4.1).
    """

    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False

    @property
    def sets_seen(self) -> bool:
        """RFC 3501 §6.4.5: BODY[...], RFC822 and RFC822.TEXT set \\Seen; PEEK does not."""
        return any(
            (isinstance(a, BodySection) and not a.peek)
            or (isinstance(a, FetchItem) and a.name in ("RFC822", "RFC822.TEXT"))
            for a in self.attributes
        )


@dataclass(frozen=True, slots=True)
class Store:
    """``mode`` is FLAGS (replace), +FLAGS (add) or -FLAGS (remove); RFC 7162 §3.1.3."""

    sequence_set: SequenceSet
    mode: L["replace", "add", "remove"]
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    """RFC 6851."""

    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


# SEARCH keys (RFC 3501 §6.4.4) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllKey:
    pass


@dataclass(frozen=True, slots=True)
class FlagKey:
    """The message has (``present``) or lacks ``flag``; RECENT/OLD use ``\\Recent``."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """``name`` contains ``value`` (case-insensitive substring); empty value: has the field."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BodyKey:
    value: str


@dataclass(frozen=True, slots=True)
class TextKey:
    """Header or body contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class DateKey:
    """``field`` internal = INTERNALDATE (dates only, RFC 3501 §6.4.4), sent = Date: header."""

    field: L["internal", "sent"]
    relation: L["before", "on", "since"]
    date: date


@dataclass(frozen=True, slots=True)
class SizeKey:
    relation: L["larger", "smaller"]
    size: int


@dataclass(frozen=True, slots=True)
class SequenceKey:
    sequence_set: SequenceSet


@dataclass(frozen=True, slots=True)
class UidKey:
    uids: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """RFC 7162 §3.1.5; ``entry``/``entry_type`` name a flag's metadata item when given."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class NotKey:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class OrKey:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class AndKey:
    keys: tuple[SearchKey, ...]


SearchKey = (
    AllKey | FlagKey | HeaderKey | BodyKey | TextKey | DateKey | SizeKey | SequenceKey | UidKey
    | ModSeqKey | NotKey | OrKey | AndKey
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Search:
    """SEARCH / UID SEARCH. ``returns`` is None for a plain SEARCH, else RFC 4731 ESEARCH
    options (``RETURN ()`` means ALL, §3.1). ``charset`` is as given (validated)."""

    key: SearchKey
    uid: bool = False
    charset: str | None = None
    returns: tuple[str, ...] | None = None

    @property
    def uses_modseq(self) -> bool:
        """RFC 7162 §3.1.5: a MODSEQ key makes the response carry (MODSEQ n)."""
        return _has_modseq(self.key)


def _has_modseq(key: SearchKey) -> bool:
    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, NotKey):
        return _has_modseq(key.key)
    if isinstance(key, OrKey):
        return _has_modseq(key.left) or _has_modseq(key.right)
    if isinstance(key, AndKey):
        return any(_has_modseq(k) for k in key.keys)
    return False


Command = (
    Capability | Noop | Logout | StartTLS | Authenticate | Login | Select | Create | Delete
    | Rename | Subscribe | Unsubscribe | List | Lsub | Status | Append | Check | Close | Unselect
    | Expunge | Idle | Namespace | Id | Enable | GetQuota | GetQuotaRoot | SetQuota | Fetch
    | Store | Copy | Move | Search
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    tag: str
    command: Command


# --- the parser ---------------------------------------------------------------------------------


def parse_command(data: bytes) -> Request:
    """Parse one whole command (as :class:`CommandReader` assembles it, or as a test writes
    it, with or without the final CRLF) into a :class:`Request`."""
    cur = _Cursor(data)
    found = cur.match(_TAG)
    if found is None or not (cur.peek() == b" " or cur.at_end()):
        raise ParseError("Missing or invalid tag")
    tag = found.group().decode("ascii")
    try:
        if not cur.take(b" "):
            raise ParseError("Missing command")
        name = cur.match(_ATOM)
        if name is None:
            raise ParseError("Missing command")
        command = _command(cur, name.group().decode("ascii").upper())
        if not cur.at_end():
            raise ParseError("Unexpected characters at end of command")
    except ParseError as e:
        e.tag = tag
        raise
    return Request(tag, command)


def _command(cur: _Cursor, name: str) -> Command:
    if name == "UID":
        cur.sp()
        sub = cur.keyword("a UID command")
        parse = _UID_COMMANDS.get(sub)
        if parse is None:
            raise ParseError(f"Unknown command UID {_shown(sub)}")
        _arguments(cur, f"UID {sub}")
        return parse(cur, True)
    if name in _NO_ARGUMENTS:
        return _NO_ARGUMENTS[name]
    parse_plain = _COMMANDS.get(name)
    if parse_plain is not None:
        _arguments(cur, name)
        return parse_plain(cur)
    parse_uidable = _UID_COMMANDS.get(name)
    if parse_uidable is None or name == "EXPUNGE":
        raise ParseError(f"Unknown command {_shown(name)}")
    _arguments(cur, name)
    return parse_uidable(cur, False)


def _arguments(cur: _Cursor, name: str) -> None:
    if not cur.take(b" ") or cur.at_end():
        raise ParseError(f"Missing arguments to {name}")


def _shown(name: str) -> str:
    return name[:32]


def _authenticate(cur: _Cursor) -> Command:
    mechanism = cur.keyword("a SASL mechanism")
    if not cur.take(b" "):
        return Authenticate(mechanism)
    response = cur.atom("a SASL initial response")
    if not _BASE64.fullmatch(response):
        raise ParseError("Invalid base64 in the initial response")
    return Authenticate(mechanism, response)


def _login(cur: _Cursor) -> Command:
    user = cur.text("a user name")
    cur.sp()
    return Login(user, cur.text("a password"))


def _select(read_only: bool) -> Callable[[_Cursor], Command]:
    def parse(cur: _Cursor) -> Command:
        mailbox = cur.mailbox()
        condstore = False
        qresync: list[QResync] = []
        if cur.take(b" "):

            def param() -> None:
                nonlocal condstore
                word = cur.keyword("a SELECT parameter")
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC" and not qresync:
                    cur.sp()
                    qresync.append(_qresync(cur))
                else:
                    raise ParseError(f"Unknown SELECT parameter {_shown(word)}")

            cur.paren_list(param, empty=False)
        return Select(mailbox, read_only, condstore, qresync[0] if qresync else None)

    return parse


def _qresync(cur: _Cursor) -> QResync:
    cur.expect(b"(", "(")
    uidvalidity = cur.number("a UIDVALIDITY", nonzero=True)
    cur.sp()
    modseq = cur.number("a mod-sequence", nonzero=True, top=MAX_MODSEQ)
    known_uids = seqs = seq_uids = None
    more = cur.take(b" ")
    if more and cur.peek() != b"(":
        known_uids = cur.sequence_set()
        more = cur.take(b" ")
    if more:
        cur.expect(b"(", "( before seq-match-data")
        seqs = cur.sequence_set()
        cur.sp()
        seq_uids = cur.sequence_set()
        cur.expect(b")", ")")
    cur.expect(b")", ")")
    return QResync(uidvalidity, modseq, known_uids, seqs, seq_uids)


_USE_ATTRIBUTES = {a.upper(): a for a in
                   ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent",
                    "\\Trash")}  # fmt: skip


def _create(cur: _Cursor) -> Command:
    mailbox = cur.mailbox()
    use: list[str] = []
    if cur.take(b" "):

        def attribute() -> None:
            cur.expect(b"\\", "a special-use attribute")
            name = "\\" + cur.atom("a special-use attribute")
            canonical = _USE_ATTRIBUTES.get(name.upper())
            if canonical is None:
                raise ParseError(f"Unknown special-use attribute {_shown(name)}")
            use.append(canonical)

        def param() -> None:
            if cur.keyword("a CREATE parameter") != "USE":
                raise ParseError("Unknown CREATE parameter")
            cur.sp()
            cur.paren_list(attribute)

        cur.paren_list(param, empty=False)
    return Create(mailbox, tuple(dict.fromkeys(use)))


def _one_mailbox(
    cls: type[Delete | Subscribe | Unsubscribe | GetQuotaRoot],
) -> Callable[[_Cursor], Command]:
    def parse(cur: _Cursor) -> Command:
        return cls(cur.mailbox())

    return parse


def _rename(cur: _Cursor) -> Command:
    old = cur.mailbox()
    cur.sp()
    return Rename(old, cur.mailbox())


_LIST_SELECTION = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_LIST_RETURNS = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"}


def _list(cur: _Cursor) -> Command:
    selection: set[str] = set()
    extended = False
    if cur.peek() == b"(":  # RFC 5258 §6 list-select-opts
        extended = True

        def option() -> None:
            word = cur.keyword("a LIST selection option")
            if word not in _LIST_SELECTION:
                raise ParseError(f"Unknown LIST selection option {_shown(word)}")
            selection.add(word)

        cur.paren_list(option)
        cur.sp()
        if "RECURSIVEMATCH" in selection and selection <= {"RECURSIVEMATCH", "REMOTE"}:
            raise ParseError("RECURSIVEMATCH needs another selection option")  # RFC 5258 §3
    reference = _reference(cur)
    cur.sp()
    patterns: list[str] = []
    if cur.peek() == b"(":
        extended = True
        cur.paren_list(lambda: patterns.append(cur.list_mailbox()), empty=False)
    else:
        patterns.append(cur.list_mailbox())
    returns: set[str] = set()
    status_items: list[str] = []
    if cur.take(b" "):
        cur.expect(b"RETURN ", "RETURN")
        extended = True

        def option() -> None:
            word = cur.keyword("a LIST return option")
            if word == "STATUS" and not status_items:  # RFC 5819
                cur.sp()
                status_items.extend(_status_items(cur))
            elif word not in _LIST_RETURNS:
                raise ParseError(f"Unknown LIST return option {_shown(word)}")
            returns.add(word)

        cur.paren_list(option)
    if "SUBSCRIBED" in selection:
        returns.add("SUBSCRIBED")
    return List(reference, tuple(patterns), frozenset(selection), frozenset(returns),
                tuple(status_items), extended)  # fmt: skip


def _reference(cur: _Cursor) -> str:
    """LIST/LSUB reference: a mailbox name, kept as written but decoded."""
    raw = cur.astring("a reference name")
    try:
        return decode_mailbox_name(raw)
    except ValueError as e:
        raise ParseError(f"Invalid reference name: {e}") from None


def _lsub(cur: _Cursor) -> Command:
    reference = _reference(cur)
    cur.sp()
    return Lsub(reference, cur.list_mailbox())


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "APPENDLIMIT", "SIZE", "DELETED"}  # fmt: skip


def _status_items(cur: _Cursor) -> tuple[str, ...]:
    items: list[str] = []

    def item() -> None:
        word = cur.keyword("a STATUS item")
        if word not in STATUS_ITEMS:
            raise ParseError(f"Unknown STATUS item {_shown(word)}")
        items.append(word)

    cur.paren_list(item, empty=False)
    return tuple(dict.fromkeys(items))


def _status(cur: _Cursor) -> Command:
    mailbox = cur.mailbox()
    cur.sp()
    return Status(mailbox, _status_items(cur))


def _append(cur: _Cursor) -> Command:
    mailbox = cur.mailbox()
    cur.sp()
    flags: tuple[str, ...] = ()
    when = None
    if cur.peek() == b"(":
        flags = _flag_list(cur)
        cur.sp()
    if cur.peek() == b'"':
        when = _date_time(cur)
        cur.sp()
    if cur.peek() != b"{":
        raise ParseError("APPEND needs the message as a literal")
    return Append(mailbox, cur.literal(), flags, when)


def _id(cur: _Cursor) -> Command:
    if cur.take(b"NIL"):
        return Id(None)
    pairs: list[tuple[str, str | None]] = []

    def pair() -> None:
        key = _utf8(cur.astring("an ID field"), "an ID field")
        cur.sp()
        value = cur.nstring("an ID value")
        pairs.append((key, None if value is None else _utf8(value, "an ID value")))

    cur.paren_list(pair)
    return Id(tuple(pairs))


def _enable(cur: _Cursor) -> Command:
    names = [cur.keyword("a capability")]
    while cur.take(b" "):
        names.append(cur.keyword("a capability"))
    return Enable(tuple(dict.fromkeys(names)))


def _get_quota(cur: _Cursor) -> Command:
    return GetQuota(_utf8(cur.astring("a quota root"), "a quota root"))


def _set_quota(cur: _Cursor) -> Command:
    root = _utf8(cur.astring("a quota root"), "a quota root")
    cur.sp()
    limits: list[tuple[str, int]] = []

    def resource() -> None:
        name = cur.keyword("a resource name")
        cur.sp()
        limits.append((name, cur.number("a limit", top=MAX_MODSEQ)))

    cur.paren_list(resource)
    return SetQuota(root, tuple(limits))


# FETCH ------------------------------------------------------------------------------------


def _fetch(cur: _Cursor, uid: bool) -> Command:
    sequence_set = cur.sequence_set()
    cur.sp()
    attributes: list[FetchAttribute] = []
    if cur.peek() == b"(":
        cur.paren_list(lambda: attributes.append(_fetch_attribute(cur)), empty=False)
    else:
        found = cur.match(_FETCH_NAME)
        macro = _MACROS.get(found.group().decode().upper()) if found else None
        if macro is not None:
            attributes.extend(FetchItem(name) for name in macro)
        else:
            if found is not None:
                cur.pos = found.start()
            attributes.append(_fetch_attribute(cur))
    changed_since = None
    vanished = False
    if cur.take(b" "):  # RFC 4466 §2.4 fetch-modifiers

        def modifier() -> None:
            nonlocal changed_since, vanished
            word = cur.keyword("a FETCH modifier")
            if word == "CHANGEDSINCE" and changed_since is None:
                cur.sp()
                changed_since = cur.number("a mod-sequence", nonzero=True, top=MAX_MODSEQ)
            elif word == "VANISHED" and not vanished:
                vanished = True
            else:
                raise ParseError(f"Unknown FETCH modifier {_shown(word)}")

        cur.paren_list(modifier, empty=False)
    if vanished and (not uid or changed_since is None):  # RFC 7162 §3.2.6
        raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
    unique = tuple(dict.fromkeys(attributes))
    return Fetch(sequence_set, unique, uid, changed_since, vanished)


def _fetch_attribute(cur: _Cursor) -> FetchAttribute:
    found = cur.match(_FETCH_NAME)
    name = found.group().decode("ascii").upper() if found else ""
    if name in ("BODY", "BODY.PEEK") and cur.peek() == b"[":
        section = _section(cur)
        partial = None
        if cur.take(b"<"):
            origin = cur.number("a partial origin")
            cur.expect(b".", ". in the partial")
            length = cur.number("a partial length", nonzero=True)
            cur.expect(b">", ">")
            partial = (origin, length)
        return BodySection(section, name == "BODY.PEEK", partial)
    if name in _SIMPLE_FETCH:
        return FetchItem(name)
    if not name:
        raise ParseError("Expected a FETCH attribute")
    raise ParseError(f"Unknown FETCH attribute {_shown(name)}")


def _section(cur: _Cursor) -> Section:
    cur.expect(b"[", "[")
    found = cur.match(_SECTION_SPEC)
    spec = found.group().decode("ascii").upper() if found else ""
    words = spec.split(".") if spec else []
    if "" in words:
        raise ParseError("Invalid section")
    part: list[int] = []
    while words and words[0].isdigit():
        if words[0].startswith("0") or len(words[0]) > 10 or int(words[0]) > MAX_NUMBER:
            raise ParseError("Invalid section part number")
        part.append(int(words.pop(0)))
    text = ".".join(words) or None
    fields: list[str] = []
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        cur.sp()
        cur.paren_list(lambda: fields.append(_header_name(cur)), empty=False)
    elif text not in (None, "HEADER", "TEXT", "MIME"):
        raise ParseError("Invalid section")
    if text == "MIME" and not part:
        raise ParseError("MIME needs a part number")  # RFC 3501 §9 section-text
    cur.expect(b"]", "]")
    return Section(tuple(part), text, tuple(fields))


def _header_name(cur: _Cursor) -> str:
    raw = cur.astring("a header field name")
    if not raw or any(c <= 0x20 or c >= 0x7F or c == 0x3A for c in raw):  # RFC 5322 §2.2
        raise ParseError("Invalid header field name")
    return raw.decode("ascii")


# STORE, COPY, MOVE, EXPUNGE ---------------------------------------------------------------

_STORE_ITEM = re.compile(r"([+-]?)FLAGS(\.SILENT)?")
_STORE_WORD = re.compile(rb"[+-]?[A-Za-z.]+")


def _store(cur: _Cursor, uid: bool) -> Command:
    sequence_set = cur.sequence_set()
    cur.sp()
    unchanged_since = None
    if cur.take(b"("):  # RFC 7162 §3.1.3 store-modifier
        if cur.keyword("a STORE modifier") != "UNCHANGEDSINCE":
            raise ParseError("Unknown STORE modifier")
        cur.sp()
        unchanged_since = cur.number("a mod-sequence", top=MAX_MODSEQ)
        cur.expect(b")", ")")
        cur.sp()
    found = cur.match(_STORE_WORD)
    item = _STORE_ITEM.fullmatch(found.group().decode("ascii").upper()) if found else None
    if item is None:
        raise ParseError("Expected FLAGS, +FLAGS or -FLAGS")
    cur.sp()
    if cur.peek() == b"(":
        flags = _flag_list(cur)
    else:
        words = [_flag(cur)]
        while cur.take(b" "):
            words.append(_flag(cur))
        flags = tuple(dict.fromkeys(words))
    modes: dict[str, L["replace", "add", "remove"]] = {"": "replace", "+": "add", "-": "remove"}
    return Store(sequence_set, modes[item.group(1)], flags, bool(item.group(2)), uid,
                 unchanged_since)  # fmt: skip


def _copy_or_move(cls: type[Copy | Move]) -> Callable[[_Cursor, bool], Command]:
    def parse(cur: _Cursor, uid: bool) -> Command:
        sequence_set = cur.sequence_set()
        cur.sp()
        return cls(sequence_set, cur.mailbox(), uid)

    return parse


def _uid_expunge(cur: _Cursor, uid: bool) -> Command:
    return Expunge(cur.sequence_set())


# SEARCH -----------------------------------------------------------------------------------

_SEARCH_RETURNS = {"MIN", "MAX", "ALL", "COUNT"}
CHARSETS = ("US-ASCII", "UTF-8")
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "RECENT": ("\\Recent", True), "OLD": ("\\Recent", False),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}  # fmt: skip
_HEADER_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
_DATE_KEYS: dict[str, tuple[L["internal", "sent"], L["before", "on", "since"]]] = {
    "BEFORE": ("internal", "before"), "ON": ("internal", "on"), "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"), "SENTON": ("sent", "on"), "SENTSINCE": ("sent", "since"),
}  # fmt: skip
_KEYS_WITH_ARGUMENTS = {
    "NOT", "OR", "HEADER", "BODY", "TEXT", "LARGER", "SMALLER", "KEYWORD", "UNKEYWORD", "UID",
    "MODSEQ", *_HEADER_KEYS, *_DATE_KEYS,
}  # fmt: skip


def _search(cur: _Cursor, uid: bool) -> Command:
    returns: tuple[str, ...] | None = None
    if cur.take(b"RETURN "):  # RFC 4731 §3
        collected: list[str] = []

        def option() -> None:
            word = cur.keyword("a SEARCH return option")
            if word not in _SEARCH_RETURNS:
                raise ParseError(f"Unsupported SEARCH return option {_shown(word)}")
            collected.append(word)

        cur.paren_list(option)
        returns = tuple(dict.fromkeys(collected)) or ("ALL",)
        cur.sp()
    charset = None
    if cur.take(b"CHARSET "):
        charset = _utf8(cur.astring("a charset"), "a charset").upper()
        if charset not in CHARSETS:
            raise ParseError(
                "Unsupported charset", status="NO", code="BADCHARSET (" + " ".join(CHARSETS) + ")"
            )
        cur.sp()
    keys = [_search_key(cur)]
    while cur.take(b" "):
        keys.append(_search_key(cur))
    key = keys[0] if len(keys) == 1 else AndKey(tuple(keys))
    return Search(key, uid, charset, returns)


def _search_key(cur: _Cursor) -> SearchKey:
    head = cur.peek()
    if head == b"(":
        cur.nested()
        keys: list[SearchKey] = []
        cur.paren_list(lambda: keys.append(_search_key(cur)), empty=False)
        cur.depth -= 1
        return keys[0] if len(keys) == 1 else AndKey(tuple(keys))
    if head.isdigit() or head in (b"*", b"$"):
        return SequenceKey(cur.sequence_set())
    word = cur.keyword("a search key")
    if word in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[word]
        return FlagKey(flag, present)
    if word == "ALL":
        return AllKey()
    if word == "NEW":  # RFC 3501 §6.4.4: RECENT UNSEEN
        return AndKey((FlagKey("\\Recent"), FlagKey("\\Seen", False)))
    if word not in _KEYS_WITH_ARGUMENTS:
        raise ParseError(f"Unknown search key {_shown(word)}")
    cur.sp()
    if word in ("NOT", "OR"):
        cur.nested()
        first = _search_key(cur)
        result: SearchKey
        if word == "NOT":
            result = NotKey(first)
        else:
            cur.sp()
            result = OrKey(first, _search_key(cur))
        cur.depth -= 1
        return result
    if word in _HEADER_KEYS:
        return HeaderKey(word.capitalize() if word != "CC" else "Cc", _search_text(cur))
    if word == "HEADER":
        name = _header_name(cur)
        cur.sp()
        return HeaderKey(name, _search_text(cur))
    if word in ("BODY", "TEXT"):
        text = _search_text(cur)
        return BodyKey(text) if word == "BODY" else TextKey(text)
    if word in _DATE_KEYS:
        field_, relation = _DATE_KEYS[word]
        return DateKey(field_, relation, _date(cur))
    if word in ("LARGER", "SMALLER"):
        return SizeKey("larger" if word == "LARGER" else "smaller", cur.number("a size"))
    if word in ("KEYWORD", "UNKEYWORD"):
        return FlagKey(cur.atom("a keyword"), word == "KEYWORD")
    if word == "UID":
        return UidKey(cur.sequence_set())
    if word == "MODSEQ":
        return _modseq_key(cur)
    raise ParseError(f"Unknown search key {_shown(word)}")


def _search_text(cur: _Cursor) -> str:
    return _utf8(cur.astring("a search string"), "a search string")


def _modseq_key(cur: _Cursor) -> SearchKey:
    entry = entry_type = None
    if cur.peek() == b'"':  # RFC 7162 §3.1.5 entry-name SP entry-type-req
        entry = _utf8(cur.quoted(), "an entry name")
        cur.sp()
        entry_type = cur.keyword("an entry type")
        if entry_type not in ("PRIV", "SHARED", "ALL"):
            raise ParseError("Invalid entry type")
        entry_type = entry_type.lower()
        cur.sp()
    return ModSeqKey(cur.number("a mod-sequence", top=MAX_MODSEQ), entry, entry_type)


# dispatch ---------------------------------------------------------------------------------

_NO_ARGUMENTS: dict[str, Command] = {
    "CAPABILITY": Capability(), "NOOP": Noop(), "LOGOUT": Logout(), "STARTTLS": StartTLS(),
    "CHECK": Check(), "CLOSE": Close(), "EXPUNGE": Expunge(), "UNSELECT": Unselect(),
    "IDLE": Idle(), "NAMESPACE": Namespace(),
}  # fmt: skip
_COMMANDS: dict[str, Callable[[_Cursor], Command]] = {
    "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select(read_only=False), "EXAMINE": _select(read_only=True),
    "CREATE": _create, "DELETE": _one_mailbox(Delete), "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe), "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list, "LSUB": _lsub, "STATUS": _status, "APPEND": _append, "ID": _id,
    "ENABLE": _enable, "GETQUOTA": _get_quota, "GETQUOTAROOT": _one_mailbox(GetQuotaRoot),
    "SETQUOTA": _set_quota,
}  # fmt: skip
_UID_COMMANDS: dict[str, Callable[[_Cursor, bool], Command]] = {
    "FETCH": _fetch, "STORE": _store, "SEARCH": _search, "COPY": _copy_or_move(Copy),
    "MOVE": _copy_or_move(Move), "EXPUNGE": _uid_expunge,
}  # fmt: skip
