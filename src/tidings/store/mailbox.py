"""Reading and changing the messages of a mailbox: POP3 maildrops and IMAP sessions.

These run in the caller's async transaction. Filing delivered messages is store/filing.py's;
mailbox names and the hierarchy are store/folders.py's.

Every writer takes its locks in one order, so that none waits on another in a cycle
(PostgreSQL; SQLite has one writer at a time anyway): the mailbox row first, by an
``UPDATE … RETURNING`` (two mailboxes in ascending id order, as ``filing.allocate_uids`` does),
then that mailbox's message rows, then the account row, then blobs, then the directory serial.

A message deleted from a mailbox that goes on existing leaves a tombstone (``expunged``: its
UID and the modseq of the deletion), so that other sessions and QRESYNC clients learn of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, bindparam, delete, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.mime import StoredForm
from tidings.store.accounts import delete_unreferenced_blobs
from tidings.store.filing import allocate_uids, insert_messages, store_blobs
from tidings.store.models import Account, Blob, Expunged, Mailbox, Message

DELETED_FLAG = "\\Deleted"
SEEN_FLAG = "\\Seen"
RECENT_FLAG = "\\Recent"
# RFC 3501 §2.3.2. Stored in this spelling whatever the client sent, so that POP3 and SQL can
# match them exactly.
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_SPELLING = {f.lower(): f for f in SYSTEM_FLAGS}
_CHUNK = 500  # ids per IN (…) list: well under SQLite's and asyncpg's parameter limits


class FolderError(Exception):
    """A mailbox request that cannot be done. ``code`` is the IMAP response code the client
    sees (RFC 5530: NONEXISTENT, ALREADYEXISTS, CANNOT, OVERQUOTA; RFC 6154 §3: USEATTR).

    Defined here, beside the functions that raise it first, and exported by store/folders.py.
    """

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class MailboxGone(FolderError, LookupError):
    """The mailbox was deleted (by another session) before this transaction locked it. A
    LookupError too, which is what POP3 expects of a vanished maildrop."""

    def __init__(self, mailbox_id: int) -> None:
        super().__init__(f"Mailbox {mailbox_id} no longer exists", "NONEXISTENT")


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


@dataclass(frozen=True, slots=True)
class MessageRow:
    """What an IMAP session keeps of each message of its selected mailbox."""

    id: int
    uid: int
    modseq: int
    flags: str
    size: int
    internaldate: datetime  # timezone-aware, UTC
    blob_id: int


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A message whose flags a STORE changed, for the FETCH response (RFC 3501 §6.4.6)."""

    id: int
    uid: int
    flags: str
    modseq: int


@dataclass(frozen=True, slots=True)
class LockedMailbox:
    """The mailbox row as read when it was locked."""

    account_id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_uid: int


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


# --- flags -----------------------------------------------------------------------------------


def clean_flags(flags: Iterable[str]) -> list[str]:
    """Flags as they are stored: duplicates dropped case-insensitively (RFC 3501 §2.3.2: flag
    names are not case-sensitive), the first spelling kept, system flags in their RFC spelling,
    and no \\Recent — that is a session's state, never stored."""
    out: dict[str, str] = {}
    for flag in flags:
        if flag.split() != [flag]:
            raise ValueError(f"not a flag: {flag!r}")
        key = flag.lower()
        if key != RECENT_FLAG.lower() and key not in out:
            out[key] = _SYSTEM_SPELLING.get(key, flag)
    return list(out.values())


def _apply(
    current: str, mode: Literal["replace", "add", "remove"], wanted: list[str]
) -> str | None:
    """The flags after a STORE, or None when they would not change (same set, any case)."""
    have = current.split()
    have_keys = {f.lower() for f in have}
    wanted_keys = {f.lower() for f in wanted}
    if mode == "add":
        result = have + [f for f in wanted if f.lower() not in have_keys]
    elif mode == "remove":
        result = [f for f in have if f.lower() not in wanted_keys]
    else:  # keep the stored spelling of flags that stay
        result = [f for f in have if f.lower() in wanted_keys]
        result += [f for f in wanted if f.lower() not in have_keys]
    if {f.lower() for f in result} == have_keys:
        return None
    return " ".join(result)


def flag_is_set(flag: str) -> ColumnElement[bool]:
    """SQL: the message has ``flag`` (a whole word of ``flags``, any case).

    ``!`` is the LIKE escape on both backends: PostgreSQL's default escape is the backslash,
    which would turn ``\\Seen`` into a match for a keyword ``Seen``; and ``_``/``%`` in a
    keyword must not be wildcards.
    """
    escaped = flag.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    padded = literal(" ") + Message.flags + literal(" ")
    return padded.ilike(f"% {escaped} %", escape="!")


# --- reading ---------------------------------------------------------------------------------


def _message_columns() -> tuple[Any, ...]:
    return (
        Message.id,
        Message.uid,
        Message.modseq,
        Message.flags,
        Message.size,
        Message.internaldate,
        Message.blob_id,
    )


def _utc(when: datetime) -> datetime:
    """SQLite gives back naive datetimes; what is stored is UTC (see append_message)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


async def _message_rows(conn: AsyncConnection, *where: ColumnElement[bool]) -> list[MessageRow]:
    result = await conn.execute(select(*_message_columns()).where(*where).order_by(Message.uid))
    return [
        MessageRow(mid, uid, modseq, flags, size, _utc(date), blob)
        for mid, uid, modseq, flags, size, date, blob in result
    ]


async def message_rows(conn: AsyncConnection, mailbox_id: int) -> list[MessageRow]:
    """Every message of the mailbox in UID order (SELECT/EXAMINE): one query, no bodies."""
    return await _message_rows(conn, Message.mailbox_id == mailbox_id)


async def changed_since(conn: AsyncConnection, mailbox_id: int, modseq: int) -> list[MessageRow]:
    """Messages added or whose flags changed after ``modseq``, in UID order (RFC 7162
    §3.1.4.1 CHANGEDSINCE; also how a session finds new mail and others' STOREs)."""
    return await _message_rows(conn, Message.mailbox_id == mailbox_id, Message.modseq > modseq)


async def expunged_since(conn: AsyncConnection, mailbox_id: int, modseq: int) -> list[int]:
    """UIDs expunged after ``modseq``, ascending (RFC 7162 §3.2.10 VANISHED)."""
    rows = await conn.execute(
        select(Expunged.uid)
        .where(Expunged.mailbox_id == mailbox_id, Expunged.modseq > modseq)
        .order_by(Expunged.uid)
    )
    return list(rows.scalars())


async def mailbox_marks(conn: AsyncConnection, mailbox_id: int) -> tuple[int, int, int] | None:
    """(HIGHESTMODSEQ, UIDNEXT, UIDVALIDITY), or None if the mailbox is gone.

    Every change to a mailbox moves HIGHESTMODSEQ or UIDNEXT, so comparing these with what a
    session saw last is the cheap test before asking what changed.
    """
    row = (
        await conn.execute(
            select(Mailbox.highestmodseq, Mailbox.uidnext, Mailbox.uidvalidity).where(
                Mailbox.id == mailbox_id
            )
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


async def load_blobs(conn: AsyncConnection, blob_ids: Iterable[int]) -> dict[int, bytes]:
    """The bytes of these blobs by id (missing ids are left out)."""
    ids = sorted(set(blob_ids))
    found: dict[int, bytes] = {}
    for start in range(0, len(ids), _CHUNK):
        rows = await conn.execute(
            select(Blob.id, Blob.data).where(Blob.id.in_(ids[start : start + _CHUNK]))
        )
        found.update((bid, bytes(data)) for bid, data in rows)
    return found


async def load_structures(conn: AsyncConnection, blob_ids: Iterable[int]) -> dict[int, str | None]:
    """The stored IMAP analysis (``MessageInfo.to_json()``) of these blobs; None where it was
    not computed — the session analyses those itself (see filing.blob_structure)."""
    ids = sorted(set(blob_ids))
    found: dict[int, str | None] = {}
    for start in range(0, len(ids), _CHUNK):
        rows = await conn.execute(
            select(Blob.id, Blob.structure).where(Blob.id.in_(ids[start : start + _CHUNK]))
        )
        found.update((bid, structure) for bid, structure in rows)
    return found


async def load_envelopes(conn: AsyncConnection, blob_ids: Iterable[int]) -> dict[int, bytes | None]:
    """The stored ENVELOPE wire form of these blobs; None where there is none (older rows)."""
    ids = sorted(set(blob_ids))
    found: dict[int, bytes | None] = {}
    for start in range(0, len(ids), _CHUNK):
        rows = await conn.execute(
            select(Blob.id, Blob.envelope).where(Blob.id.in_(ids[start : start + _CHUNK]))
        )
        found.update((bid, None if env is None else bytes(env)) for bid, env in rows)
    return found


# --- locking and modseqs ---------------------------------------------------------------------


async def lock_mailbox(conn: AsyncConnection, mailbox_id: int) -> LockedMailbox:
    """Lock the mailbox row (an UPDATE that changes nothing) and read it.

    An UPDATE rather than SELECT … FOR UPDATE: it takes the same lock delivery's UID
    allocation takes, so message inserts elsewhere (which only share-lock the key) do not wait.
    """
    row = (
        await conn.execute(
            update(Mailbox)
            .where(Mailbox.id == mailbox_id)
            .values(highestmodseq=Mailbox.highestmodseq)
            .returning(
                Mailbox.account_id,
                Mailbox.uidvalidity,
                Mailbox.uidnext,
                Mailbox.highestmodseq,
                Mailbox.recent_uid,
            )
        )
    ).one_or_none()
    if row is None:
        raise MailboxGone(mailbox_id)
    return LockedMailbox(*row)


async def _lock_mailboxes(conn: AsyncConnection, *mailbox_ids: int) -> dict[int, LockedMailbox]:
    return {mid: await lock_mailbox(conn, mid) for mid in sorted(set(mailbox_ids))}


async def _locked_rows(
    conn: AsyncConnection, mailbox_id: int, ids: list[int], *columns: Any
) -> list[Sequence[Any]]:
    """``columns`` (the first is ``Message.id``) of the messages of ``ids`` still in the
    mailbox, locked FOR UPDATE, in UID order.

    Up to one IN list, the rows are found by primary key alone and their mailbox checked
    here: given ``mailbox_id = $1 AND id IN (…)``, PostgreSQL's cached generic plan for the
    statement scanned the whole mailbox through its index instead — 180 ms per 500 ids in a
    mailbox of 20,000. (Ids never move between mailboxes, so one from elsewhere is a
    caller's mistake; it is ignored.) Past one IN list, every message of the mailbox is read
    once and filtered here, rather than chunk by chunk.
    """
    query = select(Message.mailbox_id, *columns).order_by(Message.uid).with_for_update()
    if len(ids) <= _CHUNK:
        result = await conn.execute(query.where(Message.id.in_(ids)))
        return [row[1:] for row in result if row[0] == mailbox_id]
    wanted = set(ids)
    result = await conn.execute(query.where(Message.mailbox_id == mailbox_id))
    return [row[1:] for row in result if row[1] in wanted]


async def _bump_modseq(conn: AsyncConnection, mailbox_id: int) -> int:
    """A new HIGHESTMODSEQ for a change (RFC 7162 §3.1); it also locks the row."""
    modseq = await conn.scalar(
        update(Mailbox)
        .where(Mailbox.id == mailbox_id)
        .values(highestmodseq=Mailbox.highestmodseq + 1)
        .returning(Mailbox.highestmodseq)
    )
    if modseq is None:
        raise MailboxGone(mailbox_id)
    return int(modseq)


async def _charge(conn: AsyncConnection, account_id: int, size: int) -> None:
    """``used_bytes += size`` unless that passes a non-zero quota (RFC 9208 §4.3.1 OVERQUOTA).

    One conditional statement, so two sessions appending at once cannot both pass the test.
    """
    if size <= 0:
        return
    charged = await conn.scalar(
        update(Account)
        .where(
            Account.id == account_id,
            or_(Account.quota_bytes == 0, Account.used_bytes + size <= Account.quota_bytes),
        )
        .values(used_bytes=Account.used_bytes + size)
        .returning(Account.id)
    )
    if charged is None:
        raise FolderError("Quota exceeded", "OVERQUOTA")


async def _remove(conn: AsyncConnection, mailbox_id: int, doomed: Sequence[tuple[int, int]]) -> int:
    """Delete these (id, uid) messages of a locked mailbox and leave their tombstones, all
    with one new modseq (RFC 7162 §3.2.10: an expunge is a change); that modseq."""
    modseq = await _bump_modseq(conn, mailbox_id)
    for start in range(0, len(doomed), _CHUNK):
        chunk = [mid for mid, _ in doomed[start : start + _CHUNK]]
        await conn.execute(delete(Message).where(Message.id.in_(chunk)))
    await conn.execute(
        insert(Expunged),
        [{"mailbox_id": mailbox_id, "uid": uid, "modseq": modseq} for _, uid in doomed],
    )
    return modseq


# --- changing --------------------------------------------------------------------------------


async def expunge_messages(
    conn: AsyncConnection, mailbox_id: int, message_ids: Iterable[int]
) -> int:
    """Delete these messages of one mailbox (RFC 3501 §6.4.3 EXPUNGE); how many were deleted.

    In the caller's transaction: the rows go, each leaves a tombstone, the mailbox's
    HIGHESTMODSEQ moves on, the account's ``used_bytes`` drops by what was freed, and bodies no
    other message or queue row shares are deleted. Ids already gone (another session expunged
    them) are skipped, so nothing is subtracted twice.
    """
    ids = sorted(set(message_ids))
    if not ids:
        return 0
    locked = await lock_mailbox(conn, mailbox_id)
    found = await _locked_rows(
        conn, mailbox_id, ids, Message.id, Message.uid, Message.size, Message.blob_id
    )
    if not found:
        return 0
    await _remove(conn, mailbox_id, [(mid, uid) for mid, uid, _, _ in found])
    freed = sum(size for _, _, size, _ in found)
    await conn.execute(
        update(Account)
        .where(Account.id == locked.account_id)
        .values(used_bytes=Account.used_bytes - freed)
    )
    await delete_unreferenced_blobs(conn, sorted({blob for _, _, _, blob in found}))
    return len(found)


async def store_flags(  # noqa: PLR0917 - the signature the IMAP session was written against
    conn: AsyncConnection,
    mailbox_id: int,
    ids: Iterable[int],
    mode: Literal["replace", "add", "remove"],
    flags: Iterable[str],
    unchanged_since: int | None = None,
) -> tuple[list[FlagChange], list[int]]:
    """STORE (RFC 3501 §6.4.6) with UNCHANGEDSINCE (RFC 7162 §3.1.3).

    Returns the changes made, in UID order, and the ids left alone because their modseq is
    past ``unchanged_since`` (the MODIFIED set). A message whose flags come out the same is
    not changed and keeps its modseq; all changed ones share one new modseq, so HIGHESTMODSEQ
    moves only when something changed. Ids no longer in the mailbox are skipped.
    """
    wanted = clean_flags(flags)
    id_list = sorted(set(ids))
    if not id_list:
        return [], []
    await lock_mailbox(conn, mailbox_id)
    rows = await _locked_rows(
        conn, mailbox_id, id_list, Message.id, Message.uid, Message.modseq, Message.flags
    )
    failed: list[int] = []
    pending: list[tuple[int, int, str]] = []
    for mid, uid, modseq, current in rows:
        if unchanged_since is not None and modseq > unchanged_since:
            failed.append(mid)
            continue
        new = _apply(current, mode, wanted)
        if new is not None:
            pending.append((mid, uid, new))
    if not pending:
        return [], failed
    modseq = await _bump_modseq(conn, mailbox_id)
    await _write_flags(conn, pending, modseq)
    return [FlagChange(mid, uid, new, modseq) for mid, uid, new in pending], failed


async def _write_flags(
    conn: AsyncConnection, pending: list[tuple[int, int, str]], modseq: int
) -> None:
    """One UPDATE … WHERE id IN (…) per resulting flag string (marking a whole mailbox read
    is a few of those, not 20,000 single-row updates); the odd ones out in one executemany."""
    by_flags: dict[str, list[int]] = {}
    for mid, _, new in pending:
        by_flags.setdefault(new, []).append(mid)
    singles: list[dict[str, object]] = []
    for new, ids in by_flags.items():
        if len(ids) == 1:
            singles.append({"mid": ids[0], "new_flags": new})
            continue
        for start in range(0, len(ids), _CHUNK):
            await conn.execute(
                update(Message)
                .where(Message.id.in_(ids[start : start + _CHUNK]))
                .values(flags=new, modseq=modseq)
            )
    if singles:
        await conn.execute(
            update(Message)
            .where(Message.id == bindparam("mid"))
            .values(flags=bindparam("new_flags"), modseq=modseq),
            singles,
        )


async def add_flag(
    conn: AsyncConnection, mailbox_id: int, message_ids: Iterable[int], flag: str
) -> int:
    """Add ``flag`` to these messages (RFC 3501 §6.4.6 STORE +FLAGS); how many changed."""
    changes, _ = await store_flags(conn, mailbox_id, message_ids, "add", [flag])
    return len(changes)


async def claim_recent(conn: AsyncConnection, mailbox_id: int) -> int:
    """Take the \\Recent messages for the calling session: returns the lowest UID that is
    \\Recent for it (those below the mailbox's UIDNEXT now are), and marks them announced.

    RFC 3501 §2.3.2: a message is \\Recent in one session only, the first to see it. A
    read-write SELECT claims, and so does a selected session that sees new mail.
    """
    locked = await lock_mailbox(conn, mailbox_id)
    if locked.recent_uid < locked.uidnext:
        await conn.execute(
            update(Mailbox).where(Mailbox.id == mailbox_id).values(recent_uid=locked.uidnext)
        )
    return locked.recent_uid


@dataclass(frozen=True, slots=True)
class _Source:
    id: int
    uid: int
    flags: str
    size: int
    internaldate: datetime
    blob_id: int


async def _sources(conn: AsyncConnection, mailbox_id: int, ids: Sequence[int]) -> list[_Source]:
    """The messages of ``ids`` still in the (locked) mailbox, in UID order."""
    rows = await _locked_rows(
        conn,
        mailbox_id,
        sorted(set(ids)),
        Message.id,
        Message.uid,
        Message.flags,
        Message.size,
        Message.internaldate,
        Message.blob_id,
    )
    return [_Source(*row) for row in rows]


async def _file_copies(
    conn: AsyncConnection, sources: list[_Source], target_mailbox_id: int
) -> list[tuple[int, int]]:
    """New rows in the target for ``sources``: the next UIDs in source UID order (RFC 4315
    COPYUID), the same blobs, flags and INTERNALDATE (RFC 3501 §6.4.7)."""
    ranges = await conn.run_sync(lambda c: allocate_uids(c, {target_mailbox_id: len(sources)}))
    first = ranges[target_mailbox_id]
    rows: list[dict[str, object]] = [
        {
            "mailbox_id": target_mailbox_id,
            "uid": first.first_uid + i,
            "modseq": first.first_modseq + i,
            "flags": s.flags,
            "internaldate": s.internaldate,
            "size": s.size,
            "blob_id": s.blob_id,
        }
        for i, s in enumerate(sources)
    ]
    await conn.run_sync(lambda c: insert_messages(c, rows))
    return [(s.uid, first.first_uid + i) for i, s in enumerate(sources)]


async def copy_messages(
    conn: AsyncConnection, source_mailbox_id: int, ids: Sequence[int], target_mailbox_id: int
) -> list[tuple[int, int]]:
    """COPY (RFC 3501 §6.4.7): [(source UID, new UID)] in source UID order, for COPYUID
    (RFC 4315 §3).

    The copies share their source's blob, but count again against the quota: over a non-zero
    quota, FolderError OVERQUOTA before anything changed (RFC 3501: a failed COPY leaves the
    target as it was). Ids no longer in the source are skipped.
    """
    if not ids:
        return []
    locked = await _lock_mailboxes(conn, source_mailbox_id, target_mailbox_id)
    sources = await _sources(conn, source_mailbox_id, ids)
    if not sources:
        return []
    await _charge(conn, locked[target_mailbox_id].account_id, sum(s.size for s in sources))
    return await _file_copies(conn, sources, target_mailbox_id)


async def move_messages(
    conn: AsyncConnection, source_mailbox_id: int, ids: Sequence[int], target_mailbox_id: int
) -> list[tuple[int, int]]:
    """MOVE (RFC 6851 §3): copy and expunge in one transaction; [(source UID, new UID)].

    Nothing is duplicated, so there is no quota test and ``used_bytes`` stays; the source
    keeps tombstones of the moved UIDs.
    """
    if not ids:
        return []
    await _lock_mailboxes(conn, source_mailbox_id, target_mailbox_id)
    sources = await _sources(conn, source_mailbox_id, ids)
    if not sources:
        return []
    pairs = await _file_copies(conn, sources, target_mailbox_id)
    await _remove(conn, source_mailbox_id, [(s.id, s.uid) for s in sources])
    return pairs


async def append_message(  # noqa: PLR0917 - the signature the IMAP session was written against
    conn: AsyncConnection,
    mailbox_id: int,
    data: bytes,
    flags: Iterable[str],
    internaldate: datetime,
    structure: StoredForm | str | None,
) -> tuple[int, int]:
    """APPEND (RFC 3501 §6.3.11): store ``data`` as a new blob (with its analysis,
    ``MessageInfo.to_json()`` or None) and a message with the next UID; (UIDVALIDITY, UID)
    for APPENDUID (RFC 4315 §3). Over a non-zero quota: FolderError OVERQUOTA, nothing
    changed. ``internaldate`` is stored in UTC (naive means UTC)."""
    wanted = " ".join(clean_flags(flags))
    date = _utc(internaldate).astimezone(UTC)
    locked = await lock_mailbox(conn, mailbox_id)
    await _charge(conn, locked.account_id, len(data))
    (blob_id,) = await conn.run_sync(
        lambda c: store_blobs(c, [data], datetime.now(UTC), [structure])
    )
    ranges = await conn.run_sync(lambda c: allocate_uids(c, {mailbox_id: 1}))
    uid = ranges[mailbox_id].first_uid
    row: dict[str, object] = {
        "mailbox_id": mailbox_id,
        "uid": uid,
        "modseq": ranges[mailbox_id].first_modseq,
        "flags": wanted,
        "internaldate": date,
        "size": len(data),
        "blob_id": blob_id,
    }
    await conn.run_sync(lambda c: insert_messages(c, [row]))
    return locked.uidvalidity, uid
