"""One inbound message's verdict: SPF, DKIM, ARC and DMARC together, and what to do about it.

The SMTP handler starts SPF at MAIL FROM (it needs only the envelope) and calls :func:`judge`
with the message at the end of DATA. The verdict says which Authentication-Results field to
prepend, where the message goes (DMARC p=quarantine → Junk) or the reply that refuses it:
``550 5.7.1`` for a DMARC reject, ``451`` when a DNS failure could have changed the outcome,
so the sender retries instead of bouncing (RFC 7489 §6.6.3, RFC 7372).

A DMARC failure is forgiven when the message arrives through a passing ARC chain whose most
recent sealer the site trusts (RFC 8617 §7.2; RFC 7489 §7.2 local policy override
"forwarded"): it is delivered as if the policy were none, and the DMARC resinfo says why.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidings import metrics
from tidings.dns import Resolver
from tidings.mailauth import arc as arc_
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
    # (SPF, each DKIM signature's, DMARC) results, as metrics.mailauth_results counts them.
    results: tuple[str, tuple[str, ...], str]


async def judge(
    resolver: Resolver,
    message: bytes,
    spf: spf_.SPFResult,
    *,
    authserv_id: str,
    ceiling: dmarc_.Policy = dmarc_.Policy.REJECT,
    trusted_arc_sealers: Sequence[str] = (),
    count: bool = True,
) -> Verdict:
    """Authenticate ``message`` (DKIM, ARC, DMARC with ``spf``) and decide its fate; with
    ``count``, the results go to the metrics here (a check process leaves that to the server's,
    whose metrics are the ones served)."""
    # The CPU work is done in two steps, parsing and then (after DNS for the keys) the
    # cryptography. Each runs on the loop when it is cheaper than handing it to a thread
    # (see INLINE_BYTES), else in a worker thread so that other sessions go on meanwhile.
    inline = len(message) <= INLINE_BYTES
    if inline:
        message, dkim_work, arc_work = _examine(message, authserv_id, spf.ip)
    else:
        examined = await asyncio.to_thread(_examine, message, authserv_id, spf.ip)
        message, dkim_work, arc_work = examined
    arc_keys: dict[str, list[bytes] | arc_.KeyLookup] = {}
    if arc_work.verdict is not None:  # no chain to verify: no ARC keys to fetch
        dkim_keys = await dkim_.fetch_keys(resolver, dkim_work)
    else:
        dkim_keys, arc_keys = await asyncio.gather(
            dkim_.fetch_keys(resolver, dkim_work), arc_.fetch_keys(resolver, arc_work)
        )
    if inline and _light(dkim_work, arc_work):
        dkim, arc = _verify(dkim_work, dkim_keys, arc_work, arc_keys, spf.ip)
    else:
        dkim, arc = await asyncio.to_thread(
            _verify, dkim_work, dkim_keys, arc_work, arc_keys, spf.ip
        )
    dmarc = await dmarc_.check_dmarc(resolver, message, spf=spf, dkim=dkim)
    disposition = dmarc_.dmarc_disposition(dmarc, ceiling=ceiling)
    trusted = _trusted_sealer(arc, trusted_arc_sealers)
    forgiven = trusted and arc.result is arc_.Result.PASS and dmarc.result is dmarc_.Result.FAIL
    if forgiven and disposition is not dmarc_.Policy.NONE:
        disposition = dmarc_.Policy.NONE
        note = f"{dmarc.comment}; " if dmarc.comment else ""
        override = f"{note}override=forwarded, ARC sealed by trusted {arc.latest_sealer}"
        dmarc = dataclasses.replace(dmarc, disposition=disposition, comment=override)
    header = authentication_results(
        authserv_id, spf=spf, dkim=dkim, dmarc=dmarc, extra=[arc.auth_results()]
    )
    arc_unsure = trusted and arc.temperror  # a pass here would have delivered the message
    results = (str(spf.result), tuple(str(r.result) for r in dkim), str(dmarc.result))
    if count:
        metrics.mailauth_results(*results)
    refusal = _refusal(spf, dkim, dmarc, disposition, arc_unsure)
    return Verdict(message, header, disposition, refusal, results)


# Up to this size a message is parsed and its signatures checked on the event loop. For a
# message of a few KB that is about 150 µs, less than a hand-over to a worker thread costs
# (60-100 µs of the loop's CPU, and the reply then waits for the thread to get the GIL). At this
# size it is about 0.6 ms even for a relaxed body full of WSP runs: short enough not to hold up
# the loop's other sessions noticeably. Bigger messages go to threads, a piece at a time (a
# 25 MB message holds the loop up for under 10 ms in all).
INLINE_BYTES = 64 * 1024
# At most this many signatures are checked on the loop (each RSA-2048 check is ~50 µs).
INLINE_SIGNATURES = 4


def _light(dkim_work: dkim_.Prepared, arc_work: arc_.Prepared) -> bool:
    """Whether step 3 is cheap enough for the loop: few DKIM signatures and no ARC chain
    (dkimpy verifies a chain with its own pure-Python RSA, milliseconds a seal)."""
    pending = sum(1 for s in dkim_work.signatures if isinstance(s, dkim_.Signature))
    return pending <= INLINE_SIGNATURES and arc_work.verdict is not None


def _examine(
    message: bytes, authserv_id: str, remote_ip: str
) -> tuple[bytes, dkim_.Prepared, arc_.Prepared]:
    """Step 1 of DKIM and ARC on the message without forged Authentication-Results."""
    message = strip_authentication_results(message, authserv_id)
    return message, dkim_.prepare(message), arc_.prepare(message, remote_ip)


def _verify(
    dkim_work: dkim_.Prepared,
    dkim_keys: Sequence[list[bytes] | dkim_.KeyLookup | None],
    arc_work: arc_.Prepared,
    arc_keys: Mapping[str, list[bytes] | arc_.KeyLookup],
    remote_ip: str,
) -> tuple[tuple[dkim_.DKIMResult, ...], arc_.ARCResult]:
    """Step 3 of DKIM and ARC: the cryptography, with the keys step 2 fetched."""
    dkim = dkim_.verify_prepared(dkim_work, dkim_keys) if dkim_work.signatures else ()
    return dkim, arc_.verify_prepared(arc_work, arc_keys, remote_ip)


def _trusted_sealer(arc: arc_.ARCResult, trusted: Sequence[str]) -> bool:
    """RFC 8617 §7.2: whether the last sealer (the ARC-Seal d= of instance N) is one the site
    trusts; domains compare case-insensitively, a trailing dot ignored."""
    if not arc.latest_sealer:
        return False
    return arc.latest_sealer in {t.strip().rstrip(".").lower() for t in trusted}


def _refusal(
    spf: spf_.SPFResult,
    dkim: tuple[dkim_.DKIMResult, ...],
    dmarc: dmarc_.DMARCResult,
    disposition: dmarc_.Policy,
    arc_unsure: bool = False,
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
    if dmarc.result is dmarc_.Result.FAIL and arc_unsure and disposition is not dmarc_.Policy.NONE:
        return "451 4.7.5 Temporary DNS failure verifying the ARC chain; try again later"
    if disposition is dmarc_.Policy.REJECT:
        # RFC 7489 §10.3's suggested wording.
        return f"550 5.7.1 Email rejected per DMARC policy for {dmarc.policy_domain}"
    return None
