"""FHIR R4 resources -> the order set the HL7 reader fills, so every rule runs unchanged (CDS Hooks order-sign).

Pure: no I/O. The resources are read and validated with `fhir.resources` (its R4B models: FHIR 4.3.0,
the R4 line for pydantic v2; MedicationRequest, Observation, Patient, Medication and Bundle read the
same elements as 4.0.1). What a model gives is mapped onto `validator.model`:

- MedicationRequest -> `Order`: medicationCodeableConcept (or a resolved medicationReference) -> the
  give code, RxNorm and NDC codings named as the protocols' code systems (`RXNORM`, `NDC`);
  dosageInstruction[0].doseAndRate[0].doseQuantity (doseRange low/high: RXE-3/RXE-4) -> amount and
  units (UCUM code, else unit); route (SNOMED 47625008/26643006/78421000/34206005, or a table 0162
  code) -> route; timing.repeat.boundsPeriod.start/.end (else one timing.event) -> start/end;
  timing.repeat.duration + durationUnit -> service duration; rateQuantity (or a rateRatio per h/min)
  -> rate; identifier of type PLAC (else the resource id) -> placer number; groupIdentifier -> placer
  group (ORC-4); reasonCode[0] -> give indication (RXE-27); note -> NTE texts; status/intent -> order
  control; asNeeded -> PRN.
- Observation -> `Observation`: the coding the protocols know (else LOINC, else the first);
  valueQuantity (with comparator), valueString (read as the HL7 reader reads a text value),
  valueRange (its low value, as a range `30-40` is read), valueInteger, valueCodeableConcept,
  valueDateTime; referenceRange[0] -> `low-high`; effectiveDateTime / effectiveInstant /
  effectivePeriod.start -> observation time; status final -> F, amended/corrected -> C, others not final.
- Patient -> `Patient`: the identifier of type MR (else the first) with its assigner (else its
  system) as the authority; birthDate; gender.

Locations keep the HL7 coordinates the rules compute with and add the FHIR path (docs/cds-hooks.md)
(`MedicationRequest/abc.dosageInstruction[0].doseAndRate[0].doseQuantity`): see `Location`.

What cannot be read is reported as a finding (`rxgate.fhir`, an error) rather than dropped; a GO
order that plans more than one administration is refused (`go.schedule`, as for HL7).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient
from pydantic import ValidationError

from .drugs import is_protocol_drug
from .findings import Finding, finding
from .history import HistoryEntry
from .hl7time import format_datetime, wall_clock_instant
from .model import Coded, Location, Observation, Order, OrderSet, Patient, Quantity
from .protocol import ProtocolSet
from .reader import text_quantity
from .verdict import Judgement

RULE_FHIR = "rxgate.fhir"
RULE_SCHEDULE = "go.schedule"
ONE_START = "one order per dose: this order plans more than one start"

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0162 = "http://terminology.hl7.org/CodeSystem/v2-0162"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# Coding systems by the names the HL7 reader sees in CWE-3 (and the protocols' code_systems list).
SYSTEM_NAMES = {RXNORM: "RXNORM", NDC: "NDC", LOINC: "LN", SNOMED: "SCT", UCUM: "UCUM", V2_0162: "HL70162"}
# SNOMED CT route codes -> HL7 table 0162, so the route rules read one code set.
SNOMED_ROUTES = {
    "47625008": ("IV", "Intravenous"),
    "26643006": ("PO", "Oral"),
    "78421000": ("IM", "Intramuscular"),
    "34206005": ("SC", "Subcutaneous"),
}
# The HL7 table 0085 status of an observation: only F and C count (validator.model.Observation.final).
OBSERVATION_STATUS = {"final": "F", "amended": "C", "corrected": "C", "preliminary": "P", "registered": "I",
                      "cancelled": "X", "entered-in-error": "W", "unknown": "U"}
GENDER = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
NEW_ORDER_STATUSES = ("draft", "active")  # active: an order re-signed after a revision (order-sign)
CANCEL_STATUSES = {"cancelled": "CA", "stopped": "DC"}
ORDER_INTENTS = ("order", "original-order", "reflex-order", "filler-order", "instance-order")
# A MedicationRequest of the patient's record counts in the course history with these statuses
# (a stopped dose may have been partly given: it counts, the safe reading).
HISTORY_STATUSES = ("active", "on-hold", "completed", "stopped", "unknown")
UCUM_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 604800, "mo": 2_592_000, "a": 31_536_000}
MAX_ERRORS_SHOWN = 3


class FhirRequestError(ValueError):
    """The request is not something rxgate can read at all (the caller answers 400 with this text)."""


# --- reading resources with the model library -----------------------------------------------------


def validation_text(exc: Exception) -> str:
    """A model library error in one line: the element paths and what is wrong with them."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:MAX_ERRORS_SHOWN]:
            where = ".".join(str(p) for p in err.get("loc", ())) or "resource"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        more = exc.error_count() - MAX_ERRORS_SHOWN
        return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
    if isinstance(exc, KeyError):
        return f"unknown resource type {exc.args[0]!r}"
    return str(exc) or type(exc).__name__


@dataclass
class Read:
    """The resources of one JSON value (a resource or a Bundle), and the entries that could not be read."""

    resources: list[tuple[str, Any]] = field(default_factory=list)  # (label, model instance)
    problems: list[Finding] = field(default_factory=list)
    paged: bool = False  # a searchset Bundle with a `next` link: more entries exist on the server
    next_url: str = ""
    outcomes: list[str] = field(default_factory=list)  # error OperationOutcomes the client sent instead of data


def _problem(message: str, where: str, order_index: int | None = None) -> Finding:
    found = finding(RULE_FHIR, "error", message, Location(segment="FHIR", resource=where))
    return found.model_copy(update={"order_index": order_index}) if order_index is not None else found


def _label(resource: Any, fallback: str) -> str:
    rid = getattr(resource, "id", None)
    return f"{resource.get_resource_type()}/{rid}" if rid else fallback


def read_bundle(data: Any, where: str) -> Read:
    """A Bundle (or a single resource) read entry by entry: one unreadable entry is reported, not fatal."""
    out = Read()
    if not isinstance(data, dict):
        out.problems.append(_problem(f"{where} is not a FHIR resource (a JSON object)", where))
        return out
    if data.get("resourceType") != "Bundle":
        return _read_one(data, where, out)
    try:
        # the Bundle's own elements through the model; its entries one by one below
        shell = Bundle.model_validate({**data, "entry": None})
    except (ValidationError, KeyError, ValueError, TypeError) as exc:
        out.problems.append(_problem(f"{where} is not a valid FHIR Bundle: {validation_text(exc)}", where))
        return out
    next_link = next((link for link in shell.link or [] if link.relation == "next" and link.url), None)
    if next_link is not None:
        out.paged, out.next_url = True, str(next_link.url)
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        out.problems.append(_problem(f"{where}.entry is not a list", where))
        return out
    for i, raw in enumerate(entries):
        label = f"{where}.entry[{i}]"
        try:
            entry = BundleEntry.model_validate(raw)
        except (ValidationError, KeyError, ValueError, TypeError) as exc:
            out.problems.append(_problem(f"{label} is not valid FHIR R4: {validation_text(exc)}", label))
            continue
        if entry.resource is None:
            continue
        _keep(entry.resource, label, out)
    return out


def _read_one(data: dict, where: str, out: Read) -> Read:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        resource = get_fhir_model_class(str(data.get("resourceType"))).model_validate(data)
    except (ValidationError, KeyError, ValueError, TypeError) as exc:
        out.problems.append(_problem(f"{where} is not valid FHIR R4: {validation_text(exc)}", where))
        return out
    _keep(resource, where, out)
    return out


def _keep(resource: Any, label: str, out: Read) -> None:
    if isinstance(resource, OperationOutcome):
        # the client's way of saying it could not prefetch (CDS Hooks 2.0): the data is incomplete
        errors = [i for i in resource.issue or [] if i.severity in ("error", "fatal")]
        if errors:
            text = "; ".join(filter(None, ((i.diagnostics or (i.details.text if i.details else "") or i.code)
                                           for i in errors)))
            out.outcomes.append(text or "error")
        return
    out.resources.append((_label(resource, label), resource))


# --- small mappings ---------------------------------------------------------------------------------


def _system(uri: str | None) -> str:
    return SYSTEM_NAMES.get(uri or "", uri or "")


def _coded(coding: Any, text: str = "", more: Iterable[str] = ()) -> Coded:
    return Coded(code=(coding.code or "").strip(), text=(coding.display or text or "").strip(),
                 system=_system(coding.system), more_text=" ".join(t for t in (text, *more) if t).strip())


def _quantity_unit(q: Any) -> Coded:
    return Coded(code=(q.code or q.unit or "").strip(), text=(q.unit or "").strip(),
                 system="UCUM" if q.system == UCUM else (q.system or ""))


def _instant(value: Any, tz: tzinfo) -> datetime | None:
    """A FHIR dateTime/instant: aware as sent; a date alone is midnight in the service's zone (as HL7's
    YYYYMMDD); a partial date (YYYY, YYYY-MM) cannot be placed: None."""
    # A wall-clock time becomes an exact instant with the zone's offset on that date (its earliest reading
    # when the zone skips or repeats it), as HL7 times do (validator/hl7time.py).
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else wall_clock_instant(value, tz)
    if isinstance(value, date):
        return wall_clock_instant(datetime.combine(value, time.min), tz)
    return None


def _references_patient(reference: Any, patient_id: str) -> bool | None:
    """True/False when a subject reference names/does not name Patient/<id>; None when there is none."""
    ref = getattr(reference, "reference", None) if reference is not None else None
    if not ref:
        return None
    want = f"Patient/{patient_id}"
    return ref == want or ref.endswith("/" + want)


def observation_codes(protocols: ProtocolSet) -> list[str]:
    """The codes rxgate reads observations by (height, weight, BSA, WBC, liver tests, CD33), in order."""
    codes: list[str] = []
    for p in protocols.protocols:
        o = p.observations
        for group in (o.height.codes, o.weight.codes, o.bsa.codes, p.wbc.preferred_codes,
                      *(t.match.codes for t in p.liver.tests), p.cd33.match.codes):
            codes += [c for c in group if c not in codes]
    return codes


def _known_observation_codes(protocols: ProtocolSet) -> set[str]:
    known = {c.upper() for c in observation_codes(protocols)}
    for p in protocols.protocols:
        known |= {c.upper() for c in (*p.hsct.match.codes, *p.wbc.cytoreduction.procedure.codes)}
    return known


# --- orders -------------------------------------------------------------------------------------------


def _order_elements(mr: MedicationRequest, n_dosage: int) -> dict[str, str]:
    """HL7 field -> FHIR element of one MedicationRequest (what each rule's location means here)."""
    dosage = "dosageInstruction[0]"
    rate = f"{dosage}.doseAndRate[0]"
    dar = mr.dosageInstruction[0].doseAndRate if n_dosage and mr.dosageInstruction[0].doseAndRate else []
    ranged = bool(dar) and dar[0].doseRange is not None
    dose = f"{rate}.doseRange.low" if ranged else f"{rate}.doseQuantity"
    timing = f"{dosage}.timing"
    repeat = f"{timing}.repeat"
    has_bounds = bool(n_dosage and mr.dosageInstruction[0].timing and mr.dosageInstruction[0].timing.repeat
                      and mr.dosageInstruction[0].timing.repeat.boundsPeriod)
    has_events = bool(n_dosage and mr.dosageInstruction[0].timing and mr.dosageInstruction[0].timing.event)
    start = f"{timing}.event[0]" if has_events and not has_bounds else f"{repeat}.boundsPeriod.start"
    return {
        "ORC-1": "status", "ORC-2": "identifier", "ORC-4": "groupIdentifier", "ORC-7": timing,
        "RXE-2": "medicationReference" if mr.medicationReference is not None else "medicationCodeableConcept",
        "RXE-3": dose, "RXE-4": f"{rate}.doseRange.high", "RXE-5": f"{dose}.code",
        "RXE-23": f"{rate}.rateQuantity" if not (dar and dar[0].rateRatio) else f"{rate}.rateRatio",
        "RXE-24": f"{rate}.rateQuantity.code", "RXE-27": "reasonCode[0]",
        "RXR-1": f"{dosage}.route",
        "TQ1-6": f"{repeat}.duration", "TQ1-7": start, "TQ1-8": f"{repeat}.boundsPeriod.end",
        "TQ1-9": f"{dosage}.asNeededBoolean", "TQ1-10": f"{dosage}.asNeededCodeableConcept",
    }


def medication_reference(mr: MedicationRequest) -> str:
    """The reference of a medicationReference that is not contained in the request ('' when none)."""
    ref = mr.medicationReference.reference if mr.medicationReference is not None else None
    return ref if ref and not ref.startswith("#") else ""


def _medication_concept(mr: MedicationRequest, medications: dict[str, Medication]) -> tuple[Any, str]:
    """(CodeableConcept or None, display) of the ordered medication."""
    if mr.medicationCodeableConcept is not None:
        return mr.medicationCodeableConcept, ""
    ref = mr.medicationReference
    display = (ref.display or "") if ref is not None else ""
    reference = (ref.reference or "") if ref is not None else ""
    if reference.startswith("#"):
        for contained in mr.contained or []:
            if isinstance(contained, Medication) and contained.id == reference[1:]:
                return contained.code, display
        return None, display
    medication = medications.get(reference) or next(
        (m for key, m in medications.items() if reference and key.endswith("/" + reference)), None)
    return (medication.code if medication is not None else None), display


def medications_in(*reads: Read) -> dict[str, Medication]:
    """Medication resources sent alongside (in draftOrders, or fetched), by `Medication/<id>`."""
    return {label: r for read in reads for label, r in read.resources if isinstance(r, Medication)}


def _drug(concept: Any, display: str, protocols: ProtocolSet) -> Coded:
    """The give code: a coding that names a protocol drug first (a GO order must never pass unrecognised),
    then RxNorm, NDC, any other coding; the concept's text (and the other codings' displays) as more text."""
    if concept is None:
        return Coded(text=display)
    codings = [c for c in concept.coding or [] if c.code or c.display]
    text = concept.text or display
    if not codings:
        return Coded(text=text)
    rank = {"RXNORM": 0, "NDC": 1}
    candidates = sorted((_coded(c, text, (o.display or "" for o in codings if o is not c)) for c in codings),
                        key=lambda c: rank.get(c.system, 2))
    # a coding that is GO by itself, then one that is GO with the other codings' names as its text
    for alone in (True, False):
        for candidate in candidates:
            probe = candidate.model_copy(update={"more_text": ""}) if alone else candidate
            if any(is_protocol_drug(probe, p) for p in protocols.protocols):
                return candidate
    return candidates[0]


def _route(route: Any) -> Coded | None:
    if route is None:
        return None
    for coding in route.coding or []:
        if coding.system == SNOMED and coding.code in SNOMED_ROUTES:
            code, text = SNOMED_ROUTES[coding.code]
            return Coded(code=code, text=coding.display or text, system="HL70162", more_text=route.text or "")
    for coding in route.coding or []:
        if coding.system in (V2_0162, None) and coding.code:
            return Coded(code=coding.code, text=coding.display or "", system="HL70162", more_text=route.text or "")
    if route.coding:
        return _coded(route.coding[0], route.text or "")
    return Coded(text=route.text or "")


def _period_seconds(value: Decimal | None, unit: str | None) -> Decimal | None:
    if value is None or unit not in UCUM_SECONDS:
        return None
    return value * UCUM_SECONDS[unit]


def several_starts(timing: Any, tz: tzinfo) -> bool:
    """Does this Timing plan more than one administration? (go-protocol: one start per GO order)

    Several events, count/countMax > 1, frequency/frequencyMax > 1, several times of day or days of
    week, a timing code (BID, Q4H…) without count 1, or a period that repeats within the bounds.
    What cannot be read counts as more than one start (the safe reading).
    """
    if timing is None:
        return False
    if len(timing.event or []) > 1:
        return True
    r = timing.repeat
    if timing.code is not None and not (r is not None and r.count == 1):
        return True
    if r is None:
        return False
    if (r.count or 1) > 1 or (r.countMax or 1) > 1 or (r.frequency or 1) > 1 or (r.frequencyMax or 1) > 1:
        return True
    if len(r.timeOfDay or []) > 1 or len(r.dayOfWeek or []) > 1 or len(r.when or []) > 1:
        return True
    if (r.period is not None or r.periodMax is not None) and r.count != 1:
        period = _period_seconds(r.period, r.periodUnit)
        bounds = r.boundsPeriod
        start = _instant(bounds.start, tz) if bounds is not None else None
        end = _instant(bounds.end, tz) if bounds is not None else None
        if period is None or start is None or end is None:
            return True  # repeats every period with no end that shows it happens once
        return Decimal((end - start).total_seconds()) > period
    return False


@dataclass
class MappedOrder:
    order: Order
    problems: list[Finding] = field(default_factory=list)
    several_starts: bool = False


def _order(mr: MedicationRequest, index: int, label: str, medications: dict[str, Medication],
           protocols: ProtocolSet, tz: tzinfo) -> MappedOrder:
    dosages = mr.dosageInstruction or []
    elements = _order_elements(mr, len(dosages))

    def at(segment: str, field_number: int) -> Location:
        return Location(segment=segment, occurrence=index + 1, field=field_number, resource=label, elements=elements)

    status, intent = (mr.status or "").lower(), (mr.intent or "").lower()
    if intent not in ORDER_INTENTS:
        control = f"intent {intent or '(none)'}"
    elif status in NEW_ORDER_STATUSES:
        control = "NW"
    else:
        control = CANCEL_STATUSES.get(status, f"status {status or '(none)'}")
    placer = next((i for i in mr.identifier or [] if i.value and i.type is not None
                   and any(c.code == "PLAC" for c in i.type.coding or [])), None)
    concept, display = _medication_concept(mr, medications)
    reason = mr.reasonCode[0] if mr.reasonCode else None
    order = Order(
        index=index,
        control=control,
        placer_number=(placer.value if placer is not None else (mr.id or "")).strip(),
        placer_group=(mr.groupIdentifier.value or "").strip() if mr.groupIdentifier is not None else "",
        drug=_drug(concept, display, protocols),
        drug_location=at("RXE", 2),
        amount_location=at("RXE", 3),
        route_location=at("RXR", 1),
        orc_location=at("ORC", 1),
        has_give=True,
        indication=_coded(reason.coding[0], reason.text or "") if reason is not None and reason.coding
        else Coded(text=reason.text or "") if reason is not None else Coded(),
        notes=[n.text for n in mr.note or [] if n.text],
    )
    mapped = MappedOrder(order)
    if not dosages:
        return mapped
    if len(dosages) > 1:
        # several dosage instructions (a split or tapered dose): which one is meant cannot be known
        order.amount_raw = f"{len(dosages)} dosageInstruction entries"
    dosage = dosages[0]
    order.route = _route(dosage.route)
    dar = dosage.doseAndRate or []
    if len(dar) > 1:
        order.amount_raw = f"{len(dar)} doseAndRate entries"
    elif dar and len(dosages) == 1:
        dose = dar[0]
        if dose.doseQuantity is not None:
            order.amount = dose.doseQuantity.value
            order.amount_raw = "" if dose.doseQuantity.value is None else format(dose.doseQuantity.value, "f")
            order.amount_units = _quantity_unit(dose.doseQuantity)
        elif dose.doseRange is not None:
            low, high = dose.doseRange.low, dose.doseRange.high
            if low is not None:
                order.amount, order.amount_units = low.value, _quantity_unit(low)
                order.amount_raw = format(low.value, "f") if low.value is not None else ""
            else:
                order.amount_raw = "a dose range without a low value"
            if high is not None:
                order.amount_max = high.value
                order.amount_max_raw = format(high.value, "f") if high.value is not None else "?"
                if low is None:
                    order.amount_units = _quantity_unit(high)
        _rate(order, dose, at)
    _timing(order, dosage, at, tz)
    if dosage.asNeededBoolean:
        order.timing.priority = "PRN"
    elif dosage.asNeededCodeableConcept is not None:
        order.timing.condition = dosage.asNeededCodeableConcept.text or "as needed"
    mapped.several_starts = several_starts(dosage.timing, tz)
    return mapped


def _rate(order: Order, dose: Any, at) -> None:
    if dose.rateQuantity is not None:
        order.rate_amount = dose.rateQuantity.value
        order.rate_units = _quantity_unit(dose.rateQuantity)
        order.rate_location = at("RXE", 23)
    elif dose.rateRatio is not None:
        order.rate_location = at("RXE", 23)
        num, den = dose.rateRatio.numerator, dose.rateRatio.denominator
        per_hour = {"h": Decimal(1), "min": Decimal(60)}.get((den.code or den.unit or "") if den is not None else "")
        if num is not None and den is not None and num.value is not None and den.value and per_hour is not None:
            order.rate_amount = num.value / den.value * per_hour
            unit = (num.code or num.unit or "").strip()
            order.rate_units = Coded(code=f"{unit}/h", text=f"{unit}/h")
    elif dose.rateRange is not None:
        order.rate_location = at("RXE", 23)  # a range of rates: which one cannot be known (refused)


def _timing(order: Order, dosage: Any, at, tz: tzinfo) -> None:
    timing = order.timing
    fhir_timing = dosage.timing
    if fhir_timing is None:
        return
    repeat = fhir_timing.repeat
    bounds = repeat.boundsPeriod if repeat is not None else None
    start_value = bounds.start if bounds is not None and bounds.start is not None else (
        fhir_timing.event[0] if len(fhir_timing.event or []) == 1 else None)
    if start_value is not None:
        timing.start = _instant(start_value, tz)
        timing.start_location = at("TQ1", 7)
    if bounds is not None and bounds.end is not None:
        timing.end = _instant(bounds.end, tz)
        timing.end_location = at("TQ1", 8)
    if repeat is not None and (repeat.duration is not None or repeat.durationUnit):
        timing.duration_location = at("TQ1", 6)
        if repeat.duration is not None:
            timing.service_duration = Quantity(value=repeat.duration, unit=Coded(code=repeat.durationUnit or ""))


# --- observations and the patient ------------------------------------------------------------------------


def _value(obs: FhirObservation, tz: tzinfo) -> tuple[str, str, str, Quantity | None, Coded]:
    """(element, value type, raw value, quantity, units) of an Observation's value[x]."""
    if obs.valueQuantity is not None:
        q = obs.valueQuantity
        units = _quantity_unit(q)
        comparator = q.comparator or ""
        raw = f"{comparator}{format(q.value, 'f')}" if q.value is not None else ""
        quantity = Quantity(value=q.value, unit=units, comparator=comparator) if q.value is not None else None
        return "valueQuantity", "SN" if comparator else "NM", raw, quantity, units
    if obs.valueInteger is not None:
        return "valueInteger", "NM", str(obs.valueInteger), Quantity(value=Decimal(obs.valueInteger)), Coded()
    if obs.valueString is not None:
        return "valueString", "ST", obs.valueString, text_quantity(obs.valueString, Coded()), Coded()
    if obs.valueRange is not None:
        low, high = obs.valueRange.low, obs.valueRange.high
        unit = _quantity_unit(low if low is not None else high) if (low or high) is not None else Coded()
        lo = format(low.value, "f") if low is not None and low.value is not None else ""
        hi = format(high.value, "f") if high is not None and high.value is not None else ""
        if lo and hi:  # a range keeps both ends, as the HL7 text `30-40` (docs/protocol.md)
            return "valueRange", "SN", f"{lo}-{hi}", Quantity(value=low.value, unit=unit, upper=high.value), unit
        if lo:
            return "valueRange", "SN", f">={lo}", Quantity(value=low.value, unit=unit, comparator=">="), unit
        if hi:
            return "valueRange", "SN", f"<={hi}", Quantity(value=high.value, unit=unit, comparator="<="), unit
        return "valueRange", "SN", "", None, unit
    if obs.valueCodeableConcept is not None:
        concept = obs.valueCodeableConcept
        text = concept.text or next((c.display or c.code or "" for c in concept.coding or []), "")
        return "valueCodeableConcept", "CWE", text, None, Coded()
    if obs.valueDateTime is not None:
        value = obs.valueDateTime
        raw = format_datetime(value) if isinstance(value, datetime) else (
            value.strftime("%Y%m%d") if isinstance(value, date) else str(value).replace("-", ""))
        return "valueDateTime", "DTM", raw, None, Coded()
    for name in ("valueBoolean", "valueRatio", "valuePeriod", "valueTime", "valueSampledData"):
        value = getattr(obs, name, None)
        if value is not None:
            return name, "ST", str(value) if not hasattr(value, "model_dump") else name, None, Coded()
    return "value[x]", "", "", None, Coded()


def _reference_range(obs: FhirObservation) -> str:
    if not obs.referenceRange:
        return ""
    rr = obs.referenceRange[0]
    low = format(rr.low.value, "f") if rr.low is not None and rr.low.value is not None else ""
    high = format(rr.high.value, "f") if rr.high is not None and rr.high.value is not None else ""
    if low and high:
        return f"{low}-{high}"
    if high:
        return f"<={high}"
    if low:
        return f">={low}"
    return rr.text or ""


def _observation_code(obs: FhirObservation, known: set[str]) -> Coded:
    codings = [c for c in obs.code.coding or [] if c.code or c.display]
    text = obs.code.text or ""
    if not codings:
        return Coded(text=text)
    chosen = next((c for c in codings if (c.code or "").upper() in known), None) or next(
        (c for c in codings if c.system == LOINC), codings[0])
    return _coded(chosen, text, (c.display or "" for c in codings if c is not chosen))


def _observation(obs: FhirObservation, n: int, label: str, known: set[str], tz: tzinfo) -> Observation:
    element, value_type, raw, quantity, units = _value(obs, tz)
    effective = "effectiveDateTime"
    observed = None
    if obs.effectiveDateTime is not None:
        observed = _instant(obs.effectiveDateTime, tz)
    elif obs.effectiveInstant is not None:
        effective, observed = "effectiveInstant", _instant(obs.effectiveInstant, tz)
    elif obs.effectivePeriod is not None:
        # the period's start: the older end, so a recency limit is judged at the end less favourable
        effective, observed = "effectivePeriod.start", _instant(obs.effectivePeriod.start, tz)
    elements = {"OBX-3": "code", "OBX-5": element, "OBX-6": f"{element}.code" if element == "valueQuantity" else element,
                "OBX-7": "referenceRange[0]", "OBX-11": "status", "OBX-14": effective}
    interpretation = obs.interpretation[0].coding[0].code if obs.interpretation and obs.interpretation[0].coding else ""
    return Observation(
        location=Location(segment="OBX", occurrence=n, field=5, resource=label, elements=elements),
        set_id=str(n),
        value_type=value_type,
        code=_observation_code(obs, known),
        raw_value=raw,
        quantity=quantity,
        units=units,
        reference_range=_reference_range(obs),
        abnormal_flags=interpretation or "",
        status=OBSERVATION_STATUS.get(obs.status or "", "U"),
        observed_at=observed,
    )


PATIENT_ELEMENTS = {"PID-3": "identifier", "PID-7": "birthDate", "PID-8": "gender"}


def _patient(resource: FhirPatient) -> Patient:
    identifiers = [i for i in resource.identifier or [] if i.value]
    chosen = next((i for i in identifiers if i.type is not None
                   and any(c.code == "MR" and c.system in (V2_0203, None) for c in i.type.coding or [])),
                  identifiers[0] if identifiers else None)
    authority = ""
    if chosen is not None:
        assigner = chosen.assigner
        # PID-3.4 (assigning authority) is Identifier.assigner in the HL7 v2-to-FHIR mapping
        authority = ((assigner.display or (assigner.identifier.value if assigner.identifier else "") or "")
                     if assigner is not None else "") or (chosen.system or "")
    birth = resource.birthDate
    return Patient(
        id=(chosen.value or "").strip() if chosen is not None else "",
        id_authority=authority.strip(),
        birth_raw=birth.isoformat() if isinstance(birth, date) else (str(birth) if birth else ""),
        birth_date=birth if isinstance(birth, date) else None,
        sex=GENDER.get(resource.gender or "", ""),
    )


# --- the order set of one order-sign call -----------------------------------------------------------------


@dataclass
class FhirOrderSet:
    order_set: OrderSet
    problems: list[Finding]  # rxgate.fhir (and go.schedule one-start) findings, added to the judgement
    patient_location: Location | None  # PID-n of the rules, in the Patient resource


def order_set_from_fhir(
    *, hook_instance: str, sender: str, patient_id: str, drafts: Read, patient: Read | None,
    observations: Read | None, medications: dict[str, Medication], protocols: ProtocolSet, tz: tzinfo,
    received_at: datetime,
) -> FhirOrderSet:
    """The order set of one call: `context.draftOrders` (read), the Patient, the Observations.

    `patient` / `observations` None: the prefetch key held null (the client has no such data).
    """
    problems: list[Finding] = list(drafts.problems)
    order_set = OrderSet(control_id=hook_instance, message_type="CDS order-sign", message_code="CDS",
                         trigger_event="order-sign", version="FHIR R4", sending_application=sender,
                         message_time=received_at)
    patient_location: Location | None = None
    if patient is not None:
        problems += patient.problems
        found = [(label, r) for label, r in patient.resources if isinstance(r, FhirPatient)]
        if found:
            label, resource = found[0]
            if resource.id and resource.id != patient_id:
                problems.append(_problem(f"the prefetched Patient is {label}, not the patient in context "
                                         f"(Patient/{patient_id}): its data is not used", label))
            else:
                order_set.patient = _patient(resource)
                patient_location = Location(segment="PID", field=3, resource=f"Patient/{resource.id or patient_id}",
                                            elements=PATIENT_ELEMENTS)
    known = _known_observation_codes(protocols)
    if observations is not None:
        problems += observations.problems
        n = 0
        for label, resource in observations.resources:
            if not isinstance(resource, FhirObservation):
                continue
            if _references_patient(resource.subject, patient_id) is False:
                problems.append(_problem(f"{label} is about another patient ({resource.subject.reference}), "
                                         f"not Patient/{patient_id}: not used", label))
                continue
            n += 1
            order_set.observations.append(_observation(resource, n, label, known, tz))
    index = 0
    for label, resource in drafts.resources:
        if not isinstance(resource, MedicationRequest):
            continue  # a ServiceRequest, NutritionOrder…: not a medication order, nothing to check
        mapped = _order(resource, index, label, medications, protocols, tz)
        order = mapped.order
        if _references_patient(resource.subject, patient_id) is False:
            problems.append(_problem(f"{label} is for another patient ({resource.subject.reference}), "
                                     f"not Patient/{patient_id}", label, index))
        if resource.medicationCodeableConcept is None and not (order.drug.code or order.drug.text):
            problems.append(_problem(f"{label}: the ordered medication ({order.drug_location.short()}) cannot be "
                                     "read, so it cannot be shown not to be a GO order", label, index))
        if mapped.several_starts and any(is_protocol_drug(order.drug, p) for p in protocols.protocols):
            where = order.drug_location.model_copy(update={"segment": "ORC", "field": 7})
            problems.append(finding(RULE_SCHEDULE, protocols.default.schedule.severity, ONE_START, where)
                            .model_copy(update={"order_index": index}))
        order_set.orders.append(order)
        index += 1
    return FhirOrderSet(order_set, problems, patient_location)


def add_problems(judgement: Judgement, problems: list[Finding]) -> Judgement:
    """The mapping's findings into the judgement: order-level ones refuse their order (UA)."""
    for found in problems:
        if found.order_index is not None and found.order_index < len(judgement.orders):
            verdict = judgement.orders[found.order_index]
            verdict.findings.append(found)
            if found.severity == "error":
                verdict.control = "UA"
        else:
            judgement.message_findings.append(found)
    return judgement


def localise(judgement: Judgement, patient_location: Location | None) -> Judgement:
    """Every finding located in FHIR terms: a rule's default location (`TQ1-6` of an order with no
    duration, `PID-7`) becomes the element of that order's MedicationRequest, or of the Patient."""
    def fix(found: Finding) -> Finding:
        loc = found.location
        if loc is not None and loc.resource:
            return found
        template: Location | None = None
        if loc is not None and loc.segment == "PID":
            template = patient_location
        elif found.order_index is not None and found.order_index < len(judgement.order_set.orders):
            template = judgement.order_set.orders[found.order_index].orc_location
        if template is None:
            return found
        if loc is None:
            return found.model_copy(update={"location": template.model_copy(update={"field": 0})})
        return found.model_copy(update={"location": loc.model_copy(
            update={"resource": template.resource, "elements": template.elements})})

    judgement.message_findings = [fix(f) for f in judgement.message_findings]
    for verdict in judgement.orders:
        verdict.findings = [fix(f) for f in verdict.findings]
    return judgement


# --- the course history from the patient's MedicationRequests ---------------------------------------------


def history_from_fhir(
    requests: Read, *, patient_id: str, patient_key: str, sender: str, medications: dict[str, Medication],
    protocols: ProtocolSet, tz: tzinfo, since: datetime | None, draft_ids: set[str],
) -> list[HistoryEntry]:
    """The patient's MedicationRequests (prefetch `medications`) as course history entries.

    Counted: order intents with a status in HISTORY_STATUSES, for this patient, not one of the draft
    orders, starting at or after `since` (rxgate filters by date itself). The start is the first
    dosage's boundsPeriod.start (or its one event), else authoredOn: a GO dose without timing still
    counts (the safe reading). A request without any time cannot be placed in a course: left out.
    """
    out: list[HistoryEntry] = []
    for i, (label, resource) in enumerate(requests.resources):
        if not isinstance(resource, MedicationRequest):
            continue
        if (resource.status or "") not in HISTORY_STATUSES or (resource.intent or "") not in ORDER_INTENTS:
            continue
        if resource.id and resource.id in draft_ids:
            continue
        if _references_patient(resource.subject, patient_id) is False:
            continue
        order = _order(resource, i, label, medications, protocols, tz).order
        start = order.timing.start or _instant(resource.authoredOn, tz)
        if start is None or (since is not None and start < since):
            continue
        protocol_order = any(is_protocol_drug(order.drug, p) for p in protocols.protocols)
        protocol = protocols.for_order(order) if protocol_order else None
        out.append(HistoryEntry(
            patient_key=patient_key, sender=sender, placer_number=order.placer_number,
            control_id=label, drug=order.drug, protocol_order=protocol_order,
            protocol_id=(protocol.id if protocol is not None else protocols.requested_code(order)) if protocol_order else "",
            start=start, amount=order.amount, amount_units=order.amount_units.code or order.amount_units.text,
            route=(order.route.code or order.route.text) if order.route else "", as_needed=order.timing.as_needed,
        ))
    return out


def course_history(stored: list[HistoryEntry], from_fhir: list[HistoryEntry], order_set: OrderSet) -> list[HistoryEntry]:
    """The history a call is judged on: rxgate's accepted orders plus the record's MedicationRequests.

    An order counts once: a MedicationRequest with the placer number of an accepted order is that
    order; a draft (or re-signed) order with the placer number of an accepted order or of a
    MedicationRequest takes its place (it is judged, not counted twice). Identity is the placer number
    alone: an EHR's identifier system never equals an HL7 namespace, and counting a dose twice is the
    safe error (a refusal to review), missing one is not.
    """
    stored_placers = {h.placer_number for h in stored if h.placer_number}
    merged = stored + [h for h in from_fhir if not (h.placer_number and h.placer_number in stored_placers)]
    drafts = {o.placer_number for o in order_set.orders if o.placer_number}
    return [h for h in merged if not (h.placer_number and h.placer_number in drafts)]


def lookback_start(order_set: OrderSet, protocols: ProtocolSet, received_at: datetime) -> datetime:
    """The oldest start a history entry needs: the longest course plus 60 days before the earliest draft."""
    starts = [o.timing.start for o in order_set.orders if o.timing.start is not None] or [received_at]
    longest = max(p.schedule.course_days for p in protocols.protocols)
    return min(starts) - timedelta(days=longest + 60)
