"""DKIM signing keys: what ``tidings dkim`` changes and submission signs with.

A key's private half lives only in the ``dkim_keys`` table, never in a file; its public half is
published in DNS, and ``tidings dns records`` derives that record from the row. Adding or
removing a key moves the directory serial on, in the same transaction, so running servers
reload their keys (see :func:`~tidings.store.accounts.bump_directory`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.address import AddressError, parse_domain
from tidings.mailauth.signing import SigningError, SigningKey, key_type, load_signing_key
from tidings.store.accounts import AdminError, directory_change, now
from tidings.store.db import Store
from tidings.store.models import DkimKey, Domain

log = logging.getLogger(__name__)

MAX_SELECTOR = 63  # the column's width
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class DkimKeyInfo:
    """One stored key as the administrator sees it; ``created`` is ISO 8601 in UTC."""

    domain: str
    selector: str
    algorithm: str
    created: str


def selector_name(text: str) -> str:
    """A selector given by an administrator → stored form (lower case), or AdminError.

    RFC 6376 §3.1: dot-separated labels of letters, digits and inner hyphens (RFC 5321's
    sub-domain), since it becomes part of the DNS name ``<selector>._domainkey.<domain>``.
    """
    selector = text.strip().lower()
    if len(selector) > MAX_SELECTOR or not _SELECTOR.fullmatch(selector):
        raise AdminError(
            f"bad selector {text!r}: use letters, digits, inner hyphens and dots, "
            f"at most {MAX_SELECTOR} characters"
        )
    return selector


def default_selector(algorithm: str, day: date | None = None) -> str:
    """``t`` + the UTC date + ``r`` (RSA) or ``e`` (Ed25519), e.g. ``t20261123r``: dated, so
    a rotation picks a new name by itself, and the key type in it, so the RSA and Ed25519 keys
    of a dual-signing domain, made the same day, do not clash."""
    day = day or datetime.now(UTC).date()
    return f"t{day:%Y%m%d}{'r' if key_type(algorithm) == 'rsa' else 'e'}"


def _domain(text: str) -> str:
    try:
        return parse_domain(text)
    except AddressError as e:
        raise AdminError(str(e)) from None


async def _domain_id(conn: AsyncConnection, name: str) -> int:
    domain_id = await conn.scalar(select(Domain.id).where(Domain.name == name))
    if domain_id is None:
        raise AdminError(f"unknown domain {name!r} (add it with `tidings domain add {name}`)")
    return domain_id


def _iso(moment: datetime) -> str:
    # SQLite gives back naive datetimes; every one Tidings writes is UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def add_key(
    store: Store, domain: str, selector: str, algorithm: str, pem: str
) -> DkimKeyInfo:
    """Store ``pem`` as ``domain``'s key under ``selector``; AdminError for a domain that is
    not ours or a selector the domain already uses."""
    domain, selector = _domain(domain), selector_name(selector)
    try:
        kind = key_type(algorithm)
        load_signing_key(domain, selector, kind, pem)  # refuse a key that could not sign
    except SigningError as e:
        raise AdminError(str(e)) from None
    created = now()
    taken = (
        f"domain {domain!r} already has a DKIM key with selector {selector!r} "
        "(choose another with --selector)"
    )
    try:
        async with directory_change(store) as conn:
            domain_id = await _domain_id(conn, domain)
            exists = await conn.scalar(
                select(DkimKey.id).where(
                    DkimKey.domain_id == domain_id, DkimKey.selector == selector
                )
            )
            if exists is not None:
                raise AdminError(taken)
            await conn.execute(
                insert(DkimKey).values(
                    domain_id=domain_id,
                    selector=selector,
                    algorithm=kind,
                    private_key=pem,
                    created_at=created,
                )
            )
    except IntegrityError:  # the same selector added at the same moment by another process
        raise AdminError(taken) from None
    return DkimKeyInfo(domain, selector, kind, _iso(created))


async def list_keys(store: Store, domain: str | None = None) -> list[DkimKeyInfo]:
    """Every key, or one domain's (AdminError if it is not ours), by domain then selector."""
    async with store.read() as conn:
        query = select(Domain.name, DkimKey.selector, DkimKey.algorithm, DkimKey.created_at).join(
            Domain, Domain.id == DkimKey.domain_id
        )
        if domain:
            query = query.where(DkimKey.domain_id == await _domain_id(conn, _domain(domain)))
        rows = await conn.execute(query.order_by(Domain.name, DkimKey.selector))
        return [
            DkimKeyInfo(name, selector, _algorithm_label(algorithm), _iso(created))
            for name, selector, algorithm, created in rows
        ]


def _algorithm_label(stored: str) -> str:
    try:
        return key_type(stored)
    except SigningError:
        return stored


async def remove_key(store: Store, domain: str, selector: str) -> None:
    """Delete one key; AdminError when the domain or the key does not exist."""
    domain, selector = _domain(domain), selector_name(selector)
    async with directory_change(store) as conn:
        domain_id = await _domain_id(conn, domain)
        result = await conn.execute(
            delete(DkimKey).where(DkimKey.domain_id == domain_id, DkimKey.selector == selector)
        )
        if not result.rowcount:
            raise AdminError(f"domain {domain!r} has no DKIM key with selector {selector!r}")


def signing_keys(conn: Connection) -> dict[str, list[SigningKey]]:
    """Every domain's signing keys, by domain name (for ``Store.run_read``). Parsed keys are
    cached by :func:`load_signing_key`, so this is cheap to call after every directory change.

    A key that cannot sign (an unreadable PEM written by hand) is logged and left out: one
    broken row must not stop the other domains' mail from being signed.
    """
    rows = conn.execute(
        select(Domain.name, DkimKey.selector, DkimKey.algorithm, DkimKey.private_key)
        .join(Domain, Domain.id == DkimKey.domain_id)
        .order_by(Domain.name, DkimKey.created_at, DkimKey.selector)
    )
    keys: dict[str, list[SigningKey]] = {}
    for domain, selector, algorithm, pem in rows:
        try:
            key = load_signing_key(domain, selector, algorithm, pem)
        except SigningError as e:
            log.error("not signing with it: %s", e)
            continue
        keys.setdefault(key.domain, []).append(key)
    return keys


__all__ = [
    "DkimKeyInfo",
    "add_key",
    "default_selector",
    "list_keys",
    "remove_key",
    "selector_name",
    "signing_keys",
]
