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
import dataclasses
import functools
import logging
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    String,
    bindparam,
    cast,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tidings.address import Address, normalize_domain
from tidings.config import DeliveryConfig
from tidings.mime import StoredForm, analyze, stored_form
from tidings.store.accounts import now
from tidings.store.db import Store, StoreError, describe_db_error, store_error
from tidings.store.filing import (
    Claimed,
    QueueClaim,
    Usage,
    account_usage,
    add_usage,
    allocate_uids,
    enqueue,
    insert_messages,
    special_use_mailboxes,
    store_blobs,
)
from tidings.store.models import Account, Alias, DirectorySerial, Domain, Mailbox
from tidings.store.notify import MailboxEvents

log = logging.getLogger(__name__)


class RecipientError(Exception):
    """A recipient or message refused, carrying the SMTP reply that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class RelayDenied(RecipientError):
    """The address is not in one of our domains (port 25 refuses it; submission relays it)."""

    def __init__(self, address: str) -> None:
        super().__init__(f"554 5.7.1 <{address}>: Relay access denied")


@dataclass(frozen=True, slots=True)
class _NotOurs:
    """A cached answer: the address belongs to another domain."""


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
    quota_bytes: int = 0


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
    # Quarantined (DMARC p=quarantine): local copies go to each account's Junk mailbox.
    junk: bool = False


class QueueTaker(Protocol):
    """The queue runner as delivery sees it."""

    @property
    def claim(self) -> QueueClaim | None: ...

    def take(self, queued: list[Claimed], contents: dict[int, bytes]) -> None: ...


@dataclass
class _Pending:
    delivery: Delivery
    done: asyncio.Future[None]


def combine(resolutions: list[Resolution]) -> tuple[tuple[LocalTarget, ...], tuple[str, ...]]:
    """Merge recipients' resolutions: one copy per mailbox, one queue row per remote address."""
    local = {t.mailbox_id: t for r in resolutions for t in r.local}
    remote = {a.lower(): a for r in resolutions for a in r.remote}
    return tuple(local.values()), tuple(remote.values())


_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"
# Ids need to be unique, not secret: a seeded generator costs no system call per message.
_random = random.Random(secrets.randbits(64))


def new_message_id() -> str:
    """A short, unique, sortable-ish id for logs and replies (time + randomness)."""
    n = int(time.time() * 1000) << 24 | _random.getrandbits(24)
    out = []
    while n:
        n, r = divmod(n, len(_ID_ALPHABET))
        out.append(_ID_ALPHABET[r])
    return "".join(reversed(out))


# How often delivery reads the directory serial: changes made with the CLI (a new user, a
# removed alias, a lower quota) reach RCPT decisions within this many seconds.
DIRECTORY_POLL_SECONDS = 0.5
MAX_CACHED_RECIPIENTS = 10_000


class MailDelivery:
    """Resolves recipients and commits deliveries for one store.

    Where an address leads is cached until the directory serial moves on (every change to
    domains, accounts, aliases or mailbox names moves it; see store.accounts.bump_directory),
    so a busy MX answers most RCPTs without asking the database. Quota use is never cached.
    """

    def __init__(self, store: Store, config: DeliveryConfig) -> None:
        self.store = store
        self.config = config
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._cache: dict[str, Resolution | _NotOurs | str] = {}
        self._serial: int | None = None
        self._serial_read_at = 0.0
        self._serial_reader: asyncio.Task[None] | None = None
        # The queue runner that takes new queue rows at once, claimed in the commit that
        # writes them (None: they wait for a runner to claim them).
        self.queue_taker: QueueTaker | None = None
        # Told which mailboxes got mail after each commit (IMAP sessions watching them).
        self.events: MailboxEvents | None = None

    # --- recipients ---------------------------------------------------------------------------

    async def resolve_recipient(self, address: Address) -> Resolution:
        """Where mail for ``address`` goes; RecipientError if it must be refused."""
        try:
            serial = await self.directory_serial()
            entry = self._cache.get(address.key)
            if entry is None:
                entry = await self.store.run_read(functools.partial(self._resolve, address))
                if serial == self._serial:  # nothing changed while we looked
                    if len(self._cache) >= MAX_CACHED_RECIPIENTS:
                        self._cache.clear()
                    self._cache[address.key] = entry
            if isinstance(entry, _NotOurs):
                raise RelayDenied(str(address))
            if isinstance(entry, str):
                raise RecipientError(entry)
            limited = [t.account_id for t in entry.local if t.quota_bytes]
            if limited:
                usage = await self.store.run_read(
                    functools.partial(account_usage, account_ids=limited)
                )
                if any(u.quota_bytes and u.used_bytes >= u.quota_bytes for u in usage.values()):
                    raise MailboxFull(str(address))
            return entry
        except (SQLAlchemyError, OSError) as e:
            raise store_error(e) from e

    async def directory_serial(self) -> int | None:
        """The directory serial, read at most every DIRECTORY_POLL_SECONDS; clears the cache."""
        now_ = asyncio.get_running_loop().time()
        if self._serial is None or now_ - self._serial_read_at >= DIRECTORY_POLL_SECONDS:
            if self._serial_reader is None or self._serial_reader.done():
                self._serial_reader = asyncio.create_task(self._read_serial())
            await asyncio.shield(self._serial_reader)
        return self._serial

    async def _read_serial(self) -> None:
        serial = await self.store.run_read(lambda conn: conn.scalar(select(DirectorySerial.serial)))
        if serial != self._serial:
            self._cache.clear()
            self._serial = serial
        self._serial_read_at = asyncio.get_running_loop().time()

    def _resolve(self, address: Address, conn: Connection) -> Resolution | _NotOurs | str:
        """Where ``address`` leads, or the reply refusing it (both worth caching)."""
        lookup = _Lookup.prefetch(conn, address, self.config.recipient_delimiter)
        if not lookup.is_local_domain(address.domain):
            return _NotOurs()
        if address.is_quoted or address.domain.startswith("["):
            return UnknownRecipient(str(address)).reply
        resolution = self._expand(lookup, address.key, depth=0, seen=frozenset())
        if resolution is None or not (resolution.local or resolution.remote):
            return UnknownRecipient(str(address)).reply
        return resolution

    def _expand(
        self, lookup: _Lookup, key: str, depth: int, seen: frozenset[str]
    ) -> Resolution | None:
        """Follow aliases from ``key`` (a lower-cased address); None if it leads nowhere."""
        if depth > self.config.max_alias_depth or key in seen:
            log.warning("alias loop or chain too deep at %s", key)
            return None
        seen = seen | {key}
        local_part, _, domain = key.rpartition("@")
        targets = lookup.alias_targets(key)
        if targets:
            return self._expand_targets(lookup, key, targets, depth, seen)
        target = lookup.account_mailbox(key, None)
        if target is not None:
            return Resolution(local=(target,))
        delimiter = self.config.recipient_delimiter
        if delimiter and delimiter in local_part:
            base_local, _, detail = local_part.partition(delimiter)
            base = f"{base_local}@{domain}"
            if base_local:
                target = lookup.account_mailbox(base, detail)
                if target is not None:
                    return Resolution(local=(target,))
                base_targets = lookup.alias_targets(base)
                if base_targets:
                    return self._expand_targets(lookup, base, base_targets, depth, seen)
        catch_all = lookup.alias_targets("@" + domain)
        if catch_all:
            return self._expand_targets(lookup, key, catch_all, depth, seen)
        return None

    def _expand_targets(
        self, lookup: _Lookup, source: str, targets: list[str], depth: int, seen: frozenset[str]
    ) -> Resolution | None:
        local: list[LocalTarget] = []
        remote: list[str] = []
        for target in targets:
            if not lookup.is_local_domain(target.rpartition("@")[2]):
                remote.append(target)
                continue
            if target == source:  # "alice → alice, bob": keep a copy for alice herself
                found = lookup.account_mailbox(target, None)
                sub = Resolution(local=(found,)) if found else None
            else:
                sub = self._expand(lookup, target, depth + 1, seen)
            if sub is None:
                log.warning("alias %s: target %s leads nowhere; skipped", source, target)
                continue
            local.extend(sub.local)
            remote.extend(sub.remote)
        if not local and not remote:
            return None
        return Resolution(tuple(local), tuple(remote))

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
        structures = await _analyses(deliveries)
        claim = self.queue_taker.claim if self.queue_taker is not None else None
        committed = await self.store.run_write(
            functools.partial(store_deliveries, deliveries, structures=structures, claim=claim)
        )
        if log.isEnabledFor(logging.INFO):
            for d, outcome in zip(deliveries, committed.outcomes, strict=True):
                if outcome is None and d.local:
                    _log_delivered(d)
        if committed.queued and self.queue_taker is not None:
            self.queue_taker.take(committed.queued, committed.contents)
        if self.events is not None:
            self.events.changed(committed.mailboxes)
        return committed.outcomes


def _log_delivered(delivery: Delivery) -> None:
    """The local delivery line: which accounts got a copy of message ``id``."""
    accounts = sorted({t.address for t in delivery.local})
    log.info(
        "delivered id=%s to=%s%s",
        delivery.id,
        ",".join(f"<{a}>" for a in accounts),
        " quarantined" if delivery.junk else "",
        extra={"queue_id": delivery.id, "to": accounts, "junk": delivery.junk},
    )


async def _analyses(deliveries: list[Delivery]) -> list[StoredForm | None]:
    """Per delivery, its IMAP analysis as stored (``mime.stored_form``), or None.

    Only messages with local copies need one (a queue-only message is never read by IMAP).
    The batch is analysed in one thread hand-over, off the event loop and before the write
    transaction, so neither the loop nor the database lock waits on MIME parsing.
    """
    wanted = [d.content for d in deliveries if d.local]
    if not wanted:
        return [None] * len(deliveries)
    try:
        found = iter(await asyncio.to_thread(_analyse_all, wanted))
    except Exception as e:  # no thread to run it (shutting down): deliver all the same
        log.warning("message analysis not run (%s); IMAP will analyse on first use", e)
        return [None] * len(deliveries)
    return [next(found) if d.local else None for d in deliveries]


def _analyse_all(contents: list[bytes]) -> list[StoredForm | None]:
    """``stored_form(analyze(c))`` of each content; None (and a warning) where it fails."""
    out: list[StoredForm | None] = []
    for content in contents:
        try:
            out.append(stored_form(analyze(content)))
        except Exception:  # analyze should not raise; if it does, the message still goes in
            log.warning(
                "MIME analysis of a %d-byte message failed; stored without it",
                len(content),
                exc_info=True,
            )
            out.append(None)
    return out


@dataclass(frozen=True, slots=True)
class Committed:
    """What one commit did: per delivery None or its refusal; the queue rows it wrote already
    claimed (with a QueueClaim), and their messages' bytes by blob id."""

    outcomes: list[Exception | None]
    queued: list[Claimed]
    contents: dict[int, bytes]
    mailboxes: frozenset[int] = frozenset()  # the mailboxes that got messages


def store_deliveries(
    deliveries: list[Delivery],
    conn: Connection,
    structures: list[StoredForm | None] | None = None,
    claim: QueueClaim | None = None,
) -> Committed:
    """Store ``deliveries`` in the caller's transaction; per delivery, None or its refusal.

    A delivery that would take an account over its quota is refused whole (RFC 3463 4.2.2);
    the others go on. Each accepted message is one blob (with its IMAP analysis from
    ``structures``, one per delivery in order, None where there is none), one row per target
    mailbox with the next UIDs, and one queue row per remote recipient.
    """
    at = now()
    outcomes: list[Exception | None] = [None] * len(deliveries)
    if structures is None:
        structures = [None] * len(deliveries)
    deliveries = _quarantined(conn, deliveries)  # same order: structures[i] is still d's
    usage = account_usage(conn, (t.account_id for d in deliveries for t in d.local))
    used = {aid: u.used_bytes for aid, u in usage.items()}
    added: Counter[int] = Counter()
    accepted: list[Delivery] = []
    accepted_structures: list[StoredForm | None] = []
    for i, d in enumerate(deliveries):
        per_account = Counter(t.account_id for t in d.local)
        full = [
            aid
            for aid, copies in per_account.items()
            if usage[aid].quota_bytes
            and used[aid] + copies * len(d.content) > usage[aid].quota_bytes
        ]
        if full:
            outcomes[i] = MailboxFull(next(t.address for t in d.local if t.account_id in full))
            continue
        for aid, copies in per_account.items():
            used[aid] += copies * len(d.content)
            added[aid] += copies * len(d.content)
        accepted.append(d)
        accepted_structures.append(structures[i])
    blob_ids = store_blobs(conn, [d.content for d in accepted], at, accepted_structures)
    uids = allocate_uids(conn, Counter(t.mailbox_id for d in accepted for t in d.local))
    offset: defaultdict[int, int] = defaultdict(int)
    rows: list[dict[str, object]] = []
    queue: list[tuple[int, str, str, str]] = []
    for d, blob_id in zip(accepted, blob_ids, strict=True):
        for t in d.local:
            n = offset[t.mailbox_id]
            offset[t.mailbox_id] += 1
            first = uids[t.mailbox_id]
            rows.append(
                {
                    "mailbox_id": t.mailbox_id,
                    "uid": first.first_uid + n,
                    "modseq": first.first_modseq + n,
                    "flags": "",
                    "internaldate": d.internaldate,
                    "size": len(d.content),
                    "blob_id": blob_id,
                }
            )
        queue.extend((blob_id, d.id, d.sender, r) for r in d.remote)
    insert_messages(conn, rows)
    queued = enqueue(conn, queue, at, claim)
    add_usage(conn, added)
    contents = {b: d.content for d, b in zip(accepted, blob_ids, strict=True) if d.remote}
    return Committed(outcomes, queued, contents if queued else {}, frozenset(uids))


def _quarantined(conn: Connection, deliveries: list[Delivery]) -> list[Delivery]:
    """Deliveries with their junk ones redirected to Junk (INBOX or +folder is kept when an
    account has no Junk mailbox)."""
    accounts = {t.account_id for d in deliveries if d.junk for t in d.local}
    if not accounts:
        return deliveries
    junk = special_use_mailboxes(conn, accounts, "\\Junk")
    return [
        dataclasses.replace(
            d,
            local=tuple(
                {
                    t.account_id: dataclasses.replace(
                        t, mailbox_id=junk.get(t.account_id, t.mailbox_id)
                    )
                    for t in d.local
                }.values()
            ),
        )
        if d.junk
        else d
        for d in deliveries
    ]


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
    return store_error(error)  # StorageFull when the disk is full


@dataclass(frozen=True, slots=True)
class _AccountRow:
    account_id: int
    usage: Usage
    mailboxes: tuple[tuple[str, int], ...]  # (name, id)


class _Lookup:
    """The directory as one RCPT's resolution sees it: prefetched in one query, else asked.

    ``prefetch`` reads in one statement what resolving a plain address needs — whether its
    domain is ours, the aliases of the address, of its ``+tag`` base and of the domain's
    catch-all, and the accounts of the address and its base with their mailboxes and quota —
    so the common case costs one round trip instead of five. Anything not prefetched (the
    targets of an alias) is looked up on demand, in the same transaction.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.domains: dict[str, bool] = {}
        self.aliases: dict[str, list[str]] = {}
        self.accounts: dict[str, _AccountRow | None] = {}

    @classmethod
    def prefetch(cls, conn: Connection, address: Address, delimiter: str) -> _Lookup:
        lookup = cls(conn)
        domain = address.domain
        key = address.key
        local_part = key.rpartition("@")[0]
        addresses = [key]
        if delimiter and delimiter in local_part:
            base_local = local_part.partition(delimiter)[0]
            if base_local:
                addresses.append(f"{base_local}@{domain}")
        sources = [*addresses, "@" + domain]
        rows = conn.execute(
            _prefetch_query(), {"domain": domain, "addresses": addresses, "sources": sources}
        )
        lookup.domains[domain] = False
        lookup.aliases = {s: [] for s in sources}
        mailboxes: dict[str, list[tuple[str, int]]] = {}
        usage: dict[str, tuple[int, Usage]] = {}
        for kind, k, v, account_id, mailbox_id, quota, used in rows:
            if kind == "d":
                lookup.domains[k] = True
            elif kind == "a":
                lookup.aliases[k].append(v)
            else:
                mailboxes.setdefault(k, []).append((v, mailbox_id))
                usage[k] = (account_id, Usage(quota, used))
        for a in addresses:
            found = usage.get(a)
            lookup.accounts[a] = (
                _AccountRow(found[0], found[1], tuple(mailboxes[a])) if found else None
            )
        return lookup

    def is_local_domain(self, domain: str) -> bool:
        domain = normalize_domain(domain)
        if domain not in self.domains:
            found = self.conn.scalar(select(Domain.id).where(Domain.name == domain))
            self.domains[domain] = found is not None
        return self.domains[domain]

    def alias_targets(self, source: str) -> list[str]:
        if source not in self.aliases:
            rows = self.conn.execute(select(Alias.target).where(Alias.source == source))
            self.aliases[source] = [t for (t,) in rows]
        return self.aliases[source]

    def account_mailbox(self, address: str, folder: str | None) -> LocalTarget | None:
        """The account's mailbox named ``folder`` (exact, then case-insensitive), else INBOX."""
        if address not in self.accounts:
            self.accounts[address] = self._account_row(address)
        row = self.accounts[address]
        if row is None:
            return None
        by_name = dict(row.mailboxes)
        chosen = None
        if folder:
            chosen = by_name.get(folder) or next(
                (i for n, i in row.mailboxes if n.lower() == folder.lower() and n != "INBOX"),
                None,
            )
        chosen = chosen or by_name.get("INBOX")
        if chosen is None:
            return None
        return LocalTarget(row.account_id, chosen, address, row.usage.quota_bytes)

    def _account_row(self, address: str) -> _AccountRow | None:
        rows = self.conn.execute(
            select(Account.id, Account.quota_bytes, Account.used_bytes, Mailbox.name, Mailbox.id)
            .join(Mailbox, Mailbox.account_id == Account.id)
            .where(Account.address == address)
        ).all()
        if not rows:
            return None
        account_id, quota, used = rows[0][:3]
        return _AccountRow(account_id, Usage(quota, used), tuple((r[3], r[4]) for r in rows))


@functools.cache
def _prefetch_query() -> CompoundSelect[Any]:
    # Typed NULLs: PostgreSQL resolves a UNION's column types pairwise, left to right.
    text, number = cast(null(), String), cast(null(), BigInteger)
    return union_all(
        select(literal("d"), Domain.name, text, number, number, number, number).where(
            Domain.name == bindparam("domain")
        ),
        select(literal("a"), Alias.source, Alias.target, number, number, number, number).where(
            Alias.source.in_(bindparam("sources", expanding=True))
        ),
        select(
            literal("m"),
            Account.address,
            Mailbox.name,
            Account.id,
            Mailbox.id,
            Account.quota_bytes,
            Account.used_bytes,
        )
        .join(Mailbox, Mailbox.account_id == Account.id)
        .where(Account.address.in_(bindparam("addresses", expanding=True))),
    )
