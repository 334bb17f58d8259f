"""What the inbound checks cost one process's CPU, without SMTP or the store around them.

    python3 bench/mailauth_checks.py                  # per step, each run back to back
    python3 bench/mailauth_checks.py --pollute 1 3    # the whole check, other work in between

It checks the message ``bench/smtp_inbound.py --auth`` sends (SPF pass, an RSA-2048 DKIM
signature, DMARC p=reject aligned), with the keys and records served by the tests' DNS server on
loopback, and prints the thread CPU time per message (the best of five rounds for each step).

In the server the same code runs between everything else the event loop does, so it finds its
code and data out of the CPU caches. ``--pollute N`` reproduces that: before each message it
compiles an SQL statement and parses a MIME message N times, and times only the check. The
difference between ``--pollute 0`` and higher is what cold caches cost; ``--no-gc`` tells it
apart from the garbage collector's share.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from smtp_inbound import SENDER, signed_message
from tidings import metrics
from tidings.dns import Resolver
from tidings.mailauth import arc, dmarc, results, verdict
from tidings.mailauth import dkim as dkim_
from tidings.mailauth.spf import spf_for_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dnsserver import DNSTestServer

AUTHSERV_ID = "mx.example"
CLIENT = "127.0.0.1"


def best_cpu(step: Callable[[], object], count: int) -> float:
    """µs of this thread's CPU per call of ``step``, the best of five rounds."""
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(count):
            step()
        best = min(best, (time.thread_time() - start) / count * 1e6)
    return best


async def best_cpu_async(step: Callable[[], Awaitable[Any]], count: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(count):
            await step()
        best = min(best, (time.thread_time() - start) / count * 1e6)
    return best


async def steps(resolver: Resolver, message: bytes, count: int) -> None:
    """Each step of ``verdict.judge`` alone, then the whole check."""

    async def spf() -> Any:
        return await spf_for_session(resolver, CLIENT, SENDER, "client.example", receiver="mx")

    spf_result = await spf()
    stripped, dkim_work, arc_work = verdict._examine(message, AUTHSERV_ID, CLIENT)
    keys = await dkim_.fetch_keys(resolver, dkim_work)
    dkim, arc_result = verdict._verify(dkim_work, keys, arc_work, {}, CLIENT)
    dmarc_result = await dmarc.check_dmarc(resolver, stripped, spf=spf_result, dkim=dkim)

    async def whole() -> None:
        await verdict.judge(resolver, message, await spf(), authserv_id=AUTHSERV_ID)

    rows = [
        ("SPF", await best_cpu_async(spf, count)),
        ("DKIM and ARC: parse (forged A-R removed)",
         best_cpu(lambda: verdict._examine(message, AUTHSERV_ID, CLIENT), count)),
        ("  of which DKIM-Signature", best_cpu(lambda: dkim_.prepare(message), count)),
        ("  of which ARC", best_cpu(lambda: arc.prepare(message, CLIENT), count)),
        ("DKIM keys (DNS cache)",
         await best_cpu_async(lambda: dkim_.fetch_keys(resolver, dkim_work), count)),
        ("DKIM and ARC: hashes and RSA",
         best_cpu(lambda: verdict._verify(dkim_work, keys, arc_work, {}, CLIENT), count)),
        ("DMARC", await best_cpu_async(
            lambda: dmarc.check_dmarc(resolver, stripped, spf=spf_result, dkim=dkim), count)),
        ("Authentication-Results", best_cpu(lambda: results.authentication_results(
            AUTHSERV_ID, spf=spf_result, dkim=dkim, dmarc=dmarc_result,
            extra=[arc_result.auth_results()]), count)),
        ("metrics", best_cpu(lambda: metrics.mailauth_results(
            spf_result.result, (r.result for r in dkim), dmarc_result.result), count)),
        ("the whole check (SPF, then judge)", await best_cpu_async(whole, count)),
    ]  # fmt: skip
    for name, micros in rows:
        print(f"  {micros:7.1f} µs  {name}")


def polluter(message: bytes) -> Callable[[int], None]:
    """Other work of the kind the server does between two checks: SQL and MIME."""
    table = sa.Table("t", sa.MetaData(), *(sa.Column(f"c{i}", sa.Integer) for i in range(20)))
    dialect = sqlite.dialect()  # type: ignore[no-untyped-call]

    def pollute(times: int) -> None:
        for i in range(times):
            str(sa.select(table).where(table.c.c1 == i).compile(dialect=dialect))
            email.message_from_bytes(message)

    return pollute


async def cold(resolver: Resolver, message: bytes, levels: list[int], count: int) -> None:
    pollute = polluter(message)
    for level in levels:
        spent = 0.0
        for _ in range(count):
            pollute(level)
            start = time.thread_time()
            spf = await spf_for_session(resolver, CLIENT, SENDER, "client.example", receiver="mx")
            await verdict.judge(resolver, message, spf, authserv_id=AUTHSERV_ID)
            spent += time.thread_time() - start
        print(f"  {spent / count * 1e6:7.1f} µs  the whole check, {level} x (SQL + MIME) between")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="messages a round (3000)")
    parser.add_argument("--size", type=int, default=5120, help="payload bytes (5120)")
    parser.add_argument("--pollute", type=int, nargs="*", help="levels of other work between")
    parser.add_argument("--no-gc", action="store_true", help="garbage collector off")
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    message, zone = signed_message(args.size)
    with DNSTestServer(zone) as dns:
        resolver = Resolver([dns.address])
        header = (await verdict.judge(
            resolver, message,
            await spf_for_session(resolver, CLIENT, SENDER, "client.example", receiver="mx"),
            authserv_id=AUTHSERV_ID,
        )).header.decode()  # fmt: skip
        if "dkim=pass" not in header or "dmarc=pass" not in header or "spf=pass" not in header:
            print(f"bench: the message did not pass every check:\n{header}", file=sys.stderr)
            return 1
        print(f"tidings inbound checks: one process, thread CPU per message ({args.count} a round)")
        if args.pollute is None:
            await steps(resolver, message, args.count)
        else:
            await cold(resolver, message, args.pollute or [0, 1, 3], args.count)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
