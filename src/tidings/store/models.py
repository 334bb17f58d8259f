"""The tables of the Tidings store (SQLAlchemy 2 declarative models).

The schema itself is created and changed only by the Alembic migrations beside this module;
these classes describe it for queries. Addresses and domain names are stored lower-cased
(domains are case-insensitive, and Tidings treats local parts of its own accounts the same
way), so lookups are plain equality on an index.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# SQLite reuses the largest deleted rowid unless a table says AUTOINCREMENT: a new account
# could take a removed one's ids, and mail in flight for the old address would reach it.
NO_REUSE = {"sqlite_autoincrement": True}


class Domain(Base):
    __tablename__ = "domains"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    # 0 means no quota.
    quota_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sum of the sizes of the account's messages, kept in the same transactions that add and
    # remove them, so a delivery can check the quota without scanning every mailbox.
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Alias(Base):
    """One row per (source, target). A source ``@domain`` is that domain's catch-all."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("source", "target"), NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(320), index=True)
    target: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Mailbox(Base):
    __tablename__ = "mailboxes"
    __table_args__ = (UniqueConstraint("account_id", "name"), NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(1000))
    # RFC 6154 attribute such as "\\Sent", or None.
    special_use: Mapped[str | None] = mapped_column(String(32), nullable=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger, default=1)
    highestmodseq: Mapped[int] = mapped_column(BigInteger, default=1)
    subscribed: Mapped[bool] = mapped_column(Boolean, default=True)
    # The lowest UID not yet announced as \Recent to any IMAP session (RFC 3501 §2.3.2).
    recent_uid: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")


class Blob(Base):
    """A message's bytes, stored once per delivery and shared by every copy of it."""

    __tablename__ = "blobs"
    __table_args__ = (NO_REUSE,)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # What IMAP needs of the bytes (tidings.mime.MessageInfo.to_json()), computed at delivery;
    # NULL when not computed yet (older rows, queue-only messages): see filing.blob_structure.
    structure: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The ENVELOPE as IMAP sends it (mime.envelope_sexp), computed with ``structure``: a
    # client's first sync fetches it for every message, and reading it costs no parsing.
    envelope: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "uid"),
        Index("ix_messages_mailbox_id_modseq", "mailbox_id", "modseq"),
        NO_REUSE,
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    modseq: Mapped[int] = mapped_column(BigInteger)
    # Space-separated IMAP flags and keywords, e.g. "\\Seen \\Flagged $Label1".
    flags: Mapped[str] = mapped_column(Text, default="")
    internaldate: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), index=True)


class Expunged(Base):
    """A tombstone per message deleted from a mailbox that still exists: how a session learns
    what others expunged (RFC 3501 §7.4.1) and QRESYNC answers VANISHED (RFC 7162 §3.2.10)."""

    __tablename__ = "expunged"
    __table_args__ = (Index("ix_expunged_mailbox_id_modseq", "mailbox_id", "modseq"), NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    # The mailbox's HIGHESTMODSEQ given to the expunge.
    modseq: Mapped[int] = mapped_column(BigInteger)


class QueueItem(Base):
    """One outbound recipient of one message, waiting for the relay worker."""

    __tablename__ = "queue"
    __table_args__ = (Index("ix_queue_state_next_attempt", "state", "next_attempt"), NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), index=True)
    # The message's id from the 250 reply: its recipients share one SMTP transaction.
    queue_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    sender: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    # "queued", "sending" (claimed; next_attempt is then the end of the lease), "held";
    # delivered or bounced rows are deleted.
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # The token of the worker holding the row while it is "sending".
    claim: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The host that gave the last reply (for the queue CLI and bounces).
    remote_mta: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DkimKey(Base):
    __tablename__ = "dkim_keys"
    __table_args__ = (UniqueConstraint("domain_id", "selector"), NO_REUSE)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    selector: Mapped[str] = mapped_column(String(63))
    algorithm: Mapped[str] = mapped_column(String(16))
    private_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DirectorySerial(Base):
    """One row: moved on by every change to domains, accounts, aliases or mailbox names; and
    the last UIDVALIDITY given to a mailbox."""

    __tablename__ = "directory_serial"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
