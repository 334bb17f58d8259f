"""The store on SQLite and PostgreSQL: schema, default mailboxes, UID allocation, quotas."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from tidings.address import parse_mailbox
from tidings.auth import hash_password, verify_password
from tidings.config import DeliveryConfig
from tidings.delivery import Delivery, MailboxFull, MailDelivery
from tidings.store import accounts
from tidings.store.accounts import AdminError
from tidings.store.db import Store
from tidings.store.models import Blob, Mailbox, Message

HASH = hash_password("secret")


async def make_user(store: Store, address: str = "alice@example.org", quota: int = 0) -> None:
    domain = address.rpartition("@")[2]
    if domain not in {d.name for d in await accounts.list_domains(store)}:
        await accounts.add_domain(store, domain)
    await accounts.add_account(store, address, HASH, quota)


async def mailbox_rows(store: Store, address: str) -> dict[str, tuple[str | None, int, int]]:
    async with store.read() as conn:
        rows = await conn.execute(
            select(Mailbox.name, Mailbox.special_use, Mailbox.uidnext, Mailbox.uidvalidity)
            .join_from(Mailbox, accounts.Account)
            .where(accounts.Account.address == address)
        )
        return {name: (use, uidnext, validity) for name, use, uidnext, validity in rows}


async def uids(store: Store, mailbox: str = "INBOX") -> list[int]:
    async with store.read() as conn:
        rows = await conn.execute(
            select(Message.uid)
            .join(Mailbox, Mailbox.id == Message.mailbox_id)
            .where(Mailbox.name == mailbox)
            .order_by(Message.id)
        )
        return [u for (u,) in rows]


async def test_new_account_gets_special_use_mailboxes(store: Store) -> None:
    await make_user(store)
    boxes = await mailbox_rows(store, "alice@example.org")
    assert {n: b[0] for n, b in boxes.items()} == {
        "INBOX": None,
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }
    assert all(uidnext == 1 for _, uidnext, _ in boxes.values())
    validities = [v for _, _, v in boxes.values()]
    assert len(set(validities)) == len(validities) and all(v > 0 for v in validities)


async def test_password_is_stored_as_argon2id(store: Store) -> None:
    await make_user(store)
    stored = await accounts.get_password_hash(store, "Alice@Example.ORG")
    assert stored is not None and stored.startswith("$argon2id$")
    assert verify_password(stored, "secret") and not verify_password(stored, "wrong")


async def test_admin_refusals(store: Store) -> None:
    with pytest.raises(AdminError, match="unknown domain"):
        await accounts.add_account(store, "bob@nowhere.example", HASH)
    await make_user(store)
    with pytest.raises(AdminError, match="already exists"):
        await accounts.add_account(store, "ALICE@example.org", HASH)
    with pytest.raises(AdminError, match="bad address"):
        await accounts.add_account(store, "not an address", HASH)
    with pytest.raises(AdminError, match="still has 1 account"):
        await accounts.remove_domain(store, "example.org")


async def test_fifty_parallel_deliveries_get_distinct_ascending_uids(db_url: str) -> None:
    """Fifty writers, each with its own connection and transaction, into one mailbox."""
    store = await Store.open(db_url)
    try:
        await make_user(store)
        resolution = await MailDelivery(store, DeliveryConfig()).resolve_recipient(
            parse_mailbox("alice@example.org")
        )

        async def one(i: int) -> None:
            # A MailDelivery per writer: no shared group commit, so the database itself must
            # keep the UIDs apart.
            delivery = MailDelivery(store, DeliveryConfig())
            await delivery.deliver(
                Delivery(f"m{i}", "s@x.example", b"Subject: %d\r\n\r\nhi\r\n" % i,
                         resolution.local, ())
            )  # fmt: skip

        await asyncio.gather(*(one(i) for i in range(50)))
        got = await uids(store)
        assert sorted(got) == list(range(1, 51))
        assert got == sorted(got), "UIDs must ascend in commit order"
        boxes = await mailbox_rows(store, "alice@example.org")
        assert boxes["INBOX"][1] == 51
    finally:
        await store.close()


async def test_group_commit_stores_one_blob_per_message_for_all_recipients(store: Store) -> None:
    await make_user(store, "alice@example.org")
    await make_user(store, "bob@example.org")
    delivery = MailDelivery(store, DeliveryConfig())
    a = await delivery.resolve_recipient(parse_mailbox("alice@example.org"))
    b = await delivery.resolve_recipient(parse_mailbox("bob@example.org"))
    await asyncio.gather(
        *(
            delivery.deliver(Delivery(f"m{i}", "", b"x\r\n" * (i + 1), a.local + b.local, ()))
            for i in range(20)
        )
    )
    async with store.read() as conn:
        assert await conn.scalar(select(func.count()).select_from(Blob)) == 20
        assert await conn.scalar(select(func.count()).select_from(Message)) == 40
    assert sorted(await uids(store)) == sorted(list(range(1, 21)) * 2)


async def test_quota_refuses_whole_message_and_stores_nothing(store: Store) -> None:
    await make_user(store, quota=1000)
    delivery = MailDelivery(store, DeliveryConfig())
    r = await delivery.resolve_recipient(parse_mailbox("alice@example.org"))
    await delivery.deliver(Delivery("m1", "", b"a" * 600, r.local, ()))
    with pytest.raises(MailboxFull) as e:
        await delivery.deliver(Delivery("m2", "", b"b" * 600, r.local, ()))
    assert e.value.reply.startswith("452 4.2.2")
    async with store.read() as conn:
        assert await conn.scalar(select(func.count()).select_from(Blob)) == 1
    (info,) = await accounts.list_accounts(store)
    assert (info.used_bytes, info.messages) == (600, 1)
    await delivery.deliver(Delivery("m3", "", b"c" * 300, r.local, ()))
    # Now at 900 of 1000: the next RCPT is still accepted, a full mailbox is refused at RCPT.
    await delivery.deliver(Delivery("m4", "", b"d" * 100, r.local, ()))
    with pytest.raises(MailboxFull):
        await delivery.resolve_recipient(parse_mailbox("alice@example.org"))


async def test_remove_account_deletes_its_mail_but_not_shared_bodies(store: Store) -> None:
    await make_user(store, "alice@example.org")
    await make_user(store, "bob@example.org")
    delivery = MailDelivery(store, DeliveryConfig())
    a = await delivery.resolve_recipient(parse_mailbox("alice@example.org"))
    b = await delivery.resolve_recipient(parse_mailbox("bob@example.org"))
    await delivery.deliver(Delivery("both", "", b"shared\r\n", a.local + b.local, ()))
    await delivery.deliver(Delivery("alice", "", b"own\r\n", a.local, ()))
    await accounts.remove_account(store, "alice@example.org")
    async with store.read() as conn:
        assert [d for (d,) in await conn.execute(select(Blob.data))] == [b"shared\r\n"]
    assert [a.address for a in await accounts.list_accounts(store)] == ["bob@example.org"]


async def test_uidvalidity_is_never_given_twice_even_to_a_recreated_account(store: Store) -> None:
    await make_user(store)
    before = {v for _, _, v in (await mailbox_rows(store, "alice@example.org")).values()}
    await accounts.remove_account(store, "alice@example.org")
    await accounts.add_account(store, "alice@example.org", HASH)
    after = {v for _, _, v in (await mailbox_rows(store, "alice@example.org")).values()}
    assert len(after) == 6 and not before & after
