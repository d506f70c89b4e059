"""Initial schema: audit chain, messages, verdicts, findings, responses, message keys, deliveries,
course history, cancellations.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_chain",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("hash"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("received_at", _ts, nullable=False),
        sa.Column("answered_at", _ts, nullable=False),
        sa.Column("sender", sa.String(500), nullable=False),
        sa.Column("sending_application", sa.String(500), nullable=False),
        sa.Column("sending_facility", sa.String(500), nullable=False),
        sa.Column("control_id", sa.String(500), nullable=True),
        sa.Column("message_type", sa.String(100), nullable=True),
        sa.Column("patient_id", sa.String(500), nullable=True),
        sa.Column("patient_key", sa.String(1000), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("raw_message", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_messages_received_at", "messages", ["received_at"])
    op.create_index("ix_messages_control_id", "messages", ["control_id"])
    op.create_index("ix_messages_patient_id", "messages", ["patient_id"])
    op.create_index("ix_messages_patient_key", "messages", ["patient_key"])
    op.create_table(
        "verdicts",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("ack_code", sa.String(2), nullable=False),
        sa.Column("protocol_id", sa.String(200), nullable=False),
        sa.Column("protocol_version", sa.String(200), nullable=False),
        sa.Column("computed", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index("ix_verdicts_ack_code", "verdicts", ["ack_code"])
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("order_index", sa.Integer(), nullable=True),
        sa.Column("placer_number", sa.String(500), nullable=True),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("location", sa.String(50), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id", "position", name="uq_findings_message_position"),
    )
    op.create_index("ix_findings_message_id", "findings", ["message_id"])
    op.create_index("ix_findings_rule", "findings", ["rule"])
    op.create_table(
        "responses",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_table(
        "message_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sending_application", sa.String(500), nullable=False),
        sa.Column("sending_facility", sa.String(500), nullable=False),
        sa.Column("control_id", sa.String(500), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "sending_application", "sending_facility", "control_id", name="uq_message_keys_sender_control"
        ),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_key_id", sa.Integer(), nullable=False),
        sa.Column("received_at", _ts, nullable=False),
        sa.ForeignKeyConstraint(["message_key_id"], ["message_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deliveries_message_key_id", "deliveries", ["message_key_id"])
    op.create_table(
        "course_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient_key", sa.String(1000), nullable=False),
        sa.Column("sender", sa.String(1000), nullable=False),
        sa.Column("placer_number", sa.String(500), nullable=False),
        sa.Column("placer_namespace", sa.String(500), nullable=False),
        sa.Column("control_id", sa.String(500), nullable=False),
        sa.Column("drug_code", sa.String(500), nullable=False),
        sa.Column("drug_text", sa.String(1000), nullable=False),
        sa.Column("protocol_order", sa.Boolean(), nullable=False),
        sa.Column("start", _ts, nullable=True),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("cancelled_by", sa.Integer(), nullable=True),
        sa.Column("cancelled_at", _ts, nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.ForeignKeyConstraint(["cancelled_by"], ["messages.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_course_history_match", "course_history", ["patient_key", "sender", "placer_number", "placer_namespace"]
    )
    op.create_table(
        "cancellations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("patient_key", sa.String(1000), nullable=False),
        sa.Column("sender", sa.String(1000), nullable=False),
        sa.Column("placer_number", sa.String(500), nullable=False),
        sa.Column("placer_namespace", sa.String(500), nullable=False),
        sa.Column("control", sa.String(2), nullable=False),
        sa.Column("leaves_history", sa.Boolean(), nullable=False),
        sa.Column("requested_at", _ts, nullable=False),
        sa.Column("entries_removed", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_cancellations_message_id", "cancellations", ["message_id"])


def downgrade() -> None:
    for table in ("cancellations", "course_history", "deliveries", "message_keys", "responses", "findings",
                  "verdicts", "messages", "audit_chain"):
        op.drop_table(table)
