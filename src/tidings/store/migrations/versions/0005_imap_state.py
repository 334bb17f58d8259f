"""What IMAP sessions share through the store: expunge tombstones and the \\Recent mark.

Revision ID: 0005
Revises: 0004

``expunged`` keeps one row (UID, modseq) per message deleted from a mailbox that still exists,
so a session learns what others expunged (RFC 3501 §7.4.1 EXPUNGE responses) and QRESYNC can
answer VANISHED (RFC 7162 §3.2.10) without having seen the message go. The rows go with their
mailbox (ON DELETE CASCADE).

``mailboxes.recent_uid`` is the lowest UID not yet announced as \\Recent to any session: a
message is \\Recent only in the first session to see it (RFC 3501 §2.3.2). Existing mailboxes
start at 1: no IMAP session has seen their messages yet.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "expunged",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_expunged_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expunged")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_expunged_mailbox_id_modseq", "expunged", ["mailbox_id", "modseq"], unique=False
    )
    op.add_column(
        "mailboxes",
        sa.Column("recent_uid", sa.BigInteger(), nullable=False, server_default="1"),
    )


def downgrade() -> None:
    # A plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35), not a batch copy: with foreign keys
    # on, SQLite's DROP TABLE of the old mailboxes table would cascade to every message.
    op.drop_column("mailboxes", "recent_uid")
    op.drop_index("ix_expunged_mailbox_id_modseq", table_name="expunged")
    op.drop_table("expunged")
