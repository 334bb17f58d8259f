"""Wiring and lifecycle: open the store, start the listeners, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable

from tidings.auth import Authenticator, AuthFailureLimiter
from tidings.config import Config, ConfigError, parse_hostport
from tidings.delivery import MailDelivery
from tidings.dns import Resolver
from tidings.imap.session import ImapService, ImapSettings
from tidings.mailauth.dmarc import organizational_domain
from tidings.pop3.session import Pop3Service, Pop3Settings
from tidings.queue.worker import QueueRunner
from tidings.smtp.inbound import InboundHandler
from tidings.smtp.server import TidingsSMTP
from tidings.smtp.submission import SubmissionHandler
from tidings.store.db import Store
from tidings.store.notify import MailboxEvents
from tidings.tls import server_context

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0


async def start_listener(
    name: str,
    host: str,
    port: int,
    factory: Callable[[], asyncio.Protocol],
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Bind one listener; an OSError here means the address cannot be used."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, host, port, ssl=ssl_context, reuse_address=True, backlog=1024
    )
    log.info("%s listening on %s", name, ", ".join(_addr(s) for s in server.sockets))
    return server


def _addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class App:
    """One running Tidings: its store, delivery and listeners."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.servers: list[asyncio.Server] = []
        self.addresses: dict[str, str] = {}
        self.pop3: Pop3Service | None = None
        self.imap: ImapService | None = None
        self.events: MailboxEvents | None = None
        self.queue: QueueRunner | None = None

    async def start(self) -> None:
        config = self.config
        self.tls = server_context(config)
        self.store = await Store.open(config.database_url)
        self.delivery = MailDelivery(self.store, config.delivery)
        self.events = MailboxEvents(None if self.store.is_sqlite else config.database_url)
        await self.events.start()
        self.delivery.events = self.events
        limits = config.limits
        # One limiter for every protocol that takes passwords, so a guesser gains nothing by
        # switching between them.
        self.auth_limiter = AuthFailureLimiter(
            limits.auth_max_failures_per_ip,
            limits.auth_max_failures_per_account,
            limits.auth_failure_window,
        )
        self.authenticator = Authenticator(self.store, self.auth_limiter, limits.auth_failure_delay)
        self.resolver = Resolver.from_config(config.dns)
        try:
            if config.listen.smtp:
                resolver = None
                if config.mailauth.enabled:
                    resolver = self.resolver
                    # The public suffix list loads on first use (~60 ms): not on a session.
                    await asyncio.to_thread(organizational_domain, "example.com")
                handler = InboundHandler(config, self.delivery, resolver)
                await self._listen("smtp", config.listen.smtp, lambda: self._smtp(handler))
            await self._start_submission()
            await self._start_pop3()
            await self._start_imap()
            self.queue = QueueRunner(self.store, config, self.resolver, self.delivery)
            self.delivery.queue_taker = self.queue
            self.queue.start()
        except BaseException:
            await self.stop()
            raise

    def _smtp(self, handler: InboundHandler) -> TidingsSMTP:
        return TidingsSMTP.from_config(handler, self.config, self.tls)

    async def _start_submission(self) -> None:
        listen = self.config.listen
        submission = SubmissionHandler(self.config, self.delivery, self.authenticator)
        if listen.submission:
            await self._listen(
                "submission", listen.submission, lambda: submission.smtp(self.tls, False)
            )
        if listen.submissions:
            await self._listen(
                "submissions",
                listen.submissions,
                lambda: submission.smtp(self.tls, True),
                self.tls,
            )

    async def _start_pop3(self) -> None:
        config = self.config
        if not (config.listen.pop3 or config.listen.pop3s):
            return
        settings = Pop3Settings(
            hostname=config.server.hostname,
            keep_on_server=config.pop3.keep_on_server,
            allow_insecure_auth=config.pop3.allow_insecure_auth,
            timeout=config.limits.pop3_timeout,
        )
        self.pop3 = pop3 = Pop3Service(
            self.store, settings, self.authenticator, self.tls, self.events
        )
        if config.listen.pop3:
            await self._listen("pop3", config.listen.pop3, pop3.protocol_factory(False))
        if config.listen.pop3s:
            await self._listen("pop3s", config.listen.pop3s, pop3.protocol_factory(True), self.tls)

    async def _start_imap(self) -> None:
        config = self.config
        if not (config.listen.imap or config.listen.imaps):
            return
        assert self.events is not None
        settings = ImapSettings(
            hostname=config.server.hostname,
            timeout=config.limits.imap_timeout,
            max_line=config.limits.imap_max_line,
            max_literal=config.limits.imap_max_literal,
            max_append=config.limits.max_message_size,
        )
        self.imap = imap = ImapService(
            self.store, settings, self.authenticator, self.tls, self.events
        )
        if config.listen.imap:
            await self._listen("imap", config.listen.imap, imap.protocol_factory(False))
        if config.listen.imaps:
            await self._listen("imaps", config.listen.imaps, imap.protocol_factory(True), self.tls)

    async def _listen(
        self,
        name: str,
        address: str,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        host, port = parse_hostport(address)
        try:
            server = await start_listener(name, host, port, factory, ssl_context)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise ConfigError(f"listen.{name}: cannot listen on {address}: {reason}") from None
        self.servers.append(server)
        sockname = server.sockets[0].getsockname()
        self.addresses[name] = f"{sockname[0]}:{sockname[1]}"

    async def stop(self) -> None:
        """Stop accepting, let commits in progress finish, close the store."""
        for server in self.servers:
            server.close()
        if self.pop3 is not None:
            await self.pop3.close()
        if self.imap is not None:
            await self.imap.close()
        if self.queue is not None:
            await self.queue.stop(SHUTDOWN_GRACE)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.delivery.drain(), SHUTDOWN_GRACE)
        if self.events is not None:
            await self.events.close()
        await self.store.close()


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    app = App(config)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready: %s", " ".join(f"{k}={v}" for k, v in app.addresses.items()))
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await app.stop()
