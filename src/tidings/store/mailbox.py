"""Reading and removing the messages of a mailbox (POP3 maildrops; IMAP will use the same).

These run in the caller's async transaction. Filing new messages is store/filing.py's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.store.accounts import delete_unreferenced_blobs
from tidings.store.models import Account, Mailbox, Message

DELETED_FLAG = "\\Deleted"
SEEN_FLAG = "\\Seen"
_CHUNK = 500  # ids per IN (…) list: well under SQLite's and asyncpg's parameter limits


@dataclass(frozen=True, slots=True)
class MessageRef:
    """One message row without its body."""

    id: int
    uid: int
    size: int
    blob_id: int
    flags: str

    @property
    def flag_set(self) -> frozenset[str]:
        return frozenset(self.flags.split())


@dataclass(frozen=True, slots=True)
class MailboxRef:
    id: int
    account_id: int
    uidvalidity: int


async def find_mailbox(conn: AsyncConnection, address: str, name: str) -> MailboxRef | None:
    """The mailbox ``name`` of the account ``address`` (stored form, lower-cased)."""
    row = (
        await conn.execute(
            select(Mailbox.id, Mailbox.account_id, Mailbox.uidvalidity)
            .join(Account, Account.id == Mailbox.account_id)
            .where(Account.address == address, Mailbox.name == name)
        )
    ).one_or_none()
    return None if row is None else MailboxRef(*row)


async def list_messages(conn: AsyncConnection, mailbox_id: int) -> list[MessageRef]:
    """Every message of the mailbox in UID order, without bodies."""
    rows = await conn.execute(
        select(Message.id, Message.uid, Message.size, Message.blob_id, Message.flags)
        .where(Message.mailbox_id == mailbox_id)
        .order_by(Message.uid)
    )
    return [MessageRef(*row) for row in rows]


async def _bump_modseq(conn: AsyncConnection, mailbox_id: int) -> int:
    modseq = await conn.scalar(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(highestmodseq=Mailbox.highestmodseq + 1)
        .returning(Mailbox.highestmodseq)
    )
    if modseq is None:
        raise LookupError(f"mailbox {mailbox_id} no longer exists")
    return int(modseq)


async def expunge_messages(
    conn: AsyncConnection, mailbox_id: int, message_ids: Iterable[int]
) -> int:
    """Delete these messages of one mailbox (RFC 3501 §6.4.3 EXPUNGE); how many were deleted.

    In the caller's transaction: the rows go, the mailbox's HIGHESTMODSEQ moves on (RFC 7162
    §3.2.10: an expunge is a change), the account's ``used_bytes`` drops by what was freed, and
    bodies no other message or queue row shares are deleted. Ids already gone (another session
    expunged them) are skipped, so nothing is subtracted twice.
    """
    ids = sorted(set(message_ids))
    if not ids:
        return 0
    # The mailbox row first: the same lock order as delivery (allocate_uids), no deadlocks.
    await _bump_modseq(conn, mailbox_id)
    found: list[tuple[int, int, int]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        result = await conn.execute(
            select(Message.id, Message.size, Message.blob_id)
            .where(Message.mailbox_id == mailbox_id, Message.id.in_(chunk))
            .with_for_update()
        )
        found.extend(result.tuples())
    if not found:
        return 0
    for start in range(0, len(found), _CHUNK):
        chunk = [mid for mid, _, _ in found[start : start + _CHUNK]]
        await conn.execute(delete(Message).where(Message.id.in_(chunk)))
    account_id = select(Mailbox.account_id).where(Mailbox.id == mailbox_id).scalar_subquery()
    freed = sum(size for _, size, _ in found)
    await conn.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(used_bytes=Account.used_bytes - freed)
    )
    await delete_unreferenced_blobs(conn, sorted({blob for _, _, blob in found}))
    return len(found)


async def add_flag(
    conn: AsyncConnection, mailbox_id: int, message_ids: Iterable[int], flag: str
) -> int:
    """Add ``flag`` to these messages (RFC 3501 §6.4.6 STORE +FLAGS); how many changed.

    Each changed message takes the mailbox's new modseq (RFC 7162 §3.1.1), so a CONDSTORE
    client sees the change.
    """
    ids = sorted(set(message_ids))
    if not ids:
        return 0
    # The mailbox row first, as everywhere else, so that writers never wait on each other in
    # a cycle; a HIGHESTMODSEQ that moves without a visible change is harmless.
    modseq = await _bump_modseq(conn, mailbox_id)
    changes: list[dict[str, object]] = []
    for start in range(0, len(ids), _CHUNK):
        result = await conn.execute(
            select(Message.id, Message.flags)
            .where(Message.mailbox_id == mailbox_id, Message.id.in_(ids[start : start + _CHUNK]))
            .with_for_update()
        )
        for mid, flags in result:
            if flag not in flags.split():
                changes.append({"mid": mid, "new_flags": f"{flags} {flag}".strip()})
    if not changes:
        return 0
    await conn.execute(
        update(Message)
        .where(Message.id == bindparam("mid"))
        .values(flags=bindparam("new_flags"), modseq=modseq),
        changes,
    )
    return len(changes)
