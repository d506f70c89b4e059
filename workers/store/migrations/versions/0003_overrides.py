"""Overrides with a reason: one row per override applied to an order (docs/protocol.md).

Revision ID: 0003_overrides
Revises: 0005_access
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_overrides"
down_revision = "0005_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "overrides",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("order_index", sa.Integer(), nullable=True),
        sa.Column("placer_number", sa.String(500), nullable=True),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("verified_by", sa.String(500), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_overrides_message_id", "overrides", ["message_id"])
    op.create_index("ix_overrides_rule", "overrides", ["rule"])


def downgrade() -> None:
    op.drop_index("ix_overrides_rule", table_name="overrides")
    op.drop_index("ix_overrides_message_id", table_name="overrides")
    op.drop_table("overrides")
