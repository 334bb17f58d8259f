"""Blobs carry their message's ENVELOPE in IMAP wire form, beside the analysis.

Revision ID: 0007
Revises: 0006

A client's first sync asks for ENVELOPE of every message (``FETCH 1:* (… ENVELOPE)``).
Decoding the stored analysis and rendering the ENVELOPE cost about 65 µs a message; the bytes
computed once at delivery cost nothing to send. NULL (older rows, APPENDs from before this
revision): FETCH renders it from ``structure`` as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("blobs", sa.Column("envelope", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("blobs", "envelope")
