"""HL7 v2 pharmacy order text -> OrderSet.

Tolerant on form (separators, framing, broken lines, segment order), strict on
meaning: what cannot be read is left empty so that the rules refuse it, and a
message that is not a supported pharmacy order raises `MessageRejected`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import tzinfo
from decimal import Decimal, InvalidOperation

from .er7 import Encoding, RawMessage, Segment, escape, unescape
from .errors import MessageRejected
from .hl7time import Moment, parse_date, parse_datetime, parse_moment
from .model import Coded, Component, Location, Note, Observation, Order, OrderSet, Patient, Quantity, Timing

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
SUPPORTED_TYPES = {"RDE": ("O11", "O25", "O01"), "OMP": ("O09",), "ORM": ("O01",)}

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_TEXT_NUMBER = re.compile(r"^\s*(<=|>=|<|>|=)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(%)?\s*$")
_TEXT_RANGE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(%)?\s*-\s*(\d+(?:\.\d*)?)\s*(%)?\s*$")
_TQ_DURATION = re.compile(r"^([SMHDWL])(\d+(?:\.\d+)?)$", re.I)
_TQ_DURATION_UNITS = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}


def decimal_or_none(raw: str) -> Decimal | None:
    raw = raw.strip()
    if not raw or not _NUMBER.match(raw):
        return None
    try:
        return Decimal(raw)
    except InvalidOperation:
        return None


def coded(seg: Segment, n: int, rep: int = 0) -> Coded:
    more = " ".join(t for t in (seg.component(n, 5, rep), seg.component(n, 9, rep)) if t)
    return Coded(
        code=seg.component(n, 1, rep), text=seg.component(n, 2, rep), system=seg.component(n, 3, rep), more_text=more
    )


def read_header(raw: RawMessage, tz: tzinfo) -> OrderSet:
    """MSH only: enough to answer, even when the rest is rejected."""
    msh = raw.segments()[0] if raw.lines else None
    if msh is None or msh.name != "MSH":
        raise MessageRejected("hl7.structure", "100", "the message does not start with an MSH segment")
    return OrderSet(
        control_id=unescape(msh.field(10), msh.enc).strip(),  # ST: read whole, never split on & or ^
        message_type=msh.field(9),
        message_code=msh.component(9, 1).upper(),
        trigger_event=msh.component(9, 2).upper(),
        version=msh.component(12, 1),
        processing_id=msh.component(11, 1).upper() or "P",
        processing_mode=msh.component(11, 2).upper(),
        sending_application=msh.field(3),
        sending_facility=msh.field(4),
        receiving_application=msh.field(5),
        receiving_facility=msh.field(6),
        message_time=parse_datetime(msh.field(7), tz),
        message_time_latest=_latest(parse_moment(msh.field(7), tz)),
        character_set=msh.component(18, 1).upper(),
        response_hd=[reencode_field(msh.field(n), msh.enc) for n in (3, 4, 5, 6)],
    )


# The longest value of each field the store keeps in a column (workers/store/schema.py: every column is
# longer, a test checks). HL7 v2.7's conformance lengths: ST 199, HD 227, MSG 15 (100 here). A longer
# value is answered AR hl7.size and audited without it (the raw message keeps everything): never a
# database error, retried and dead-lettered. name -> (field, limit in characters)
STORED_FIELD_LIMITS = {
    "control_id": ("MSH-10", 199),
    "sending_application": ("MSH-3", 227),
    "sending_facility": ("MSH-4", 227),
    "sender": ("MSH-3 and MSH-4", 455),
    "message_type": ("MSH-9", 97),
    "patient_id": ("PID-3", 199),
    "patient_key": ("PID-3 with its assigning authority", 427),
    "placer_number": ("ORC-2", 199),
    "placer_namespace": ("ORC-2.2", 227),
    "drug_code": ("RXE-2", 199),
    "drug_text": ("RXE-2.2", 997),
}
_HEADER_SEGMENTS = {"control_id": ("MSH", 10), "sending_application": ("MSH", 3), "sending_facility": ("MSH", 4),
                    "sender": ("MSH", 3), "message_type": ("MSH", 9)}


def _too_long(name: str, value: str) -> MessageRejected | None:
    where, limit = STORED_FIELD_LIMITS[name]
    if len(value) <= limit:
        return None
    segment, field = _HEADER_SEGMENTS.get(name, (where[:3], None))
    return MessageRejected("hl7.size", "207", f"{where} is {len(value)} characters long: at most {limit} are "
                           "accepted", segment, field)


def check_header_lengths(header: OrderSet) -> None:
    """MSH fields the store keeps, within `STORED_FIELD_LIMITS`; else `MessageRejected` (AR hl7.size)."""
    values = {"control_id": header.control_id, "sending_application": header.sending_application,
              "sending_facility": header.sending_facility, "sender": header.sender,
              "message_type": header.message_type}
    for name, value in values.items():
        problem = _too_long(name, value)
        if problem:
            raise problem


def check_stored_lengths(order_set: OrderSet) -> None:
    """The patient and order fields the store keeps, within `STORED_FIELD_LIMITS`; else `MessageRejected`."""
    values = [("patient_id", order_set.patient.id), ("patient_key", order_set.course_key)]
    for order in order_set.orders:
        values += [("placer_number", order.placer_number), ("placer_namespace", order.placer_namespace),
                   ("drug_code", order.drug.code or ""), ("drug_text", order.drug.text or "")]
    for name, value in values:
        problem = _too_long(name, value or "")
        if problem:
            raise problem


def within_stored_lengths(header: OrderSet) -> OrderSet:
    """The header with every over-long value emptied: what an AR for it may keep in the columns."""
    empty = {name: "" for name in ("control_id", "sending_application", "sending_facility", "message_type")
             if len(getattr(header, name)) > STORED_FIELD_LIMITS[name][1]}
    if len(header.sender) > STORED_FIELD_LIMITS["sender"][1]:
        empty.update(sending_application="", sending_facility="")
    return header.model_copy(update=empty) if empty else header


def patient_within_stored_lengths(patient: Patient) -> Patient:
    """The patient an AR keeps (§5: what could be read), or none when PID-3 is too long to store."""
    if len(patient.id) > STORED_FIELD_LIMITS["patient_id"][1] or \
            len(patient.key) > STORED_FIELD_LIMITS["patient_key"][1]:
        return Patient()
    return patient


PROCESSING_IDS = ("P", "T", "D")  # production, training, debugging (docs/protocol.md, Processing id)
PROCESSING_MODES = ("", "T")  # MSH-11.2: current processing, or T (current processing, transmitted at intervals)


def check_processing_id(order_set: OrderSet) -> None:
    """MSH-11: P, T or D (empty is P), with an empty or `T` processing mode; else AR 202."""
    if order_set.processing_id not in PROCESSING_IDS or order_set.processing_mode not in PROCESSING_MODES:
        sent = order_set.processing_id + (f"^{order_set.processing_mode}" if order_set.processing_mode else "")
        raise MessageRejected(
            "hl7.processing_id", "202",
            f"processing id {sent!r} (MSH-11) is not supported: P (production), T (training) or D (debugging)",
            "MSH", 11,
        )


def check_supported(order_set: OrderSet) -> None:
    """Raise `MessageRejected` unless this is a supported pharmacy order in a supported version."""
    if not order_set.version:
        raise MessageRejected("hl7.version", "203", "MSH-12 (version) is missing; supported versions are 2.3 to 2.8.2", "MSH", 12)
    if order_set.version not in SUPPORTED_VERSIONS:
        raise MessageRejected(
            "hl7.version", "203", f"HL7 version {order_set.version} is not supported (2.3 to 2.8.2)", "MSH", 12
        )
    if not order_set.message_code:
        raise MessageRejected("hl7.message_type", "101", "MSH-9 (message type) is missing", "MSH", 9)
    events = SUPPORTED_TYPES.get(order_set.message_code)
    if events is None:
        raise MessageRejected(
            "hl7.message_type", "200",
            f"message type {order_set.message_code} is not a pharmacy order "
            "(RDE^O11, RDE^O25, RDE^O01, OMP^O09, ORM^O01 are processed)", "MSH", 9,
        )
    if order_set.trigger_event not in events:
        raise MessageRejected(
            "hl7.trigger_event", "201",
            f"event {order_set.message_code}^{order_set.trigger_event or '(none)'} is not supported "
            f"(supported: {', '.join(order_set.message_code + '^' + e for e in events)})", "MSH", 9,
        )
    check_processing_id(order_set)
    if not order_set.control_id:
        raise MessageRejected("hl7.control_id", "101", "MSH-10 (message control id) is missing", "MSH", 10)


@dataclass(frozen=True)
class Limits:
    """Bounds on one message, so that a hostile or broken sender costs bounded time and memory."""

    max_message_bytes: int = 1_048_576
    max_segments: int = 5_000
    max_repetitions: int = 1_000  # in any one field


DEFAULT_LIMITS = Limits()


def check_limits(raw: RawMessage, limits: Limits) -> None:
    """Raise `MessageRejected` (hl7.size) when the message exceeds a limit."""
    size = sum(len(line.encode("utf-8", "surrogatepass")) + 1 for line in raw.lines)
    if size > limits.max_message_bytes:
        raise MessageRejected(
            "hl7.size", "207", f"message of {size} bytes exceeds the limit of {limits.max_message_bytes} bytes"
        )
    if len(raw.lines) > limits.max_segments:
        raise MessageRejected(
            "hl7.size", "207", f"message of {len(raw.lines)} segments exceeds the limit of {limits.max_segments}"
        )
    rep = raw.enc.repetition
    for line in raw.lines:
        if line.count(rep) > limits.max_repetitions:
            for n, field_text in enumerate(line.split(raw.enc.field)):
                if field_text.count(rep) >= limits.max_repetitions:
                    raise MessageRejected(
                        "hl7.size", "207",
                        f"{line[:3]} field {n} repeats {field_text.count(rep) + 1} times; the limit is "
                        f"{limits.max_repetitions}", line[:3], n,
                    )


def read_order_set(raw: RawMessage, tz: tzinfo) -> OrderSet:
    """Read a whole pharmacy order message. Raises `MessageRejected` when it is not one."""
    order_set = read_header(raw, tz)
    check_supported(order_set)
    segments = raw.segments()
    current: _OrderState | None = None
    states: list[_OrderState] = []
    observations: list[Observation] = []
    for seg in segments[1:]:
        name = seg.name
        if name == "PID" and not order_set.pid_line:
            order_set.patient = _read_patient(seg)
            order_set.pid_line = reencode(seg)
        elif name == "ORC":
            current = _OrderState(_new_order(len(states), seg), orc=seg)
            states.append(current)
        elif name == "NTE" and current is not None:
            current.order.notes.append(_leaf_text(seg, 3))
            if current.after_give:  # an NTE directly after the RXE (or RXO): it may override a rule
                current.order.give_notes.append(
                    Note(text=_leaf_text(seg, 3), location=Location(segment="NTE", occurrence=seg.occurrence, field=3)))
        elif name in ("RXE", "RXO", "RXR", "TQ1", "RXC", "OBR"):
            # An RXE/RXO without its own ORC (seen in older ORM traffic) starts an order of its own.
            if current is None or (name == "RXE" and current.rxe) or (name == "RXO" and current.rxo):
                current = _OrderState(_new_order(len(states), None))
                states.append(current)
            _read_order_segment(current, seg, tz)
        if current is not None and name != "NTE":
            current.after_give = name in ("RXE", "RXO")
        if name == "OBX":
            observations.append(_read_observation(seg, current.order.index if current else None, tz))
    orders = [state.finish(tz) for state in states]
    if not any(o.has_give or o.control in ("CA", "DC") for o in orders):
        raise MessageRejected(
            "hl7.structure", "101", f"{order_set.message_code}^{order_set.trigger_event} has no order group (ORC with RXE/RXO)",
            "ORC", 0,
        )
    order_set.orders = orders
    order_set.observations = observations
    return order_set


def _new_order(index: int, orc: Segment | None) -> Order:
    if orc is None:
        return Order(index=index, control="NW")
    return Order(
        index=index,
        control=orc.component(1).upper(),
        placer_number=orc.component(2, 1),
        placer_namespace=orc.component(2, 2),
        filler_number=orc.component(3, 1),
        placer_group=orc.component(4, 1),
        verified_by=orc.component(11, 1).strip(),
        orc_location=Location(segment="ORC", occurrence=orc.occurrence, field=1),
        orc_line=reencode(orc),
    )


class _OrderState:
    """The segments of one ORDER group while it is being read."""

    def __init__(self, order: Order, orc: Segment | None = None):
        self.order = order
        self.orc = orc
        self.rxe: Segment | None = None
        self.rxo: Segment | None = None
        self.tq1_before: Segment | None = None  # TIMING group (before RXO)
        self.tq1_after: Segment | None = None  # TIMING_ENCODED group (after RXE)
        self.after_give = False  # the last segment read was the RXE/RXO (or an NTE right after it)
        self.tq1_count = 0  # every TQ1 of the group: more than one plans more than one start
        self.rxr_before: list[Segment] = []
        self.rxr_after: list[Segment] = []

    def finish(self, tz: tzinfo) -> Order:
        order = self.order
        rxrs = self.rxr_after or self.rxr_before
        if rxrs:
            # The RXR after RXE (the encoded order) wins over the order detail's.
            order.route = coded(rxrs[0], 1)
            order.route_location = Location(segment="RXR", occurrence=rxrs[0].occurrence, field=1)
        main = self.rxe or self.rxo
        order.has_give = main is not None or order.drug_location is not None
        order.echo_lines = [reencode(seg) for seg in ([main] if main else []) + rxrs]
        order.timing = _timing(self, tz)
        return order


def _read_order_segment(state: _OrderState, seg: Segment, tz: tzinfo) -> None:
    order = state.order
    name = seg.name
    if name == "RXE":
        state.rxe = seg
        # RXE wins over RXO where both exist (docs/protocol.md, "Orders without RXE").
        _read_give(order, seg, drug_field=2)
        order.indication = coded(seg, 27)
        order.rate_amount = decimal_or_none(seg.component(23))
        order.rate_units = coded(seg, 24)
        if seg.field(23):
            order.rate_location = Location(segment="RXE", occurrence=seg.occurrence, field=23)
    elif name == "RXO":
        state.rxo = seg
        if state.rxe is None:
            _read_give(order, seg, drug_field=1)
    elif name == "RXR":
        (state.rxr_after if state.rxe else state.rxr_before).append(seg)
    elif name == "TQ1":
        state.tq1_count += 1
        if state.rxe and state.tq1_after is None:
            state.tq1_after = seg
        elif not state.rxe and state.tq1_before is None:
            state.tq1_before = seg
    elif name == "RXC":
        amount_raw, amount = _single_number(seg, 3)
        if amount is not None:
            order.components.append(Quantity(value=amount, unit=coded(seg, 4)))
        order.rx_components.append(Component(
            kind=seg.component(1).strip().upper(), drug=coded(seg, 2), amount=amount, amount_raw=amount_raw,
            units=coded(seg, 4), location=Location(segment="RXC", occurrence=seg.occurrence, field=3),
        ))
    elif name == "OBR" and not (order.drug.code or order.drug.text):
        # ORC + OBR is a non-pharmacy order (ORM^O01): named by its service id.
        order.drug = coded(seg, 4)
        order.drug_location = Location(segment="OBR", occurrence=seg.occurrence, field=4)


def _single_number(seg: Segment, n: int) -> tuple[str, Decimal | None]:
    """(text as sent, number) of an NM field; a field with repetitions or components is no number.

    `15.2~99` or `15.2^mg` must not be read as 15.2: which value was meant cannot be known, so
    the rules refuse it (the safe reading) and the message shows what was sent.
    """
    raw = seg.field(n)
    if seg.enc.repetition in raw or seg.enc.component in raw:
        return unescape(raw, seg.enc), None
    text = seg.component(n)
    return text, decimal_or_none(text)


def _read_give(order: Order, seg: Segment, drug_field: int) -> None:
    """Drug, amount, maximum and units: RXE-2..5, or RXO-1..4 (the same four fields, one earlier)."""
    order.drug = coded(seg, drug_field)
    order.drug_location = Location(segment=seg.name, occurrence=seg.occurrence, field=drug_field)
    order.amount_raw, order.amount = _single_number(seg, drug_field + 1)
    order.amount_max_raw, order.amount_max = _single_number(seg, drug_field + 2)
    order.amount_units = coded(seg, drug_field + 3)
    order.amount_location = Location(segment=seg.name, occurrence=seg.occurrence, field=drug_field + 1)


def _timing(state: _OrderState, tz: tzinfo) -> Timing:
    """TQ1 (the encoded order's first) gives the timing; the TQ of RXE-1, else ORC-7, fills what it lacks."""
    timing = Timing()
    tq1 = state.tq1_after or state.tq1_before
    if tq1 is not None:
        _set_start(timing, parse_moment(tq1.component(7), tz))
        if tq1.field(7):
            timing.start_location = Location(segment="TQ1", occurrence=tq1.occurrence, field=7)
        _set_end(timing, parse_moment(tq1.component(8), tz))
        if tq1.field(8):
            timing.end_location = Location(segment="TQ1", occurrence=tq1.occurrence, field=8)
        value = decimal_or_none(tq1.component(6, 1)) if len(tq1.repetitions(6)) <= 1 else None
        if tq1.component(6, 1):
            # a quantity sent (CQ.1 not empty) is located even when unreadable: go.infusion refuses it
            timing.duration_location = Location(segment="TQ1", occurrence=tq1.occurrence, field=6)
        if value is not None:
            timing.service_duration = Quantity(value=value, unit=Coded(code=tq1.component(6, 2), text=tq1.component(6, 3)))
            timing.duration_location = Location(segment="TQ1", occurrence=tq1.occurrence, field=6)
        timing.priority = "~".join(tq1.component(9, 1, r) for r in range(len(tq1.repetitions(9))))
        timing.condition = tq1.component(10)
    timing.several_starts = _several_starts(state, tq1)
    tq_source: tuple[Segment, int] | None = None
    if state.rxe is not None and state.rxe.field(1):
        tq_source = (state.rxe, 1)
    elif state.orc is not None and state.orc.field(7):
        tq_source = (state.orc, 7)
    if tq_source is not None:
        seg, n = tq_source
        if timing.start is None and seg.component(n, 4):
            _set_start(timing, parse_moment(seg.component(n, 4), tz))
            timing.start_location = Location(segment=seg.name, occurrence=seg.occurrence, field=n)
        if timing.end is None and seg.component(n, 5):
            _set_end(timing, parse_moment(seg.component(n, 5), tz))
            timing.end_location = Location(segment=seg.name, occurrence=seg.occurrence, field=n)
        if timing.service_duration is None:
            m = _TQ_DURATION.match(seg.component(n, 3))
            if seg.component(n, 3) and not m:
                # a duration sent but unreadable (INDEF, X240): located without a value, so go.infusion
                # refuses it rather than judging the other sources alone
                timing.duration_location = Location(segment=seg.name, occurrence=seg.occurrence, field=n)
            if m:
                timing.service_duration = Quantity(
                    value=Decimal(m.group(2)), unit=Coded(code=_TQ_DURATION_UNITS[m.group(1).upper()])
                )
                timing.duration_location = Location(segment=seg.name, occurrence=seg.occurrence, field=n)
        if not timing.priority:
            timing.priority = seg.component(n, 6)
        if not timing.condition:
            timing.condition = seg.component(n, 7)
    return timing


_ONCE = ("", "ONCE")
_TQ_REPEATS = re.compile(r"^X(\d+)$", re.I)


def _several_starts(state: _OrderState, tq1: Segment | None) -> str:
    """Why the order plans more than one administration ('' when it plans one): docs/protocol.md,
    "One start per GO order". A repeat field that cannot be read counts as more than one start."""
    if state.tq1_count > 1:
        return f"{state.tq1_count} TQ1 segments"
    if tq1 is not None:
        pattern = tq1.component(3).strip().upper()
        if pattern not in _ONCE or len(tq1.repetitions(3)) > 1:
            return f"TQ1-3 repeat pattern {tq1.field(3)!r}"
        total = tq1.component(14).strip()
        if total and (decimal_or_none(total) is None or decimal_or_none(total) != 1):
            return f"TQ1-14 total occurrences {total!r}"
        if len([r for r in tq1.repetitions(4) if r.strip()]) > 1:
            return f"several TQ1-4 explicit times {tq1.field(4)!r}"
    for seg, n in ((state.rxe, 1), (state.orc, 7)):
        if seg is None or not seg.field(n):
            continue
        if len(seg.repetitions(n)) > 1:
            return f"{seg.name}-{n} repeats its timing ({len(seg.repetitions(n))} TQ repetitions)"
        interval = seg.component(n, 2).strip().upper()
        if interval not in _ONCE:
            return f"{seg.name}-{n} interval {interval!r}"
        duration = seg.component(n, 3).strip()
        repeats = _TQ_REPEATS.match(duration)
        if repeats and int(repeats.group(1)) != 1:
            return f"{seg.name}-{n} duration {duration!r} ({repeats.group(1)} times)"
    return ""


def _latest(moment: Moment | None) -> object:
    return moment.latest if moment is not None and not moment.exact else None


def _set_start(timing: Timing, moment: Moment | None) -> None:
    timing.start = moment.earliest if moment else None
    timing.start_latest = _latest(moment)  # type: ignore[assignment]
    timing.start_has_time = moment.has_time_of_day if moment else True


def _set_end(timing: Timing, moment: Moment | None) -> None:
    timing.end = moment.earliest if moment else None
    timing.end_latest = _latest(moment)  # type: ignore[assignment]


def readable_patient(raw: RawMessage) -> Patient:
    """PID-3 (and the rest of `Patient`) of a message that is rejected as a whole, when it can be read:
    the audit record of an `AR` keeps it (docs/interfaces.md §5, "Rejected messages keep what could be
    read"). An empty `Patient` when there is no PID."""
    pid = next((seg for seg in raw.segments()[1:] if seg.name == "PID"), None)
    return _read_patient(pid) if pid is not None else Patient()  # within the stored lengths: service._reject


def _read_patient(pid: Segment) -> Patient:
    chosen = 0
    reps = pid.repetitions(3)
    for i in range(len(reps)):
        if pid.component(3, 5, i).upper() == "MR" and pid.component(3, 1, i):
            chosen = i
            break
    else:
        for i in range(len(reps)):
            if pid.component(3, 1, i):
                chosen = i
                break
    birth_raw = pid.component(7, 1)
    return Patient(
        id=pid.component(3, 1, chosen),
        id_authority=pid.component(3, 4, chosen),
        birth_raw=birth_raw,
        birth_date=parse_date(birth_raw) if len(birth_raw) >= 8 else None,
        sex=pid.component(8),
    )


def _read_observation(seg: Segment, order_index: int | None, tz: tzinfo) -> Observation:
    value_type = seg.component(2).upper()
    observed = parse_moment(seg.component(14), tz)
    units = coded(seg, 6)
    raw_value = seg.field(5)
    quantity: Quantity | None = None
    if len([r for r in seg.repetitions(5) if r.strip()]) > 1 and value_type in ("NM", "SN", ""):
        pass  # several numbers in one result (8~45): which one is meant cannot be known -> no number
    elif value_type == "SN":
        # SN: comparator ^ num1 ^ separator/suffix ^ num2. "25^+" is "25 or more" (a lower bound);
        # "1^:^10" or "1^/^10" is a ratio, not a count; "30^-^40" a range: both ends are kept, and each
        # rule reads the end least favourable to accepting (Quantity.high / value).
        comparator = seg.component(5, 1)
        first = decimal_or_none(seg.component(5, 2))
        separator = seg.component(5, 3)
        if separator == "+" and not comparator:
            comparator = ">="
        second = decimal_or_none(seg.component(5, 4)) if separator == "-" else None
        if first is not None and separator in ("", "-", "+"):
            quantity = Quantity(value=first, unit=units, comparator=comparator,
                                upper=second if second is not None and second >= first and not comparator else None)
    else:
        quantity = text_quantity(seg.component(5, 1) if value_type in ("NM", "") else _leaf_text(seg, 5), units)
    return Observation(
        location=Location(segment="OBX", occurrence=seg.occurrence, field=5),
        set_id=seg.component(1),
        value_type=value_type,
        code=coded(seg, 3),
        raw_value=_leaf_text(seg, 5) if raw_value else "",
        quantity=quantity,
        units=units,
        reference_range=seg.component(7),
        abnormal_flags=seg.component(8),
        status=seg.component(11).upper(),
        observed_at=observed.earliest if observed else None,
        observed_latest=_latest(observed),
        order_index=order_index,
    )


def text_quantity(text: str, units: Coded) -> Quantity | None:
    """The number an observation value written as text holds: `8.4`, `>90%`, `85 %`, a range `30-40`.

    Shared by the HL7 reader (OBX-5) and the FHIR reader (Observation.valueString), so a value means
    the same whichever way it came.
    """
    number = decimal_or_none(text)
    if number is not None:
        return Quantity(value=number, unit=units)
    m = _TEXT_NUMBER.match(text)
    if m:
        return Quantity(value=Decimal(m.group(2)), unit=units if not m.group(3) else Coded(code="%"), comparator=m.group(1) or "")
    m = _TEXT_RANGE.match(text)
    if m:  # a range "30-40": both ends kept; each rule reads the end least favourable to accepting
        low, high = Decimal(m.group(1)), Decimal(m.group(3))
        return Quantity(value=low, upper=high if high >= low else None,
                        unit=units if not (m.group(2) or m.group(4)) else Coded(code="%"))
    return None


def _leaf_text(seg: Segment, n: int) -> str:
    """A text value with its components joined back (ST/TX/FT may contain `^` as escaped text)."""
    return " ".join(c for c in seg.components(n) if c).strip()


STANDARD = Encoding()


def reencode_field(raw: str, enc: Encoding) -> str:
    """One field written with the standard encoding characters `^~\\&` (the response's)."""
    if enc == STANDARD:
        return raw
    reps = []
    for rep in raw.split(enc.repetition):
        comps = ["&".join(escape(unescape(sub, enc)) for sub in comp.split(enc.subcomponent))
                 for comp in rep.split(enc.component)]
        reps.append("^".join(comps))
    return "~".join(reps)


def reencode(seg: Segment) -> str:
    """A segment written with the standard encoding characters `|^~\\&` (the response's)."""
    if seg.enc == STANDARD:
        return seg.line
    return seg.name + "|" + "|".join(reencode_field(raw, seg.enc) for raw in seg.fields[1:])
