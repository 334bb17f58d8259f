"""Port 25 policy: the handler hooks behind the MX listener.

Who may send to whom: recipients must be ours (no relay for anyone on this port), the number
of recipients is bounded, and a message is acknowledged only after ``delivery.deliver`` has
committed it. Mail from clients outside ``mailauth.trusted_networks`` is authenticated (SPF
from MAIL FROM on, DKIM and DMARC at the end of DATA) and carries our Authentication-Results.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from email.utils import formatdate
from typing import Any

from tidings.address import Address
from tidings.config import Config
from tidings.delivery import Delivery, MailDelivery, RecipientError, combine, new_message_id
from tidings.dns import Resolver
from tidings.logs import header_message_id
from tidings.mailauth.checker import Checker, Settings
from tidings.mailauth.dmarc import Policy
from tidings.mailauth.spf import spf_for_session
from tidings.smtp.policy import accept_recipient
from tidings.smtp.server import TidingsEnvelope, TidingsSMTP
from tidings.store.db import StorageFull, StoreError

log = logging.getLogger(__name__)


def received_header(
    server: TidingsSMTP, session: Any, envelope: TidingsEnvelope, message_id: str
) -> bytes:
    """The ``Received:`` trace field (RFC 5321 §4.4) this hop prepends."""
    peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
    protocol = "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP" if session.extended_smtp else "SMTP"
    # RFC 3848: S for TLS, A for an authenticated client.
    if server.tls_active and protocol != "SMTP":
        protocol += "S"
    if getattr(session, "authenticated", False) and protocol != "SMTP":
        protocol += "A"
    helo = _printable(session.host_name or "unknown")
    for_clause = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
    header = (
        f"Received: from {helo} ([{peer}])\r\n"
        f"\tby {server.hostname} (Tidings) with {protocol} id {message_id}{for_clause};\r\n"
        f"\t{formatdate(localtime=False, usegmt=True)}\r\n"
    )
    return header.encode("utf-8", "surrogateescape")


def not_stored_reply(error: StoreError) -> str:
    """The reply to a message the store could not take: a temporary failure either way, and
    RFC 3463 §3.4 says which — 4.3.1 "mail system full" when the disk is full (an operator
    must free space; clients retry later), 4.3.0 otherwise (the database is unreachable)."""
    if isinstance(error, StorageFull):
        return "452 4.3.1 Message not stored (mail system full), try again later"
    return "451 4.3.0 Message not stored (storage unavailable), try again later"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and c not in "()\\" else "?" for c in text)[:255]


class InboundHandler:
    """aiosmtpd handler hooks for the MX listener."""

    def __init__(
        self, config: Config, delivery: MailDelivery, resolver: Resolver | None = None
    ) -> None:
        self.config = config
        self.delivery = delivery
        self.resolver = resolver if config.mailauth.enabled else None
        self.trusted = [
            ipaddress.ip_network(n, strict=False) for n in config.mailauth.trusted_networks
        ]
        self.ceiling = Policy(config.mailauth.dmarc_max_disposition)
        settings = Settings(
            nameservers=tuple(config.dns.nameservers),
            dns_timeout=config.dns.timeout,
            authserv_id=config.server.hostname,
            ceiling=self.ceiling,
            trusted_arc_sealers=tuple(config.mailauth.trusted_arc_sealers),
        )
        self.checker = (
            Checker(settings, self.resolver, separate=config.mailauth.check_process)
            if self.resolver is not None
            else None
        )

    def _checked(self, session: Any) -> bool:
        """Whether this client's mail is authenticated (not trusted, checks enabled)."""
        if self.resolver is None or not isinstance(session.peer, tuple):
            return False
        try:
            ip = ipaddress.ip_address(session.peer[0].partition("%")[0])
        except ValueError:
            return True
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return not any(ip in network for network in self.trusted)

    async def handle_exception(self, error: Exception) -> str:
        """A fault of ours must not bounce anyone's mail: answer with a temporary failure."""
        log.exception("error in SMTP session", exc_info=error)
        return "451 4.3.0 Internal error, try again later"

    async def handle_MAIL(
        self,
        server: TidingsSMTP,
        session: Any,
        envelope: TidingsEnvelope,
        address: Address | None,
        params: dict[str, str | None],
    ) -> str | None:
        if self.resolver is not None and self._checked(session):
            envelope.spf_check = asyncio.create_task(
                spf_for_session(
                    self.resolver,
                    session.peer[0],
                    str(address) if address else "",
                    session.host_name or "",
                    receiver=self.config.server.hostname,
                )
            )
        return None

    async def handle_RCPT(
        self,
        server: TidingsSMTP,
        session: Any,
        envelope: TidingsEnvelope,
        address: Address,
        params: dict[str, str | None],
    ) -> str | None:
        try:
            return await accept_recipient(
                self.delivery,
                envelope,
                address,
                max_recipients=self.config.limits.max_recipients,
                may_relay=False,
            )
        except RecipientError as e:
            return e.reply  # the engine logs the refusal

    async def handle_DATA(
        self, server: TidingsSMTP, session: Any, envelope: TidingsEnvelope
    ) -> str:
        message_id = new_message_id()
        assert isinstance(envelope.content, bytes)
        message, junk = envelope.content, False
        envelope.queue_id = message_id
        envelope.message_id = header_message_id(message)
        trace = received_header(server, session, envelope, message_id)
        if self.checker is not None and envelope.spf_check is not None:
            verdict = await self.checker.judge(message, await envelope.spf_check)
            if verdict.refusal is not None:
                return verdict.refusal  # the engine logs it, with the queue id
            message, junk = verdict.message, verdict.disposition is Policy.QUARANTINE
            trace = verdict.header + trace
        local, remote = combine(envelope.resolutions)
        delivery = Delivery(
            id=message_id,
            sender=envelope.mail_from or "",
            content=trace + message,
            local=local,
            remote=remote,
            junk=junk,
        )
        envelope.message_size = len(delivery.content)
        try:
            await self.delivery.deliver(delivery)
        except RecipientError as e:
            return e.reply
        except StoreError as e:
            log.error("message %s not stored: %s", message_id, e)
            return not_stored_reply(e)
        # The engine logs the transaction (TidingsSMTP.log_transaction) with this reply.
        return f"250 2.0.0 Ok: queued as {message_id}"
