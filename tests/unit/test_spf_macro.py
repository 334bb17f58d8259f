"""SPF macro parsing and expansion (RFC 7208 §7), table-driven on the RFC's own examples."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.mailauth.spf_record import (
    Literal,
    Macro,
    MacroContext,
    SPFSyntaxError,
    expand,
    expand_domain,
    ip_dotted,
    parse_domain_spec,
    parse_macro_string,
)

V4 = MacroContext(
    sender="strong-bad@email.example.com",
    domain="email.example.com",
    ip=ipaddress.IPv4Address("192.0.2.3"),
    helo="mx.example.org",
    receiver="mx.tidings.test",
    timestamp=1700000000,
    validated_name="mail.example.com",
)
V6 = MacroContext(
    sender="strong-bad@email.example.com",
    domain="email.example.com",
    ip=ipaddress.IPv6Address("2001:db8::cb01"),
)

# RFC 7208 §7.4, in order, then the rest of the letters and escapes.
EXAMPLES = [
    ("%{s}", V4, "strong-bad@email.example.com"),
    ("%{o}", V4, "email.example.com"),
    ("%{d}", V4, "email.example.com"),
    ("%{d4}", V4, "email.example.com"),
    ("%{d3}", V4, "email.example.com"),
    ("%{d2}", V4, "example.com"),
    ("%{d1}", V4, "com"),
    ("%{dr}", V4, "com.example.email"),
    ("%{d2r}", V4, "example.email"),
    ("%{l}", V4, "strong-bad"),
    ("%{l-}", V4, "strong.bad"),
    ("%{lr}", V4, "strong-bad"),
    ("%{lr-}", V4, "bad.strong"),
    ("%{l1r-}", V4, "strong"),
    ("%{ir}.%{v}._spf.%{d2}", V4, "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", V4, "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", V4, "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", V4, "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", V4, "example.com.trusted-domains.example.net"),
    (
        "%{ir}.%{v}._spf.%{d2}",
        V6,
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com",
    ),
    ("%{i}", V4, "192.0.2.3"),
    ("%{h}", V4, "mx.example.org"),
    ("%{p}", V4, "mail.example.com"),
    ("%{v}", V6, "ip6"),
    ("%{d128}", V4, "email.example.com"),  # more parts asked for than there are: all of them
    ("%{l2r+-}", V4, "bad.strong"),  # several delimiters
    ("%{s=}", V4, "strong-bad@email.example.com"),
    ("%%%_%-", V4, "% %20"),
    ("%{S}", V4, "strong-bad%40email.example.com"),  # upper case: URL-escaped (§7.3)
    ("%{L}", V4, "strong-bad"),
    ("%{Ir}", V4, "3.2.0.192"),
]


@pytest.mark.parametrize(("spec", "ctx", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_expand(spec: str, ctx: MacroContext, expected: str) -> None:
    assert expand(parse_macro_string(spec), ctx) == expected


EXPLANATION_EXAMPLES = [
    ("%{c} is not one of %{d}'s designated mail servers.", V4,
     "192.0.2.3 is not one of email.example.com's designated mail servers."),
    ("%{c}", V6, "2001:db8::cb01"),  # readable form, not nibbles
    ("checked by %{r} at %{t}", V4, "checked by mx.tidings.test at 1700000000"),
    ("trailing dot stays.", V4, "trailing dot stays."),
    ("http://example.com/why.html?l=%{L}", MacroContext("~jack&jill=up-a_b3.c@e8.example.com",
     "e8.example.com", ipaddress.IPv4Address("192.0.2.1")),
     "http://example.com/why.html?l=~jack%26jill%3Dup-a_b3.c"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "ctx", "expected"), EXPLANATION_EXAMPLES)
def test_expand_explanation(text: str, ctx: MacroContext, expected: str) -> None:
    assert expand(parse_macro_string(text, explanation=True), ctx) == expected


@pytest.mark.parametrize("letter", ["c", "r", "t"])
def test_exp_only_letters_refused_outside_explanations(letter: str) -> None:
    with pytest.raises(SPFSyntaxError):
        parse_macro_string(f"%{{{letter}}}.example.com")
    assert parse_macro_string(f"%{{{letter}}}", explanation=True) == (Macro(letter),)


@pytest.mark.parametrize(
    "text",
    ["%", "%a", "%{", "%{d", "%{x}", "%{d0}", "%{d2r2}", "%{dR.-", "%(d)", "a b", "\x7f", "é"],
)
def test_bad_macro_strings(text: str) -> None:
    with pytest.raises(SPFSyntaxError):
        parse_macro_string(text)


def test_space_only_in_explanations() -> None:
    assert parse_macro_string("a b", explanation=True) == (Literal("a b"),)


def test_parsed_shape() -> None:
    assert parse_macro_string("x.%{L12r+=}.y") == (
        Literal("x."),
        Macro("l", 12, True, "+=", escape=True),
        Literal(".y"),
    )


def test_expand_domain_drops_trailing_dot_and_truncates_from_the_left() -> None:
    ctx = MacroContext("a@somewhat.long.exp.example.com", "x.example.com",
                       ipaddress.IPv4Address("192.0.2.1"))  # fmt: skip
    ms = parse_domain_spec("foobar." + "%{o}." * 8 + "example.com.")
    name = expand_domain(ms, ctx)
    assert name == ".".join(["somewhat.long.exp.example.com"] * 8 + ["example.com"])
    assert len(name) <= 253
    assert expand_domain(parse_domain_spec("%{d}.org."), ctx) == "x.example.com.org"


def test_ip_dotted() -> None:
    assert ip_dotted(ipaddress.IPv4Address("10.0.0.1")) == "10.0.0.1"
    assert ip_dotted(ipaddress.IPv6Address("::1")) == ".".join("0" * 31 + "1")


@given(st.text(max_size=60), st.booleans())
def test_any_text_parses_or_is_a_syntax_error(text: str, explanation: bool) -> None:
    try:
        ms = parse_macro_string(text, explanation=explanation)
    except SPFSyntaxError:
        return
    # Whatever parses also expands.
    assert isinstance(expand(ms, V4), str)
