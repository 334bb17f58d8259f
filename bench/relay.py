"""Submission and relay throughput: messages submitted on 587 and relayed to a peer MTA.

Sessions log in over STARTTLS (AUTH PLAIN) and submit messages for a remote domain; the
domain's MX (from a DNS server on loopback, the tests' own) is a sink on loopback that
records when each message arrived. Printed: submission messages/s, end-to-end messages/s
(first submission → last arrival at the peer), end-to-end latency percentiles (start of a
message's submission → its arrival at the peer), the server's CPU and RSS. Every message must
arrive: the run fails otherwise.

    python3 bench/relay.py                              # 5,000 x 4 KB, 10 sessions, SQLite
    python3 bench/relay.py --messages 20000 --sessions 20
    python3 bench/relay.py --db-url postgresql+asyncpg://user@host/db
    python3 bench/relay.py --dkim                       # the domain has an RSA key: all signed

The peer is Postfix's ``smtp-sink`` (C, from Debian's postfix package; it offers PIPELINING
like any MTA) when installed, else (or with ``--python-sink``) an aiosmtpd sink in a process of
its own. The load client, the peer and the server share the machine's cores. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOMAIN = "bench.test"
REMOTE = "remote.bench.test"
USER = f"sender@{DOMAIN}"
PASSWORD = "bench-password-1"
READY = re.compile(rb"ready: .*\bsubmission=(\S+):(\d+)")
SUBJECT = re.compile(rb"\r?\nSubject: relay (\d+)\r?\n")


# --- the sink: a peer MTA in a process of its own -------------------------------------------------


def run_sink(port_file: Path, out_file: Path, expected: int) -> None:
    """Accept everything on a free loopback port; write {seq: arrival time} when all came."""
    from aiosmtpd.smtp import SMTP

    arrivals: dict[int, float] = {}
    done = asyncio.Event()

    class Handler:
        async def handle_EHLO(
            self,
            server: object,
            session: object,
            envelope: object,
            hostname: str,
            responses: list[str],
        ) -> list[str]:
            session.host_name = hostname  # type: ignore[attr-defined]
            return [responses[0], "250-PIPELINING", *responses[1:]]  # as any MTA today

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            m = SUBJECT.search(envelope.content)  # type: ignore[attr-defined]
            if m:
                arrivals.setdefault(int(m.group(1)), time.time())
                if len(arrivals) >= expected:
                    done.set()
            return "250 2.0.0 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Handler()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="mx.remote.bench.test", decode_data=False),
            "127.0.0.1",
            0,
            backlog=1024,
        )
        port_file.write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        waiters = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        out_file.write_text(json.dumps(arrivals))  # noqa: ASYNC240 - once, at the end
        server.close()

    asyncio.run(main())


# --- the server -----------------------------------------------------------------------------------


def write_config(directory: Path, db_url: str, dns: str, relay_port: int) -> Path:
    path = directory / "tidings.toml"
    path.write_text(
        "[server]\n"
        'hostname = "mx.bench.test"\n'
        f'data_dir = "{directory / "data"}"\n'
        f'[database]\nurl = "{db_url}"\n'
        '[listen]\nsmtp = ""\nsubmission = "127.0.0.1:0"\nsubmissions = ""\n'
        'pop3 = ""\npop3s = ""\n'
        f'[dns]\nnameservers = ["{dns}"]\n'
        f"[relay]\nport = {relay_port}\n"
    )
    return path


def cli(config: Path, *args: str, stdin: str | None = None) -> str:
    cmd = [sys.executable, "-m", "tidings", "--config", str(config), *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench: `{' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def proc_figure(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the load -------------------------------------------------------------------------------------


def message(seq: int, size: int) -> bytes:
    head = (
        f"From: Sender <{USER}>\r\nTo: <user{seq % 50}@{REMOTE}>\r\n"
        f"Subject: relay {seq}\r\nMessage-ID: <relay-{seq}@{DOMAIN}>\r\n"
        "Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def session(
    host: str, port: int, seqs: list[int], size: int, started: dict[int, float]
) -> None:
    import aiosmtplib

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=context)
    await client.connect()
    await client.login(USER, PASSWORD)
    for seq in seqs:
        started[seq] = time.time()
        await client.sendmail(USER, [f"user{seq % 50}@{REMOTE}"], message(seq, size))
    await client.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"bench: the peer on port {port} did not start") from None
            time.sleep(0.05)


def dumped_arrivals(dumps: Path, expected: int, timeout: float = 120.0) -> dict[int, float]:
    """{seq: arrival time} from smtp-sink's message files, once all came (or the timeout)."""
    deadline = time.time() + timeout
    while len(list(dumps.iterdir())) < expected and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # the last files are complete
    arrivals: dict[int, float] = {}
    for path in dumps.iterdir():
        m = SUBJECT.search(path.read_bytes())
        if m:
            arrivals.setdefault(int(m.group(1)), path.stat().st_mtime)
    return arrivals


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--db-url", default="", help="default: SQLite in a temporary folder")
    parser.add_argument("--dkim", action="store_true", help="sign every message (RSA 2048)")
    parser.add_argument(
        "--python-sink", action="store_true", help="aiosmtpd as the peer, not Postfix's smtp-sink"
    )
    parser.add_argument(
        "--sink", nargs=3, metavar=("PORT_FILE", "OUT_FILE", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.sink:
        run_sink(Path(args.sink[0]), Path(args.sink[1]), int(args.sink[2]))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dnsserver import DNSTestServer

    with tempfile.TemporaryDirectory(prefix="tidings-relay-") as tmp:
        directory = Path(tmp)
        port_file, out_file = directory / "sink.port", directory / "sink.json"
        postfix_sink = shutil.which("smtp-sink") or next(
            (p for p in ("/usr/sbin/smtp-sink",) if Path(p).exists()), None
        )
        if args.python_sink or postfix_sink is None:
            sink = subprocess.Popen(
                [sys.executable, __file__, "--sink", str(port_file), str(out_file),
                 str(args.messages)]
            )  # fmt: skip
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            sink_port = int(port_file.read_text())
        else:
            # Postfix's smtp-sink (C): the peer costs the machine next to nothing, and each
            # message it takes is a file whose modification time is its arrival.
            dumps = directory / "sink"
            dumps.mkdir()
            dumps.chmod(0o777)
            directory.chmod(0o755)
            sink_port = free_port()
            sink = subprocess.Popen(
                [postfix_sink, "-u", "nobody", "-d", f"{dumps}/m.", f"127.0.0.1:{sink_port}", "256"]
            )
            wait_listening(sink_port)
        zone = {
            REMOTE: [("MX", (10, f"mx.{REMOTE}"))],
            f"mx.{REMOTE}": [("A", "127.0.0.1")],
        }
        dns = DNSTestServer(zone).start()
        db_url = args.db_url or f"sqlite:///{directory / 'tidings.db'}"
        config = write_config(directory, db_url, dns.address, sink_port)
        cli(config, "domain", "add", DOMAIN)
        cli(config, "user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
        if args.dkim:
            cli(config, "dkim", "generate", DOMAIN, "--selector", "bench")
        log_path = directory / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "tidings", "--config", str(config), "serve"],
                stdout=log, stderr=log,
            )  # fmt: skip
        try:
            while not (m := READY.search(log_path.read_bytes())):
                if server.poll() is not None:
                    raise SystemExit(log_path.read_text())
                time.sleep(0.05)
            host, port = m.group(1).decode(), int(m.group(2))
            started: dict[int, float] = {}
            seqs = list(range(args.messages))
            cpu_before = cpu_seconds(server.pid)
            t0 = time.time()

            async def load() -> None:
                await asyncio.gather(
                    *(
                        session(host, port, seqs[i :: args.sessions], args.size, started)
                        for i in range(args.sessions)
                    )
                )

            client_cpu = time.process_time()
            asyncio.run(load())
            client_cpu = time.process_time() - client_cpu
            submitted = time.time()
            if args.python_sink or postfix_sink is None:
                try:
                    sink.wait(timeout=max(120, args.messages / 20))
                except subprocess.TimeoutExpired:
                    sink.send_signal(signal.SIGTERM)
                    sink.wait()
                arrivals = {int(k): v for k, v in json.loads(out_file.read_text()).items()}
            else:
                arrivals = dumped_arrivals(directory / "sink", args.messages)
            cpu = cpu_seconds(server.pid) - cpu_before
            rss = proc_figure(server.pid, "VmRSS")
            hwm = proc_figure(server.pid, "VmHWM")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            dns.stop()
            if sink.poll() is None:
                sink.kill()
        last = max(arrivals.values()) if arrivals else submitted
        latencies = [arrivals[s] - started[s] for s in arrivals]
        n = args.messages
        backend = "PostgreSQL" if args.db_url else "SQLite"
        print(f"messages: {n} x {args.size} B, {args.sessions} sessions, {backend}, "
              f"DKIM {'on' if args.dkim else 'off'}")  # fmt: skip
        print(f"submission:  {n / (submitted - t0):8.0f} msg/s")
        print(f"end to end:  {len(arrivals) / (last - t0):8.0f} msg/s "
              f"({len(arrivals)}/{n} arrived at the peer)")  # fmt: skip
        if latencies:
            print(
                "latency (submit start → at peer): "
                f"p50 {percentile(latencies, 50) * 1000:.0f} ms, "
                f"p99 {percentile(latencies, 99) * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms"
            )
        print(f"server CPU: {cpu:.1f} s ({cpu / max(1e-9, last - t0) * 100:.0f}% of one core), "
              f"RSS {rss / 2**20:.0f} MiB (peak {hwm / 2**20:.0f} MiB); "
              f"load client CPU {client_cpu:.1f} s")  # fmt: skip
        if len(arrivals) != n:
            print(f"bench: {n - len(arrivals)} messages did not arrive", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
