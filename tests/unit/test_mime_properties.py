"""tidings.mime on bytes it was not written for: random bytes, damaged messages, random trees.

Whatever comes in, ``analyze`` returns; its JSON round-trips; ENVELOPE and BODYSTRUCTURE parse
as balanced RFC 3501 data; every offset lies inside the message; every part's section is a
slice of the stored bytes. For well-formed trees built here, the sections are exactly the
bodies that were put in, and the stdlib ``email`` parser agrees on the parts.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mime import CASES, _check_invariants, crlf

from tidings.mime import analyze, iter_parts, section_bytes

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that matter to the scanner, so random input reaches the interesting branches.
_PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b"--",
    b"--b",
    b"--b--",
    b":",
    b" ",
    b"\t",
    b'"',
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b",",
    b";",
    b"=?utf-8?q?",
    b"?=",
    b"\xff",
    b"\xc3\xa9",
    b"\x00",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: text/plain; name*0*=utf-8''%C3; name*1*=%A9\r\n",
    b"From: a <b@c>, g: d@e;\r\n",
    b"Subject: =?utf-8?b?w6k=?=\r\n",
    b"Date: 1 Jan 2000 00:00 +0000\r\n",
]
noise = st.lists(st.one_of(st.binary(max_size=8), st.sampled_from(_PIECES)), max_size=40).map(
    b"".join
)


@FAST
@given(noise)
def test_arbitrary_bytes(raw: bytes) -> None:
    _check_invariants(raw, analyze(raw))


@FAST
@given(st.binary(max_size=300))
def test_plain_random_bytes(raw: bytes) -> None:
    _check_invariants(raw, analyze(raw))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from([c.raw for c in CASES])))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        piece = draw(st.one_of(st.binary(min_size=1, max_size=4), st.sampled_from(_PIECES)))
        if op == "insert":
            raw[at:at] = piece
        elif op == "delete":
            del raw[at : at + len(piece)]
        elif op == "replace":
            raw[at : at + len(piece)] = piece
        else:
            del raw[at:]
    return bytes(raw)


@FAST
@given(damaged())
def test_damaged_real_messages(raw: bytes) -> None:
    _check_invariants(raw, analyze(raw))


# ---------------------------------------------------------------------------------------------
# Random well-formed trees: the sections must be what was put in


@dataclass
class Built:
    raw: bytes  # the entity: header, blank line, body
    bodies: dict[str, bytes]  # section (relative to this entity's numbering) → body bytes
    types: dict[str, str]


_text = st.text(alphabet="abc xyz-\n", max_size=30).map(lambda s: crlf(s).rstrip(b"-"))
_leaf_types = st.sampled_from(["text/plain", "text/html", "application/pdf", "image/png"])


def _leaf() -> st.SearchStrategy[Built]:
    return st.builds(
        lambda ctype, body: Built(
            crlf(f"Content-Type: {ctype}\n\n") + body, {"": body}, {"": ctype}
        ),
        _leaf_types,
        _text,
    )


def _number(prefix: str, n: int, rest: str) -> str:
    return ".".join(x for x in (prefix, str(n), rest) if x)


def _multipart(children: list[Built]) -> Built:
    # Unique per nesting level: the outer one hashes bytes that contain the inner one.
    boundary = "=_" + hashlib.sha256(b"|".join(c.raw for c in children)).hexdigest()[:16]
    body = b"preamble\r\n"
    bodies: dict[str, bytes] = {}
    types: dict[str, str] = {}
    for n, child in enumerate(children, 1):
        body += b"--" + boundary.encode() + b"\r\n" + child.raw + b"\r\n"
        for section, data in child.bodies.items():
            bodies[_number("", n, section)] = data
            types[_number("", n, section)] = child.types[section]
    body += b"--" + boundary.encode() + b"--\r\nepilogue\r\n"
    header = crlf(f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n')
    bodies[""] = body
    types[""] = "multipart/mixed"
    return Built(header + body, bodies, types)


def _message(inner: Built) -> Built:
    """A message/rfc822 part around an entity: its numbers go into the entity's."""
    raw = crlf("Content-Type: message/rfc822\n\nSubject: inner\n") + inner.raw
    bodies = {"": raw[raw.index(b"\r\n\r\n") + 4 :]}
    types = {"": "message/rfc822"}
    multipart = inner.types[""] == "multipart/mixed"
    for section, data in inner.bodies.items():
        if multipart and section == "":
            continue
        key = section if multipart else _number("", 1, section)
        bodies[key] = data
        types[key] = inner.types[section]
    return Built(raw, bodies, types)


trees = st.recursive(
    _leaf(),
    lambda kids: st.one_of(
        st.builds(_multipart, st.lists(kids, min_size=1, max_size=4)),
        kids.map(_message),
    ),
    max_leaves=12,
)


@FAST
@given(trees)
def test_random_trees_sections_are_the_bodies_put_in(tree: Built) -> None:
    raw = crlf("From: a@b.test\nSubject: tree\n") + tree.raw
    info = analyze(raw)
    _check_invariants(raw, info)
    if tree.types[""] == "multipart/mixed":
        expected = {k: v for k, v in tree.bodies.items() if k}
        types = {k: v for k, v in tree.types.items() if k}
    else:  # a single-part message: its body is part 1 (RFC 3501 §6.4.5)
        expected = {_number("", 1, k): v for k, v in tree.bodies.items()}
        types = {_number("", 1, k): v for k, v in tree.types.items()}
    got = {section: section_bytes(raw, info, section) for section, _ in iter_parts(info)}
    assert got == expected
    assert {s: f"{p.type}/{p.subtype}" for s, p in iter_parts(info)} == types


def _email_leaves(msg: email.message.Message) -> list[bytes]:
    if msg.is_multipart():
        parts = msg.get_payload()
        assert isinstance(parts, list)
        return [
            leaf
            for part in parts
            if isinstance(part, email.message.Message)
            for leaf in _email_leaves(part)
        ]
    payload = msg.get_payload()
    return [payload.encode("utf-8", "surrogateescape")] if isinstance(payload, str) else []


def test_stdlib_email_agrees_on_leaf_bodies() -> None:
    for case in CASES:
        info = analyze(case.raw)
        ours = [
            section_bytes(case.raw, info, s)
            for s, p in iter_parts(info)
            if not p.is_multipart and p.message is None
        ]
        theirs = _email_leaves(email.message_from_bytes(case.raw, policy=email.policy.compat32))
        assert ours == theirs, case.name
