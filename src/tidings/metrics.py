"""What Tidings counts, in Prometheus terms, served at ``/metrics`` by the HTTP listener.

Counters and gauges live in one registry of their own (:data:`REGISTRY`), not the library's
global one, so nothing a dependency registers leaks into the output. The call sites count with
one line each through the small functions below; the label values are fixed sets chosen here,
never text a client sent, so the number of series stays bounded.

Gauges that describe the store (queue size, the oldest queued message) and the open IMAP/POP3
sessions are not kept up to date by the code that changes them: the HTTP handler computes
them when it is scraped (:func:`set_queue`, :func:`set_sessions`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

P = TypeVar("P")

# The *_created series (when each counter was made) would double the output for nothing a
# dashboard uses; the process start time says the same.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

CONNECTIONS = Counter(
    "tidings_connections",
    "Connections accepted, by listener (the listen.* key).",
    ["listener"],
    registry=REGISTRY,
)
SMTP_ACCEPTED = Counter(
    "tidings_smtp_messages_accepted",
    "Messages acknowledged with 250 after DATA/BDAT, by service (smtp: the MX listener; "
    "submission: 587 and 465).",
    ["service"],
    registry=REGISTRY,
)
SMTP_REJECTED = Counter(
    "tidings_smtp_rejections",
    "Senders, recipients and messages refused by policy, by service, stage (mail, rcpt, data) "
    "and reason.",
    ["service", "stage", "reason"],
    registry=REGISTRY,
)
MAILAUTH = Counter(
    "tidings_mailauth_results",
    "SPF, DKIM (one per signature; none without any) and DMARC results of inbound mail.",
    ["method", "result"],
    registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "tidings_delivery_attempts",
    "Outbound delivery attempts per recipient, by result: sent, deferred (retried later) or "
    "bounced (failed for good or expired; a DSN goes to the sender).",
    ["result"],
    registry=REGISTRY,
)
LOGINS = Counter(
    "tidings_logins",
    "Successful logins, by protocol (imap, pop3, submission).",
    ["protocol"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "tidings_auth_failures",
    "Failed logins, by protocol and reason (invalid: wrong user or password; rate_limited: "
    "too many failures; unavailable: the store could not be asked).",
    ["protocol", "reason"],
    registry=REGISTRY,
)
SESSIONS = Gauge(
    "tidings_sessions",
    "Open IMAP and POP3 connections (logged in or not), at the time of the scrape.",
    ["protocol"],
    registry=REGISTRY,
)
QUEUE_SIZE = Gauge(
    "tidings_queue_size",
    "Outbound queue rows (one per recipient), by state (queued, sending, held).",
    ["state"],
    registry=REGISTRY,
)
QUEUE_OLDEST = Gauge(
    "tidings_queue_oldest_age_seconds",
    "Age of the oldest message in the outbound queue (0 when it is empty).",
    registry=REGISTRY,
)
STORE_UP = Gauge(
    "tidings_store_up",
    "1 if the store answered the scrape's queue query, else 0 (the queue gauges then keep "
    "their last values).",
    registry=REGISTRY,
)

SERVICES = ("smtp", "submission")
DELIVERY_RESULTS = ("sent", "deferred", "bounced")
SESSION_PROTOCOLS = ("imap", "pop3")
LOGIN_PROTOCOLS = ("imap", "pop3", "submission")
QUEUE_STATES = ("queued", "sending", "held")

# Series that exist (at 0) before the first event, so a rate() over them starts from zero.
for _service in SERVICES:
    SMTP_ACCEPTED.labels(_service)
for _result in DELIVERY_RESULTS:
    DELIVERY_ATTEMPTS.labels(_result)
for _protocol in LOGIN_PROTOCOLS:
    LOGINS.labels(_protocol)
    AUTH_FAILURES.labels(_protocol, "invalid")
for _protocol in SESSION_PROTOCOLS:
    SESSIONS.labels(_protocol)
for _state in QUEUE_STATES:
    QUEUE_SIZE.labels(_state)


# --- call sites --------------------------------------------------------------------------------


def counted(listener: str, factory: Callable[[], P]) -> Callable[[], P]:
    """A listener's protocol factory that counts each connection it is called for."""
    child = CONNECTIONS.labels(listener)

    def make() -> P:
        child.inc()
        return factory()

    return make


# Refusals worth telling apart, by the reply's basic and enhanced code (RFC 3463). Anything
# else is counted under its enhanced code, or its basic code when it has none: values that
# come from Tidings' own replies, a small fixed set.
REASONS = {
    "550 5.1.1": "unknown_recipient",
    "554 5.7.1": "relay_denied",
    "550 5.7.1": "dmarc_reject",
    "553 5.7.1": "sender_not_owned",
    "452 4.2.2": "mailbox_full",
    "452 4.5.3": "too_many_recipients",
    "552 5.3.4": "too_big",
    "550 5.6.11": "bare_line_ending",
    "550 5.6.0": "bad_header",
    "451 4.3.0": "temporary_failure",
    "452 4.3.1": "storage_full",
    "451 4.7.24": "spf_temperror",
    "451 4.7.0": "dmarc_temperror",
    "451 4.7.5": "dkim_temperror",
}
_CODES = re.compile(r"^(\d{3})[ -]?(\d\.\d{1,3}\.\d{1,3})?")


def rejection_reason(reply: str) -> str:
    """A short label for an SMTP refusal, from its codes: ``"550 5.1.1 <x>: …"`` →
    ``unknown_recipient``."""
    m = _CODES.match(reply)
    if not m:
        return "other"
    basic, enhanced = m.group(1), m.group(2)
    if enhanced is None:
        return basic
    return REASONS.get(f"{basic} {enhanced}", enhanced)


def smtp_reply(service: str, stage: str, reply: str | None) -> None:
    """Count what the policy hooks answered at ``stage`` (mail, rcpt, data): a 2xx at the end
    of data is an accepted message, any 4xx/5xx a refusal; None is an accepted MAIL/RCPT."""
    if reply is None or reply.startswith("2"):
        if stage == "data":
            SMTP_ACCEPTED.labels(service).inc()
        return
    SMTP_REJECTED.labels(service, stage, rejection_reason(reply)).inc()


def mailauth_results(spf: str, dkim: Iterable[str], dmarc: str) -> None:
    """One inbound message's verdicts (the results' RFC 8601 names)."""
    _mailauth("spf", str(spf)).inc()
    results = list(dkim) or ["none"]
    for result in results:
        _mailauth("dkim", str(result)).inc()
    _mailauth("dmarc", str(dmarc)).inc()


@functools.cache
def _mailauth(method: str, result: str) -> Counter:
    """The counter of one (method, result): a few dozen pairs in all, each looked up for every
    inbound message (``labels()`` takes a lock and builds a key each time)."""
    return MAILAUTH.labels(method, result)


def deliveries(*, sent: int, deferred: int, bounced: int) -> None:
    """The outcomes of one batch of outbound attempts, in recipients."""
    for result, count in (("sent", sent), ("deferred", deferred), ("bounced", bounced)):
        if count:
            DELIVERY_ATTEMPTS.labels(result).inc(count)


def login(protocol: str) -> None:
    LOGINS.labels(protocol).inc()


def auth_failure(protocol: str, reason: str) -> None:
    AUTH_FAILURES.labels(protocol, reason).inc()


# --- scrape time -------------------------------------------------------------------------------


def set_sessions(counts: Mapping[str, int]) -> None:
    for protocol, count in counts.items():
        SESSIONS.labels(protocol).set(count)


def set_queue(sizes: Mapping[str, int], oldest_age: float | None) -> None:
    """The queue as the store has it now: rows by state, and the oldest row's age."""
    for state in {*QUEUE_STATES, *sizes}:
        QUEUE_SIZE.labels(state).set(sizes.get(state, 0))
    QUEUE_OLDEST.set(max(0.0, oldest_age) if oldest_age is not None else 0.0)
    STORE_UP.set(1)


def store_down() -> None:
    STORE_UP.set(0)


def exposition() -> bytes:
    """Every metric in the Prometheus text exposition format."""
    return generate_latest(REGISTRY)


__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "auth_failure",
    "counted",
    "deliveries",
    "exposition",
    "login",
    "mailauth_results",
    "rejection_reason",
    "set_queue",
    "set_sessions",
    "smtp_reply",
    "store_down",
]
