"""The relay worker: claims due queue rows and delivers them to other domains' MX hosts.

Per domain the recipients of one message share one SMTP transaction, and the domain's
messages are spread over up to ``queue.connections_per_domain`` connections, each carrying
several messages one after another. Hosts come from MX (lowest preference first, equal ones
shuffled, RFC 5321 §5.1), the domain's own A/AAAA when it has no MX, and nothing at all for a
null MX (RFC 7505). STARTTLS is used whenever a host offers it (opportunistic, RFC 7435 §3;
certificates are not checked, as between MTAs without MTA-STS or DANE). A domain with an
MTA-STS policy in ``enforce`` mode (RFC 8461, ``mtasts.py``) gets mail only at the MX hosts
the policy names and only over STARTTLS with a certificate that verifies for the MX name;
anything less is a temporary failure, never clear text. ``testing`` only logs what
``enforce`` would have refused.

Outcomes: 2xx → the row is done; 4xx or a host that cannot be reached → the next attempt on
the retry schedule; 5xx, or a message older than ``queue.max_age`` → a delivery status
notification (RFC 3464) to the sender, committed through the one door of ``delivery.py``
before the row is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import random
import re
import secrets
import ssl
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from tidings import metrics
from tidings.address import AddressError, parse_mailbox
from tidings.config import Config, parse_hostport
from tidings.delivery import (
    Delivery,
    LocalTarget,
    MailDelivery,
    RecipientError,
    RelayDenied,
    new_message_id,
)
from tidings.dns import DNSError, DNSTempError, NXDomain, Resolver
from tidings.logs import header_message_id
from tidings.queue import store as queue_store
from tidings.queue.client import ConnectionFailed, Reply, SMTPClient
from tidings.queue.dsn import FailedRecipient, build_dsn
from tidings.queue.mtasts import PolicyCache, verified_context
from tidings.queue.schedule import next_attempt
from tidings.queue.store import Retry
from tidings.store.accounts import now
from tidings.store.db import Store, StoreError
from tidings.store.filing import Claimed, QueueClaim

log = logging.getLogger(__name__)

# Rows claimed at once.
CLAIM_BATCH = 200
# Recipients per transaction (RFC 5321 §4.5.3.1.8: a server takes at least 100).
MAX_RCPTS = 100
# Longest sleep between looks at the queue: other processes sharing a PostgreSQL store add
# rows without waking this one.
POLL_SECONDS = 1.0
# After a wake-up, wait this long for more mail, so that one claim takes a batch, not a message.
GATHER_SECONDS = 0.02
# A connection no batch has used for this long is closed.
IDLE_SECONDS = 5.0
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class RouteError(Exception):
    """No host can be tried for a domain; ``permanent`` decides bounce or retry."""

    def __init__(self, status: str, text: str, *, permanent: bool) -> None:
        super().__init__(text)
        self.status = status
        self.permanent = permanent


@dataclass(frozen=True)
class Hop:
    """One address to try: the MX host's name (for logs, TLS SNI and DSNs) and its IP."""

    host: str
    ip: str
    port: int
    # The MTA-STS mode that applies (RFC 8461 §5): "enforce", "testing" or "" for none.
    sts: str = ""


@dataclass
class Outgoing:
    """One message for one domain: its claimed recipient rows share one transaction."""

    queue_id: str
    sender: str
    content: bytes
    rows: list[Claimed]

    @functools.cached_property
    def message_id(self) -> str:
        """The Message-ID header, for log lines."""
        return header_message_id(self.content)


def log_attempt(
    message: Outgoing, rows: Sequence[Claimed], status: str, detail: str, relay: str = ""
) -> None:
    """One line per delivery attempt and outcome, found by queue id or Message-ID:
    ``relay id=… msgid=… from=<…> to=… relay=… status=sent|deferred|bounced (reply)``."""
    recipients = [r.recipient for r in rows]
    log.info(
        "relay id=%s msgid=%s from=<%s> to=%s relay=%s status=%s (%s)",
        message.queue_id,
        message.message_id or "-",
        message.sender,
        ",".join(recipients),
        relay or "-",
        status,
        detail,
        extra={
            "queue_id": message.queue_id,
            "message_id": message.message_id,
            "mail_from": message.sender,
            "to": recipients,
            "relay": relay,
            "status": status,
            "detail": detail,
        },
    )


@dataclass
class Outcomes:
    done: list[int] = field(default_factory=list)
    retry: list[tuple[Claimed, str, str | None]] = field(default_factory=list)
    failed: list[tuple[Claimed, str, str | None, str | None]] = field(default_factory=list)

    def merge(self, other: Outcomes) -> None:
        self.done.extend(other.done)
        self.retry.extend(other.retry)
        self.failed.extend(other.failed)

    def temporary(self, rows: Sequence[Claimed], error: str, mta: str | None) -> None:
        self.retry.extend((row, error, mta) for row in rows)

    def permanent(
        self, rows: Sequence[Claimed], status: str, diagnostic: str | None, mta: str | None
    ) -> None:
        self.failed.extend((row, status, diagnostic, mta) for row in rows)


def client_tls_context() -> ssl.SSLContext:
    """Opportunistic TLS between MTAs: TLS ≥ 1.2, certificates not verified (RFC 7435)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def order_mx(records: Sequence[tuple[int, str]]) -> list[str]:
    """MX hosts by preference, equal preferences in random order (RFC 5321 §5.1)."""
    by_preference: defaultdict[int, list[str]] = defaultdict(list)
    for preference, host in records:
        by_preference[preference].append(host)
    hosts: list[str] = []
    for preference in sorted(by_preference):
        group = by_preference[preference]
        random.shuffle(group)
        hosts.extend(h for h in group if h not in hosts)
    return hosts


def reply_status(code: int, message: str) -> str:
    """The enhanced status code (RFC 3463) in a reply, or one made from its basic code."""
    m = _ENHANCED.match(message)
    if m and m.group(1) == str(code)[0]:
        return m.group(0)
    return f"{str(code)[0]}.0.0"


def one_line(text: str) -> str:
    return " ".join(text.split())[:500]


class QueueRunner:
    """Runs the outbound queue of one process until stopped."""

    def __init__(
        self, store: Store, config: Config, resolver: Resolver, delivery: MailDelivery
    ) -> None:
        self.store = store
        self.config = config
        self.resolver = resolver
        self.delivery = delivery
        self.hostname = config.server.hostname
        self.token = secrets.token_hex(8)
        self.tls = client_tls_context()
        # Chain and host name checked, with relay.ca_file trusted too: MTA-STS and smarthost.
        self.verified_tls = verified_context(config)
        self.sts = (
            PolicyCache(resolver, self.verified_tls, port=config.mta_sts.policy_port)
            if config.mta_sts.outbound
            else None
        )
        self._wakeup = asyncio.Event()
        self._connections = asyncio.Semaphore(config.queue.max_connections)
        self._per_domain: dict[str, asyncio.Semaphore] = {}
        self._in_flight: dict[int, Claimed] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Open connections kept between batches, per host, with the time each fell idle.
        self._idle: dict[Hop, list[tuple[SMTPClient, float]]] = {}
        # Outcomes waiting for the next commit (see _settle).
        self._unsettled: list[tuple[list[int], list[Retry], asyncio.Future[None]]] = []
        self._settler: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="queue-runner"),
            asyncio.create_task(self._renew_leases(), name="queue-leases"),
            asyncio.create_task(self._close_idle_connections(), name="queue-idle"),
        ]

    @property
    def claim(self) -> QueueClaim | None:
        """How a commit that queues mail claims the rows for this runner (delivery.py); None
        while it is full or stopping, so that the rows stay due for whoever has room first
        (this runner's next claim, or another process) instead of waiting out a lease."""
        if self._stopping or len(self._in_flight) >= self.config.queue.max_in_flight:
            return None
        return QueueClaim(self.token, self.config.queue.lease)

    def take(self, queued: list[Claimed], contents: dict[int, bytes]) -> None:
        """Relay rows a commit has just written, claimed for this runner, at once. Rows
        claimed before the runner filled up are taken all the same: the limit is checked when
        the claim is given, so it is passed by at most the commits in progress then."""
        if self._stopping:
            return  # :meth:`release` hands them back after the stop
        self._dispatch(queued, contents)

    async def stop(self, grace: float) -> None:
        """Stop claiming; give attempts in progress ``grace`` seconds, then abandon them (their
        rows come back when the lease runs out)."""
        self._stopping = True
        self._wakeup.set()
        if self._jobs:
            await asyncio.wait(self._jobs, timeout=grace)
        for task in [*self._tasks, *self._jobs]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._jobs, return_exceptions=True)
        if self._settler is not None:
            await asyncio.wait([self._settler], timeout=grace)
        await self._close_idle(0.0)

    async def release(self) -> None:
        """After :meth:`stop` and the last commit: the rows this runner still holds (attempts
        cut short, rows a commit claimed for it while it stopped) are due again now, for the
        next start or another process, rather than when their lease would end."""
        release = functools.partial(queue_store.release, token=self.token, at=now())
        try:
            count = await self.store.run_write(release)
        except (StoreError, SQLAlchemyError, OSError) as e:
            log.warning("queue: rows in flight wait for their lease to end: %s", e)
            return
        if count:
            log.info("queue: %d rows in flight handed back for the next start", count)

    async def _close_idle_connections(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SECONDS / 2)
            await self._close_idle(IDLE_SECONDS)

    # --- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            room = self.config.queue.max_in_flight - len(self._in_flight)
            claimed: list[Claimed] = []
            if room > 0:
                try:
                    claimed = await self._claim(min(room, CLAIM_BATCH))
                except StoreError as e:
                    log.error("queue: cannot claim messages: %s", e)
            if claimed:
                self._dispatch(claimed)
                continue
            # Full: the next wake-up is a batch finishing. Otherwise sleep until mail is due.
            timeout = POLL_SECONDS if room <= 0 else await self._sleep_time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
                await asyncio.sleep(GATHER_SECONDS)

    async def _sleep_time(self) -> float:
        try:
            due = await self.store.run_read(queue_store.earliest_due)
        except (StoreError, SQLAlchemyError, OSError):
            return POLL_SECONDS
        if due is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.01, (due - now()).total_seconds()))

    async def _claim(self, limit: int) -> list[Claimed]:
        claim = functools.partial(
            queue_store.claim_due,
            token=self.token,
            at=now(),
            lease=self.config.queue.lease,
            limit=limit,
        )
        try:
            return await self.store.run_write(claim)
        except (SQLAlchemyError, OSError) as e:
            raise StoreError(str(e)) from e

    def _dispatch(self, claimed: list[Claimed], contents: dict[int, bytes] | None = None) -> None:
        by_domain: defaultdict[str, list[Claimed]] = defaultdict(list)
        for row in claimed:
            self._in_flight[row.id] = row
            by_domain[row.recipient.rpartition("@")[2].lower()].append(row)
        for domain, rows in by_domain.items():
            job = asyncio.create_task(self._deliver_domain(domain, rows, contents))
            self._jobs.add(job)
            job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.error("queue job failed", exc_info=job.exception())
        self._wakeup.set()

    async def _renew_leases(self) -> None:
        """Keep the rows this process is sending reserved while it sends them."""
        interval = self.config.queue.lease / 3
        while True:
            await asyncio.sleep(interval)
            ids = sorted(self._in_flight)
            if not ids:
                continue
            until = now() + timedelta(seconds=self.config.queue.lease)
            renew = functools.partial(queue_store.renew, token=self.token, ids=ids, until=until)
            try:
                await self.store.run_write(renew)
            except (StoreError, SQLAlchemyError, OSError) as e:
                log.warning("queue: cannot renew leases: %s", e)

    # --- one domain ---------------------------------------------------------------------------

    async def _deliver_domain(
        self, domain: str, rows: list[Claimed], contents: dict[int, bytes] | None = None
    ) -> None:
        outcomes = Outcomes()
        try:
            messages = await self._messages(rows, contents)
            try:
                hops = await self._apply_sts(domain, await self._route(domain))
            except RouteError as e:
                for message in messages:
                    log_attempt(message, message.rows, "bounced" if e.permanent else "deferred",
                                f"{domain}: {e}")  # fmt: skip
                if e.permanent:
                    outcomes.permanent(rows, e.status, None, None)
                else:
                    outcomes.temporary(rows, str(e), None)
            else:
                await self._send_all(domain, hops, messages, outcomes)
            await self._record(outcomes, {m.rows[0].blob_id: m.content for m in messages})
        except (StoreError, SQLAlchemyError, OSError) as e:
            # The rows stay claimed; they come back when the lease runs out.
            log.error("queue: %s: cannot record outcomes: %s", domain, e)
        finally:
            for row in rows:
                self._in_flight.pop(row.id, None)

    async def _messages(
        self, rows: list[Claimed], known: dict[int, bytes] | None = None
    ) -> list[Outgoing]:
        contents = known or {}
        missing = [r.blob_id for r in rows if r.blob_id not in contents]
        if missing:
            contents = contents | await self.store.run_read(
                functools.partial(queue_store.blob_contents, blob_ids=missing)
            )
        groups: dict[tuple[str, str], list[Claimed]] = {}
        for row in rows:
            groups.setdefault((row.queue_id, row.sender), []).append(row)
        messages: list[Outgoing] = []
        for (queue_id, sender), members in groups.items():
            for i in range(0, len(members), MAX_RCPTS):
                batch = members[i : i + MAX_RCPTS]
                messages.append(Outgoing(queue_id, sender, contents[batch[0].blob_id], batch))
        return messages

    async def _route(self, domain: str) -> list[Hop]:
        """The addresses to try for ``domain``, in order."""
        relay = self.config.relay
        if relay.smarthost:
            # Connected by name: the system resolver finds it, and TLS checks the name.
            host, port = parse_hostport(relay.smarthost, default_port=25)
            return [Hop(host, host, port)]
        try:
            mxs = await self.resolver.mx(domain)
        except NXDomain:
            raise RouteError("5.1.2", f"domain {domain} does not exist", permanent=True) from None
        except DNSError as e:
            raise RouteError("4.4.3", f"MX lookup for {domain} failed: {e}", permanent=False) from e
        if any(mx.host in ("", ".") for mx in mxs):
            # RFC 7505 §3: the domain accepts no mail at all.
            raise RouteError("5.1.10", f"{domain} accepts no mail (null MX)", permanent=True)
        # No MX: the domain itself is the host (RFC 5321 §5.1, the "implicit MX").
        hosts = order_mx([(mx.preference, mx.host) for mx in mxs]) if mxs else [domain]
        if self.hostname.lower() in (h.lower() for h in hosts):
            raise RouteError("5.4.6", f"MX for {domain} points back to this server", permanent=True)
        hops: list[Hop] = []
        temporary = False
        for host in hosts:
            try:
                hops.extend(Hop(host, ip, relay.port) for ip in await self._addresses(host))
            except DNSTempError:
                temporary = True
        if not hops:
            if temporary or mxs:
                raise RouteError(
                    "4.4.4", f"no address found for the mail hosts of {domain}", permanent=False
                )
            raise RouteError("5.1.2", f"{domain} has no mail host", permanent=True)
        return hops

    async def _apply_sts(self, domain: str, hops: list[Hop]) -> list[Hop]:
        """The hops an MTA-STS policy of ``domain`` leaves (RFC 8461 §4.1), marked with its mode
        so that :meth:`_connect` insists on verified TLS (§4.2). ``enforce``: only MX hosts the
        policy names, none left → a temporary failure. ``testing``: every hop, the ones
        ``enforce`` would skip logged."""
        if self.sts is None or self.config.relay.smarthost:
            return hops
        policy = await self.sts.policy(domain)
        if policy is None or policy.mode == "none":
            return hops
        outside = list(dict.fromkeys(h.host for h in hops if not policy.allows(h.host)))
        patterns = ",".join(policy.mx)
        if policy.mode == "testing":
            for host in outside:
                log.warning(
                    "mta-sts testing: %s: MX %s is not in the policy (mx: %s); "
                    "enforce would not deliver to it", domain, host, patterns,
                )  # fmt: skip
            return [dataclasses.replace(h, sts="testing") for h in hops]
        allowed = [dataclasses.replace(h, sts="enforce") for h in hops if policy.allows(h.host)]
        if not allowed:
            raise RouteError(
                "4.7.5",
                f"MTA-STS policy of {domain} (enforce) names none of its MX hosts "
                f"{', '.join(outside)} (mx: {patterns})",
                permanent=False,
            )
        return allowed

    async def _addresses(self, host: str) -> list[str]:
        """IPv4 and IPv6 addresses of ``host`` (an IP literal is itself)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        found: list[str] = []
        failure: DNSTempError | None = None
        for version in (6, 4):
            try:
                found.extend(str(ip) for ip in await self.resolver.addresses(host, version))
            except NXDomain:
                continue
            except DNSTempError as e:
                failure = e
        if not found and failure is not None:
            raise failure
        return found

    async def _send_all(
        self, domain: str, hops: list[Hop], messages: list[Outgoing], outcomes: Outcomes
    ) -> None:
        """Spread ``messages`` over up to connections_per_domain connections."""
        lanes = max(1, min(self.config.queue.connections_per_domain, len(messages)))
        semaphore = self._per_domain.setdefault(
            domain, asyncio.Semaphore(self.config.queue.connections_per_domain)
        )
        await asyncio.gather(
            *(self._send_lane(semaphore, hops, messages[i::lanes], outcomes) for i in range(lanes))
        )

    async def _send_lane(
        self,
        semaphore: asyncio.Semaphore,
        hops: list[Hop],
        messages: list[Outgoing],
        outcomes: Outcomes,
    ) -> None:
        async with semaphore, self._connections:
            pending = list(messages)
            last_error = "no host could be reached"
            last_mta: str | None = None
            for hop in hops:
                if not pending:
                    break
                client = self._idle_connection(hop)
                while pending:
                    reused = client is not None
                    if client is None:
                        try:
                            client = await self._connect(hop)
                        except (ConnectionFailed, OSError) as e:
                            last_error, last_mta = f"{hop.host}[{hop.ip}]: {_describe(e)}", hop.host
                            log.info(
                                "queue: cannot use %s[%s]:%d: %s", hop.host, hop.ip, hop.port, e
                            )
                            break
                    try:
                        while pending:
                            # Outcomes count once the transaction ended; a connection lost in
                            # it leaves the whole message to try again.
                            result = Outcomes()
                            await self._send_one(client, hop, pending[0], result)
                            outcomes.merge(result)
                            pending.pop(0)
                    except (ConnectionFailed, OSError) as e:
                        client.close()
                        client = None
                        if reused:
                            continue  # a kept connection the host had closed: once more, fresh
                        # The connection broke: this message and the rest go to the next host.
                        last_error, last_mta = f"{hop.host}[{hop.ip}]: {_describe(e)}", hop.host
                        log.info("queue: lost %s[%s]: %s", hop.host, hop.ip, e)
                        break
                if client is not None:
                    await self._keep_connection(hop, client)
            for message in pending:
                log_attempt(message, message.rows, "deferred", last_error)
                outcomes.temporary(message.rows, last_error, last_mta)

    def _idle_connection(self, hop: Hop) -> SMTPClient | None:
        """A connection to ``hop`` left open by an earlier batch, if one is still open."""
        idle = self._idle.get(hop)
        while idle:
            client, _since = idle.pop()
            if client.is_open:
                return client
            client.close()
        return None

    async def _keep_connection(self, hop: Hop, client: SMTPClient) -> None:
        """Keep a connection for the next batch to the same host (closed after IDLE_SECONDS)."""
        idle = self._idle.setdefault(hop, [])
        if self._stopping or len(idle) >= self.config.queue.connections_per_domain:
            await _quit(client)
            return
        idle.append((client, asyncio.get_running_loop().time()))

    async def _close_idle(self, older_than: float) -> None:
        now_ = asyncio.get_running_loop().time()
        for hop, idle in list(self._idle.items()):
            keep = [(c, since) for c, since in idle if now_ - since < older_than]
            for client, since in idle:
                if now_ - since >= older_than:
                    await _quit(client)
            if keep:
                self._idle[hop] = keep
            else:
                del self._idle[hop]

    async def _connect(self, hop: Hop) -> SMTPClient:
        relay = self.config.relay
        smarthost = bool(relay.smarthost)
        implicit = smarthost and hop.port == 465
        # A password goes only to a smarthost whose certificate checks out.
        tls = self.verified_tls if smarthost and relay.smarthost_username else self.tls

        async def connect(with_tls: bool) -> SMTPClient:
            return await SMTPClient.connect(
                hop.ip,
                hop.port,
                local_hostname=self.hostname,
                command_timeout=relay.timeout,
                tls=tls if with_tls else None,
                server_hostname=hop.host,
            )

        client = await connect(implicit)
        try:
            if hop.sts:
                verified = await self._sts_starttls(client, hop)
                if verified is None:
                    # testing: the failed handshake is logged; again, as without a policy
                    client.close()
                    client = await connect(False)
                else:
                    client = verified
            if not implicit and not client.tls and client.supports("STARTTLS"):
                try:
                    await client.starttls(tls, hop.host, self.hostname)
                except ConnectionFailed as e:
                    if smarthost and relay.smarthost_username:
                        raise
                    # RFC 7435 §3: opportunistic TLS that fails falls back to clear text.
                    log.info("queue: STARTTLS with %s failed (%s); retrying without", hop.host, e)
                    client.close()
                    client = await connect(False)
            if smarthost and relay.smarthost_username:
                if not client.tls:
                    raise ConnectionFailed(
                        "the smarthost offers no TLS; not sending the password in clear text"
                    )
                reply = await client.login(relay.smarthost_username, relay.smarthost_password)
                if reply.code != 235:
                    raise ConnectionFailed(f"smarthost AUTH: {reply.text}")
        except BaseException:
            client.close()
            raise
        return client

    async def _sts_starttls(self, client: SMTPClient, hop: Hop) -> SMTPClient | None:
        """RFC 8461 §4.2: STARTTLS with a certificate that chains to a trusted root and names
        the MX host. Returns the client once that holds. Otherwise ``enforce`` raises
        ConnectionFailed (the message waits for the next attempt, never goes in clear text)
        and ``testing`` logs what ``enforce`` would have done and returns the client as it is,
        or None after a failed handshake (the connection is unusable then)."""
        handshake_failed = False
        if not client.supports("STARTTLS"):
            problem = "offers no STARTTLS"
        else:
            try:
                await client.starttls(self.verified_tls, hop.host, self.hostname)
            except ConnectionFailed as e:
                problem, handshake_failed = f"has no valid TLS ({e})", True
            else:
                return client
        if hop.sts == "enforce":
            raise ConnectionFailed(f"MTA-STS policy (enforce): {hop.host} {problem}")
        log.warning(
            "mta-sts testing: %s[%s] %s; enforce would defer the message", hop.host, hop.ip, problem
        )
        return None if handshake_failed else client

    async def _send_one(
        self, client: SMTPClient, hop: Hop, message: Outgoing, outcomes: Outcomes
    ) -> None:
        """One SMTP transaction; replies become outcomes, a broken connection raises."""
        options: list[str] = []
        if client.supports("SIZE"):
            options.append(f"SIZE={len(message.content)}")
        if client.supports("8BITMIME") and not message.content.isascii():
            options.append("BODY=8BITMIME")
        addresses = [message.sender, *(r.recipient for r in message.rows)]
        if not all(a.isascii() for a in addresses):
            if not client.supports("SMTPUTF8"):
                outcomes.permanent(
                    message.rows, "5.6.7", f"smtp; {hop.host} does not support SMTPUTF8", hop.host
                )
                return
            options.append("SMTPUTF8")
        mta = hop.host
        tx = await client.send(
            message.sender, [r.recipient for r in message.rows], message.content, options
        )
        if not tx.mail.ok:
            self._refused(message.rows, tx.mail, mta, outcomes, message)
            await client.rset()
            return
        accepted: list[Claimed] = []
        for row, reply in zip(message.rows, tx.rcpts, strict=True):
            if reply.ok:
                accepted.append(row)
            else:
                self._refused([row], reply, mta, outcomes, message)
        if not accepted or tx.data is None:
            await client.rset()
            return
        if not tx.data.ok:
            self._refused(accepted, tx.data, mta, outcomes, message)
            await client.rset()
            return
        outcomes.done.extend(r.id for r in accepted)
        log_attempt(
            message, accepted, "sent", one_line(tx.data.text), f"{hop.host}[{hop.ip}]:{hop.port}"
        )

    def _refused(
        self,
        rows: Sequence[Claimed],
        reply: Reply,
        mta: str,
        outcomes: Outcomes,
        message: Outgoing,
    ) -> None:
        text = one_line(reply.text)
        permanent = 500 <= reply.code < 600
        log_attempt(message, rows, "bounced" if permanent else "deferred", text, mta)
        if permanent:
            status = reply_status(reply.code, text.partition(" ")[2])
            outcomes.permanent(rows, status, f"smtp; {text}", mta)
        else:
            outcomes.temporary(rows, f"{mta}: {text}", mta)

    # --- outcomes -----------------------------------------------------------------------------

    async def _record(self, outcomes: Outcomes, contents: dict[int, bytes]) -> None:
        """Bounce what failed for good (``contents``: the messages' bytes by blob id), then
        settle every row in one transaction."""
        queue = self.config.queue
        at = now()
        retries: list[Retry] = []
        failed = list(outcomes.failed)
        for row, error, mta in outcomes.retry:
            when = next_attempt(
                attempts=row.attempts,
                created_at=row.created_at,
                at=at,
                schedule=queue.retry_schedule,
                max_age=queue.max_age,
            )
            if when is None:
                failed.append(
                    (
                        row,
                        "4.4.7",
                        f"x-tidings; gave up after {row.attempts} "
                        f"attempts over {queue.max_age:.0f}s: {error}",
                        mta,
                    )
                )
            else:
                retries.append(Retry(row.id, when, error, mta))
        done = list(outcomes.done)
        if failed:
            done.extend(await self._bounce(failed, contents))
        await self._settle(done, retries)
        metrics.deliveries(sent=len(outcomes.done), deferred=len(retries), bounced=len(failed))

    async def _settle(self, done: list[int], retries: list[Retry]) -> None:
        """Record outcomes; batches finishing together share one commit."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsettled.append((done, retries, future))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._settle_pending())
        await asyncio.shield(future)

    async def _settle_pending(self) -> None:
        while self._unsettled:
            batch, self._unsettled = self._unsettled, []
            finish = functools.partial(
                queue_store.finish,
                token=self.token,
                done=[i for done, _, _ in batch for i in done],
                retries=[r for _, retries, _ in batch for r in retries],
            )
            try:
                await self.store.run_write(finish)
            except Exception as e:  # every waiter hears of it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def _bounce(
        self,
        failed: list[tuple[Claimed, str, str | None, str | None]],
        contents: dict[int, bytes],
    ) -> list[int]:
        """Deliver one DSN per failed message; returns the rows it covers."""
        by_message: defaultdict[str, list[tuple[Claimed, str, str | None, str | None]]] = (
            defaultdict(list)
        )
        for entry in failed:
            by_message[entry[0].queue_id].append(entry)
        settled: list[int] = []
        for queue_id, entries in by_message.items():
            first = entries[0][0]
            if await self._deliver_dsn(queue_id, first, entries, contents[first.blob_id]):
                settled.extend(e[0].id for e in entries)
        return settled

    async def _deliver_dsn(
        self,
        queue_id: str,
        first: Claimed,
        entries: list[tuple[Claimed, str, str | None, str | None]],
        original: bytes,
    ) -> bool:
        """True once the DSN is committed (or none is due); False to try again later."""
        recipients = ", ".join(e[0].recipient for e in entries)
        msgid = header_message_id(original) or "-"
        if not first.sender:
            # RFC 5321 §3.6.3 and §4.5.5: a bounce is never bounced.
            log.info(
                "relay id=%s msgid=%s to=%s status=bounced; null sender, no DSN",
                queue_id,
                msgid,
                recipients,
                extra={"queue_id": queue_id, "message_id": msgid, "status": "bounced"},
            )
            return True
        dsn = build_dsn(
            reporting_mta=self.hostname,
            sender=first.sender,
            recipients=[
                FailedRecipient(
                    address=row.recipient,
                    status=status,
                    diagnostic=diagnostic,
                    remote_mta=mta,
                    last_attempt=now(),
                )
                for row, status, diagnostic, mta in entries
            ],
            original=original,
            arrival=first.created_at,
            queue_id=queue_id,
        )
        try:
            address = parse_mailbox(first.sender)
        except AddressError:
            log.warning("relay id=%s: sender <%s> cannot take a DSN", queue_id, first.sender)
            return True
        local: tuple[LocalTarget, ...] = ()
        remote: tuple[str, ...] = ()
        try:
            resolution = await self.delivery.resolve_recipient(address)
            local, remote = resolution.local, resolution.remote
        except RelayDenied:
            remote = (first.sender,)
        except RecipientError as e:
            log.warning("relay id=%s: DSN to <%s> dropped: %s", queue_id, first.sender, e.reply)
            return True
        bounce_id = new_message_id()
        try:
            await self.delivery.deliver(
                Delivery(id=bounce_id, sender="", content=dsn, local=local, remote=remote)
            )
        except (RecipientError, StoreError) as e:
            log.error("relay id=%s: DSN to <%s> not stored: %s", queue_id, first.sender, e)
            return False
        log.info(
            "relay id=%s msgid=%s to=%s status=bounced; DSN %s to <%s>",
            queue_id,
            msgid,
            recipients,
            bounce_id,
            first.sender,
            extra={
                "queue_id": queue_id,
                "message_id": msgid,
                "status": "bounced",
                "dsn_id": bounce_id,
            },
        )
        return True


async def _quit(client: SMTPClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.quit(), 5)
    client.close()


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return one_line(text)
