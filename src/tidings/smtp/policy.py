"""Recipient policy shared by the SMTP listeners: the limit on recipients, where an address
leads, and what to answer when it leads nowhere — the one difference between them is whether
another domain may be a recipient (submission, after AUTH) or is a relay attempt (port 25)."""

from __future__ import annotations

import logging

from tidings.address import Address
from tidings.delivery import MailDelivery, RelayDenied, Resolution
from tidings.smtp.server import TidingsEnvelope
from tidings.store.db import StoreError

log = logging.getLogger(__name__)


async def accept_recipient(
    delivery: MailDelivery,
    envelope: TidingsEnvelope,
    address: Address,
    *,
    max_recipients: int,
    may_relay: bool,
) -> str | None:
    """Resolve ``address`` into ``envelope``; None when accepted, else the SMTP reply."""
    if len(envelope.rcpt_tos) >= max_recipients:
        return "452 4.5.3 Too many recipients"
    try:
        resolution = await delivery.resolve_recipient(address)
    except RelayDenied:
        if not may_relay:
            raise
        # Another domain: an authenticated user may send anywhere; the queue relays it.
        resolution = Resolution(remote=(str(address),))
    except StoreError as e:
        log.error("rcpt lookup failed: %s", e)
        return "451 4.3.0 Temporary lookup failure, try again later"
    envelope.resolutions.append(resolution)
    return None
