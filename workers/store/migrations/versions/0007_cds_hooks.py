"""CDS Hooks: used JWT ids (cds_jti), the cards answered (cds_cards); finding locations long enough
for a FHIR path (findings.location 50 -> 500 characters).

Revision ID: 0007_cds_hooks
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_cds_hooks"
down_revision = "0001"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cds_jti",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("issuer", sa.String(1000), nullable=False),
        sa.Column("jti", sa.String(500), nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("issuer", "jti", name="uq_cds_jti_issuer_jti"),
    )
    op.create_index("ix_cds_jti_expires_at", "cds_jti", ["expires_at"])
    op.create_table(
        "cds_cards",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("issuer", sa.String(1000), nullable=False),
        sa.Column("hook_instance", sa.String(500), nullable=False),
        sa.Column("patient_key", sa.String(1000), nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("indicator", sa.String(10), nullable=False),
        sa.Column("location", sa.String(500), nullable=True),
        sa.Column("summary", sa.String(500), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_index("ix_cds_cards_hook_instance", "cds_cards", ["hook_instance"])
    with op.batch_alter_table("findings") as batch:
        batch.alter_column("location", existing_type=sa.String(50), type_=sa.String(500), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.alter_column("location", existing_type=sa.String(500), type_=sa.String(50), existing_nullable=True)
    op.drop_index("ix_cds_cards_hook_instance", table_name="cds_cards")
    op.drop_table("cds_cards")
    op.drop_index("ix_cds_jti_expires_at", table_name="cds_jti")
    op.drop_table("cds_jti")
