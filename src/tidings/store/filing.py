"""Filing delivered messages: blobs, UID allocation, message rows, quota usage, queue rows.

Synchronous SQLAlchemy on a connection whose transaction the caller holds — delivery's group
commit runs these through ``Store.run_write`` so that many messages become durable with one
commit. UIDs come from ``UPDATE … RETURNING`` on the mailbox row: the row lock (PostgreSQL) or
the write lock (SQLite) makes concurrent deliveries into one mailbox take disjoint, ascending
ranges (RFC 3501 §2.3.1.1). A blob is stored with its message's IMAP analysis
(``mime.analyze``), which the caller computes beforehand, off the event loop and outside the
transaction; ``blob_structure`` reads it back, computing it for rows that have none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from tidings.mime import MessageInfo, StoredForm, analyze
from tidings.store.models import Account, Blob, Mailbox, Message, QueueItem


@dataclass(frozen=True, slots=True)
class UidRange:
    first_uid: int
    first_modseq: int


@dataclass(frozen=True, slots=True)
class Usage:
    quota_bytes: int
    used_bytes: int


def store_blobs(
    conn: Connection,
    contents: Sequence[bytes],
    at: datetime,
    structures: Sequence[StoredForm | str | None] | None = None,
) -> list[int]:
    """Insert one blob per content, with its analysis (``mime.stored_form``, or the JSON alone,
    or None when not computed) from ``structures`` in the same order; their ids in order."""
    if not contents:
        return []
    if structures is None:
        structures = [None] * len(contents)
    rows = [
        {
            "sha256": hashlib.sha256(c).hexdigest(),
            "size": len(c),
            "data": c,
            "created_at": at,
            "structure": form.structure if isinstance(form, StoredForm) else form,
            "envelope": form.envelope if isinstance(form, StoredForm) else None,
        }
        for c, form in zip(contents, structures, strict=True)
    ]
    result = conn.execute(insert(Blob).returning(Blob.id, sort_by_parameter_order=True), rows)
    return list(result.scalars())


def blob_structure(conn: Connection, blob_id: int, *, save: bool = True) -> MessageInfo | None:
    """What IMAP needs of a blob's message: the analysis stored at delivery, or, when there is
    none (older rows, queue-only messages, an analysis that failed or has an outdated form),
    ``mime.analyze`` of its bytes, stored for next time when ``save`` (which needs a write
    transaction). None if the blob does not exist.

    Computing is CPU work of about 40 µs per 5 KB message: on PostgreSQL, where ``run_sync``
    runs on the event loop, call this from a thread when many rows may lack it.
    """
    row = conn.execute(select(Blob.structure).where(Blob.id == blob_id)).one_or_none()
    if row is None:
        return None
    if row.structure is not None:
        try:
            return MessageInfo.from_json(row.structure)
        except ValueError:
            pass  # an older form: compute it again
    data = conn.scalar(select(Blob.data).where(Blob.id == blob_id))  # only now: it may be large
    if data is None:
        return None
    info = analyze(bytes(data))
    if save:
        conn.execute(update(Blob).where(Blob.id == blob_id).values(structure=info.to_json()))
    return info


def allocate_uids(conn: Connection, counts: Mapping[int, int]) -> dict[int, UidRange]:
    """Reserve ``counts[mailbox_id]`` consecutive UIDs (and modseqs) in each mailbox."""
    ranges: dict[int, UidRange] = {}
    for mailbox_id, n in sorted(counts.items()):  # one lock order, no deadlocks between writers
        row = conn.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id)
            .values(uidnext=Mailbox.uidnext + n, highestmodseq=Mailbox.highestmodseq + n)
            .returning(Mailbox.uidnext, Mailbox.highestmodseq)
        ).one_or_none()
        if row is None:
            raise LookupError(f"mailbox {mailbox_id} no longer exists")
        uidnext, highestmodseq = row
        ranges[mailbox_id] = UidRange(uidnext - n, highestmodseq - n + 1)
    return ranges


def insert_messages(conn: Connection, rows: list[dict[str, object]]) -> None:
    """Insert message rows (mailbox_id, uid, modseq, flags, internaldate, size, blob_id)."""
    if rows:
        conn.execute(insert(Message), rows)


def account_usage(conn: Connection, account_ids: Iterable[int]) -> dict[int, Usage]:
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    result = conn.execute(
        select(Account.id, Account.quota_bytes, Account.used_bytes).where(Account.id.in_(ids))
    )
    return {aid: Usage(quota, used) for aid, quota, used in result}


def add_usage(conn: Connection, added: Mapping[int, int]) -> None:
    if added:
        conn.execute(
            update(Account)
            .where(Account.id == bindparam("aid"))
            .values(used_bytes=Account.used_bytes + bindparam("n")),
            [{"aid": aid, "n": n} for aid, n in sorted(added.items())],
        )


def special_use_mailboxes(
    conn: Connection, account_ids: Iterable[int], special_use: str
) -> dict[int, int]:
    """{account id: id of its mailbox with this RFC 6154 special use}, where it has one."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    rows = conn.execute(
        select(Mailbox.account_id, Mailbox.id).where(
            Mailbox.account_id.in_(ids), Mailbox.special_use == special_use
        )
    )
    return {account_id: mailbox_id for account_id, mailbox_id in rows}


@dataclass(frozen=True, slots=True)
class QueueClaim:
    """Who takes new queue rows at once: the queue runner of this process (its token and
    lease). Rows a commit writes are then already claimed by it, so relaying starts without
    a claim transaction and without reading back the message it has in memory."""

    token: str
    lease: float


@dataclass(frozen=True, slots=True)
class Claimed:
    """One recipient of one message, claimed by a queue runner for an attempt."""

    id: int
    queue_id: str
    blob_id: int
    sender: str
    recipient: str
    attempts: int  # including this one
    created_at: datetime


def enqueue(
    conn: Connection,
    rows: Sequence[tuple[int, str, str, str]],
    at: datetime,
    claim: QueueClaim | None = None,
) -> list[Claimed]:
    """Queue (blob_id, queue_id, sender, recipient) rows for relay, due now — or, with
    ``claim``, already taken by that runner for one lease. Returns the claimed rows."""
    if not rows:
        return []
    values = [
        {
            "blob_id": blob_id,
            "queue_id": queue_id,
            "sender": sender,
            "recipient": recipient,
            "state": "sending" if claim else "queued",
            "claim": claim.token if claim else None,
            "attempts": 1 if claim else 0,
            "next_attempt": at + timedelta(seconds=claim.lease) if claim else at,
            "created_at": at,
        }
        for blob_id, queue_id, sender, recipient in rows
    ]
    if claim is None:
        conn.execute(insert(QueueItem), values)
        return []
    ids = conn.scalars(
        insert(QueueItem).returning(QueueItem.id, sort_by_parameter_order=True), values
    ).all()
    return [
        Claimed(row_id, queue_id, blob_id, sender, recipient, 1, at)
        for row_id, (blob_id, queue_id, sender, recipient) in zip(ids, rows, strict=True)
    ]
