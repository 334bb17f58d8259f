"""The mailbox hierarchy of an account, as IMAP sees it: LIST, CREATE, DELETE, RENAME,
SUBSCRIBE, STATUS and GETQUOTAROOT.

Names are stored as given, with ``/`` as the hierarchy delimiter (RFC 3501 §5.1.1); callers
normalise INBOX (case-insensitive, §5.1) to "INBOX" before calling. Every function runs in the
caller's transaction. Refusals are :class:`FolderError` carrying the response code.

Locks follow store/mailbox.py's order — mailbox rows, messages, account, blobs, then the
directory serial — except CREATE, which takes the directory serial first and then only inserts:
that serialises the name checks of concurrent CREATEs and RENAMEs, which no constraint could
do for special-use attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.store.accounts import bump_directory, create_mailbox, delete_unreferenced_blobs
from tidings.store.mailbox import (
    DELETED_FLAG,
    SEEN_FLAG,
    FolderError,
    flag_is_set,
    lock_mailbox,
    move_messages,
)
from tidings.store.models import Account, DirectorySerial, Expunged, Mailbox, Message

__all__ = [
    "DELIMITER",
    "INBOX",
    "FolderError",
    "FolderInfo",
    "FolderStatus",
    "account_id_of",
    "create_folder",
    "delete_folder",
    "folder_status",
    "get_folder",
    "list_folders",
    "quota_usage",
    "rename_folder",
    "set_subscribed",
]

DELIMITER = "/"
INBOX = "INBOX"
# RFC 6154 §2 attributes a mailbox can carry here. \All and \Flagged are left out: they
# describe virtual mailboxes, which Tidings does not build.
SPECIAL_USES = ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")
_SPECIAL_USE_SPELLING = {u.lower(): u for u in SPECIAL_USES}
_NAME_LIMIT = 1000  # models.Mailbox.name


@dataclass(frozen=True, slots=True)
class FolderInfo:
    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    recent_uid: int


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """The STATUS items (RFC 3501 §6.3.10, RFC 7162 §3.1.7 HIGHESTMODSEQ, RFC 8438 SIZE) and
    the count of \\Deleted messages (RFC 9051 §6.3.11 DELETED)."""

    messages: int
    recent: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int
    deleted: int


_FOLDER_COLUMNS = (
    Mailbox.id,
    Mailbox.name,
    Mailbox.special_use,
    Mailbox.uidvalidity,
    Mailbox.uidnext,
    Mailbox.highestmodseq,
    Mailbox.subscribed,
    Mailbox.recent_uid,
)


def _clean_name(name: str) -> str:
    """A name to store: a trailing delimiter dropped (RFC 3501 §6.3.3 — it only declares that
    inferiors will follow), and no empty level, which would make a superior without a name."""
    name = name.rstrip(DELIMITER)
    if not name or "" in name.split(DELIMITER):
        raise FolderError("Invalid mailbox name", "CANNOT")
    if len(name) > _NAME_LIMIT:
        raise FolderError("Mailbox name too long", "CANNOT")
    return name


def _superiors(name: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def _special_use(special_use: str | None) -> str | None:
    if special_use is None:
        return None
    spelling = _SPECIAL_USE_SPELLING.get(special_use.lower())
    if spelling is None:  # RFC 6154 §3: USEATTR for an attribute the server cannot give
        raise FolderError(f"Unsupported special-use attribute {special_use}", "USEATTR")
    return spelling


async def _lock_directory(conn: AsyncConnection) -> None:
    """Serialise changes to mailbox names (SQLite's write lock does it anyway)."""
    await conn.execute(select(DirectorySerial.id).where(DirectorySerial.id == 1).with_for_update())


async def _folders(conn: AsyncConnection, account_id: int) -> dict[str, FolderInfo]:
    rows = await conn.execute(select(*_FOLDER_COLUMNS).where(Mailbox.account_id == account_id))
    return {row.name: FolderInfo(*row) for row in rows}


async def _create_superiors(
    conn: AsyncConnection, account_id: int, name: str, existing: set[str]
) -> None:
    for superior in _superiors(name):
        if superior not in existing:
            await create_mailbox(conn, account_id, superior)
            existing.add(superior)


# --- reading ---------------------------------------------------------------------------------


async def account_id_of(conn: AsyncConnection, address: str) -> int | None:
    """The account of ``address`` (its stored, lower-cased form), or None."""
    account_id: int | None = await conn.scalar(select(Account.id).where(Account.address == address))
    return account_id


async def list_folders(conn: AsyncConnection, account_id: int) -> list[FolderInfo]:
    """Every mailbox of the account, by name (code point order, the same on both backends,
    whatever PostgreSQL's collation)."""
    return sorted((await _folders(conn, account_id)).values(), key=lambda f: f.name)


async def get_folder(conn: AsyncConnection, account_id: int, name: str) -> FolderInfo | None:
    row = (
        await conn.execute(
            select(*_FOLDER_COLUMNS).where(Mailbox.account_id == account_id, Mailbox.name == name)
        )
    ).one_or_none()
    return None if row is None else FolderInfo(*row)


async def folder_status(conn: AsyncConnection, mailbox_id: int) -> FolderStatus:
    """STATUS of one mailbox, from one aggregate query (no message row leaves the database).

    RECENT counts the messages no session has announced yet (UID ≥ ``recent_uid``): what a
    read-write SELECT would report now (RFC 3501 §6.3.1).
    """

    def count_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
        # Without messages the outer join gives one row of NULLs: NULL conditions count 0.
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    row = (
        await conn.execute(
            select(
                func.count(Message.id),
                count_where(Message.uid >= Mailbox.recent_uid),
                count_where(~flag_is_set(SEEN_FLAG)),
                Mailbox.uidnext,
                Mailbox.uidvalidity,
                Mailbox.highestmodseq,
                func.coalesce(func.sum(Message.size), 0),
                count_where(flag_is_set(DELETED_FLAG)),
            )
            .select_from(Mailbox)
            .outerjoin(Message, Message.mailbox_id == Mailbox.id)
            .where(Mailbox.id == mailbox_id)
            .group_by(Mailbox.id, Mailbox.uidnext, Mailbox.uidvalidity, Mailbox.highestmodseq)
        )
    ).one_or_none()
    if row is None:
        raise FolderError("No such mailbox", "NONEXISTENT")
    # PostgreSQL's SUM of a bigint is a numeric (a Decimal here).
    return FolderStatus(*(int(v) for v in row))


async def quota_usage(conn: AsyncConnection, account_id: int) -> tuple[int, int]:
    """(used bytes, quota bytes) of the account for GETQUOTAROOT (RFC 9208 §4.1.2); a quota of
    0 means none."""
    row = (
        await conn.execute(
            select(Account.used_bytes, Account.quota_bytes).where(Account.id == account_id)
        )
    ).one_or_none()
    if row is None:
        raise FolderError("No such account", "NONEXISTENT")
    return int(row[0]), int(row[1])


# --- changing --------------------------------------------------------------------------------


async def create_folder(
    conn: AsyncConnection, account_id: int, name: str, special_use: str | None = None
) -> int:
    """CREATE (RFC 3501 §6.3.3), with USE (RFC 6154 §3); the new mailbox's id.

    Missing superiors are created too (``a/b/c`` makes ``a`` and ``a/b``), so that every level
    of the hierarchy can be selected. A special-use attribute may belong to one mailbox of the
    account only: a client looking for \\Sent must find one answer.
    """
    name = _clean_name(name)
    use = _special_use(special_use)
    await _lock_directory(conn)
    existing = await _folders(conn, account_id)
    if name in existing:
        raise FolderError(f"Mailbox {name} already exists", "ALREADYEXISTS")
    taken = {f.special_use.lower() for f in existing.values() if f.special_use}
    if use is not None and use.lower() in taken:
        raise FolderError(f"Another mailbox is already {use}", "USEATTR")
    await _create_superiors(conn, account_id, name, set(existing))
    return await create_mailbox(conn, account_id, name, use)


async def delete_folder(conn: AsyncConnection, account_id: int, name: str) -> None:
    """DELETE (RFC 3501 §6.3.4): the mailbox, its messages and tombstones.

    INBOX cannot be deleted. Inferiors stay: every mailbox here is selectable, so deleting one
    with children is allowed, and LIST then shows the name as a \\NonExistent superior. The
    account's ``used_bytes`` drops by the messages' sizes and bodies no one else shares go.
    """
    if name == INBOX:
        raise FolderError("INBOX cannot be deleted", "CANNOT")
    folder = await get_folder(conn, account_id, name)
    if folder is None:
        raise FolderError(f"No mailbox {name}", "NONEXISTENT")
    await lock_mailbox(conn, folder.id)  # deliveries and sessions wait, then find it gone
    again = await get_folder(conn, account_id, name)
    if again is None or again.id != folder.id:  # renamed before the lock
        raise FolderError(f"No mailbox {name}", "NONEXISTENT")
    doomed = await conn.execute(
        select(Message.size, Message.blob_id)
        .where(Message.mailbox_id == folder.id)
        .with_for_update()
    )
    sizes_and_blobs = list(doomed)
    await conn.execute(delete(Message).where(Message.mailbox_id == folder.id))
    freed = sum(size for size, _ in sizes_and_blobs)
    if freed:
        await conn.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(used_bytes=Account.used_bytes - freed)
        )
    await delete_unreferenced_blobs(conn, sorted({blob for _, blob in sizes_and_blobs}))
    # The foreign key cascades too; saying it here does not depend on SQLite's pragma.
    await conn.execute(delete(Expunged).where(Expunged.mailbox_id == folder.id))
    await conn.execute(delete(Mailbox).where(Mailbox.id == folder.id))
    await bump_directory(conn)


async def rename_folder(conn: AsyncConnection, account_id: int, old: str, new: str) -> None:
    """RENAME (RFC 3501 §6.3.5). Inferiors follow (``old/x`` becomes ``new/x``), missing
    superiors of ``new`` are created, and renamed mailboxes keep their UIDVALIDITY: the
    value is unique to the mailbox, whatever its name.

    Renaming INBOX is special: its messages move to a new mailbox ``new`` (new UIDs there,
    tombstones in INBOX), INBOX stays, empty, and its inferiors are not renamed.
    """
    new = _clean_name(new)
    if old == INBOX:
        await _rename_inbox(conn, account_id, new)
        return
    folders = await _folders(conn, account_id)
    if old not in folders:
        raise FolderError(f"No mailbox {old}", "NONEXISTENT")
    if new.startswith(old + DELIMITER):
        raise FolderError("A mailbox cannot be moved under itself", "CANNOT")
    moving = [f for n, f in folders.items() if n == old or n.startswith(old + DELIMITER)]
    for folder in sorted(moving, key=lambda f: f.id):  # the mailbox rows, ascending
        await lock_mailbox(conn, folder.id)
    await _lock_directory(conn)
    folders = await _folders(conn, account_id)  # as of now that the names are locked
    if old not in folders:  # renamed or deleted before the lock
        raise FolderError(f"No mailbox {old}", "NONEXISTENT")
    moving = [f for n, f in folders.items() if n == old or n.startswith(old + DELIMITER)]
    renamed = {f.id: new + f.name[len(old) :] for f in moving}
    staying = set(folders) - {f.name for f in moving}
    if new in folders:
        raise FolderError(f"Mailbox {new} already exists", "ALREADYEXISTS")
    clash = sorted(set(renamed.values()) & staying)
    if clash:
        raise FolderError(f"Mailbox {clash[0]} already exists", "ALREADYEXISTS")
    if any(len(n) > _NAME_LIMIT for n in renamed.values()):
        raise FolderError("Mailbox name too long", "CANNOT")
    # A new name can equal another's old one only when ``old`` lies under ``new`` (a/b → a,
    # a/b/b → a/b); the new names are then the shorter, so renaming the shortest first frees
    # each name before it is taken.
    for folder in sorted(moving, key=lambda f: len(f.name)):
        await conn.execute(
            update(Mailbox).where(Mailbox.id == folder.id).values(name=renamed[folder.id])
        )
    await _create_superiors(conn, account_id, new, staying | set(renamed.values()))
    await bump_directory(conn)


async def _rename_inbox(conn: AsyncConnection, account_id: int, new: str) -> None:
    inbox = await get_folder(conn, account_id, INBOX)
    if inbox is None:
        raise FolderError("No mailbox INBOX", "NONEXISTENT")
    await lock_mailbox(conn, inbox.id)
    await _lock_directory(conn)
    folders = await _folders(conn, account_id)
    if new in folders:
        raise FolderError(f"Mailbox {new} already exists", "ALREADYEXISTS")
    await _create_superiors(conn, account_id, new, set(folders))
    target = await create_mailbox(conn, account_id, new)  # a higher id: lock order holds
    ids = await conn.execute(select(Message.id).where(Message.mailbox_id == inbox.id))
    await move_messages(conn, inbox.id, list(ids.scalars()), target)
    await bump_directory(conn)


async def set_subscribed(
    conn: AsyncConnection, account_id: int, name: str, subscribed: bool
) -> None:
    """SUBSCRIBE / UNSUBSCRIBE (RFC 3501 §6.3.6, §6.3.7), of existing mailboxes only."""
    result = await conn.execute(
        update(Mailbox)
        .where(Mailbox.account_id == account_id, Mailbox.name == name)
        .values(subscribed=subscribed)
    )
    if not result.rowcount:
        raise FolderError(f"No mailbox {name}", "NONEXISTENT")
