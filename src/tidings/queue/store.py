"""The queue's rows: claim the due ones, renew a claim, record the outcome; and the admin view.

A worker *claims* due rows in one short transaction: they become ``sending`` with its token,
and ``next_attempt`` becomes the end of a lease. It then talks SMTP with no transaction open,
renewing the lease while it works, and finally records each row's outcome — only for rows
that still carry its token. If the process dies, the lease runs out and any process sharing
the database claims the rows again: mail may go out twice after a crash, never zero times.
On PostgreSQL the claim takes rows ``FOR UPDATE SKIP LOCKED``, so several processes claiming
at once never take the same row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, delete, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.store.filing import Claimed
from tidings.store.models import Blob, Message, QueueItem

QUEUED, SENDING, HELD = "queued", "sending", "held"
# Statements take ids in chunks: SQLite allows at most 32766 bound parameters.
CHUNK = 500


@dataclass(frozen=True, slots=True)
class Retry:
    id: int
    next_attempt: datetime
    error: str
    remote_mta: str | None


def claim_due(
    conn: Connection, *, token: str, at: datetime, lease: float, limit: int
) -> list[Claimed]:
    """Take up to ``limit`` rows due at ``at`` (queued ones, and sending ones whose lease ran
    out), oldest due first."""
    due = (
        select(QueueItem.id)
        .where(QueueItem.state.in_((QUEUED, SENDING)), QueueItem.next_attempt <= at)
        .order_by(QueueItem.next_attempt, QueueItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(conn.scalars(due))
    if not ids:
        return []
    rows = conn.execute(
        update(QueueItem)
        .where(QueueItem.id.in_(ids))
        .values(
            state=SENDING,
            claim=token,
            attempts=QueueItem.attempts + 1,
            next_attempt=at + timedelta(seconds=lease),
        )
        .returning(
            QueueItem.id,
            QueueItem.queue_id,
            QueueItem.blob_id,
            QueueItem.sender,
            QueueItem.recipient,
            QueueItem.attempts,
            QueueItem.created_at,
        )
    )
    claimed = [
        Claimed(id_, queue_id or f"Q{id_}", blob_id, sender, recipient, attempts, aware(created))
        for id_, queue_id, blob_id, sender, recipient, attempts, created in rows
    ]
    claimed.sort(key=lambda c: c.id)
    return claimed


def aware(when: datetime) -> datetime:
    """SQLite gives back the UTC times it was given without their zone."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def blob_contents(conn: Connection, blob_ids: Iterable[int]) -> dict[int, bytes]:
    ids = sorted(set(blob_ids))
    contents: dict[int, bytes] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        contents.update(conn.execute(select(Blob.id, Blob.data).where(Blob.id.in_(chunk))).all())
    return contents


def renew(conn: Connection, *, token: str, ids: Sequence[int], until: datetime) -> None:
    """Push the lease of rows this worker still holds out to ``until``."""
    for start in range(0, len(ids), CHUNK):
        conn.execute(
            update(QueueItem)
            .where(
                QueueItem.id.in_(ids[start : start + CHUNK]),
                QueueItem.claim == token,
                QueueItem.state == SENDING,
            )
            .values(next_attempt=until)
        )


def release(conn: Connection, *, token: str, at: datetime) -> int:
    """Hand back every row the stopped runner ``token`` still holds: due at ``at`` for any
    runner, instead of when its lease would end. Returns how many."""
    result = conn.execute(
        update(QueueItem)
        .where(QueueItem.claim == token, QueueItem.state == SENDING)
        .values(next_attempt=at)
    )
    return int(result.rowcount or 0)


def finish(conn: Connection, *, token: str, done: Sequence[int], retries: Sequence[Retry]) -> None:
    """Record outcomes: ``done`` rows (delivered, or bounced — the bounce already committed) are
    deleted, with their message's blob once nothing else refers to it; ``retries`` wait for
    their next attempt. Rows another worker has claimed since are left alone."""
    blob_ids: list[int] = []
    for start in range(0, len(done), CHUNK):
        chunk = done[start : start + CHUNK]
        blob_ids.extend(
            conn.scalars(
                delete(QueueItem)
                .where(QueueItem.id.in_(chunk), QueueItem.claim == token)
                .returning(QueueItem.blob_id)
            )
        )
    if retries:
        conn.execute(
            update(QueueItem)
            .where(
                QueueItem.id == bindparam("rid"),
                QueueItem.claim == token,
                QueueItem.state == SENDING,
            )
            .values(
                state=QUEUED,
                claim=None,
                next_attempt=bindparam("next"),
                last_error=bindparam("error"),
                remote_mta=bindparam("mta"),
            )
            .execution_options(synchronize_session=False),
            [
                {"rid": r.id, "next": r.next_attempt, "error": r.error[:1000], "mta": r.remote_mta}
                for r in retries
            ],
        )
    delete_unused_blobs(conn, blob_ids)


def delete_unused_blobs(conn: Connection, blob_ids: Iterable[int]) -> None:
    """Delete those blobs no message and no queue row refers to any more."""
    ids = sorted(set(blob_ids))
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        in_use = (
            select(Message.blob_id)
            .where(Message.blob_id.in_(chunk))
            .union(select(QueueItem.blob_id).where(QueueItem.blob_id.in_(chunk)))
        )
        conn.execute(delete(Blob).where(Blob.id.in_(chunk), Blob.id.not_in(in_use)))


def earliest_due(conn: Connection) -> datetime | None:
    """When the next queued or leased row falls due (the worker sleeps until then)."""
    due = conn.scalar(
        select(QueueItem.next_attempt)
        .where(QueueItem.state.in_((QUEUED, SENDING)))
        .order_by(QueueItem.next_attempt)
        .limit(1)
    )
    return None if due is None else aware(due)


# --- the administrator's view (tidings queue ...) -------------------------------------------


@dataclass(frozen=True)
class QueuedRecipient:
    recipient: str
    state: str
    attempts: int
    next_attempt: datetime
    last_error: str | None
    remote_mta: str | None


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    sender: str
    size: int
    created_at: datetime
    recipients: tuple[QueuedRecipient, ...]


async def list_messages(conn: AsyncConnection, queue_id: str | None = None) -> list[QueuedMessage]:
    """The queue, one entry per message (all of it, or the one message ``queue_id``)."""
    query = (
        select(
            QueueItem.queue_id,
            QueueItem.id,
            QueueItem.sender,
            Blob.size,
            QueueItem.created_at,
            QueueItem.recipient,
            QueueItem.state,
            QueueItem.attempts,
            QueueItem.next_attempt,
            QueueItem.last_error,
            QueueItem.remote_mta,
        )
        .join(Blob, Blob.id == QueueItem.blob_id)
        .order_by(QueueItem.created_at, QueueItem.id)
    )
    if queue_id is not None:
        query = query.where(_names(queue_id))
    grouped: dict[str, tuple[str, int, datetime, list[QueuedRecipient]]] = {}
    for (
        qid,
        row_id,
        sender,
        size,
        created,
        rcpt,
        state,
        attempts,
        due,
        error,
        mta,
    ) in await conn.execute(query):
        key = qid or f"Q{row_id}"
        entry = grouped.setdefault(key, (sender, size, created, []))
        entry[3].append(QueuedRecipient(rcpt, state, attempts, due, error, mta))
    return [
        QueuedMessage(qid, sender, size, created, tuple(rcpts))
        for qid, (sender, size, created, rcpts) in grouped.items()
    ]


def _names(queue_id: str) -> ColumnElement[bool]:
    """The rows of message ``queue_id`` (rows queued without one are named ``Q<row id>``)."""
    if queue_id.startswith("Q") and queue_id[1:].isdigit():
        return or_(QueueItem.queue_id == queue_id, QueueItem.id == int(queue_id[1:]))
    return QueueItem.queue_id == queue_id


async def message_header(conn: AsyncConnection, queue_id: str) -> str:
    """The header section of a queued message, as text (for ``tidings queue show``)."""
    blob_id = await conn.scalar(select(QueueItem.blob_id).where(_names(queue_id)).limit(1))
    data = await conn.scalar(select(Blob.data).where(Blob.id == blob_id))
    if data is None:
        return ""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    return head.decode("utf-8", "replace").replace("\r\n", "\n")


async def set_state(
    conn: AsyncConnection, queue_id: str | None, *, action: str, at: datetime
) -> int:
    """``retry`` (due now), ``hold`` or ``release`` one message, or with None every message;
    returns the number of recipients changed. A message being sent right now is held once its
    attempt ends (a temporary failure leaves it held; a success still removes it)."""
    where = [] if queue_id is None else [_names(queue_id)]
    if action == "retry":
        stmt = update(QueueItem).where(*where, QueueItem.state == QUEUED).values(next_attempt=at)
    elif action == "hold":
        stmt = update(QueueItem).where(*where, QueueItem.state != HELD).values(state=HELD)
    elif action == "release":
        stmt = (
            update(QueueItem)
            .where(*where, QueueItem.state == HELD)
            .values(state=QUEUED, claim=None, next_attempt=at)
        )
    else:
        raise ValueError(f"unknown queue action {action!r}")
    result = await conn.execute(stmt)
    return int(result.rowcount)


async def delete_message(conn: AsyncConnection, queue_id: str) -> int:
    """Remove a message from the queue without sending or bouncing it."""
    blob_ids = list(
        await conn.scalars(delete(QueueItem).where(_names(queue_id)).returning(QueueItem.blob_id))
    )
    await conn.run_sync(lambda sync: delete_unused_blobs(sync, blob_ids))
    return len(blob_ids)
