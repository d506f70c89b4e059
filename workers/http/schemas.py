"""The JSON answers of the audit API as pydantic models: they are the OpenAPI description
(docs/interfaces.md §4) and what schemathesis checks the responses against."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = [
    "ChainLink", "DayStats", "FindingOut", "Head", "Health", "MessageDetail", "MessagePage", "MessageSummary",
    "OverrideOut", "ProtocolOut", "Stats", "VerifyOut",
]


class FindingOut(BaseModel):
    rule: str
    severity: str
    location: str | None
    message: str
    order_index: int | None = None
    placer_order_number: str | None = None


class OverrideOut(BaseModel):
    """An override with a reason applied to an order (docs/protocol.md, "Overrides with a reason")."""

    order_index: int | None = None
    placer_order_number: str | None = None
    rule: str
    reason: str
    verified_by: str


class ProtocolOut(BaseModel):
    id: str
    version: str


class MessageSummary(BaseModel):
    id: int
    received_at: str | None
    answered_at: str | None
    sender: str
    control_id: str | None
    message_type: str | None
    patient_id: str | None
    outcome: str | None
    rules: list[str]
    findings: list[FindingOut]
    overrides: list[OverrideOut] = []
    protocol: ProtocolOut | None


class MessagePage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[MessageSummary]


class ChainLink(BaseModel):
    seq: int
    prev_hash: str
    hash: str


class MessageDetail(MessageSummary):
    sending_application: str
    sending_facility: str
    patient_key: str
    content_sha256: str
    raw_message: str
    response: str | None
    computed: dict[str, Any]
    orders: list[dict[str, Any]]
    chain: ChainLink | None


class DayStats(BaseModel):
    date: str
    messages: int
    outcomes: dict[str, int]
    rules: dict[str, int]


class Stats(BaseModel):
    total: int
    outcomes: dict[str, int]
    rules: dict[str, int]
    days: list[DayStats]


class Head(BaseModel):
    seq: int | None
    hash: str | None


class VerifyOut(BaseModel):
    intact: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None
    head_hash: str | None


class Health(BaseModel):
    status: str
