"""The store operations behind IMAP (store/folders.py, store/mailbox.py), on SQLite and
PostgreSQL: the hierarchy, STATUS, flags with CONDSTORE, COPY/MOVE/APPEND with quotas,
tombstones for EXPUNGE/VANISHED, \\Recent, and concurrent sessions on one mailbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import ColumnElement, func, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.mime import analyze
from tidings.store import accounts, folders
from tidings.store import mailbox as mb
from tidings.store.db import MIGRATIONS_DIR, SCHEMA_HEAD, Store
from tidings.store.filing import allocate_uids, insert_messages, store_blobs
from tidings.store.folders import FolderError
from tidings.store.models import Account, Blob, DirectorySerial, Expunged, Mailbox, Message

PASSWORD_HASH = "unused"  # these tests never log in
WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
Mode = Literal["replace", "add", "remove"]
DEFAULT_NAMES = ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]


def message(n: int, pad: int = 0) -> bytes:
    return b"From: a@example.net\r\nSubject: %d\r\n\r\nbody %d%s\r\n" % (n, n, b"x" * pad)


async def make_account(store: Store, address: str = "alice@example.org", quota: int = 0) -> int:
    domain = address.rpartition("@")[2]
    if domain not in {d.name for d in await accounts.list_domains(store)}:
        await accounts.add_domain(store, domain)
    await accounts.add_account(store, address, PASSWORD_HASH, quota)
    async with store.read() as conn:
        account_id = await folders.account_id_of(conn, address)
    assert account_id is not None
    return account_id


async def folder(store: Store, account_id: int, name: str = "INBOX") -> folders.FolderInfo:
    async with store.read() as conn:
        info = await folders.get_folder(conn, account_id, name)
    assert info is not None, name
    return info


async def names(store: Store, account_id: int) -> list[str]:
    async with store.read() as conn:
        return [f.name for f in await folders.list_folders(conn, account_id)]


async def append(
    store: Store, mailbox_id: int, data: bytes, flags: tuple[str, ...] = (), when: datetime = WHEN
) -> int:
    async with store.write() as conn:
        _, uid = await mb.append_message(conn, mailbox_id, data, flags, when, None)
    return uid


async def rows(store: Store, mailbox_id: int) -> list[mb.MessageRow]:
    async with store.read() as conn:
        return await mb.message_rows(conn, mailbox_id)


async def marks(store: Store, mailbox_id: int) -> tuple[int, int, int]:
    async with store.read() as conn:
        got = await mb.mailbox_marks(conn, mailbox_id)
    assert got is not None
    return got


async def used_bytes(store: Store, account_id: int) -> int:
    async with store.read() as conn:
        used, _ = await folders.quota_usage(conn, account_id)
    return used


async def count(store: Store, column: Any, *where: ColumnElement[bool]) -> int:
    async with store.read() as conn:
        n = await conn.scalar(select(func.count(column)).where(*where))
    return int(n or 0)


async def serial(store: Store) -> int:
    async with store.read() as conn:
        value = await conn.scalar(select(DirectorySerial.serial))
    return int(value or 0)


Call = Callable[[AsyncConnection], Awaitable[object]]


async def refused(code: str, store: Store, call: Call) -> FolderError:
    """Run ``call(conn)`` in a write transaction; it must raise FolderError ``code``."""
    with pytest.raises(FolderError) as caught:
        async with store.write() as conn:
            await call(conn)
    assert caught.value.code == code, caught.value.reason
    return caught.value


# --- the hierarchy ---------------------------------------------------------------------------


async def test_account_and_folder_lookup(store: Store) -> None:
    account_id = await make_account(store)
    async with store.read() as conn:
        assert await folders.account_id_of(conn, "nobody@example.org") is None
        listed = await folders.list_folders(conn, account_id)
        assert await folders.get_folder(conn, account_id, "Nope") is None
    assert [f.name for f in listed] == DEFAULT_NAMES
    by_name = {f.name: f for f in listed}
    inbox = by_name["INBOX"]
    assert (inbox.special_use, inbox.uidnext, inbox.highestmodseq, inbox.recent_uid) == (
        None,
        1,
        1,
        1,
    )
    assert inbox.subscribed and by_name["Sent"].special_use == "\\Sent"
    assert len({f.uidvalidity for f in listed}) == len(listed)


async def test_create_folder_makes_superiors(store: Store) -> None:
    account_id = await make_account(store)
    before = await serial(store)
    async with store.write() as conn:
        new_id = await folders.create_folder(conn, account_id, "Work/2024/Q1")
    assert (await folder(store, account_id, "Work/2024/Q1")).id == new_id
    assert await names(store, account_id) == sorted(
        [*DEFAULT_NAMES, "Work", "Work/2024", "Work/2024/Q1"]
    )
    assert await serial(store) > before  # delivery forgets what it cached of mailbox names
    # A trailing delimiter only says inferiors will follow (RFC 3501 §6.3.3).
    async with store.write() as conn:
        await folders.create_folder(conn, account_id, "Projects/")
        await folders.create_folder(conn, account_id, "Work/2024/Q2")
    assert "Projects" in await names(store, account_id)
    assert len(await names(store, account_id)) == len(DEFAULT_NAMES) + 5
    await refused("ALREADYEXISTS", store, lambda c: folders.create_folder(c, account_id, "Work/"))
    await refused("ALREADYEXISTS", store, lambda c: folders.create_folder(c, account_id, "INBOX"))
    for bad in ["", "/", "a//b", "/x", "y" * 1001]:
        await refused("CANNOT", store, lambda c, bad=bad: folders.create_folder(c, account_id, bad))
    infos = [await folder(store, account_id, n) for n in await names(store, account_id)]
    assert len({f.uidvalidity for f in infos}) == len(infos)


async def test_special_use_belongs_to_one_mailbox(store: Store) -> None:
    account_id = await make_account(store)
    await make_account(store, "bob@example.org")  # has a \Sent of its own: no conflict
    for use in ["\\Sent", "\\sent"]:
        await refused(
            "USEATTR", store, lambda c, use=use: folders.create_folder(c, account_id, "S2", use)
        )
    for use in ["\\All", "\\Flagged", "\\Important"]:  # virtual or unknown: not given here
        await refused(
            "USEATTR", store, lambda c, use=use: folders.create_folder(c, account_id, "S2", use)
        )
    assert "S2" not in await names(store, account_id)
    async with store.write() as conn:
        await folders.delete_folder(conn, account_id, "Archive")
        await folders.create_folder(conn, account_id, "Old/Mail", "\\archive")
    assert (await folder(store, account_id, "Old/Mail")).special_use == "\\Archive"
    assert (await folder(store, account_id, "Old")).special_use is None


async def test_delete_folder_frees_quota_and_unshared_blobs(store: Store) -> None:
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    async with store.write() as conn:
        lists = await folders.create_folder(conn, account_id, "Lists")
        await folders.create_folder(conn, account_id, "Lists/Sub")
    a, b, c = message(1), message(2, pad=10), message(3, pad=20)
    for data in (a, b, c):
        await append(store, lists, data)
    kept_blob = (await rows(store, lists))[0].blob_id
    async with store.write() as conn:
        await mb.copy_messages(conn, lists, [(await mb.message_rows(conn, lists))[0].id], inbox)
        await mb.expunge_messages(conn, lists, [(await mb.message_rows(conn, lists))[2].id])
    assert await count(store, Expunged.id, Expunged.mailbox_id == lists) == 1
    assert await used_bytes(store, account_id) == 2 * len(a) + len(b)
    blobs_before = await count(store, Blob.id)
    before = await serial(store)

    async with store.write() as conn:
        await folders.delete_folder(conn, account_id, "Lists")

    assert await used_bytes(store, account_id) == len(a)  # the copy in INBOX is left
    assert await count(store, Blob.id) == blobs_before - 1  # b's body; a's is shared
    assert await count(store, Blob.id, Blob.id == kept_blob) == 1
    assert await count(store, Message.id, Message.mailbox_id == lists) == 0
    assert await count(store, Expunged.id, Expunged.mailbox_id == lists) == 0
    assert await names(store, account_id) == sorted([*DEFAULT_NAMES, "Lists/Sub"])
    assert await serial(store) > before
    await refused("NONEXISTENT", store, lambda c: folders.delete_folder(c, account_id, "Lists"))
    await refused("CANNOT", store, lambda c: folders.delete_folder(c, account_id, "INBOX"))
    async with store.read() as conn:
        assert await mb.mailbox_marks(conn, lists) is None  # what a selected session notices


async def test_rename_folder_takes_its_inferiors(store: Store) -> None:
    account_id = await make_account(store)
    async with store.write() as conn:
        for name in ["a/b/c", "a/x", "ab"]:
            await folders.create_folder(conn, account_id, name)
    before = {n: await folder(store, account_id, n) for n in ["a", "a/b", "a/b/c", "a/x"]}
    uid = await append(store, before["a/b"].id, message(1))

    async with store.write() as conn:
        await folders.rename_folder(conn, account_id, "a", "z/y")

    assert await names(store, account_id) == sorted(
        [*DEFAULT_NAMES, "ab", "z", "z/y", "z/y/b", "z/y/b/c", "z/y/x"]
    )
    for old, new in [("a", "z/y"), ("a/b", "z/y/b"), ("a/b/c", "z/y/b/c"), ("a/x", "z/y/x")]:
        renamed = await folder(store, account_id, new)
        assert (renamed.id, renamed.uidvalidity) == (before[old].id, before[old].uidvalidity)
    assert [r.uid for r in await rows(store, before["a/b"].id)] == [uid]

    def rename(old: str, new: str) -> Call:
        return lambda c: folders.rename_folder(c, account_id, old, new)

    await refused("NONEXISTENT", store, rename("a", "q"))
    await refused("ALREADYEXISTS", store, rename("ab", "z"))
    await refused("ALREADYEXISTS", store, rename("ab", "ab"))
    await refused("CANNOT", store, rename("z/y", "z/y/w"))
    # A clash one level down: k is gone but k/b is there.
    async with store.write() as conn:
        await folders.create_folder(conn, account_id, "m/b")
        await folders.create_folder(conn, account_id, "k/b")
        await folders.delete_folder(conn, account_id, "k")
    await refused("ALREADYEXISTS", store, rename("m", "k"))
    assert {"m", "m/b", "k/b"} <= set(await names(store, account_id))


async def test_rename_to_its_own_superior(store: Store) -> None:
    """p/q → p while p/q/q exists: p/q/q becomes p/q, a name p/q itself gives up."""
    account_id = await make_account(store)
    async with store.write() as conn:
        await folders.create_folder(conn, account_id, "p/q/q")
        await folders.delete_folder(conn, account_id, "p")
    q, qq = await folder(store, account_id, "p/q"), await folder(store, account_id, "p/q/q")
    async with store.write() as conn:
        await folders.rename_folder(conn, account_id, "p/q", "p")
    assert (await folder(store, account_id, "p")).id == q.id
    assert (await folder(store, account_id, "p/q")).id == qq.id
    assert await names(store, account_id) == sorted([*DEFAULT_NAMES, "p", "p/q"])


async def test_rename_inbox_moves_its_messages(store: Store) -> None:
    account_id = await make_account(store)
    inbox = await folder(store, account_id)
    for n, flags in enumerate([(), ("\\Seen",), ("$Label",)], start=1):
        await append(store, inbox.id, message(n), flags)
    async with store.write() as conn:
        await folders.create_folder(conn, account_id, "INBOX/Kept")
    old_rows = await rows(store, inbox.id)
    highestmodseq, _, _ = await marks(store, inbox.id)
    used = await used_bytes(store, account_id)

    async with store.write() as conn:
        await folders.rename_folder(conn, account_id, "INBOX", "Old/Inbox")

    moved = await folder(store, account_id, "Old/Inbox")
    assert moved.id != inbox.id and moved.uidvalidity != inbox.uidvalidity
    new_rows = await rows(store, moved.id)
    assert [(r.uid, r.blob_id, r.flags, r.size) for r in new_rows] == [
        (i, r.blob_id, r.flags, r.size) for i, r in enumerate(old_rows, start=1)
    ]
    assert await rows(store, inbox.id) == []
    after = await folder(store, account_id)
    assert (after.id, after.uidvalidity, after.uidnext) == (inbox.id, inbox.uidvalidity, 4)
    async with store.read() as conn:
        assert await mb.expunged_since(conn, inbox.id, highestmodseq) == [1, 2, 3]
    assert {"INBOX/Kept", "Old", "Old/Inbox", "INBOX"} <= set(await names(store, account_id))
    assert await used_bytes(store, account_id) == used
    await refused(
        "ALREADYEXISTS", store, lambda c: folders.rename_folder(c, account_id, "INBOX", "Sent")
    )


async def test_set_subscribed(store: Store) -> None:
    account_id = await make_account(store)
    async with store.write() as conn:
        await folders.set_subscribed(conn, account_id, "Junk", False)
    assert not (await folder(store, account_id, "Junk")).subscribed
    async with store.write() as conn:
        await folders.set_subscribed(conn, account_id, "Junk", True)
    assert (await folder(store, account_id, "Junk")).subscribed
    await refused(
        "NONEXISTENT", store, lambda c: folders.set_subscribed(c, account_id, "Nope", True)
    )


# --- STATUS and quota ------------------------------------------------------------------------


async def test_folder_status_counts(store: Store) -> None:
    account_id = await make_account(store)
    inbox = await folder(store, account_id)
    async with store.read() as conn:
        empty = await folders.folder_status(conn, inbox.id)
    assert empty == folders.FolderStatus(0, 0, 0, 1, inbox.uidvalidity, 1, 0, 0)
    flag_sets: list[tuple[str, ...]] = [
        (),
        ("\\Seen",),
        ("\\seen", "my_label"),  # stored as \Seen
        ("Seen",),  # a keyword, not \Seen: PostgreSQL's LIKE must not read "\S" as "S"
        ("\\Deleted", "\\Seen"),
        ("a_b", "\\Seenly"),
        ("\\Deleted",),
    ]
    sizes = 0
    for n, flags in enumerate(flag_sets):
        data = message(n, pad=n)
        sizes += len(data)
        await append(store, inbox.id, data, flags)
    async with store.read() as conn:
        status = await folders.folder_status(conn, inbox.id)
    highestmodseq, uidnext, _ = await marks(store, inbox.id)
    assert status == folders.FolderStatus(
        messages=7,
        recent=7,
        unseen=4,
        uidnext=uidnext,
        uidvalidity=inbox.uidvalidity,
        highestmodseq=highestmodseq,
        size=sizes,
        deleted=2,
    )
    async with store.write() as conn:
        await mb.claim_recent(conn, inbox.id)
    await append(store, inbox.id, message(9))
    async with store.read() as conn:
        assert (await folders.folder_status(conn, inbox.id)).recent == 1
        # Whole words, with "_" and "%" taken literally.
        for flag, expected in [("a_b", 1), ("a%b", 0), ("my_label", 1), ("my.label", 0)]:
            n = await conn.scalar(
                select(func.count()).where(Message.mailbox_id == inbox.id, mb.flag_is_set(flag))
            )
            assert n == expected, flag
        assert await conn.scalar(select(func.count()).where(mb.flag_is_set("a?b"))) == 0
    await refused("NONEXISTENT", store, lambda c: folders.folder_status(c, 10**9))


async def test_quota_usage(store: Store) -> None:
    account_id = await make_account(store, quota=10_000)
    inbox = await folder(store, account_id)
    await append(store, inbox.id, message(1))
    async with store.read() as conn:
        assert await folders.quota_usage(conn, account_id) == (len(message(1)), 10_000)
    await refused("NONEXISTENT", store, lambda c: folders.quota_usage(c, 10**9))


# --- reading a mailbox -----------------------------------------------------------------------


async def test_message_rows_changed_since_and_marks(store: Store) -> None:
    account_id = await make_account(store)
    inbox = await folder(store, account_id)
    paris = datetime(2024, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    for n in range(3):
        await append(store, inbox.id, message(n), when=paris + timedelta(minutes=n))
    listed = await rows(store, inbox.id)
    assert [r.uid for r in listed] == [1, 2, 3]
    assert [r.internaldate for r in listed] == [paris + timedelta(minutes=n) for n in range(3)]
    assert all(r.internaldate.utcoffset() == timedelta(0) for r in listed)
    assert [r.size for r in listed] == [len(message(n)) for n in range(3)]
    assert [r.modseq for r in listed] == sorted({r.modseq for r in listed})
    seen, uidnext, uidvalidity = await marks(store, inbox.id)
    assert (uidnext, uidvalidity) == (4, inbox.uidvalidity) and seen == listed[-1].modseq

    async with store.write() as conn:
        changes, _ = await mb.store_flags(conn, inbox.id, [listed[1].id], "add", ["\\Flagged"])
    await append(store, inbox.id, message(4))
    async with store.read() as conn:
        changed = await mb.changed_since(conn, inbox.id, seen)
        assert await mb.changed_since(conn, inbox.id, 10**9) == []
        assert await mb.mailbox_marks(conn, 10**9) is None
    assert [(r.uid, r.flags) for r in changed] == [(2, "\\Flagged"), (4, "")]
    assert changed[0].modseq == changes[0].modseq == seen + 1
    assert (await marks(store, inbox.id))[:2] == (changed[1].modseq, 5)


async def test_large_mailbox_lists_in_one_query(store: Store) -> None:
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    data = [message(i) for i in range(2_000)]
    await store.run_write(
        lambda c: _file_directly(c, inbox, data)  # not 2,000 transactions
    )
    listed = await rows(store, inbox)
    assert [r.uid for r in listed] == list(range(1, 2_001))


def _file_directly(conn: Connection, mailbox_id: int, data: list[bytes]) -> None:
    blob_ids = store_blobs(conn, data, WHEN)
    first = allocate_uids(conn, {mailbox_id: len(data)})[mailbox_id]
    insert_messages(
        conn,
        [
            {
                "mailbox_id": mailbox_id,
                "uid": first.first_uid + i,
                "modseq": first.first_modseq + i,
                "flags": "",
                "internaldate": WHEN,
                "size": len(d),
                "blob_id": b,
            }
            for i, (d, b) in enumerate(zip(data, blob_ids, strict=True))
        ],
    )


async def test_load_blobs_and_structures(store: Store) -> None:
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    data = message(1)
    structure = analyze(data).to_json()
    async with store.write() as conn:
        await mb.append_message(conn, inbox, data, [], WHEN, structure)
        await mb.append_message(conn, inbox, message(2), [], WHEN, None)
    first, second = await rows(store, inbox)
    async with store.read() as conn:
        blobs = await mb.load_blobs(conn, [first.blob_id, second.blob_id, 10**9])
        structures = await mb.load_structures(conn, [first.blob_id, second.blob_id])
    assert blobs == {first.blob_id: data, second.blob_id: message(2)}
    assert structures == {first.blob_id: structure, second.blob_id: None}


# --- expunge, \Recent, flags -----------------------------------------------------------------


async def test_expunge_leaves_tombstones(store: Store) -> None:
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    for n in range(4):
        await append(store, inbox, message(n))
    listed = await rows(store, inbox)
    start, _, _ = await marks(store, inbox)
    async with store.write() as conn:
        assert await mb.add_flag(conn, inbox, [listed[1].id, listed[2].id], mb.DELETED_FLAG) == 2
        assert await mb.expunge_messages(conn, inbox, [listed[1].id, listed[2].id]) == 2
    after, _, _ = await marks(store, inbox)
    async with store.read() as conn:
        assert await mb.expunged_since(conn, inbox, start) == [2, 3]
        assert await mb.expunged_since(conn, inbox, after) == []
    assert [r.uid for r in await rows(store, inbox)] == [1, 4]
    assert await used_bytes(store, account_id) == len(message(0)) + len(message(3))
    # Already gone: nothing deleted, no second tombstone, no change to HIGHESTMODSEQ.
    async with store.write() as conn:
        assert await mb.expunge_messages(conn, inbox, [listed[1].id]) == 0
    assert (await marks(store, inbox))[0] == after
    assert await count(store, Expunged.id, Expunged.mailbox_id == inbox) == 2


async def test_recent_goes_to_the_first_session_only(store: Store) -> None:
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    await append(store, inbox, message(1))
    await append(store, inbox, message(2))
    async with store.write() as conn:  # session A selects: UIDs ≥ 1 are \Recent for it
        assert await mb.claim_recent(conn, inbox) == 1
    async with store.write() as conn:  # session B selects: nothing left (UIDNEXT is 3)
        assert await mb.claim_recent(conn, inbox) == 3
    await append(store, inbox, message(3))
    async with store.write() as conn:  # B notices the new mail first: UID 3 is B's
        assert await mb.claim_recent(conn, inbox) == 3
    async with store.write() as conn:
        assert await mb.claim_recent(conn, inbox) == 4
    assert (await folder(store, account_id)).recent_uid == 4
    async with store.read() as conn:
        assert (await folders.folder_status(conn, inbox)).recent == 0


async def test_store_flags_modes(store: Store) -> None:
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    await append(store, inbox, message(1))
    await append(store, inbox, message(2), ("$Label",))
    await append(store, inbox, message(3), ("\\Seen",))
    ids = [r.id for r in await rows(store, inbox)]
    start, _, _ = await marks(store, inbox)

    async def store_(mode: Mode, flags: list[str], on: list[int] = ids) -> list[mb.FlagChange]:
        async with store.write() as conn:
            changes, failed = await mb.store_flags(conn, inbox, on, mode, flags)
        assert failed == []
        return changes

    changes = await store_("add", ["\\SEEN", "$label", "\\Recent"])
    assert [(c.uid, c.flags) for c in changes] == [
        (1, "\\Seen $label"),
        (2, "$Label \\Seen"),  # the stored spelling stays
        (3, "\\Seen $label"),
    ]
    assert {c.modseq for c in changes} == {start + 1}
    assert await store_("add", ["\\seen"]) == []  # nothing changes: no new modseq
    assert (await marks(store, inbox))[0] == start + 1
    changes = await store_("remove", ["$LABEL", "\\Answered"])
    assert [c.flags for c in changes] == ["\\Seen"] * 3
    changes = await store_("replace", ["\\Flagged", "\\seen"], on=ids[:2])
    assert [c.flags for c in changes] == ["\\Seen \\Flagged"] * 2
    assert await store_("replace", ["\\FLAGGED", "\\Seen"], on=ids[:2]) == []
    async with store.write() as conn:
        other = await folders.create_folder(conn, account_id, "Other")
        assert await mb.store_flags(conn, other, ids, "add", ["x"]) == ([], [])
        assert await mb.store_flags(conn, inbox, [], "add", ["x"]) == ([], [])
        with pytest.raises(ValueError, match="not a flag"):
            await mb.store_flags(conn, inbox, ids, "add", ["two words"])
    changes = await store_("replace", [], on=[*ids, 10**9])
    assert [(c.uid, c.flags) for c in changes] == [(1, ""), (2, ""), (3, "")]
    assert "Recent" not in " ".join(r.flags for r in await rows(store, inbox))


async def test_store_flags_unchanged_since(store: Store) -> None:
    """RFC 7162 §3.1.3: a message changed since UNCHANGEDSINCE is left alone and reported."""
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    for n in range(3):
        await append(store, inbox, message(n))
    first, second, third = await rows(store, inbox)
    snapshot, _, _ = await marks(store, inbox)
    async with store.write() as conn:  # another session changes the first message
        await mb.store_flags(conn, inbox, [first.id], "add", ["\\Flagged"])
    async with store.write() as conn:
        changes, failed = await mb.store_flags(
            conn, inbox, [first.id, second.id, third.id], "add", ["\\Seen"], snapshot
        )
    assert failed == [first.id]
    assert [c.uid for c in changes] == [2, 3]
    assert [r.flags for r in await rows(store, inbox)] == ["\\Flagged", "\\Seen", "\\Seen"]
    async with store.write() as conn:  # failed even when it would change nothing
        changes, failed = await mb.store_flags(conn, inbox, [second.id], "add", ["\\Seen"], 0)
    assert (changes, failed) == ([], [second.id])


# --- COPY, MOVE, APPEND ----------------------------------------------------------------------


async def test_copy_shares_blobs_and_counts_quota(store: Store) -> None:
    account_id = await make_account(store)
    inbox, sent = (await folder(store, account_id)).id, (await folder(store, account_id, "Sent")).id
    for n, flags in enumerate([("\\Seen",), (), ("$A", "\\Flagged")], start=1):
        await append(store, inbox, message(n), flags, WHEN + timedelta(hours=n))
    source = await rows(store, inbox)
    blobs = await count(store, Blob.id)
    used = await used_bytes(store, account_id)
    async with store.write() as conn:
        pairs = await mb.copy_messages(conn, inbox, [source[2].id, source[0].id], sent)
    assert pairs == [(1, 1), (3, 2)]
    copies = await rows(store, sent)
    for copy, original in zip(copies, [source[0], source[2]], strict=True):
        assert (copy.blob_id, copy.flags, copy.internaldate, copy.size) == (
            original.blob_id,
            original.flags,
            original.internaldate,
            original.size,
        )
    assert await count(store, Blob.id) == blobs
    assert await used_bytes(store, account_id) == used + source[0].size + source[2].size
    async with store.write() as conn:  # into the same mailbox; an expunged id is skipped
        await mb.expunge_messages(conn, inbox, [source[1].id])
        pairs = await mb.copy_messages(conn, inbox, [r.id for r in source], inbox)
        assert await mb.copy_messages(conn, inbox, [source[1].id], sent) == []
    assert pairs == [(1, 4), (3, 5)]


async def test_quota_refusal_changes_nothing(store: Store) -> None:
    account_id = await make_account(store, quota=250)
    inbox, sent = (await folder(store, account_id)).id, (await folder(store, account_id, "Sent")).id
    hundred = message(1, pad=100 - len(message(1)))
    assert len(hundred) == 100
    await append(store, inbox, hundred)
    await append(store, inbox, hundred)
    ids = [r.id for r in await rows(store, inbox)]
    state = (await marks(store, inbox), await marks(store, sent), await count(store, Blob.id))

    # The caller catches the refusal and commits: nothing may have changed by then.
    async with store.write() as conn:
        with pytest.raises(FolderError) as copy_refused:
            await mb.copy_messages(conn, inbox, ids, sent)
        with pytest.raises(FolderError) as append_refused:
            await mb.append_message(conn, inbox, message(2, pad=60), [], WHEN, None)
    assert copy_refused.value.code == append_refused.value.code == "OVERQUOTA"
    assert (await marks(store, inbox), await marks(store, sent), await count(store, Blob.id)) == (
        state
    )
    assert await used_bytes(store, account_id) == 200
    assert await rows(store, sent) == []
    # Up to the quota exactly is allowed.
    fifty = message(2, pad=50 - len(message(2)))
    await append(store, inbox, fifty)
    assert await used_bytes(store, account_id) == 250
    # MOVE duplicates nothing, so a full account can still move.
    async with store.write() as conn:
        assert await mb.move_messages(conn, inbox, ids, sent) == [(1, 1), (2, 2)]
    assert await used_bytes(store, account_id) == 250


async def test_move_keeps_blobs_and_leaves_tombstones(store: Store) -> None:
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    archive = (await folder(store, account_id, "Archive")).id
    for n, flags in enumerate([("\\Seen",), (), ("$A",)], start=1):
        await append(store, inbox, message(n), flags)
    source = await rows(store, inbox)
    start, _, _ = await marks(store, inbox)
    used, blobs = await used_bytes(store, account_id), await count(store, Blob.id)
    async with store.write() as conn:
        pairs = await mb.move_messages(conn, inbox, [source[2].id, source[0].id], archive)
    assert pairs == [(1, 1), (3, 2)]
    assert [r.uid for r in await rows(store, inbox)] == [2]
    async with store.read() as conn:
        assert await mb.expunged_since(conn, inbox, start) == [1, 3]
        assert await mb.expunged_since(conn, archive, 0) == []
    moved = await rows(store, archive)
    assert [(r.blob_id, r.flags) for r in moved] == [
        (source[0].blob_id, "\\Seen"),
        (source[2].blob_id, "$A"),
    ]
    assert (await used_bytes(store, account_id), await count(store, Blob.id)) == (used, blobs)


async def test_append_message(store: Store) -> None:
    account_id = await make_account(store)
    inbox = await folder(store, account_id)
    data = message(1)
    async with store.write() as conn:
        got = await mb.append_message(
            conn,
            inbox.id,
            data,
            ["\\SEEN", "\\Seen", "$Work", "$work", "\\Recent"],
            datetime(2024, 1, 2, 3, 4, 5),  # naive: taken as UTC
            None,
        )
    assert got == (inbox.uidvalidity, 1)
    (row,) = await rows(store, inbox.id)
    assert row.flags == "\\Seen $Work"
    assert row.internaldate == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert row.size == len(data)
    assert await used_bytes(store, account_id) == len(data)
    async with store.read() as conn:
        assert await mb.load_blobs(conn, [row.blob_id]) == {row.blob_id: data}
    assert (await marks(store, inbox.id))[1] == 2


# --- concurrency and the migration -----------------------------------------------------------


async def test_concurrent_sessions_neither_deadlock_nor_share_uids(store: Store) -> None:
    """Sessions storing flags, appending, copying both ways and claiming \\Recent at once, each
    in its own transaction (on PostgreSQL, really at once): every one finishes, and UIDs and
    modseqs stay unique and ascending."""
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    archive = (await folder(store, account_id, "Archive")).id
    for n in range(10):
        await append(store, inbox, message(n))
        await append(store, archive, message(100 + n))
    inbox_ids = [r.id for r in await rows(store, inbox)]
    archive_ids = [r.id for r in await rows(store, archive)]
    modseqs: list[int] = []  # one per transaction step that changed something

    async def flag_then_append(i: int) -> None:
        async with store.write() as conn:
            changes, _ = await mb.store_flags(conn, inbox, inbox_ids, "add", [f"$k{i}"])
            modseqs.append(changes[0].modseq)
            await asyncio.sleep(0)
            _, uid = await mb.append_message(conn, inbox, message(i), [], WHEN, None)
            modseqs.append(await _modseq_of(conn, inbox, uid))

    async def append_then_flag(i: int) -> None:
        async with store.write() as conn:
            _, uid = await mb.append_message(conn, inbox, message(i), ["\\Seen"], WHEN, None)
            modseqs.append(await _modseq_of(conn, inbox, uid))
            await asyncio.sleep(0)
            changes, _ = await mb.store_flags(conn, inbox, inbox_ids, "remove", [f"$k{i - 1}"])
            if changes:
                modseqs.append(changes[0].modseq)

    async def copy(source: int, ids: list[int], target: int) -> None:
        async with store.write() as conn:
            await mb.copy_messages(conn, source, ids, target)

    async def claim() -> None:
        async with store.write() as conn:
            await mb.claim_recent(conn, inbox)

    tasks = []
    for i in range(8):
        tasks += [flag_then_append(i), append_then_flag(i)]
        tasks += [copy(inbox, inbox_ids[:3], archive), copy(archive, archive_ids[:3], inbox)]
        tasks.append(claim())
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)

    inbox_after = await rows(store, inbox)
    uids = [r.uid for r in inbox_after]
    assert len(uids) == len(set(uids)) == 10 + 16 + 8 * 3
    by_id = sorted(inbox_after, key=lambda r: r.id)
    assert [r.uid for r in by_id] == sorted(uids), "UIDs ascend in commit order"
    assert len(modseqs) == len(set(modseqs))
    highestmodseq, uidnext, _ = await marks(store, inbox)
    assert uidnext == max(uids) + 1 and highestmodseq >= max(modseqs)
    assert max(r.modseq for r in inbox_after) <= highestmodseq
    archive_uids = [r.uid for r in await rows(store, archive)]
    assert len(archive_uids) == len(set(archive_uids)) == 10 + 8 * 3


async def _modseq_of(conn: AsyncConnection, mailbox_id: int, uid: int) -> int:
    value = await conn.scalar(
        select(Message.modseq).where(Message.mailbox_id == mailbox_id, Message.uid == uid)
    )
    assert value is not None
    return int(value)


async def test_migration_0005_downgrades_and_upgrades_keeping_mail(store: Store) -> None:
    """Down to 0004 and back: no message lost (a batch copy of ``mailboxes`` on SQLite would
    have cascaded to them), and mailboxes come back with recent_uid 1."""
    account_id = await make_account(store)
    inbox = (await folder(store, account_id)).id
    await append(store, inbox, message(1))
    async with store.write() as conn:
        await mb.claim_recent(conn, inbox)

    def migrate(revision: str) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = connection
            if revision == "head":
                command.upgrade(cfg, revision)
            else:
                command.downgrade(cfg, revision)

        return run

    def tables_and_columns(connection: Connection) -> tuple[set[str], set[str]]:
        inspector = inspect(connection)
        columns = {c["name"] for c in inspector.get_columns("mailboxes")}
        return set(inspector.get_table_names()), columns

    async with store.write() as conn:
        await conn.run_sync(migrate("0004"))
    async with store.read() as conn:
        tables, columns = await conn.run_sync(tables_and_columns)
    assert "expunged" not in tables and "recent_uid" not in columns
    assert await count(store, Message.id) == 1
    async with store.write() as conn:
        await conn.run_sync(migrate("head"))
    assert await store.schema_version() == SCHEMA_HEAD
    assert await count(store, Message.id) == 1
    assert (await folder(store, account_id)).recent_uid == 1
    assert await count(store, Mailbox.id, Mailbox.account_id == account_id) == 6
    assert await count(store, Account.id) == 1
