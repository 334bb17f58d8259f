"""testssl.sh against every TLS endpoint of a running server: no protocol below TLS 1.2, no
weak cipher category, no known vulnerability.

One server (SQLite: this is not a store test) with the certificate Tidings generates for
itself, as the default setup serves it. testssl.sh (Debian package testssl.sh) scans the
three implicit-TLS listeners (submissions 465, imaps 993, pop3s 995) and the four that
upgrade with STARTTLS/STLS (smtp 25, submission 587, imap 143, pop3 110), on their ephemeral
loopback ports, a few at a time, and writes its findings as JSON; the assertions read that.

The checks asked for: ``-p`` protocols, ``-s`` cipher categories, ``-P`` the server's
preferences (its own cipher order), ``-S`` server defaults (the certificate's key, signature
and lifetime), ``-U`` every vulnerability check. Not ``--fast``, which trades checks for time
("omits some checks", says its help); not the per-cipher (``-e``), client-simulation (``-c``)
or HTTP-header (``-h``) checks, which would assert nothing more here.

All of it is one test: under pytest-xdist a module fixture shared by several tests could be
built once per worker, and the scans are the slow part.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import TidingsServer, write_config

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
ON_CI = bool(os.environ.get("CI"))

# On CI a missing testssl.sh fails the test (below) instead of skipping it: CI installs it.
pytestmark = pytest.mark.skipif(
    TESTSSL is None and not ON_CI, reason="testssl.sh is not installed (Debian package testssl.sh)"
)

# listener → the STARTTLS dialect testssl speaks first; None: TLS from the first byte.
ENDPOINTS: dict[str, str | None] = {
    "submissions": None,
    "imaps": None,
    "pop3s": None,
    "smtp": "smtp",
    "submission": "smtp",
    "imap": "imap",
    "pop3": "pop3",
}
# 4 at a time: the 7 scans take about as long as 2 back to back on 2 cores.
CONCURRENT_SCANS = 4
SCAN_TIMEOUT = 300.0

FLAGS = [
    "-p", "-s", "-P", "-S", "-U",
    "--quiet", "--color", "0", "--warnings", "off", "--sneaky",
    # An address, not a name: no DNS lookups at all (not even rDNS, which could hang where
    # there is no resolver); and no CRL or OCSP fetches (--phone-out stays off).
    "--nodns", "none",
    # Against hangs only: a connection or an openssl call takes well under a second here.
    "--connect-timeout", "20", "--openssl-timeout", "20",
]  # fmt: skip

# A self-signed certificate is untrusted by construction: no CA vouches for it, so there is no
# chain of trust, nothing to revoke (no CRL or OCSP responder), no Certificate Transparency log
# and no CAA record naming its issuer. testssl rates those CRITICAL/HIGH/LOW, but they are
# properties of the certificate an operator brings from a CA, not of Tidings' TLS; a real
# certificate configured as tls.cert/tls.key has them. Everything else testssl says about the
# certificate (key size, signature algorithm, names, lifetime) is still asserted.
CERTIFICATE_TRUST = {
    "cert_chain_of_trust",
    "cert_revocation",
    "cert_crlDistributionPoints",
    "cert_ocspURL",
    "OCSP_stapling",
    "cert_mustStapleExtension",
    "certificate_transparency",
    "DNS_CAArecord",
}

# testssl's ratings, lowest first; WARN and FATAL mean a check could not run.
ACCEPTABLE = {"DEBUG", "INFO", "OK"}
FAILING = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN", "FATAL"}

# Checks testssl itself cannot always conclude, with the finding it writes then. Its session
# resumption tests run `openssl s_client -sess_out` with no input, so s_client may hang up
# before the server's TLS 1.3 NewSessionTicket (sent after the handshake) arrives; on a busy
# machine it often does, the session file stays empty, and the second connection fails
# ("check failed because of connect problem"). After STARTTLS the session-ID test also guesses
# from byte counts, and a resumed TLS 1.3 session that gets a fresh ticket looks "new" although
# OpenSSL says "Reused" ("check failed, pls report"; testssl.sh issues #948, #1152). Session
# resumption is a speed-up, not a protection; any other finding about it still counts.
INCONCLUSIVE = {
    "sessionresumption_ticket": "check failed",
    "sessionresumption_ID": "check failed",
}

NOT_OFFERED = ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
OFFERED = ("TLS1_2", "TLS1_3")
# Every vulnerability check of -U that applies to a mail protocol; each must be present and
# rated OK or INFO. BREACH is HTTP-only and never reported here; Ticketbleed, HTTPS-only too,
# is reported (as not applicable) on the implicit-TLS ports only.
HTTPS_ONLY = {"ticketbleed"}
VULNERABILITIES = (
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
)

Findings = dict[str, tuple[str, str]]  # id → (severity, finding)


def scan(listener: str, address: tuple[str, int], starttls: str | None, out: Path) -> Findings:
    """One testssl run against one endpoint; its flat JSON findings by id."""
    assert TESTSSL is not None
    json_file = out / f"{listener}.json"
    cmd = [TESTSSL, *FLAGS, "--jsonfile", str(json_file)]
    if starttls:
        cmd += ["--starttls", starttls]
    host, port = address
    cmd.append(f"{host}:{port}")
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=SCAN_TIMEOUT, check=False, cwd=out,
        env={**os.environ, "TERM": "dumb"},
    )  # fmt: skip
    (out / f"{listener}.txt").write_text(result.stdout + result.stderr)
    # testssl's exit status counts findings, so it says nothing here; the JSON says it all.
    assert json_file.is_file(), (
        f"{listener}: testssl wrote no JSON:\n{result.stdout}{result.stderr}"
    )
    findings: Findings = {}
    for item in json.loads(json_file.read_text()):
        # With several certificates an id carries a " <cert#1>" suffix.
        name = str(item["id"]).split(" ")[0]
        findings[name] = (str(item["severity"]), str(item["finding"]))
    return findings


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Findings]]:
    assert TESTSSL is not None, "testssl.sh is not installed: on CI, apt-get install testssl.sh"
    directory = tmp_path_factory.mktemp("testssl")
    server = TidingsServer(write_config(directory, f"sqlite+aiosqlite:///{directory / 't.db'}"))
    server.start()
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(CONCURRENT_SCANS) as pool:
            futures = {
                name: pool.submit(scan, name, server.addresses[name], starttls, directory)
                for name, starttls in ENDPOINTS.items()
            }
            results = {name: f.result() for name, f in futures.items()}
        print(f"testssl: {len(results)} scans in {time.monotonic() - started:.0f}s")
        yield results
    finally:
        server.stop()


def problems_of(findings: Findings) -> list[str]:
    """Everything wrong in one endpoint's findings, as lines."""
    problems = []

    def expect(name: str, wanted: str) -> None:
        severity, text = findings.get(name, ("MISSING", "not in the JSON"))
        if not text.startswith(wanted):
            problems.append(f"{name}: {text!r} ({severity}), expected {wanted!r}")

    for name in NOT_OFFERED:
        expect(name, "not offered")
    for name in OFFERED:
        expect(name, "offered")
    # Cipher categories: all but the strong ones (testssl 3.0: STRONG; 3.2: STRONG_FS and
    # STRONG_NOFS) absent — NULL, aNULL, EXPORT, LOW (DES, RC2, RC4), 3DES/IDEA, and
    # AVERAGE (3.0) or OBSOLETED (3.2): CBC without AEAD.
    categories = {n: f for n, f in findings.items() if n.startswith("cipherlist_")}
    strong = {n for n in categories if n.startswith("cipherlist_STRONG")}
    if not any(categories[n][1].startswith("offered") for n in strong):
        problems.append(f"no strong cipher category offered: {categories}")
    for name in sorted(set(categories) - strong):
        expect(name, "not offered")
    if len(categories) - len(strong) < 6:
        problems.append(f"cipher categories missing: {sorted(categories)}")
    expect("cipher_order", "server")
    for name in VULNERABILITIES:
        if name in HTTPS_ONLY and name not in findings:
            continue
        severity, text = findings.get(name, ("MISSING", "not in the JSON"))
        if severity not in ACCEPTABLE:
            problems.append(f"{name}: {text!r} ({severity})")
    for name, (severity, text) in sorted(findings.items()):
        if name in CERTIFICATE_TRUST or text.startswith(INCONCLUSIVE.get(name, "\0")):
            continue
        if severity in FAILING:
            problems.append(f"{name}: {text!r} ({severity})")
    return problems


@pytest.mark.slow
@pytest.mark.timeout(2 * SCAN_TIMEOUT + 60)
def test_testssl_finds_no_weakness_on_any_tls_endpoint(scans: dict[str, Findings]) -> None:
    report = {name: problems_of(findings) for name, findings in scans.items()}
    failing = {name: p for name, p in report.items() if p}
    assert not failing, "\n".join(
        f"{name}:\n  " + "\n  ".join(lines) for name, lines in failing.items()
    )
    # The self-signed certificate is the only thing testssl objects to, and only to its trust.
    for name, findings in scans.items():
        assert findings["cert_chain_of_trust"][0] in {"CRITICAL", "HIGH"}, name
