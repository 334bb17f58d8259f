"""The public RFC 7208 conformance suite (openspf.org, release 2014.04 with later additions),
run against the SPF evaluator over real DNS: each YAML document's zone data is served by a
DNS server on loopback, and ``tidings.dns`` is pointed at it.

Driver rules, as the suite's header describes them:

* type SPF (99) records are served as such but, per RFC 7208 §3.1, never looked up; a name
  that has SPF records and no TXT entry gets them as TXT too ("auto-magic duplication");
  ``TXT: NONE`` means "no TXT record here" and stops that duplication;
* ``TIMEOUT`` makes every query for a type the name has no record of fail (SERVFAIL here, a
  temporary error for the client; ``tests/integration/test_dns.py`` covers a real timeout);
* ``result`` may list several acceptable results; ``explanation: DEFAULT`` means the domain's
  exp= gave no explanation. Explanations are compared case-insensitively: the suite writes
  the ``%{i}`` nibbles of an IPv6 address in upper case where RFC 7208 §7.4 writes lower.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))

from dnsserver import DNSTestServer
from tidings.dns import Resolver
from tidings.mailauth.spf import SPFResult, spf_for_session

SUITE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "spf" / "rfc7208-tests.yml"
RESOLVER_TIMEOUT = 2.0  # TIMEOUT is answered SERVFAIL, so nothing here waits for it

# Cases that cannot pass, with the reason (none at present).
XFAIL: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    document: int
    name: str
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None  # None: not checked; "DEFAULT": no exp= explanation

    @property
    def id(self) -> str:
        return f"{self.document:02d}-{self.name}"


def _load() -> tuple[list[dict[str, Any]], list[Case]]:
    if not SUITE.exists():
        return [], []
    with SUITE.open(encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    cases = []
    for n, doc in enumerate(documents):
        for name, t in doc["tests"].items():
            result = t["result"]
            results = tuple(result) if isinstance(result, list) else (result,)
            cases.append(
                Case(
                    n, name, str(t["helo"]), str(t["host"]), str(t["mailfrom"]),
                    results, t.get("explanation"),
                )
            )  # fmt: skip
    return documents, cases


DOCUMENTS, CASES = _load()


def zone_from(zonedata: dict[str, list[Any]]) -> dict[str, list[tuple[str, Any]]]:
    """The suite's zone data as a :class:`DNSTestServer` zone (see the module docstring)."""
    zone: dict[str, list[tuple[str, Any]]] = {}
    for name, entries in zonedata.items():
        records: list[tuple[str, Any]] = []
        has_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                records.append(("TIMEOUT", None))
                continue
            ((rtype, value),) = entry.items()
            if rtype == "TXT":
                has_txt = True
                if value == "NONE":
                    continue
            if rtype == "MX":
                value = (value[0], value[1])
            records.append((rtype, value))
        if not has_txt:
            records += [("TXT", v) for t, v in records if t == "SPF"]
        zone[name] = records
    return zone


ZONES = [zone_from(doc["zonedata"]) for doc in DOCUMENTS]


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with DNSTestServer() as server:
        yield server


async def run_case(server: DNSTestServer, case: Case) -> SPFResult:
    server.set_zone(ZONES[case.document])
    resolver = Resolver([server.address], timeout=RESOLVER_TIMEOUT)
    return await spf_for_session(resolver, case.host, case.mailfrom, case.helo)


def verdict(case: Case, outcome: SPFResult) -> str | None:
    """None if ``outcome`` is what the suite accepts, else what is wrong."""
    if str(outcome.result) not in case.results:
        return f"result {outcome.result} ({outcome.comment}), expected {'/'.join(case.results)}"
    if case.explanation is None:
        return None
    if case.explanation == "DEFAULT":
        if outcome.explanation is not None:
            return f"explanation {outcome.explanation!r}, expected none from exp="
        return None
    if (outcome.explanation or "").lower() != case.explanation.lower():
        return f"explanation {outcome.explanation!r}, expected {case.explanation!r}"
    return None


pytestmark = pytest.mark.skipif(not SUITE.exists(), reason=f"{SUITE} not present")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=XFAIL[c.id], strict=True)])
        if c.id in XFAIL
        else pytest.param(c, id=c.id)
        for c in CASES
    ],
)
async def test_rfc7208_case(dns_server: DNSTestServer, case: Case) -> None:
    outcome = await run_case(dns_server, case)
    problem = verdict(case, outcome)
    assert problem is None, f"{case.id}: {problem}"


async def test_rfc7208_suite_pass_count(
    dns_server: DNSTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole suite in one go, with the count printed (``-s`` or ``-rA`` to see it)."""
    failures = {}
    for case in CASES:
        problem = verdict(case, await run_case(dns_server, case))
        if problem is not None:
            failures[case.id] = problem
    passed = len(CASES) - len(failures)
    with capsys.disabled():
        print(f"\nRFC 7208 conformance: {passed}/{len(CASES)} passed")
    assert len(CASES) == 203
    assert set(failures) == set(XFAIL), failures
