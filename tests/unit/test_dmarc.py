"""DMARC's pure parts (record parser, alignment, From domains, evaluation, disposition) and
policy discovery on an in-memory resolver."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.dns import DNSTempError, NXDomain, Resolver
from tidings.mailauth.dkim import DKIMResult
from tidings.mailauth.dkim import Result as DKIM
from tidings.mailauth.dmarc import (
    Alignment,
    DMARCRecord,
    DMARCRecordError,
    NotDMARC,
    Policy,
    PolicyLookup,
    Result,
    aligned,
    dmarc_disposition,
    evaluate,
    find_policy,
    from_domains,
    is_dmarc_record,
    organizational_domain,
    parse_record,
)
from tidings.mailauth.spf import Result as SPF
from tidings.mailauth.spf import SPFResult

# -- the record ---------------------------------------------------------------------------------


def test_full_record() -> None:
    record = parse_record(
        "v=DMARC1; p=Quarantine; sp=reject; adkim=s; aspf=S; pct=25; "
        "rua=mailto:a@example.com,mailto:b@example.com!10m; ruf=mailto:f@example.com; fo=1; "
        "future=whatever"
    )
    assert record == DMARCRecord(
        Policy.QUARANTINE, Policy.REJECT, Alignment.STRICT, Alignment.STRICT, 25,
        ("mailto:a@example.com", "mailto:b@example.com!10m"), ("mailto:f@example.com",),
    )  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["v=DMARC2; p=none", "p=none; v=DMARC1", "v=dmarc1; p=none", "v=spf1 -all", "", "DMARC1"],
)
def test_not_a_dmarc_record(text: str) -> None:
    # RFC 7489 §6.3: v= must come first, with exactly "DMARC1"
    assert not is_dmarc_record(text)
    with pytest.raises(NotDMARC):
        parse_record(text)


def test_defaults_and_bad_optional_values() -> None:
    assert parse_record("v=DMARC1;p=reject") == DMARCRecord(Policy.REJECT)
    assert parse_record("V = DMARC1 ; p = none ;") == DMARCRecord(Policy.NONE)
    odd = parse_record("v=DMARC1; p=reject; pct=101; adkim=x; aspf=; rua=not a uri")
    assert odd == DMARCRecord(Policy.REJECT)
    assert parse_record("v=DMARC1; p=reject; p=none").policy is Policy.REJECT  # first counts


def test_bad_policy_follows_section_6_6_3() -> None:
    # step 6: no valid p= (or a bad sp=) and no usable rua= → no DMARC processing
    for text in ("v=DMARC1", "v=DMARC1; p=block", "v=DMARC1; p=reject; sp=drop"):
        with pytest.raises(DMARCRecordError) as info:
            parse_record(text)
        assert not isinstance(info.value, NotDMARC)
    # ... but with a usable rua=, act as if p=none
    record = parse_record("v=DMARC1; p=block; rua=mailto:r@example.com")
    assert record.policy is Policy.NONE and record.policy_invalid


@given(st.text())
def test_parser_never_raises_anything_else(text: str) -> None:
    try:
        record = parse_record(text)
    except DMARCRecordError:
        return
    assert 0 <= record.pct <= 100
    assert is_dmarc_record(text)


_policies = st.sampled_from(["none", "quarantine", "reject"])
_junk = st.text(alphabet=st.characters(blacklist_characters=";="), max_size=10)


@given(
    st.fixed_dictionaries(
        {
            "p": _policies,
            "sp": st.none() | _policies,
            "adkim": st.sampled_from(["r", "s"]),
            "pct": st.integers(0, 100),
            "unknown": st.lists(
                st.tuples(st.from_regex(r"[a-z]{3,6}", fullmatch=True), _junk), max_size=3
            ),
            "space": st.sampled_from(["", " ", "\t"]),
        }
    )
)
def test_generated_records_parse(case: dict[str, Any]) -> None:
    p, sp, adkim, pct, space = (case[k] for k in ("p", "sp", "adkim", "pct", "space"))
    unknown: list[tuple[str, str]] = case["unknown"]
    tags = [f"p={p}", f"adkim={adkim}", f"pct={pct}"]
    if sp is not None:
        tags.append(f"sp={sp}")
    tags += [f"{k}={v}" for k, v in unknown if k not in ("sp", "pct", "rua", "ruf", "aspf")]
    record = parse_record(f"v=DMARC1;{space}" + f"{space};{space}".join(tags))
    assert record.policy == Policy(p)
    assert record.subdomain_policy == (Policy(sp) if sp else None)
    assert record.adkim == Alignment(adkim) and record.pct == pct


# -- domains --------------------------------------------------------------------------------------


def test_organizational_domain() -> None:
    assert organizational_domain("a.b.Example.CO.UK.") == "example.co.uk"
    assert organizational_domain("mail.example.com") == "example.com"
    assert organizational_domain("co.uk") == "co.uk"  # a public suffix is its own


@pytest.mark.parametrize(
    ("domain", "from_domain", "relaxed", "strict"),
    [
        ("example.com", "example.com", True, True),
        ("EXAMPLE.com.", "example.com", True, True),
        ("mail.example.com", "example.com", True, False),
        ("example.com", "news.example.com", True, False),
        ("a.example.com", "b.example.com", True, False),
        ("example.net", "example.com", False, False),
        ("evil-example.com", "example.com", False, False),
        ("", "example.com", False, False),
    ],
)
def test_alignment(domain: str, from_domain: str, relaxed: bool, strict: bool) -> None:
    assert aligned(domain, from_domain, Alignment.RELAXED) is relaxed
    assert aligned(domain, from_domain, Alignment.STRICT) is strict


@pytest.mark.parametrize(
    ("header", "domains"),
    [
        (b"From: Alice <alice@Example.COM>\r\n", ["example.com"]),
        (b'from: a@x.example, "b, c" <b@y.example>\r\n', ["x.example", "y.example"]),
        (b"From: a@x.example\r\nFrom: b@x.example\r\n", ["x.example"]),
        (b"From:\r\n =?utf-8?q?Al?= <a@folded.example>\r\n", ["folded.example"]),
        (b"To: a@x.example\r\n", []),
        (b"From: undisclosed-recipients:;\r\n", []),
        (b"From: nobody\r\n", []),
        (b"From: a@localhost\r\n", []),
    ],
)
def test_from_domains(header: bytes, domains: list[str]) -> None:
    assert from_domains(header) == domains


# -- evaluation -----------------------------------------------------------------------------------


def found(text: str, domain: str = "example.com") -> PolicyLookup:
    return PolicyLookup(parse_record(text), domain)


def dkim(domain: str, result: DKIM = DKIM.PASS) -> DKIMResult:
    return DKIMResult(result, domain, "sel", "rsa-sha256")


def spf(domain: str, result: SPF = SPF.PASS) -> SPFResult:
    return SPFResult(result, domain, f"x@{domain}", "192.0.2.1")


def never() -> float:
    raise AssertionError("pct=100 needs no random number")


def test_evaluate_pass_and_fail() -> None:
    reject = found("v=DMARC1; p=reject")
    ok = evaluate("example.com", reject, None, [dkim("mail.example.com")], rng=never)
    assert (ok.result, ok.disposition, ok.dkim_aligned) == (Result.PASS, Policy.NONE, True)
    ok = evaluate("example.com", reject, spf("example.com"), [], rng=never)
    assert ok.result is Result.PASS and ok.spf_aligned
    for spf_result in (SPF.SOFTFAIL, SPF.NEUTRAL, SPF.FAIL, SPF.TEMPERROR):
        bad = evaluate("example.com", reject, spf("example.com", spf_result), [], rng=never)
        assert (bad.result, bad.disposition) == (Result.FAIL, Policy.REJECT)
    for dkim_result in (DKIM.POLICY, DKIM.FAIL, DKIM.NEUTRAL):
        bad = evaluate("example.com", reject, None, [dkim("example.com", dkim_result)], rng=never)
        assert bad.result is Result.FAIL
    assert "dis=reject" in bad.auth_results() and "header.from=example.com" in bad.auth_results()


def test_subdomain_policy_only_from_the_organisational_record() -> None:
    record = "v=DMARC1; p=reject; sp=none"
    at_org = evaluate("news.example.com", found(record), None, [], rng=never)
    assert (at_org.policy, at_org.disposition) == (Policy.NONE, Policy.NONE)
    exact = evaluate("news.example.com", found(record, "news.example.com"), None, [], rng=never)
    assert exact.policy is Policy.REJECT  # found at the From domain itself: p= applies
    no_sp = evaluate("news.example.com", found("v=DMARC1; p=quarantine"), None, [], rng=never)
    assert no_sp.policy is Policy.QUARANTINE


@pytest.mark.parametrize(
    ("policy", "roll", "disposition", "sampled_out"),
    [
        ("reject", 0.0, Policy.REJECT, False),
        ("reject", 0.3, Policy.QUARANTINE, True),  # §6.6.4: the next less strict policy
        ("quarantine", 0.3, Policy.NONE, True),
        ("quarantine", 0.29, Policy.QUARANTINE, False),
    ],
)
def test_pct(policy: str, roll: float, disposition: Policy, sampled_out: bool) -> None:
    lookup = found(f"v=DMARC1; p={policy}; pct=30")
    result = evaluate("example.com", lookup, None, [], rng=lambda: roll)
    assert (result.disposition, result.sampled_out) == (disposition, sampled_out)


def test_no_record_and_errors() -> None:
    for error in (Result.NONE, Result.TEMPERROR, Result.PERMERROR):
        result = evaluate("example.com", PolicyLookup(None, "", error), None, [], rng=never)
        assert (result.result, result.disposition, result.policy) == (error, Policy.NONE, None)


def test_local_override() -> None:
    failed = evaluate("example.com", found("v=DMARC1; p=reject"), None, [], rng=never)
    assert dmarc_disposition(failed) is Policy.REJECT
    assert dmarc_disposition(failed, ceiling=Policy.QUARANTINE) is Policy.QUARANTINE
    assert dmarc_disposition(failed, ceiling=Policy.NONE) is Policy.NONE
    mild = evaluate("example.com", found("v=DMARC1; p=quarantine"), None, [], rng=never)
    assert dmarc_disposition(mild, ceiling=Policy.QUARANTINE) is Policy.QUARANTINE


# -- policy discovery (§6.6.3) --------------------------------------------------------------------


class FakeResolver(Resolver):
    def __init__(self, zone: dict[str, list[str] | Exception]) -> None:
        self.zone = zone
        self.asked: list[str] = []

    async def txt(self, name: str) -> list[str]:
        self.asked.append(name)
        entry = self.zone.get(name, NXDomain(name))
        if isinstance(entry, Exception):
            raise entry
        return entry


async def test_discovery_falls_back_to_the_organisational_domain() -> None:
    resolver = FakeResolver({"_dmarc.example.com": ["v=spf1 -all", "v=DMARC1; p=reject"],
                             "_dmarc.a.example.com": ["unrelated"]})  # fmt: skip
    lookup = await find_policy(resolver, "b.a.example.com")
    assert lookup.domain == "example.com" and lookup.record is not None
    assert resolver.asked == ["_dmarc.b.a.example.com", "_dmarc.example.com"]
    lookup = await find_policy(resolver, "a.example.com")  # non-DMARC TXT is discarded
    assert lookup.domain == "example.com"


async def test_discovery_outcomes() -> None:
    resolver = FakeResolver({
        "_dmarc.two.example": ["v=DMARC1; p=none", "v=DMARC1; p=reject"],
        "_dmarc.bad.example": ["v=DMARC1; p=maybe"],
        "_dmarc.slow.example": DNSTempError("timeout"),
        "_dmarc.empty.example": [],
    })  # fmt: skip
    assert (await find_policy(resolver, "two.example")).error is Result.PERMERROR
    assert (await find_policy(resolver, "bad.example")).error is Result.PERMERROR
    assert (await find_policy(resolver, "slow.example")).error is Result.TEMPERROR
    assert (await find_policy(resolver, "sub.slow.example")).error is Result.TEMPERROR
    assert (await find_policy(resolver, "empty.example")).error is Result.NONE
    assert (await find_policy(resolver, "nowhere.example")).error is Result.NONE
