"""The directory serial and the last UIDVALIDITY given out.

Revision ID: 0002
Revises: 0001

Every change to domains, accounts, aliases or mailboxes moves the serial on; delivery caches
where recipients lead and polls this one row to know when to forget. New
mailboxes take their UIDVALIDITY from it, so none is ever given twice, even to a mailbox
created again after its account was removed.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "directory_serial",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_serial")),
    )
    op.bulk_insert(table, [{"id": 1, "serial": 0, "uidvalidity": 0}])


def downgrade() -> None:
    op.drop_table("directory_serial")
