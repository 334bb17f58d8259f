"""Queue rows carry their message's queue id and the claim of the worker sending them.

Revision ID: 0003
Revises: 0002

The queue id (the one in the 250 reply) groups one message's recipients for one SMTP
transaction and names the message in the queue CLI and the logs. The claim token lets a worker
finish only rows it still holds: a row whose lease ran out (its worker died) may have been
taken by another process since.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("queue", sa.Column("queue_id", sa.String(length=32), nullable=True))
    op.add_column("queue", sa.Column("claim", sa.String(length=32), nullable=True))
    op.add_column("queue", sa.Column("remote_mta", sa.String(length=255), nullable=True))
    op.create_index(op.f("ix_queue_queue_id"), "queue", ["queue_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_queue_queue_id"), table_name="queue")
    with op.batch_alter_table("queue") as batch:
        batch.drop_column("remote_mta")
        batch.drop_column("claim")
        batch.drop_column("queue_id")
