"""Load: 1,000 concurrent connections against one ``tidings serve`` process on loopback.

Mixed, all at once, for a bounded time: SMTP senders delivering messages of a few KB to local
users (transactions with pauses), IMAP sessions in IDLE that must receive the ``* n EXISTS``
each delivery causes, IMAP sessions FETCHing envelopes, headers and bodies of random ranges, and
POP3 sessions doing STAT/LIST/RETR that QUIT and log in again every --pop3-hold seconds.

    python3 bench/load.py                        # 1,000 connections, 20 s warm-up, 120 s measured
    python3 bench/load.py --duration 60 --warmup 10 --json /tmp/load.json
    python3 bench/load.py --smtp 50 --idle 800 --fetch 100 --pop3 50 --tls
    python3 bench/load.py --postgres             # a throwaway PostgreSQL (tests/pg.py)
    python3 bench/load.py --dir /tmp/l           # keep the filled store; then --skip-fill

How it runs:

- A config in a temp dir (or --dir): every listener on a free loopback port, plain IMAP and
  POP3 logins allowed (``allow_insecure_auth``; with --tls the clients use 993/995 and SMTP
  STARTTLS instead), and ``[limits] max_connections`` / ``max_connections_per_ip`` raised to
  2,000, since every client comes from 127.0.0.1. RLIMIT_NOFILE is raised for the bench and so
  for the server, its child.
- --users IMAP accounts and one POP3 account per POP3 session (RFC 1939 locks a maildrop to one
  session), each filled with --messages messages of 2-6 KB through ``MailDelivery`` before the
  server starts. Deliveries go to the IMAP accounts; one FETCH session per account trims its
  INBOX back to --messages (STORE \\Deleted + EXPUNGE), so that mailboxes, and what the server
  keeps per selected session, stay the same size over the run and memory can be judged flat.
- Ramp-up (not measured): every connection opened and logged in (Argon2: ~0.1 s of a core per
  login, at most 8 at a time since the server makes more logins from one address wait), IDLE
  sessions SELECT INBOX and enter IDLE. Then --warmup seconds of load whose figures are dropped,
  then --duration seconds measured. Latencies: SMTP from MAIL FROM to the 250 after the data;
  IDLE from the end of a delivery's data to the EXISTS that announces it; IMAP and POP3 from
  command to the end of its response. After the window the senders stop and the IDLE sessions
  get up to 60 s to see every accepted message: one not announced is an error.
- Every second: the server's RSS (/proc/PID/status VmRSS) and CPU, and its ESTABLISHED sockets
  on its own ports (``ss``), so the 1,000 connections are shown open at once; /metrics' IMAP and
  POP3 session gauges beside them. The RSS slope is a least-squares fit over the measured
  window, of every sample and of each 10 s's lowest (an Argon2 check holds 64 MiB while it runs).

The clients run in --processes asyncio processes (uvloop when installed; users split between
them), whose CPU is printed: near 100% of a core means the client, not the server, set the pace.
The server is ``python3 -m tidings`` in a child process, so ``PYTHONPATH=/some/checkout/src``
benchmarks that checkout. Figures are printed, never asserted; the exit status is 1 when there
were errors other than configured limits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import TidingsServer, write_config  # the tests' own helpers
from imap import database  # bench/imap.py: --db-url, --postgres or SQLite in the dir

DOMAIN = "bench.test"
PASSWORD = "bench-password-1"
SENDER = "sender@elsewhere.example"
LOGINS_AT_ONCE = 8  # the server lets 10 logins from one address run at once; more wait
OP_TIMEOUT = 60.0  # a response slower than this is an error ("timeout")
SETTLE = 60.0  # seconds the IDLE sessions get, after the senders stop, to see the last mail
TRIM_SLACK = 20  # a trimming session expunges once its INBOX is this far over --messages
# Replies that are the server's configured limits at work, not failures.
EXPECTED = ("Too many connections",)
PROTOCOLS = ("smtp", "imap", "pop3")


# --- messages and the store -------------------------------------------------------------------

VOCABULARY = (
    "the of and to in is that for it as with was on be by this are from at or an have not "
    "report meeting schedule update review server message account network budget customer "
    "design release version change issue request support office please thanks regards draft "
    "invoice payment order delivery shipment inventory analysis latency throughput database"
)
WORDS = VOCABULARY.split()


def imap_user(i: int) -> str:
    return f"u{i}@{DOMAIN}"


def pop3_user(i: int) -> str:
    return f"p{i}@{DOMAIN}"


def make_message(rng: random.Random, to: str, seq: int, size: int) -> bytes:
    """A plain-text CRLF message of about ``size`` bytes, lines of up to 76 characters."""
    head = (
        f"From: Sender {seq % 97} <s{seq % 97}@elsewhere.example>\r\nTo: <{to}>\r\n"
        f"Subject: load {seq}: {' '.join(rng.choices(WORDS, k=4))}\r\n"
        f"Date: Mon, 3 Jun 2024 10:{seq % 60:02d}:00 +0000\r\n"
        f"Message-ID: <load-{seq}-{rng.getrandbits(40):x}@elsewhere.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    lines: list[str] = []
    total = len(head)
    while total < size:
        line = " ".join(rng.choices(WORDS, k=11))[:76]
        lines.append(line)
        total += len(line) + 2
    return head + ("\r\n".join(lines) + "\r\n").encode()


def fill(db_url: str, users: int, pop3_users: int, count: int) -> None:
    """Domain, accounts (one Argon2 hash for all) and ``count`` messages in each INBOX."""
    from tidings.address import parse_mailbox
    from tidings.auth import hash_password
    from tidings.config import DeliveryConfig, async_database_url
    from tidings.delivery import Delivery, MailDelivery
    from tidings.store import accounts
    from tidings.store.db import Store

    async def run() -> None:
        store = await Store.open(async_database_url(db_url))
        try:
            await accounts.add_domain(store, DOMAIN)
            hashed = hash_password(PASSWORD)
            addresses = [imap_user(i) for i in range(users)]
            addresses += [pop3_user(i) for i in range(pop3_users)]
            for address in addresses:
                await accounts.add_account(store, address, hashed)
            delivery = MailDelivery(store, DeliveryConfig(max_batch=500))
            rng = random.Random(1)
            pending: list[Delivery] = []
            seq = 0
            for address in addresses:
                local = (await delivery.resolve_recipient(parse_mailbox(address))).local
                for _ in range(count):
                    seq += 1
                    content = make_message(rng, address, seq, rng.randint(2_000, 6_000))
                    pending.append(Delivery(f"fill{seq}", SENDER, content, local, ()))
                if len(pending) >= 500 or address == addresses[-1]:
                    await asyncio.gather(*(delivery.deliver(d) for d in pending))
                    pending = []
        finally:
            await store.close()

    asyncio.run(run())


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Results:
    """What one client process saw: latencies by operation, errors, its own CPU."""

    # operation -> [(monotonic time at the end, seconds)]
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # [(monotonic time, "protocol: what")]
    errors: list[tuple[float, str]] = field(default_factory=list)
    idle_missed: int = 0  # deliveries acknowledged but never announced to an IDLE session
    idle_checked: int = 0  # (session, delivery) pairs that should have been announced
    idle_caught_up: float = 0.0  # seconds after the senders stopped until the last was announced
    cpu: float = 0.0  # the process's CPU seconds during the run (after ramp-up)
    ramp_seconds: float = 0.0
    opened: int = 0

    def add(self, op: str, started: float) -> None:
        now = time.monotonic()
        self.samples.setdefault(op, []).append((now, now - started))

    def error(self, protocol: str, what: str) -> None:
        self.errors.append((time.monotonic(), f"{protocol}: {what}"))


class ProtocolError(Exception):
    """A reply that is not the one asked for; its text says which."""


def describe(e: BaseException) -> str:
    """An error kind: the reply for protocol errors, the class name for the rest."""
    if isinstance(e, ProtocolError):
        return re.sub(r"\d{3,}", "N", str(e))[:100]  # numbers vary; kinds should not
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, asyncio.IncompleteReadError | ConnectionError | EOFError):
        return f"connection closed ({type(e).__name__})"
    return f"{type(e).__name__}: {e}"[:100]


# --- the clients ---------------------------------------------------------------------------------

LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
UNTAGGED_COUNT = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE)\r\n$")


@dataclass
class Endpoints:
    smtp: int
    imap: int
    pop3: int
    tls: ssl.SSLContext | None


async def open_stream(
    port: int, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(OP_TIMEOUT):
        return await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=tls,
            server_hostname="localhost" if tls else None,
            limit=16 * 2**20,
        )


class Imap:
    """An IMAP connection that follows literals and keeps its mailbox's message count from
    untagged EXISTS and EXPUNGE responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tag = 0
        self.exists = 0
        self.added = 0  # messages EXISTS announced beyond the count before
        self.matched = 0  # of those, how many were matched with deliveries (IDLE)

    @classmethod
    async def login(cls, ends: Endpoints, user: str, gate: asyncio.Semaphore) -> Imap:
        client = cls(*await open_stream(ends.imap, ends.tls))
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                greeting = await client.response()
            if not greeting.startswith(b"* OK"):
                raise ProtocolError(f"IMAP greeting {greeting[:60]!r}")
            async with gate:
                await client.command(f'LOGIN "{user}" "{PASSWORD}"')
        except BaseException:
            client.writer.close()
            raise
        return client

    async def response(self) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        while (m := LITERAL.search(line)) is not None:
            await self.reader.readexactly(int(m.group(1)))
            line += await self.reader.readuntil(b"\r\n")
        self.untagged(line)
        return line

    def untagged(self, line: bytes) -> None:
        m = UNTAGGED_COUNT.match(line)
        if m is None:
            return
        n = int(m.group(1))
        if m.group(2) == b"EXISTS":
            self.added += max(0, n - self.exists)
            self.exists = n
        else:
            self.exists -= 1

    def send(self, text: str) -> bytes:
        self.tag += 1
        tag = b"t%d" % self.tag
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        return tag

    async def command(self, text: str) -> int:
        """Send, read to the tagged OK; the number of untagged responses."""
        tag = self.send(text)
        count = 0
        async with asyncio.timeout(OP_TIMEOUT):
            while True:
                line = await self.response()
                if line.startswith(tag + b" "):
                    if line[len(tag) + 1 : len(tag) + 4] != b"OK ":
                        raise ProtocolError(
                            f"IMAP {text.split(maxsplit=1)[0]}: {line[len(tag) + 1 :]!r}"
                        )
                    return count
                count += 1

    async def idle(self) -> None:
        self.send("IDLE")
        async with asyncio.timeout(OP_TIMEOUT):
            while not (await self.response()).startswith(b"+"):
                pass

    async def close(self, idling: bool = False) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                if idling:
                    self.writer.write(b"DONE\r\n")
                    while not (await self.response()).startswith(b"t"):
                        pass
                await self.command("LOGOUT")
        self.writer.close()


class Pop3:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, ends: Endpoints) -> Pop3:
        client = cls(*await open_stream(ends.pop3, ends.tls))
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                await client.status("greeting")
        except BaseException:
            client.writer.close()
            raise
        return client

    async def status(self, what: str) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        if not line.startswith(b"+OK"):
            raise ProtocolError(f"POP3 {what}: {line[:80]!r}")
        return line

    async def command(self, text: str, multiline: bool = False) -> bytes:
        """The status line; with ``multiline``, what follows it up to the final dot (the client
        never pipelines, so nothing else can follow it)."""
        self.writer.write(text.encode() + b"\r\n")
        async with asyncio.timeout(OP_TIMEOUT):
            line = await self.status(text.split(maxsplit=1)[0])
            if not multiline:
                return line
            data = b"\r\n"
            while not data.endswith(b"\r\n.\r\n"):
                chunk = await self.reader.read(256 * 1024)
                if not chunk:
                    raise asyncio.IncompleteReadError(data, None)
                data += chunk
            return data

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await self.command("QUIT")
        self.writer.close()


class Smtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, ends: Endpoints) -> Smtp:
        client = cls(*await open_stream(ends.smtp, None))
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                await client.reply(b"220", "greeting")
                await client.command("EHLO load.bench.example", b"250")
                if ends.tls:
                    await client.command("STARTTLS", b"220")
                    await client.writer.start_tls(ends.tls, server_hostname="localhost")
                    await client.command("EHLO load.bench.example", b"250")
        except BaseException:
            client.writer.close()
            raise
        return client

    async def reply(self, code: bytes, what: str) -> bytes:
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line[3:4] != b"-":
                if not line.startswith(code):
                    raise ProtocolError(f"SMTP {what}: {line[:80]!r}")
                return line

    async def command(self, text: str, code: bytes) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        return await self.reply(code, text.split(maxsplit=1)[0])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await self.command("QUIT", b"221")
        self.writer.close()


@dataclass
class Mailbox:
    """An IMAP account as the clients of one process see it: when each delivery to it ended
    its data (in order), and how many of those were refused."""

    address: str
    sent: list[float] = field(default_factory=list)
    refused: int = 0


@dataclass
class WorkerSpec:
    index: int
    ports: dict[str, int]
    cert: str
    tls: bool
    users: list[int]  # IMAP accounts of this process
    pop3_users: list[int]
    smtp: int
    idle: int
    fetch: int
    messages: int
    smtp_pause: float
    fetch_pause: float
    pop3_pause: float
    pop3_hold: float
    logins_at_once: int
    seed: int


class Worker:
    """One client process: every session of its share, each an asyncio task."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        tls = None
        if spec.tls:
            tls = ssl.create_default_context(cafile=spec.cert)
            tls.check_hostname = False  # the generated certificate names the configured host
        self.ends = Endpoints(
            spec.ports["smtp"],
            spec.ports["imaps" if tls else "imap"],
            spec.ports["pop3s" if tls else "pop3"],
            tls,
        )
        self.results = Results()
        self.mailboxes = [Mailbox(imap_user(i)) for i in spec.users]
        self.rng = random.Random(spec.seed)
        self.gate = asyncio.Semaphore(spec.logins_at_once)
        self.connects = asyncio.Semaphore(64)
        self.stop = asyncio.Event()
        self.senders_done = asyncio.Event()
        self.senders_stopped = 0.0
        self.ready = 0

    def pause(self, mean: float) -> float:
        return self.rng.expovariate(1 / mean) if mean > 0 else 0.0

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()

    def opened(self) -> None:
        self.ready += 1
        self.results.opened = self.ready

    # -- SMTP -------------------------------------------------------------------------------------

    async def smtp_session(self, n: int, started: asyncio.Event) -> None:
        client: Smtp | None = None
        seq = n * 1_000_000
        while not self.stop.is_set():
            try:
                if client is None:
                    async with self.connects:
                        client = await Smtp.connect(self.ends)
                    if not started.is_set():
                        self.opened()
                        await started.wait()
                        await self.sleep(self.rng.uniform(0, self.spec.smtp_pause))
                        continue
                seq += 1
                await self.deliver(client, seq)
                await self.sleep(self.pause(self.spec.smtp_pause))
            except Exception as e:
                self.results.error("smtp", describe(e))
                if client is not None:
                    client.writer.close()
                client = None
                await self.sleep(1.0)
        if client is not None:
            await client.close()

    async def deliver(self, client: Smtp, seq: int) -> None:
        box = self.rng.choice(self.mailboxes)
        content = make_message(self.rng, box.address, seq, self.rng.randint(2_000, 6_000))
        t0 = time.monotonic()
        async with asyncio.timeout(OP_TIMEOUT):
            await client.command(f"MAIL FROM:<{SENDER}>", b"250")
            await client.command(f"RCPT TO:<{box.address}>", b"250")
            await client.command("DATA", b"354")
            client.writer.write(content + b".\r\n")  # no line starts with "."
            box.sent.append(time.monotonic())
            try:
                await client.reply(b"250", "DATA")
            except BaseException:
                box.refused += 1
                raise
        self.results.add("smtp message", t0)
        self.results.add("smtp data end→250", box.sent[-1])

    # -- IMAP IDLE --------------------------------------------------------------------------------

    async def idle_session(self, box: Mailbox, started: asyncio.Event) -> None:
        """In IDLE all along; each EXISTS is matched with the deliveries it announces."""
        client: Imap | None = None
        first = 0  # the first of box.sent this connection should see
        while not self.stop.is_set():
            try:
                if client is None:
                    async with self.connects:
                        client = await Imap.login(self.ends, box.address, self.gate)
                    await client.command("SELECT INBOX")
                    await client.idle()
                    client.added = client.matched = 0
                    first = len(box.sent)
                    if not started.is_set():
                        self.opened()
                try:
                    async with asyncio.timeout(1.0):  # to look at self.stop now and then
                        line = await client.reader.readuntil(b"\r\n")  # no literals in IDLE
                except TimeoutError:
                    continue
                client.untagged(line)
                if line.endswith(b" EXISTS\r\n"):
                    now = time.monotonic()
                    latencies = self.results.samples.setdefault("imap idle data end→EXISTS", [])
                    for k in range(
                        first + client.matched, min(first + client.added, len(box.sent))
                    ):
                        latencies.append((now, now - box.sent[k]))
                    client.matched = max(client.matched, client.added)
                elif line.startswith(b"* BYE"):
                    raise ProtocolError(f"IMAP BYE in IDLE: {line[:80]!r}")
            except Exception as e:
                self.results.error("imap", "IDLE: " + describe(e))
                if client is not None:
                    client.writer.close()
                client = None
                await self.sleep(1.0)
        if client is None:
            return
        # Until SETTLE after the senders stop: every acknowledged delivery must be announced.
        await self.senders_done.wait()
        deadline = time.monotonic() + SETTLE
        with contextlib.suppress(Exception):
            while client.added < len(box.sent) - first - box.refused:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await client.response()
        self.results.idle_caught_up = max(
            self.results.idle_caught_up, time.monotonic() - self.senders_stopped
        )
        expected = len(box.sent) - first - box.refused
        self.results.idle_checked += expected
        self.results.idle_missed += max(0, expected - client.added)
        await client.close(idling=True)

    # -- IMAP FETCH -------------------------------------------------------------------------------

    async def fetch_session(
        self, n: int, box: Mailbox, trims: bool, started: asyncio.Event
    ) -> None:
        client: Imap | None = None
        while not self.stop.is_set():
            try:
                if client is None:
                    async with self.connects:
                        client = await Imap.login(self.ends, box.address, self.gate)
                    await client.command("SELECT INBOX")
                    if not started.is_set():
                        self.opened()
                        await started.wait()
                        await self.sleep(self.rng.uniform(0, self.spec.fetch_pause))
                        continue
                await self.fetch_once(client)
                if trims and client.exists > self.spec.messages + TRIM_SLACK:
                    t0 = time.monotonic()
                    extra = client.exists - self.spec.messages
                    await client.command(f"STORE 1:{extra} +FLAGS.SILENT (\\Deleted)")
                    await client.command("EXPUNGE")
                    self.results.add("imap trim (STORE+EXPUNGE)", t0)
                await self.sleep(self.pause(self.spec.fetch_pause))
            except Exception as e:
                self.results.error("imap", "FETCH session: " + describe(e))
                if client is not None:
                    client.writer.close()
                client = None
                await self.sleep(1.0)
        if client is not None:
            await client.close()

    async def fetch_once(self, client: Imap) -> None:
        # Stay clear of the top: another session's expunges reach this one only after its
        # next command.
        top = max(1, client.exists - 2 * TRIM_SLACK)
        kind = self.rng.random()
        if kind < 0.5:
            op, width, items = (
                "imap fetch envelopes",
                50,
                "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)",
            )
        elif kind < 0.75:
            op, width, items = (
                "imap fetch headers",
                50,
                ("(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject Date)])"),
            )
        else:
            op, width, items = "imap fetch bodies", 5, "(UID BODY.PEEK[])"
        start = self.rng.randint(1, top)
        end = min(top, start + self.rng.randint(1, width) - 1)
        t0 = time.monotonic()
        await client.command(f"FETCH {start}:{end} {items}")
        self.results.add(op, t0)

    # -- POP3 -------------------------------------------------------------------------------------

    async def pop3_session(self, user: int, started: asyncio.Event) -> None:
        """Log in, STAT and LIST, RETR a few at a time with pauses; QUIT after --pop3-hold
        seconds and log in again."""
        client: Pop3 | None = None
        leave_at = 0.0
        count = 0
        while not self.stop.is_set():
            try:
                if client is None:
                    async with self.connects:
                        client = await Pop3.connect(self.ends)
                    async with self.gate:
                        t0 = time.monotonic()
                        await client.command(f"USER {pop3_user(user)}")
                        await client.command(f"PASS {PASSWORD}")
                    if started.is_set():
                        self.results.add("pop3 USER+PASS (Argon2)", t0)
                    hold = self.spec.pop3_hold
                    leave_at = time.monotonic() + (
                        self.rng.uniform(hold / 2, hold * 1.5) if hold else 1e9
                    )
                    t0 = time.monotonic()
                    count = int((await client.command("STAT")).split()[1])
                    self.results.add("pop3 STAT", t0)
                    t0 = time.monotonic()
                    await client.command("LIST", multiline=True)
                    self.results.add("pop3 LIST", t0)
                    if not started.is_set():
                        self.opened()
                        await started.wait()
                        leave_at = time.monotonic() + self.rng.uniform(
                            0, self.spec.pop3_hold or 1e9
                        )
                        continue
                if time.monotonic() >= leave_at:
                    t0 = time.monotonic()
                    await client.command("QUIT")
                    client.writer.close()
                    self.results.add("pop3 QUIT", t0)
                    client = None
                    continue
                for _ in range(3):
                    t0 = time.monotonic()
                    await client.command(f"RETR {self.rng.randint(1, count)}", multiline=True)
                    self.results.add("pop3 RETR", t0)
                await self.sleep(self.pause(self.spec.pop3_pause))
            except Exception as e:
                self.results.error("pop3", describe(e))
                if client is not None:
                    client.writer.close()
                client = None
                await self.sleep(1.0)
        if client is not None:
            await client.close()

    # -- the whole --------------------------------------------------------------------------------

    async def run(self, pipe: Connection) -> None:
        spec = self.spec
        started = asyncio.Event()
        tasks = []
        t_ramp = time.monotonic()
        # Fetch sessions: one per mailbox first (those trim), then round again.
        for n in range(spec.fetch):
            box = self.mailboxes[n % len(self.mailboxes)]
            tasks.append(
                asyncio.create_task(self.fetch_session(n, box, n < len(self.mailboxes), started))
            )
        for n in range(spec.idle):
            tasks.append(
                asyncio.create_task(
                    self.idle_session(self.mailboxes[n % len(self.mailboxes)], started)
                )
            )
        for user in spec.pop3_users:
            tasks.append(asyncio.create_task(self.pop3_session(user, started)))
        senders = [
            asyncio.create_task(self.smtp_session(spec.index * 1000 + n, started))
            for n in range(spec.smtp)
        ]
        tasks += senders
        total = len(tasks)
        last = 0.0
        while self.ready < total:
            await asyncio.sleep(0.2)
            if time.monotonic() - last > 10:
                last = time.monotonic()
                pipe.send(("progress", self.ready, total))
            if all(t.done() for t in tasks):
                break
        self.results.ramp_seconds = time.monotonic() - t_ramp
        pipe.send(("ready", self.ready, total))
        loop = asyncio.get_running_loop()
        end = await loop.run_in_executor(None, pipe.recv)  # ("go", monotonic end of the window)
        cpu0 = sum(os.times()[:2])
        started.set()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        self.results.cpu = sum(os.times()[:2]) - cpu0
        self.stop.set()
        await asyncio.gather(*senders, return_exceptions=True)
        self.senders_stopped = time.monotonic()
        self.senders_done.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def worker_main(spec: WorkerSpec, pipe: Connection) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
    worker = Worker(spec)
    coro = worker.run(pipe)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    pipe.send(("results", asdict(worker.results)))


# --- the server, sampled -------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # monotonic
    rss: int  # bytes
    cpu: float  # the server's CPU seconds so far
    connections: dict[str, int]  # ESTABLISHED server-side sockets by listener
    sessions: dict[str, int] | None = None  # /metrics' tidings_sessions, every 5 s


def proc_rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def established(ports: dict[str, int]) -> dict[str, int]:
    """Server-side ESTABLISHED TCP sockets on loopback, by the listener's name."""
    by_port = {port: name for name, port in ports.items()}
    counts: Counter[str] = Counter()
    out = subprocess.run(
        ["ss", "-Htn", "state", "established"], capture_output=True, text=True, check=False
    )
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            host, _, port = fields[2].rpartition(":")
            if host == "127.0.0.1" and port.isdigit() and int(port) in by_port:
                counts[by_port[int(port)]] += 1
    return dict(counts)


def scrape_sessions(http_port: int) -> dict[str, int] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    found = re.findall(r'^tidings_sessions\{protocol="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {name: int(float(value)) for name, value in found}


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), in value per minute."""
    if len(points) < 2:
        return 0.0
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 60


def bucket_minima(points: list[tuple[float, float]], width: float) -> list[tuple[float, float]]:
    buckets: dict[int, tuple[float, float]] = {}
    for t, v in points:
        key = int(t // width)
        if key not in buckets or v < buckets[key][1]:
            buckets[key] = (t, v)
    return [buckets[k] for k in sorted(buckets)]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p99, max."""
    if not values:
        return (0.0, 0.0, 0.0)
    if len(values) == 1:
        return (values[0], values[0], values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return (statistics.median(values), cuts[98], max(values))


# --- main ----------------------------------------------------------------------------------------


def raise_nofile(connections: int) -> None:
    """Room for every connection in the bench's processes and in the server (which inherits it)."""
    need = 2 * connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"bench: the hard RLIMIT_NOFILE is {hard}; {need} are needed")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def share(n: int, k: int, parts: int) -> int:
    return n // parts + (k < n % parts)


def in_process(target: Any, *args: Any) -> None:
    """Run ``target`` in a forked child and wait: the bench's own process starts no threads."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"bench: {getattr(target, '__name__', target)} failed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=120, help="measured seconds (default 120)")
    ap.add_argument("--warmup", type=float, default=20, help="seconds of load before (default 20)")
    ap.add_argument("--smtp", type=int, default=100, help="SMTP sender connections (100)")
    ap.add_argument("--idle", type=int, default=600, help="IMAP sessions in IDLE (600)")
    ap.add_argument("--fetch", type=int, default=200, help="IMAP sessions FETCHing (200)")
    ap.add_argument("--pop3", type=int, default=100, help="POP3 sessions, one account each (100)")
    ap.add_argument("--users", type=int, default=200, help="IMAP accounts mail goes to (200)")
    ap.add_argument("--messages", type=int, default=200, help="messages in each INBOX (200)")
    ap.add_argument("--smtp-pause", type=float, default=1.0, help="mean s between messages (1)")
    ap.add_argument("--fetch-pause", type=float, default=1.0, help="mean s between FETCHes (1)")
    ap.add_argument("--pop3-pause", type=float, default=1.0, help="mean s between 3 RETRs (1)")
    ap.add_argument(
        "--pop3-hold",
        type=float,
        default=120.0,
        help="mean s a POP3 session lasts before QUIT and a new login; 0: never (120)",
    )
    ap.add_argument("--tls", action="store_true", help="IMAPS, POP3S and SMTP STARTTLS")
    ap.add_argument("--processes", type=int, default=1, help="client processes (default 1)")
    ap.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL (tests/pg.py)")
    ap.add_argument("--db-url", default="", help="an empty PostgreSQL database instead")
    ap.add_argument("--dir", default="", help="keep the config, store and server log here")
    ap.add_argument("--skip-fill", action="store_true", help="reuse --dir's filled store")
    ap.add_argument("--json", default="", help="also write the figures to this file ('-': stdout)")
    args = ap.parse_args()
    if args.skip_fill and not (args.dir and (Path(args.dir) / "tidings.toml").exists()):
        ap.error("--skip-fill needs a --dir filled by an earlier run")
    if args.fetch < args.users:
        print("note: fewer FETCH sessions than accounts: some INBOXes grow (not trimmed)")
    total = args.smtp + args.idle + args.fetch + args.pop3
    raise_nofile(total)
    with contextlib.ExitStack() as stack:
        if args.dir:
            directory = Path(args.dir)
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="tidings-load-"))
            )
        if args.skip_fill:
            config = directory / "tidings.toml"
        else:
            if args.dir:
                for stale in ("tidings.db", "tidings.db-wal", "tidings.db-shm", "server.log"):
                    (directory / stale).unlink(missing_ok=True)
                shutil.rmtree(directory / "data", ignore_errors=True)
            db_url = stack.enter_context(database(args, directory))
            config = write_config(
                directory,
                db_url,
                limits={"max_connections": 2000, "max_connections_per_ip": 2000},
                imap={"allow_insecure_auth": True},
                pop3={"allow_insecure_auth": True},
            )
            t0 = time.monotonic()
            in_process(fill, db_url, args.users, args.pop3, args.messages)
            print(
                f"filled {args.users + args.pop3} accounts with {args.messages} messages each "
                f"in {time.monotonic() - t0:.0f} s",
                flush=True,
            )
        server = TidingsServer(config).start(timeout=120)
        stack.callback(server.stop, 60)
        figures = run(args, server, directory, total)
    if args.json == "-":
        print(json.dumps(figures, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    sys.exit(1 if figures["unexpected_errors"] or figures["idle"]["missed"] else 0)


def run(
    args: argparse.Namespace, server: TidingsServer, directory: Path, total: int
) -> dict[str, Any]:
    assert server.process is not None
    pid = server.process.pid
    ports = {name: port for name, (_, port) in server.addresses.items()}
    listeners = {k: ports[k] for k in ("smtp", "imap", "imaps", "pop3", "pop3s")}
    backend = "PostgreSQL" if args.postgres or args.db_url else "SQLite"
    transport = "TLS (IMAPS, POP3S, SMTP STARTTLS)" if args.tls else "plain TCP"
    print(
        f"server pid {pid} ({backend}); {total:,} connections: {args.smtp} SMTP senders, "
        f"{args.idle} IMAP IDLE, {args.fetch} IMAP FETCH, {args.pop3} POP3; {transport}; "
        f"{args.processes} client process(es)",
        flush=True,
    )
    parts = args.processes
    ctx = multiprocessing.get_context("fork")
    workers = []
    for k in range(parts):
        spec = WorkerSpec(
            index=k,
            ports=ports,
            cert=str(directory / "data/tls/cert.pem"),
            tls=args.tls,
            users=[i for i in range(args.users) if i % parts == k],
            pop3_users=[i for i in range(args.pop3) if i % parts == k],
            smtp=share(args.smtp, k, parts),
            idle=share(args.idle, k, parts),
            fetch=share(args.fetch, k, parts),
            messages=args.messages,
            smtp_pause=args.smtp_pause,
            fetch_pause=args.fetch_pause,
            pop3_pause=args.pop3_pause,
            pop3_hold=args.pop3_hold,
            logins_at_once=max(1, LOGINS_AT_ONCE // parts),
            seed=k + 1,
        )
        mine, theirs = ctx.Pipe()
        process = ctx.Process(target=worker_main, args=(spec, theirs), daemon=True)
        process.start()
        workers.append((process, mine))
    samples: list[Sample] = []

    def sample(with_sessions: bool = False) -> Sample:
        s = Sample(time.monotonic(), proc_rss(pid), proc_cpu(pid), established(listeners))
        if with_sessions:
            s.sessions = scrape_sessions(ports["http"])
        samples.append(s)
        return s

    # Ramp-up: every connection opened and logged in.
    t_ramp = time.monotonic()
    waiting = set(range(parts))
    shown = t_ramp
    progress = [0] * parts
    while waiting:
        for k in list(waiting):
            process, pipe = workers[k]
            while pipe.poll():
                kind, ready, _ = pipe.recv()
                progress[k] = ready
                if kind == "ready":
                    waiting.discard(k)
            if not process.is_alive():
                raise SystemExit("bench: a client process died during ramp-up")
        s = sample()
        if s.t >= shown:
            shown += 10
            print(
                f"  ramp-up {s.t - t_ramp:4.0f} s: {sum(progress):,} of {total:,} sessions ready, "
                f"{sum(s.connections.values()):,} connections, RSS {s.rss / 2**20:.0f} MiB",
                flush=True,
            )
        time.sleep(1.0)
    ramp = time.monotonic() - t_ramp
    start = time.monotonic() + 0.5
    window = (start + args.warmup, start + args.warmup + args.duration)
    for _, pipe in workers:
        pipe.send(window[1])
    print(
        f"ramp-up: {sum(progress):,} of {total:,} sessions ready in {ramp:.0f} s; "
        f"warm-up {args.warmup:.0f} s, then {args.duration:.0f} s measured",
        flush=True,
    )
    shown = start + 10
    while time.monotonic() < window[1]:
        s = sample(with_sessions=len(samples) % 5 == 0)
        elapsed = s.t - start
        if s.t >= shown:
            shown += 10
            before = [x for x in samples if x.t >= s.t - 10.5]
            cpu = (s.cpu - before[0].cpu) / max(0.1, s.t - before[0].t)
            print(
                f"  {elapsed:4.0f} s{' (warm-up)' if s.t < window[0] else ''}: "
                f"{sum(s.connections.values()):,} connections open, RSS {s.rss / 2**20:.1f} MiB, "
                f"server CPU {cpu:.0%}",
                flush=True,
            )
        time.sleep(max(0.0, 1.0 - (time.monotonic() - s.t)))
    results: list[dict[str, Any]] = []
    for process, pipe in workers:
        while True:
            if not pipe.poll(120):
                raise SystemExit("bench: a client process did not report")
            message = pipe.recv()
            if message[0] == "results":
                results.append(message[1])
                break
        process.join(30)
    return report(args, Run(samples, results, window, ramp, total, backend, transport))


TIMELINE = (  # (column, operations whose latencies it pools)
    ("SMTP msg", ("smtp message",)),
    ("IDLE push", ("imap idle data end→EXISTS",)),
    ("FETCH", ("imap fetch envelopes", "imap fetch headers", "imap fetch bodies")),
    ("POP3 RETR", ("pop3 RETR",)),
)


def over_time(
    results: list[dict[str, Any]], samples: list[Sample], start: float, end: float
) -> list[dict[str, Any]]:
    """Per 10 s from the start of the warm-up: SMTP messages/s, p50/p99 of each TIMELINE
    column, the server's lowest RSS and CPU: whether the server keeps up, and memory."""
    rows = []
    print("\n  by 10 s (warm-up first): messages/s, p50/p99 ms, lowest RSS, server CPU")
    print("  " + f"{'s':>5} {'msg/s':>6}" + "".join(f" {c:>15}" for c, _ in TIMELINE)
          + f" {'RSS MiB':>8} {'CPU':>5}")  # fmt: skip
    t = start
    while t < end - 1:
        row: dict[str, Any] = {"t": round(t - start)}
        smtp = 0
        line = f"  {round(t - start):>5}"
        cells = ""
        for column, ops in TIMELINE:
            values = [
                lat for r in results for op in ops
                for when, lat in r["samples"].get(op, ()) if t <= when < t + 10
            ]  # fmt: skip
            if column == "SMTP msg":
                smtp = len(values)
            p50, p99, _ = percentiles(values)
            row[column] = {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "count": len(values)}
            cells += f" {p50 * 1e3:>7.0f}/{p99 * 1e3:<7.0f}"
        inside = [x for x in samples if t <= x.t < t + 10]
        rss = min(x.rss for x in inside) / 2**20 if inside else 0.0
        cpu = (
            (inside[-1].cpu - inside[0].cpu) / max(0.1, inside[-1].t - inside[0].t)
            if len(inside) > 1
            else 0.0
        )
        row.update({"smtp_per_s": smtp / 10, "rss_min_mib": rss, "server_cpu": cpu})
        rows.append(row)
        print(f"{line} {smtp / 10:>6.1f}{cells} {rss:>8.1f} {cpu:>5.0%}")
        t += 10
    return rows


@dataclass
class Run:
    """What the run gave, for :func:`report`."""

    samples: list[Sample]
    results: list[dict[str, Any]]
    window: tuple[float, float]
    ramp: float
    total: int
    backend: str
    transport: str


def report(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    samples, results, window = run.samples, run.results, run.window
    ramp, total, backend, transport = run.ramp, run.total, run.backend, run.transport
    lo, hi = window
    seconds = hi - lo
    ops: dict[str, list[float]] = {}
    for result in results:
        for op, points in result["samples"].items():
            ops.setdefault(op, []).extend(lat for t, lat in points if lo <= t <= hi)
    print(
        f"\n{total:,} connections, {transport}, {backend}; {seconds:.0f} s measured after "
        f"{args.warmup:.0f} s of warm-up (2-core VM shared with other work: figures are noisy)"
    )
    print(
        f"\n  {'operation':<34} {'count':>8} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    table: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        for op in sorted(o for o in ops if o.startswith(protocol)):
            values = ops[op]
            p50, p99, top = percentiles(values)
            table[op] = {
                "count": len(values),
                "per_second": len(values) / seconds,
                "p50_ms": p50 * 1e3,
                "p99_ms": p99 * 1e3,
                "max_ms": top * 1e3,
            }
            print(
                f"  {op:<34} {len(values):>8,} {len(values) / seconds:>8.1f} {p50 * 1e3:>8.1f} "
                f"{p99 * 1e3:>8.1f} {top * 1e3:>8.1f}"
            )
    timeline = over_time(results, samples, lo - args.warmup, hi)
    # Errors, by phase and kind.
    phases: dict[str, Counter[str]] = {
        "ramp-up": Counter(),
        "warm-up": Counter(),
        "measured": Counter(),
        "wind-down": Counter(),
    }
    starts = lo - args.warmup
    for result in results:
        for t, what in result["errors"]:
            phase = (
                "ramp-up"
                if t < starts
                else "warm-up"
                if t < lo
                else "measured"
                if t <= hi
                else "wind-down"
            )
            phases[phase][what] += 1
    unexpected = 0
    print("\n  errors:", "none" if not any(phases.values()) else "")
    for phase, kinds in phases.items():
        for what, n in kinds.most_common():
            limit = any(e in what for e in EXPECTED)
            unexpected += 0 if limit else n
            print(f"    {phase:<10} {n:>6,}  {what}{'  (configured limit)' if limit else ''}")
    missed = sum(r["idle_missed"] for r in results)
    checked = sum(r["idle_checked"] for r in results)
    caught_up = max(r["idle_caught_up"] for r in results)
    print(
        f"  IDLE: {checked:,} (session, accepted delivery) pairs, {missed:,} never announced; "
        f"the last announced {caught_up:.1f} s after the senders stopped"
    )
    # Connections open at once.
    measured = [s for s in samples if lo <= s.t <= hi]
    counts = [sum(s.connections.values()) for s in measured]
    sessions = [s.sessions for s in measured if s.sessions]
    by_listener = {
        name: (
            min(s.connections.get(name, 0) for s in measured),
            max(s.connections.get(name, 0) for s in measured),
        )
        for name in sorted({n for s in measured for n in s.connections})
    }
    print(
        f"\n  connections open (server side, ESTABLISHED, ss, every s): min {min(counts):,}, "
        f"mean {statistics.fmean(counts):,.1f}, max {max(counts):,}; by listener (min-max) "
        + ", ".join(f"{k} {a}-{b}" for k, (a, b) in by_listener.items())
    )
    if sessions:
        print(
            "  /metrics tidings_sessions (every 5 s, min-max): "
            + ", ".join(
                f"{p} {min(s.get(p, 0) for s in sessions)}-{max(s.get(p, 0) for s in sessions)}"
                for p in ("imap", "pop3")
            )
        )
    # Memory and CPU. RSS jumps by 64 MiB while an Argon2 check runs (a login), so the lowest
    # sample of each 10 s is the baseline that shows growth.
    first, last = measured[0], measured[-1]
    rss = [(s.t - lo, s.rss / 1024) for s in measured]
    minima = bucket_minima(rss, 10.0)
    slope = slope_per_minute(rss)
    floor_slope = slope_per_minute(minima)
    server_cpu = (last.cpu - first.cpu) / (last.t - first.t)
    peak = max(s.rss for s in samples)
    print(
        f"  server RSS, lowest of each 10 s: {minima[0][1] / 1024:.1f} MiB after warm-up, "
        f"{minima[-1][1] / 1024:.1f} MiB at the end, slope {floor_slope:+,.0f} KiB/min\n"
        f"    (by 10 s: {' '.join(f'{v / 1024:.0f}' for _, v in minima)} MiB)\n"
        f"  server RSS, every 1-s sample: {first.rss / 2**20:.1f} MiB after warm-up, "
        f"{last.rss / 2**20:.1f} MiB at the end, slope {slope:+,.0f} KiB/min; "
        f"peak {peak / 2**20:.1f} MiB over the whole run"
    )
    client_cpu = [r["cpu"] / (hi - starts) for r in results]
    print(
        f"  server CPU {server_cpu:.0%} of a core; client CPU "
        + ", ".join(f"{c:.0%}" for c in client_cpu)
        + f" of a core ({len(results)} process(es)); ramp-up {ramp:.0f} s"
    )
    return {
        "connections": total,
        "transport": transport,
        "backend": backend,
        "mix": {"smtp": args.smtp, "idle": args.idle, "fetch": args.fetch, "pop3": args.pop3},
        "warmup_s": args.warmup,
        "duration_s": seconds,
        "ramp_up_s": ramp,
        "operations": table,
        "errors": {phase: dict(kinds) for phase, kinds in phases.items()},
        "unexpected_errors": unexpected,
        "idle": {"checked": checked, "missed": missed, "caught_up_s": caught_up},
        "open_connections": {
            "min": min(counts),
            "mean": statistics.fmean(counts),
            "max": max(counts),
            "by_listener": by_listener,
        },
        "rss_mib": {
            "ten_second_minima": [v / 1024 for _, v in minima],
            "after_warmup": first.rss / 2**20,
            "end": last.rss / 2**20,
            "peak": peak / 2**20,
        },
        "rss_slope_kib_per_min": {"all_samples": slope, "ten_second_minima": floor_slope},
        "server_cpu_cores": server_cpu,
        "client_cpu_cores": client_cpu,
        "timeline": timeline,
    }


if __name__ == "__main__":
    main()
