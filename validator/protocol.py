"""Protocol definitions: a pydantic schema for the files under `protocols/`.

Every number the rules use lives here, read from the protocol file. A new
regimen is a new file. The protocol's version is the SHA-256 of its file.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ProtocolError

Severity = Literal["error", "warning", "info"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DrugMatch(_Strict):
    """How an order's give code is recognised (RXE-2, else RXO-1)."""

    rxnorm: list[str] = []
    ndc: list[str] = []  # any hyphenation matches (compared as 11-digit NDC)
    local_codes: list[str] = []  # matched in any coding system
    text_contains: list[str] = []  # case-insensitive, on the code's text


class CodeSystems(_Strict):
    """Coding-system names (MSH/CWE component 3) that count as RxNorm / NDC / LOINC."""

    rxnorm: list[str]
    ndc: list[str]
    loinc: list[str]
    # RXR-1.3 names of HL7 table 0162 (an empty RXR-1.3 counts as that table too)
    route_table: list[str] = ["HL70162"]


class RouteCode(_Strict):
    """A route code of another coding system (RXR-1.3) and the table 0162 code it stands for."""

    systems: list[str]
    code: str
    route: str


class ObservationMatch(_Strict):
    codes: list[str] = []  # OBX-3 identifiers (any system)
    text_contains: list[str] = []  # case-insensitive on OBX-3 text


class Eligibility(_Strict):
    min_age_years: int
    pediatric_below_years: int
    severity: Severity = "error"


class Dose(_Strict):
    mg_per_m2: Decimal
    tolerance_percent: Decimal
    max_mg_per_dose: Decimal | None = None  # a cap (the 2017 label: one 4.5 mg vial)
    bsa_crosscheck_percent: Decimal  # a sent BSA further than this from Mosteller is an error
    severity: Severity = "error"


class Route(_Strict):
    codes: list[str]  # HL7 table 0162
    text_contains: list[str] = []
    severity: Severity = "error"


class Infusion(_Strict):
    minutes: Decimal
    tolerance_minutes: Decimal
    max_source_disagreement_minutes: Decimal
    rate_units: list[str]  # RXE-24 units read as mL/h
    volume_units: list[str]  # mL
    severity: Severity = "error"


class Schedule(_Strict):
    days: list[int] = Field(min_length=1)  # course days on which a dose may fall (day 1 first)
    tolerance_days: int
    course_days: int  # a dose on or after day 1 + course_days starts a new course
    severity: Severity = "error"

    @property
    def max_doses(self) -> int:
        return len(self.days)


class DoseRule(_Strict):
    """A premedication dose: fixed mg, or mg/kg, with an optional cap."""

    mg: Decimal | None = None
    mg_per_kg: Decimal | None = None
    max_mg: Decimal | None = None


class Equivalent(_Strict):
    """An alternative drug that satisfies a premedication; its dose is the premed's dose × potency_ratio."""

    name: str
    rxnorm: list[str] = []
    text_contains: list[str] = []
    potency_ratio: Decimal  # mg of this drug equal to 1 mg of the premedication


class Window(_Strict):
    """Start of the premedication, in minutes before the GO start (inclusive)."""

    min_minutes_before: Decimal
    max_minutes_before: Decimal


class Premedication(_Strict):
    name: str
    rxnorm: list[str] = []
    text_contains: list[str]
    adult: DoseRule
    pediatric: DoseRule
    routes: list[str]
    window: Window
    equivalents: list[Equivalent] = []


class Premedications(_Strict):
    dose_tolerance_percent: Decimal
    belongs_within_hours: Decimal  # a premed drug starting this close to a GO start belongs to it
    required: list[Premedication]
    # RXR-1 text (case-insensitive, contained) read as a route code, for senders that send
    # "oral" / "intravenous" without a table 0162 code.
    route_text: dict[str, str] = {}
    severity: Severity = "error"


class Cd33(_Strict):
    min_percent: Decimal
    max_age_days: Decimal
    match: ObservationMatch
    # An OBX whose text names one of these is not a CD33-positive percentage ("CD33 negative blasts").
    exclude_text_contains: list[str] = []
    severity: Severity = "error"


class Cytoreduction(_Strict):
    hydroxyurea: DrugMatch
    procedure: ObservationMatch  # leukapheresis: order or OBX codes / text
    within_days_before: Decimal


class Wbc(_Strict):
    threshold_10e9_per_l: Decimal
    max_age_hours: Decimal
    preferred_codes: list[str]  # LOINC, used first
    text_contains: list[str]
    exclude_specimen_words: list[str]  # a text match naming these is not blood
    cytoreduction: Cytoreduction
    severity: Severity = "error"


class LiverTest(_Strict):
    name: str
    match: ObservationMatch
    max_uln_multiple: Decimal


class Liver(_Strict):
    tests: list[LiverTest]
    max_age_hours: Decimal
    severity: Severity = "warning"


class Hsct(_Strict):
    min_days_after_last_dose: Decimal
    match: ObservationMatch = ObservationMatch()  # OBX or order codes; none: no check
    severity: Severity = "warning"


class ObservationSettings(_Strict):
    future_tolerance_minutes: Decimal  # after MSH-7: invalid (go.observation_time)
    height: ObservationMatch
    weight: ObservationMatch
    bsa: ObservationMatch


class Units(_Strict):
    """Unit aliases, matched case-insensitively, whitespace ignored. Values are factors to the base unit."""

    mass_mg: dict[str, Decimal]  # to mg
    height_cm: dict[str, Decimal]
    weight_kg: dict[str, Decimal]
    bsa_m2: dict[str, Decimal]
    per_m2_dose: list[str]  # mg/m2 spellings
    wbc_10e9_per_l: dict[str, Decimal]  # to 10^9/L
    percent: list[str]
    duration_seconds: dict[str, Decimal]  # duration units (TQ1-6, rates) to seconds


# The rules a protocol may mark overridable: never eligibility, CD33, the schedule, the patient,
# the order set cascade or the HL7 checks (docs/protocol.md, "Overrides with a reason").
OVERRIDABLE_RULES = ("go.dose", "go.route", "go.infusion", "go.premedication", "go.wbc", "go.liver", "go.hsct")


class Protocol(_Strict):
    id: str
    title: str
    status: str = "site protocol"
    sources: list[str] = []
    # Codes that name this protocol in an order (see ProtocolSet); the id always counts.
    order_codes: list[str] = []
    drug: DrugMatch
    code_systems: CodeSystems
    # Route codes of other systems read as table 0162 codes (e.g. SNOMED 47625008 -> IV); a code of
    # another system that is not listed makes the route unreadable (docs/protocol.md, "Routes").
    route_codes: list[RouteCode] = []
    eligibility: Eligibility
    dose: Dose
    route: Route
    infusion: Infusion
    schedule: Schedule
    premedication: Premedications
    cd33: Cd33
    wbc: Wbc
    liver: Liver
    hsct: Hsct
    observations: ObservationSettings
    units: Units
    # Overrides with a reason (docs/protocol.md): rules a GO order may override with an NTE and a
    # verifier (ORC-11) listed here. Only OVERRIDABLE_RULES may be marked; the bundled files mark none.
    overridable: list[str] = []
    override_verifiers: list[str] = []
    version: str = ""  # SHA-256 of the file, set by the loader

    @field_validator("overridable")
    @classmethod
    def _only_overridable_rules(cls, rules: list[str]) -> list[str]:
        refused = [r for r in rules if r not in OVERRIDABLE_RULES]
        if refused:
            raise ValueError(f"{', '.join(refused)} cannot be marked overridable (only {', '.join(OVERRIDABLE_RULES)})")
        return rules


BUNDLED_DIR = Path(__file__).resolve().parent.parent / "protocols"
DEFAULT_PROTOCOL_ID = "go-rr-9mg-d1-d14"


def bundled_ids() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def load_protocol(ref: str | Path | None = None) -> Protocol:
    """Load a protocol by bundled id or file path. Raises `ProtocolError` naming the bad field."""
    ref = ref or DEFAULT_PROTOCOL_ID
    path = Path(ref)
    if not path.suffix and (BUNDLED_DIR / f"{ref}.yaml").exists():
        path = BUNDLED_DIR / f"{ref}.yaml"
    if not path.exists():
        raise ProtocolError(
            f"protocol {str(ref)!r} is neither a bundled protocol id ({', '.join(bundled_ids())}) nor a readable file"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProtocolError(f"protocol file {path}: cannot be read ({exc.strerror})") from exc
    return parse_protocol(data, str(path))


def parse_protocol(data: bytes, name: str = "<protocol>") -> Protocol:
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ProtocolError(f"protocol file {name}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ProtocolError(f"protocol file {name}: expected a mapping at the top level")
    raw.pop("version", None)
    try:
        protocol = Protocol.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise ProtocolError(f"protocol file {name}: {problems}") from exc
    return protocol.model_copy(update={"version": hashlib.sha256(data).hexdigest()})


SELECTOR_FIELDS = ("RXE-27", "ORC-4", "NTE")
NTE_TAG = "protocol:"


class ProtocolSet:
    """The protocols a service knows, and which one judges each GO order.

    An order names its protocol explicitly in the configured field — `RXE-27` (give
    indication, its identifier or text), `ORC-4` (placer group number starting with the
    code) or `NTE` (a note `protocol: <code>` in the order group) — by a protocol's id or
    one of its `order_codes`; an order that names none gets the default. An order that
    names an unknown code gets no protocol (None): it is refused rather than judged
    against a regimen it did not ask for.
    """

    def __init__(self, default: Protocol, others: list[Protocol] | None = None, field: str = "RXE-27"):
        if field not in SELECTOR_FIELDS:
            raise ProtocolError(f"protocol selector field {field!r} is not one of {', '.join(SELECTOR_FIELDS)}")
        self.default = default
        self.field = field
        self.by_code: dict[str, Protocol] = {}
        for protocol in [*(others or []), default]:
            for code in [protocol.id, *protocol.order_codes]:
                self.by_code[code.strip().upper()] = protocol

    @property
    def id(self) -> str:
        return self.default.id

    @property
    def version(self) -> str:
        return self.default.version

    @property
    def protocols(self) -> list[Protocol]:
        return list({p.id: p for p in [self.default, *self.by_code.values()]}.values())

    def requested_code(self, order) -> str:
        """The protocol code the order names in the configured field ('' when it names none)."""
        if self.field == "RXE-27":
            for candidate in (order.indication.code, order.indication.text):
                if candidate.strip().upper() in self.by_code:
                    return candidate.strip()
            code = order.indication.code.strip()
            # An indication that is not a protocol code (an ICD-10 code, say) names no protocol.
            return code if code.upper().startswith(("GO-", "GO_")) else ""
        if self.field == "ORC-4":
            group = order.placer_group.strip().upper()
            return next((code for code in sorted(self.by_code, key=len, reverse=True) if group.startswith(code)), "")
        for note in order.notes:
            if note.strip().lower().startswith(NTE_TAG):
                return note.strip()[len(NTE_TAG):].strip()
        return ""

    def for_order(self, order) -> Protocol | None:
        code = self.requested_code(order)
        if not code:
            return self.default
        return self.by_code.get(code.upper())


def load_protocol_set(default_ref: str | Path | None = None, field: str = "RXE-27") -> ProtocolSet:
    """The configured default plus every bundled protocol."""
    default = load_protocol(default_ref)
    others = [load_protocol(pid) for pid in bundled_ids() if pid != default.id]
    return ProtocolSet(default, others, field)
