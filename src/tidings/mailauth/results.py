"""Authentication-Results (RFC 8601): the header we prepend, and removing forged ones.

Pure: bytes in, bytes out. :func:`authentication_results` renders our verdict on SPF, DKIM and
DMARC as one folded header field; :func:`strip_authentication_results` removes every
Authentication-Results field that claims our authserv-id before we add ours, so a sender cannot
hand a mail reader a verdict that looks like it came from us (§5). :func:`header_fields` is the
small RFC 5322 header splitter both use (DMARC reads From with it too).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidings.mailauth.dkim import DKIMResult
    from tidings.mailauth.dmarc import DMARCResult
    from tidings.mailauth.spf import SPFResult

HEADER_NAME = b"Authentication-Results"
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
FOLD_WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD be no more than 78 characters
_WSP = b" \t"


@dataclass(frozen=True)
class HeaderField:
    """One header field as it appeared: ``raw`` is every line of it, line endings included."""

    name: bytes  # as written, without the colon or trailing whitespace
    raw: bytes

    @property
    def value(self) -> bytes:
        """The unfolded value (RFC 5322 §2.2.3: a CRLF before WSP is removed)."""
        _, _, value = self.raw.partition(b":")
        value = value.rstrip(b"\r\n")
        # Only an LF inside the value can start a continuation line.
        return _FOLD.sub(b"", value) if b"\n" in value else value


def split_header(message: bytes) -> tuple[bytes, bytes]:
    """The header section (through its last line ending) and the rest (the blank line and
    body), split at the first empty line (RFC 5322 §2.1). A message with no empty line is all
    header."""
    end = _header_end(message)
    return message[:end], message[end:]


def header_section(message: bytes) -> bytes:
    """:func:`split_header`'s header section alone, without copying the body (which may be
    megabytes, and this runs on the event loop)."""
    return message[: _header_end(message)]


def _header_end(message: bytes) -> int:
    """Where :func:`split_header` splits: after the LF that precedes the first empty line."""
    if message[:1] == b"\n" or message[:2] == b"\r\n":
        return 0
    # The first LF followed by CRLF or LF; string searches, not a regular expression, as this
    # runs on every message (the LF LF search stops where the CRLF one succeeded).
    crlf = message.find(b"\n\r\n")
    lf = message.find(b"\n\n", 0, len(message) if crlf < 0 else crlf + 2)
    end = crlf if lf < 0 else lf
    return len(message) if end < 0 else end + 1


def has_field(message: bytes, prefix: bytes) -> bool:
    """Whether the header section may hold a field whose name starts with ``prefix``
    (lower-case): a quick test, true for every message that has one (and for a few that do
    not), so that a message without saves a full parse."""
    header = header_section(message).lower()
    return header.startswith(prefix) or b"\n" + prefix in header


def header_fields(header: bytes) -> tuple[list[HeaderField], list[bytes]]:
    """RFC 5322 §2.2: the fields of a header section, and the lines that belong to no field.

    A field starts on a line that does not begin with WSP and runs over the continuation lines
    after it. Continuation lines before the first field and lines without a colon are returned
    apart: they are malformed, and kept out of the fields so they cannot be read as part of one.
    """
    fields: list[HeaderField] = []
    stray: list[bytes] = []
    for group in _line_groups(header):
        if _starts_field(group[0]):
            fields.append(_field(group))
        else:
            stray.extend(group)
    return fields, stray


def fields_named(header: bytes, name: bytes) -> list[HeaderField]:
    """The fields of :func:`header_fields` whose name is ``name`` (given in lower case).

    When every line ends in CRLF (no lone CR or LF, as SMTP delivers a message) the fields
    are found by searching for their name at line starts, without reading every line: a
    received message's header is dozens of lines, and DMARC wants only From.
    """
    crlf = header.count(b"\r\n")
    if header.count(b"\r") != crlf or header.count(b"\n") != crlf:
        return [f for f in header_fields(header)[0] if f.name.lower() == name]
    lowered = b"\r\n" + header.lower()  # a line start is a CRLF before it, or the start
    found: list[HeaderField] = []
    start = lowered.find(b"\r\n" + name)
    while start >= 0:
        end = _line_end(header, start)
        colon = header.find(b":", start, end)
        if colon >= 0 and header[start:colon].rstrip(_WSP).lower() == name:
            while header[end : end + 1] in (b" ", b"\t"):  # continuation lines
                end = _line_end(header, end)
            found.append(_field([header[start:end]]))
        start = lowered.find(b"\r\n" + name, start + 1)
    return found


def _line_end(header: bytes, start: int) -> int:
    """The index after the CRLF that ends the line at ``start`` (the end of ``header`` if
    none does)."""
    end = header.find(b"\r\n", start)
    return len(header) if end < 0 else end + 2


def _starts_field(line: bytes) -> bool:
    return line[:1] not in (b" ", b"\t") and b":" in line


def _field(lines: list[bytes]) -> HeaderField:
    raw = b"".join(lines)
    # obs-optional (RFC 5322 §4.5.8) allows WSP between the name and the colon.
    return HeaderField(raw.partition(b":")[0].rstrip(_WSP), raw)


# -- reading an authserv-id ---------------------------------------------------------------------


def _skip_cfws(value: bytes, i: int) -> int:
    """The index after any folding whitespace and (nested) comments at ``i`` (RFC 5322 §3.2.2)."""
    depth = 0
    while i < len(value):
        c = value[i : i + 1]
        if depth:
            if c == b"\\":
                i += 1
            elif c == b"(":
                depth += 1
            elif c == b")":
                depth -= 1
        elif c == b"(":
            depth = 1
        elif c not in (b" ", b"\t", b"\r", b"\n"):
            return i
        i += 1
    return i


def authserv_id_of(value: bytes) -> str:
    """The authserv-id an Authentication-Results value begins with (RFC 8601 §2.2), lower
    case and without a trailing dot (§5: compared as a domain name, case-insensitively). A
    quoted-string is unquoted; an unreadable one yields what could be read."""
    i = _skip_cfws(value, 0)
    if value[i : i + 1] == b'"':
        out = bytearray()
        i += 1
        while i < len(value) and value[i : i + 1] != b'"':
            if value[i : i + 1] == b"\\":
                i += 1
            out += value[i : i + 1]
            i += 1
        token = bytes(out)
    else:
        match = re.match(rb"[^\s;()\"]*", value[i:])
        token = match.group(0) if match else b""
    return _normalise_id(token.decode("utf-8", "replace"))


def _normalise_id(authserv_id: str) -> str:
    return authserv_id.strip().rstrip(".").lower()


def is_ours(field: HeaderField, authserv_id: str) -> bool:
    """Is this an Authentication-Results field claiming to be from ``authserv_id``?"""
    if field.name.lower() != HEADER_NAME.lower():
        return False
    return authserv_id_of(field.value) == _normalise_id(authserv_id)


def strip_authentication_results(message: bytes, authserv_id: str) -> bytes:
    """The message (or header section) without any Authentication-Results field carrying our
    authserv-id (RFC 8601 §5: such fields did not come from us and MUST be removed).

    Continuation lines before the first field are dropped as well: whatever header is prepended
    next would otherwise take them as its own continuation, letting a sender append text to our
    verdict. Everything else, the body included, is kept byte for byte.
    """
    header, rest = split_header(message)
    if header[:1] not in (b" ", b"\t") and b"authentication-results" not in header.lower():
        return message  # nothing to remove: most messages, and no copy of them
    kept: list[bytes] = []
    started = False
    for line_group in _line_groups(header):
        first = line_group[0]
        if first[:1] in (b" ", b"\t") and not started:
            continue  # a leading continuation line: see above
        started = True
        if _starts_field(first) and is_ours(_field(line_group), authserv_id):
            continue
        kept.extend(line_group)
    return b"".join(kept) + rest


def _line_groups(header: bytes) -> list[list[bytes]]:
    """Lines grouped as :func:`header_fields` groups them: a field with its continuation lines;
    any other line alone."""
    groups: list[list[bytes]] = []
    in_field = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and in_field:
            groups[-1].append(line)
            continue
        in_field = _starts_field(line)
        groups.append([line])
    return groups


# -- rendering ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")  # RFC 2045 §5.1 token


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*\Z")
_DOMAIN_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")


def quoted(text: str) -> str:
    """A token (RFC 2045 §5.1) as is, anything else as a quoted-string (RFC 5322 §3.2.4) with
    control characters dropped: values come from senders and must not break the header."""
    if _TOKEN.match(text):
        return text
    escaped = "".join("\\" + c if c in '"\\' else c for c in text if c.isprintable())
    return f'"{escaped}"'


def pvalue(text: str) -> str:
    """RFC 8601 §2.2 pvalue: ``[local-part] "@" domain-name``, a domain name, or a value."""
    local, at, domain = text.rpartition("@")
    if at and _DOT_ATOM.match(local) and _DOMAIN_NAME.match(domain):
        return text
    return quoted(text)


def comment_text(text: str) -> str:
    """Text safe inside a comment: no parentheses, backslashes or control characters."""
    if text.isprintable() and not _COMMENT_UNSAFE.search(text):
        return " ".join(text.split())  # the usual case, without a look at every character
    safe = "".join(c if c.isprintable() and c not in "()\\" else " " for c in text)
    return " ".join(safe.split())


_COMMENT_UNSAFE = re.compile(r"[()\\]")


def _authserv_id_text(authserv_id: str) -> str:
    """RFC 8601 §2.2: authserv-id is a value: a token, or else a quoted-string."""
    return quoted(authserv_id)


def authentication_results(
    authserv_id: str,
    *,
    spf: SPFResult | None = None,
    dkim: Sequence[DKIMResult] | None = None,
    dmarc: DMARCResult | None = None,
    extra: Sequence[str] = (),
    linesep: bytes = b"\r\n",
) -> bytes:
    """The Authentication-Results field (RFC 8601 §2.2) with our verdicts, folded, ending in
    ``linesep``. ``dkim`` empty means the message carried no signature (``dkim=none``); None
    leaves DKIM out. ``extra`` takes further resinfo strings (ARC, later). With nothing to say
    the result is ``none`` (§2.2: no-result)."""
    resinfos: list[str] = []
    if spf is not None:
        resinfos.append(spf.auth_results())
    if dkim is not None:
        resinfos.extend(d.auth_results() for d in dkim)
        if not dkim:
            resinfos.append("dkim=none")
    if dmarc is not None:
        resinfos.append(dmarc.auth_results())
    resinfos.extend(extra)
    head = f"{HEADER_NAME.decode()}: {_authserv_id_text(authserv_id)};"
    if not resinfos:
        return (head + " none").encode("utf-8") + linesep
    parts = [head]
    for n, resinfo in enumerate(resinfos):
        last = n == len(resinfos) - 1
        parts.append(_fold_resinfo(resinfo + ("" if last else ";")))
    text = "\r\n".join(parts)
    if linesep != b"\r\n":
        text = text.replace("\r\n", linesep.decode())
    return text.encode("utf-8") + linesep


@functools.lru_cache(maxsize=1024)
def _fold_resinfo(resinfo: str) -> str:
    """One resinfo on its own line(s) (a tab, and more indent for its continuations), broken at
    spaces so that lines stay within :data:`FOLD_WIDTH` where a word allows (RFC 5322 §2.2.3:
    fold only before WSP)."""
    lines: list[str] = []
    line = ""
    for word in resinfo.split():
        if line and len(line) + 1 + len(word) + 10 > FOLD_WIDTH:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\t" + "\r\n\t  ".join(lines)


__all__ = [
    "HEADER_NAME",
    "HeaderField",
    "authentication_results",
    "authserv_id_of",
    "comment_text",
    "fields_named",
    "header_fields",
    "header_section",
    "is_ours",
    "pvalue",
    "quoted",
    "split_header",
    "strip_authentication_results",
]
