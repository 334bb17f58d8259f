"""The HTTP application (its routes, one module per concern) and the runner that serves it.

``tidings.app`` binds ``listen.http`` and ``listen.https`` itself, like every other listener
(a port in use is a one-line config error, the ready line names the address), with
:attr:`WebServer.factory`, aiohttp's protocol factory; HTTPS uses the mail listeners' TLS
context. A store that does not answer turns any request into a 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tidings.web import autoconfig, monitoring, mtasts
from tidings.web.site import SITE, Site, StoreUnavailable

log = logging.getLogger(__name__)

# Autodiscover requests are a few hundred bytes; nothing else here takes a body.
MAX_REQUEST_BODY = 64 * 1024
# Seconds open HTTP connections get to finish when the server stops.
SHUTDOWN_TIMEOUT = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def store_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreUnavailable as e:
        log.warning("http %s: store unavailable: %s", request.path, e)
        return web.Response(status=503, text=f"store unavailable: {e}\n")


def build_app(site: Site) -> web.Application:
    app = web.Application(middlewares=[store_errors], client_max_size=MAX_REQUEST_BODY)
    app[SITE] = site
    autoconfig.add_routes(app)
    mtasts.add_routes(app)
    monitoring.add_routes(app)
    return app


class WebServer:
    """The application's runner; ``factory`` makes the protocol for each connection."""

    def __init__(self, site: Site) -> None:
        self.runner = web.AppRunner(
            build_app(site), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )

    async def start(self) -> None:
        await self.runner.setup()

    @property
    def factory(self) -> Callable[[], asyncio.Protocol]:
        server = self.runner.server
        assert server is not None, "start() first"
        return server

    async def close(self) -> None:
        await self.runner.cleanup()
