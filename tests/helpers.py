"""Test helpers: a real ``tidings serve`` process on loopback, and the CLI run for real."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY = re.compile(r"ready: (.*)$")


def write_config(directory: Path, db_url: str, **sections: dict[str, object]) -> Path:
    """A config for a test server: every listener on a free loopback port, its own data dir."""
    values: dict[str, dict[str, object]] = {
        "server": {"hostname": "mx.tidings.test", "data_dir": str(directory / "data")},
        "database": {"url": db_url},
        "listen": {
            "smtp": "127.0.0.1:0",
            "submission": "127.0.0.1:0",
            "submissions": "127.0.0.1:0",
            "pop3": "127.0.0.1:0",
            "pop3s": "127.0.0.1:0",
            "imap": "127.0.0.1:0",
            "imaps": "127.0.0.1:0",
            "http": "127.0.0.1:0",
            "https": "127.0.0.1:0",
        },
        # Nothing answers there: a test never reaches the Internet's DNS; those that need DNS
        # start a loopback server and say so.
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 1.0},
    }
    for name, keys in sections.items():
        values.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in values.items():
        lines.append(f"[{name}]")
        for key, value in keys.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, list | tuple):
                items = (str(v) if isinstance(v, int | float) else repr(str(v)) for v in value)
                lines.append(f"{key} = [{', '.join(items)}]")
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            else:
                lines.append(f"{key} = {value}")
    path = directory / "tidings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tidings(
    config: Path | None,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the ``tidings`` command as a user would."""
    cmd = [sys.executable, "-m", "tidings"]
    if config is not None:
        cmd += ["--config", str(config)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*cmd, *args], input=input, capture_output=True, text=True, env=full_env,
        timeout=timeout, check=False,
    )  # fmt: skip


@dataclass
class TidingsServer:
    """``tidings serve`` in a child process; addresses parsed from its ready line."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    log_path: Path | None = None
    # Global options before ``serve``, e.g. ["--log-format", "json"].
    options: list[str] = field(default_factory=list)

    def start(self, timeout: float = 30) -> TidingsServer:
        self.log_path = self.config.parent / "server.log"
        self.addresses = {}
        log = self.log_path.open("ab")
        offset = log.tell()  # only this run's lines count
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "--config", str(self.config), *self.options,
             "serve"],
            stdout=log, stderr=log, env={**os.environ, **self.env},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                message = line
                if line.startswith("{"):  # --log-format json
                    with contextlib.suppress(ValueError):
                        message = json.loads(line).get("message", "")
                m = READY.search(message)
                if m:
                    self.addresses = {}
                    for item in m.group(1).split():
                        name, _, hostport = item.partition("=")
                        host, _, port = hostport.rpartition(":")
                        self.addresses[name] = (host, int(port))
            if self.addresses and self.process.poll() is None:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"tidings exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"tidings did not become ready:\n{self.log()}")

    @property
    def smtp(self) -> tuple[str, int]:
        return self.addresses["smtp"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 20) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGTERM, SIGHUP...) to the running server."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> TidingsServer:
        self.stop()
        return self.start()


@contextlib.asynccontextmanager
async def open_store(db_url: str) -> AsyncIterator[Any]:
    """The test's own connection to the server's store, closed afterwards."""
    from tidings.store.db import Store

    store = await Store.open(db_url)
    try:
        yield store
    finally:
        await store.close()


async def stored_messages(db_url: str, address: str, mailbox: str = "INBOX") -> list[bytes]:
    """The bodies in one mailbox of one account, in UID order, as the store holds them."""
    from sqlalchemy import select

    from tidings.store.models import Account, Blob, Mailbox, Message

    async with open_store(db_url) as store, store.read() as conn:
        rows = await conn.execute(
            select(Blob.data)
            .join(Message, Message.blob_id == Blob.id)
            .join(Mailbox, Mailbox.id == Message.mailbox_id)
            .join(Account, Account.id == Mailbox.account_id)
            .where(Account.address == address.lower(), Mailbox.name == mailbox)
            .order_by(Message.uid)
        )
        return [bytes(d) for (d,) in rows]


async def stored_uids(db_url: str, address: str, mailbox: str = "INBOX") -> list[int]:
    """UIDs in one mailbox in the order the rows were inserted."""
    from sqlalchemy import select

    from tidings.store.models import Account, Mailbox, Message

    async with open_store(db_url) as store, store.read() as conn:
        rows = await conn.execute(
            select(Message.uid)
            .join(Mailbox, Mailbox.id == Message.mailbox_id)
            .join(Account, Account.id == Mailbox.account_id)
            .where(Account.address == address.lower(), Mailbox.name == mailbox)
            .order_by(Message.id)
        )
        return [u for (u,) in rows]


async def queued(db_url: str) -> list[tuple[str, str]]:
    """(sender, recipient) of every queue row."""
    from sqlalchemy import select

    from tidings.store.models import QueueItem

    async with open_store(db_url) as store, store.read() as conn:
        rows = await conn.execute(
            select(QueueItem.sender, QueueItem.recipient).order_by(QueueItem.id)
        )
        return [(s, r) for s, r in rows]


async def add_users(db_url: str, *addresses: str, quota: int = 0) -> None:
    """Create the domains and accounts (password "secret") the test needs."""
    from tidings.auth import hash_password
    from tidings.store import accounts

    async with open_store(db_url) as store:
        domains = {d.name for d in await accounts.list_domains(store)}
        hashed = hash_password("secret")
        for address in addresses:
            domain = address.rpartition("@")[2]
            if domain not in domains:
                await accounts.add_domain(store, domain)
                domains.add(domain)
            await accounts.add_account(store, address, hashed, quota)


async def add_domain(db_url: str, domain: str) -> None:
    from tidings.store import accounts

    async with open_store(db_url) as store:
        await accounts.add_domain(store, domain)


async def add_alias(db_url: str, source: str, *targets: str) -> None:
    from tidings.store import accounts

    async with open_store(db_url) as store:
        await accounts.add_alias(store, source, list(targets))


async def create_mailbox(db_url: str, address: str, name: str) -> None:
    from sqlalchemy import select

    from tidings.store import accounts
    from tidings.store.models import Account

    async with open_store(db_url) as store, store.write() as conn:
        account_id = await conn.scalar(select(Account.id).where(Account.address == address))
        assert account_id is not None
        await accounts.create_mailbox(conn, account_id, name)


async def deliver_messages(db_url: str, address: str, contents: list[bytes]) -> None:
    """File messages into ``address``'s INBOX through the one door (MailDelivery), as port 25
    would after accepting them, without an SMTP session."""
    import asyncio

    from tidings.address import parse_mailbox
    from tidings.config import DeliveryConfig
    from tidings.delivery import Delivery, MailDelivery

    async with open_store(db_url) as store:
        delivery = MailDelivery(store, DeliveryConfig(max_batch=256))
        resolution = await delivery.resolve_recipient(parse_mailbox(address))
        await asyncio.gather(
            *(
                delivery.deliver(Delivery(f"t{i}", "s@sender.example", c, resolution.local, ()))
                for i, c in enumerate(contents)
            )
        )


@dataclass(frozen=True)
class MailboxState:
    uids: list[int]
    flags: dict[int, str]
    uidvalidity: int
    highestmodseq: int
    used_bytes: int
    blobs: int  # blob rows in the whole store


async def mailbox_state(db_url: str, address: str, mailbox: str = "INBOX") -> MailboxState:
    """What an IMAP client would see of one mailbox, and the account's usage."""
    from sqlalchemy import func, select

    from tidings.store.models import Account, Blob, Mailbox, Message

    async with open_store(db_url) as store, store.read() as conn:
        box = (
            await conn.execute(
                select(Mailbox.id, Mailbox.uidvalidity, Mailbox.highestmodseq, Account.used_bytes)
                .join(Account, Account.id == Mailbox.account_id)
                .where(Account.address == address.lower(), Mailbox.name == mailbox)
            )
        ).one()
        rows = await conn.execute(
            select(Message.uid, Message.flags)
            .where(Message.mailbox_id == box[0])
            .order_by(Message.uid)
        )
        flags = {uid: f for uid, f in rows}
        blobs = await conn.scalar(select(func.count()).select_from(Blob))
        return MailboxState(list(flags), flags, box[1], box[2], box[3], int(blobs or 0))
