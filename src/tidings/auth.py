"""Passwords: Argon2id hashes (argon2-cffi), checked off the event loop.

A hash costs tens of milliseconds of CPU on purpose; servers call :func:`verify_password_async`
so that one login never stalls every other session.
"""

from __future__ import annotations

import asyncio
import secrets

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
