"""The order set as the rules see it: typed, units kept as sent, times zone-aware."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    """Model-typed defaults use `Field(default_factory=...)`: pydantic deep-copies an instance default
    on every construction, which cost ~15 % of a full validation (BENCHMARKS.md)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)


class Coded(_Model):
    """A coded element (CWE/CE): code^text^system."""

    code: str = ""
    text: str = ""
    system: str = ""
    more_text: str = ""  # alternate text (5) and original text (9), for text matching

    def label(self) -> str:
        return self.text or self.code


class Location(_Model):
    """Where a value sits: segment name, its occurrence in the message, field number.

    An order set read from FHIR (validator/fhir.py) keeps the same coordinates, which the rules
    compute with (`model_copy(update={"field": 14})` is "the time of this observation"), and adds
    the resource (`Observation/abc`) and its element for each segment field (`OBX-14` ->
    `effectiveDateTime`), so that the location shown is a FHIR path (`Observation/abc.effectiveDateTime`).
    HL7 locations leave both empty.
    """

    segment: str
    occurrence: int = 1
    field: int = 0
    resource: str = ""  # FHIR input: "MedicationRequest/abc"
    elements: dict[str, str] | None = None  # FHIR input: "SEG-field" -> element path in that resource

    def short(self) -> str:
        """`RXE-3` (HL7), or the FHIR path of the value: the JSON finding's location."""
        if self.resource:
            element = (self.elements or {}).get(f"{self.segment}-{self.field}", "")
            return f"{self.resource}.{element}" if element else self.resource
        return f"{self.segment}-{self.field}" if self.field else self.segment

    def err2(self) -> str:
        """`RXE^1^3`: ERR-2 of the response."""
        return f"{self.segment}^{self.occurrence}^{self.field}" if self.field else f"{self.segment}^{self.occurrence}"


class Quantity(_Model):
    """A number with its unit as sent; `comparator` keeps a bound such as `>` of SN `>^90`."""

    value: Decimal  # a range's lower end
    unit: Coded = Field(default_factory=Coded)
    comparator: str = ""
    upper: Decimal | None = None  # a range's upper end (`30-40`, SN `30^-^40`)

    @property
    def high(self) -> Decimal:
        """The upper end of a range, else the value: what a rule reads when a high value refuses
        (WBC, liver tests); the lower end (`value`) when a low value refuses (CD33)."""
        return self.upper if self.upper is not None else self.value


class Component(_Model):
    """One RXC segment: an additive (`A`) or base (`B`) of the order (HL7 table 0166)."""

    kind: str = ""  # RXC-1
    drug: Coded = Field(default_factory=Coded)  # RXC-2
    amount: Decimal | None = None  # RXC-3
    amount_raw: str = ""
    units: Coded = Field(default_factory=Coded)  # RXC-4
    location: Location | None = None  # the RXC segment (field 3: its amount)


class Observation(_Model):
    location: Location  # the OBX segment
    set_id: str = ""
    value_type: str = ""
    code: Coded = Field(default_factory=Coded)
    raw_value: str = ""
    quantity: Quantity | None = None  # numeric reading of OBX-5, when it has one
    units: Coded = Field(default_factory=Coded)
    reference_range: str = ""
    abnormal_flags: str = ""
    status: str = ""
    observed_at: datetime | None = None  # the earliest instant OBX-14 may name (validator/hl7time.py)
    observed_latest: datetime | None = None  # the latest, when OBX-14 is coarse or ambiguous
    order_index: int | None = None  # the order group it came in, if any

    @property
    def final(self) -> bool:
        return self.status.upper() in ("F", "C")


class Note(_Model):
    """One NTE: its NTE-3 text and where it is."""

    text: str
    location: Location


class Timing(_Model):
    """Timing of one order, from TQ1 (v2.5+) or the TQ of RXE-1 / ORC-7 (v2.3/2.4)."""

    start: datetime | None = None  # the earliest instant the start may name (validator/hl7time.py)
    end: datetime | None = None
    # The latest instant, when the time is coarser than a minute or a wall-clock time the zone
    # skips or repeats (None: exact); windows and limits are judged at the less favourable end.
    start_latest: datetime | None = None
    end_latest: datetime | None = None
    start_has_time: bool = True  # False: a date alone (a GO start needs a time of day)
    several_starts: str = ""  # why the order plans more than one administration ('' = one)
    service_duration: Quantity | None = None  # TQ1-6, e.g. 240^min
    priority: str = ""  # TQ1-9 / TQ-6, e.g. PRN
    condition: str = ""  # TQ1-10 / TQ-7
    start_location: Location | None = None
    end_location: Location | None = None
    duration_location: Location | None = None

    @property
    def as_needed(self) -> bool:
        return "PRN" in self.priority.upper().split("~") or bool(self.condition)


NEW_ORDER_CONTROLS = ("NW", "XO", "RP", "")  # ORC-1 of a new order (XO/RP replace one); CA/DC cancel


class Order(_Model):
    """One ORDER group: ORC with its RXE/RXO, RXR, TQ1, RXC and OBX."""

    index: int  # 0-based position among the message's orders
    control: str = ""  # ORC-1
    placer_number: str = ""  # ORC-2.1
    placer_namespace: str = ""  # ORC-2.2
    filler_number: str = ""  # ORC-3.1
    placer_group: str = ""  # ORC-4.1
    drug: Coded = Field(default_factory=Coded)  # RXE-2, else RXO-1
    drug_location: Location | None = None
    amount: Decimal | None = None  # RXE-3, else RXO-2
    amount_raw: str = ""
    amount_max: Decimal | None = None  # RXE-4 (RXO-3)
    amount_max_raw: str = ""  # RXE-4 as sent (an unreadable maximum is refused by go.dose)
    amount_units: Coded = Field(default_factory=Coded)  # RXE-5, else RXO-4
    amount_location: Location | None = None
    route: Coded | None = None  # RXR-1
    route_location: Location | None = None
    timing: Timing = Field(default_factory=Timing)
    rate_amount: Decimal | None = None  # RXE-23
    rate_units: Coded = Field(default_factory=Coded)  # RXE-24
    rate_location: Location | None = None
    components: list[Quantity] = []  # RXC-3/4 amounts (volume for the rate)
    rx_components: list[Component] = []  # every RXC, read (admixtures: validator/admixture.py)
    # An admixture judged as its drug (validator/admixture.py): RXE-3/RXE-5 were the bag's volume.
    give_volume: Quantity | None = None
    admixture: bool = False
    has_give: bool = False  # the group has an RXE, RXO (or OBR): something to validate
    indication: Coded = Coded()  # RXE-27 give indication (may name the protocol)
    notes: list[str] = []  # NTE-3 texts in the order group
    give_notes: list[Note] = []  # the NTEs directly after the order's RXE (or RXO): overrides
    verified_by: str = ""  # ORC-11.1 (verified by): who verified an override
    orc_location: Location | None = None
    # Raw segment lines echoed in the response (ORC, RXE or RXO, RXR).
    echo_lines: list[str] = []
    orc_line: str = ""

    @property
    def is_new(self) -> bool:
        """A new order (NW, XO, RP or an empty ORC-1), the orders the rules judge and count as evidence.

        `control` is compared as read: the reader strips and upper-cases ORC-1, so a control that
        was not normalised (an order built by hand as `nw`) is no new order, the same reading as the
        engine's, which refuses it as an unprocessed order control (docs/protocol.md).
        """
        return self.control in NEW_ORDER_CONTROLS

    @property
    def placer_key(self) -> str:
        return f"{self.placer_number}^{self.placer_namespace}"

    def drug_label(self) -> str:
        return self.drug.text or self.drug.code


class Patient(_Model):
    id: str = ""  # PID-3 chosen identifier (type MR, else the first)
    id_authority: str = ""
    birth_raw: str = ""  # PID-7 as sent
    birth_date: date | None = None  # None when absent or partial (no day)
    sex: str = ""

    @property
    def key(self) -> str:
        """The course history's patient key."""
        return f"{self.id}^{self.id_authority}" if self.id else ""


class OrderSet(_Model):
    """One pharmacy order message, read."""

    control_id: str = ""
    message_type: str = ""  # MSH-9 as sent, e.g. RDE^O11^RDE_O11
    message_code: str = ""  # MSH-9.1
    trigger_event: str = ""  # MSH-9.2
    version: str = ""  # MSH-12.1
    processing_id: str = "P"  # MSH-11.1, upper case; empty is P
    processing_mode: str = ""  # MSH-11.2
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_time: datetime | None = None  # MSH-7 (its earliest instant)
    message_time_latest: datetime | None = None
    character_set: str = ""  # MSH-18 (first repetition), upper case: "UNICODE UTF-8" asks for UTF-8 answers
    response_hd: list[str] = []  # MSH-3..6 re-encoded with `^~\\&`, the response's encoding characters
    patient: Patient = Field(default_factory=Patient)
    pid_line: str = ""
    orders: list[Order] = []
    observations: list[Observation] = []

    @property
    def sender(self) -> str:
        return f"{self.sending_application}^{self.sending_facility}"

    @property
    def course_key(self) -> str:
        """The key of the patient's course history: the patient key, kept apart per processing id.

        Production (`P`) uses the patient key itself; a training (`T`) or debugging (`D`) message
        has its own history (`MRN^AUTH#T`), so a training copy never blocks or counts for production.
        """
        key = self.patient.key
        if not key or self.processing_id == "P":
            return key
        return f"{key}#{self.processing_id}"
