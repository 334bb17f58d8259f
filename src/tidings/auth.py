"""Passwords: Argon2id hashes (argon2-cffi), checked off the event loop; SASL PLAIN and LOGIN
decoding; and the auth-failure limiter that POP3 and IMAP share.

A hash costs tens of milliseconds of CPU on purpose; servers call :func:`verify_password_async`
so that one login never stalls every other session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import secrets
import time
from collections import deque
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2-cffi's defaults: Argon2id, RFC 9106 low-memory profile


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_async(password_hash: str, password: str) -> bool:
    return await asyncio.to_thread(verify_password, password_hash, password)


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
        them has failed.
        """
        if self.blocked(ip, account):
            return False
        self.record_failure(ip, account)
        return True

    def withdraw(self, ip: str, account: str | None = None) -> None:
        """Take back one attempt reserved by :meth:`try_attempt` (it succeeded)."""
        keys = ["ip " + client_key(ip)]
        if account:
            keys.append("account " + account.lower())
        for key in keys:
            times = self._failures.get(key)
            if times:
                times.pop()
                if not times:
                    del self._failures[key]

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
