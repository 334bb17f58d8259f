"""The admin CLI end to end, run as a user runs it: ``tidings ...`` in a subprocess.

Each test walks through several commands against one store, on SQLite and on PostgreSQL
(``server_config`` is parametrised through ``db_url``). The contract under test: exit status 0
and the answer on stdout on success; otherwise a non-zero status and exactly one line on
stderr, ``tidings: <reason>``, that names the problem.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from helpers import tidings
from tidings.auth import verify_password
from tidings.config import load_config
from tidings.store import accounts
from tidings.store.db import Store

Result = subprocess.CompletedProcess[str]


def ok(result: Result) -> str:
    """The command succeeded and said nothing on stderr; its stdout."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout


def fails(result: Result, *fragments: str) -> str:
    """The command failed with one line on stderr containing every fragment; that line."""
    assert result.returncode != 0, f"unexpectedly succeeded:\n{result.stdout}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("tidings: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def listed(config: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """The --json output of a list command, parsed."""
    return json.loads(ok(tidings(config, *args, "--json", env=env)))


def password_works(db_url: str, address: str, password: str) -> bool:
    async def check() -> bool:
        store = await Store.open(db_url, migrate=False)
        try:
            hashed = await accounts.get_password_hash(store, address)
        finally:
            await store.close()
        assert hashed is not None, f"no account {address}"
        return verify_password(hashed, password)

    return asyncio.run(check())


def test_init_demo(tmp_path: Path, db_url: str) -> None:
    site = tmp_path / "site"
    # The store comes from the environment, so that init works on both backends; the
    # environment must not end up in the file.
    env = {"TIDINGS_DATABASE__URL": db_url}
    out = ok(tidings(None, "init", "--dir", str(site), "--demo", env=env))
    path = site / "tidings.toml"
    assert f"wrote {path}" in out
    assert "demo user: demo@example.test" in out
    m = re.search(r"^password:\s+(\S+)$", out, re.MULTILINE)
    assert m, out
    password = m.group(1)
    assert f"tidings --config {path} serve" in out

    config = load_config(path, env={})
    assert config.server.hostname == "mail.example.test"
    assert config.data_path == site / "data"
    assert db_url not in path.read_text()
    assert password_works(db_url, "demo@example.test", password)
    assert listed(path, "domain", "list", env=env) == [
        {"name": "example.test", "accounts": 1, "aliases": 0}
    ]

    # A second init must not overwrite the file.
    before = path.read_text()
    fails(
        tidings(None, "init", "--dir", str(site), "--demo", env=env),
        str(path),
        "already exists",
        "--force",
    )
    assert path.read_text() == before
    assert password_works(db_url, "demo@example.test", password)


def test_domains_and_users(server_config: Path, db_url: str) -> None:
    cfg = server_config
    assert ok(tidings(cfg, "domain", "add", "example.org")) == "added domain example.org\n"
    # Domain names are normalised: case, a trailing dot, IDN → A-labels.
    out = ok(tidings(cfg, "domain", "add", "Bücher.Example."))
    assert out == "added domain xn--bcher-kva.example\n"
    out = ok(
        tidings(
            cfg, "user", "add", "alice@example.org", "--password-stdin", "--quota", "1M",
            input="s3cret password\n",
        )
    )  # fmt: skip
    assert out == "added user alice@example.org\n"  # no password printed when one was given
    out = ok(tidings(cfg, "user", "add", "Bob@Example.ORG", "--password-stdin", input="pw-bob\n"))
    assert out == "added user bob@example.org\n"
    assert listed(cfg, "domain", "list") == [
        {"name": "example.org", "accounts": 2, "aliases": 0},
        {"name": "xn--bcher-kva.example", "accounts": 0, "aliases": 0},
    ]
    out = ok(tidings(cfg, "domain", "remove", "xn--bcher-kva.example"))
    assert out == "removed domain xn--bcher-kva.example\n"
    assert listed(cfg, "user", "list") == [
        {"address": "alice@example.org", "quota_bytes": 1024**2, "used_bytes": 0, "messages": 0},
        {"address": "bob@example.org", "quota_bytes": 0, "used_bytes": 0, "messages": 0},
    ]
    assert password_works(db_url, "alice@example.org", "s3cret password")
    assert password_works(db_url, "bob@example.org", "pw-bob")

    # Refusals: one line each, naming the problem.
    fails(
        tidings(cfg, "user", "add", "carol@nope.example", "--password-stdin", input="x\n"),
        "unknown domain 'nope.example'",
    )
    fails(
        tidings(cfg, "user", "add", "ALICE@example.org", "--password-stdin", input="x\n"),
        "account 'alice@example.org' already exists",
    )
    fails(
        tidings(cfg, "user", "add", "not an address", "--password-stdin", input="x\n"),
        "bad address 'not an address'",
    )
    fails(tidings(cfg, "domain", "remove", "example.org"), "example.org", "still has 2 account")

    # passwd: from stdin, or generated and printed when stdin is not a terminal.
    out = ok(tidings(cfg, "user", "passwd", "alice@example.org", "--password-stdin", input="n3w\n"))
    assert out == "password changed for alice@example.org\n"
    assert password_works(db_url, "alice@example.org", "n3w")
    assert not password_works(db_url, "alice@example.org", "s3cret password")
    out = ok(tidings(cfg, "user", "passwd", "bob@example.org", input=""))
    m = re.search(r"^password: (\S+)$", out, re.MULTILINE)
    assert m, out
    assert password_works(db_url, "bob@example.org", m.group(1))

    out = ok(tidings(cfg, "user", "quota", "alice@example.org", "2G"))
    assert out == "quota for alice@example.org: 2G\n"
    assert ok(tidings(cfg, "user", "remove", "bob@example.org")) == "removed user bob@example.org\n"
    assert listed(cfg, "user", "list", "example.org") == [
        {"address": "alice@example.org", "quota_bytes": 2 * 1024**3, "used_bytes": 0, "messages": 0}
    ]


def test_aliases(server_config: Path) -> None:
    cfg = server_config
    # Without --config, $TIDINGS_CONFIG says where the config is.
    out = ok(tidings(None, "domain", "add", "example.org", env={"TIDINGS_CONFIG": str(cfg)}))
    assert out == "added domain example.org\n"

    # Targets are addresses, not necessarily accounts here (forwarding is allowed).
    out = ok(tidings(cfg, "alias", "add", "info@example.org", "alice@example.org"))
    assert out == "alias info@example.org -> alice@example.org\n"
    out = ok(
        tidings(cfg, "alias", "add", "Team@example.org", "bob@example.org", "alice@example.org")
    )
    assert out == "alias team@example.org -> alice@example.org, bob@example.org\n"
    out = ok(tidings(cfg, "alias", "add", "@example.org", "alice@example.org"))  # catch-all
    assert out == "alias @example.org -> alice@example.org\n"
    assert listed(cfg, "alias", "list") == [
        {"source": "@example.org", "targets": ["alice@example.org"]},
        {"source": "info@example.org", "targets": ["alice@example.org"]},
        {"source": "team@example.org", "targets": ["alice@example.org", "bob@example.org"]},
    ]

    fails(tidings(cfg, "alias", "remove", "nobody@example.org"), "no such alias", "nobody@")

    # Remove one target, then a whole alias.
    ok(tidings(cfg, "alias", "remove", "team@example.org", "bob@example.org"))
    out = ok(tidings(cfg, "alias", "remove", "info@example.org"))
    assert out == "removed alias info@example.org\n"
    assert listed(cfg, "alias", "list", "example.org") == [
        {"source": "@example.org", "targets": ["alice@example.org"]},
        {"source": "team@example.org", "targets": ["alice@example.org"]},
    ]


def test_bad_log_level_is_one_line(tmp_path: Path) -> None:
    result = tidings(tmp_path / "unused.toml", "domain", "list", env={"TIDINGS_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    fails(result, "--log-level", "'loud'")
