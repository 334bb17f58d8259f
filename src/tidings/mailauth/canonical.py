"""The hot helper steps of DKIM verification, done faster than dkimpy does them.

dkimpy stays the verifier of record: it parses the signatures' tags, reads the keys and selects
the signed fields. What is here repeats, byte for byte, the steps it runs on every message with
regular expressions that together cost more than the RSA check itself: splitting the message
into header fields and body, removing the b= value from the signature field (RFC 6376 §3.7),
and the relaxed canonicalisation of header fields (§3.4.2) and of the body (§3.4.4). Where the
input is unusual (a bare LF, a line dkimpy refuses) dkimpy's own function is called instead.
tests/unit/test_canonical.py compares each step with dkimpy's on a generated corpus.
"""

from __future__ import annotations

import re

import dkim as dkimpy
from dkim.canonicalization import Simple
from dkim.util import DuplicateTag, InvalidTagSpec

# The b= tag of a DKIM-Signature or ARC field and its value (§3.7: "the value of the b= tag ...
# deleted"). dkimpy's pattern allows folding whitespace before every base64 character through a
# nested group; whitespace is all its FWS can match, so this is the same language, in one
# character-class run that the regular-expression engine does not backtrack through.
_B_TAG = re.compile(rb"([;\s]b\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")


def split_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse(message)``: the header fields as dkimpy reads them, and the body.

    dkimpy splits the whole message into lines and joins the body's lines again with CRLF.
    When every line already ends in CRLF (as SMTP delivers it) the body is the bytes after the
    first empty line as they are, and only the header section needs reading, line by line as
    dkimpy reads it.
    """
    headers, start = split_at_body(message)
    return headers, message[start:] if isinstance(start, int) else start


def split_at_body(message: bytes) -> tuple[list[list[bytes]], int | bytes]:
    """:func:`split_message`, with the body given where possible as the index it starts at
    in ``message`` (so that a body of megabytes need not be copied), else as bytes."""
    if message.startswith(b"\r\n") and not _has_bare_lf(message):
        return [], 2
    end = message.find(b"\r\n\r\n")
    if end < 0 or _has_bare_lf(message):
        return dkimpy.rfc822_parse(message)  # type: ignore[no-any-return]
    headers = _header_fields(message[:end])
    if headers is None:  # a line dkimpy refuses: let it raise its own error
        return dkimpy.rfc822_parse(message)  # type: ignore[no-any-return]
    return headers, end + 4


# dkimpy's field name: printable characters up to the first colon.
_FIELD_NAME = re.compile(rb"[\x21-\x7e]+?:")


def _header_fields(header: bytes) -> list[list[bytes]] | None:
    """dkimpy's reading of a header section whose lines all end in CRLF (given without the
    last CRLF): [name, value] pairs, the value with its continuation lines, each CRLF-ended;
    None where dkimpy would raise."""
    fields: list[list[bytes]] = []
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return None
            fields[-1][1] += line + b"\r\n"
            continue
        name = _FIELD_NAME.match(line)
        if name is not None:
            fields.append([line[: name.end() - 1], line[name.end() :] + b"\r\n"])
        elif not line.startswith(b"From "):  # an mbox separator, skipped like dkimpy does
            return None
    return fields


# Counting line ends holds the interpreter lock; a long body is counted a piece at a time.
_PIECE = 256 * 1024


def _has_bare_lf(message: bytes) -> bool:
    """Whether some LF in ``message`` is not preceded by CR."""
    for start in range(0, len(message), _PIECE):
        end = start + _PIECE
        # A CRLF whose LF is at ``start`` has its CR in the previous piece.
        if message.count(b"\n", start, end) != message.count(b"\r\n", max(start - 1, 0), end):
            return True
    return False


def parse_tags(tag_list: bytes) -> dict[bytes, bytes]:
    """A tag=value list (RFC 6376 §3.2) read as dkimpy's ``parse_tag_value`` reads it, errors
    included: specs split at ";" (a trailing one allowed), each at its first "=", names and
    values stripped, a name starting with a letter, no name twice. dkimpy runs a regular
    expression through the module cache for each tag; a signature has a dozen."""
    specs = tag_list.strip().split(b";")
    if not specs[-1]:
        specs.pop()
    tags: dict[bytes, bytes] = {}
    for spec in specs:
        name, equals, value = spec.partition(b"=")
        name = name.strip()
        if not equals or not name[:1].isalpha():
            raise InvalidTagSpec(spec)
        if name in tags:
            raise DuplicateTag(name)
        tags[name] = value.strip()
    return tags


def without_b_value(value: bytes) -> bytes:
    """The signature field's value with the b= value removed, as dkimpy's ``RE_BTAG`` does."""
    return _B_TAG.sub(rb"\1", value)


def relaxed_header(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """§3.4.2 on one header field, as dkimpy's ``Relaxed.canonicalize_headers``: the name in
    lower case, the value unfolded, WSP runs compressed, stripped, and CRLF-terminated."""
    if b"\n" in value:
        # dkimpy removes every CR?LF; an LF left once the CRLFs are gone was a bare one.
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return name.lower().rstrip(), _compress(value).strip() + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """§3.4.4, as dkimpy's ``Relaxed.canonicalize_body``.

    dkimpy first deletes WSP before each CRLF, then compresses the remaining runs. Compressing
    first turns every run into one SP, so deleting an SP before a CRLF afterwards gives the same
    bytes. (dkimpy's first pattern also takes time quadratic in the length of a line of WSP:
    128 ms for 8 KB; this is linear.)
    """
    body = _compress(body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    body = Simple.canonicalize_body(body)  # empty lines at the end, as for "simple"
    return b"" if body == b"\r\n" else body


def _compress(text: bytes) -> bytes:
    """Every run of WSP (SP and HTAB) as one SP (§3.4.2, §3.4.4), as dkimpy's
    ``compress_whitespace``; by whole-string replacements, each pass halving the runs, which
    is many times faster than a regular-expression substitution for each run."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    return text


def canonical_body_piece(relaxed: bool, body: bytes) -> bytes:
    """The body (or a piece of it that ends with a line holding text) canonicalised."""
    return relaxed_body(body) if relaxed else bytes(Simple.canonicalize_body(body))


__all__ = [
    "canonical_body_piece",
    "parse_tags",
    "relaxed_body",
    "relaxed_header",
    "split_at_body",
    "split_message",
    "without_b_value",
]
