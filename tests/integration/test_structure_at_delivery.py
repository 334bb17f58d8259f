"""Each message's IMAP analysis is computed once at delivery and stored beside its bytes.

Delivery runs ``mime.analyze`` for a batch's messages with local copies in one thread hand-over
and stores ``MessageInfo.to_json()`` in ``blobs.structure``; queue-only messages get none, and
a message the analysis fails on is delivered all the same, with NULL, which
``filing.blob_structure`` fills in on first use.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from helpers import TidingsServer, add_alias, add_users, open_store, queued
from tidings import delivery as delivery_module
from tidings import mime
from tidings.address import parse_mailbox
from tidings.config import DeliveryConfig
from tidings.delivery import Delivery, MailDelivery
from tidings.mime import MessageInfo, analyze
from tidings.store import accounts
from tidings.store.db import MIGRATIONS_DIR, SCHEMA_HEAD, Store
from tidings.store.filing import blob_structure
from tidings.store.models import Account, Blob, Mailbox, Message, QueueItem

ALICE = "alice@example.org"
BOB = "bob@example.org"
SUBJECT = "Grüße aus Köln — ✓"
ATTACHMENT = bytes(range(256)) * 4


def multipart_message() -> bytes:
    encoded_subject = "=?UTF-8?B?" + base64.b64encode(SUBJECT.encode()).decode() + "?="
    attachment = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")
    return (
        b"From: =?ISO-8859-1?Q?J=F6rg?= <jorg@sender.example>\r\n"
        b"To: Alice <alice@example.org>\r\n"
        b"Subject: " + encoded_subject.encode() + b"\r\n"
        b"Date: Wed, 17 Jul 1996 02:23:25 +0530\r\n"
        b"Message-ID: <multi-1@sender.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="=_outer"\r\n'
        b"\r\n"
        b"This is a multi-part message in MIME format.\r\n"
        b"--=_outer\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"Hallo Alice, die Datei h\xc3\xa4ngt an.\r\n"
        b"--=_outer\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''K%C3%B6ln.bin\r\n"
        b"\r\n" + attachment + b"--=_outer--\r\n"
    )


# Unterminated multipart, a part whose header never ends, a field without a colon, 8-bit bytes
# in the header and an encoded-word in an unknown charset: analyze degrades, never refuses.
MALFORMED = (
    b"From: broken@sender.example\r\n"
    b"Subject: =?x-unknown?Q?caf=E9?= \xff\xfe\r\n"
    b"this line has no colon\r\n"
    b'Content-Type: multipart/mixed; boundary="b"; charset="unterminated\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner without a blank line\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain\r\n"
)


async def local_blobs(db_url: str, address: str) -> list[tuple[bytes, str | None]]:
    """(bytes, structure) of the blobs of ``address``'s INBOX, in UID order."""
    async with open_store(db_url) as store, store.read() as conn:
        rows = await conn.execute(
            select(Blob.data, Blob.structure)
            .join(Message, Message.blob_id == Blob.id)
            .join(Mailbox, Mailbox.id == Message.mailbox_id)
            .join(Account, Account.id == Mailbox.account_id)
            .where(Account.address == address, Mailbox.name == "INBOX")
            .order_by(Message.uid)
        )
        return [(bytes(data), structure) for data, structure in rows]


async def queued_blobs(db_url: str) -> list[tuple[bytes, str | None]]:
    async with open_store(db_url) as store, store.read() as conn:
        rows = await conn.execute(
            select(Blob.data, Blob.structure)
            .join(QueueItem, QueueItem.blob_id == Blob.id)
            .order_by(QueueItem.id)
        )
        return [(bytes(data), structure) for data, structure in rows]


def assert_stored_analysis(data: bytes, structure: str | None) -> MessageInfo:
    assert structure is not None
    info = MessageInfo.from_json(structure)
    assert info == analyze(data)
    return info


async def test_smtp_delivery_stores_the_analysis_once_per_message(
    server: TidingsServer, db_url: str
) -> None:
    await add_users(db_url, ALICE, BOB)
    await add_alias(db_url, "carol@example.org", "carol@remote.example")
    with smtplib.SMTP(*server.smtp) as client:
        client.ehlo("client.example")
        opts = ["BODY=8BITMIME"]
        assert client.sendmail("s@sender.example", [ALICE, BOB], multipart_message(), opts) == {}
        assert (
            client.sendmail("s@sender.example", ["carol@example.org"], b"Subject: q\r\n\r\n") == {}
        )
        assert client.sendmail("s@sender.example", [ALICE], MALFORMED, opts) == {}

    (multi, _), (broken, _) = alice = await local_blobs(db_url, ALICE)
    assert multi.endswith(multipart_message())  # after the Received: field Tidings prepends
    assert broken.endswith(MALFORMED), "a malformed message is delivered as it came"
    info = assert_stored_analysis(*alice[0])
    assert info.search.subject == SUBJECT
    assert info.search.from_ == "Jörg <jorg@sender.example>"
    assert info.envelope.message_id == "<multi-1@sender.example>"
    assert (info.body.type, info.body.subtype) == ("multipart", "mixed")
    text, attachment = info.body.parts
    assert (text.type, text.subtype, text.encoding) == ("text", "plain", "8bit")
    assert attachment.disposition == "attachment"
    assert attachment.disposition_params == (("filename", "Köln.bin"),)
    assert base64.b64decode(multi[attachment.body_start : attachment.end]) == ATTACHMENT
    assert_stored_analysis(*alice[1])

    # One blob for both recipients, so one analysis.
    assert await local_blobs(db_url, BOB) == [alice[0]]
    # The forward to carol@remote.example is only queued: nothing for IMAP to read.
    assert [r for _, r in await queued(db_url)] == ["carol@remote.example"]
    ((data, structure),) = await queued_blobs(db_url)
    assert data.endswith(b"Subject: q\r\n\r\n")
    assert structure is None


async def test_one_analysis_hand_over_per_batch_for_local_copies_only(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await accounts.add_domain(store, "example.org")
    for address in (ALICE, BOB):
        await accounts.add_account(store, address, "x", 0)
    calls: list[list[bytes]] = []
    real = delivery_module._analyse_all

    def counting(contents: list[bytes]) -> list[str | None]:
        calls.append(list(contents))
        return real(contents)

    monkeypatch.setattr(delivery_module, "_analyse_all", counting)
    delivery = MailDelivery(store, DeliveryConfig(max_batch=64))
    alice = (await delivery.resolve_recipient(parse_mailbox(ALICE))).local
    bob = (await delivery.resolve_recipient(parse_mailbox(BOB))).local
    batch = []
    for i in range(12):
        content = b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i)
        if i % 3 == 0:  # remote recipients only: queued, never read by IMAP
            batch.append(Delivery(f"r{i}", "s@x.example", content, (), ("z@remote.example",)))
        else:  # some quarantined: their copies are redirected to Junk
            local = alice + bob if i % 2 else alice
            batch.append(Delivery(f"l{i}", "s@x.example", content, local, (), junk=i % 4 == 1))
    await asyncio.gather(*(delivery.deliver(d) for d in batch))

    assert calls == [[d.content for d in batch if d.local]], "one hand-over, local ones only"
    async with store.read() as conn:
        rows = (await conn.execute(select(Blob.data, Blob.structure).order_by(Blob.id))).all()
    assert len(rows) == len(batch)
    by_content = {bytes(data): structure for data, structure in rows}
    for d in batch:
        if d.local:
            assert_stored_analysis(d.content, by_content[d.content])
        else:
            assert by_content[d.content] is None


async def test_a_message_the_analysis_fails_on_is_delivered_without_it(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await accounts.add_domain(store, "example.org")
    await accounts.add_account(store, ALICE, "x", 0)
    real = mime.analyze

    def fragile(raw: bytes) -> MessageInfo:
        if b"BOOM" in raw:
            raise RecursionError("too deep")
        return real(raw)

    monkeypatch.setattr(delivery_module, "analyze", fragile)
    delivery = MailDelivery(store, DeliveryConfig())
    local = (await delivery.resolve_recipient(parse_mailbox(ALICE))).local
    good, bad = b"Subject: fine\r\n\r\nok\r\n", b"Subject: BOOM\r\n\r\nboom\r\n"
    with caplog.at_level(logging.WARNING, logger="tidings.delivery"):
        await asyncio.gather(
            delivery.deliver(Delivery("g", "", good, local, ())),
            delivery.deliver(Delivery("b", "", bad, local, ())),
        )
    assert any("MIME analysis" in r.getMessage() for r in caplog.records)
    async with store.read() as conn:
        rows = {bytes(d): i for d, i in await conn.execute(select(Blob.data, Blob.id))}
        structures = {i: s for i, s in await conn.execute(select(Blob.id, Blob.structure))}
    assert set(rows) == {good, bad}
    assert_stored_analysis(good, structures[rows[good]])
    assert structures[rows[bad]] is None
    # The reader fills it in on first use (and keeps it).
    info = await store.run_write(lambda conn: blob_structure(conn, rows[bad]))
    assert info == analyze(bad)
    async with store.read() as conn:
        stored = await conn.scalar(select(Blob.structure).where(Blob.id == rows[bad]))
    assert_stored_analysis(bad, stored)


async def test_blob_structure_reads_computes_and_stores(store: Store) -> None:
    await accounts.add_domain(store, "example.org")
    await accounts.add_account(store, ALICE, "x", 0)
    delivery = MailDelivery(store, DeliveryConfig())
    local = (await delivery.resolve_recipient(parse_mailbox(ALICE))).local
    await delivery.deliver(Delivery("m", "", multipart_message(), local, ()))
    async with store.read() as conn:
        blob_id = await conn.scalar(select(Blob.id))
    assert blob_id is not None
    expected = analyze(multipart_message())

    def structure_now(conn: Connection) -> str | None:
        return conn.scalar(select(Blob.structure).where(Blob.id == blob_id))

    def forget(value: str | None) -> Any:
        return lambda conn: conn.execute(
            update(Blob).where(Blob.id == blob_id).values(structure=value)
        )

    assert await store.run_read(lambda c: blob_structure(c, blob_id, save=False)) == expected
    # An old row (NULL): computed; stored only when asked to.
    await store.run_write(forget(None))
    assert await store.run_read(lambda c: blob_structure(c, blob_id, save=False)) == expected
    assert await store.run_read(structure_now) is None
    assert await store.run_write(lambda c: blob_structure(c, blob_id)) == expected
    assert await store.run_read(structure_now) == expected.to_json()
    # A form this version does not read is computed again.
    await store.run_write(forget("[0]"))
    assert await store.run_write(lambda c: blob_structure(c, blob_id)) == expected
    assert await store.run_read(structure_now) == expected.to_json()
    assert await store.run_read(lambda c: blob_structure(c, blob_id + 1000)) is None


def _migrate(conn: Connection, revision: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    (command.downgrade if down else command.upgrade)(cfg, revision)


async def test_migration_keeps_older_blobs_which_are_analysed_on_first_use(db_url: str) -> None:
    old = await Store.open(db_url, migrate=False)
    try:
        async with old.write() as conn:
            await conn.run_sync(_migrate, "0003")
            await conn.execute(
                Blob.__table__.insert().values(  # the 0003 columns only
                    sha256="0" * 64, size=len(MALFORMED), data=MALFORMED, created_at=accounts.now()
                )
            )
    finally:
        await old.close()
    store = await Store.open(db_url)  # upgrades to the newest revision
    try:
        assert await store.schema_version() == SCHEMA_HEAD
        async with store.read() as conn:
            ((blob_id, structure),) = (await conn.execute(select(Blob.id, Blob.structure))).all()
        assert structure is None
        info = await store.run_write(lambda c: blob_structure(c, blob_id))
        assert info == analyze(MALFORMED)
        async with store.write() as conn:
            await conn.run_sync(_migrate, "0003", down=True)
        assert await store.schema_version() == "0003"
        async with store.read() as conn:
            assert await conn.scalar(select(Blob.data)) == MALFORMED
    finally:
        await store.close()
