"""``tidings dkim generate|list|remove`` run as a user runs them, on SQLite and PostgreSQL.

What is checked end to end: the record ``generate`` prints is the one ``dns records`` prints
afterwards; a message signed with the keys :func:`signing_keys` reads back from the store
verifies against that record (with dkimpy, looking the key up where the zone line puts it); every
change moves the directory serial, so running servers pick the new keys up; refusals are one
line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim
from sqlalchemy import select

from helpers import open_store, tidings
from tidings.mailauth.signing import SigningKey, sign_message
from tidings.store.dkimkeys import signing_keys
from tidings.store.models import DirectorySerial

DOMAIN = "tidings.test"
Result = subprocess.CompletedProcess[str]
ZONE_LINE = re.compile(r'^(\S+)\. 3600 IN TXT ((?:"[^"]*" ?)+)$')


def ok(result: Result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout


def fails(result: Result, *fragments: str) -> str:
    """Exit status 1 and exactly one line on stderr, ``tidings: ...`` with every fragment."""
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stdout}{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("tidings: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == ""
    return lines[0]


def today_selectors(suffix: str) -> set[str]:
    """The default selector, allowing for a test that runs across midnight (UTC)."""
    now = datetime.now(UTC)
    return {f"t{day:%Y%m%d}{suffix}" for day in (now.date(), (now - timedelta(minutes=5)).date())}


def generated_record(stdout: str) -> tuple[str, str]:
    """(owner name, TXT text) from ``generate``'s output: zone-file comments, then one record."""
    lines = stdout.splitlines()
    assert all(line.startswith(";") for line in lines[:-1]), stdout
    m = ZONE_LINE.match(lines[-1])
    assert m, lines[-1]
    text = "".join(re.findall(r'"([^"]*)"', m.group(2)))
    return m.group(1), text


def directory_serial(db_url: str) -> int:
    async def read() -> int:
        async with open_store(db_url) as store, store.read() as conn:
            serial = await conn.scalar(select(DirectorySerial.serial))
            assert isinstance(serial, int)
            return serial

    return asyncio.run(read())


def stored_signing_keys(db_url: str) -> dict[str, list[SigningKey]]:
    async def read() -> dict[str, list[SigningKey]]:
        async with open_store(db_url) as store:
            return await store.run_read(signing_keys)

    return asyncio.run(read())


def listed(config: Path, *args: str) -> Any:
    return json.loads(ok(tidings(config, "dkim", "list", *args, "--json")))


def test_generate_list_remove(server_config: Path, db_url: str) -> None:
    config = server_config
    ok(tidings(config, "domain", "add", DOMAIN))
    ok(tidings(config, "domain", "add", "other.test"))

    serial = directory_serial(db_url)
    out = ok(tidings(config, "dkim", "generate", DOMAIN))
    rsa_name, rsa_txt = generated_record(out)
    rsa_selector = rsa_name.split(".")[0]
    assert rsa_selector in today_selectors("r")
    assert rsa_name == f"{rsa_selector}._domainkey.{DOMAIN}"
    assert rsa_txt.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # a 2048-bit SubjectPublicKeyInfo
    assert "PRIVATE KEY" not in out
    assert directory_serial(db_url) > serial

    # ed25519 on the same day: its own default selector, no clash.
    out = ok(tidings(config, "dkim", "generate", DOMAIN, "--algorithm", "ed25519"))
    ed_name, ed_txt = generated_record(out)
    ed_selector = ed_name.split(".")[0]
    assert ed_selector in today_selectors("e")
    assert ed_txt.startswith("v=DKIM1; k=ed25519; p=")

    out = ok(tidings(config, "dkim", "generate", "OTHER.test", "--selector", "Mail-2026.A"))
    assert generated_record(out)[0] == "mail-2026.a._domainkey.other.test"

    keys = listed(config)
    assert [(k["domain"], k["selector"], k["algorithm"]) for k in keys] == [
        ("other.test", "mail-2026.a", "rsa"),
        (DOMAIN, ed_selector, "ed25519"),
        (DOMAIN, rsa_selector, "rsa"),
    ]
    for key in keys:
        created = datetime.strptime(key["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    assert [k["selector"] for k in listed(config, DOMAIN)] == [ed_selector, rsa_selector]
    text = ok(tidings(config, "dkim", "list", DOMAIN))
    assert text.splitlines()[1].split("\t")[:3] == [DOMAIN, rsa_selector, "rsa"]

    # `dns records` derives the same records from the stored keys.
    zone = ok(tidings(config, "dns", "records", DOMAIN)).splitlines()
    for name, txt in ((rsa_name, rsa_txt), (ed_name, ed_txt)):
        (line,) = [z for z in zone if z.startswith(f"{name}. ")]
        assert generated_record(line) == (name, txt)

    # What submission reads back signs mail that verifies against the published records.
    stored = stored_signing_keys(db_url)
    assert sorted(stored) == ["other.test", DOMAIN]
    assert {(k.selector, k.algorithm) for k in stored[DOMAIN]} == {
        (rsa_selector, "rsa"),
        (ed_selector, "ed25519"),
    }
    message = f"From: a@{DOMAIN}\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n".encode()
    signed = sign_message(message, stored[DOMAIN]) + message
    published = {f"{rsa_name}.": rsa_txt, f"{ed_name}.": ed_txt}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return published.get(name.decode(), "").encode()

    verifier = dkim.DKIM(signed)
    assert [verifier.verify(idx=i, dnsfunc=dnsfunc) for i in (0, 1)] == [True, True]

    # Remove: gone from the list, from `dns records`, from signing; the serial moves.
    serial = directory_serial(db_url)
    assert ok(tidings(config, "dkim", "remove", DOMAIN, ed_selector)).startswith("removed")
    assert directory_serial(db_url) > serial
    assert [k["selector"] for k in listed(config, DOMAIN)] == [rsa_selector]
    assert ed_name not in ok(tidings(config, "dns", "records", DOMAIN))
    assert [k.selector for k in stored_signing_keys(db_url)[DOMAIN]] == [rsa_selector]
    fails(tidings(config, "dkim", "remove", DOMAIN, ed_selector), "no DKIM key", ed_selector)

    # A removed domain takes its keys with it (the foreign key cascades on both backends).
    ok(tidings(config, "domain", "remove", "other.test"))
    assert [k["domain"] for k in listed(config)] == [DOMAIN]
    assert sorted(stored_signing_keys(db_url)) == [DOMAIN]


def test_refusals(server_config: Path, db_url: str) -> None:
    config = server_config
    fails(tidings(config, "dkim", "generate", "nowhere.test"), "unknown domain 'nowhere.test'")
    fails(tidings(config, "dkim", "list", "nowhere.test"), "unknown domain")
    fails(tidings(config, "dkim", "remove", "nowhere.test", "s1"), "unknown domain")
    assert listed(config) == []

    ok(tidings(config, "domain", "add", DOMAIN))
    ok(tidings(config, "dkim", "generate", DOMAIN, "--selector", "s1", "--algorithm", "ed25519"))
    serial = directory_serial(db_url)
    # The same selector again, even for the other algorithm: a DNS name holds one key record.
    line = fails(
        tidings(config, "dkim", "generate", DOMAIN, "--selector", "S1"),
        "already has a DKIM key with selector 's1'",
        "--selector",
    )
    assert DOMAIN in line
    assert directory_serial(db_url) == serial  # nothing was written
    fails(tidings(config, "dkim", "generate", DOMAIN, "--selector", "bad_selector"), "selector")
    fails(tidings(config, "dkim", "generate", DOMAIN, "--selector", "s-"), "selector")
    assert [k["selector"] for k in listed(config)] == ["s1"]

    bad = tidings(config, "dkim", "generate", DOMAIN, "--algorithm", "dsa")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr
