"""One message in, one answer out: read, de-duplicate, judge, respond, store.

The entry points (CLI, Celery task, stream bridge) call `process_message` with
the store they were wired with. The store write is the commit point: nothing
is answered that is not stored, and a redelivered message gets its stored
answer byte for byte (docs/interfaces.md §3).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from .er7 import RawMessage, normalise, split_messages
from .errors import MessageRejected
from .history import HistoryChanged, KeyTaken, MessageKey, ProcessedMessage, Store
from .model import Location, OrderSet
from .protocol import Protocol, ProtocolSet
from .reader import DEFAULT_LIMITS, Limits, check_limits, read_header, read_order_set
from .response import build_rejection, build_response
from .verdict import Judgement, judge

log = logging.getLogger("rxgate")
INTERNAL_ERROR_RULE = "rxgate.internal_error"
REJUDGE_ATTEMPTS = 5  # a patient's history changed under us this often: let the entry point's retry take over


@dataclass
class Outcome:
    result: dict[str, Any]  # the JSON result of docs/interfaces.md §1, "response" included
    redelivered: bool = False

    @property
    def response(self) -> str:
        return self.result["response"]

    @property
    def ack_code(self) -> str:
        return self.result["ack_code"]

    @property
    def control_id(self) -> str | None:
        return self.result["control_id"]


def content_sha256(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def message_key(header: OrderSet, text: str) -> MessageKey | None:
    if not header.control_id:
        return None
    return MessageKey(
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        control_id=header.control_id,
        content_sha256=content_sha256(text),
    )


def process_text(
    text: str, store: Store, protocol: Protocol | ProtocolSet, *, tz: tzinfo, received_at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Outcome]:
    """Every message in a text (a file, a queue entry): one outcome each, in order."""
    split = split_messages(text)
    if split.no_msh or split.junk_before_first:
        what = "no MSH segment found" if split.no_msh else "unexpected data before the first MSH segment"
        outcomes = [_unparseable(text, what, store, protocol, tz, received_at)]
        if split.no_msh:
            return outcomes
    else:
        outcomes = []
    outcomes.extend(
        process_message(raw, store, protocol, tz=tz, received_at=received_at, limits=limits) for raw in split.messages
    )
    return outcomes


def process_message(
    raw: RawMessage, store: Store, protocol: Protocol | ProtocolSet, *, tz: tzinfo, received_at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Outcome:
    started = time.perf_counter()
    received_at = received_at or datetime.now(tz)
    text = raw.text
    try:
        header = read_header(raw, tz)
    except MessageRejected as exc:
        return _unparseable(text, exc.message, store, protocol, tz, received_at)
    key = message_key(header, text)
    if key is not None:
        stored = store.answer_for(key)
        if stored is not None:
            return _answer_again(key, stored.content_sha256, stored.result, header, text, store, protocol, tz, received_at)
    try:
        check_limits(raw, limits)
        order_set = read_order_set(raw, tz)
    except MessageRejected as exc:
        location = Location(segment=exc.segment, occurrence=1, field=exc.field) if exc.field else None
        # stored under the key: a redelivery of a rejected message gets the same AR
        return _reject(key, header, exc.rule, exc.code, exc.message, location, text, store, protocol, tz,
                       received_at, started)
    for attempt in range(1, REJUDGE_ATTEMPTS + 1):
        history = store.orders_for(order_set.patient.key) if order_set.patient.key else []
        try:
            judgement = judge(order_set, history, protocol, tz=tz, received_at=received_at)
            response = build_response(judgement, datetime.now(tz))
        except Exception:  # a bug must still give an answer, never a silent loss or a traceback
            log.exception("internal error judging control_id=%s; answered AR %s", header.control_id,
                          INTERNAL_ERROR_RULE)
            message = "not processed: internal error in the validator (logged); resend after it is fixed"
            return _reject(None, header, INTERNAL_ERROR_RULE, "207", message, None, text, store, protocol, tz,
                           received_at, started)
        result = judgement_result(judgement, response)
        computed = {str(v.order.placer_number or v.order.index): v.computed for v in judgement.orders if v.computed}
        try:
            outcome = _save(
                key, result, header, text, order_set.patient.key, computed, judgement.new_orders,
                judgement.cancellations, store, protocol, tz, received_at,
            )
        except HistoryChanged:
            # Another worker changed this patient's course while we judged: judge again on the new history.
            if attempt == REJUDGE_ATTEMPTS:
                raise
            log.info("history changed while judging control_id=%s; judging again (%d)", header.control_id, attempt)
            continue
        _log(outcome, started)
        return outcome
    raise AssertionError("unreachable")


def judgement_result(judgement: Judgement, response: str) -> dict[str, Any]:
    order_set = judgement.order_set
    return {
        "control_id": order_set.control_id,
        "message_type": order_set.message_type,
        "ack_code": judgement.ack_code,
        "patient_id": order_set.patient.id or None,
        "orders": [
            {
                "placer_order_number": v.order.placer_number,
                "drug": v.order.drug_label(),
                "protocol_order": v.protocol_order,
                "order_control": v.control,
                "findings": [f.to_json() for f in v.findings],
                **({"protocol": {"id": v.computed["protocol_id"], "version": v.computed["protocol_version"]}}
                   if "protocol_id" in v.computed else {}),
                # overrides with a reason applied to this order (docs/protocol.md): the audit record marks them
                **({"overrides": v.computed["overrides"]} if v.computed.get("overrides") else {}),
            }
            for v in judgement.orders
        ],
        "findings": [f.to_json() for f in judgement.findings],
        "protocol": {"id": judgement.protocol_id, "version": judgement.protocol_version},
        "response": response,
    }


def _rejected_result(
    header: OrderSet | None, rule: str, message: str, location: Location | None, response: str
) -> dict[str, Any]:
    return {
        "control_id": (header.control_id or None) if header else None,
        "message_type": (header.message_type or None) if header else None,
        "ack_code": "AR",
        "orders": [],
        "findings": [{"rule": rule, "severity": "error", "location": location.short() if location else None,
                      "message": message}],
        "response": response,
    }


def _unparseable(
    text: str, what: str, store: Store, protocol: Protocol | ProtocolSet, tz: tzinfo, received_at: datetime | None
) -> Outcome:
    return _reject(None, None, "hl7.structure", "100", what, None, text, store, protocol, tz,
                   received_at or datetime.now(tz), time.perf_counter())


def _answer_again(
    key: MessageKey, stored_sha: str, stored_result: dict[str, Any], header: OrderSet, text: str,
    store: Store, protocol: Protocol | ProtocolSet, tz: tzinfo, received_at: datetime,
) -> Outcome:
    """A key seen before: the same content gets the stored answer; other content is a duplicate control id."""
    if stored_sha == key.content_sha256:
        store.record_delivery(key, received_at)
        log.info("redelivery control_id=%s ack=%s: stored answer returned", key.control_id, stored_result["ack_code"])
        return Outcome(stored_result, redelivered=True)
    message = (
        f"control id {key.control_id} was already used by this sender for a different message; "
        "resend with a new MSH-10"
    )
    location = Location(segment="MSH", occurrence=1, field=10)
    # not stored under the key (it belongs to the first message), but audited
    return _reject(None, header, "hl7.duplicate_control_id", "207", message, location, text, store, protocol, tz,
                   received_at, time.perf_counter())


def _reject(
    key: MessageKey | None, header: OrderSet | None, rule: str, code: str, message: str, location: Location | None,
    text: str, store: Store, protocol: Protocol | ProtocolSet, tz: tzinfo, received_at: datetime, started: float,
) -> Outcome:
    """Answer AR for the message as a whole, audit it, log it."""
    response = build_rejection(header, rule, code, message, location, datetime.now(tz))
    outcome = _save(key, _rejected_result(header, rule, message, location, response), header, text, "", {}, [], [],
                    store, protocol, tz, received_at)
    _log(outcome, started)
    return outcome


def _save(
    key: MessageKey | None, result: dict[str, Any], header: OrderSet | None, text: str, patient_key: str,
    computed: dict[str, Any], new_orders: list, cancellations: list, store: Store, protocol: Protocol | ProtocolSet,
    tz: tzinfo, received_at: datetime,
) -> Outcome:
    processed = ProcessedMessage(
        key=key,
        received_at=received_at,
        answered_at=datetime.now(tz),
        sender=header.sender if header else "",
        control_id=(header.control_id or None) if header else None,
        patient_key=patient_key,
        raw_message=text,
        ack_code=result["ack_code"],
        result=result,
        response=result["response"],
        protocol_id=protocol.id,
        protocol_version=protocol.version,
        computed=computed,
        new_orders=new_orders,
        cancellations=cancellations,
    )
    try:
        store.save(processed)
    except KeyTaken:
        # Another worker answered the same key first: give its answer (or refuse other content).
        assert key is not None and header is not None
        stored = store.answer_for(key)
        if stored is None:
            raise
        return _answer_again(key, stored.content_sha256, stored.result, header, text, store, protocol, tz, received_at)
    return Outcome(result)


def _log(outcome: Outcome, started: float) -> None:
    rules = sorted({f["rule"] for f in outcome.result["findings"] if f["severity"] != "info"})
    log.info(
        "processed control_id=%s ack=%s rules=%s ms=%.1f",
        outcome.control_id, outcome.ack_code, ",".join(rules) or "-", (time.perf_counter() - started) * 1000,
    )
