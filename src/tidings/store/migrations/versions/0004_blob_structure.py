"""Blobs carry their message's IMAP analysis (envelope, MIME structure, SEARCH headers).

Revision ID: 0004
Revises: 0003

``structure`` is ``tidings.mime.MessageInfo.to_json()`` of the blob's bytes, computed once at
delivery, off the event loop, so that FETCH and SEARCH never parse MIME again. One blob is
shared by every copy of a message, so the analysis is stored once. NULL means not computed
(rows delivered before this revision, queue-only messages, a message the analysis failed on):
readers compute it then, and store it (store.filing.blob_structure).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("blobs", sa.Column("structure", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("structure")
