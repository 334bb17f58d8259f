"""An index on messages (mailbox_id, modseq): what changed in a mailbox since a modseq.

Revision ID: 0006
Revises: 0005

Every IMAP session that is told of a change (IDLE, any command after another session's STORE
or new mail) asks for the rows of its mailbox above its modseq. Without this index that read
scans the whole mailbox: about 20 ms on a 20,000-message mailbox for each waking session.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_mailbox_id_modseq", "messages", ["mailbox_id", "modseq"])


def downgrade() -> None:
    op.drop_index("ix_messages_mailbox_id_modseq", table_name="messages")
