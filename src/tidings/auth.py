"""Passwords: Argon2id hashes (argon2-cffi), checked off the event loop; SASL PLAIN and LOGIN
decoding; the auth-failure limiter; and the login check every protocol shares.

A hash costs tens of milliseconds of CPU on purpose; servers call :func:`verify_password_async`
so that one login never stalls every other session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import SQLAlchemyError

from tidings import metrics
from tidings.store.accounts import AdminError, account_address, get_password_hash
from tidings.store.db import Store, StoreError, describe_db_error

log = logging.getLogger(__name__)

_hasher = PasswordHasher()  # argon2-cffi's defaults: Argon2id, RFC 9106 low-memory profile


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# One Argon2 check takes 64 MiB and a core for tens of milliseconds: checks run on as many
# threads as there are cores, so a burst of logins queues instead of taking 64 MiB per thread
# of the default pool (a 20-session login storm peaked at 460 MiB before).
_hashing = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="tidings-argon2")


async def verify_password_async(password_hash: str, password: str) -> bool:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_hashing, verify_password, password_hash, password)


def generate_password() -> str:
    """A password for generated accounts: 20 URL-safe characters (~120 bits)."""
    return secrets.token_urlsafe(15)


# --- SASL (RFC 4422) mechanisms shared by POP3 AUTH and IMAP AUTHENTICATE ----------------------


class SaslError(Exception):
    """A SASL exchange that cannot go on: bad base64, a malformed response, a cancel."""


def decode_base64(text: str) -> bytes:
    """Strict base64 of a SASL response (RFC 4648 §4: no whitespace, correct padding)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SaslError("Invalid base64 data") from None


def decode_plain(response: bytes) -> tuple[str, str]:
    """RFC 4616 §2: ``[authzid] NUL authcid NUL passwd`` → (authcid, password).

    An authorization identity other than the authentication identity is refused: Tidings has
    no proxy users, so acting as someone else is never allowed.
    """
    parts = response.split(b"\0")
    if len(parts) != 3:
        raise SaslError("Malformed PLAIN response")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN response is not UTF-8") from None
    if not authcid or not password:
        raise SaslError("Malformed PLAIN response")
    if authzid and authzid.lower() != authcid.lower():
        raise SaslError("Authorization identity must be the authentication identity")
    return authcid, password


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None


# The challenges of the LOGIN mechanism (draft-murchison-sasl-login): "Username:", "Password:".
LOGIN_USERNAME_CHALLENGE = base64.b64encode(b"Username:").decode()
LOGIN_PASSWORD_CHALLENGE = base64.b64encode(b"Password:").decode()


# --- auth-failure rate limiting ------------------------------------------------------------------


def client_key(ip: str) -> str:
    """The unit an IP-based limit counts: an IPv4 address, or an IPv6 /64.

    One IPv6 host usually owns a whole /64, so counting single addresses would let it try
    2^64 times as often as an IPv4 host.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class AuthFailureLimiter:
    """Counts failed logins per client (IP or IPv6 /64) and per account in a sliding window.

    A client or account past its limit is refused without its password being checked, until
    enough of its failures are older than the window, so guessing is capped at the limit per
    window however fast the guesser is. The per-account limit also stops guessing spread over
    many addresses; its price is that a guesser can keep the real user out for a window, which
    is why it is set higher than the per-client one. Counts live in this process only.
    """

    MAX_KEYS = 100_000

    def __init__(
        self,
        max_per_client: int,
        max_per_account: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_client = max_per_client
        self.max_per_account = max_per_account
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        # Of those, attempts still being checked (reserved by try_attempt).
        self._pending: dict[str, int] = {}

    def _recent(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def blocked(self, ip: str, account: str | None = None) -> bool:
        """Whether an attempt from ``ip`` (for ``account``, if known yet) must be refused."""
        now = self.clock()
        if self.max_per_client and self._recent("ip " + client_key(ip), now) >= self.max_per_client:
            return True
        return bool(
            account
            and self.max_per_account
            and self._recent("account " + account.lower(), now) >= self.max_per_account
        )

    def try_attempt(self, ip: str, account: str | None = None) -> bool:
        """Reserve one login attempt; False when the client or account is over its limit.

        The attempt counts as a failure from now until :meth:`withdraw` takes it back after a
        success, so that many attempts in parallel cannot all pass the check before any of
        them has failed; :meth:`settle` turns it into a real failure.
        """
        if self.blocked(ip, account):
            return False
        self.record_failure(ip, account)
        for key in self._keys(ip, account):
            self._pending[key] = self._pending.get(key, 0) + 1
        return True

    def withdraw(self, ip: str, account: str | None = None) -> None:
        """Take back one attempt reserved by :meth:`try_attempt` (it succeeded)."""
        for key in self._keys(ip, account):
            self._unpend(key)
            times = self._failures.get(key)
            if times:
                times.pop()
                if not times:
                    del self._failures[key]

    def settle(self, ip: str, account: str | None = None) -> None:
        """The attempt reserved by :meth:`try_attempt` failed: it stays counted."""
        for key in self._keys(ip, account):
            self._unpend(key)

    def failed_out(self, ip: str, account: str | None = None) -> bool:
        """Whether failures alone — not attempts still in progress — reach a limit: the
        difference between "try again later" and "wait for the others to finish"."""
        now = self.clock()
        for key, limit in (
            ("ip " + client_key(ip), self.max_per_client),
            ("account " + (account or "").lower(), self.max_per_account if account else 0),
        ):
            if limit and self._recent(key, now) - self._pending.get(key, 0) >= limit:
                return True
        return False

    def _keys(self, ip: str, account: str | None) -> list[str]:
        keys = ["ip " + client_key(ip)]
        if account:
            keys.append("account " + account.lower())
        return keys

    def _unpend(self, key: str) -> None:
        if self._pending.get(key, 0) > 1:
            self._pending[key] -= 1
        else:
            self._pending.pop(key, None)

    def record_failure(self, ip: str, account: str | None = None) -> None:
        now = self.clock()
        if len(self._failures) >= self.MAX_KEYS:
            self._prune(now)
        keys = ["ip " + client_key(ip)]
        if account:
            keys.append("account " + account.lower())
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        while len(self._failures) >= self.MAX_KEYS:  # still full of fresh keys: forget the oldest
            del self._failures[next(iter(self._failures))]


# --- checking a login against the store ----------------------------------------------------------


# How long a login waits for a free attempt while the client's other logins are checked. Each
# check is ~130 ms of a core: an office behind one NAT address whose 200 clients log in at
# 9 o'clock needs tens of seconds, and only failures, not waiting, should refuse anyone.
RESERVE_WAIT_SECONDS = 60.0


class LoginRefused(Exception):
    """A login that did not succeed; ``temporary`` when the fault is ours or the client is
    rate-limited (try later), not a wrong password."""

    def __init__(self, reason: str, *, temporary: bool) -> None:
        super().__init__(reason)
        self.temporary = temporary


class Authenticator:
    """Checks user name and password for every protocol that takes them (POP3, submission,
    IMAP), through one limiter: a guesser gains nothing by switching between them."""

    def __init__(self, store: Store, limiter: AuthFailureLimiter, failure_delay: float) -> None:
        self.store = store
        self.limiter = limiter
        self.failure_delay = failure_delay
        self._dummy_hash: str | None = None

    async def login(self, ip: str, user: str, password: str, protocol: str) -> str:
        """The account address ``user`` names if ``password`` is its password; else
        LoginRefused, after ``failure_delay`` for a wrong password."""
        try:
            address: str | None = account_address(user)
        except AdminError:
            address = None
        await self._reserve(ip, address or user, protocol)
        try:
            stored_hash = await get_password_hash(self.store, address) if address else None
        except (SQLAlchemyError, OSError, StoreError) as e:
            self.limiter.withdraw(ip, address or user)  # our failure, not the client's
            metrics.auth_failure(protocol, "unavailable")
            log.error("%s %s: login: %s", protocol, ip, describe_db_error(e))
            raise LoginRefused("Temporary server failure, try again later", temporary=True) from e
        # An unknown user costs a hash check too, so the reply time does not tell who exists.
        valid = await verify_password_async(stored_hash or await self._dummy(), password)
        if not (valid and stored_hash and address):
            self.limiter.settle(ip, address or user)
            log.info("%s %s: authentication failed for %r", protocol, ip, user)
            metrics.auth_failure(protocol, "invalid")
            await asyncio.sleep(self.failure_delay)
            raise LoginRefused("Authentication failed", temporary=False)
        self.limiter.withdraw(ip, address)
        log.info("%s %s: %s logged in", protocol, ip, address)
        metrics.login(protocol)
        return address

    async def _reserve(self, ip: str, account: str, protocol: str) -> None:
        """Reserve an attempt. While only attempts in progress fill the budget (a client
        opening many sessions at once), wait for them to finish instead of refusing."""
        deadline = asyncio.get_running_loop().time() + RESERVE_WAIT_SECONDS
        while not self.limiter.try_attempt(ip, account):
            if self.limiter.failed_out(ip, account) or (
                asyncio.get_running_loop().time() > deadline
            ):
                log.warning("%s %s: login for %r refused: too many failures", protocol, ip, account)
                metrics.auth_failure(protocol, "rate_limited")
                raise LoginRefused("Too many failed logins; try again later", temporary=True)
            await asyncio.sleep(0.02)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, "not anyone's password")
        return self._dummy_hash
