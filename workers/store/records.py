"""The rows of one audit record, built from a `ProcessedMessage` before they are inserted.

The writer (`SqlStore.save_all`) inserts these column values as they are, and hashes exactly what
they will read back as (`record_content` over the same values), so verification, which rebuilds
the content from the stored rows, finds the same hash.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from validator.er7 import normalise
from validator.history import ProcessedMessage
from workers.store.chain import ChainKey, canonical_json, chain_hash, json_default, record_content
from workers.store.schema import clean_text, encode_raw


class RecordRows:
    """The rows of audit record number `seq` (column values), its chain row linked to `prev_hash` and
    signed with `key`."""

    def __init__(self, seq: int, prev_hash: str, processed: ProcessedMessage, key: ChainKey) -> None:
        self.seq = seq
        self.processed = processed
        result = json.loads(canonical_json(processed.result))
        self.message = message_row(seq, processed, result)
        self.verdict = dict(
            message_id=seq,
            ack_code=clean_text(processed.ack_code),
            protocol_id=clean_text(processed.protocol_id) or "",
            protocol_version=clean_text(processed.protocol_version) or "",
            computed=canonical_json(processed.computed),
            result=canonical_json(result),
        )
        self.response = dict(message_id=seq, response=clean_text(processed.response))
        self.findings = finding_rows(seq, result)
        self.key = message_key_row(seq, processed)
        self.history = history_rows(seq, processed)
        self.overrides = override_rows(seq, result)
        self.cancellations = cancellation_rows(seq, processed)
        # the writer hashes exactly what the rows will read back (verification rebuilds it from them)
        content = record_content(
            SimpleNamespace(**self.message), SimpleNamespace(**self.verdict), SimpleNamespace(**self.response),
            [SimpleNamespace(id=None, **f) for f in self.findings], keyed=True,
            message_key=SimpleNamespace(**self.key) if self.key else None,
            history=[SimpleNamespace(**h) for h in self.history],
            cancellations=[SimpleNamespace(**c) for c in self.cancellations])
        self.hash = chain_hash(content, seq, prev_hash, key)
        self.chain = dict(seq=seq, prev_hash=prev_hash, hash=self.hash, key_id=key.key_id)


def message_row(seq: int, processed: ProcessedMessage, result: dict[str, Any]) -> dict[str, Any]:
    key = processed.key
    return dict(
        id=seq,
        received_at=_as_utc(processed.received_at),
        answered_at=_as_utc(processed.answered_at),
        sender=clean_text(processed.sender) or "",
        sending_application=clean_text(key.sending_application) if key else
        clean_text(processed.sender.split("^")[0]) if processed.sender else "",
        sending_facility=clean_text(key.sending_facility) if key else
        clean_text(processed.sender.split("^", 1)[1]) if "^" in processed.sender else "",
        control_id=clean_text(processed.control_id),
        message_type=clean_text(result.get("message_type")),
        patient_id=clean_text(result.get("patient_id")) or _patient_id(processed.patient_key),
        patient_key=clean_text(processed.patient_key) or "",
        content_sha256=key.content_sha256 if key else _sha256_normalised(processed.raw_message),
        raw_message=encode_raw(processed.raw_message),
        delivery_id=clean_text(processed.delivery_id),
    )


def message_key_row(seq: int, processed: ProcessedMessage) -> dict[str, Any] | None:
    """The `message_keys` row (docs/interfaces.md §3), or None for a message without a key."""
    key = processed.key
    if key is None:
        return None
    return dict(
        processing_id=clean_text(key.processing_id),
        sending_application=clean_text(key.sending_application),
        sending_facility=clean_text(key.sending_facility),
        control_id=clean_text(key.control_id),
        content_sha256=key.content_sha256,
        message_id=seq,
        # key order kept: a redelivery's JSON reads like the first answer
        result=json.dumps(processed.result, ensure_ascii=False, default=json_default),
    )


def history_rows(seq: int, processed: ProcessedMessage) -> list[dict[str, Any]]:
    """The `course_history` rows of the orders this message added to the patient's course."""
    return [
        dict(
            patient_key=clean_text(entry.patient_key),
            sender=clean_text(entry.sender),
            placer_number=clean_text(entry.placer_number),
            placer_namespace=clean_text(entry.placer_namespace) or "",
            control_id=clean_text(entry.control_id),
            drug_code=clean_text(entry.drug.code),
            drug_text=clean_text(entry.drug.text),
            protocol_order=entry.protocol_order,
            start=entry.start,
            entry=entry.model_dump_json(),
            message_id=seq,
            cancelled_by=None,
            cancelled_at=None,
        )
        for entry in processed.new_orders
    ]


def override_rows(seq: int, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The `overrides` rows: each override with a reason applied to an order of the result."""
    return [
        dict(message_id=seq, order_index=i, placer_number=clean_text(order.get("placer_order_number")),
             rule=clean_text(str(o.get("rule") or "")), reason=clean_text(str(o.get("reason") or "")),
             verified_by=clean_text(str(o.get("verified_by") or "")))
        for i, order in enumerate(result.get("orders") or [])
        for o in order.get("overrides") or []
    ]


def cancellation_rows(seq: int, processed: ProcessedMessage) -> list[dict[str, Any]]:
    """The `cancellations` rows this message applies (`entries_removed` is counted when applied)."""
    return [
        dict(
            message_id=seq,
            patient_key=clean_text(cancel.patient_key),
            sender=clean_text(cancel.sender),
            placer_number=clean_text(cancel.placer_number),
            placer_namespace=clean_text(cancel.placer_namespace) or "",
            control=clean_text(cancel.control),
            leaves_history=cancel.leaves_history,
            requested_at=_as_utc(cancel.requested_at),
        )
        for cancel in processed.cancellations
    ]


def _finding_row(seq: int, position: int, order_index: int | None, placer_number: str | None,
                 finding: dict[str, Any]) -> dict[str, Any]:
    return dict(
        message_id=seq,
        position=position,
        order_index=order_index,
        placer_number=clean_text(placer_number),
        rule=clean_text(str(finding.get("rule") or "")),
        severity=clean_text(str(finding.get("severity") or "")),
        location=clean_text(finding.get("location")),
        message=clean_text(str(finding.get("message") or "")),
    )


def finding_rows(seq: int, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The `findings` rows (column values) of one record, each filed under the order it was found on.

    The order comes from the finding's `order_index` (docs/interfaces.md §1), never from matching its
    text: several orders may have findings that read alike (three `go.orderset` premeds).
    """
    orders = result.get("orders") or []
    listed = result.get("findings") or []
    indices = [f.get("order_index") for f in listed] if all("order_index" in f for f in listed) else \
        _positional_order_indices(result)
    rows = []
    for position, (f, order_index) in enumerate(zip(listed, indices, strict=True)):
        valid = isinstance(order_index, int) and 0 <= order_index < len(orders)
        order_index = order_index if valid else None
        placer = orders[order_index].get("placer_order_number") if order_index is not None else None
        rows.append(_finding_row(seq, position, order_index, placer, f))
    return rows


def _positional_order_indices(result: dict[str, Any]) -> list[int | None]:
    """For a result stored without `order_index`: the list holds the message's own findings, then each
    order's findings in order, so positions tell the order."""
    orders = result.get("orders") or []
    listed = result.get("findings") or []
    per_order = [i for i, o in enumerate(orders) for _ in (o.get("findings") or [])]
    own = len(listed) - len(per_order)
    if own < 0:
        return [None] * len(listed)
    return [None] * own + per_order


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _patient_id(patient_key: str) -> str | None:
    return clean_text(patient_key.split("^", 1)[0]) if patient_key else None


def _sha256_normalised(raw: str) -> str:
    return hashlib.sha256(normalise(raw).encode("utf-8", "surrogatepass")).hexdigest()
