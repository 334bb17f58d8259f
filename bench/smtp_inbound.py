"""Inbound SMTP throughput and latency: many sessions deliver to local users on port 25.

Load comes from Postfix's ``smtp-source`` (C, little CPU), so that on a small machine the
figure is the server's and not the load client's. One extra Python session, the *probe*, sends
messages in a loop alongside it and times each final ``.`` to its ``250`` reply, which gives
the latency percentiles. Afterwards the stored messages are counted and compared with the
number of 250 replies: a benchmark that loses mail measures nothing.

    python3 bench/smtp_inbound.py                          # 20 sessions, 5,000 x 5 KB, SQLite
    python3 bench/smtp_inbound.py --sessions 50 --messages 20000
    python3 bench/smtp_inbound.py --backend postgresql --db-url postgresql+asyncpg://...
    python3 bench/smtp_inbound.py --python-client          # no smtp-source: asyncio clients
    python3 bench/smtp_inbound.py --auth                   # SPF + DKIM + DMARC on every message
    python3 bench/smtp_inbound.py --signed-only            # --auth's messages, checks off

With ``--auth`` the server trusts no network, asks a DNS server on loopback (the tests' own,
tests/dnsserver.py) for the sender's SPF, DKIM key and DMARC policy, and every message is a
DKIM-signed one (smtp-source sends it from a file with ``-F``), so each is verified in full.
``--signed-only`` sends the same signed message with the checks off (loopback is trusted, as by
default): the difference between the two is what the checks cost, the message being a little
larger than the plain run's. With ``--auth`` the number of DNS queries the server made is
printed too: its cache should ask for each name once.

The server is ``python3 -m tidings`` in a child process, so ``PYTHONPATH=/some/checkout/src``
benchmarks that checkout instead of the installed package. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "bench.test"
SENDER_DOMAIN = "elsewhere.example"
SENDER = f"sender@{SENDER_DOMAIN}"
TARGET = f"user@{DOMAIN}"  # where smtp-source sends
PROBE_TARGET = f"probe@{DOMAIN}"
EXTRA_USERS = ("alice", "bob")  # more users for --python-client to spread over
PASSWORD = "bench-password-1"
READY = re.compile(rb"ready: .*\bsmtp=(\S+):(\d+)")
SMTP_SOURCE = "smtp-source"
SMTP_SOURCE_PATHS = ("/usr/sbin/smtp-source", "/usr/bin/smtp-source")


# --- the server ---------------------------------------------------------------------------------


def write_config(directory: Path, db_url: str, nameserver: str | None = None) -> Path:
    """The same TOML shape as tests/helpers.py: loopback, an ephemeral port, its own data dir.

    With a nameserver, mail authentication is on for every client, loopback included.
    """
    data_dir = directory / "data"
    text = (
        "[server]\n"
        'hostname = "mx.bench.test"\n'
        f'data_dir = "{data_dir}"\n'
        "[database]\n"
        f'url = "{db_url}"\n'
        "[listen]\n"
        'smtp = "127.0.0.1:0"\n'
        'submission = ""\n'
        'submissions = ""\n'
        'pop3 = ""\n'
        'pop3s = ""\n'
    )
    if nameserver:
        text += (
            f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = 2.0\n'
            "[mailauth]\ntrusted_networks = []\n"
        )
    path = directory / "tidings.toml"
    path.write_text(text)
    return path


def tidings_cli(config: Path, *args: str, stdin: str | None = None) -> None:
    cmd = [sys.executable, "-m", "tidings", "--config", str(config), *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench: `{' '.join(args)}` failed: {result.stderr.strip()}")


def provision(config: Path) -> None:
    tidings_cli(config, "domain", "add", DOMAIN)
    for local in ("user", "probe", *EXTRA_USERS):
        tidings_cli(
            config, "user", "add", f"{local}@{DOMAIN}", "--password-stdin", stdin=PASSWORD + "\n"
        )


def proc_stat(path: Path) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) from a ``/proc/PID/stat``; None once gone."""
    try:
        fields = path.read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str
    port: int

    @classmethod
    def start(cls, config: Path, timeout: float = 30) -> Server:
        log_path = config.parent / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tidings", "--config", str(config), "serve"],
                stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = READY.search(log_path.read_bytes())
            if m:
                return cls(process, log_path, m.group(1).decode(), int(m.group(2)))
            if process.poll() is not None:
                break
            time.sleep(0.05)
        process.kill()
        process.wait()
        raise SystemExit(f"bench: the server did not start:\n{log_path.read_text()[-3000:]}")

    def status(self, key: str) -> int:
        """A ``/proc/PID/status`` figure in bytes (VmRSS, VmHWM), 0 once the process is gone."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process (every thread), in seconds."""
        stat = proc_stat(Path(f"/proc/{self.process.pid}/stat"))
        return stat[1] if stat else 0.0

    def children_cpu_seconds(self) -> float:
        """CPU time of the server's living child processes (the check process)."""
        stats = (proc_stat(path) for path in Path("/proc").glob("[0-9]*/stat"))
        return sum(cpu for ppid, cpu in filter(None, stats) if ppid == self.process.pid)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# --- the clients --------------------------------------------------------------------------------


def make_body(size: int, seq: int) -> bytes:
    """Headers plus ``size`` payload bytes in 80-byte CRLF lines (as smtp-source does)."""
    headers = (
        f"From: <{SENDER}>\r\nTo: <{TARGET}>\r\nSubject: bench {seq}\r\n"
        f"Message-ID: <bench-{seq}-{time.time_ns()}@elsewhere.example>\r\n\r\n"
    ).encode()
    line = b"X" * 78 + b"\r\n"
    full, rest = divmod(size, len(line))
    payload = line * full + (b"X" * max(rest - 2, 0) + b"\r\n" if rest else b"")
    return headers + payload


def signed_message(size: int) -> tuple[bytes, dict[str, list[tuple[str, object]]]]:
    """A DKIM-signed message from SENDER's domain, and the DNS zone that makes it pass
    SPF (127.0.0.1 allowed), DKIM (the key) and DMARC (p=reject, aligned)."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = make_body(size, 0)
    signature = dkim.sign(
        body, b"bench", SENDER_DOMAIN.encode(), pem, include_headers=[b"from", b"to", b"subject"]
    )
    zone: dict[str, list[tuple[str, object]]] = {
        SENDER_DOMAIN: [("TXT", "v=spf1 ip4:127.0.0.1 -all")],
        f"_dmarc.{SENDER_DOMAIN}": [("TXT", "v=DMARC1; p=reject")],
        f"bench._domainkey.{SENDER_DOMAIN}": [
            ("TXT", "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode())
        ],
    }
    return bytes(signature) + body, zone


class SMTPClient:
    """A minimal SMTP client that times DATA's end-of-data to its reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> SMTPClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        await client.expect("220")
        await client.command("EHLO probe.elsewhere.example", "250")
        return client

    async def reply(self) -> str:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed by the server")
            lines.append(line.decode(errors="replace").rstrip())
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    async def expect(self, code: str) -> str:
        text = await self.reply()
        if not text.startswith(code):
            raise RuntimeError(f"expected {code}, got {text!r}")
        return text

    async def command(self, line: str, code: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        return await self.expect(code)

    async def send(self, recipient: str, body: bytes) -> float:
        """One transaction; the seconds from writing the final ``.`` to reading the 250."""
        await self.command(f"MAIL FROM:<{SENDER}> SIZE={len(body)}", "250")
        await self.command(f"RCPT TO:<{recipient}>", "250")
        await self.command("DATA", "354")
        self.writer.write(body)
        await self.writer.drain()
        start = time.perf_counter()
        self.writer.write(b".\r\n")
        await self.expect("250")
        return time.perf_counter() - start

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await self.reply()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@dataclass
class Load:
    accepted: int = 0  # 250 replies to DATA
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def probe(  # noqa: PLR0917 - the probe's whole setup, passed once
    host: str, port: int, size: int, stop: asyncio.Event, load: Load, fixed: bytes | None = None
) -> None:
    """One session sending to PROBE_TARGET in a loop until ``stop`` is set."""
    client = await SMTPClient.connect(host, port)
    try:
        seq = 0
        while not stop.is_set():
            seq += 1
            body = fixed if fixed is not None else make_body(size, seq)
            load.latencies.append(await client.send(PROBE_TARGET, body))
            load.accepted += 1
    except (OSError, RuntimeError) as e:
        load.errors.append(f"probe: {e}")
    finally:
        await client.close()


async def python_sessions(
    host: str, port: int, *, sessions: int, messages: int, size: int, load: Load
) -> None:
    """The fallback load: ``sessions`` asyncio clients share ``messages`` between them."""
    counter = iter(range(messages))
    targets = [TARGET, *(f"{u}@{DOMAIN}" for u in EXTRA_USERS)]

    async def session() -> None:
        client = await SMTPClient.connect(host, port)
        try:
            for seq in counter:
                latency = await client.send(targets[seq % len(targets)], make_body(size, seq))
                load.latencies.append(latency)
                load.accepted += 1
        except (OSError, RuntimeError) as e:
            load.errors.append(str(e))
        finally:
            await client.close()

    await asyncio.gather(*(session() for _ in range(sessions)))


async def smtp_source(
    binary: str, host: str, port: int, *, sessions: int, messages: int, size: int, load: Load,
    message_file: Path | None = None,
) -> None:  # fmt: skip
    """Run smtp-source to completion; it is silent on success and stops at the first error."""
    content = ["-F", str(message_file)] if message_file else ["-l", str(size)]
    process = await asyncio.create_subprocess_exec(
        binary, "-d", "-s", str(sessions), "-m", str(messages), *content,
        "-f", SENDER, "-t", TARGET, "-M", "source.elsewhere.example", f"{host}:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await process.communicate()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0 or output.strip():
        load.errors.append(
            f"smtp-source exited with {process.returncode}: {output.decode(errors='replace')}"
        )
    else:
        load.accepted = messages  # nothing printed: every DATA got a 2xx


# --- measuring ----------------------------------------------------------------------------------


def count_sqlite(path: Path) -> tuple[int, str]:
    """(stored messages, UID check) read straight from the SQLite file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (count,) = db.execute("SELECT count(*) FROM messages").fetchone()
        rows = db.execute(
            "SELECT mailbox_id, count(*), min(uid), max(uid), count(DISTINCT uid) "
            "FROM messages GROUP BY mailbox_id"
        ).fetchall()
    return count, uid_check(rows)


async def count_sqlalchemy(url: str) -> tuple[int, str]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            count = int(await conn.scalar(text("SELECT count(*) FROM messages")) or 0)
            result = await conn.execute(
                text(
                    "SELECT mailbox_id, count(*), min(uid), max(uid), count(DISTINCT uid) "
                    "FROM messages GROUP BY mailbox_id"
                )
            )
            rows = [tuple(r) for r in result]
    finally:
        await engine.dispose()
    return count, uid_check(rows)


def uid_check(rows: list[tuple[int, ...]]) -> str:
    """UIDs in a fresh mailbox must be 1..n, each once; report any mailbox where they are not."""
    bad = [r[0] for r in rows if not (r[2] == 1 and r[3] == r[1] == r[4])]
    return "ok (1..n, no gaps or repeats)" if not bad else f"NOT contiguous in mailboxes {bad}"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def run_load(args: argparse.Namespace, server: Server, source: str | None) -> None:
    main_load, probe_load = Load(), Load()
    stop = asyncio.Event()
    peak_rss = server.status("VmRSS")
    rss_before = peak_rss

    async def sample_rss() -> None:
        nonlocal peak_rss
        while not stop.is_set():
            peak_rss = max(peak_rss, server.status("VmRSS"))
            await asyncio.sleep(0.1)

    # The check process starts with the server: let it finish loading before the clock runs.
    children_before = server.children_cpu_seconds()
    for _ in range(100):
        await asyncio.sleep(0.2)
        children_before, settled = server.children_cpu_seconds(), children_before
        if children_before == settled:
            break
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    sampler = asyncio.create_task(sample_rss())
    if source:
        probe_task = asyncio.create_task(
            probe(server.host, server.port, args.size, stop, probe_load, args.signed)
        )
        load = smtp_source(
            source, server.host, server.port,
            sessions=args.sessions, messages=args.messages, size=args.size, load=main_load,
            message_file=args.message_file,
        )  # fmt: skip
    else:
        probe_task = None
        load = python_sessions(
            server.host, server.port,
            sessions=args.sessions, messages=args.messages, size=args.size, load=main_load,
        )  # fmt: skip
    try:
        await asyncio.wait_for(load, args.timeout)
    except TimeoutError:
        main_load.errors.append(f"the load did not finish in {args.timeout:.0f} s")
    elapsed = time.perf_counter() - started
    stop.set()
    if probe_task:
        try:
            await asyncio.wait_for(probe_task, 30)
        except TimeoutError:
            probe_load.errors.append("probe: no reply within 30 s")
    await sampler
    cpu = server.cpu_seconds() - cpu_before
    children_cpu = server.children_cpu_seconds() - children_before
    rss_after, hwm = server.status("VmRSS"), server.status("VmHWM")

    if args.backend == "sqlite":
        stored, uids = count_sqlite(args.data_dir / "tidings.db")
    else:
        stored, uids = await count_sqlalchemy(args.db_url)
    stored -= args.stored_before
    replied = main_load.accepted + probe_load.accepted
    latencies = probe_load.latencies if source else main_load.latencies

    mib = 1024 * 1024
    client = f"smtp-source ({source})" if source else "python asyncio clients"
    checks = ", SPF+DKIM+DMARC on every message" if args.auth else ""
    if args.signed_only and not args.auth:
        checks = ", DKIM-signed messages, not checked"
    print(
        f"tidings inbound SMTP: {args.backend}{checks}, {os.cpu_count()} CPUs, load from {client}"
    )
    print(
        f"  load        {args.sessions} sessions x {args.messages} messages of {args.size} B"
        + (f" (+ {probe_load.accepted} from the probe)" if source else "")
    )
    print(
        f"  throughput  {main_load.accepted / elapsed:,.0f} messages/s "
        f"({main_load.accepted} in {elapsed:.2f} s; with probe "
        f"{replied / elapsed:,.0f}/s)"
    )
    if latencies:
        print(
            f"  DATA→250    p50 {percentile(latencies, 50) * 1000:.1f} ms  "
            f"p99 {percentile(latencies, 99) * 1000:.1f} ms  "
            f"max {max(latencies) * 1000:.1f} ms  (n={len(latencies)}"
            + (", probe session)" if source else ")")
        )
    print(
        f"  server RSS  {rss_before / mib:.1f} MiB idle, peak {peak_rss / mib:.1f} MiB sampled, "
        f"{rss_after / mib:.1f} MiB after, VmHWM {hwm / mib:.1f} MiB"
    )
    print(
        f"  server CPU  {cpu:.2f} s ({cpu / elapsed * 100:.0f}% of one core, "
        f"{cpu / max(replied, 1) * 1e6:.0f} µs/message)"
    )
    if children_cpu > 0:
        print(
            f"  check proc  {children_cpu:.2f} s of CPU ({children_cpu / elapsed * 100:.0f}% of "
            f"a core, {children_cpu / max(replied, 1) * 1e6:.0f} µs/message)"
        )
    verdict = "ok" if stored == replied else "MISMATCH"
    print(f"  stored      {stored} messages for {replied} replies of 250: {verdict}; UIDs {uids}")
    if args.dns_server is not None:  # the server's cache should have asked each name once
        print(f"  DNS         {len(args.dns_server.queries)} queries answered")
    for error in main_load.errors + probe_load.errors:
        print(f"  error       {error.strip()}")
    args.failed = stored != replied or bool(main_load.errors or probe_load.errors)


def find_smtp_source() -> str | None:
    return shutil.which(SMTP_SOURCE) or next(
        (p for p in SMTP_SOURCE_PATHS if os.access(p, os.X_OK)), None
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (20)")
    parser.add_argument("--messages", type=int, default=5000, help="messages in all (5000)")
    parser.add_argument("--size", type=int, default=5120, help="payload bytes a message (5120)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--db-url", help="postgresql+asyncpg://… (an empty database)")
    parser.add_argument(
        "--python-client", action="store_true", help="asyncio clients instead of smtp-source"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="give up on the load after this many s (600)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    parser.add_argument(
        "--auth", action="store_true", help="SPF, DKIM and DMARC checks on every message"
    )
    parser.add_argument(
        "--signed-only",
        action="store_true",
        help="--auth's signed message and load, with the checks off: what the checks cost",
    )
    args = parser.parse_args()
    if args.backend == "postgresql" and not args.db_url:
        parser.error("--backend postgresql needs --db-url")

    source = None if args.python_client else find_smtp_source()
    if not args.python_client and source is None:
        print("bench: smtp-source not found; using the asyncio client", file=sys.stderr)

    directory = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    args.data_dir = directory / "data"
    if args.backend == "sqlite":
        args.db_url = f"sqlite+aiosqlite:///{args.data_dir / 'tidings.db'}"
    args.failed = True
    args.signed = args.message_file = args.dns_server = None
    server = None
    dns_server = None
    try:
        nameserver = None
        if args.auth or args.signed_only:
            if args.python_client or source is None:
                parser.error("--auth and --signed-only need smtp-source")
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from dnsserver import DNSTestServer

            args.signed, zone = signed_message(args.size)
            if args.auth:
                dns_server = DNSTestServer(zone).start()
                nameserver = dns_server.address
                args.dns_server = dns_server
            # smtp-source sends each line of the file with CRLF appended.
            args.message_file = directory / "signed.eml"
            args.message_file.write_bytes(args.signed.replace(b"\r\n", b"\n"))
        config = write_config(directory, args.db_url, nameserver)
        provision(config)
        server = Server.start(config)
        args.stored_before = (
            count_sqlite(args.data_dir / "tidings.db")[0]
            if args.backend == "sqlite"
            else asyncio.run(count_sqlalchemy(args.db_url))[0]
        )
        asyncio.run(run_load(args, server, source))
    finally:
        if dns_server is not None:
            dns_server.stop()
        if server is not None:
            code = server.stop()
            if code != 0:
                print(f"bench: the server exited with {code}; log in {server.log_path}")
                args.keep = True
        if args.keep:
            print(f"  data dir    {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return 1 if args.failed else 0


if __name__ == "__main__":
    sys.exit(main())
