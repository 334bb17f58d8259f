"""The MTA-STS policy (RFC 8461 §3.2) at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``.

Senders fetch it over HTTPS from the host ``mta-sts.`` + the recipient domain, with a
certificate valid for that name (§3.3), after seeing the ``_mta-sts`` TXT record whose ``id``
says when it changed. The text comes from :func:`tidings.dnsrecords.configured_mta_sts_policy`, the
same function ``tidings dns records`` derives that ``id`` from, so the two cannot disagree: change
``mta_sts.mode`` or ``max_age`` (or the host name) and the printed record's id changes with it.
"""

from __future__ import annotations

from aiohttp import web

from tidings.dnsrecords import configured_mta_sts_policy
from tidings.web.site import SITE, not_found, request_host

POLICY_PATH = "/.well-known/mta-sts.txt"
POLICY_HOST_PREFIX = "mta-sts."


def policy_domain(host: str) -> str | None:
    """``mta-sts.example.org`` → ``example.org``; None for any other host name (§3.3)."""
    if not host.startswith(POLICY_HOST_PREFIX):
        return None
    return host.removeprefix(POLICY_HOST_PREFIX) or None


async def policy(request: web.Request) -> web.Response:
    site = request.app[SITE]
    domain = policy_domain(request_host(request))
    if domain is None or not await site.serves(domain):
        return not_found("no MTA-STS policy for this host")
    # §3.3: the media type is text/plain.
    return web.Response(
        text=configured_mta_sts_policy(site.config), content_type="text/plain", charset="utf-8"
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(POLICY_PATH, policy)
