"""Reliability: the keyed audit chain (audit_chain.key_id) and delivery ids stored with the records
(messages.delivery_id, deliveries.delivery_id, each unique), so a redelivered stream entry or Celery
task is recorded once.

Existing chain rows keep key_id NULL: plain SHA-256 records from before the chain was keyed, which
verification accepts only as the chain's oldest part (docs/interfaces.md §4).

Revision ID: 0004_reliability
Revises: 0002_real_traffic
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_reliability"
down_revision = "0002_real_traffic"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN and unique indexes, no table rebuild: on SQLite a batch rebuild of `messages`, which
    # other tables reference, fails on a log with rows ("FOREIGN KEY constraint failed")
    op.add_column("audit_chain", sa.Column("key_id", sa.String(16), nullable=True))
    op.add_column("messages", sa.Column("delivery_id", sa.String(200), nullable=True))
    op.create_index("uq_messages_delivery_id", "messages", ["delivery_id"], unique=True)
    op.add_column("deliveries", sa.Column("delivery_id", sa.String(200), nullable=True))
    op.create_index("uq_deliveries_delivery_id", "deliveries", ["delivery_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_deliveries_delivery_id", table_name="deliveries")
    op.drop_index("uq_messages_delivery_id", table_name="messages")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("delivery_id")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("delivery_id")
    with op.batch_alter_table("audit_chain") as batch:
        batch.drop_column("key_id")
