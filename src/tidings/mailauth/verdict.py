"""One inbound message's verdict: SPF, DKIM and DMARC together, and what to do about it.

The SMTP handler starts SPF at MAIL FROM (it needs only the envelope) and calls :func:`judge`
with the message at the end of DATA. The verdict says which Authentication-Results field to
prepend, where the message goes (DMARC p=quarantine → Junk) or the reply that refuses it:
``550 5.7.1`` for a DMARC reject, ``451`` when a DNS failure could have changed the outcome,
so the sender retries instead of bouncing (RFC 7489 §6.6.3, RFC 7372).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tidings.dns import Resolver
from tidings.mailauth import dkim as dkim_
from tidings.mailauth import dmarc as dmarc_
from tidings.mailauth import spf as spf_
from tidings.mailauth.results import authentication_results, strip_authentication_results


@dataclass(frozen=True)
class Verdict:
    message: bytes  # the message without forged Authentication-Results fields
    header: bytes  # our Authentication-Results field, CRLF-terminated
    disposition: dmarc_.Policy
    refusal: str | None  # an SMTP reply refusing the message, or None to deliver it


async def judge(
    resolver: Resolver,
    message: bytes,
    spf: spf_.SPFResult,
    *,
    authserv_id: str,
    ceiling: dmarc_.Policy = dmarc_.Policy.REJECT,
) -> Verdict:
    """Authenticate ``message`` (DKIM, DMARC with ``spf``) and decide its fate."""
    message = await asyncio.to_thread(strip_authentication_results, message, authserv_id)
    dkim = await dkim_.verify_message(resolver, message)
    dmarc = await dmarc_.check_dmarc(resolver, message, spf=spf, dkim=dkim)
    header = authentication_results(authserv_id, spf=spf, dkim=dkim, dmarc=dmarc)
    disposition = dmarc_.dmarc_disposition(dmarc, ceiling=ceiling)
    return Verdict(message, header, disposition, _refusal(spf, dkim, dmarc, disposition))


def _refusal(
    spf: spf_.SPFResult,
    dkim: tuple[dkim_.DKIMResult, ...],
    dmarc: dmarc_.DMARCResult,
    disposition: dmarc_.Policy,
) -> str | None:
    if spf.result is spf_.Result.TEMPERROR:
        return f"451 4.7.24 Temporary DNS failure checking SPF for {spf.domain}; try again later"
    if dmarc.result is dmarc_.Result.TEMPERROR:
        return (
            "451 4.7.0 Temporary DNS failure looking up the DMARC policy of "
            f"{dmarc.header_from}; try again later"
        )
    dkim_unsure = any(r.result is dkim_.Result.TEMPERROR for r in dkim)
    if dmarc.result is dmarc_.Result.FAIL and dkim_unsure and disposition is not dmarc_.Policy.NONE:
        return "451 4.7.5 Temporary DNS failure verifying a DKIM signature; try again later"
    if disposition is dmarc_.Policy.REJECT:
        # RFC 7489 §10.3's suggested wording.
        return f"550 5.7.1 Email rejected per DMARC policy for {dmarc.policy_domain}"
    return None
