"""POP3 responses as bytes: status lines, multi-line framing, byte-stuffing, TOP.

Pure, like the parser: the session decides what to say, this module decides the octets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CRLF = b"\r\n"
TERMINATOR = b".\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def ok(text: str = "") -> bytes:
    return (f"+OK {text}" if text else "+OK").encode() + CRLF


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [CODE] text``; codes are RFC 2449 §8 / RFC 3206 response codes."""
    prefix = f"[{code}] " if code else ""
    return f"-ERR {prefix}{text}".encode() + CRLF


def multiline(status: bytes, lines: Iterable[str]) -> bytes:
    """A status line, then lines (none starting with ``.``), then the terminator."""
    return status + b"".join(line.encode() + CRLF for line in lines) + TERMINATOR


def normalize_line_ends(message: bytes) -> bytes:
    """Every line end as CRLF and a CRLF at the end (RFC 1939 §3: lines end in CRLF).

    Stored messages are CRLF already; this is for anything that is not, because a bare LF
    followed by ``.`` would otherwise end the response early for a client that splits on LF.
    """
    if _is_clean(message):
        return message if not message or message.endswith(CRLF) else message + CRLF
    message = _LINE_END.sub(CRLF, message)
    return message if message.endswith(CRLF) else message + CRLF


def _is_clean(message: bytes) -> bool:
    crlf = message.count(CRLF)
    return message.count(b"\n") == crlf and message.count(b"\r") == crlf


def dot_stuff(message: bytes) -> bytes:
    """RFC 1939 §3: a line starting with ``.`` is sent with one more ``.`` before it."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def message_response(status: bytes, message: bytes) -> bytes:
    """The whole RETR/TOP response: status, the stuffed message (CRLF-ended), terminator."""
    return status + dot_stuff(normalize_line_ends(message)) + TERMINATOR


def top_of(message: bytes, lines: int) -> bytes:
    """RFC 1939 §7 TOP: the header, the blank line, and the first ``lines`` body lines.

    ``message`` must already have CRLF line ends. Without a blank line the whole message is
    header and is returned whole.
    """
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message
    cut = end + 4
    for _ in range(lines):
        if cut >= len(message):
            break
        nl = message.find(CRLF, cut)
        cut = len(message) if nl < 0 else nl + 2
    return message[:cut]


def unique_id(uidvalidity: int, uid: int) -> str:
    """RFC 1939 §7 UIDL: stable across sessions because UIDVALIDITY and UID are (RFC 3501
    §2.3.1.1); printable ASCII, at most 70 characters."""
    return f"{uidvalidity}.{uid}"
