"""SIGKILL under load: every message that got a 250 is in its mailbox after restart, once."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import aiosmtplib

from helpers import TidingsServer, add_users, stored_messages, stored_uids

USERS = [f"user{i}@example.org" for i in range(5)]
CONNECTIONS = 20
MESSAGES = 300
KILL_AFTER = 120
SUBJECT = re.compile(rb"^Subject: (msg-\d+)\r$", re.MULTILINE)


def message(n: int) -> bytes:
    return (
        b"From: load@sender.example\r\nSubject: msg-%d\r\n\r\n" % n + b"line of the body\r\n" * 250
    )


async def send_all(server: TidingsServer, acknowledged: set[int], killed: asyncio.Event) -> None:
    numbers = iter(range(MESSAGES))

    async def connection() -> None:
        host, port = server.smtp
        try:
            async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False) as client:
                for n in numbers:
                    rcpt = USERS[n % len(USERS)]
                    await client.sendmail("load@sender.example", [rcpt], message(n))
                    acknowledged.add(n)
                    if len(acknowledged) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        server.kill()
        except (aiosmtplib.SMTPException, OSError):
            assert killed.is_set(), "only the kill may break a connection"

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


async def test_sigkill_mid_load_loses_nothing_acknowledged(
    server: TidingsServer, db_url: str
) -> None:
    await add_users(db_url, *USERS)
    acknowledged: set[int] = set()
    killed = asyncio.Event()
    await send_all(server, acknowledged, killed)
    assert killed.is_set() and KILL_AFTER <= len(acknowledged) < MESSAGES

    server.start()  # same config, same database
    stored: Counter[int] = Counter()
    for user in USERS:
        for body in await stored_messages(db_url, user):
            m = SUBJECT.search(body)
            assert m is not None
            stored[int(m.group(1)[4:])] += 1
    missing = sorted(acknowledged - set(stored))
    assert missing == [], f"acknowledged but lost: {missing}"
    assert max(stored.values()) == 1, "a message was stored twice"

    # The restarted server goes on with fresh UIDs, never reusing one.
    host, port = server.smtp
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False) as client:
        await client.sendmail("load@sender.example", [USERS[0]], message(MESSAGES))
    uids = await stored_uids(db_url, USERS[0])
    assert uids == sorted(set(uids)), "UIDs distinct and ascending"
    bodies = await stored_messages(db_url, USERS[0])
    assert SUBJECT.search(bodies[-1]).group(1) == b"msg-%d" % MESSAGES  # type: ignore[union-attr]
