"""Address parsing (RFC 5321 §4.1.2, RFC 6531 §3.3): table-driven cases and properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.address import (
    Address,
    AddressError,
    normalize_domain,
    parse_domain,
    parse_mailbox,
    parse_params,
    parse_path,
)

# --- parse_path: accepted ------------------------------------------------------------------

ACCEPTED = [
    # (argument after "MAIL FROM:", local part, domain, parameter text)
    ("<user@example.org>", "user", "example.org", ""),
    (" <user@example.org>", "user", "example.org", ""),  # a space after the colon is tolerated
    ("<first.last+tag@example.org>", "first.last+tag", "example.org", ""),
    ("<!#$%&'*+/=?^_`{|}~-@example.org>", "!#$%&'*+/=?^_`{|}~-", "example.org", ""),
    # RFC 5321 §4.1.2 / Appendix C: a source route is accepted and dropped.
    ("<@a.example,@b.example:user@c.example>", "user", "c.example", ""),
    ("<@relay.example:user@c.example>", "user", "c.example", ""),
    ("<@[192.0.2.1]:user@c.example>", "user", "c.example", ""),
    # A quoted local part is kept as sent, quotes included; its "@" is not a domain separator.
    ('<"user@other.example"@ours.example>', '"user@other.example"', "ours.example", ""),
    ('<"john doe"@example.org>', '"john doe"', "example.org", ""),
    ('<"a\\"b"@example.org>', '"a\\"b"', "example.org", ""),
    ('<"a>b"@example.org>', '"a>b"', "example.org", ""),  # ">" inside quotes does not close
    ('<""@example.org>', '""', "example.org", ""),
    # The "%" hack is only a local part character here: nothing routes on it.
    ("<user%other.example@ours.example>", "user%other.example", "ours.example", ""),
    # Domains are lower-cased and lose one trailing dot; the local part keeps its case.
    ("<USER@Example.ORG.>", "USER", "example.org", ""),
    ("<User@MAIL.Example.Org>", "User", "mail.example.org", ""),
    # Address literals (RFC 5321 §4.1.3).
    ("<user@[192.0.2.1]>", "user", "[192.0.2.1]", ""),
    ("<user@[IPv6:2001:db8::1]>", "user", "[ipv6:2001:db8::1]", ""),
    # SMTPUTF8 (RFC 6531): UTF-8 local parts are kept; IDN domains become A-labels.
    ("<jösé@example.org>", "jösé", "example.org", ""),
    ("<用户@例子.广告>", "用户", "xn--fsqu00a.xn--4rr70v", ""),
    ("<user@Bücher.Example>", "user", "xn--bcher-kva.example", ""),
    ("<user@xn--bcher-kva.example>", "user", "xn--bcher-kva.example", ""),
    # Parameters are returned as text, stripped.
    (
        "<user@example.org> SIZE=123 BODY=8BITMIME SMTPUTF8",
        "user",
        "example.org",
        "SIZE=123 BODY=8BITMIME SMTPUTF8",
    ),
    ("<user@example.org>  SIZE=1 ", "user", "example.org", "SIZE=1"),
]


@pytest.mark.parametrize(("arg", "local", "domain", "params"), ACCEPTED)
def test_parse_path_accepts(arg: str, local: str, domain: str, params: str) -> None:
    for allow_null in (True, False):
        address, rest = parse_path(arg, allow_null=allow_null)
        assert address == Address(local, domain)
        assert rest == params


def test_null_path_is_allowed_for_mail() -> None:
    assert parse_path("<>", allow_null=True) == (None, "")
    assert parse_path("<> SIZE=100 BODY=8BITMIME", allow_null=True) == (
        None,
        "SIZE=100 BODY=8BITMIME",
    )


def test_null_path_is_refused_for_rcpt() -> None:
    with pytest.raises(AddressError, match="null"):
        parse_path("<>", allow_null=False)


def test_address_forms() -> None:
    address = parse_mailbox("Alice.Smith@Example.ORG")
    assert str(address) == "Alice.Smith@example.org"
    assert address.key == "alice.smith@example.org"
    assert not address.is_quoted
    assert parse_mailbox('"Alice"@example.org').is_quoted


# --- parse_path: refused -------------------------------------------------------------------

REFUSED = [
    # (argument, a fragment of the reason)
    ("user@example.org", "enclosed in <>"),
    ("", "enclosed in <>"),
    ("<user@example.org", "missing closing >"),
    ("<", "missing closing >"),
    ('<"user@example.org>', "missing closing >"),  # the quote swallows the ">"
    ("<user@example.org>SIZE=1", "space"),
    ("<user>", "expected local@domain"),
    ("<user@>", "invalid domain"),
    ("<@example.org>", "invalid local part"),
    # Two "@": the second part is not a domain; refusing it is what keeps this from relaying.
    ("<user@other.example@ours.example>", "invalid domain"),
    ("<.user@example.org>", "invalid local part"),
    ("<user.@example.org>", "expected local@domain"),
    ("<us..er@example.org>", "expected local@domain"),
    ("<us er@example.org>", "expected local@domain"),
    ("<user@-example.org>", "invalid domain"),
    ("<user@example-.org>", "invalid domain"),
    ("<user@example..org>", "invalid domain"),
    ("<user@exa_mple.org>", "invalid domain"),
    ("<user@[192.0.2.1>", "invalid domain"),
    ("<user@192.0.2.1]>", "invalid domain"),
    ("<@a.example,user@c.example>", "invalid local part"),  # a route needs its ":"
    ("<user@" + "a." * 127 + "org>", "too long"),
    ("<user@bad\u00adlabel.\u00ad>", "internationalised"),
    # Undecodable bytes reach the parser as lone surrogates (surrogateescape): not UTF-8.
    ("<\udcff@example.org>", "invalid local part"),
    ('<"\udcffuser"@example.org>', "invalid local part"),
    ("<user@\udcff.example>", "invalid domain"),
    # IDNA 2003 mapping must not turn a domain into something that is not a host name.
    ("<user@\u0085>", "internationalised"),  # Unicode space: was stripped to an empty domain
    ("<user@ours.example\u2003>", "internationalised"),  # … or to someone else's domain
    ("<user@\u3000>", "internationalised"),
    ("<user@\u00af.example>", "internationalised"),  # macron → " \u0304": a space in an A-label
    ("<user@\u2488.example>", "internationalised"),  # "⒈" → "1.": an empty label
    ("<user@example.\u2488>", "internationalised"),  # … or a trailing dot
    ("<user@" + ".".join(["ü"] * 120) + ">", "internationalised"),  # 959 octets as A-labels
]


@pytest.mark.parametrize(("arg", "reason"), REFUSED)
def test_parse_path_refuses(arg: str, reason: str) -> None:
    with pytest.raises(AddressError, match=re.escape(reason)):
        parse_path(arg, allow_null=True)


# --- parse_mailbox / normalize_domain / parse_domain ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        (" example.org ", "example.org"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("例子.广告", "xn--fsqu00a.xn--4rr70v"),
        ("[IPv6:2001:DB8::1]", "[ipv6:2001:db8::1]"),
        ("[192.0.2.1]", "[192.0.2.1]"),
    ],
)
def test_normalize_domain(text: str, expected: str) -> None:
    assert normalize_domain(text) == expected
    assert normalize_domain(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org", "example.org"),
        ("Mail.Example.ORG.", "mail.example.org"),
        ("  example.org  ", "example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a-b.example", "a-b.example"),
    ],
)
def test_parse_domain_accepts(text: str, expected: str) -> None:
    assert parse_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "invalid domain name"),
        ("localhost", "at least one dot"),
        ("localhost.", "at least one dot"),
        ("example..org", "invalid domain name"),
        ("example.org..", "invalid domain name"),
        ("-example.org", "invalid domain name"),
        ("exa mple.org", "invalid domain name"),
        ("user@example.org", "invalid domain name"),
        ("[192.0.2.1]", "invalid domain name"),  # an administrator adds names, not literals
        ("a." * 128 + "org", "invalid domain name"),
    ],
)
def test_parse_domain_refuses(text: str, reason: str) -> None:
    with pytest.raises(AddressError, match=re.escape(reason)):
        parse_domain(text)


@pytest.mark.parametrize(
    "text",
    ["user", "user@", "@example.org", "user@@example.org", "<user@example.org>", "a b@example.org"],
)
def test_parse_mailbox_refuses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(text)


# --- parse_params --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("SIZE=123 BODY=8BITMIME SMTPUTF8", {"SIZE": "123", "BODY": "8BITMIME", "SMTPUTF8": None}),
        ("size=1 body=7bit", {"SIZE": "1", "BODY": "7bit"}),  # keywords upper-cased, values kept
        ("  SIZE=1   SMTPUTF8  ", {"SIZE": "1", "SMTPUTF8": None}),
        ("X-FOO=bar", {"X-FOO": "bar"}),
        ("ENVID=é", {"ENVID": "é"}),  # RFC 6531: values may be UTF-8
    ],
)
def test_parse_params(text: str, expected: dict[str, str | None]) -> None:
    assert parse_params(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "=123",
        "SIZE=",
        "-SIZE=1",
        "SI_ZE=1",
        "SIZE=1=2",
        "BODY=a\x00b",
        "SIZE=a b=",
        "X=\x7f",
        "ENVID=\udcff",
    ],
)
def test_parse_params_refuses(text: str) -> None:
    with pytest.raises(AddressError, match="invalid parameter"):
        parse_params(text)


# --- properties ----------------------------------------------------------------------------

_ASCII_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")


def _check_parsed(address: Address | None) -> None:
    """What every address parse_path returns must satisfy."""
    if address is None:
        return
    # Valid UTF-8 (no lone surrogates from undecodable bytes), so it can be stored and sent.
    str(address).encode("utf-8")
    domain = address.domain
    if domain.startswith("["):
        assert domain.endswith("]")
    else:
        # Normalised: an ASCII host name of non-empty labels, A-labels for IDNs, no final dot.
        assert _ASCII_DOMAIN.fullmatch(domain), domain
        assert len(domain) <= 255


def _parse_or_refuse(text: str) -> None:
    for allow_null in (True, False):
        try:
            address, _ = parse_path(text, allow_null=allow_null)
        except AddressError:
            continue
        _check_parsed(address)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parse_path_on_any_text_returns_or_raises_address_error(text: str) -> None:
    _parse_or_refuse(text)
    _parse_or_refuse("<" + text + ">")


@settings(max_examples=500, deadline=None)
@given(st.binary())
def test_parse_path_on_any_bytes_returns_or_raises_address_error(data: bytes) -> None:
    # What aiosmtpd hands over: the command argument decoded with surrogateescape.
    text = data.decode("utf-8", errors="surrogateescape")
    _parse_or_refuse(text)
    _parse_or_refuse("<" + text + ">")


_LOCAL = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}", fullmatch=True)
_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_INTL_LABEL = st.text(
    st.characters(min_codepoint=0x80, max_codepoint=0xFFFF, categories=("Ll", "Lo")),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(_LOCAL, st.lists(st.one_of(_LABEL, _INTL_LABEL), min_size=1, max_size=4))
def test_parse_path_on_built_addresses(local: str, labels: list[str]) -> None:
    """Near-valid addresses (IDN labels included): parsed and normalised, or refused cleanly."""
    text = f"<{local}@{'.'.join(labels)}>"
    _parse_or_refuse(text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_params_on_any_text_returns_or_raises_address_error(text: str) -> None:
    try:
        params = parse_params(text)
    except AddressError:
        return
    assert all(k == k.upper() for k in params)
