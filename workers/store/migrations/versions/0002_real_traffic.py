"""Real traffic: the message key includes the processing id (MSH-11), and its content hash is the
redelivery form's (MSH-7 emptied, trailing empty fields/components removed; docs/interfaces.md §3).

The upgrade recomputes each stored key's processing id and hash from the audited raw message, so a
resend of a message stored before the upgrade is still recognised as the same message.

Revision ID: 0002_real_traffic
Revises: 0007_cds_hooks
Create Date: 2026-12-02
"""

from datetime import UTC

import sqlalchemy as sa
from alembic import op

from validator.er7 import split_messages
from validator.errors import MessageRejected
from validator.reader import read_header
from validator.service import redelivery_sha256
from workers.store.schema import decode_raw

revision = "0002_real_traffic"
down_revision = "0007_cds_hooks"
branch_labels = None
depends_on = None

_OLD = ("sending_application", "sending_facility", "control_id")


def _processing_id(text: str) -> str:
    messages = split_messages(text).messages
    if not messages:
        return "P"
    try:
        return read_header(messages[0], UTC).processing_id
    except MessageRejected:  # a stored key always had a readable MSH; production if not
        return "P"


def upgrade() -> None:
    # (SQLite rebuilds the table: workers/store/engine.py migrates it with foreign keys off)
    with op.batch_alter_table("message_keys") as batch:
        batch.add_column(sa.Column("processing_id", sa.String(500), nullable=False, server_default="P"))
        batch.drop_constraint("uq_message_keys_sender_control", type_="unique")
        batch.create_unique_constraint("uq_message_keys_processing_sender_control", ("processing_id", *_OLD))
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT k.id, m.raw_message FROM message_keys k JOIN messages m ON m.id = k.message_id"
    )).all()
    for key_id, raw in rows:
        text = decode_raw(raw)
        conn.execute(
            sa.text("UPDATE message_keys SET processing_id = :p, content_sha256 = :h WHERE id = :id"),
            {"p": _processing_id(text)[:500], "h": redelivery_sha256(text), "id": key_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("message_keys") as batch:
        batch.drop_constraint("uq_message_keys_processing_sender_control", type_="unique")
        batch.create_unique_constraint("uq_message_keys_sender_control", _OLD)
        batch.drop_column("processing_id")
