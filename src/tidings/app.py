"""Wiring and lifecycle: open the store, start the listeners, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable

from tidings import metrics
from tidings.auth import Authenticator, AuthFailureLimiter
from tidings.config import SECTIONS, Config, ConfigError, LimitsConfig, parse_hostport
from tidings.delivery import MailDelivery
from tidings.dns import Resolver
from tidings.guard import Defences
from tidings.imap.session import ImapService, ImapSettings
from tidings.logs import set_level
from tidings.mailauth.dmarc import organizational_domain
from tidings.pop3.session import Pop3Service, Pop3Settings
from tidings.queue.worker import QueueRunner
from tidings.smtp.inbound import InboundHandler
from tidings.smtp.server import SmtpSessions, TidingsSMTP
from tidings.smtp.submission import SubmissionHandler
from tidings.store.db import Store
from tidings.store.notify import MailboxEvents
from tidings.tls import reload_certificate, server_context
from tidings.web.app import WebServer
from tidings.web.site import Site

log = logging.getLogger(__name__)

# What SIGHUP takes from a re-read config; any other change waits for a restart.
RELOADABLE = frozenset(
    {
        "tls.cert",
        "tls.key",
        "log.level",
        "server.shutdown_grace",
        *(f"limits.{f.name}" for f in dataclasses.fields(LimitsConfig)),
    }
)


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
        self.web: WebServer | None = None
        self.smtp_sessions = SmtpSessions()
        self.inbound: InboundHandler | None = None
        self.submission: SubmissionHandler | None = None
        self.defences = Defences(config.limits)

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
                self.inbound = handler = InboundHandler(config, self.delivery, resolver)
                if handler.checker is not None:
                    await handler.checker.start()
                await self._listen("smtp", config.listen.smtp, lambda: self._smtp(handler))
            await self._start_submission()
            await self._start_pop3()
            await self._start_imap()
            await self._start_web()
            self.queue = QueueRunner(self.store, config, self.resolver, self.delivery)
            self.delivery.queue_taker = self.queue
            self.queue.start()
        except BaseException:
            await self.stop()
            raise

    def _smtp(self, handler: InboundHandler) -> TidingsSMTP:
        return self._tracked(TidingsSMTP.from_config(handler, self.config, self.tls))

    def _tracked(self, session: TidingsSMTP) -> TidingsSMTP:
        """An SMTP session a stop can reach (to say 421 at the right moment)."""
        session.sessions = self.smtp_sessions
        return session

    async def _start_submission(self) -> None:
        listen = self.config.listen
        self.submission = submission = SubmissionHandler(
            self.config, self.delivery, self.authenticator
        )
        if listen.submission:
            await self._listen(
                "submission",
                listen.submission,
                lambda: self._tracked(submission.smtp(self.tls, False)),
            )
        if listen.submissions:
            await self._listen(
                "submissions",
                listen.submissions,
                lambda: self._tracked(submission.smtp(self.tls, True)),
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
            max_errors=config.limits.max_errors,
            max_junk_commands=config.limits.max_junk_commands,
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
            allow_insecure_auth=config.imap.allow_insecure_auth,
            max_errors=config.limits.max_errors,
            max_junk_commands=config.limits.max_junk_commands,
        )
        self.imap = imap = ImapService(
            self.store, settings, self.authenticator, self.tls, self.events
        )
        if config.listen.imap:
            await self._listen("imap", config.listen.imap, imap.protocol_factory(False))
        if config.listen.imaps:
            await self._listen("imaps", config.listen.imaps, imap.protocol_factory(True), self.tls)

    async def _start_web(self) -> None:
        listen = self.config.listen
        if not (listen.http or listen.https):
            return
        self.web = web = WebServer(Site(self.config, self.store, self._sessions))
        await web.start()
        if listen.http:
            await self._listen("http", listen.http, web.factory, guarded=False)
        if listen.https:
            await self._listen("https", listen.https, web.factory, self.tls, guarded=False)

    def _sessions(self) -> dict[str, int]:
        """Open connections per protocol, for the metrics gauge."""
        return {
            "imap": len(self.imap.connections) if self.imap else 0,
            "pop3": len(self.pop3.connections) if self.pop3 else 0,
        }

    async def _listen(
        self,
        name: str,
        address: str,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
        *,
        guarded: bool = True,
    ) -> None:
        """Listen on ``address``; the mail protocols' connections get the shared defences
        (guard.py: connection limits, slow clients). aiohttp has its own for HTTP."""
        host, port = parse_hostport(address)
        if guarded:
            factory = self._guarded(factory)
        try:
            server = await start_listener(
                name, host, port, metrics.counted(name, factory), ssl_context
            )
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise ConfigError(f"listen.{name}: cannot listen on {address}: {reason}") from None
        self.servers.append(server)
        sockname = server.sockets[0].getsockname()
        self.addresses[name] = f"{sockname[0]}:{sockname[1]}"

    def _guarded(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            protocol = factory()
            protocol.defences = self.defences  # type: ignore[attr-defined]
            return protocol

        return make

    async def stop(self) -> None:
        """Stop accepting at once; end IMAP (BYE) and POP3 (-ERR) sessions, and SMTP sessions
        with 421 (RFC 5321 §3.8) — those in DATA after their reply; give those transactions
        and the relay attempts under way ``server.shutdown_grace`` seconds; let commits in
        progress finish; close the store. Nothing acknowledged is lost: a 250 is only sent
        after its commit, and queue rows cut short are due again for the next start."""
        grace = self.config.server.shutdown_grace
        for server in self.servers:
            server.close()
        if self.web is not None:
            await self.web.close()
        if self.pop3 is not None:
            await self.pop3.close()
        if self.imap is not None:
            await self.imap.close()
        # From here commits leave their queue rows unclaimed, due for the next start.
        self.delivery.queue_taker = None
        smtp = asyncio.create_task(self.smtp_sessions.shutdown(grace))
        if self.queue is not None:
            await self.queue.stop(grace)
        told, dropped = await smtp
        if told or dropped:
            log.info(
                "stop: %d SMTP sessions told 421 at once, %d cut off after %.0fs",
                told,
                dropped,
                grace,
            )
        if self.inbound is not None and self.inbound.checker is not None:
            await self.inbound.checker.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.delivery.drain(), grace)
        if self.queue is not None:
            await self.queue.release()
        if self.events is not None:
            await self.events.close()
        await self.store.close()

    def reload(self, new: Config) -> None:
        """SIGHUP: load the certificate again and take the settings that can change while
        running (RELOADABLE); new sessions see them, open ones keep theirs. Raises
        ConfigError, changing nothing, when the new certificate cannot be used."""
        old = self.config
        cert = reload_certificate(self.tls, new)
        changed = [key for key in _differences(old, new) if key not in RELOADABLE]
        if changed:
            log.warning("reload: %s changed; restart to apply", ", ".join(changed))
        self.config = config = dataclasses.replace(
            old,
            tls=new.tls,
            log=new.log,
            limits=new.limits,
            server=dataclasses.replace(old.server, shutdown_grace=new.server.shutdown_grace),
        )
        limits = config.limits
        for handler in (self.inbound, self.submission):
            if handler is not None:
                handler.config = config
        if self.imap is not None:
            self.imap.settings = dataclasses.replace(
                self.imap.settings,
                timeout=limits.imap_timeout,
                max_line=limits.imap_max_line,
                max_literal=limits.imap_max_literal,
                max_append=limits.max_message_size,
                max_errors=limits.max_errors,
                max_junk_commands=limits.max_junk_commands,
            )
        if self.pop3 is not None:
            self.pop3.settings = dataclasses.replace(
                self.pop3.settings,
                timeout=limits.pop3_timeout,
                max_errors=limits.max_errors,
                max_junk_commands=limits.max_junk_commands,
            )
        self.defences.reload(limits)
        self.auth_limiter.max_per_client = limits.auth_max_failures_per_ip
        self.auth_limiter.max_per_account = limits.auth_max_failures_per_account
        self.auth_limiter.window = limits.auth_failure_window
        self.authenticator.failure_delay = limits.auth_failure_delay
        log.info("reloaded: certificate %s, limits, log level", cert)


def _differences(old: Config, new: Config) -> list[str]:
    """The ``section.key`` names whose values differ between two configs."""
    return [
        f"{section}.{f.name}"
        for section in SECTIONS
        for f in dataclasses.fields(getattr(old, section))
        if getattr(getattr(old, section), f.name) != getattr(getattr(new, section), f.name)
    ]


async def serve(
    config: Config,
    load: Callable[[], Config] | None = None,
    *,
    log_level_fixed: bool = False,
) -> None:
    """Run until SIGTERM or SIGINT. SIGHUP reads the config again with ``load`` (without it,
    only the certificate files are read again) and applies what can change while running;
    the log level too, unless the command line fixed it (``log_level_fixed``)."""
    app = App(config)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def hangup() -> None:
        log.info("SIGHUP: reloading the configuration and certificate")
        try:
            new = load() if load is not None else app.config
            app.reload(new)
        except ConfigError as e:
            log.error("reload failed; the running configuration stays: %s", e)
            return
        except Exception:
            log.exception("reload failed; the running configuration stays")
            return
        if not log_level_fixed:
            set_level(logging.getLevelName(app.config.log.level))

    loop.add_signal_handler(signal.SIGHUP, hangup)
    log.info("ready: %s", " ".join(f"{k}={v}" for k, v in app.addresses.items()))
    try:
        await stop.wait()
        log.info("shutting down: listeners closed; finishing transactions under way")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await app.stop()
    log.info("stopped")
