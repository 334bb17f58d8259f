"""Queue rows: one per outbound recipient of a stored message."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.store.models import QueueItem


async def enqueue(
    conn: AsyncConnection, blob_id: int, sender: str, recipients: Sequence[str], at: datetime
) -> None:
    """Queue ``recipients`` for relay, due now, in the caller's transaction."""
    if recipients:
        await conn.execute(
            insert(QueueItem),
            [
                {
                    "blob_id": blob_id,
                    "sender": sender,
                    "recipient": r,
                    "state": "queued",
                    "attempts": 0,
                    "next_attempt": at,
                    "created_at": at,
                }
                for r in recipients
            ],
        )
