"""Local delivery (the MDA): recipients → mailboxes and queue rows, in one transaction.

This is the one door every accepted message goes through. ``resolve_recipient`` answers, at
RCPT time, where an address leads (aliases, catch-all, ``+tag`` sub-addressing) or why it is
refused; ``deliver`` stores the message once and files a copy into every target mailbox,
turning remote targets into queue rows, and returns only after the commit that makes all of it
durable.

Group commit: deliveries that arrive while a commit is running wait and are committed together
by the next one, so one fsync serves many messages under load and none waits at all when idle.
No delivery is acknowledged before the commit that holds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.address import Address, normalize_domain
from tidings.config import DeliveryConfig
from tidings.queue.store import enqueue
from tidings.store.accounts import now
from tidings.store.db import Store, StoreError, describe_db_error
from tidings.store.mailbox import (
    account_usage,
    add_usage,
    allocate_uids,
    insert_messages,
    store_blobs,
)
from tidings.store.models import Account, Alias, Domain, Mailbox

log = logging.getLogger(__name__)


class RecipientError(Exception):
    """A recipient or message refused, carrying the SMTP reply that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class RelayDenied(RecipientError):
    def __init__(self, address: str) -> None:
        super().__init__(f"554 5.7.1 <{address}>: Relay access denied")


class UnknownRecipient(RecipientError):
    def __init__(self, address: str) -> None:
        super().__init__(f"550 5.1.1 <{address}>: Recipient address rejected: no such user")


class MailboxFull(RecipientError):
    def __init__(self, address: str) -> None:
        super().__init__(f"452 4.2.2 <{address}>: Mailbox full, try again later")


@dataclass(frozen=True, slots=True)
class LocalTarget:
    account_id: int
    mailbox_id: int
    address: str


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where one envelope recipient leads: local mailboxes and remote addresses."""

    local: tuple[LocalTarget, ...] = ()
    remote: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """One accepted message, ready to be committed."""

    id: str
    sender: str
    content: bytes
    local: tuple[LocalTarget, ...]
    remote: tuple[str, ...]
    internaldate: datetime = field(default_factory=now)


@dataclass
class _Pending:
    delivery: Delivery
    done: asyncio.Future[None]


def combine(resolutions: list[Resolution]) -> tuple[tuple[LocalTarget, ...], tuple[str, ...]]:
    """Merge recipients' resolutions: one copy per mailbox, one queue row per remote address."""
    local = {t.mailbox_id: t for r in resolutions for t in r.local}
    remote = {a.lower(): a for r in resolutions for a in r.remote}
    return tuple(local.values()), tuple(remote.values())


class MailDelivery:
    """Resolves recipients and commits deliveries for one store."""

    def __init__(self, store: Store, config: DeliveryConfig) -> None:
        self.store = store
        self.config = config
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None

    # --- recipients ---------------------------------------------------------------------------

    async def is_local_domain(self, domain: str) -> bool:
        async with self.store.read() as conn:
            return await _is_local_domain(conn, domain)

    async def resolve_recipient(self, address: Address) -> Resolution:
        """Where mail for ``address`` goes; RecipientError if it must be refused."""
        try:
            async with self.store.read() as conn:
                if not await _is_local_domain(conn, address.domain):
                    raise RelayDenied(str(address))
                if address.is_quoted or address.domain.startswith("["):
                    raise UnknownRecipient(str(address))
                resolution = await self._expand(conn, address.key, depth=0, seen=set())
                if resolution is None or not (resolution.local or resolution.remote):
                    raise UnknownRecipient(str(address))
                await self._check_quota(conn, address, resolution)
                return resolution
        except SQLAlchemyError as e:
            raise StoreError(describe_db_error(e)) from e

    async def _expand(
        self, conn: AsyncConnection, key: str, depth: int, seen: set[str]
    ) -> Resolution | None:
        """Follow aliases from ``key`` (a lower-cased address); None if it leads nowhere."""
        if depth > self.config.max_alias_depth or key in seen:
            log.warning("alias loop or chain too deep at %s", key)
            return None
        seen = seen | {key}
        local_part, _, domain = key.rpartition("@")
        targets = await _alias_targets(conn, key)
        if targets:
            return await self._expand_targets(conn, key, targets, depth, seen)
        target = await _account_mailbox(conn, key, None)
        if target is not None:
            return Resolution(local=(target,))
        delimiter = self.config.recipient_delimiter
        if delimiter and delimiter in local_part:
            base_local, _, detail = local_part.partition(delimiter)
            base = f"{base_local}@{domain}"
            target = await _account_mailbox(conn, base, detail) if base_local else None
            if target is not None:
                return Resolution(local=(target,))
            base_targets = await _alias_targets(conn, base) if base_local else []
            if base_targets:
                return await self._expand_targets(conn, base, base_targets, depth, seen)
        catch_all = await _alias_targets(conn, "@" + domain)
        if catch_all:
            return await self._expand_targets(conn, key, catch_all, depth, seen)
        return None

    async def _expand_targets(
        self, conn: AsyncConnection, source: str, targets: list[str], depth: int, seen: set[str]
    ) -> Resolution | None:
        local: list[LocalTarget] = []
        remote: list[str] = []
        for target in targets:
            domain = target.rpartition("@")[2]
            if not await _is_local_domain(conn, domain):
                remote.append(target)
                continue
            if target == source:  # "alice → alice, bob": keep a copy for alice herself
                found = await _account_mailbox(conn, target, None)
                sub = Resolution(local=(found,)) if found else None
            else:
                sub = await self._expand(conn, target, depth + 1, seen)
            if sub is None:
                log.warning("alias %s: target %s leads nowhere; skipped", source, target)
                continue
            local.extend(sub.local)
            remote.extend(sub.remote)
        if not local and not remote:
            return None
        return Resolution(tuple(local), tuple(remote))

    async def _check_quota(
        self, conn: AsyncConnection, address: Address, resolution: Resolution
    ) -> None:
        usage = await account_usage(conn, (t.account_id for t in resolution.local))
        if any(u.quota_bytes and u.used_bytes >= u.quota_bytes for u in usage.values()):
            raise MailboxFull(str(address))

    # --- delivery ----------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> None:
        """Return once ``delivery`` is committed; raise RecipientError or StoreError if not."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(delivery, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        await asyncio.shield(done)

    async def drain(self) -> None:
        """Wait until every delivery handed in so far has been committed or refused."""
        while self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)

    async def _commit_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self.config.max_batch]
            del self._pending[: len(batch)]
            try:
                outcomes = await self._commit([p.delivery for p in batch])
            except Exception as e:
                if len(batch) == 1:
                    _settle(batch[0].done, _as_store_error(e))
                    continue
                # One bad delivery must not fail the others: commit them one by one.
                log.warning("group commit of %d failed (%s); retrying singly", len(batch), e)
                for p in batch:
                    try:
                        (outcome,) = await self._commit([p.delivery])
                    except Exception as single:
                        outcome = _as_store_error(single)
                    _settle(p.done, outcome)
                continue
            for p, outcome in zip(batch, outcomes, strict=True):
                _settle(p.done, outcome)

    async def _commit(self, deliveries: list[Delivery]) -> list[Exception | None]:
        """Store ``deliveries`` in one transaction; per delivery, None or the refusal."""
        at = now()
        outcomes: list[Exception | None] = [None] * len(deliveries)
        async with self.store.write() as conn:
            usage = await account_usage(conn, (t.account_id for d in deliveries for t in d.local))
            used = {aid: u.used_bytes for aid, u in usage.items()}
            added: Counter[int] = Counter()
            accepted: list[Delivery] = []
            for i, d in enumerate(deliveries):
                per_account = Counter(t.account_id for t in d.local)
                full = [
                    aid
                    for aid, copies in per_account.items()
                    if usage[aid].quota_bytes
                    and used[aid] + copies * len(d.content) > usage[aid].quota_bytes
                ]
                if full:
                    address = next(t.address for t in d.local if t.account_id in full)
                    outcomes[i] = MailboxFull(address)
                    continue
                for aid, copies in per_account.items():
                    used[aid] += copies * len(d.content)
                    added[aid] += copies * len(d.content)
                accepted.append(d)
            blob_ids = await store_blobs(conn, [d.content for d in accepted], at)
            uids = await allocate_uids(
                conn, Counter(t.mailbox_id for d in accepted for t in d.local)
            )
            offset: defaultdict[int, int] = defaultdict(int)
            rows: list[dict[str, object]] = []
            for d, blob_id in zip(accepted, blob_ids, strict=True):
                for t in d.local:
                    n = offset[t.mailbox_id]
                    offset[t.mailbox_id] += 1
                    rows.append(
                        {
                            "mailbox_id": t.mailbox_id,
                            "uid": uids[t.mailbox_id].first_uid + n,
                            "modseq": uids[t.mailbox_id].first_modseq + n,
                            "flags": "",
                            "internaldate": d.internaldate,
                            "size": len(d.content),
                            "blob_id": blob_id,
                        }
                    )
                await enqueue(conn, blob_id, d.sender, d.remote, at)
            await insert_messages(conn, rows)
            await add_usage(conn, added)
        return outcomes


def _settle(done: asyncio.Future[None], outcome: Exception | None) -> None:
    if done.done():
        return
    if outcome is None:
        done.set_result(None)
    else:
        done.set_exception(outcome)


def _as_store_error(error: Exception) -> Exception:
    if isinstance(error, RecipientError | StoreError):
        return error
    log.error("delivery failed: %s", describe_db_error(error))
    return StoreError(describe_db_error(error))


async def _is_local_domain(conn: AsyncConnection, domain: str) -> bool:
    domain = normalize_domain(domain)
    return await conn.scalar(select(Domain.id).where(Domain.name == domain)) is not None


async def _alias_targets(conn: AsyncConnection, source: str) -> list[str]:
    rows = await conn.execute(select(Alias.target).where(Alias.source == source))
    return [t for (t,) in rows]


async def _account_mailbox(
    conn: AsyncConnection, address: str, folder: str | None
) -> LocalTarget | None:
    """The account's mailbox named ``folder`` (exact, then case-insensitive), else INBOX."""
    account_id = await conn.scalar(select(Account.id).where(Account.address == address))
    if account_id is None:
        return None
    names = [folder, "INBOX"] if folder else ["INBOX"]
    rows = await conn.execute(
        select(Mailbox.id, Mailbox.name).where(
            Mailbox.account_id == account_id,
            func.lower(Mailbox.name).in_([n.lower() for n in names]),
        )
    )
    by_name = {name: mailbox_id for mailbox_id, name in rows}
    chosen = None
    if folder:
        chosen = by_name.get(folder) or next(
            (i for n, i in by_name.items() if n.lower() == folder.lower() and n != "INBOX"), None
        )
    chosen = chosen or by_name.get("INBOX")
    if chosen is None:
        return None
    return LocalTarget(account_id, chosen, address)
