"""The store's tables as SQLAlchemy declarative rows, and how values are shaped to fit them.

One audit record = one row of `audit_chain` + `messages` + `verdicts` + `responses` + its
`findings`, all with the same id = the record's sequence number:

- `audit_chain`  seq (gapless, 1, 2, 3...), prev_hash, hash, key_id: the keyed hash chain
                 (workers/store/chain.py; key_id NULL: a record from before the chain was keyed).
- `messages`     id = seq; received/answered times (UTC), sender, MSH-3, MSH-4, control id,
                 message type, patient id / key, SHA-256 of the normalised message, raw text,
                 delivery id (the stream entry, Celery task, ...: one record per delivery).
- `verdicts`     message_id; ack code, protocol id + version hash, computed values (JSON),
                 the full JSON result (docs/interfaces.md §1).
- `findings`     message_id, position; order index / placer number, rule, severity, location, message.
- `responses`    message_id; the HL7 response (ER7) sent.
- `message_keys` (MSH-3, MSH-4, MSH-10) unique, content SHA-256, the stored answer (docs/interfaces.md §3).
- `deliveries`   one row per delivery of a keyed message (the first included), with its delivery id.
- `course_history` every accepted order (drug, start, placer number, sender), `cancelled_by`
                 set (never deleted) when a cancellation removes it from the course.
- `cancellations` every CA/DC request applied, with `leaves_history`.
- `overrides`    message_id; order index / placer number, rule, reason, verified by (ORC-11): every
                 override with a reason applied to an order (docs/protocol.md, "Overrides with a reason";
                 migration 0003_overrides).

The schema itself is created and changed only by the Alembic migrations (`migrations/versions/`,
which keep their own copies of these lengths: a migration is history and never follows this file).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Column lengths (characters): generous bounds for what senders put in these fields. A changed
# length needs a migration as well.
SHA256_HEX_LEN = 64  # a SHA-256 digest in hex: chain hashes, message content hashes
ACK_CODE_LEN = 2  # AA / AE / AR
ORDER_CONTROL_LEN = 2  # ORC-1: CA, DC, XO, ...
SEVERITY_LEN = 10  # error / warning / info
LOCATION_LEN = 500  # an ERR-2 location such as RXO(1)-2, or a FHIR path (CDS Hooks; migration 0007)
RULE_ID_LEN = 100  # a rule id such as go.dose
MESSAGE_TYPE_LEN = 100  # MSH-9 as sent, e.g. OMP^O09^OMP_O09
PROTOCOL_LEN = 200  # protocol id, protocol version hash
FIELD_LEN = 500  # one HL7 field as sent: control id, MSH-3, MSH-4, placer number, drug code, PID-3 id
COMPOSITE_LEN = 1000  # values built from several fields: patient key ID^authority, sender, drug text
KEY_ID_LEN = 16  # the audit key's id in a chain row (workers/store/chain.py; migration 0004_reliability)
DELIVERY_ID_LEN = 200  # "stream:<entry id>", "celery:<task id>", ... (migration 0004_reliability)


class UTCDateTime(TypeDecorator):
    """Aware datetimes stored as UTC (naive UTC on SQLite), read back as aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def clean_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: replace it (the raw message itself is kept as bytes)."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def encode_raw(text: str) -> bytes:
    """The raw message as stored: UTF-8, lone surrogates (undecodable input bytes) kept as they came."""
    return text.encode("utf-8", "surrogatepass")


def decode_raw(data: bytes) -> str:
    return bytes(data).decode("utf-8", "surrogatepass")


class Base(DeclarativeBase):
    pass


class ChainRow(Base):
    __tablename__ = "audit_chain"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    prev_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_LEN), nullable=True)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("uq_messages_delivery_id", "delivery_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    answered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sender: Mapped[str] = mapped_column(String(FIELD_LEN), default="")
    sending_application: Mapped[str] = mapped_column(String(FIELD_LEN), default="")
    sending_facility: Mapped[str] = mapped_column(String(FIELD_LEN), default="")
    control_id: Mapped[str | None] = mapped_column(String(FIELD_LEN), nullable=True, index=True)
    message_type: Mapped[str | None] = mapped_column(String(MESSAGE_TYPE_LEN), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(FIELD_LEN), nullable=True, index=True)
    patient_key: Mapped[str] = mapped_column(String(COMPOSITE_LEN), default="", index=True)
    content_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    raw_message: Mapped[bytes] = mapped_column(LargeBinary)
    delivery_id: Mapped[str | None] = mapped_column(String(DELIVERY_ID_LEN), nullable=True)


class VerdictRow(Base):
    __tablename__ = "verdicts"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    ack_code: Mapped[str] = mapped_column(String(ACK_CODE_LEN), index=True)
    protocol_id: Mapped[str] = mapped_column(String(PROTOCOL_LEN), default="")
    protocol_version: Mapped[str] = mapped_column(String(PROTOCOL_LEN), default="")
    computed: Mapped[str] = mapped_column(Text)  # canonical JSON
    result: Mapped[str] = mapped_column(Text)  # canonical JSON of the docs/interfaces.md §1 result


class FindingRow(Base):
    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("message_id", "position", name="uq_findings_message_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    order_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    placer_number: Mapped[str | None] = mapped_column(String(FIELD_LEN), nullable=True)
    rule: Mapped[str] = mapped_column(String(RULE_ID_LEN), index=True)
    severity: Mapped[str] = mapped_column(String(SEVERITY_LEN))
    location: Mapped[str | None] = mapped_column(String(LOCATION_LEN), nullable=True)
    message: Mapped[str] = mapped_column(Text)


class ResponseRow(Base):
    __tablename__ = "responses"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    response: Mapped[str] = mapped_column(Text)


class MessageKeyRow(Base):
    __tablename__ = "message_keys"
    __table_args__ = (
        UniqueConstraint("processing_id", "sending_application", "sending_facility", "control_id",
                         name="uq_message_keys_processing_sender_control"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    processing_id: Mapped[str] = mapped_column(String(FIELD_LEN), default="P", server_default="P")  # MSH-11.1 (0002)
    sending_application: Mapped[str] = mapped_column(String(FIELD_LEN))
    sending_facility: Mapped[str] = mapped_column(String(FIELD_LEN))
    control_id: Mapped[str] = mapped_column(String(FIELD_LEN))
    content_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    result: Mapped[str] = mapped_column(Text)  # the answer as first given, JSON


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    __table_args__ = (Index("uq_deliveries_delivery_id", "delivery_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_key_id: Mapped[int] = mapped_column(ForeignKey("message_keys.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivery_id: Mapped[str | None] = mapped_column(String(DELIVERY_ID_LEN), nullable=True)


class HistoryRow(Base):
    __tablename__ = "course_history"
    __table_args__ = (Index("ix_course_history_match", "patient_key", "sender", "placer_number", "placer_namespace"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_key: Mapped[str] = mapped_column(String(COMPOSITE_LEN))
    sender: Mapped[str] = mapped_column(String(COMPOSITE_LEN))
    placer_number: Mapped[str] = mapped_column(String(FIELD_LEN))
    placer_namespace: Mapped[str] = mapped_column(String(FIELD_LEN), default="")
    control_id: Mapped[str] = mapped_column(String(FIELD_LEN))
    drug_code: Mapped[str] = mapped_column(String(FIELD_LEN), default="")
    drug_text: Mapped[str] = mapped_column(String(COMPOSITE_LEN), default="")
    protocol_order: Mapped[bool] = mapped_column(Boolean)
    start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    entry: Mapped[str] = mapped_column(Text)  # the HistoryEntry as JSON, read back exactly (offsets kept)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    cancelled_by: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CancellationRow(Base):
    __tablename__ = "cancellations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    patient_key: Mapped[str] = mapped_column(String(COMPOSITE_LEN))
    sender: Mapped[str] = mapped_column(String(COMPOSITE_LEN))
    placer_number: Mapped[str] = mapped_column(String(FIELD_LEN))
    placer_namespace: Mapped[str] = mapped_column(String(FIELD_LEN), default="")
    control: Mapped[str] = mapped_column(String(ORDER_CONTROL_LEN))
    leaves_history: Mapped[bool] = mapped_column(Boolean)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    entries_removed: Mapped[int] = mapped_column(Integer, default=0)


class OverrideRow(Base):
    __tablename__ = "overrides"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    order_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    placer_number: Mapped[str | None] = mapped_column(String(FIELD_LEN), nullable=True)
    rule: Mapped[str] = mapped_column(String(RULE_ID_LEN), index=True)
    reason: Mapped[str] = mapped_column(Text)
    verified_by: Mapped[str] = mapped_column(String(FIELD_LEN))


# --- CDS Hooks (workers/store/cds.py, migration 0007_cds_hooks) --------------------------------------


class CdsJtiRow(Base):
    """A CDS client JWT id already used (replay protection), kept until the token expires."""

    __tablename__ = "cds_jti"
    __table_args__ = (UniqueConstraint("issuer", "jti", name="uq_cds_jti_issuer_jti"),
                      Index("ix_cds_jti_expires_at", "expires_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    issuer: Mapped[str] = mapped_column(String(COMPOSITE_LEN))
    jti: Mapped[str] = mapped_column(String(FIELD_LEN))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CdsCardRow(Base):
    """A card answered to a CDS client: found again when its feedback comes."""

    __tablename__ = "cds_cards"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(COMPOSITE_LEN))
    hook_instance: Mapped[str] = mapped_column(String(FIELD_LEN), index=True)
    patient_key: Mapped[str] = mapped_column(String(COMPOSITE_LEN), default="")
    rule: Mapped[str] = mapped_column(String(RULE_ID_LEN))
    indicator: Mapped[str] = mapped_column(String(SEVERITY_LEN))
    location: Mapped[str | None] = mapped_column(String(LOCATION_LEN), nullable=True)
    summary: Mapped[str] = mapped_column(String(FIELD_LEN))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- People, roles and the PHI access log (workers/store/access.py, migration 0005_access) ------------

NAME_LEN = 100  # a person's or system's credential name
ROLES_LEN = 100  # the roles, comma-separated: auditor,operator,submit
ADDRESS_LEN = 100  # a client address (IPv6 with zone fits)
ACTION_LEN = 200  # what was read: "GET /audit/messages"


class UserRow(Base):
    """A credential: a person or system, its roles and the SHA-256 of its token (the token is never stored)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    roles: Mapped[str] = mapped_column(String(ROLES_LEN))
    token_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AccessLogRow(Base):
    """One read of patient data: who, when, what, from where; chained like the audit log (append-only)."""

    __tablename__ = "access_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    user_name: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    address: Mapped[str] = mapped_column(String(ADDRESS_LEN))
    action: Mapped[str] = mapped_column(String(ACTION_LEN))
    target: Mapped[str] = mapped_column(Text)  # the query (filters) or the record id read
    prev_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    key_id: Mapped[str] = mapped_column(String(16))  # the audit key that signed it (chain.ChainKey.key_id)
