"""Domains, accounts and aliases: what the admin CLI changes and delivery reads.

Every function takes a :class:`~tidings.store.db.Store` and runs in its own transaction.
Refusals are :class:`AdminError` with a one-line reason for the administrator.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.address import AddressError, parse_domain, parse_mailbox
from tidings.store.db import Store
from tidings.store.models import (
    Account,
    Alias,
    Blob,
    DirectorySerial,
    Domain,
    Mailbox,
    Message,
    QueueItem,
)

# RFC 6154 special-use mailboxes every new account gets, INBOX first.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


class AdminError(Exception):
    """An administrative request that cannot be done; the text says why in one line."""


@dataclass(frozen=True)
class DomainInfo:
    name: str
    accounts: int
    aliases: int


@dataclass(frozen=True)
class AccountInfo:
    address: str
    quota_bytes: int
    used_bytes: int
    messages: int


@dataclass(frozen=True)
class AliasInfo:
    source: str
    targets: tuple[str, ...]


def now() -> datetime:
    return datetime.now(UTC)


def account_address(text: str) -> str:
    """Validate an account address given by an administrator and return its stored form."""
    try:
        address = parse_mailbox(text.strip())
    except AddressError as e:
        raise AdminError(f"bad address {text!r}: {e}") from None
    if address.is_quoted or address.domain.startswith("["):
        raise AdminError(f"bad address {text!r}: use a plain local part and a domain name")
    return address.key


def alias_source(text: str) -> str:
    """``user@domain`` or ``@domain`` (catch-all) → stored form."""
    text = text.strip()
    if text.startswith("@"):
        try:
            return "@" + parse_domain(text[1:])
        except AddressError as e:
            raise AdminError(f"bad alias source {text!r}: {e}") from None
    return account_address(text)


@asynccontextmanager
async def directory_change(store: Store) -> AsyncIterator[AsyncConnection]:
    """A write transaction that changes who receives mail where (see :func:`bump_directory`)."""
    async with store.write() as conn:
        yield conn
        await bump_directory(conn)


async def bump_directory(conn: AsyncConnection) -> None:
    """Move the directory serial on, so delivery forgets what it cached about recipients.

    Every change to domains, accounts (and their quotas), aliases or mailbox names must call
    this in its transaction.
    """
    await conn.execute(
        update(DirectorySerial)
        .where(DirectorySerial.id == 1)
        .values(serial=DirectorySerial.serial + 1)
    )


async def _domain_id(conn: AsyncConnection, name: str) -> int:
    domain_id = await conn.scalar(select(Domain.id).where(Domain.name == name))
    if domain_id is None:
        raise AdminError(f"unknown domain {name!r} (add it with `tidings domain add {name}`)")
    return domain_id


# --- domains ---------------------------------------------------------------------------------


async def add_domain(store: Store, name: str) -> str:
    try:
        name = parse_domain(name)
    except AddressError as e:
        raise AdminError(str(e)) from None
    async with directory_change(store) as conn:
        if await conn.scalar(select(Domain.id).where(Domain.name == name)) is not None:
            raise AdminError(f"domain {name!r} already exists")
        await conn.execute(insert(Domain).values(name=name, created_at=now()))
    return name


async def list_domains(store: Store) -> list[DomainInfo]:
    async with store.read() as conn:
        accounts = select(func.count()).where(Account.domain_id == Domain.id).scalar_subquery()
        aliases = (
            select(func.count(func.distinct(Alias.source)))
            .where(Alias.domain_id == Domain.id)
            .scalar_subquery()
        )
        rows = await conn.execute(select(Domain.name, accounts, aliases).order_by(Domain.name))
        return [DomainInfo(name, n_accounts, n_aliases) for name, n_accounts, n_aliases in rows]


async def remove_domain(store: Store, name: str) -> None:
    try:
        name = parse_domain(name)
    except AddressError as e:
        raise AdminError(str(e)) from None
    async with directory_change(store) as conn:
        domain_id = await _domain_id(conn, name)
        n = await conn.scalar(select(func.count()).where(Account.domain_id == domain_id))
        if n:
            raise AdminError(
                f"domain {name!r} still has {n} account(s); remove them first "
                "so no mail is deleted by accident"
            )
        await conn.execute(delete(Alias).where(Alias.domain_id == domain_id))
        await conn.execute(delete(Domain).where(Domain.id == domain_id))


# --- accounts --------------------------------------------------------------------------------


async def add_account(store: Store, address: str, password_hash: str, quota: int = 0) -> str:
    address = account_address(address)
    domain = address.rpartition("@")[2]
    async with directory_change(store) as conn:
        domain_id = await _domain_id(conn, domain)
        if await conn.scalar(select(Account.id).where(Account.address == address)) is not None:
            raise AdminError(f"account {address!r} already exists")
        account_id = await conn.scalar(
            insert(Account)
            .values(
                domain_id=domain_id,
                address=address,
                password_hash=password_hash,
                quota_bytes=quota,
                used_bytes=0,
                created_at=now(),
            )
            .returning(Account.id)
        )
        assert account_id is not None
        for name, special_use in DEFAULT_MAILBOXES:
            await create_mailbox(conn, account_id, name, special_use)
    return address


async def create_mailbox(
    conn: AsyncConnection, account_id: int, name: str, special_use: str | None = None
) -> int:
    """A new, empty mailbox with a UIDVALIDITY never given before (RFC 3501 §2.3.1.1).

    It is the current time, or one more than the last one given out if that is not less —
    from one counter for the whole store, so a mailbox made again after its account was
    removed cannot repeat an old value (a POP3 client's UIDL memory would skip new mail).
    """
    now_ = int(time.time())
    uidvalidity = await conn.scalar(
        update(DirectorySerial)
        .where(DirectorySerial.id == 1)
        .values(
            uidvalidity=case(
                (DirectorySerial.uidvalidity < now_, now_),
                else_=DirectorySerial.uidvalidity + 1,
            )
        )
        .returning(DirectorySerial.uidvalidity)
    )
    assert isinstance(uidvalidity, int)
    mailbox_id = await conn.scalar(
        insert(Mailbox)
        .values(
            account_id=account_id,
            name=name,
            special_use=special_use,
            uidvalidity=uidvalidity & 0xFFFFFFFF,
            uidnext=1,
            highestmodseq=1,
            subscribed=True,
        )
        .returning(Mailbox.id)
    )
    assert isinstance(mailbox_id, int)
    await bump_directory(conn)
    return mailbox_id


async def _account_id(conn: AsyncConnection, address: str) -> int:
    account_id: int | None = await conn.scalar(select(Account.id).where(Account.address == address))
    if account_id is None:
        raise AdminError(f"unknown account {address!r}")
    return account_id


async def set_password(store: Store, address: str, password_hash: str) -> None:
    address = account_address(address)
    async with store.write() as conn:
        account_id = await _account_id(conn, address)
        await conn.execute(
            update(Account).where(Account.id == account_id).values(password_hash=password_hash)
        )


async def set_quota(store: Store, address: str, quota: int) -> None:
    address = account_address(address)
    async with directory_change(store) as conn:
        account_id = await _account_id(conn, address)
        await conn.execute(
            update(Account).where(Account.id == account_id).values(quota_bytes=quota)
        )


async def get_password_hash(store: Store, address: str) -> str | None:
    async with store.read() as conn:
        return await conn.scalar(
            select(Account.password_hash).where(Account.address == account_address(address))
        )


async def list_accounts(store: Store, domain: str | None = None) -> list[AccountInfo]:
    async with store.read() as conn:
        messages = (
            select(func.count())
            .select_from(Message)
            .join(Mailbox, Mailbox.id == Message.mailbox_id)
            .where(Mailbox.account_id == Account.id)
            .scalar_subquery()
        )
        query = select(Account.address, Account.quota_bytes, Account.used_bytes, messages)
        if domain:
            try:
                domain = parse_domain(domain)
            except AddressError as e:
                raise AdminError(str(e)) from None
            query = query.where(Account.domain_id == await _domain_id(conn, domain))
        rows = await conn.execute(query.order_by(Account.address))
        return [AccountInfo(*row) for row in rows]


async def remove_account(store: Store, address: str) -> None:
    """Delete the account, its mailboxes and messages, and the bodies no one else shares."""
    address = account_address(address)
    async with directory_change(store) as conn:
        account_id = await _account_id(conn, address)
        mailbox_ids = select(Mailbox.id).where(Mailbox.account_id == account_id)
        blob_ids = [
            b
            for (b,) in await conn.execute(
                select(Message.blob_id).where(Message.mailbox_id.in_(mailbox_ids)).distinct()
            )
        ]
        await conn.execute(delete(Message).where(Message.mailbox_id.in_(mailbox_ids)))
        await conn.execute(delete(Mailbox).where(Mailbox.account_id == account_id))
        await conn.execute(delete(Account).where(Account.id == account_id))
        await delete_unreferenced_blobs(conn, blob_ids)


async def delete_unreferenced_blobs(conn: AsyncConnection, blob_ids: list[int]) -> None:
    """Delete those of ``blob_ids`` that no message and no queue row refers to any more."""
    for start in range(0, len(blob_ids), 500):
        chunk = blob_ids[start : start + 500]
        in_use = (
            select(Message.blob_id)
            .where(Message.blob_id.in_(chunk))
            .union(select(QueueItem.blob_id).where(QueueItem.blob_id.in_(chunk)))
        )
        await conn.execute(delete(Blob).where(Blob.id.in_(chunk), Blob.id.not_in(in_use)))


# --- aliases ---------------------------------------------------------------------------------


async def add_alias(store: Store, source: str, targets: list[str]) -> AliasInfo:
    source = alias_source(source)
    if not targets:
        raise AdminError("an alias needs at least one target")
    clean_targets = tuple(dict.fromkeys(account_address(t) for t in targets))
    domain = source.rpartition("@")[2]
    async with directory_change(store) as conn:
        domain_id = await _domain_id(conn, domain)
        existing = {
            t for (t,) in await conn.execute(select(Alias.target).where(Alias.source == source))
        }
        new = [t for t in clean_targets if t not in existing]
        if not new:
            raise AdminError(f"alias {source!r} already has these targets")
        await conn.execute(
            insert(Alias),
            [
                {"domain_id": domain_id, "source": source, "target": t, "created_at": now()}
                for t in new
            ],
        )
        all_targets = existing | set(new)
    return AliasInfo(source, tuple(sorted(all_targets)))


async def list_aliases(store: Store, domain: str | None = None) -> list[AliasInfo]:
    async with store.read() as conn:
        query = select(Alias.source, Alias.target).order_by(Alias.source, Alias.target)
        if domain:
            try:
                domain = parse_domain(domain)
            except AddressError as e:
                raise AdminError(str(e)) from None
            query = query.where(Alias.domain_id == await _domain_id(conn, domain))
        grouped: dict[str, list[str]] = {}
        for source, target in await conn.execute(query):
            grouped.setdefault(source, []).append(target)
    return [AliasInfo(s, tuple(t)) for s, t in grouped.items()]


async def remove_alias(store: Store, source: str, targets: list[str] | None = None) -> None:
    """Remove the whole alias, or only some of its targets."""
    source = alias_source(source)
    async with directory_change(store) as conn:
        query = delete(Alias).where(Alias.source == source)
        if targets:
            query = query.where(Alias.target.in_([account_address(t) for t in targets]))
        result = await conn.execute(query)
        if not result.rowcount:
            detail = " with those targets" if targets else ""
            raise AdminError(f"no such alias {source!r}{detail}")
