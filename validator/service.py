"""One message in, one answer out: read, de-duplicate, judge, respond, store.

The CLI calls `process_text` (a file may hold several messages: one answer
each); the queue entry points (stream bridge, Celery task, MLLP and HTTP through
the stream) call `process_delivery`: one delivery, one answer, one audit record,
recorded once however often the delivery is redelivered. The store write is the commit point: nothing
is answered that is not stored, and a redelivered message gets its stored
answer byte for byte (docs/interfaces.md §3).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from .er7 import RawMessage, normalise, redelivery_form, split_messages
from .errors import MessageRejected
from .history import (
    Cancellation,
    DeliveryTaken,
    HistoryChanged,
    HistoryEntry,
    KeyTaken,
    MessageKey,
    ProcessedMessage,
    Store,
)
from .model import Location, OrderSet, Patient
from .protocol import Protocol, ProtocolSet
from .reader import (
    DEFAULT_LIMITS,
    Limits,
    check_header_lengths,
    check_limits,
    check_stored_lengths,
    patient_within_stored_lengths,
    read_header,
    read_order_set,
    readable_patient,
    within_stored_lengths,
)
from .response import build_rejection, build_response
from .verdict import Judgement, OrderVerdict, judge

log = logging.getLogger("rxgate")
INTERNAL_ERROR_RULE = "rxgate.internal_error"
REJUDGE_ATTEMPTS = 5  # a patient's history changed under us this often: let the entry point's retry take over


@dataclass(frozen=True)
class Call:
    """What one call of `process_text` / `process_message` works with, passed once instead of to every helper."""

    store: Store
    protocol: Protocol | ProtocolSet
    tz: tzinfo
    received_at: datetime
    limits: Limits = DEFAULT_LIMITS

    def now(self) -> datetime:
        return datetime.now(self.tz)


@dataclass(frozen=True)
class OrderResult:
    """One order of the JSON result (docs/interfaces.md §1)."""

    placer_order_number: str
    drug: str
    protocol_order: bool
    order_control: str
    findings: list[dict[str, Any]]
    protocol: dict[str, str] | None = None
    # overrides with a reason applied to this order (docs/protocol.md): the audit record marks them
    overrides: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, verdict: OrderVerdict) -> OrderResult:
        computed = verdict.computed
        return cls(
            placer_order_number=verdict.order.placer_number,
            drug=verdict.order.drug_label(),
            protocol_order=verdict.protocol_order,
            order_control=verdict.control,
            findings=[f.to_json() for f in verdict.findings],
            protocol=({"id": computed["protocol_id"], "version": computed["protocol_version"]}
                      if "protocol_id" in computed else None),
            overrides=list(computed.get("overrides") or []),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "placer_order_number": self.placer_order_number,
            "drug": self.drug,
            "protocol_order": self.protocol_order,
            "order_control": self.order_control,
            "findings": self.findings,
        }
        if self.protocol is not None:
            out["protocol"] = self.protocol
        if self.overrides:
            out["overrides"] = self.overrides
        return out


@dataclass(frozen=True)
class CheckResult:
    """The JSON result of docs/interfaces.md §1, `response` included: built here and nowhere else."""

    control_id: str | None
    message_type: str | None
    ack_code: str
    response: str
    findings: list[dict[str, Any]]
    orders: list[OrderResult] = field(default_factory=list)
    patient_id: str | None = None
    protocol: dict[str, str] | None = None  # None for a message rejected as a whole (no protocol judged it)

    @classmethod
    def judged(cls, judgement: Judgement, response: str) -> CheckResult:
        order_set = judgement.order_set
        return cls(
            control_id=order_set.control_id,
            message_type=order_set.message_type,
            ack_code=judgement.ack_code,
            response=response,
            findings=[{**f.to_json(), "order_index": f.order_index} for f in judgement.findings],
            orders=[OrderResult.of(v) for v in judgement.orders],
            patient_id=order_set.patient.id or None,
            protocol={"id": judgement.protocol_id, "version": judgement.protocol_version},
        )

    @classmethod
    def rejected(cls, header: OrderSet | None, rule: str, message: str, location: Location | None,
                 response: str, patient_id: str | None = None) -> CheckResult:
        return cls(
            patient_id=patient_id,
            control_id=(header.control_id or None) if header else None,
            message_type=(header.message_type or None) if header else None,
            ack_code="AR",
            response=response,
            findings=[{"rule": rule, "severity": "error", "location": location.short() if location else None,
                       "message": message, "order_index": None}],
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "control_id": self.control_id,
            "message_type": self.message_type,
            "ack_code": self.ack_code,
        }
        out["patient_id"] = self.patient_id
        out["orders"] = [o.to_json() for o in self.orders]
        out["findings"] = self.findings
        if self.protocol is not None:
            out["protocol"] = self.protocol
        out["response"] = self.response
        return out


@dataclass
class Outcome:
    result: dict[str, Any]  # CheckResult.to_json(): the stored and printed form
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


@dataclass(frozen=True)
class Rejection:
    """A message refused as a whole (AR): its rule, ERR-3 code, text and where."""

    rule: str
    code: str
    message: str
    location: Location | None = None


@dataclass(frozen=True)
class Writes:
    """What a judged message adds to the store besides its answer."""

    patient_key: str = ""
    computed: dict[str, Any] = field(default_factory=dict)
    new_orders: list[HistoryEntry] = field(default_factory=list)
    cancellations: list[Cancellation] = field(default_factory=list)


def content_sha256(text: str) -> str:
    """SHA-256 of the normalised text (a message stored without a key)."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def redelivery_sha256(text: str) -> str:
    """SHA-256 of the redelivery form: what tells a resend from other content under the same key."""
    return hashlib.sha256(redelivery_form(text).encode("utf-8", "surrogatepass")).hexdigest()


def message_key(header: OrderSet, text: str) -> MessageKey | None:
    if not header.control_id:
        return None
    return MessageKey(
        processing_id=header.processing_id,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        control_id=header.control_id,
        content_sha256=redelivery_sha256(text),
    )


def process_text(
    text: str, store: Store, protocol: Protocol | ProtocolSet, *, tz: tzinfo, received_at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Outcome]:
    """Every message in a text (a file, a queue entry): one outcome each, in order."""
    call = Call(store, protocol, tz, received_at or datetime.now(tz), limits)
    split = split_messages(text)
    outcomes: list[Outcome] = []
    if split.no_msh or split.junk_before_first:
        what = "no MSH segment found" if split.no_msh else "unexpected data before the first MSH segment"
        outcomes.append(_unparseable(call, text, what))
        if split.no_msh:
            return outcomes
    outcomes.extend(_process(call, raw) for raw in split.messages)
    return outcomes


def process_delivery(
    text: str, store: Store, protocol: Protocol | ProtocolSet, *, tz: tzinfo, received_at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS, delivery_id: str | None = None,
) -> Outcome:
    """One delivery (a stream entry, a Celery task, an MLLP frame, an HTTP body): exactly one outcome.

    A delivery must hold exactly one message: data before its MSH, or a second MSH, is answered with
    one `AR hl7.structure` for the whole delivery (MSA-2 the first MSH-10 when it can be read), audited
    once and not stored under the message key, so a clean resend is judged afresh (docs/interfaces.md
    §3). `delivery_id` (e.g. `stream:<stream>:<entry id>`, `celery:<task id>`) is stored with the record:
    the same delivery again, after a crash between the commit and the acknowledgement, gets the answer
    it was given and writes nothing, keyed message or not.
    """
    received_at = received_at or datetime.now(tz)
    if delivery_id is not None:
        stored = store.answer_for_delivery(delivery_id)
        if stored is not None:
            log.info("delivery %s seen before: its answer returned, nothing recorded", delivery_id)
            return Outcome(stored, redelivered=True)
        store = _DeliveryStore(store, delivery_id)
    try:
        return _process_one(text, store, protocol, tz, received_at, limits)
    except DeliveryTaken:
        # another worker committed this delivery while we judged it (a takeover): its answer stands
        stored = store.answer_for_delivery(delivery_id)
        if stored is None:
            raise
        return Outcome(stored, redelivered=True)


def _process_one(text: str, store: Store, protocol: Protocol | ProtocolSet, tz: tzinfo, received_at: datetime,
                 limits: Limits) -> Outcome:
    call = Call(store, protocol, tz, received_at, limits)
    split = split_messages(text)
    if split.no_msh:
        return _unparseable(call, text, "no MSH segment found")
    if split.junk_before_first or len(split.messages) > 1:
        what = ("unexpected data before the MSH segment" if split.junk_before_first else
                f"{len(split.messages)} messages in one delivery")
        try:
            header = read_header(split.messages[0], tz)
        except MessageRejected:
            header = None
        rejection = Rejection("hl7.structure", "100", f"{what}: send exactly one message per delivery")
        return _reject(call, None, header, rejection, text, time.perf_counter())
    return _process(call, split.messages[0])


class _DeliveryStore:
    """The store as one delivery sees it: every record or delivery row it writes carries the delivery id."""

    def __init__(self, store: Store, delivery_id: str) -> None:
        self.store, self.delivery_id = store, delivery_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def save(self, processed: ProcessedMessage) -> None:
        self.store.save(processed.model_copy(update={"delivery_id": self.delivery_id}))

    def record_delivery(self, key: MessageKey, received_at: datetime, delivery_id: str | None = None) -> None:
        self.store.record_delivery(key, received_at, self.delivery_id)


def process_message(
    raw: RawMessage, store: Store, protocol: Protocol | ProtocolSet, *, tz: tzinfo, received_at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Outcome:
    return _process(Call(store, protocol, tz, received_at or datetime.now(tz), limits), raw)


def _process(call: Call, raw: RawMessage) -> Outcome:
    started = time.perf_counter()
    text = raw.text
    try:
        header = read_header(raw, call.tz)
    except MessageRejected as exc:
        return _unparseable(call, text, exc.message)
    try:
        check_header_lengths(header)
    except MessageRejected as exc:  # audited without the over-long value, not under a key
        location = Location(segment=exc.segment, occurrence=1, field=exc.field) if exc.field else None
        return _reject(call, None, within_stored_lengths(header), Rejection(exc.rule, exc.code, exc.message, location),
                       text, started)
    key = message_key(header, text)
    if key is not None:
        stored = call.store.answer_for(key)
        if stored is not None:
            return _answer_again(call, key, stored.content_sha256, stored.result, header, text, raw)
    try:
        check_limits(raw, call.limits)
        order_set = read_order_set(raw, call.tz)
        check_stored_lengths(order_set)
    except MessageRejected as exc:
        location = Location(segment=exc.segment, occurrence=1, field=exc.field) if exc.field else None
        # stored under the key: a redelivery of a rejected message gets the same AR
        return _reject(call, key, header, Rejection(exc.rule, exc.code, exc.message, location), text, started,
                       patient=readable_patient(raw))
    for attempt in range(1, REJUDGE_ATTEMPTS + 1):
        try:
            outcome = _judge_and_save(call, key, header, order_set, text)
        except HistoryChanged:
            # Another worker changed this patient's course while we judged: judge again on the new history.
            if attempt == REJUDGE_ATTEMPTS:
                raise
            log.info("history changed while judging control_id=%s; judging again (%d)", header.control_id, attempt)
            continue
        except _InternalError:
            message = "not processed: internal error in the validator (logged); resend after it is fixed"
            return _reject(call, None, header, Rejection(INTERNAL_ERROR_RULE, "207", message), text, started,
                           patient=order_set.patient)
        _log(outcome, started)
        return outcome
    raise AssertionError("unreachable")


class _InternalError(Exception):
    """A bug while judging: answered AR rxgate.internal_error, never a silent loss or a traceback."""


def _judge_and_save(call: Call, key: MessageKey | None, header: OrderSet, order_set: OrderSet, text: str) -> Outcome:
    history = call.store.orders_for(order_set.course_key) if order_set.course_key else []
    try:
        judgement = judge(order_set, history, call.protocol, tz=call.tz, received_at=call.received_at)
        response = build_response(judgement, call.now())
    except Exception as exc:  # a bug must still give an answer, never a silent loss or a traceback
        log.exception("internal error judging control_id=%s; answered AR %s", header.control_id, INTERNAL_ERROR_RULE)
        raise _InternalError from exc
    writes = Writes(
        patient_key=order_set.course_key,
        computed={str(v.order.placer_number or v.order.index): v.computed for v in judgement.orders if v.computed},
        new_orders=judgement.new_orders,
        cancellations=judgement.cancellations,
    )
    return _save(call, key, CheckResult.judged(judgement, response), header, text, writes)


def _unparseable(call: Call, text: str, what: str) -> Outcome:
    return _reject(call, None, None, Rejection("hl7.structure", "100", what), text, time.perf_counter())


def _answer_again(
    call: Call, key: MessageKey, stored_sha: str, stored_result: dict[str, Any], header: OrderSet, text: str,
    raw: RawMessage | None = None,
) -> Outcome:
    """A key seen before: the same content gets the stored answer; other content is a duplicate control id."""
    if stored_sha == key.content_sha256:
        call.store.record_delivery(key, call.received_at)
        log.info("redelivery control_id=%s ack=%s: stored answer returned", key.control_id, stored_result["ack_code"])
        return Outcome(stored_result, redelivered=True)
    message = (
        f"control id {key.control_id} was already used by this sender for a different message; "
        "resend with a new MSH-10"
    )
    rejection = Rejection("hl7.duplicate_control_id", "205", message, Location(segment="MSH", occurrence=1, field=10))
    # not stored under the key (it belongs to the first message), but audited
    patient = readable_patient(raw) if raw is not None else Patient()
    return _reject(call, None, header, rejection, text, time.perf_counter(), patient=patient)


def _reject(
    call: Call, key: MessageKey | None, header: OrderSet | None, rejection: Rejection, text: str, started: float,
    *, patient: Patient | None = None,
) -> Outcome:
    """Answer AR for the message as a whole, audit it (with the patient when PID-3 was readable), log it."""
    response = build_rejection(header, rejection.rule, rejection.code, rejection.message, rejection.location,
                               call.now())
    patient = patient_within_stored_lengths(patient or Patient())
    result = CheckResult.rejected(header, rejection.rule, rejection.message, rejection.location, response,
                                  patient_id=patient.id or None)
    outcome = _save(call, key, result, header, text, Writes(patient_key=patient.key))
    _log(outcome, started)
    return outcome


def _save(
    call: Call, key: MessageKey | None, result: CheckResult, header: OrderSet | None, text: str, writes: Writes
) -> Outcome:
    as_json = result.to_json()
    processed = ProcessedMessage(
        key=key,
        received_at=call.received_at,
        answered_at=call.now(),
        sender=header.sender if header else "",
        control_id=(header.control_id or None) if header else None,
        patient_key=writes.patient_key,
        raw_message=text,
        ack_code=result.ack_code,
        result=as_json,
        response=result.response,
        protocol_id=call.protocol.id,
        protocol_version=call.protocol.version,
        computed=writes.computed,
        new_orders=writes.new_orders,
        cancellations=writes.cancellations,
    )
    try:
        call.store.save(processed)
    except KeyTaken:
        # Another worker answered the same key first: give its answer (or refuse other content).
        assert key is not None and header is not None
        stored = call.store.answer_for(key)
        if stored is None:
            raise
        return _answer_again(call, key, stored.content_sha256, stored.result, header, text)
    return Outcome(as_json)


def _log(outcome: Outcome, started: float) -> None:
    rules = sorted({f["rule"] for f in outcome.result["findings"] if f["severity"] != "info"})
    log.info(
        "processed control_id=%s ack=%s rules=%s ms=%.1f",
        outcome.control_id, outcome.ack_code, ",".join(rules) or "-", (time.perf_counter() - started) * 1000,
    )
