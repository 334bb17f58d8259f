"""The exclusive maildrop lock of RFC 1939 §8: one POP3 session per maildrop at a time.

Within a process the lock is a set of mailbox ids. With PostgreSQL it is also a session-level
advisory lock, ``pg_try_advisory_lock(NAMESPACE, mailbox_id)``, taken on one connection this
process keeps for the purpose, so that several Tidings processes sharing one database refuse a
second login too, and a process that dies releases its locks with its connection. SQLite is one
process's store, so the in-process set is the whole lock there.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.store.db import Store, describe_db_error

log = logging.getLogger(__name__)

# The first key of the two-key advisory lock space ("pop3"); the migration lock uses the
# one-key space, so the two never meet.
NAMESPACE = 0x706F_7033


class MaildropLocks:
    """Locks on maildrops (mailbox ids) held by this process's POP3 sessions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: set[int] = set()
        self._conn: AsyncConnection | None = None
        self._mutex = asyncio.Lock()  # one statement at a time on the shared connection

    async def acquire(self, mailbox_id: int) -> bool:
        """Lock the maildrop; False if another session (here or in another process) has it."""
        if mailbox_id in self._held:
            return False
        self._held.add(mailbox_id)  # before any await: no other session here can slip in
        if self.store.is_sqlite:
            return True
        try:
            got = await self._query("SELECT pg_try_advisory_lock(:ns, :id)", mailbox_id)
        except BaseException:
            self._held.discard(mailbox_id)
            raise
        if not got:
            self._held.discard(mailbox_id)
        return bool(got)

    async def release(self, mailbox_id: int) -> None:
        if mailbox_id not in self._held:
            return
        try:
            if not self.store.is_sqlite and self._conn is not None:
                await self._query("SELECT pg_advisory_unlock(:ns, :id)", mailbox_id)
        except SQLAlchemyError as e:
            # The connection is gone, and with it every advisory lock it held.
            log.warning("pop3: releasing maildrop lock: %s", describe_db_error(e))
        finally:
            self._held.discard(mailbox_id)

    async def _query(self, sql: str, mailbox_id: int) -> object:
        async with self._mutex:
            if self._conn is None:
                conn = await self.store.connect()  # StoreError when the server is down
                self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                return await self._conn.scalar(text(sql), {"ns": NAMESPACE, "id": mailbox_id})
            except SQLAlchemyError:
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except (SQLAlchemyError, OSError) as e:
                log.debug("pop3: closing the lock connection: %s", e)

    async def close(self) -> None:
        """Release everything (closing the connection ends its advisory locks)."""
        async with self._mutex:
            await self._drop()
        self._held.clear()
