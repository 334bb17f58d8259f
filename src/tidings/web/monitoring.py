"""``/metrics`` (Prometheus text format) and ``/healthz`` (can the store be reached?).

The counters are kept by :mod:`tidings.metrics` as things happen; at each scrape this module
sets the gauges that describe the present: the open IMAP/POP3 sessions, and the outbound queue
from one grouped query (rows by state, the oldest row's creation time). If the store does not
answer within ``STORE_TIMEOUT`` the scrape still succeeds, with ``tidings_store_up 0``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from tidings import metrics
from tidings.queue.store import aware
from tidings.store.db import Store, StoreError, describe_db_error
from tidings.store.models import QueueItem
from tidings.web.site import SITE, STORE_TIMEOUT

log = logging.getLogger(__name__)


async def queue_stats(store: Store) -> tuple[dict[str, int], float | None]:
    """Queue rows by state, and the age in seconds of the oldest (None when empty)."""
    query = select(QueueItem.state, func.count(), func.min(QueueItem.created_at)).group_by(
        QueueItem.state
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    sizes = {str(state): int(count) for state, count, _ in rows}
    oldest = [aware(created) for _, _, created in rows if isinstance(created, datetime)]
    age = (datetime.now(UTC) - min(oldest)).total_seconds() if oldest else None
    return sizes, age


async def check_store(store: Store) -> str | None:
    """None if the store answers ``SELECT 1`` in time, else why not."""
    try:
        async with asyncio.timeout(STORE_TIMEOUT), store.read() as conn:
            await conn.execute(text("SELECT 1"))
    except TimeoutError:
        return f"no answer within {STORE_TIMEOUT:g}s"
    except (SQLAlchemyError, OSError, StoreError) as e:
        return describe_db_error(e)
    return None


async def metrics_page(request: web.Request) -> web.Response:
    site = request.app[SITE]
    metrics.set_sessions(site.sessions())
    try:
        async with asyncio.timeout(STORE_TIMEOUT):
            sizes, age = await queue_stats(site.store)
    except (TimeoutError, SQLAlchemyError, OSError, StoreError) as e:
        log.warning("metrics: cannot read the queue: %s", e)
        metrics.store_down()
    else:
        metrics.set_queue(sizes, age)
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    problem = await check_store(request.app[SITE].store)
    if problem is not None:
        return web.Response(status=503, text=f"store unavailable: {problem}\n")
    return web.Response(text="ok\n")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
