"""SPF record parsing (RFC 7208 §4.5, §4.6, §5, §6, §12): table-driven, plus a property test."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.mailauth.spf_record import (
    Literal,
    Macro,
    Mechanism,
    Record,
    SPFSyntaxError,
    is_spf_record,
    parse_domain_spec,
    parse_record,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=spf1", True),
        ("v=spf1 -all", True),
        ("V=SpF1 ~all", True),  # §4.5: case-insensitive
        ("v=spf10", False),
        ("v=spf1mx", False),  # strings joined without spaces (§3.3)
        ("v=spf2.0/pra", False),
        (" v=spf1", False),
        ("spf1", False),
    ],
)
def test_version_selects_records(text: str, expected: bool) -> None:
    assert is_spf_record(text) is expected


def d(*parts: Literal | Macro) -> tuple[Literal | Macro, ...]:
    return tuple(parts)


net = ipaddress.ip_network

VALID = [
    ("v=spf1", Record()),
    ("v=spf1 ", Record()),  # trailing space allowed (§4.5)
    ("v=spf1 -all", Record((Mechanism("-", "all"),))),
    ("v=spf1 a  -all", Record((Mechanism("+", "a"), Mechanism("-", "all")))),
    ("v=spf1 ?ALL", Record((Mechanism("?", "all"),))),
    ("v=spf1 ip4:192.0.2.0/24", Record((Mechanism("+", "ip4", network=net("192.0.2.0/24")),))),
    ("v=spf1 ip4:1.2.3.4", Record((Mechanism("+", "ip4", network=net("1.2.3.4/32")),))),
    ("v=spf1 ip4:1.1.1.1/0", Record((Mechanism("+", "ip4", network=net("0.0.0.0/0")),))),
    (
        "v=spf1 ip6:Cafe:Babe:8000::/33",
        Record((Mechanism("+", "ip6", network=net("cafe:babe:8000::/33")),)),
    ),
    ("v=spf1 ip6:::1.1.1.1/0", Record((Mechanism("+", "ip6", network=net("::/0")),))),
    ("v=spf1 a/24//64", Record((Mechanism("+", "a", cidr4=24, cidr6=64),))),
    ("v=spf1 mx//0", Record((Mechanism("+", "mx", cidr6=0),))),
    (
        "v=spf1 a:foo.example.com/24",
        Record((Mechanism("+", "a", d(Literal("foo.example.com")), cidr4=24),)),
    ),
    (
        "v=spf1 a:foo:bar/baz.example.com",  # ':' and '/' may appear in a domain-spec
        Record((Mechanism("+", "a", d(Literal("foo:bar/baz.example.com"))),)),
    ),
    (
        "v=spf1 a:foo.example.xn--zckzah",  # a dash in the top label
        Record((Mechanism("+", "a", d(Literal("foo.example.xn--zckzah"))),)),
    ),
    ("v=spf1 ptr", Record((Mechanism("+", "ptr"),))),
    ("v=spf1 ptr:example.Com", Record((Mechanism("+", "ptr", d(Literal("example.Com"))),))),
    (
        "v=spf1 -include:_spf.%{d2}",
        Record((Mechanism("-", "include", d(Literal("_spf."), Macro("d", 2))),)),
    ),
    (
        "v=spf1 exists:%{i}.%{l2r-}.user.%{d2}",
        Record(
            (
                Mechanism(
                    "+",
                    "exists",
                    d(
                        Macro("i"),
                        Literal("."),
                        Macro("l", 2, True, "-"),
                        Literal(".user."),
                        Macro("d", 2),
                    ),
                ),
            )
        ),
    ),
    (
        "v=spf1 redirect=_spf.example.com",
        Record(redirect=d(Literal("_spf.example.com"))),
    ),
    (
        "v=spf1 -all exp=explain.%{d}",
        Record((Mechanism("-", "all"),), explanation=d(Literal("explain."), Macro("d"))),
    ),
    (
        "v=spf1 REDIRECT=a.example.com",  # modifier names are case-insensitive
        Record(redirect=d(Literal("a.example.com"))),
    ),
    (
        "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",  # unknown modifier, ignored
        Record(
            (Mechanism("+", "ip4", network=net("1.2.3.4/32")), Mechanism("-", "all")),
            unknown=(("moo.cow-far_out", d(Literal("man:dog/cat"))),),
        ),
    ),
    ("v=spf1 default=+", Record(unknown=(("default", d(Literal("+"))),))),
    (
        "v=spf1 a:macro%%percent%_%_space%-url-space.example.com",
        Record((Mechanism("+", "a", d(Literal("macro%percent  space%20url-space.example.com"))),)),
    ),
    ("v=spf1 a:%{H}", Record((Mechanism("+", "a", d(Macro("h", escape=True))),))),
    (
        "v=spf1 include:o.spf.example.com.",
        Record((Mechanism("+", "include", d(Literal("o.spf.example.com."))),)),
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_parse_valid(text: str, expected: Record) -> None:
    assert parse_record(text) == expected


INVALID = [
    "v=spf1 ip4:1.2.3.4 -all moo",  # §4.6: an error anywhere, even past a matching term
    "v=spf1 moo.cow/far_out=man:dog/cat",  # '=' must come straight after the name
    "v=spf1 moo.cow:far_out=man:dog/cat",
    "v=spf1 redirect:t2.example.com",  # redirect is a modifier
    "v=spf1 +redirect=t2.example.com",  # modifiers take no qualifier
    "v=spf1 1up=foo",  # a name begins with a letter
    "v=spf1 =all",
    "v=spf1 -all.",
    "v=spf1 -all:foobar",
    "v=spf1 -all/8",
    "v=spf1 ptr/0 -all",
    "v=spf1 ptr:",
    "v=spf1 a:",
    "v=spf1 a:foo-bar -all",  # no "." toplabel
    "v=spf1 a:museum",
    "v=spf1 a:museum.",
    "v=spf1 a:111.222.33.44",  # toplabel all numeric
    "v=spf1 a:abc.123",
    "v=spf1 a:example.-com",
    "v=spf1 a:example.com:8080",
    "v=spf1 a:foo.example.com\0",
    "v=spf1 a/33 -all",
    "v=spf1 a//129 -all",
    "v=spf1 a/24/64 -all",
    "v=spf1 include",
    "v=spf1 include: -all",
    "v=spf1 include:ip5.example.com/24",
    "v=spf1 exists",
    "v=spf1 exists:",
    "v=spf1 exists:mail.example.com/24",
    "v=spf1 ip4",
    "v=spf1 ip4:1.2.3",
    "v=spf1 ip4:1.2.3.4/33",
    "v=spf1 ip4:1.2.3.4/032",  # no leading zeros
    "v=spf1 ip4:1.2.3.4//32",
    "v=spf1 ip4:1.2.3.4:8080",
    "v=spf1 ip4:01.2.3.4",
    "v=spf1 -all ip6",
    "v=spf1 ip6:::1.1.1.1/129",
    "v=spf1 ip6:::1.1.1.1//33",
    "v=spf1 ip6::CAFE::BABE",
    "v=spf1 exp= -all",
    "v=spf1 exp=-all",
    "v=spf1 redirect=-all ?all",
    "v=spf1 ?all redirect=",
    "v=spf1 exp=a.example.com -all exp=b.example.com",  # §6: at most once each
    "v=spf1 redirect=a.example.com redirect=a.example.com",
    "v=spf1 -all foo=%abc",  # unknown modifiers still need valid macro syntax
    "v=spf1 -exists:%(ir).sbl.example.com ?all",
    "v=spf1 exists:foo%.sbl.example.com",
    "v=spf1 a:%{a}.example.com",  # not a macro letter
    "v=spf1 -all exp=%{r}.example.com",  # c, r, t only in explanation text (§7.1)
    "v=spf1 a:%{d0}.example.com",  # a digit transformer must be nonzero (§7.3)
    "v=spf1 a:ctrl.example.com\rptr -all",  # only SP separates terms
    "v=spf1 ip4:192.0.2.5\n include:spf.example.com ~all",
    "v=spf1 a:\xef\xbb\xbfgarbage.example.net -all",  # 7-bit ASCII only (§3.1)
    "v=spf1 a:example.net \x96all",
    "v=spf1 \tall",
    "v=spf2 -all",
]


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(SPFSyntaxError):
        parse_record(text)


def test_ip6_cidr_of_33_is_fine_on_the_ip6_side() -> None:
    assert parse_record("v=spf1 mx//33 -all").mechanisms[0].cidr6 == 33


@pytest.mark.parametrize(
    "spec", ["%{d}", "%{d}.com", "foo.%{d2}", "a.b.c", "a.b.c.", "x.%%", "a-b.c-d", "_spf.x.org"]
)
def test_domain_spec_valid(spec: str) -> None:
    assert parse_domain_spec(spec)


@pytest.mark.parametrize("spec", ["", "%{d}com", "museum", "a.b.1", "a.b.-c", "a b.com", "%"])
def test_domain_spec_invalid(spec: str) -> None:
    with pytest.raises(SPFSyntaxError):
        parse_domain_spec(spec)


_record_chars = st.sampled_from(
    [
        *"v=spf1 +-?~:/.%{}_aAlLdDiIpPsShHoOrRcCtTvV0123456789xmnexpredirctincludeall",
        *("ip4:", "ip6:", "a:", "mx:", "ptr:", "include:", "exists:", "redirect=", "exp="),
        " ",
        "\x00",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_record_chars, max_size=30).map("".join)))
def test_any_text_parses_or_is_a_syntax_error(body: str) -> None:
    for text in (body, "v=spf1 " + body):
        try:
            record = parse_record(text)
        except SPFSyntaxError:
            continue
        assert isinstance(record, Record)
