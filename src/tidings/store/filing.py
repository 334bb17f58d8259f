"""Filing delivered messages: blobs, UID allocation, message rows, quota usage, queue rows.

Synchronous SQLAlchemy on a connection whose transaction the caller holds — delivery's group
commit runs these through ``Store.run_write`` so that many messages become durable with one
commit. UIDs come from ``UPDATE … RETURNING`` on the mailbox row: the row lock (PostgreSQL) or
the write lock (SQLite) makes concurrent deliveries into one mailbox take disjoint, ascending
ranges (RFC 3501 §2.3.1.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from tidings.store.models import Account, Blob, Mailbox, Message, QueueItem


@dataclass(frozen=True, slots=True)
class UidRange:
    first_uid: int
    first_modseq: int


@dataclass(frozen=True, slots=True)
class Usage:
    quota_bytes: int
    used_bytes: int


def store_blobs(conn: Connection, contents: Sequence[bytes], at: datetime) -> list[int]:
    """Insert one blob per content; their ids in the same order."""
    if not contents:
        return []
    rows = [
        {"sha256": hashlib.sha256(c).hexdigest(), "size": len(c), "data": c, "created_at": at}
        for c in contents
    ]
    result = conn.execute(insert(Blob).returning(Blob.id, sort_by_parameter_order=True), rows)
    return list(result.scalars())


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


def enqueue(conn: Connection, rows: Sequence[tuple[int, str, str, str]], at: datetime) -> None:
    """Queue (blob_id, queue_id, sender, recipient) rows for relay, due now."""
    if rows:
        conn.execute(
            insert(QueueItem),
            [
                {
                    "blob_id": blob_id,
                    "queue_id": queue_id,
                    "sender": sender,
                    "recipient": recipient,
                    "state": "queued",
                    "attempts": 0,
                    "next_attempt": at,
                    "created_at": at,
                }
                for blob_id, queue_id, sender, recipient in rows
            ],
        )
