"""What every handler shares: the :class:`Site` (config, store, open sessions), found under
:data:`SITE` in the application, and small request helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from tidings.address import AddressError, normalize_domain
from tidings.config import Config
from tidings.store.db import Store, StoreError, describe_db_error
from tidings.store.models import Domain

# Seconds a request waits for the store (a domain lookup, the health check, queue gauges).
STORE_TIMEOUT = 2.0


class StoreUnavailable(Exception):
    """The store did not answer (in time): the request gets 503."""


def _no_sessions() -> Mapping[str, int]:
    return {}


@dataclass(frozen=True)
class Site:
    """What the handlers need: the config, the store, and the open IMAP/POP3 sessions."""

    config: Config
    store: Store
    sessions: Callable[[], Mapping[str, int]] = field(default=_no_sessions)

    async def serves(self, domain: str) -> bool:
        """Whether ``domain`` is one of ours (StoreUnavailable if the store cannot say)."""
        try:
            name = normalize_domain(domain)
        except AddressError:
            return False
        if not name or name.startswith("["):
            return False
        try:
            async with asyncio.timeout(STORE_TIMEOUT), self.store.read() as conn:
                found = await conn.scalar(select(Domain.id).where(Domain.name == name))
        except TimeoutError:
            raise StoreUnavailable("the store did not answer in time") from None
        except (SQLAlchemyError, OSError, StoreError) as e:
            raise StoreUnavailable(describe_db_error(e)) from e
        return found is not None


SITE = web.AppKey("site", Site)


def request_host(request: web.Request) -> str:
    """The Host header's name, lower-cased, without port or trailing dot ("" if absent)."""
    host = (request.host or "").strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    if ":" in host:
        host = host.rpartition(":")[0]
    return host.rstrip(".")


def not_found(text: str = "not found") -> web.Response:
    return web.Response(status=404, text=f"{text}\n")
