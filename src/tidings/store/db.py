"""Engine, connections and migrations for SQLite and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk when it returns, which is
what lets Tidings answer ``250`` after it. Write transactions begin with ``BEGIN IMMEDIATE`` so
that two writers queue on the database lock (``busy_timeout``) instead of one failing when it
upgrades a read lock; read transactions stay deferred and never wait for writers.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration's revision. A store already there skips Alembic entirely (importing it
# costs a CLI command a fifth of a second); a test keeps this equal to Alembic's head.
SCHEMA_HEAD = "0007"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any fixed number: it names the lock that serialises migrations across Tidings processes.
MIGRATION_LOCK_ID = 0x7469_6469


log = logging.getLogger(__name__)
T = TypeVar("T")
# SQLite threads for run_read (recipient lookups); writes have one thread of their own.
SQLITE_READERS = 4
# How often the WAL is checkpointed while group commits are running.
SQLITE_CHECKPOINT_SECONDS = 1.0


class StoreError(Exception):
    """The store cannot do what was asked (database down, disk full): a temporary failure."""


class StorageFull(StoreError):
    """The database's disk (or quota) is full: nothing new can be stored until space is freed.

    RFC 3463 §3.4 names it "mail system full" (X.3.1); SMTP answers ``452 4.3.1``.
    """


# SQLite's primary result code for "database or disk is full" (sqlite3.h).
SQLITE_FULL = 13
# PostgreSQL's SQLSTATE class 53, insufficient resources: disk_full.
PG_DISK_FULL = "53100"


def store_error(error: BaseException) -> StoreError:
    """``error`` (the driver's, SQLAlchemy's or the system's) as the StoreError it means."""
    if isinstance(error, StoreError):
        return error
    kind = StorageFull if is_storage_full(error) else StoreError
    return kind(describe_db_error(error))


def is_storage_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it wraps, says the database's disk is full."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageFull):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, sqlite3.Error) and (
            getattr(e, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL
            or "database or disk is full" in str(e)
        ):
            return True
        if PG_DISK_FULL in (getattr(e, "sqlstate", None), getattr(e, "pgcode", None)):
            return True
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return False


class Store:
    """One database, shared by every listener and worker of a Tidings process.

    Two ways in. ``read()``/``write()`` give an async connection for code that waits on the
    database a few times (administration, protocol sessions). ``run_read(fn)``/``run_write(fn)``
    run ``fn(conn)``, plain synchronous SQLAlchemy, inside one transaction: for the hot paths
    that issue many statements (recipient lookups, group commits). On SQLite that function
    runs whole in a thread with a synchronous connection — one hand-over between threads per
    transaction instead of several per statement through aiosqlite; on PostgreSQL it runs
    through ``AsyncConnection.run_sync``. Either way the event loop never blocks.
    """

    def __init__(self, engine: AsyncEngine, sync_engine: Engine | None = None) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.sync_engine = sync_engine
        self._checkpointed_at = 0.0
        self._readers: ThreadPoolExecutor | None = None
        self._writer: ThreadPoolExecutor | None = None
        if sync_engine is not None:
            self._readers = ThreadPoolExecutor(SQLITE_READERS, "tidings-sqlite-read")
            self._writer = ThreadPoolExecutor(1, "tidings-sqlite-write")

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` (an async SQLAlchemy URL) and bring the schema up to date."""
        is_sqlite = url.startswith("sqlite")
        # Parameters stay out of error texts (and so out of logs): they hold message bodies.
        kwargs: dict[str, Any] = {"hide_parameters": True}
        sync_engine = None
        if is_sqlite:
            path = url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        engine = create_async_engine(url, **kwargs)
        if is_sqlite:
            _configure_sqlite(engine.sync_engine)
            if path and path != ":memory:":
                sync_engine = create_engine(
                    engine.url.set(drivername="sqlite"),
                    pool_size=SQLITE_READERS + 1,
                    max_overflow=0,
                    hide_parameters=True,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                )
                # Checkpoints run beside the writer (see run_write), not inside its commits.
                _configure_sqlite(sync_engine, autocheckpoint=False)
        store = cls(engine, sync_engine)
        if migrate:
            try:
                await store.migrate()
            except BaseException:
                await store.close()
                raise
        return store

    async def run_read(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` in a read transaction; see the class docstring."""
        if self.sync_engine is None or self._readers is None:
            async with self.read() as conn:
                return await conn.run_sync(fn)
        loop = asyncio.get_running_loop()
        call = functools.partial(_in_transaction, self.sync_engine, fn, write=False)
        return await loop.run_in_executor(self._readers, call)

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` in a write transaction; returns once it has committed."""
        if self.sync_engine is None or self._writer is None:
            async with self.write() as conn:
                return await conn.run_sync(fn)
        loop = asyncio.get_running_loop()
        call = functools.partial(_in_transaction, self.sync_engine, fn, write=True)
        result = await loop.run_in_executor(self._writer, call)
        if loop.time() - self._checkpointed_at >= SQLITE_CHECKPOINT_SECONDS:
            # Copy the WAL back into the database on a reader thread: a checkpoint inside a
            # commit made every thousandth delivery wait several milliseconds more.
            self._checkpointed_at = loop.time()
            engine = self.sync_engine
            loop.run_in_executor(self._readers, _checkpoint, engine)
        return result

    async def close(self) -> None:
        for pool in (self._readers, self._writer):
            if pool is not None:
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        if self.sync_engine is not None:
            self.sync_engine.dispose()
        await self.engine.dispose()

    async def migrate(self) -> None:
        """Apply every Alembic migration not yet applied (idempotent)."""
        try:
            if await self.schema_version() == SCHEMA_HEAD:
                return
            async with self.write() as conn:
                if not self.is_sqlite:
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
                    )
                await conn.run_sync(_upgrade_to_head)
        except (OSError, DBAPIError, StoreError) as e:
            raise StoreError(f"cannot open the database: {describe_db_error(e)}") from e

    async def schema_version(self) -> str | None:
        """The applied migration's revision, or None for an empty database."""
        async with self.read() as conn:
            has_table = await conn.run_sync(lambda c: c.dialect.has_table(c, "alembic_version"))
            if not has_table:
                return None
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            return None if version is None else str(version)

    async def connect(self) -> AsyncConnection:
        """A connection from the pool; StoreError when none can be had.

        A PostgreSQL server that is down, starting or shutting down fails the connect with the
        system's or asyncpg's own exception, which SQLAlchemy passes on unwrapped: whatever it
        is, the store is unavailable, and callers need to know only that.
        """
        try:
            return await self.engine.connect()
        except Exception as e:
            raise store_error(e) from e

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: commits on leaving the block, rolls back on an exception."""
        conn = await self.connect()
        try:
            await conn.execution_options(tidings_write=True)
            async with conn.begin():
                yield conn
        finally:
            await asyncio.shield(conn.close())

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        conn = await self.connect()
        try:
            async with conn.begin():
                yield conn
        finally:
            await asyncio.shield(conn.close())


def _in_transaction(engine: Engine, fn: Callable[[Connection], T], *, write: bool) -> T:
    with engine.connect() as conn:
        if write:
            conn.execution_options(tidings_write=True)
        with conn.begin():
            return fn(conn)


def _checkpoint(engine: Engine) -> None:
    """A passive checkpoint: copies what it can of the WAL without waiting for anyone."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            conn.commit()
    except DBAPIError as e:  # the next one will try again
        log.warning("WAL checkpoint failed: %s", describe_db_error(e))


def _configure_sqlite(engine: Engine, *, autocheckpoint: bool = True) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, below, own transaction boundaries.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("tidings_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command  # noqa: PLC0415 - only needed when the schema is behind
    from alembic.config import Config as AlembicConfig  # noqa: PLC0415

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def describe_db_error(error: BaseException) -> str:
    """One line for a log or an error reply: the driver's message without SQL or parameters."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        return str(error.orig).strip().splitlines()[0]
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
