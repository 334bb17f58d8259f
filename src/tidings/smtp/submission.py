"""Message submission (RFC 6409) on 587 with STARTTLS and 465 over implicit TLS (RFC 8314).

Users and their applications log in (AUTH PLAIN or LOGIN, RFC 4954, offered and taken only
under TLS) and may then send to anyone — this is the only way through Tidings to another
domain. What they send must be theirs: MAIL FROM and every header From address must be an
address the user owns (its own, with or without a ``+tag``, or an alias leading to it), else
``553 5.7.1``. A message without Date or Message-ID gets them (RFC 6409 §8.2, §8.3), and mail
from a domain with DKIM keys is signed (off the event loop) before it is committed: local
recipients get their copies, remote ones become queue rows, in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from email.utils import formatdate, getaddresses
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tidings.address import Address, AddressError, parse_mailbox
from tidings.auth import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    Authenticator,
    LoginRefused,
    SaslError,
    decode_base64,
    decode_plain,
    decode_utf8,
)
from tidings.config import Config
from tidings.delivery import (
    Delivery,
    MailDelivery,
    RecipientError,
    combine,
    new_message_id,
)
from tidings.logs import header_message_id
from tidings.mailauth.results import header_fields
from tidings.mailauth.signing import SigningError, SigningKey, sign_message
from tidings.smtp.inbound import not_stored_reply, received_header
from tidings.smtp.policy import accept_recipient
from tidings.smtp.server import TidingsEnvelope, TidingsSMTP
from tidings.store.db import StoreError
from tidings.store.dkimkeys import signing_keys
from tidings.store.models import Alias

log = logging.getLogger(__name__)

NOT_YOURS = "553 5.7.1 Sender address {} is not yours: send as an address you own"


class SubmissionSMTP(TidingsSMTP):
    """The SMTP engine with AUTH PLAIN/LOGIN, required before MAIL."""

    protocol_name = "submission"

    metrics_service = "submission"

    def __init__(self, handler: SubmissionHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.submission = handler
        # The account this session logged in as, and the addresses it may send as.
        self.user: str | None = None
        self.owned: frozenset[str] = frozenset()

    async def smtp_AUTH(self, arg: str | None) -> None:
        if await self._need_helo():
            return
        if not self.sess.extended_smtp:
            await self.push("503 5.5.1 AUTH needs EHLO")
            return
        if not self.tls_active:
            # RFC 4954 §4: no password is taken over a connection anyone can read.
            await self.push("538 5.7.11 Encryption required: send STARTTLS first")
            return
        if self.user is not None:
            await self.push("503 5.5.1 Already authenticated")
            return
        if self.env.mail_from is not None:
            await self.push("503 5.5.1 AUTH is not allowed during a mail transaction")
            return
        words = (arg or "").split()
        if not 1 <= len(words) <= 2:
            await self.push("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mechanism = words[0].upper()
        initial = words[1] if len(words) == 2 else None
        try:
            if mechanism == "PLAIN":
                response = await self._response(initial, "")
                if response is None:
                    return
                user, password = decode_plain(response)
            elif mechanism == "LOGIN":
                user_bytes = await self._response(initial, LOGIN_USERNAME_CHALLENGE)
                if user_bytes is None:
                    return
                password_bytes = await self._response(None, LOGIN_PASSWORD_CHALLENGE)
                if password_bytes is None:
                    return
                user = decode_utf8(user_bytes, "user name")
                password = decode_utf8(password_bytes, "password")
            else:
                await self.push("504 5.5.4 Unrecognized authentication mechanism")
                return
        except SaslError as e:
            await self.push(f"501 5.5.2 {e}")
            return
        await self._login(user, password)

    async def _response(self, initial: str | None, challenge: str) -> bytes | None:
        """The client's SASL response: the initial response if given ("=" is empty, RFC
        4954 §4), else the answer to ``challenge`` (already base64) after 334; None when the
        client cancelled or garbled it (the reply is already sent)."""
        if initial is not None:
            if initial == "=":
                return b""
            try:
                return decode_base64(initial)
            except SaslError as e:
                await self.push(f"501 5.5.2 {e}")
                return None
        await self.push(f"334 {challenge}")
        try:
            line = await self._reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            await self.push("500 5.5.6 AUTH response too long")
            return None
        self._reset_timeout()
        text = line.rstrip(b"\r\n").decode("ascii", "replace")
        if text == "*":
            # RFC 4954 §4: the client cancelled the exchange.
            await self.push("501 5.7.0 Authentication cancelled")
            return None
        try:
            return decode_base64(text)
        except SaslError as e:
            await self.push(f"501 5.5.2 {e}")
            return None

    async def _login(self, user: str, password: str) -> None:
        peer = self.sess.peer
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        try:
            address = await self.submission.authenticator.login(ip, user, password, "submission")
        except LoginRefused as e:
            if e.temporary:
                await self.push(f"454 4.7.0 {e}")
            else:
                await self.push("535 5.7.8 Authentication credentials invalid")
            return
        try:
            self.owned = await self.submission.owned_addresses(address)
        except StoreError:
            await self.push("454 4.7.0 Temporary authentication failure, try again later")
            return
        self.user = address
        self.sess.authenticated = True
        await self.push("235 2.7.0 Authentication successful")

    def log_context(self) -> dict[str, Any]:
        return {"user": self.user}

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.user is None:
            if await self._need_helo():
                return
            await self.push("530 5.7.0 Authentication required")
            return
        await super().smtp_MAIL(arg)


class SubmissionHandler:
    """aiosmtpd handler hooks behind the submission listeners."""

    def __init__(
        self, config: Config, delivery: MailDelivery, authenticator: Authenticator
    ) -> None:
        self.config = config
        self.delivery = delivery
        self.authenticator = authenticator
        self._keys: dict[str, list[SigningKey]] = {}
        self._keys_serial: int | None = None
        self._keys_loading: asyncio.Lock = asyncio.Lock()

    def smtp(self, tls: ssl.SSLContext, implicit_tls: bool) -> SubmissionSMTP:
        return SubmissionSMTP.from_config(self, self.config, tls, implicit_tls=implicit_tls)

    async def owned_addresses(self, account: str) -> frozenset[str]:
        """The addresses ``account`` may send as: itself and the aliases that lead to it."""

        def query(conn: Connection) -> list[str]:
            return list(conn.scalars(select(Alias.source).where(Alias.target == account)))

        try:
            sources = await self.delivery.store.run_read(query)
        except (SQLAlchemyError, OSError) as e:
            raise StoreError(str(e)) from e
        # A catch-all ("@domain") leading to the account does not make the domain its own.
        return frozenset([account, *(s for s in sources if not s.startswith("@"))])

    def may_send_as(self, server: SubmissionSMTP, address: str) -> bool:
        try:
            key = parse_mailbox(address).key
        except AddressError:
            return False
        if key in server.owned:
            return True
        delimiter = self.config.delivery.recipient_delimiter
        local, _, domain = key.rpartition("@")
        if delimiter and delimiter in local:
            return f"{local.partition(delimiter)[0]}@{domain}" in server.owned
        return False

    async def handle_EHLO_EXTENSIONS(
        self, server: SubmissionSMTP, session: Any, envelope: TidingsEnvelope
    ) -> str | None:
        # RFC 4954 §4 and RFC 3207 §4: mechanisms that send passwords only under TLS.
        return "AUTH PLAIN LOGIN" if server.tls_active and server.user is None else None

    async def handle_exception(self, error: Exception) -> str:
        log.exception("error in submission session", exc_info=error)
        return "451 4.3.0 Internal error, try again later"

    async def handle_MAIL(
        self,
        server: SubmissionSMTP,
        session: Any,
        envelope: TidingsEnvelope,
        address: Address | None,
        params: dict[str, str | None],
    ) -> str | None:
        if address is not None and not self.may_send_as(server, str(address)):
            return NOT_YOURS.format(f"<{address}>")  # logged by the engine, with the user
        return None

    async def handle_RCPT(
        self,
        server: SubmissionSMTP,
        session: Any,
        envelope: TidingsEnvelope,
        address: Address,
        params: dict[str, str | None],
    ) -> str | None:
        if address.is_quoted and not address.domain:
            return "501 5.1.3 Bad recipient address"
        try:
            return await accept_recipient(
                self.delivery,
                envelope,
                address,
                max_recipients=self.config.limits.max_recipients,
                may_relay=True,
            )
        except RecipientError as e:
            return e.reply

    async def handle_DATA(
        self, server: SubmissionSMTP, session: Any, envelope: TidingsEnvelope
    ) -> str:
        assert isinstance(envelope.content, bytes)
        message_id = new_message_id()
        envelope.queue_id = message_id
        header_end = envelope.content.find(b"\r\n\r\n")
        head = envelope.content if header_end < 0 else envelope.content[: header_end + 2]
        refusal, from_domain, added = self._check_header(server, head, message_id)
        envelope.message_id = header_message_id(added + head)
        if refusal:
            return refusal
        content = added + envelope.content
        keys = await self._signing_keys(from_domain)
        if keys:
            try:
                content = await asyncio.to_thread(sign_message, content, keys) + content
            except SigningError as e:
                # A header dkimpy cannot read: the mail still goes, unsigned, and says why.
                log.warning("message %s not signed: %s", message_id, e)
                keys = ()
        trace = received_header(server, session, envelope, message_id)
        local, remote = combine(envelope.resolutions)
        delivery = Delivery(
            id=message_id,
            sender=envelope.mail_from or "",
            content=trace + content,
            local=local,
            remote=remote,
        )
        envelope.message_size = len(delivery.content)
        envelope.log_fields = {
            "remote": len(remote),
            "signed": ",".join(k.selector for k in keys) or "no",
        }
        try:
            await self.delivery.deliver(delivery)
        except RecipientError as e:
            return e.reply
        except StoreError as e:
            log.error("message %s not stored: %s", message_id, e)
            return not_stored_reply(e)
        # The engine logs the transaction (TidingsSMTP.log_transaction) with this reply.
        return f"250 2.0.0 Ok: queued as {message_id}"

    def _check_header(
        self, server: SubmissionSMTP, head: bytes, message_id: str
    ) -> tuple[str | None, str | None, bytes]:
        """(refusal, the From domain, header fields to prepend) for a message's header."""
        fields = header_fields(head)[0]
        names = {f.name.lower() for f in fields}
        froms = [f for f in fields if f.name.lower() == b"from"]
        if len(froms) != 1:
            # RFC 5322 §3.6: exactly one From field.
            return "550 5.6.0 The message needs exactly one From header field", None, b""
        from_value = froms[0].value.decode("utf-8", "replace")
        addresses = [a for _, a in getaddresses([from_value]) if a]
        if not addresses:
            return "550 5.6.0 The From header field holds no address", None, b""
        for address in addresses:
            if not self.may_send_as(server, address):
                return NOT_YOURS.format(address), None, b""
        added = b""
        if b"date" not in names:
            added += f"Date: {formatdate(localtime=False, usegmt=True)}\r\n".encode()
        if b"message-id" not in names:
            host = self.config.server.hostname
            added += f"Message-ID: <{message_id}.{new_message_id()}@{host}>\r\n".encode()
        return None, addresses[0].rpartition("@")[2].lower(), added

    async def _signing_keys(self, domain: str | None) -> Sequence[SigningKey]:
        """The DKIM keys of ``domain``, reloaded when the directory serial moves (a key added
        or removed with ``tidings dkim``)."""
        if not domain:
            return ()
        try:
            serial = await self.delivery.directory_serial()
            if serial != self._keys_serial or self._keys_serial is None:
                async with self._keys_loading:
                    if serial != self._keys_serial or self._keys_serial is None:
                        self._keys = await self.delivery.store.run_read(signing_keys)
                        self._keys_serial = serial
        except (SQLAlchemyError, OSError, StoreError) as e:
            # Unsigned mail is still mail; the next message tries again.
            log.error("submission: cannot load DKIM keys: %s", e)
        return self._keys.get(domain, ())
