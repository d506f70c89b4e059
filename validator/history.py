"""Ports for the course history and the audit store, with in-memory implementations.

The core reads a patient's accepted orders and the stored answer of a message
key through `Store`; `workers/` provides the SQL implementation. Everything one
message changes is handed to `Store.save` as one `ProcessedMessage`, which an
implementation must write atomically (message key, audit record, history).
"""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal
from typing import Any
from typing import Protocol as PortProtocol

from pydantic import BaseModel

from .model import Coded


class HistoryEntry(BaseModel):
    """One accepted order in a patient's course history."""

    patient_key: str
    sender: str  # MSH-3^MSH-4 of the ordering message
    placer_number: str
    placer_namespace: str = ""
    control_id: str  # MSH-10 of the ordering message
    drug: Coded
    protocol_order: bool  # a GO dose
    protocol_id: str = ""
    start: datetime | None = None
    amount: Decimal | None = None
    amount_max: Decimal | None = None  # RXE-4 (RXO-3): a history premed is judged in full
    amount_units: str = ""
    route: str = ""
    as_needed: bool = False
    accepted_at: datetime | None = None  # MSH-7 of the accepting message (else when it was received)
    fingerprint: str = ""  # validator.resend.order_fingerprint: tells a resend from other content


class Cancellation(BaseModel):
    """A CA/DC request that matched an accepted order."""

    patient_key: str
    sender: str
    placer_number: str
    placer_namespace: str = ""
    control: str  # CA or DC
    leaves_history: bool  # False when the dose had already started (it still counts)
    requested_at: datetime


class MessageKey(BaseModel):
    """docs/interfaces.md §3: (MSH-11, MSH-3, MSH-4, MSH-10) and the SHA-256 of the message's redelivery form."""

    processing_id: str = "P"
    sending_application: str
    sending_facility: str
    control_id: str
    content_sha256: str


class StoredAnswer(BaseModel):
    content_sha256: str
    result: dict[str, Any]  # the JSON result, "response" included, as first answered


class ProcessedMessage(BaseModel):
    """Everything one message adds to the store, written in one transaction."""

    key: MessageKey | None  # None: not stored under a key (unreadable, or a duplicate control id)
    received_at: datetime
    answered_at: datetime
    sender: str
    control_id: str | None
    patient_key: str
    raw_message: str
    ack_code: str
    result: dict[str, Any]
    response: str
    protocol_id: str
    protocol_version: str
    computed: dict[str, Any] = {}
    new_orders: list[HistoryEntry] = []
    cancellations: list[Cancellation] = []
    delivery_id: str | None = None  # the delivery (stream entry, Celery task...) this record answers


class KeyTaken(Exception):
    """Another worker stored the same message key first; re-read its answer."""


class HistoryChanged(Exception):
    """The patient's course history changed between `orders_for` and `save` (another worker wrote it).

    Nothing was written; the message must be judged again against the new history.
    """


class Store(PortProtocol):
    def answer_for(self, key: MessageKey) -> StoredAnswer | None:
        """The stored answer under (sender app, sender facility, control id), whatever its hash."""

    def orders_for(self, patient_key: str) -> list[HistoryEntry]:
        """The patient's course history: accepted orders not removed by a cancellation."""

    def save(self, processed: ProcessedMessage) -> None:
        """Write atomically; raise `KeyTaken` if `processed.key` is already stored, and `HistoryChanged`
        if the patient's history changed since this worker's `orders_for` (concurrent workers).

        Cancellations (and replacements) are applied before `new_orders` are added:
        a replacement XO carries the same placer number as the order it replaces.
        """

    def record_delivery(self, key: MessageKey, received_at: datetime, delivery_id: str | None = None) -> None:
        """Log one more delivery of an already answered message (`delivery_id`: which one, kept unique)."""

    def answer_for_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        """The result already given to this delivery (a stream entry, a Celery task...), or None: a
        delivery redelivered after a crash between its commit and its acknowledgement is answered
        again from the store, never recorded twice."""

    def save_all(self, batch: list[ProcessedMessage], deliveries: list[tuple] = ()) -> None:
        """`save` of every message in order and `record_delivery` of every delivery (key, received
        time[, delivery id]), atomically: all or nothing."""


class DeliveryTaken(Exception):
    """Another worker recorded the same delivery first (a takeover racing a slow consumer): nothing
    was written; processing it again finds that worker's answer (`answer_for_delivery`)."""


class BatchedStore:
    """A `Store` that holds the writes of several messages and hands them to `save_all` on `flush()`.

    The stream bridge reads up to 100 entries at a time: one transaction (one chain lock, one
    commit) for all of them instead of one each is what keeps a backlog replay fast with several
    workers. Reads see only what is written, so a message whose patient or message key has a held
    write flushes first: every message is still judged on the written course history. `KeyTaken`
    and `HistoryChanged` come from `flush()` (nothing of the held writes is then written). Answers
    may be published only for writes counted in `written`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.held: list[ProcessedMessage] = []
        self.deliveries: list[tuple] = []
        self._delivery_ids: set[str] = set()
        self._patients: set[str] = set()
        self._keys: set[tuple[str, str, str, str]] = set()
        self.staged = 0  # writes handed to this store so far (messages and deliveries)
        self.written = 0  # of those, how many are written

    def answer_for(self, key: MessageKey) -> StoredAnswer | None:
        if InMemoryStore._slot(key) in self._keys:
            self.flush()
        return self.store.answer_for(key)

    def orders_for(self, patient_key: str) -> list[HistoryEntry]:
        if patient_key in self._patients:
            self.flush()
        return self.store.orders_for(patient_key)

    def answer_for_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        if delivery_id in self._delivery_ids:
            self.flush()
        return self.store.answer_for_delivery(delivery_id)

    def save(self, processed: ProcessedMessage) -> None:
        if processed.key is not None:
            self._keys.add(InMemoryStore._slot(processed.key))
        if processed.patient_key:
            self._patients.add(processed.patient_key)
        if processed.delivery_id:
            self._delivery_ids.add(processed.delivery_id)
        self.held.append(processed)
        self.staged += 1

    def record_delivery(self, key: MessageKey, received_at: datetime, delivery_id: str | None = None) -> None:
        self.deliveries.append((key, received_at, delivery_id))
        if delivery_id:
            self._delivery_ids.add(delivery_id)
        self.staged += 1

    def flush(self) -> None:
        if not self.held and not self.deliveries:
            return
        held, deliveries, staged = self.held, self.deliveries, self.staged
        self.held, self.deliveries = [], []
        self._patients.clear()
        self._keys.clear()
        self._delivery_ids.clear()
        self.store.save_all(held, deliveries)  # raises: the held writes are dropped, never written
        self.written = staged


class InMemoryStore:
    """The store of one `rxgate check` run without `--db`, and of the unit tests."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # save_all calls save
        self.answers: dict[tuple[str, str, str, str], StoredAnswer] = {}
        self.orders: dict[str, list[HistoryEntry]] = {}
        self.removed: list[HistoryEntry] = []
        self.audit: list[ProcessedMessage] = []
        self.deliveries: list[tuple[MessageKey, datetime]] = []
        self.by_delivery: dict[str, dict[str, Any]] = {}  # delivery id -> the result it was given

    @staticmethod
    def _slot(key: MessageKey) -> tuple[str, str, str, str]:
        return (key.processing_id, key.sending_application, key.sending_facility, key.control_id)

    def answer_for(self, key: MessageKey) -> StoredAnswer | None:
        return self.answers.get(self._slot(key))

    def orders_for(self, patient_key: str) -> list[HistoryEntry]:
        return list(self.orders.get(patient_key, []))

    def answer_for_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        return self.by_delivery.get(delivery_id)

    def save(self, processed: ProcessedMessage) -> None:
        with self._lock:
            if processed.delivery_id is not None and processed.delivery_id in self.by_delivery:
                raise DeliveryTaken(processed.delivery_id)
            if processed.key is not None:
                slot = self._slot(processed.key)
                if slot in self.answers:
                    raise KeyTaken(slot)
                self.answers[slot] = StoredAnswer(content_sha256=processed.key.content_sha256, result=processed.result)
                self.deliveries.append((processed.key, processed.received_at))
            for cancel in processed.cancellations:
                if not cancel.leaves_history:
                    continue
                kept = []
                for entry in self.orders.get(cancel.patient_key, []):
                    same = (entry.sender, entry.placer_number, entry.placer_namespace) == (
                        cancel.sender, cancel.placer_number, cancel.placer_namespace)
                    (self.removed if same else kept).append(entry)
                self.orders[cancel.patient_key] = kept
            for entry in processed.new_orders:
                self.orders.setdefault(entry.patient_key, []).append(entry)
            self.audit.append(processed)
            if processed.delivery_id is not None:
                self.by_delivery[processed.delivery_id] = processed.result

    def record_delivery(self, key: MessageKey, received_at: datetime, delivery_id: str | None = None) -> None:
        with self._lock:
            self._record_delivery(key, received_at, delivery_id)

    def _record_delivery(self, key: MessageKey, received_at: datetime, delivery_id: str | None = None) -> None:
        if delivery_id is not None:
            if delivery_id in self.by_delivery:
                raise DeliveryTaken(delivery_id)
            stored = self.answers.get(self._slot(key))
            if stored is not None:
                self.by_delivery[delivery_id] = stored.result
        self.deliveries.append((key, received_at))

    def save_all(self, batch: list[ProcessedMessage], deliveries: list[tuple] = ()) -> None:
        with self._lock:
            slots = [self._slot(p.key) for p in batch if p.key is not None]
            taken = [slot for slot in slots if slot in self.answers]
            if taken or len(set(slots)) < len(slots):
                raise KeyTaken(taken[0] if taken else slots[0])  # nothing written
            before = ({k: list(v) for k, v in self.orders.items()}, dict(self.answers), list(self.removed),
                      list(self.audit), list(self.deliveries), dict(self.by_delivery))
            try:
                for processed in batch:
                    self.save(processed)
                for delivery in deliveries:
                    self._record_delivery(*delivery)
            except BaseException:
                (self.orders, self.answers, self.removed, self.audit, self.deliveries,
                 self.by_delivery) = before  # all or nothing
                raise
