"""Faults under load: the database server stopped and started, its disk full, and the Tidings
process SIGKILLed over and over.

Each test drives raw clients (SMTP, IMAP and POP3 spoken by hand over asyncio streams, so every
reply is seen exactly as sent and none is hidden behind a library's exception) against
``tidings serve`` in a child process, injects the fault, and then compares what the clients
were told with what the store holds. Every message carries a unique ``X-Fault-Id`` header.

The invariants, whatever the fault:

- a ``250`` means stored: every acknowledged message is in each local recipient's mailbox
  exactly once, complete, and reaches each remote recipient's MX at least once;
- a failure is temporary and says which: SMTP ``451 4.3.0`` (storage unavailable) or
  ``452 4.3.1`` (mail system full, RFC 3463 §3.4), IMAP ``NO [UNAVAILABLE]`` (RFC 5530 §3),
  POP3 ``-ERR [SYS/TEMP]`` (RFC 3206 §4); the session goes on and no login fails for it;
- UIDs only go up: none is given to two messages, UIDVALIDITY never changes;
- service resumes by itself, without restarting Tidings.

Each test prints its counts (``pytest -rP`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import random
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy import func, select, text

from dnsserver import DNSTestServer
from helpers import TidingsServer, add_alias, add_users, open_store, queued, write_config
from peer import SMTPPeer
from pg import PostgresServer, free_port, start_postgres
from tidings.smtp.inbound import not_stored_reply
from tidings.store.db import StorageFull, Store, StoreError, store_error
from tidings.store.models import Account, Blob, Mailbox, Message

SENDER = "load@sender.example"
IO_TIMEOUT = 30.0
FAULT_ID = re.compile(rb"^X-Fault-Id: (\S+)\r?$", re.MULTILINE | re.IGNORECASE)
FETCH_UID = re.compile(rb"\bUID (\d+)")
UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
FETCH_ID = "BODY.PEEK[HEADER.FIELDS (X-Fault-Id)]"
ZONE: dict[str, list[tuple[str, Any]]] = {
    "remote.test": [("MX", (10, "mx.remote.test"))],
    "mx.remote.test": [("A", "127.0.0.1")],
}


# --- clients ------------------------------------------------------------------------------------


class Wire:
    """One connection over asyncio streams; a connection that ends mid-reply is an EOFError."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Any:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), IO_TIMEOUT)
        return cls(reader, writer)

    async def line(self) -> bytes:
        data = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)
        if not data.endswith(b"\n"):
            raise EOFError(f"connection closed; pending {data[:80]!r}")
        return data.rstrip(b"\r\n")

    async def exact(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), IO_TIMEOUT)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


class SmtpWire(Wire):
    async def reply(self) -> str:
        """One reply, its lines joined with newlines."""
        lines = []
        while True:
            line = (await self.line()).decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    async def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def greet(self) -> str:
        greeting = await self.reply()
        if not greeting.startswith("220"):
            return greeting
        return await self.command("EHLO load.example")

    async def transaction(self, recipients: list[str], content: bytes) -> str:
        """The reply that ended the transaction: a refusal on the way, or DATA's last reply."""
        reply = await self.command(f"MAIL FROM:<{SENDER}>")
        if reply.startswith("250"):
            for recipient in recipients:
                reply = await self.command(f"RCPT TO:<{recipient}>")
                if not reply.startswith("250"):
                    break
            else:
                reply = await self.command("DATA")
                if reply.startswith("354"):
                    self.send(content + b".\r\n")
                    return await self.reply()
        if not (await self.command("RSET")).startswith("250"):
            raise EOFError("RSET refused")
        return reply


class ImapWire(Wire):
    counter = 0

    async def response(self) -> bytes:
        """One response line with the literals it carries spliced in."""
        line = await self.line()
        while (m := re.search(rb"\{(\d+)\}$", line)) is not None:
            line += b"\r\n" + await self.exact(int(m.group(1))) + await self.line()
        return line

    async def command(self, command: str, literal: bytes | None = None) -> tuple[str, list[bytes]]:
        """``tag command``: (the tagged status line without its tag, the untagged lines)."""
        self.counter += 1
        tag = f"t{self.counter}".encode()
        untagged: list[bytes] = []
        if literal is None:
            self.send(tag + b" " + command.encode() + b"\r\n")
        else:
            self.send(tag + b" " + command.encode() + b" {%d}\r\n" % len(literal))
            while not (line := await self.response()).startswith(b"+"):
                if line.startswith(tag + b" "):
                    return line[len(tag) + 1 :].decode("utf-8", "replace"), untagged
                untagged.append(line)
            self.send(literal + b"\r\n")
        while True:
            line = await self.response()
            if line.startswith(tag + b" "):
                return line[len(tag) + 1 :].decode("utf-8", "replace"), untagged
            untagged.append(line)


def kind(reply: str) -> str:
    """What a reply is, for counting: ``250``, ``451 4.3.0``, ``OK``, ``NO [UNAVAILABLE]``,
    ``-ERR [SYS/TEMP]``: a success by its code alone, a failure with its detail code."""
    words = reply.split("\n", 1)[0].split(" ")
    head = words[0]
    if head in ("OK", "+OK") or head.startswith("2"):
        return head
    if len(words) > 1 and (words[1].startswith("[") or re.fullmatch(r"\d\.\d+\.\d+", words[1])):
        return f"{head} {words[1]}"
    return head


# --- what the clients saw -------------------------------------------------------------------------


@dataclass
class Tally:
    """Every client's view: what was sent, what the server answered, what looked wrong."""

    allowed: set[str]  # reply kinds that are no fault (e.g. "250", "451 4.3.0", "OK")
    sent: dict[str, list[str]] = field(default_factory=dict)  # fault id → recipients
    contents: dict[str, bytes] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)  # fault id → final SMTP reply
    counts: Counter[str] = field(default_factory=Counter)  # "channel kind" → replies
    events: list[tuple[float, str, bool]] = field(default_factory=list)  # (when, channel, ok)
    unexpected: list[str] = field(default_factory=list)
    uidvalidity: set[int] = field(default_factory=set)  # from the IMAP clients' SELECTs
    uids: dict[int, str] = field(default_factory=dict)  # UID → the fault id it was seen with
    uid_conflicts: list[str] = field(default_factory=list)
    deleting: set[str] = field(default_factory=set)  # fault ids an IMAP client flagged \Deleted

    @property
    def acknowledged(self) -> set[str]:
        return {i for i, reply in self.replies.items() if reply.startswith("250")}

    def saw(self, channel: str, reply: str) -> bool:
        """Count a reply; whether it was a success. A kind not allowed is noted as a fault."""
        k = kind(reply)
        self.counts[f"{channel} {k}"] += 1
        ok = k in ("250", "OK", "+OK")
        self.events.append((time.monotonic(), channel, ok))
        if k not in self.allowed:
            self.unexpected.append(f"{channel}: {reply[:200]}")
        return ok

    def first_success(self, channel: str, after: float) -> float | None:
        times = [t for t, c, ok in self.events if c == channel and ok and t >= after]
        return min(times) - after if times else None

    async def served(self, channels: tuple[str, ...], since: float, timeout: float) -> None:
        """Until each channel has had a success after ``since`` (or ``timeout`` passed)."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            if all(self.first_success(c, since) is not None for c in channels):
                return
            await asyncio.sleep(0.02)

    def failures(self, channel: str, start: float, end: float) -> int:
        return sum(1 for t, c, ok in self.events if c == channel and not ok and start <= t <= end)


class Target:
    """Where the server listens now: None from a kill until the restart is ready."""

    def __init__(self, server: TidingsServer) -> None:
        self.server = server
        self.addresses: dict[str, tuple[str, int]] | None = dict(server.addresses)
        self.generation = 0  # one more per kill: a connection lost across one is no fault
        self.kills = 0

    def address(self, name: str) -> tuple[str, int] | None:
        return None if self.addresses is None else self.addresses[name]

    def kill(self) -> None:
        self.generation += 1
        self.addresses = None
        self.server.kill()
        self.kills += 1

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        self.addresses = dict(self.server.addresses)


Outgoing = tuple[str, list[str], bytes]  # fault id, recipients, content


async def smtp_load(
    target: Target, tally: Tally, stop: asyncio.Event, next_message: Callable[[], Outgoing]
) -> None:
    """One client sending message after message, reconnecting when the server went away."""
    while not stop.is_set():
        address = target.address("smtp")
        generation = target.generation
        if address is None:
            await asyncio.sleep(0.05)
            continue
        wire: SmtpWire | None = None
        try:
            wire = await SmtpWire.open(address)
            greeting = await wire.greet()
            if not greeting.startswith("250"):
                tally.unexpected.append(f"smtp greeting: {greeting}")
                await asyncio.sleep(0.1)
                continue
            while not stop.is_set():
                ident, recipients, content = next_message()
                tally.sent[ident] = recipients
                tally.contents[ident] = content
                reply = await wire.transaction(recipients, content)
                tally.replies[ident] = reply
                tally.saw("smtp", reply)
                if reply.startswith("4"):
                    await asyncio.sleep(0.05)  # a real client would wait far longer
        except (OSError, EOFError) as e:
            if generation == target.generation:
                tally.unexpected.append(f"smtp connection lost: {e!r}")
            await asyncio.sleep(0.05)
        finally:
            if wire is not None:
                wire.close()


async def imap_load(
    target: Target, tally: Tally, stop: asyncio.Event, account: str, *, mutate: bool
) -> None:
    """One client logged in with INBOX selected: FETCH and NOOP (and with ``mutate`` STORE
    and EXPUNGE) in a loop, logging in and selecting again when a command said NO."""
    rng = random.Random(account)
    while not stop.is_set():
        address = target.address("imap")
        generation = target.generation
        if address is None:
            await asyncio.sleep(0.05)
            continue
        wire: ImapWire | None = None
        try:
            wire = await ImapWire.open(address)
            await wire.response()  # greeting
            await imap_session(wire, tally, stop, account, mutate=mutate, rng=rng)
        except (OSError, EOFError) as e:
            if generation == target.generation:
                tally.unexpected.append(f"imap connection lost: {e!r}")
            await asyncio.sleep(0.05)
        finally:
            if wire is not None:
                wire.close()


async def imap_command(wire: ImapWire, tally: Tally, command: str) -> tuple[bool, list[bytes]]:
    status, untagged = await wire.command(command)
    for line in untagged:
        if line.startswith(b"* BYE"):
            tally.unexpected.append(f"imap {command}: {line!r}")
            raise EOFError("BYE")
    return tally.saw("imap", status), untagged


async def imap_session(
    wire: ImapWire, tally: Tally, stop: asyncio.Event, account: str, *, mutate: bool,
    rng: random.Random,
) -> None:  # fmt: skip
    logged_in = selected = False
    highest = 0
    while not stop.is_set():
        if not logged_in:
            logged_in, _ = await imap_command(wire, tally, f"LOGIN {account} secret")
        elif not selected:
            selected, untagged = await imap_command(wire, tally, "SELECT INBOX")
            for line in untagged:
                if m := UIDVALIDITY.search(line):
                    tally.uidvalidity.add(int(m.group(1)))
        else:
            fetch = f"UID FETCH {highest + 1}:* (UID FLAGS {FETCH_ID})"
            _, untagged = await imap_command(wire, tally, fetch)
            for line in untagged:
                uid, ident = FETCH_UID.search(line), FAULT_ID.search(line)
                if uid is None or ident is None:
                    continue
                n, name = int(uid.group(1)), ident.group(1).decode()
                highest = max(highest, n)
                if tally.uids.setdefault(n, name) != name:
                    tally.uid_conflicts.append(f"UID {n}: {tally.uids[n]} then {name}")
            await imap_command(wire, tally, "NOOP")
            if mutate and tally.uids and rng.random() < 0.5:
                uid = rng.choice(sorted(tally.uids)[-50:])
                if rng.random() < 0.5:
                    tally.deleting.add(tally.uids[uid])  # before: the STORE may be committed
                    await imap_command(wire, tally, f"UID STORE {uid} +FLAGS (\\Deleted)")
                    await imap_command(wire, tally, "EXPUNGE")
                else:
                    await imap_command(wire, tally, f"UID STORE {uid} +FLAGS (\\Seen)")
        await asyncio.sleep(0.02)


async def imap_login_load(target: Target, tally: Tally, stop: asyncio.Event, account: str) -> None:
    """A client that logs in and out over and over: none of its logins may fail for the
    server's fault (NO [AUTHENTICATIONFAILED]) or be counted as a failed login."""
    while not stop.is_set():
        address = target.address("imap")
        assert address is not None
        wire = await ImapWire.open(address)
        try:
            await wire.response()
            status, _ = await wire.command(f"LOGIN {account} secret")
            tally.saw("login", status)
            await wire.command("LOGOUT")
        except (OSError, EOFError) as e:
            tally.unexpected.append(f"imap login connection lost: {e!r}")
        finally:
            wire.close()
        await asyncio.sleep(0.05)


async def pop3_load(target: Target, tally: Tally, stop: asyncio.Event, account: str) -> None:
    """A POP3 client: log in, read the first message, quit; over and over."""
    while not stop.is_set():
        address = target.address("pop3")
        assert address is not None
        wire = await Wire.open(address)
        try:
            await wire.line()  # greeting
            wire.send(f"USER {account}\r\n".encode())
            await wire.line()
            wire.send(b"PASS secret\r\n")
            reply = (await wire.line()).decode()
            if tally.saw("pop3", reply):
                wire.send(b"RETR 1\r\n")
                reply = (await wire.line()).decode()
                tally.saw("pop3", reply)
                if reply.startswith("+OK"):
                    while await wire.line() != b".":
                        pass
            wire.send(b"QUIT\r\n")
            await wire.line()
        except (OSError, EOFError) as e:
            tally.unexpected.append(f"pop3 connection lost: {e!r}")
        finally:
            wire.close()
        await asyncio.sleep(0.05)


# --- what the store holds -----------------------------------------------------------------------


@dataclass
class Stored:
    """The store after a test: per account, the fault ids of its INBOX in UID order."""

    ids: dict[str, list[str]]
    uids: dict[str, list[int]]  # per account, in the order the rows were inserted
    uidnext: dict[str, int]
    uidvalidity: dict[str, int]
    uid_ids: dict[str, dict[int, str]]
    contents: dict[str, bytes]  # fault id → stored bytes (the last copy seen)
    torn: list[str]  # blobs whose bytes do not match their size or digest
    usage: dict[str, tuple[int, int]]  # account → (used_bytes, sum of its message sizes)


async def read_store(db_url: str, accounts: list[str]) -> Stored:
    stored = Stored({}, {}, {}, {}, {}, {}, [], {})
    async with open_store(db_url) as store, store.read() as conn:
        for account in accounts:
            box = (
                await conn.execute(
                    select(Mailbox.id, Mailbox.uidnext, Mailbox.uidvalidity)
                    .join(Account, Account.id == Mailbox.account_id)
                    .where(Account.address == account, Mailbox.name == "INBOX")
                )
            ).one()
            rows = (
                await conn.execute(
                    select(Message.uid, Blob.data, Blob.size, Blob.sha256)
                    .join(Blob, Blob.id == Message.blob_id)
                    .where(Message.mailbox_id == box.id)
                    .order_by(Message.id)
                )
            ).all()
            stored.uids[account] = [r.uid for r in rows]
            stored.uidnext[account] = box.uidnext
            stored.uidvalidity[account] = box.uidvalidity
            ids, by_uid = [], {}
            for r in sorted(rows, key=lambda r: r.uid):
                data = bytes(r.data)
                if len(data) != r.size or hashlib.sha256(data).hexdigest() != r.sha256:
                    stored.torn.append(f"{account} UID {r.uid}")
                m = FAULT_ID.search(data)
                name = m.group(1).decode() if m else "?"
                ids.append(name)
                by_uid[r.uid] = name
                stored.contents[name] = data
            stored.ids[account], stored.uid_ids[account] = ids, by_uid
            used = await conn.scalar(select(Account.used_bytes).where(Account.address == account))
            total = await conn.scalar(
                select(func.coalesce(func.sum(Message.size), 0))
                .join(Mailbox, Mailbox.id == Message.mailbox_id)
                .join(Account, Account.id == Mailbox.account_id)
                .where(Account.address == account)
            )
            stored.usage[account] = (int(used or 0), int(total or 0))
    return stored


def check_mailboxes(stored: Stored) -> None:
    """UIDs distinct and ascending in the order messages arrived, below UIDNEXT; nothing torn;
    each account's usage counter equal to the sizes of its messages."""
    for account, uids in stored.uids.items():
        assert uids == sorted(set(uids)), f"{account}: UIDs reused or out of order"
        assert not uids or uids[-1] < stored.uidnext[account], f"{account}: UID ≥ UIDNEXT"
        used, total = stored.usage[account]
        assert used == total, f"{account}: used_bytes {used} but its messages take {total}"
    assert stored.torn == [], f"torn messages: {stored.torn}"


def missing_and_doubled(
    tally: Tally, stored: Stored, local: Callable[[str], set[str]], ids: set[str]
) -> tuple[list[str], list[str], int]:
    """Among ``ids``: (copies missing, copies stored more than once, copies found)."""
    counts = {a: Counter(i) for a, i in stored.ids.items()}
    missing, doubled, found = [], [], 0
    for ident in sorted(ids):
        for account in local(ident):
            n = counts[account][ident]
            found += n
            if n == 0:
                missing.append(f"{ident}→{account}")
            elif n > 1:
                doubled.append(f"{ident}→{account} ×{n}")
    return missing, doubled, found


def report(title: str, **counts: object) -> None:
    print(f"\n{title}:")
    for name, value in counts.items():
        print(f"  {name.replace('_', ' ')}: {value}")


# --- 0. how store errors are told apart ---------------------------------------------------------


def test_disk_full_is_told_from_the_database_being_down() -> None:
    """What each driver says when the disk is full becomes StorageFull (452 4.3.1); anything
    else the store raises is a plain StoreError (451 4.3.0)."""
    sqlite_full = sqlalchemy.exc.OperationalError(
        "INSERT", {}, sqlite3.OperationalError("database or disk is full")
    )
    pg_orig = RuntimeError("disk full")
    pg_orig.__cause__ = asyncpg.exceptions.DiskFullError("could not extend file")
    pg_full = sqlalchemy.exc.OperationalError("INSERT", {}, pg_orig)
    no_space = OSError(errno.ENOSPC, "No space left on device")
    for error in (sqlite_full, pg_full, no_space):
        assert isinstance(store_error(error), StorageFull), error
        assert not_stored_reply(store_error(error)).startswith("452 4.3.1 ")
    for error in (
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("locked")),
    ):
        assert type(store_error(error)) is StoreError, error
        assert not_stored_reply(store_error(error)).startswith("451 4.3.0 ")


async def test_a_database_that_refuses_connections_is_a_store_error() -> None:
    """The system's own exception (ConnectionRefusedError), which SQLAlchemy passes on
    unwrapped from asyncpg's connect, reaches callers as a StoreError."""
    store = await Store.open(
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x", migrate=False
    )
    try:
        with pytest.raises(StoreError):
            async with store.read():
                pass
        with pytest.raises(StoreError):
            await store.run_write(lambda conn: None)
    finally:
        await store.close()


# --- 1. the PostgreSQL server stopped and started under load ------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this module's own: the tests stop it, and other tests must not notice."""
    server = start_postgres()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()


USERS = [f"user{i}@example.org" for i in range(3)]


def numbered_messages(prefix: str, recipients: list[list[str]]) -> Callable[[], Outgoing]:
    counter = itertools.count()

    def next_message() -> Outgoing:
        n = next(counter)
        ident = f"{prefix}-{n}"
        content = (
            f"From: {SENDER}\r\nSubject: {ident}\r\nX-Fault-Id: {ident}\r\n\r\n".encode()
            + b"a line of the body\r\n" * 20
        )
        return ident, recipients[n % len(recipients)], content

    return next_message


CHANNELS = ("smtp", "imap", "login", "pop3")
RECOVERY_LIMIT = 30.0  # seconds from the database being back to each client's first success


async def test_postgres_stopped_and_started_under_load(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    with own_postgres.database() as db_url:
        await add_users(db_url, *USERS)
        config = write_config(
            tmp_path, db_url, imap={"allow_insecure_auth": True},
            pop3={"allow_insecure_auth": True},
        )  # fmt: skip
        server = TidingsServer(config).start()
        try:
            pid = server.process.pid if server.process else None
            tally = Tally(allowed={"250", "451 4.3.0", "OK", "NO [UNAVAILABLE]", "+OK",
                                   "-ERR [SYS/TEMP]"})  # fmt: skip
            target = Target(server)
            stop = asyncio.Event()
            messages = numbered_messages("pg", [[u] for u in USERS] + [USERS[:2]])
            # The POP3 client reads user2's first message: there must be one.
            one = await SmtpWire.open(server.smtp)
            await one.greet()
            assert (await one.transaction([USERS[2]], messages()[2])).startswith("250")
            one.close()
            clients = [
                *(smtp_load(target, tally, stop, messages) for _ in range(4)),
                imap_load(target, tally, stop, USERS[0], mutate=False),
                imap_load(target, tally, stop, USERS[1], mutate=False),
                imap_login_load(target, tally, stop, USERS[2]),
                pop3_load(target, tally, stop, USERS[2]),
            ]
            tasks = [asyncio.create_task(c) for c in clients]
            await asyncio.sleep(1.5)
            down = time.monotonic()
            await asyncio.to_thread(own_postgres.shut_down, "fast")
            await asyncio.sleep(3.0)
            await asyncio.to_thread(own_postgres.start_again)
            up = time.monotonic()
            recovered: dict[str, float | None] = {}
            while time.monotonic() - up < RECOVERY_LIMIT:
                recovered = {c: tally.first_success(c, up) for c in CHANNELS}
                if all(t is not None for t in recovered.values()):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # and it goes on working
            stop.set()
            await asyncio.gather(*tasks)
            assert server.process is not None and server.process.poll() is None
            assert server.process.pid == pid, "Tidings was not restarted"
        finally:
            server.stop()
            log = server.log()
        stored = await read_store(db_url, USERS)

    acknowledged = tally.acknowledged
    failed_smtp = tally.failures("smtp", down, up)
    missing, doubled, found = missing_and_doubled(
        tally, stored, lambda i: set(tally.sent[i]), acknowledged
    )
    refused_but_stored = [
        i for i in tally.replies if i not in acknowledged and i in stored.contents
    ]
    report(
        "PostgreSQL stopped (pg_ctl -m fast) for 3 s under load",
        smtp_messages=len(tally.replies),
        acknowledged=len(acknowledged),
        stored_copies_of_acknowledged=found,
        refused_but_stored=len(refused_but_stored),
        replies=dict(sorted(tally.counts.items())),
        failures_while_down={c: tally.failures(c, down, up) for c in CHANNELS},
        seconds_to_recover=recovered,
        unexpected=tally.unexpected[:10],
    )  # fmt: skip
    assert tally.unexpected == [], tally.unexpected[:20]
    assert failed_smtp > 0 and tally.failures("imap", down, up) > 0, "the outage was not seen"
    assert all(t is not None for t in recovered.values()), f"not recovered: {recovered}"
    assert missing == [], f"acknowledged but not stored: {missing[:20]}"
    assert doubled == [], f"stored twice: {doubled[:20]}"
    check_mailboxes(stored)
    # The logins refused while the database was down did not count against the client.
    assert "too many failures" not in log


# --- 2. the disk fills up ----------------------------------------------------------------------

DISK_MB = 16
SLACK = 64 * 1024  # what the filler leaves free


@contextlib.contextmanager
def tmpfs(where: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` mounted on ``where`` (the tests run as root). Where mounting
    is not allowed the test is skipped, except on CI, where it fails."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", DISK_MB) as where:
        yield where


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file until nothing more fits, then free ``leave`` bytes."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            try:
                while f.write(chunk):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def sized_messages(prefix: str, recipients: list[list[str]], seed: int) -> Callable[[], Outgoing]:
    """Messages of 1 KB to 200 KB, each body line saying its message and line number, so
    that any torn or mixed-up copy shows."""
    rng = random.Random(seed)
    counter = itertools.count()

    def next_message() -> Outgoing:
        n = next(counter)
        ident = f"{prefix}-{n}"
        lines = rng.randint(10, 2500)
        body = b"".join(b"%s line %05d of the body\r\n" % (ident.encode(), k) for k in range(lines))
        content = f"From: {SENDER}\r\nSubject: {ident}\r\nX-Fault-Id: {ident}\r\n\r\n".encode()
        return ident, rng.choice(recipients), content + body

    return next_message


async def run_clients(
    target: Target, tally: Tally, next_message: Callable[[], Outgoing], count: int, senders: int
) -> None:
    """``count`` messages over ``senders`` connections, then stop."""
    stop = asyncio.Event()

    def limited() -> Outgoing:
        message = next_message()
        if len(tally.sent) + 1 >= count:
            stop.set()
        return message

    await asyncio.gather(*(smtp_load(target, tally, stop, limited) for _ in range(senders)))


async def test_disk_full_gives_452_and_delivery_resumes(
    tmp_path: Path, small_disk: Path, dns_server: DNSTestServer
) -> None:
    db_url = f"sqlite+aiosqlite:///{small_disk / 'tidings.db'}"
    await add_users(db_url, *USERS, quota=DISK_MB << 21)  # a quota the disk cannot reach
    await add_alias(db_url, "fwd@example.org", "far@remote.test")
    recipients = [
        [USERS[0]],
        [USERS[1]],
        USERS[:2],
        ["fwd@example.org"],
        [USERS[2], "fwd@example.org"],
    ]
    local = {u: {u} for u in USERS} | {"fwd@example.org": set()}
    with SMTPPeer() as peer:
        config = write_config(
            tmp_path, db_url, imap={"allow_insecure_auth": True},
            dns={"nameservers": [dns_server.address], "timeout": 1.0},
            relay={"port": peer.port, "timeout": 5.0},
            queue={"retry_schedule": [0.5], "lease": 3.0},
        )  # fmt: skip
        server = TidingsServer(config).start()
        try:
            target = Target(server)
            tally = Tally(allowed={"250", "452 4.3.1", "OK", "NO [UNAVAILABLE]"})
            messages = sized_messages("disk", recipients, seed=1)
            peer.on_connect = "close"  # forwarded mail waits in the queue, retried
            await run_clients(target, tally, messages, 10, senders=2)
            before = set(tally.replies)
            assert tally.acknowledged == before, tally.counts

            filler = await asyncio.to_thread(fill, small_disk, SLACK)
            await run_clients(target, tally, messages, 60, senders=3)
            queued_while_full = len(await queued(db_url))
            during = set(tally.replies) - before
            full = [i for i in during if tally.replies[i].startswith("452 4.3.1")]
            # IMAP: the same, as NO [UNAVAILABLE] (RFC 5530 §3).
            imap = await ImapWire.open(server.addresses["imap"])
            await imap.response()
            assert (await imap.command(f"LOGIN {USERS[0]} secret"))[0].startswith("OK")
            appended, _ = await imap.command("APPEND INBOX", appended_message("while-full"))
            await asyncio.sleep(1.0)  # the queue tries, and cannot record its attempts

            filler.unlink()
            peer.on_connect = "serve"
            # Delivery resumes without a restart.
            freed = time.monotonic()
            await run_clients(target, tally, messages, 80, senders=2)
            after = set(tally.replies) - before - during
            resumed = tally.first_success("smtp", freed)
            appended_after, _ = await imap.command("APPEND INBOX", appended_message("after"))
            imap.close()
            remote = {i for i in tally.acknowledged if "fwd@example.org" in tally.sent[i]}
            await asyncio.to_thread(
                peer.wait_until_sync,
                lambda p: remote <= {fault_id(t.content) for t in p.messages},
                30.0,
                "every acknowledged forwarded message",
            )
            await wait_until(lambda: queued(db_url), lambda rows: rows == [], 30.0)
            assert server.process is not None and server.process.poll() is None
        finally:
            server.stop()
        stored = await read_store(db_url, USERS)
        async with open_store(db_url) as store, store.read() as conn:
            integrity = await conn.scalar(text("PRAGMA integrity_check"))
        to_peer = Counter(fault_id(t.content) for t in peer.messages)

    acknowledged = tally.acknowledged
    missing, doubled, found = missing_and_doubled(
        tally, stored, lambda i: set().union(*(local[r] for r in tally.sent[i])), acknowledged
    )
    refused_but_stored = [
        i for i in tally.replies if i not in acknowledged and i in stored.contents
    ]
    damaged = [
        i for i in acknowledged
        if i in stored.contents and not stored.contents[i].endswith(tally.contents[i])
    ]  # fmt: skip
    report(
        f"disk full (SQLite on a {DISK_MB} MB tmpfs, {SLACK // 1024} KB left)",
        messages_before_during_after=(len(before), len(during), len(after)),
        acknowledged=len(acknowledged),
        refused_452_while_full=len(full),
        acknowledged_while_full=len(during & acknowledged),
        stored_copies_of_acknowledged=found,
        refused_but_stored=len(refused_but_stored),
        imap_append_while_full=appended,
        imap_append_after=appended_after,
        seconds_to_first_250_after_freeing=resumed,
        queue_rows_while_full=queued_while_full,
        forwarded_acknowledged=len(remote),
        peer_duplicates=sum(n - 1 for n in to_peer.values() if n > 1),
        replies=dict(sorted(tally.counts.items())),
        unexpected=tally.unexpected[:10],
    )  # fmt: skip
    assert tally.unexpected == [], tally.unexpected[:20]
    assert full, "no message was refused with 452 4.3.1 while the disk was full"
    assert queued_while_full > 0, "no queue rows waited through the full disk"
    assert appended.startswith("NO [UNAVAILABLE]"), appended
    assert appended_after.startswith("OK"), appended_after
    assert "append-while-full" not in stored.contents and "append-after" in stored.contents
    assert {tally.replies[i][:3] for i in after} == {"250"}, "delivery did not resume"
    assert missing == [], f"acknowledged but not stored: {missing[:20]}"
    assert doubled == [], f"stored twice: {doubled[:20]}"
    assert refused_but_stored == [], f"refused but stored: {refused_but_stored[:20]}"
    assert damaged == [], f"stored copies that differ from what was sent: {damaged[:20]}"
    check_mailboxes(stored)
    assert integrity == "ok"


PG_DISK_MB = 96  # a new cluster's data directory takes about 40 MB, a database 8 MB more


async def test_postgres_disk_full_gives_452_and_delivery_resumes(tmp_path: Path) -> None:
    """PostgreSQL with its data directory on a small disk (its WAL elsewhere): a full disk
    fails the insert with SQLSTATE 53100, which SMTP answers with 452 4.3.1."""
    outside = Path(tempfile.mkdtemp(prefix="tidings-pgdisk-"))  # where user postgres may go
    outside.chmod(0o755)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, outside, ignore_errors=True)
        disk = cleanup.enter_context(tmpfs(outside / "disk", PG_DISK_MB))
        cluster = await asyncio.to_thread(start_postgres, disk)
        try:
            with cluster.database() as db_url:
                await add_users(db_url, *USERS)
                server = TidingsServer(write_config(tmp_path, db_url)).start()
                try:
                    target = Target(server)
                    tally = Tally(allowed={"250", "452 4.3.1"})
                    messages = sized_messages("pgdisk", [[u] for u in USERS] + [USERS[:2]], 2)
                    await run_clients(target, tally, messages, 10, senders=2)
                    before = set(tally.replies)
                    assert tally.acknowledged == before, tally.counts
                    filler = await asyncio.to_thread(fill, disk, SLACK)
                    await run_clients(target, tally, messages, 40, senders=3)
                    during = set(tally.replies) - before
                    full = [i for i in during if tally.replies[i].startswith("452 4.3.1")]
                    filler.unlink()
                    freed = time.monotonic()
                    await run_clients(target, tally, messages, 60, senders=2)
                    after = set(tally.replies) - before - during
                    resumed = tally.first_success("smtp", freed)
                    assert server.process is not None and server.process.poll() is None
                finally:
                    server.stop()
                stored = await read_store(db_url, USERS)
        finally:
            await asyncio.to_thread(cluster.stop)

    acknowledged = tally.acknowledged
    missing, doubled, found = missing_and_doubled(
        tally, stored, lambda i: set(tally.sent[i]), acknowledged
    )
    damaged = [
        i for i in acknowledged
        if i in stored.contents and not stored.contents[i].endswith(tally.contents[i])
    ]  # fmt: skip
    report(
        f"disk full (PostgreSQL data directory on a {PG_DISK_MB} MB tmpfs)",
        messages_before_during_after=(len(before), len(during), len(after)),
        acknowledged=len(acknowledged),
        refused_452_while_full=len(full),
        acknowledged_while_full=len(during & acknowledged),
        stored_copies_of_acknowledged=found,
        seconds_to_first_250_after_freeing=resumed,
        replies=dict(sorted(tally.counts.items())),
        unexpected=tally.unexpected[:10],
    )
    assert tally.unexpected == [], tally.unexpected[:20]
    assert full, "no message was refused with 452 4.3.1 while the disk was full"
    assert {tally.replies[i][:3] for i in after} == {"250"}, "delivery did not resume"
    assert missing == [], f"acknowledged but not stored: {missing[:20]}"
    assert doubled == [], f"stored twice: {doubled[:20]}"
    assert damaged == [], f"stored copies that differ from what was sent: {damaged[:20]}"
    check_mailboxes(stored)


def appended_message(name: str) -> bytes:
    """300 KB for IMAP APPEND: far more than the disk has left when it is full."""
    head = f"Subject: appended\r\nX-Fault-Id: append-{name}\r\n\r\n".encode()
    return head + (b"x" * 998 + b"\r\n") * 300


def delivered_to(peer: SMTPPeer) -> list[tuple[str, str]]:
    """(fault id, recipient) of each copy the peer accepted."""
    return [(fault_id(t.content), r) for t in peer.messages for r in t.recipients]


def fault_id(content: bytes) -> str:
    m = FAULT_ID.search(content)
    return m.group(1).decode() if m else "?"


async def wait_until(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), f"still {value!r} after {timeout} s"
            return value
        await asyncio.sleep(0.25)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSTestServer]:
    with DNSTestServer(ZONE) as server:
        yield server


# --- 3. SIGKILL in a loop under mixed load -------------------------------------------------------

KILLS = 20
IMAP_USER = "imap@example.org"
LOCAL_USERS = [*USERS, IMAP_USER]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_loop_under_mixed_load(
    tmp_path: Path, db_url: str, dns_server: DNSTestServer
) -> None:
    await add_users(db_url, *LOCAL_USERS)
    await add_alias(db_url, "fwd@example.org", "far@remote.test")
    await add_alias(db_url, "team@example.org", USERS[2], "team@remote.test")
    local = {u: {u} for u in LOCAL_USERS} | {
        "fwd@example.org": set(), "team@example.org": {USERS[2]},
    }  # fmt: skip
    remote = {u: set() for u in LOCAL_USERS} | {
        "fwd@example.org": {"far@remote.test"}, "team@example.org": {"team@remote.test"},
    }  # fmt: skip
    recipients = [
        [USERS[0]], [USERS[1]], [IMAP_USER], ["fwd@example.org"], ["team@example.org"],
        USERS[:2], [IMAP_USER, "fwd@example.org"],
    ]  # fmt: skip
    rng = random.Random(20)
    with SMTPPeer() as peer:
        config = write_config(
            tmp_path, db_url, imap={"allow_insecure_auth": True},
            dns={"nameservers": [dns_server.address], "timeout": 1.0},
            relay={"port": peer.port, "timeout": 5.0},
            queue={"retry_schedule": [0.5], "lease": 2.0},
        )  # fmt: skip
        server = TidingsServer(config).start()
        before = await read_store(db_url, LOCAL_USERS)
        target = Target(server)
        tally = Tally(allowed={"250", "OK"})
        stop = asyncio.Event()
        messages = numbered_messages("kill", recipients)
        started = time.monotonic()
        try:
            clients = [
                *(smtp_load(target, tally, stop, messages) for _ in range(4)),
                *(imap_load(target, tally, stop, IMAP_USER, mutate=True) for _ in range(3)),
            ]
            tasks = [asyncio.create_task(c) for c in clients]
            for _ in range(KILLS):
                # Once this run of the server has served both SMTP and IMAP, at a random
                # moment: mid-transaction, mid-commit, mid-relay, mid-EXPUNGE...
                await tally.served(("smtp", "imap"), since=time.monotonic(), timeout=10.0)
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                target.kill()
                await target.start()
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*tasks)
            loaded = time.monotonic() - started
            acknowledged = tally.acknowledged
            wanted = {(i, r) for i in acknowledged for rcpt in tally.sent[i] for r in remote[rcpt]}
            await asyncio.to_thread(
                peer.wait_until_sync,
                lambda p: wanted <= set(delivered_to(p)),
                30.0,
                "every acknowledged message for remote recipients",
            )
            rows = await wait_until(lambda: queued(db_url), lambda rows: rows == [], 30.0)
        finally:
            stop.set()
            server.stop()
        stored = await read_store(db_url, LOCAL_USERS)
        delivered = Counter(delivered_to(peer))

    def local_of(ident: str) -> set[str]:
        return set().union(*(local[r] for r in tally.sent[ident]))

    # Messages an IMAP client flagged \Deleted may be gone; everything else must be there.
    kept = acknowledged - tally.deleting
    missing, doubled, found = missing_and_doubled(tally, stored, local_of, kept)
    _, doubled_deleted, _ = missing_and_doubled(
        tally, stored, local_of, acknowledged & tally.deleting
    )
    reused = [
        f"UID {uid}: seen as {ident}, now {stored.uid_ids[IMAP_USER][uid]}"
        for uid, ident in tally.uids.items()
        if stored.uid_ids[IMAP_USER].get(uid, ident) != ident
    ]
    stored_ids = {i for ids in stored.ids.values() for i in ids}
    report(
        f"SIGKILL loop ({db_url.partition(':')[0]})",
        kills=target.kills,
        seconds_under_load=round(loaded, 1),
        messages_sent=len(tally.sent),
        smtp_replies=len(tally.replies),
        acknowledged=len(acknowledged),
        acknowledged_local_copies_stored=found,
        stored_not_acknowledged=len(stored_ids - acknowledged - {"?"}),
        flagged_deleted_by_imap=len(tally.deleting),
        remote_copies_acknowledged=len(wanted),
        delivered_to_peer=sum(delivered.values()),
        duplicates_to_peer=sum(n - 1 for n in delivered.values() if n > 1),
        imap_uids_seen=len(tally.uids),
        queue_rows_left=len(rows),
        replies=dict(sorted(tally.counts.items())),
        unexpected=tally.unexpected[:10],
    )  # fmt: skip
    assert target.kills == KILLS
    assert tally.unexpected == [], tally.unexpected[:20]
    assert missing == [], f"acknowledged but lost: {missing[:20]}"
    assert doubled == [] and doubled_deleted == [], (
        f"stored twice: {(doubled + doubled_deleted)[:20]}"
    )
    assert tally.uid_conflicts == [] and reused == [], (tally.uid_conflicts + reused)[:20]
    assert tally.uidvalidity == {before.uidvalidity[IMAP_USER]}
    assert stored.uidvalidity == before.uidvalidity
    check_mailboxes(stored)
