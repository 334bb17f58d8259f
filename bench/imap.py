"""IMAP server figures: one account's INBOX of 20,000 varied messages, read over IMAPS.

The INBOX is filled through ``tidings.delivery.MailDelivery`` (group commits, each message
analysed for IMAP as at delivery) before ``tidings serve`` starts: 3-10 KB messages, plain,
HTML alternatives, attachments and forwarded messages, with varied senders, subjects and dates.
Then, over IMAPS on loopback, each step is timed (``--repeat`` times, the range printed):

    login         TCP + TLS + greeting, and LOGIN (p50/p95 over --logins sessions)
    select        SELECT INBOX
    flags         FETCH 1:* (UID FLAGS)
    headers       FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)
    thunderbird   UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (...)])
    bodies        UID FETCH of BODY.PEEK[] for --bodies consecutive messages
    search        SEARCH SUBJECT / FROM / BODY / TEXT
    store         STORE 1:* +FLAGS (\\Seen), then -FLAGS to undo it
    idle          SMTP 250 (and end of DATA) → ``* n EXISTS`` in an IDLE session, p50/p95
    concurrent    --sessions sessions at once, each SELECT + FETCH 1:* (FLAGS)

Beside each wall time: the server's CPU seconds (/proc/PID/stat) and its peak RSS during the
step (VmHWM, reset through /proc/PID/clear_refs). The client is a small asyncio one, not
imaplib: 50 sessions, and IDLE beside an SMTP client, share one event loop, and it reads a
20,000-line FETCH with a third of imaplib's CPU (which is small either way: 0.03 s against
0.09 s), so on two cores the client takes little from the server. It follows literals and
counts responses; every step checks the tagged OK and the number of responses.

    python3 bench/imap.py                          # 20,000 messages, SQLite in a temp dir
    python3 bench/imap.py --postgres               # a throwaway PostgreSQL (tests/pg.py)
    python3 bench/imap.py --db-url postgresql://user@127.0.0.1/db   # an empty database
    python3 bench/imap.py --dir /tmp/b             # keep the filled store, then ...
    python3 bench/imap.py --dir /tmp/b --skip-fill --only search,headers
    python3 bench/imap.py --py-spy /tmp/prof       # py-spy record per step; top functions

``--issue-targets`` measures issue 4's targets instead, and ends with a summary (met / not met):
10,000 messages of 2 KB-200 KB (most small, some large attachments; the distribution printed);
SELECT in a new session; ``FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)`` (target < 1 s);
``UID FETCH 1:* (BODY.PEEK[])`` in MB/s with the client's CPU (target >= 120 MB/s); a "ceiling":
the same client reading the same bodies from a trivial canned Python server, plain and TLS;
and --idle-sessions (2,000) sessions logged in 4 at a time (Argon2: ~5 min), SELECT INBOX, IDLE:
server RSS per session (target <= 30 KB), the time until one SMTP delivery reaches all of them
as ``* n EXISTS``, then, on a restarted server, what greeting-only connections cost (plain, TLS).
The server offers LOGINDISABLED before STARTTLS and has no setting to allow a plain login, so
IMAP figures are over TLS (993); port 143 is only probed. RLIMIT_NOFILE is raised as needed.

    python3 bench/imap.py --issue-targets --dir /tmp/b     # ~8 min on 2 cores
    python3 bench/imap.py --issue-targets --dir /tmp/b --skip-fill --only first-sync,bodies-all

The server is ``python3 -m tidings`` in a child process, so ``PYTHONPATH=/some/checkout/src``
benchmarks that checkout instead of the installed package. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import multiprocessing
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.header import Header
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import TidingsServer, write_config  # the tests' own helpers

DOMAIN = "bench.test"
USER = f"user@{DOMAIN}"
PASSWORD = "bench-password-1"
STEPS = ("login", "select", "flags", "headers", "thunderbird", "bodies", "search", "store",
         "idle", "concurrent")  # fmt: skip
# What Thunderbird asks for when it downloads the headers of new messages.
THUNDERBIRD_FIELDS = (
    "From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
    "In-Reply-To Content-Type Reply-To"
)
# Words the searches look for, and how the messages carry them.
SUBJECT_WORD = "invoice"  # in about 1 subject of 12
FROM_WORD = "carol"  # one sender of 55, weighted
BODY_WORD = "zeppelin"  # in the body text of 1 message of 97 (in a text part, any encoding)
FILL_BATCH = 500
# --issue-targets (issue 4): sizes of 2 KB-200 KB, most small, some large attachments, as
# (share, smallest, largest); the mean is about 24 KB.
MIXED_SIZES = ((0.62, 2_600, 10_000), (0.23, 10_000, 40_000), (0.10, 40_000, 100_000),
               (0.05, 100_000, 193_000))  # fmt: skip
SIZE_BUCKETS = (5_000, 10_000, 40_000, 100_000, 200_000)


# --- messages -------------------------------------------------------------------------------------

FIRST = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter",
         "Zoë", "Jürgen", "Łukasz", "Søren", "Chloé", "Amélie", "Ngozi", "Haruto",
         "Priya")  # fmt: skip
LAST = ("Smith", "Jones", "Müller", "García", "Rossi", "Dubois", "Kowalski", "Nakamura",
        "Okafor", "Svensson", "Novák", "Patel", "O'Brien", "Larsen", "Silva")  # fmt: skip
DOMAINS = ("example.com", "example.org", "mail.example.net", "lists.example.io",
           "corp.example", "university.example.edu")  # fmt: skip
TOPICS = ("quarterly report", "team offsite", "server migration", "budget review",
          "release 4.2 planning", "holiday schedule", "security audit", "new office layout",
          "customer feedback", "hiring pipeline", "conference travel", "API deprecation",
          "backup failures", "design review", "Grüße aus Köln", "café meeting",
          "board minutes", "parking permits", "onboarding checklist", "incident 1123",
          "mailing list digest", "weekly metrics", "contract renewal", "printer on floor 3",
          "année scolaire", "training session", "VPN outage", "lunch order")  # fmt: skip
VOCABULARY = (
    "the of and to in is that for it as with was on be by this are from at or an have not "
    "they which one you had all we can her has there been if more when will would who so no "
    "system data report project meeting team schedule update review server message account "
    "network budget customer design release version change issue request support office "
    "please thanks regards attached document figure table result plan week month quarter "
    "year morning afternoon evening tomorrow yesterday deadline draft final approve sign "
    "contract invoice payment order delivery shipment warehouse inventory price quote "
    "analysis performance latency throughput database index query cache memory disk backup "
    "restore migration upgrade patch security audit access password policy compliance "
)
WORDS = VOCABULARY.split()
ACCENTED = ("café", "naïve", "Größe", "façade", "déjà", "señor", "smörgåsbord", "Ærøskøbing")


def make_senders() -> list[tuple[str, str]]:
    """(display name as in a header, address): 55 people, exactly one of them a Carol."""
    rng = random.Random(7)
    senders = []
    for n, first in enumerate(FIRST):
        for k in range(1 if first == "Carol" else 2):
            last = rng.choice(LAST)
            local = f"{first}.{last}".lower().encode("ascii", "ignore").decode().replace("'", "")
            name = f"{first} {last}"
            if not name.isascii():
                name = Header(name, "utf-8").encode()
            elif "'" in name:
                name = f'"{name}"'
            senders.append((name, f"{local}{k or ''}@{DOMAINS[(n + k) % len(DOMAINS)]}"))
    return senders


SENDERS = make_senders()
SENDER_WEIGHTS = [1 / (i + 1) ** 0.6 for i in range(len(SENDERS))]
ATTACHMENTS = (
    ("report.pdf", "application/pdf"),
    ("photo.png", "image/png"),
    ("Übersicht.xlsx", "application/vnd.ms-excel"),
)
ZONES = [timezone(timedelta(minutes=m)) for m in (0, 60, 120, -300, -480, 330, 540, -180)]


def line_pool(rng: random.Random, count: int, accented: bool) -> list[str]:
    """Lines of 8-13 words, bodies are drawn from (which is fast); some with non-ASCII."""
    lines = []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(8, 13))
        if accented and rng.random() < 0.3:
            words[rng.randrange(len(words))] = rng.choice(ACCENTED)
        lines.append(" ".join(words))
    return lines


@dataclass
class Made:
    content: bytes
    date: datetime
    sender: str


class MessageMaker:
    """Deterministic, varied messages of about 3-10 KB: message ``i`` is always the same."""

    def __init__(self, seed: int, mixed: bool = False) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.mixed = mixed  # MIXED_SIZES instead of 3-10 KB
        self.ascii_lines = line_pool(rng, 4000, False)
        self.accented_lines = line_pool(rng, 1000, True)
        self.start = datetime(2024, 1, 1, tzinfo=UTC)

    def text(self, rng: random.Random, size: int, plant: bool) -> str:
        # a third of the messages have non-ASCII text (sent quoted-printable)
        pool = self.accented_lines if rng.random() < 0.33 else self.ascii_lines
        lines = rng.choices(pool, k=max(3, size // 62))
        for n in range(4, len(lines), rng.randint(4, 9)):
            lines[n] = ""  # paragraphs
        if plant:
            n = rng.randrange(len(lines))
            lines[n] = f"{lines[n]} {BODY_WORD} ahead".strip()
        return "Hello,\r\n\r\n" + "\r\n".join(lines) + "\r\n\r\n-- \r\nSent from the bench\r\n"

    @staticmethod
    def text_part(text: str, subtype: str = "plain") -> bytes:
        data = text.encode()
        if text.isascii():
            head = f"Content-Type: text/{subtype}; charset=us-ascii\r\n"
            return (head + "Content-Transfer-Encoding: 7bit\r\n\r\n").encode() + data
        qp = binascii.b2a_qp(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
        head = f"Content-Type: text/{subtype}; charset=utf-8\r\n"
        return (head + "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode() + qp

    @staticmethod
    def html(text: str) -> str:
        paragraphs = [p.replace("\r\n", " ") for p in text.split("\r\n\r\n") if p]
        body = "\r\n".join(f"<p>{p}</p>" for p in paragraphs)
        return (
            "<html><head><style>p { margin: 0 }</style></head><body>\r\n"
            f"{body}\r\n</body></html>\r\n"
        )

    @staticmethod
    def multipart(subtype: str, boundary: str, parts: list[bytes]) -> tuple[str, bytes]:
        b = boundary.encode()
        body = b"This is a multi-part message in MIME format.\r\n"
        for part in parts:
            body += b"--" + b + b"\r\n" + part + b"\r\n"
        return f'multipart/{subtype}; boundary="{boundary}"', body + b"--" + b + b"--\r\n"

    def make(self, i: int) -> Made:
        rng = random.Random(self.seed * 1_000_003 + i)
        size = rng.randint(3300, 10000)
        if self.mixed:
            _, low, high = rng.choices(MIXED_SIZES, weights=[w for w, _, _ in MIXED_SIZES])[0]
            size = rng.randint(low, high)
        name, address = rng.choices(SENDERS, weights=SENDER_WEIGHTS)[0]
        topic = rng.choice(TOPICS)
        kind = rng.random()
        if size > 40_000:
            kind = 0.75 + kind * 0.2  # what makes a message that large: an attachment
        if i % 12 == 5:
            subject = f"Invoice {1000 + i} for {topic}"
        elif kind < 0.3:
            subject = f"Re: {topic}"
        else:
            template = rng.choice(("{t}", "Fwd: {t}", "{t} - update", "Question about {t}",
                                   "[list] {t}", "Reminder: {t} on Friday"))  # fmt: skip
            subject = template.format(t=topic)
        if not subject.isascii():
            subject = Header(subject, "utf-8").encode()
        date = (self.start + timedelta(seconds=rng.randrange(730 * 86400))).astimezone(
            rng.choice(ZONES)
        )
        cc = ", ".join(f"{n} <{a}>" for n, a in rng.sample(SENDERS, rng.choice((0, 0, 1, 3))))
        head = [
            f"Return-Path: <{address}>",
            f"Received: from mx.{address.partition('@')[2]} (mx [192.0.2.{i % 250 + 1}])\r\n"
            f"\tby mx.bench.test with ESMTPS id b{i:08x}; {format_datetime(date)}",
            f"From: {name} <{address}>",
            f"To: Bench User <{USER}>",
            *([f"Cc: {cc}"] if cc else []),
            f"Subject: {subject}",
            f"Date: {format_datetime(date)}",
            f"Message-ID: <{i:08d}.{rng.getrandbits(40):x}@{address.partition('@')[2]}>",
        ]
        if subject.startswith("Re:"):
            parent = f"<{rng.randrange(max(i, 1)):08d}.parent@example.com>"
            head += [f"In-Reply-To: {parent}", f"References: {parent}"]
        head.append("MIME-Version: 1.0")
        plant = i % 97 == 13
        if kind < 0.5:  # text/plain
            part = self.text_part(self.text(rng, size - 700, plant))
            ctype_line, _, body = part.partition(b"\r\n")
            cte, _, body = body.partition(b"\r\n\r\n")
            head += [ctype_line.decode(), cte.decode()]
        elif kind < 0.75:  # text/plain + text/html
            text = self.text(rng, (size - 1000) // 2, plant)
            ctype, body = self.multipart(
                "alternative", f"=_alt{i}", [self.text_part(text), self.text_part(
                    self.html(text), "html")]
            )  # fmt: skip
            head.append(f"Content-Type: {ctype}")
        elif kind < 0.95:  # text + an attachment (base64)
            text_size = rng.randint(400, 1500)
            blob = rng.randbytes(max(500, (size - text_size - 900) * 3 // 4))
            filename, mime_type = rng.choice(ATTACHMENTS)
            disposition = (
                f'attachment; filename="{filename}"'
                if filename.isascii()
                else "attachment; filename*=UTF-8''" + "%C3%9Cbersicht.xlsx"
            )
            attachment = (
                f'Content-Type: {mime_type}; name="{filename.encode("ascii", "replace").decode()}"'
                f"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: {disposition}"
                "\r\n\r\n"
            ).encode() + base64.encodebytes(blob).replace(b"\n", b"\r\n")
            ctype, body = self.multipart(
                "mixed", f"=_mix{i}", [self.text_part(self.text(rng, text_size, plant)),
                                       attachment]
            )  # fmt: skip
            head.append(f"Content-Type: {ctype}")
        else:  # a forwarded message
            inner = (
                f"From: {rng.choice(SENDERS)[1]}\r\nTo: {address}\r\nSubject: {topic}\r\n"
                f"Date: {format_datetime(date - timedelta(days=3))}\r\n"
            ).encode() + self.text_part(self.text(rng, size - 1900, False))
            ctype, body = self.multipart(
                "mixed", f"=_fwd{i}", [self.text_part(self.text(rng, 600, plant)),
                                       b"Content-Type: message/rfc822\r\n\r\n" + inner]
            )  # fmt: skip
            head.append(f"Content-Type: {ctype}")
        content = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        return Made(content, date + timedelta(seconds=rng.randint(2, 600)), address)


# --- filling the store ----------------------------------------------------------------------------


async def provision(db_url: str) -> None:
    from tidings.auth import hash_password
    from tidings.config import async_database_url
    from tidings.store import accounts
    from tidings.store.db import Store

    store = await Store.open(async_database_url(db_url))
    try:
        await accounts.add_domain(store, DOMAIN)
        await accounts.add_account(store, USER, hash_password(PASSWORD))
    finally:
        await store.close()


_MAKERS: dict[int, MessageMaker] = {}  # by seed * 2 + mixed


def make_batch(seed: int, mixed: bool, start: int, stop: int) -> list[Made]:
    """Messages ``start`` to ``stop`` - 1 (in a worker process while the last batch commits)."""
    key = seed * 2 + mixed
    maker = _MAKERS.get(key) or _MAKERS.setdefault(key, MessageMaker(seed, mixed))
    return [maker.make(i) for i in range(start, stop)]


async def fill(db_url: str, count: int, seed: int, mixed: bool) -> list[int]:
    """Deliver ``count`` messages to USER's INBOX in group commits of FILL_BATCH, the next
    batch being written by another process meanwhile; the size of each message delivered."""
    from tidings.address import parse_mailbox
    from tidings.config import DeliveryConfig, async_database_url
    from tidings.delivery import Delivery, MailDelivery
    from tidings.store.db import Store

    loop = asyncio.get_running_loop()
    sizes: list[int] = []
    # forked before the store starts its threads
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        starts = range(0, count, FILL_BATCH)

        def next_batch(start: int) -> asyncio.Future[list[Made]]:
            return loop.run_in_executor(
                pool, make_batch, seed, mixed, start, min(count, start + FILL_BATCH)
            )

        made = next_batch(0)
        store = await Store.open(async_database_url(db_url))
        try:
            delivery = MailDelivery(store, DeliveryConfig(max_batch=FILL_BATCH))
            local = (await delivery.resolve_recipient(parse_mailbox(USER))).local
            for start in starts:
                batch = await made
                if start + FILL_BATCH < count:
                    made = next_batch(start + FILL_BATCH)
                sizes += [len(m.content) for m in batch]
                deliveries = [
                    Delivery(f"fill{start + k}", m.sender, m.content, local, (), m.date)
                    for k, m in enumerate(batch)
                ]
                await asyncio.gather(*(delivery.deliver(d) for d in deliveries))
                if start // FILL_BATCH % 10 == 9:
                    print(f"  filed {start + FILL_BATCH:,} ...", flush=True)
        finally:
            await store.close()
    return sizes


class BenchFailed(Exception):
    """The server did not do what was asked: the figures would mean nothing."""


# --- the client -----------------------------------------------------------------------------------

LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


@dataclass
class Reply:
    status: bytes
    text: bytes
    untagged: int = 0  # untagged responses
    literal_bytes: int = 0
    received: int = 0  # bytes, all told
    lines: list[bytes] = field(default_factory=list)  # kept on request, literals left out

    def ok(self, what: str) -> Reply:
        if self.status != b"OK":
            raise BenchFailed(f"{what}: {self.status.decode()} {self.text.decode()}")
        return self


class Imap:
    """One IMAP connection: commands in, responses counted (literals followed, not parsed)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None) -> Imap:
        """Over TLS, or plain TCP when ``tls`` is None."""
        reader, writer = await asyncio.open_connection("localhost", port, ssl=tls, limit=64 * 2**20)
        client = cls(reader, writer)
        greeting = await client.response()
        if not greeting.startswith(b"* OK"):
            raise BenchFailed(f"greeting {greeting!r}")
        return client

    async def response(self) -> bytes:
        """One whole response, its literals read and left out (``{n}`` stays in the line)."""
        line = await self.reader.readuntil(b"\r\n")
        while (m := LITERAL.search(line)) is not None:
            await self.reader.readexactly(int(m.group(1)))
            line += await self.reader.readuntil(b"\r\n")
        return line

    async def command(self, text: str, *, keep: bool = False) -> Reply:
        self.counter += 1
        tag = b"b%d" % self.counter
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        await self.writer.drain()
        reply = Reply(b"", b"")
        read = self.reader.readuntil
        while True:
            line = await read(b"\r\n")
            reply.received += len(line)
            while (m := LITERAL.search(line)) is not None:
                n = int(m.group(1))
                await self.reader.readexactly(n)
                reply.literal_bytes += n
                reply.received += n
                more = await read(b"\r\n")
                reply.received += len(more)
                line += more
            if line.startswith(tag + b" "):
                status, _, rest = line[len(tag) + 1 :].partition(b" ")
                reply.status, reply.text = status, rest.rstrip()
                return reply
            if line.startswith(b"* "):
                reply.untagged += 1
                if keep:
                    reply.lines.append(line)

    async def login(self) -> None:
        (await self.command(f'LOGIN "{USER}" "{PASSWORD}"')).ok("LOGIN")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.command("LOGOUT")
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def logged_in(port: int, tls: ssl.SSLContext) -> Imap:
    client = await Imap.connect(port, tls)
    await client.login()
    return client


class Smtp:
    """Just enough SMTP to deliver one message at a time and time its reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Smtp:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        await client.expect(b"220")
        await client.command("EHLO bench.client.example", b"250")
        return client

    async def expect(self, code: bytes) -> bytes:
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line[3:4] != b"-":
                if not line.startswith(code):
                    raise BenchFailed(f"SMTP said {line!r}")
                return line

    async def command(self, text: str, code: bytes) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        return await self.expect(code)

    async def send(self, sender: str, content: bytes) -> tuple[float, float]:
        """Deliver; (perf_counter at the end of DATA, perf_counter at its 250)."""
        await self.command(f"MAIL FROM:<{sender}>", b"250")
        await self.command(f"RCPT TO:<{USER}>", b"250")
        await self.command("DATA", b"354")
        stuffed = re.sub(rb"(?m)^\.", b"..", content)
        self.writer.write(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        await self.writer.drain()
        sent = time.perf_counter()
        await self.expect(b"250")
        return sent, time.perf_counter()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.command("QUIT", b"221")
        self.writer.close()


# --- figures --------------------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: ``5`` to /proc/PID/clear_refs)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * p / 100))]


def span(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    """``1.23 s`` or ``1.23-1.41 s`` (the range over runs)."""
    low, high = min(values) * scale, max(values) * scale
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f} {unit}"
    return f"{low:.{digits}f}-{high:.{digits}f} {unit}"


def rate(count: float, seconds: list[float], unit: str, scale: float = 1.0) -> str:
    rates = sorted(count * scale / s for s in seconds)
    if f"{rates[0]:,.0f}" == f"{rates[-1]:,.0f}":
        return f"{rates[0]:,.0f} {unit}"
    return f"{rates[0]:,.0f}-{rates[-1]:,.0f} {unit}"


class Profiler:
    """``py-spy record`` of the server around each step, when asked; the hottest functions."""

    def __init__(self, directory: Path | None, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def record(self, name: str) -> AsyncIterator[None]:
        if self.directory is None:
            yield
            return
        out = self.directory / f"{name}.txt"
        spy = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--pid", str(self.pid), "--rate", str(SPY_RATE), "--threads",
            "--nonblocking", "--format", "raw", "--output", str(out),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1.5)  # attached and sampling
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            await asyncio.wait_for(spy.wait(), 30)
            self.summarize(name, out)

    @staticmethod
    def summarize(name: str, path: Path, top: int = 10) -> None:
        """Where the busy samples went: by thread, by tidings function (inclusive), and by the
        function that was running (self; C code counts as the Python function calling it)."""
        if not path.exists():
            print(f"    py-spy: no profile for {name}")
            return
        threads: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            thread, *frames = stack.split(";")
            total += n
            threads[_thread_name(thread)] += n
            names = [_frame(f) for f in frames]
            if names:
                own[names[-1]] += n
            for frame in set(names):
                if frame.startswith("tidings/") and not frame.startswith(_PLUMBING):
                    inclusive[frame] += n
        if not total:
            return

        def share(counter: Counter[str], count: int) -> str:
            return ", ".join(
                f"{k.removeprefix('tidings/')} {100 * n / total:.0f}%"
                for k, n in counter.most_common(count)
            )

        print(f"    py-spy {name}: {total} busy samples (~{total / SPY_RATE:.1f} thread-s), {path}")
        print(f"      threads: {share(threads, 5)}")
        print("      tidings, inclusive: " + share(inclusive, top))
        print("      self: " + share(own, top), flush=True)


SPY_RATE = 200  # samples a second
# Frames every sample passes through: not worth listing.
_PLUMBING = (
    "tidings/__main__.py", "tidings/cli.py", "tidings/imap/session.py:Session.run",
    "tidings/imap/session.py:Session.handle", "tidings/imap/session.py:Session.dispatch",
)  # fmt: skip


def _frame(text: str) -> str:
    """``func (path/to/file.py:12)`` → ``file.py:func``; tidings paths keep their package."""
    func, _, where = text.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    if path.startswith("tidings/") or "/tidings/" in path:
        path = "tidings/" + path.rpartition("tidings/")[2]
    else:
        path = path.rpartition("/")[2]
    return f"{path}:{func}" if path else func


def _thread_name(text: str) -> str:
    """``thread (123): tidings-sqlite-read_0`` → ``tidings-sqlite-read``."""
    name = text.partition(": ")[2] or text
    if "_connection_worker_thread" in name:
        return "aiosqlite"
    if name.startswith(("uvloop_", "asyncio_")):
        return "to_thread"  # the event loop's default executor
    return re.sub(r"(_\d+)+$|-\d+$", "", name)


# --- the steps ------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    server: TidingsServer
    tls: ssl.SSLContext
    profiler: Profiler
    exists: int = 0
    peak: int = 0  # the server's VmHWM during the last step timed
    highest: int = 0  # the highest of those

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    @property
    def imaps(self) -> int:
        return self.server.addresses["imaps"][1]

    @property
    def endpoint(self) -> tuple[int, ssl.SSLContext | None]:
        """Where sessions log in: 993 over TLS, or with --plain port 143 without TLS (the
        server started with imap.allow_insecure_auth)."""
        if self.args.plain:
            return self.server.addresses["imap"][1], None
        return self.imaps, self.tls

    async def timed(
        self, name: str, run: Callable[[int], Awaitable[Reply | None]], runs: int = 1
    ) -> tuple[list[float], list[float], list[Reply | None]]:
        """``run(k)`` for k in range(runs * repeat): wall and server CPU seconds, and replies.
        The server's peak RSS during the runs is kept in ``self.peak``."""
        walls: list[float] = []
        cpus: list[float] = []
        replies: list[Reply | None] = []
        reset_peak(self.pid)
        async with self.profiler.record(name):
            for k in range(runs * self.args.repeat):
                cpu = cpu_seconds(self.pid)
                t0 = time.perf_counter()
                replies.append(await run(k))
                walls.append(time.perf_counter() - t0)
                cpus.append(cpu_seconds(self.pid) - cpu)
        self.peak = proc_status(self.pid, "VmHWM")
        self.highest = max(self.highest, self.peak)
        return walls, cpus, replies

    def show(self, label: str, walls: list[float], cpus: list[float], extra: str = "") -> None:
        line = (
            f"  {label:<50} {span(walls):>13}  server CPU {span(cpus):<11}  "
            f"peak RSS {self.peak / 2**20:3.0f} MiB  {extra}"
        )
        print(line.rstrip(), flush=True)

    @staticmethod
    def show_latency(label: str, values: list[float]) -> None:
        print(f"  {label:<50} p50 {percentile(values, 50) * 1000:6.1f} ms  "
              f"p95 {percentile(values, 95) * 1000:6.1f} ms  "
              f"max {max(values) * 1000:6.1f} ms  (n={len(values)})", flush=True)  # fmt: skip

    async def login_step(self) -> None:
        connects: list[float] = []
        logins: list[float] = []
        reset_peak(self.pid)
        async with self.profiler.record("login"):
            for _ in range(self.args.logins):
                t0 = time.perf_counter()
                client = await Imap.connect(*self.endpoint)
                t1 = time.perf_counter()
                await client.login()
                logins.append(time.perf_counter() - t1)
                connects.append(t1 - t0)
                await client.close()
        self.show_latency("connect + TLS handshake + greeting", connects)
        self.show_latency("LOGIN", logins)
        self.peak = proc_status(self.pid, "VmHWM")
        self.highest = max(self.highest, self.peak)
        print(f"  {'':<50} peak RSS {self.peak / 2**20:.0f} MiB (Argon2: 64 MiB a hash)")

    async def mailbox_steps(self, client: Imap) -> None:
        steps = self.args.steps
        reply = (await client.command("STATUS INBOX (MESSAGES)", keep=True)).ok("STATUS")
        n = self.exists = int(re.findall(rb"MESSAGES (\d+)", b"".join(reply.lines))[0])

        async def select(_: int) -> Reply:
            return (await client.command("SELECT INBOX")).ok("SELECT")

        if "select" in steps:
            walls, cpus, _ = await self.timed("select", select)
            self.show(f"SELECT INBOX ({n:,} messages)", walls, cpus)
        else:
            await select(0)

        async def fetch(command: str) -> Reply:
            reply = (await client.command(command)).ok(command)
            if reply.untagged < n:
                raise BenchFailed(f"{command}: {reply.untagged} responses for {n}")
            return reply

        fetches = (
            ("flags", "FETCH 1:* (UID FLAGS)", "FETCH 1:* (UID FLAGS)"),
            ("headers", "FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)",
             "FETCH 1:* (UID FLAGS INTERNALDATE SIZE ENVELOPE)"),
            ("thunderbird", "UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS "
             f"({THUNDERBIRD_FIELDS})])", "UID FETCH 1:* (SIZE FLAGS HEADER.FIELDS (...))"),
        )  # fmt: skip
        for name, command, label in fetches:
            if name in steps:
                walls, cpus, replies = await self.timed(
                    name, lambda _, command=command: fetch(command)
                )
                sent = replies[0].received / 2**20 if replies[0] else 0
                self.show(label, walls, cpus, f"{rate(n, walls, 'msg/s')}, {sent:.1f} MiB")
        if "bodies" in steps:
            await self.bodies_step(client)
        if "search" in steps:
            for key in (f"SUBJECT {SUBJECT_WORD}", f"FROM {FROM_WORD}", f"BODY {BODY_WORD}",
                        f"TEXT {BODY_WORD}"):  # fmt: skip

                async def search(_: int, key: str = key) -> Reply:
                    return (await client.command(f"SEARCH {key}", keep=True)).ok(key)

                name = "search-" + key.split()[0].lower()
                walls, cpus, replies = await self.timed(name, search)
                lines = replies[0].lines if replies[0] else []
                found = [x for x in lines if x.startswith(b"* SEARCH")]
                hits = len(found[0].split()) - 2 if found else 0
                self.show(f"SEARCH {key}", walls, cpus, f"{hits:,} hits")
        if "store" in steps:
            # +FLAGS then -FLAGS, so that every +FLAGS run changes every message
            async def store(k: int) -> Reply:
                return await fetch(f"STORE 1:* {'-' if k % 2 else '+'}FLAGS (\\Seen)")

            walls, cpus, _ = await self.timed("store", store, runs=2)
            for mode, k in (("+", 0), ("-", 1)):
                self.show(f"STORE 1:* {mode}FLAGS (\\Seen)", walls[k::2], cpus[k::2],
                          rate(n, walls[k::2], "msg/s"))  # fmt: skip

    async def bodies_step(self, client: Imap) -> None:
        count = min(self.args.bodies, self.exists)
        reply = (await client.command("UID SEARCH ALL", keep=True)).ok("UID SEARCH ALL")
        found = next(x for x in reply.lines if x.startswith(b"* SEARCH"))
        uids = [int(u) for u in found.split()[2:]]

        async def bodies(k: int) -> Reply:
            # a different run of consecutive messages each time, none read before
            start = (len(uids) // 3 + k * count) % max(1, len(uids) - count)
            first, last = uids[start], uids[start + count - 1]
            reply = (await client.command(f"UID FETCH {first}:{last} BODY.PEEK[]")).ok("bodies")
            if reply.untagged != count:
                raise BenchFailed(f"BODY.PEEK[]: {reply.untagged} of {count} messages")
            return reply

        walls, cpus, replies = await self.timed("bodies", bodies)
        mean = statistics.mean(r.literal_bytes for r in replies if r is not None)
        self.show(f"UID FETCH a:b BODY.PEEK[] ({count} messages)", walls, cpus,
                  f"{rate(count, walls, 'msg/s')}, {rate(mean, walls, 'MB/s', 1e-6)}")  # fmt: skip

    async def idle_step(self, maker: MessageMaker) -> None:
        """SMTP deliveries, one at a time, to the INBOX an IDLE session has selected."""
        smtp_port = self.server.addresses["smtp"][1]
        client = await logged_in(*self.endpoint)
        (await client.command("SELECT INBOX")).ok("SELECT")
        client.writer.write(b"idle IDLE\r\n")
        while not (await client.response()).startswith(b"+"):
            pass
        smtp = await Smtp.connect(smtp_port)
        after_250: list[float] = []
        after_dot: list[float] = []

        async def next_exists() -> float:
            while True:
                line = await client.response()
                if line.rstrip().endswith(b" EXISTS"):
                    return time.perf_counter()

        cpu = cpu_seconds(self.pid)
        reset_peak(self.pid)
        async with self.profiler.record("idle"):
            for k in range(self.args.idle_deliveries):
                made = maker.make(10_000_000 + k)
                waiter = asyncio.ensure_future(next_exists())
                sent, replied = await smtp.send(made.sender, made.content)
                seen = await asyncio.wait_for(waiter, 30)
                after_250.append(seen - replied)
                after_dot.append(seen - sent)
                await asyncio.sleep(0.05)
        cpu = cpu_seconds(self.pid) - cpu
        self.peak = proc_status(self.pid, "VmHWM")
        self.highest = max(self.highest, self.peak)
        await smtp.close()
        client.writer.write(b"DONE\r\n")
        while not (await client.response()).startswith(b"idle "):
            pass
        # Take the new messages out again, so that a rerun with --skip-fill finds the same.
        await client.command(f"STORE {self.exists + 1}:* +FLAGS.SILENT (\\Deleted)")
        await client.command("EXPUNGE")
        await client.close()
        self.show_latency("IDLE: SMTP 250 → * n EXISTS", after_250)
        self.show_latency("IDLE: end of DATA → * n EXISTS", after_dot)
        n = len(after_dot)
        print(f"  {'':<50} server CPU {cpu / n * 1000:.1f} ms per delivery and notice, "
              f"peak RSS {self.peak / 2**20:.0f} MiB")  # fmt: skip

    async def concurrent_step(self) -> None:
        n = self.args.sessions
        # A few logins at a time: the server makes a burst from one address wait for the
        # attempts in progress, and refuses those still waiting after 10 s.
        gate = asyncio.Semaphore(4)

        async def log_in() -> Imap:
            async with gate:
                return await logged_in(*self.endpoint)

        t0 = time.perf_counter()
        clients = await asyncio.gather(*(log_in() for _ in range(n)))
        print(f"  {f'{n} sessions log in, 4 at a time':<50} {time.perf_counter() - t0:11.2f} s")
        per_session: list[float] = []

        async def one(client: Imap) -> None:
            t = time.perf_counter()
            (await client.command("SELECT INBOX")).ok("SELECT")
            reply = (await client.command("FETCH 1:* (FLAGS)")).ok("FETCH")
            if reply.untagged < self.exists:
                raise BenchFailed(f"FETCH: {reply.untagged} responses of {self.exists}")
            per_session.append(time.perf_counter() - t)
            (await client.command("UNSELECT")).ok("UNSELECT")

        async def all_of_them(_: int) -> None:
            await asyncio.gather(*(one(c) for c in clients))

        walls, cpus, _ = await self.timed("concurrent", all_of_them)
        self.show(f"{n} sessions at once: SELECT + FETCH 1:* (FLAGS)", walls, cpus,
                  f"per session p50 {percentile(per_session, 50):.2f} s, "
                  f"max {max(per_session):.2f} s")  # fmt: skip
        rss = proc_status(self.pid, "VmRSS")
        print(f"  server RSS with {n} sessions logged in: {rss / 2**20:.0f} MiB")
        await asyncio.gather(*(c.close() for c in clients))

    async def run(self, maker: MessageMaker) -> None:
        steps = self.args.steps
        print(f"server RSS at start: {proc_status(self.pid, 'VmRSS') / 2**20:.0f} MiB "
              f"(peak {proc_status(self.pid, 'VmHWM') / 2**20:.0f} MiB)")  # fmt: skip
        if "login" in steps:
            await self.login_step()
        client = await logged_in(*self.endpoint)
        await self.mailbox_steps(client)
        await client.close()
        if "idle" in steps:
            await self.idle_step(maker)
        if "concurrent" in steps:
            await self.concurrent_step()
        highest = max(self.highest, proc_status(self.pid, "VmHWM"))
        print(f"server RSS after the run: {proc_status(self.pid, 'VmRSS') / 2**20:.0f} MiB "
              f"(highest peak {highest / 2**20:.0f} MiB)")  # fmt: skip


# --- issue 4: the targets ---------------------------------------------------------------------

ISSUE_STEPS = ("select", "first-sync", "bodies-all", "ceiling", "idle-sessions")
FIRST_SYNC = "FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)"
TARGET_FIRST_SYNC = 1.0  # s, for 10,000 envelopes
TARGET_BODIES = 120.0  # MB/s (10^6 bytes), over plain IMAP
TARGET_IDLE_KB = 30.0  # KB (1024 bytes) of server RSS per idle IDLE session
FD_MARGIN = 200  # descriptors beside the sessions: listeners, the store, logs


def run_loop(coro: Awaitable[None]) -> None:
    """On uvloop when it is installed (as the server is), so that the client's own overhead
    is as small as Python makes it."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def raise_nofile(sessions: int) -> str:
    """Raise this process's soft RLIMIT_NOFILE for ``sessions`` connections (the server, a
    child, inherits it); an error message when the hard limit is too low."""
    import resource

    need = 2 * sessions + FD_MARGIN  # the last probe holds 2 connections a session
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        return (
            f"--idle-sessions {sessions}: the hard RLIMIT_NOFILE is {hard}, the bench and "
            f"the server each need {need}; raise it (ulimit -Hn, limits.conf) or ask for fewer"
        )
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return ""


def canned_server(
    port_queue: multiprocessing.Queue[int], response: bytes, cert: str, key: str
) -> None:
    """The ceiling: a server that answers any tagged command with ``response`` (a canned FETCH
    of the mailbox's bodies) on a plain and a TLS port; as fast as Python can send it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    view = memoryview(response)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK canned\r\n")
        while line := await reader.readline():
            tag = line.split(b" ", 1)[0]
            for k in range(0, len(view), 2**20):
                writer.write(view[k : k + 2**20])
                await writer.drain()
            writer.write(tag + b" OK done\r\n")
        writer.close()

    async def main() -> None:
        plain = await asyncio.start_server(serve, "127.0.0.1", 0)
        secure = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        for server in (plain, secure):
            port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    run_loop(main())


@dataclass
class IssueBench(Bench):
    """Issue 4's figures: SELECT, first sync, every body, and many IDLE sessions."""

    directory: Path = Path()
    sizes: list[int] = field(default_factory=list)  # RFC822.SIZE of each message
    verdicts: list[tuple[str, str, str]] = field(default_factory=list)

    def client_timed(self) -> Callable[[], tuple[float, float, float]]:
        """A stopwatch: wall, server CPU and client (this process's) CPU seconds since."""
        t0, server, client = time.perf_counter(), cpu_seconds(self.pid), time.process_time()
        return lambda: (
            time.perf_counter() - t0,
            cpu_seconds(self.pid) - server,
            time.process_time() - client,
        )

    def verdict(self, target: str, measured: str, good: list[bool], note: str = "") -> None:
        met = "met" if all(good) else "NOT met" if not any(good) else "met in some runs"
        if not good:
            met = "(no target)"
        self.verdicts.append((target, measured, met + (f" ({note})" if note else "")))

    async def plain_port(self) -> None:
        """What port 143 offers before STARTTLS (a plain login needs --plain)."""
        port = self.server.addresses.get("imap", ("", 0))[1]
        if not port:
            return
        client = await Imap.connect(port, None)
        reply = (await client.command("CAPABILITY", keep=True)).ok("CAPABILITY")
        caps = b" ".join(reply.lines).decode().split()
        await client.close()
        print(f"  port 143 before STARTTLS offers: {' '.join(caps[2:])}")
        if self.args.plain:
            print("  → --plain: sessions log in on 143 without TLS (imap.allow_insecure_auth)")
        elif "LOGINDISABLED" in caps:
            print("  → no login before STARTTLS (add --plain to start the server with "
                  "imap.allow_insecure_auth): every figure below is over TLS (993); the "
                  "'ceiling' step measures what plain TCP would give")  # fmt: skip

    async def run(self, maker: MessageMaker) -> None:
        steps = self.args.steps
        print(f"client event loop: {type(asyncio.get_running_loop()).__module__}")
        await self.plain_port()
        client = await logged_in(*self.endpoint)
        reply = (await client.command("STATUS INBOX (MESSAGES SIZE)", keep=True)).ok("STATUS")
        text = b"".join(reply.lines)
        self.exists = int(re.findall(rb"MESSAGES (\d+)", text)[0])
        total = int(re.findall(rb"SIZE (\d+)", text)[0])
        print(f"INBOX: {self.exists:,} messages, {total / 1e6:.1f} MB; server RSS "
              f"{proc_status(self.pid, 'VmRSS') / 2**20:.0f} MiB")  # fmt: skip
        (await client.command("EXAMINE INBOX")).ok("EXAMINE")
        reply = (await client.command("FETCH 1:* (RFC822.SIZE)", keep=True)).ok("SIZE")
        self.sizes = [int(x) for x in re.findall(rb"RFC822\.SIZE (\d+)", b"".join(reply.lines))]
        if "select" in steps:
            await self.select_step(client)
        else:
            (await client.command("SELECT INBOX")).ok("SELECT")
        if "first-sync" in steps:
            await self.first_sync_step(client)
        if "bodies-all" in steps:
            await self.bodies_all_step(client)
        await client.close()
        if "ceiling" in steps:
            await self.ceiling_step()
        if "idle-sessions" in steps:
            await self.idle_sessions_step(maker)
        self.summary()

    async def select_step(self, client: Imap) -> None:
        walls, cpus = [], []
        reset_peak(self.pid)
        # in a new session each time, as a client's first SELECT (a session may keep its view)
        for _ in range(max(3, self.args.repeat)):
            fresh = await logged_in(*self.endpoint)
            watch = self.client_timed()
            (await fresh.command("SELECT INBOX")).ok("SELECT")
            wall, server, _ = watch()
            await fresh.close()
            walls.append(wall)
            cpus.append(server)
        (await client.command("SELECT INBOX")).ok("SELECT")
        self.peak = proc_status(self.pid, "VmHWM")
        self.show(f"SELECT INBOX ({self.exists:,} messages), new session", walls, cpus)
        self.verdict("SELECT INBOX", span(walls), [])

    async def first_sync_step(self, client: Imap) -> None:
        walls, cpus, clients = [], [], []
        reset_peak(self.pid)
        async with self.profiler.record("first-sync"):
            for _ in range(max(3, self.args.repeat)):
                watch = self.client_timed()
                reply = (await client.command(FIRST_SYNC)).ok(FIRST_SYNC)
                wall, server, own = watch()
                if reply.untagged < self.exists:
                    raise BenchFailed(f"{FIRST_SYNC}: {reply.untagged} of {self.exists}")
                walls.append(wall)
                cpus.append(server)
                clients.append(own)
        self.peak = proc_status(self.pid, "VmHWM")
        self.show(FIRST_SYNC, walls, cpus,
                  f"{rate(self.exists, walls, 'msg/s')}, client CPU {span(clients)}, "
                  f"{reply.received / 2**20:.1f} MiB, at {time.strftime('%H:%M:%S')}")  # fmt: skip
        # The target is for 10,000 messages: scaled when the INBOX holds another number.
        limit = TARGET_FIRST_SYNC * self.exists / 10_000
        how = "plain" if self.args.plain else "over TLS"
        self.verdict(f"first sync of {self.exists:,} envelopes < {limit:.2f} s", span(walls),
                     [w < limit for w in walls], how)  # fmt: skip

    async def bodies_all_step(self, client: Imap) -> None:
        command = "UID FETCH 1:* (BODY.PEEK[])"
        walls, cpus, clients, volume = [], [], [], 0
        reset_peak(self.pid)
        async with self.profiler.record("bodies-all"):
            for _ in range(self.args.repeat):
                watch = self.client_timed()
                reply = (await client.command(command)).ok(command)
                wall, server, own = watch()
                if reply.untagged < self.exists:
                    raise BenchFailed(f"{command}: {reply.untagged} of {self.exists}")
                walls.append(wall)
                cpus.append(server)
                clients.append(own)
                volume = reply.literal_bytes
        self.peak = proc_status(self.pid, "VmHWM")
        speeds = [volume / 1e6 / w for w in walls]
        self.show(command, walls, cpus,
                  f"{rate(volume, walls, 'MB/s', 1e-6)}, {rate(self.exists, walls, 'msg/s')}, "
                  f"client CPU {span(clients)}")  # fmt: skip
        per_cpu = [volume / 1e6 / c for c in cpus if c > 0]
        if per_cpu:
            print(f"  {'':<50} {volume / 1e6:.0f} MB each run; the server sends "
                  f"{span(per_cpu, 'MB', digits=0)} per CPU second (TLS included)")  # fmt: skip
        self.verdict(f"full bodies >= {TARGET_BODIES:.0f} MB/s (plain IMAP)",
                     span(speeds, "MB/s", digits=0), [v >= TARGET_BODIES for v in speeds],
                     "plain" if self.args.plain else "measured over TLS")  # fmt: skip

    async def ceiling_step(self) -> None:
        """The same client reading a canned FETCH of the mailbox's bodies from a trivial Python
        server, plain and TLS: what any Python server could reach on this machine."""
        sizes = self.sizes
        payload = random.Random(3).randbytes(max(sizes))
        parts = []
        for n, size in enumerate(sizes, 1):
            parts += [
                b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (n, n, size),
                payload[:size],
                b")\r\n",
            ]
        response = b"".join(parts)
        del parts
        tls_dir = self.directory / "data/tls"
        queue: multiprocessing.Queue[int] = multiprocessing.get_context("fork").Queue()
        child = multiprocessing.get_context("fork").Process(
            target=canned_server,
            args=(queue, response, str(tls_dir / "cert.pem"), str(tls_dir / "key.pem")),
            daemon=True,
        )
        child.start()
        try:
            plain, secure = queue.get(timeout=30), queue.get(timeout=30)
            for label, port, tls in (("plain TCP", plain, None), ("TLS", secure, self.tls)):
                client = await Imap.connect(port, tls)
                walls, clients = [], []
                for _ in range(self.args.repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    reply = (await client.command("FETCH")).ok("canned")
                    walls.append(time.perf_counter() - t0)
                    clients.append(time.process_time() - c0)
                await client.close()
                volume = reply.literal_bytes
                print(f"  {'ceiling: canned bodies, ' + label:<50} {span(walls):>13}  "
                      f"{rate(volume, walls, 'MB/s', 1e-6)} ({volume / 1e6:.0f} MB, "
                      f"{len(sizes):,} literals), client CPU {span(clients)}",
                      flush=True)  # fmt: skip
        finally:
            child.kill()
            child.join()

    async def idle_sessions_step(self, maker: MessageMaker) -> None:
        n = self.args.idle_sessions
        await asyncio.sleep(2)
        before = proc_status(self.pid, "VmRSS")
        print(f"  {n:,} IDLE sessions: server RSS before {before / 2**20:.1f} MiB", flush=True)
        clients: list[Imap] = []
        # A few logins at a time: each costs an Argon2 check (~0.1 s of a core), and the server
        # makes a burst from one address wait, refusing those still waiting after 10 s.
        gate = asyncio.Semaphore(4)
        watch = self.client_timed()

        async def log_in() -> None:
            async with gate:
                clients.append(await logged_in(*self.endpoint))
                if len(clients) % 250 == 0:
                    print(f"    {len(clients):,} logged in, {watch()[0]:.0f} s", flush=True)

        await asyncio.gather(*(log_in() for _ in range(n)))
        wall, server, _ = watch()
        logged = proc_status(self.pid, "VmRSS")
        print(f"  {'logged in, 4 at a time':<50} {wall:11.1f} s  server CPU {server:.1f} s  "
              f"RSS {logged / 2**20:.1f} MiB", flush=True)  # fmt: skip
        gate = asyncio.Semaphore(8)
        retried: list[bytes] = []
        selected: list[Imap] = []

        async def select(client: Imap) -> None:
            async with gate:
                # SQLite may answer NO [UNAVAILABLE] ("database is locked") under this load:
                # tried again, and counted
                for _ in range(20):
                    reply = await client.command("SELECT INBOX")
                    if reply.status == b"OK" or b"[UNAVAILABLE]" not in reply.text:
                        break
                    retried.append(reply.text)
                    await asyncio.sleep(0.5)
                reply.ok("SELECT")
                selected.append(client)
                if len(selected) % 250 == 0:
                    print(
                        f"    {len(selected):,} selected, {watch()[0]:.0f} s, RSS "
                        f"{proc_status(self.pid, 'VmRSS') / 2**20:.0f} MiB",
                        flush=True,
                    )

        async with self.profiler.record("idle-select"):
            watch = self.client_timed()
            await asyncio.gather(*(select(c) for c in clients))
            wall, server, _ = watch()
        print(f"  {'SELECT INBOX in each, 8 at a time':<50} {wall:11.1f} s  server CPU "
              f"{server:.1f} s  RSS {proc_status(self.pid, 'VmRSS') / 2**20:.1f} MiB",
              flush=True)  # fmt: skip
        if retried:
            print(f"  {'':<50} {len(retried)} SELECTs answered NO, tried again: "
                  f"{retried[0].decode()}")  # fmt: skip

        async def idle(client: Imap) -> None:
            client.writer.write(b"idle IDLE\r\n")
            while not (await client.response()).startswith(b"+"):
                pass

        await asyncio.gather(*(idle(c) for c in clients))
        await asyncio.sleep(5)  # whatever the server does after, settled
        idling = proc_status(self.pid, "VmRSS")
        per = [(idling - before) / n / 1024, (idling - logged) / n / 1024]
        print(f"  {'all idling (after 5 s)':<50} RSS {idling / 2**20:.1f} MiB: "
              f"{per[0]:.1f} KiB a session ({(logged - before) / n / 1024:.1f} logged in, "
              f"{per[1]:.1f} more for SELECT + IDLE)", flush=True)  # fmt: skip
        self.verdict(f"RSS per IDLE session <= {TARGET_IDLE_KB:.0f} KB", f"{per[0]:.1f} KiB",
                     [per[0] <= TARGET_IDLE_KB],
                     f"{n:,} sessions {'plain' if self.args.plain else 'over TLS'}")  # fmt: skip
        await self.notify_all(clients, maker)

        async def leave(client: Imap) -> None:
            async with gate:
                client.writer.write(b"DONE\r\n")
                while not (await client.response()).startswith(b"idle "):
                    pass
                await client.close()

        await asyncio.gather(*(leave(c) for c in clients))
        await asyncio.sleep(2)
        print(f"  {'all logged out (after 2 s)':<50} RSS "
              f"{proc_status(self.pid, 'VmRSS') / 2**20:.1f} MiB", flush=True)  # fmt: skip
        # Take the new message out again, so that a rerun with --skip-fill finds the same.
        client = await logged_in(*self.endpoint)
        (await client.command("SELECT INBOX")).ok("SELECT")
        await client.command(f"STORE {self.exists + 1}:* +FLAGS.SILENT (\\Deleted)")
        await client.command("EXPUNGE")
        await client.close()
        # On a new server: memory the sessions freed would be taken again, unseen by RSS.
        await asyncio.to_thread(self.server.stop, 30)
        await asyncio.to_thread(self.server.start, 120)
        await asyncio.sleep(1)
        await self.connections_only(n)

    async def connections_only(self, n: int) -> None:
        """What a connection costs before login: ``n`` of them, greeting only, over plain TCP
        (143), then as many over TLS (993) beside them; each from the RSS just before."""
        ports: list[tuple[str, int, ssl.SSLContext | None]] = []
        if plain := self.server.addresses.get("imap", ("", 0))[1]:
            ports.append(("plain (143)", plain, None))
        ports.append(("TLS (993)", self.imaps, self.tls))
        gate = asyncio.Semaphore(32)
        opened: list[Imap] = []
        print(f"  server restarted (pid {self.pid}), RSS "
              f"{proc_status(self.pid, 'VmRSS') / 2**20:.1f} MiB", flush=True)  # fmt: skip
        for label, port, tls in ports:
            await asyncio.sleep(1)
            before = proc_status(self.pid, "VmRSS")

            async def connect(port: int = port, tls: ssl.SSLContext | None = tls) -> Imap:
                async with gate:
                    return await Imap.connect(port, tls)

            opened += await asyncio.gather(*(connect() for _ in range(n)))
            await asyncio.sleep(2)
            per = (proc_status(self.pid, "VmRSS") - before) / n / 1024
            print(f"  {f'{n:,} connections, greeting only, {label}':<50} "
                  f"{per:.1f} KiB a connection", flush=True)  # fmt: skip
        for client in opened:
            client.writer.close()
        await asyncio.gather(*(c.writer.wait_closed() for c in opened), return_exceptions=True)

    async def notify_all(self, clients: list[Imap], maker: MessageMaker) -> None:
        """One SMTP delivery: how long until each IDLE session has its ``* n EXISTS``."""
        seen: list[float] = []

        async def exists(client: Imap) -> None:
            while not (await client.response()).rstrip().endswith(b" EXISTS"):
                pass
            seen.append(time.perf_counter())

        waiters = [asyncio.ensure_future(exists(c)) for c in clients]
        smtp = await Smtp.connect(self.server.addresses["smtp"][1])
        made = maker.make(20_000_000)
        async with self.profiler.record("idle-notify"):
            watch = self.client_timed()
            sent, replied = await smtp.send(made.sender, made.content)
            _, pending = await asyncio.wait(waiters, timeout=60)
            _, server, own = watch()
        await smtp.close()
        for waiter in pending:
            waiter.cancel()
        if pending:
            raise BenchFailed(f"IDLE: {len(pending)} of {len(clients)} sessions had no EXISTS")
        late = [t - replied for t in seen]
        self.show_latency(f"SMTP 250 → * n EXISTS in all {len(clients):,}", late)
        print(f"  {'':<50} (end of DATA → 250: {(replied - sent) * 1000:.0f} ms; server CPU "
              f"{server:.2f} s, client CPU {own:.2f} s)", flush=True)  # fmt: skip
        self.verdict("SMTP 250 → EXISTS in every IDLE session",
                     f"p50 {percentile(late, 50) * 1000:.0f} ms, max {max(late) * 1000:.0f} ms",
                     [])  # fmt: skip

    def summary(self) -> None:
        print("\nissue 4 targets:")
        for target, measured, met in self.verdicts:
            print(f"  {target:<45} {measured:>24}  {met}")


# --- main -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(args: argparse.Namespace, directory: Path) -> Iterator[str]:
    """The store's URL: --db-url, a throwaway PostgreSQL (--postgres), or SQLite in --dir."""
    if args.db_url:
        yield args.db_url
    elif args.postgres:
        from pg import start_postgres

        pg = start_postgres()
        try:
            with pg.database() as url:
                yield url
        finally:
            pg.stop()
    else:
        yield f"sqlite:///{directory / 'tidings.db'}"


def show_sizes(sizes: list[int]) -> None:
    """How many messages, and how many bytes, in each SIZE_BUCKETS range."""
    total = sum(sizes)
    low = 0
    for high in (*SIZE_BUCKETS, max(sizes) + 1):
        chosen = [n for n in sizes if low <= n < high]
        if chosen:
            print(f"  {low / 1000:5.0f}-{high / 1000:3.0f} KB: {len(chosen):6,} messages "
                  f"({100 * len(chosen) / len(sizes):4.1f}%), {sum(chosen) / 1e6:6.1f} MB "
                  f"({100 * sum(chosen) / total:4.1f}% of the bytes)")  # fmt: skip
        low = high
    print(f"  smallest {min(sizes) / 1000:.1f} KB, median {statistics.median(sizes) / 1000:.1f} "
          f"KB, largest {max(sizes) / 1000:.1f} KB, total {total / 1e6:.1f} MB")  # fmt: skip


def run(args: argparse.Namespace, directory: Path) -> None:
    backend = "PostgreSQL" if args.db_url or args.postgres else "SQLite"
    maker = MessageMaker(args.seed, args.issue_targets)
    # --issue-targets looks at port 143 too (to say what it offers before STARTTLS)
    listen = {"submission": "", "submissions": "", "pop3": "", "pop3s": ""}
    if not args.issue_targets and not args.plain:
        listen["imap"] = ""
    with database(args, directory) as db_url:
        # Thousands of sessions from one loopback address: past the per-address default.
        config = write_config(
            directory,
            db_url,
            listen=listen,
            imap={"allow_insecure_auth": args.plain},
            limits={"max_connections": 0, "max_connections_per_ip": 0},
        )
        if not args.skip_fill:
            asyncio.run(provision(db_url))
            t0 = time.perf_counter()
            sizes = asyncio.run(fill(db_url, args.messages, args.seed, args.issue_targets))
            elapsed = time.perf_counter() - t0
            size = sum(sizes)
            print(f"filled INBOX: {args.messages:,} messages, {size / 2**20:.0f} MiB "
                  f"(mean {size / max(1, args.messages) / 1024:.1f} KiB) in {elapsed:.1f} s: "
                  f"{args.messages / elapsed:,.0f} msg/s ({backend})")  # fmt: skip
            if args.issue_targets:
                show_sizes(sizes)
        server = TidingsServer(config).start(timeout=120)
        try:
            tls = ssl.create_default_context(cafile=str(directory / "data/tls/cert.pem"))
            assert server.process is not None
            profiler = Profiler(args.py_spy, server.process.pid)
            print(f"{backend}, server pid {server.process.pid}, {os.cpu_count()} CPUs, "
                  f"repeat {args.repeat}; times are min-max over the runs")  # fmt: skip
            if args.issue_targets:
                issue = IssueBench(args, server, tls, profiler, directory=directory)
                run_loop(issue.run(maker))
            else:
                asyncio.run(Bench(args, server, tls, profiler).run(maker))
        finally:
            code = server.stop(timeout=30)
            if code not in (0, None):
                print(f"bench: the server exited with {code}; log: {server.log_path}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="INBOX size (20,000)")
    parser.add_argument("--db-url", default="", help="PostgreSQL URL of an empty database")
    parser.add_argument(
        "--postgres", action="store_true", help="start a throwaway PostgreSQL (tests/pg.py)"
    )
    parser.add_argument("--dir", type=Path, help="working directory, kept (default: temporary)")
    parser.add_argument(
        "--skip-fill", action="store_true", help="the store in --dir / --db-url is filled already"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each step (2)")
    parser.add_argument("--logins", type=int, default=20, help="sessions timed for login (20)")
    parser.add_argument("--bodies", type=int, default=500, help="messages per BODY[] fetch (500)")
    parser.add_argument("--idle-deliveries", type=int, default=50, help="SMTP messages (50)")
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions (50)")
    parser.add_argument(
        "--only", default=",".join(STEPS), help=f"comma-separated steps: {','.join(STEPS)}"
    )
    parser.add_argument("--seed", type=int, default=1, help="message generator seed (1)")
    parser.add_argument(
        "--plain", action="store_true",
        help="sessions log in on port 143 without TLS (imap.allow_insecure_auth on the server)",
    )  # fmt: skip
    parser.add_argument(
        "--issue-targets", action="store_true",
        help="issue 4's figures and targets instead: 10,000 messages of 2 KB-200 KB (most\n"
        "small), SELECT, FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE), UID FETCH 1:* BODY.PEEK[]\n"
        "in MB/s, a canned-response ceiling, --idle-sessions IDLE sessions' RSS; a summary.\n"
        f"--only then picks among {','.join(ISSUE_STEPS)}",
    )  # fmt: skip
    parser.add_argument(
        "--idle-sessions", type=int, default=2000, help="--issue-targets: IDLE sessions (2000)"
    )
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="py-spy record the server per step into DIR"
    )
    args = parser.parse_args()
    known = ISSUE_STEPS if args.issue_targets else STEPS
    if args.issue_targets:
        if args.messages == parser.get_default("messages"):
            args.messages = 10_000
        if args.only == parser.get_default("only"):
            args.only = ",".join(ISSUE_STEPS)
    args.steps = set(args.only.split(","))
    if args.steps - set(known):
        parser.error(f"--only: unknown step(s) {', '.join(sorted(args.steps - set(known)))}")
    problem = ""
    if args.issue_targets and "idle-sessions" in args.steps:
        problem = raise_nofile(args.idle_sessions)
    if problem:
        parser.error(problem)
    if args.py_spy and shutil.which("py-spy") is None:
        parser.error("--py-spy: py-spy is not installed (pip install py-spy)")
    if args.skip_fill and args.postgres:
        parser.error("--skip-fill needs a store that outlives the run: --dir or --db-url")
    if args.skip_fill and not args.db_url and not (args.dir and (args.dir / "tidings.db").exists()):
        parser.error("--skip-fill: no tidings.db in --dir")
    try:
        if args.dir is not None:
            args.dir.mkdir(parents=True, exist_ok=True)
            run(args, args.dir.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="tidings-bench-imap-") as tmp:
                run(args, Path(tmp))
    except BenchFailed as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
