"""Telling sessions that a mailbox changed: new mail, flags, expunges, by anyone.

Whoever commits a change to a mailbox calls :meth:`MailboxEvents.changed` with its id after
the commit. Sessions that watch the mailbox (IMAP SELECT, IDLE) are woken and look at the
store for what changed; the notice carries nothing else, so a lost or doubled one costs at
most a query. In one process that is all. With PostgreSQL several Tidings processes may share
the store, so the notice also goes out as ``NOTIFY tidings_mailbox, '<ids>'`` on a connection
kept for the purpose, which also LISTENs and wakes this process's watchers for the other
processes' changes. If that connection breaks it is opened again, and every watcher is woken
once, since notices may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "tidings_mailbox"
_MAX_PAYLOAD = 7000  # NOTIFY payloads must stay under 8000 bytes
_RECONNECT_DELAY = 2.0


class MailboxWatch:
    """One watcher's doorbell: ``rung`` once one of its mailboxes changed, and ``waker`` (an
    IDLE session's input wake-up) called, so one wait covers input and changes alike."""

    __slots__ = ("events", "mailbox_id", "rung", "waker")

    def __init__(self, events: MailboxEvents, mailbox_id: int) -> None:
        self.events = events
        self.mailbox_id = mailbox_id
        self.rung = False
        self.waker: Callable[[], None] | None = None

    def ring(self) -> None:
        self.rung = True
        if self.waker is not None:
            self.waker()

    def clear(self) -> None:
        self.rung = False

    def close(self) -> None:
        self.events.unwatch(self)


class MailboxEvents:
    """The process's register of watched mailboxes, and its link to other processes."""

    def __init__(self, database_url: str | None = None) -> None:
        self._watches: dict[int, set[MailboxWatch]] = {}
        self._dsn = _asyncpg_dsn(database_url) if database_url else None
        self._task: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[str] | None = None

    async def start(self) -> None:
        """Connect to PostgreSQL's LISTEN/NOTIFY, when the store is PostgreSQL."""
        if self._dsn is None:
            return
        self._outbox = asyncio.Queue()
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(ready), 10.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def watch(self, mailbox_id: int) -> MailboxWatch:
        watch = MailboxWatch(self, mailbox_id)
        self._watches.setdefault(mailbox_id, set()).add(watch)
        return watch

    def unwatch(self, watch: MailboxWatch) -> None:
        watchers = self._watches.get(watch.mailbox_id)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._watches[watch.mailbox_id]

    def changed(self, mailbox_ids: Iterable[int]) -> None:
        """Call after the commit that changed these mailboxes."""
        ids = sorted(set(mailbox_ids))
        if not ids:
            return
        self._ring(ids)
        if self._outbox is not None:
            payload = ""
            for mailbox_id in ids:
                item = str(mailbox_id)
                if payload and len(payload) + len(item) + 1 > _MAX_PAYLOAD:
                    self._outbox.put_nowait(payload)
                    payload = ""
                payload = f"{payload},{item}" if payload else item
            self._outbox.put_nowait(payload)

    def _ring(self, ids: Iterable[int]) -> None:
        for mailbox_id in ids:
            for watch in self._watches.get(mailbox_id, ()):
                watch.ring()

    def _ring_all(self) -> None:
        for watchers in self._watches.values():
            for watch in watchers:
                watch.ring()

    # --- PostgreSQL ---------------------------------------------------------------------------

    def _received(self, conn: Any, pid: int, _channel: str, payload: str) -> None:
        if pid == conn.get_server_pid():
            return  # our own notice: watchers here were rung when it was sent
        self._ring(int(p) for p in payload.split(",") if p.isdigit())

    async def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._outbox is not None
        first = True
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("mailbox notices: cannot connect to PostgreSQL: %s", e)
                await asyncio.sleep(_RECONNECT_DELAY)
                continue
            try:
                await conn.add_listener(CHANNEL, self._received)
                if first:
                    first = False
                    if not ready.done():
                        ready.set_result(None)
                else:
                    self._ring_all()  # notices may have been missed while disconnected
                while not conn.is_closed():
                    try:
                        payload = await asyncio.wait_for(self._outbox.get(), 5.0)
                    except TimeoutError:
                        await conn.execute("SELECT 1")  # notice a dead connection
                        continue
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("mailbox notices: PostgreSQL connection lost: %s", e)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(_RECONNECT_DELAY)


def _asyncpg_dsn(url: str) -> str | None:
    """The plain ``postgresql://`` DSN asyncpg takes for an SQLAlchemy URL; None for SQLite."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)
