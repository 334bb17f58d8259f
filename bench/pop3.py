"""POP3 download throughput: one ``poplib`` client RETRs a whole maildrop over loopback.

The maildrop (by default 5,000 messages of 5 KB) is filed straight into the store through
``tidings.delivery.MailDelivery`` before the server starts, so only retrieval is timed: from
the first RETR to the last message's final line, with LIST and login outside the clock. Every
retrieved message is compared with what was stored: a benchmark that serves wrong bytes
measures nothing. The session ends with RSET and QUIT, so the maildrop survives for --repeat.

    python3 bench/pop3.py                         # 5,000 x 5 KB, SQLite, plain POP3
    python3 bench/pop3.py --tls                   # the same over POP3S (port 995's listener)
    python3 bench/pop3.py --messages 20000 --size 50K --repeat 3
    python3 bench/pop3.py --db-url postgresql://user@127.0.0.1:5432/db

The server is ``python3 -m tidings`` in a child process, so ``PYTHONPATH=/some/checkout/src``
benchmarks that checkout instead of the installed package. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import poplib
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOMAIN = "bench.test"
USER = f"user@{DOMAIN}"
PASSWORD = "bench-password-1"
READY = re.compile(rb"ready: .*\bpop3=(\S+):(\d+) pop3s=(\S+):(\d+)")


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)


def write_config(directory: Path, db_url: str) -> Path:
    path = directory / "tidings.toml"
    path.write_text(
        "[server]\n"
        'hostname = "mail.bench.test"\n'
        f'data_dir = "{directory / "data"}"\n'
        "[database]\n"
        f'url = "{db_url}"\n'
        "[listen]\n"
        'smtp = ""\n'
        'pop3 = "127.0.0.1:0"\n'
        'pop3s = "127.0.0.1:0"\n'
        "[pop3]\n"
        "allow_insecure_auth = true\n"
    )
    return path


def message(i: int, size: int) -> bytes:
    """A CRLF message of exactly ``size`` bytes with 72-character lines, some starting '.'."""
    head = (
        f"From: sender@elsewhere.example\r\nTo: {USER}\r\nSubject: bench {i}\r\n"
        f"Message-ID: <{i}@bench.test>\r\n\r\n"
    ).encode()
    line = b".dot-stuffed line " + b"x" * 52 + b"\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(head) - 2, 0)] + b"\r\n"
    return head + body


async def fill(db_url: str, count: int, size: int) -> list[bytes]:
    from tidings.address import parse_mailbox
    from tidings.auth import hash_password
    from tidings.config import DeliveryConfig, async_database_url
    from tidings.delivery import Delivery, MailDelivery
    from tidings.store import accounts
    from tidings.store.db import Store

    store = await Store.open(async_database_url(db_url))
    try:
        await accounts.add_domain(store, DOMAIN)
        await accounts.add_account(store, USER, hash_password(PASSWORD))
        delivery = MailDelivery(store, DeliveryConfig(max_batch=500))
        resolution = await delivery.resolve_recipient(parse_mailbox(USER))
        contents = [message(i, size) for i in range(count)]
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    delivery.deliver(
                        Delivery(f"bench{i}", "s@elsewhere.example", c, resolution.local, ())
                    )
                    for i, c in enumerate(contents[start : start + 500], start)
                )
            )
        return contents
    finally:
        await store.close()


def start_server(config: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    log = (config.parent / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "--config", str(config), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = READY.search((config.parent / "server.log").read_bytes())
        if m:
            return proc, {"pop3": int(m.group(2)), "pop3s": int(m.group(4))}
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(
        "bench: the server did not start:\n" + (config.parent / "server.log").read_text()
    )


def download(port: int, tls: ssl.SSLContext | None, expected: list[bytes]) -> tuple[float, int]:
    """Seconds for RETR of every message, and the bytes received."""
    client = (
        poplib.POP3_SSL("localhost", port, context=tls) if tls else poplib.POP3("127.0.0.1", port)
    )
    client.user(USER)
    client.pass_(PASSWORD)
    _, listing, _ = client.list()
    assert len(listing) == len(expected), f"LIST shows {len(listing)} of {len(expected)}"
    received = 0
    wrong = 0
    start = time.perf_counter()
    for n in range(1, len(expected) + 1):
        _, lines, octets = client.retr(n)
        received += octets
        if b"\r\n".join(lines) + b"\r\n" != expected[n - 1]:
            wrong += 1
    elapsed = time.perf_counter() - start
    client.rset()
    client.quit()
    if wrong:
        raise SystemExit(f"bench: {wrong} messages came back different from what was stored")
    return elapsed, received


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--size", default="5K", help="message size (default 5K)")
    ap.add_argument("--db-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    ap.add_argument("--tls", action="store_true", help="use the implicit-TLS listener (POP3S)")
    ap.add_argument("--repeat", type=int, default=1, help="download the maildrop this many times")
    args = ap.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="tidings-bench-pop3-") as tmp:
        directory = Path(tmp)
        db_url = args.db_url or f"sqlite:///{directory / 'tidings.db'}"
        config = write_config(directory, db_url)
        t0 = time.perf_counter()
        expected = asyncio.run(fill(db_url, args.messages, size))
        print(f"filed {len(expected)} messages of {size} bytes in {time.perf_counter() - t0:.1f}s")
        proc, ports = start_server(config)
        try:
            tls = None
            if args.tls:
                tls = ssl.create_default_context(cafile=str(directory / "data/tls/cert.pem"))
            backend = "PostgreSQL" if args.db_url else "SQLite"
            for _ in range(args.repeat):
                elapsed, received = download(ports["pop3s" if tls else "pop3"], tls, expected)
                print(
                    f"RETR {len(expected)} x {size} B ({backend}{', TLS' if tls else ''}): "
                    f"{elapsed:.2f}s  {len(expected) / elapsed:,.0f} messages/s  "
                    f"{received / elapsed / 1e6:.1f} MB/s"
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
