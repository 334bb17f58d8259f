"""MTA-STS policy text, TXT record and mx patterns (RFC 8461 §3.1, §3.2, §4.1): pure parts."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.queue.mtasts import Policy, PolicyError, mx_matches, parse_policy, parse_txt

GOOD = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    "max_age: 604800\r\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, Policy("enforce", ("mail.example.com", "*.example.net"), 604800)),
        # LF alone, any field order, blanks around values, unknown fields ignored
        (
            "mode:testing\nmax_age:  86400 \nfoo_bar: baz\nmx: MX.Example.org.\nversion: STSv1\n",
            Policy("testing", ("mx.example.org",), 86400),
        ),
        # no final line break
        ("version: STSv1\nmode: none\nmax_age: 1", Policy("none", (), 1)),
        # "none" may still list mx
        ("version: STSv1\nmode: none\nmx: a.b\nmax_age: 0\n", Policy("none", ("a.b",), 0)),
        # the first of a repeated field counts
        (
            "version: STSv1\nmode: enforce\nmode: none\nmx: a.b\nmax_age: 5\n",
            Policy("enforce", ("a.b",), 5),
        ),
        # max_age above a year counts as a year (§3.2)
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 9999999999\n",
            Policy("enforce", ("a.b",), 31557600),
        ),
    ],
)
def test_parse_policy(text: str, expected: Policy) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 5\n",  # unknown version
        "mode: enforce\nmx: a.b\nmax_age: 5\n",  # no version
        "version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 5\n",  # modes are case-sensitive
        "version: STSv1\nmode: enforce\nmax_age: 5\n",  # enforce without mx
        "version: STSv1\nmode: testing\nmx: a.b\n",  # no max_age
        "version: STSv1\nmode: testing\nmx: a.b\nmax_age: -5\n",
        "version: STSv1\nmode: testing\nmx: a.b\nmax_age: 12345678901\n",  # over 10 digits
        "version: STSv1\nmode: testing\nmx: a.b\nmax_age: ５\n",  # non-ASCII digit
        "version: STSv1\nmode: testing\nmx: a..b\nmax_age: 5\n",  # empty label
        "version: STSv1\nmode: testing\nmx: a.*.b\nmax_age: 5\n",  # wildcard not leftmost
        "version: STSv1\nmode: testing\nmx: *\nmax_age: 5\n",
        "version: STSv1\nmode: testing\nmx:\nmax_age: 5\n",
        "version: STSv1\nmode testing\nmx: a.b\nmax_age: 5\n",  # no colon
        "<html>version: STSv1</html>",
    ],
)
def test_parse_policy_rejects(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.COM.", True),
        ("mail.example.com", "mail2.example.com", False),
        ("*.example.com", "mx1.example.com", True),
        ("*.Example.com.", "MX1.example.COM", True),
        ("*.example.com", "example.com", False),  # the wildcard is one label, not zero
        ("*.example.com", "a.b.example.com", False),  # … nor two (§4.1)
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mx1.example.org", False),
        ("*.example.com", "xexample.com", False),
        ("example.com", "mx.example.com", False),
        ("", "", False),
    ],
)
def test_mx_matches(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


def test_policy_allows_any_of_its_patterns() -> None:
    policy = parse_policy(GOOD)
    assert policy.allows("mail.example.com")
    assert policy.allows("mx7.example.net")
    assert not policy.allows("mx.example.org")


@pytest.mark.parametrize(
    ("records", "policy_id"),
    [
        (["v=STSv1; id=20240101T000000"], "20240101T000000"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1; id=abc;"], "abc"),
        (["v=STSv1; id=abc; ext=1"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),  # other TXT records are ignored
    ],
)
def test_parse_txt(records: list[str], policy_id: str) -> None:
    assert parse_txt(records) == policy_id


@pytest.mark.parametrize(
    "records",
    [
        [],
        ["v=spf1 -all"],
        ["v=STSv1; id=a", "v=STSv1; id=b"],  # §3.1: exactly one
        ["v=STSv1"],  # no id
        ["v=STSv1; id="],
        ["v=STSv1; id=" + "a" * 33],  # at most 32 characters
        ["v=STSv1; id=a-b"],  # letters and digits only
        ["v=STSv1x; id=a"],
        ["v=STSv1; id"],
    ],
)
def test_parse_txt_rejects(records: list[str]) -> None:
    with pytest.raises(PolicyError):
        parse_txt(records)


LINES = st.sampled_from(
    ["version: STSv1", "mode: enforce", "mode: testing", "mode: none", "mx: *.a.b",
     "mx: a.b", "max_age: 86400", "max_age: x", "mx: *", ":", "", "x"]
)  # fmt: skip


@given(st.one_of(st.text(), st.lists(LINES).map("\r\n".join)))
def test_random_policy_text_never_raises_anything_else(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError:
        return
    assert policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age <= 31557600
    assert policy.mx or policy.mode == "none"


@given(st.lists(st.text()), st.text(), st.text())
def test_random_txt_and_hosts_never_raise_anything_else(
    records: list[str], pattern: str, host: str
) -> None:
    with contextlib.suppress(PolicyError):
        parse_txt(records)
    assert isinstance(mx_matches(pattern, host), bool)
