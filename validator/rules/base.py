"""What every rule receives and declares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any

from ..findings import Finding
from ..history import HistoryEntry
from ..model import Observation, Order, OrderSet
from ..protocol import Protocol


@dataclass
class DoseContext:
    """One GO dose being judged, with everything a rule may read.

    `history` is the patient's course history (accepted orders from earlier
    messages) plus the doses of this message already accepted, in start order.
    `observations` are the message's usable observations (final, not future-dated).
    Rules write the values they computed (BSA, expected dose, minutes…) into
    `computed`, which goes into the audit record.
    """

    order_set: OrderSet
    dose: Order
    protocol: Protocol
    history: list[HistoryEntry]
    observations: list[Observation]
    tz: tzinfo
    received_at: datetime
    age_years: int | None = None
    computed: dict[str, Any] = field(default_factory=dict)
    # The protocol of every GO order of the message, by order index (an order's protocol decides
    # which premeds belong to it); orders missing here are judged under `protocol`.
    dose_protocols: dict[int, Protocol] = field(default_factory=dict)
    # Every protocol the service knows, by id (a course follows its day-1 dose's protocol).
    known_protocols: dict[str, Protocol] = field(default_factory=dict)

    @property
    def start(self) -> datetime | None:
        return self.dose.timing.start

    @property
    def start_date(self) -> date | None:
        """The dose's calendar day in the service's time zone."""
        return self.start.astimezone(self.tz).date() if self.start else None

    @property
    def pediatric(self) -> bool:
        return self.age_years is not None and self.age_years < self.protocol.eligibility.pediatric_below_years

    @property
    def message_orders(self) -> list[Order]:
        return self.order_set.orders


@dataclass(frozen=True)
class Rule:
    """A catalogue entry: the id, the check, the protocol parameters it reads, its doc."""

    id: str
    check: Callable[[DoseContext], list[Finding]]
    parameters: tuple[str, ...]
    doc: str
