"""FHIR R4 counterparts of tests/builders.py: the same parameters, as the HL7 builders take them.

`go_request(**kw)` takes `go_order`'s keyword arguments, `premed_request(**kw)` `premed_order`'s,
`observation(**kw)` `obx`'s (so `standard_observation_params()` feeds both), and each builds the
FHIR resource that says what the HL7 segments say: a code `1294580^gemtuzumab ozogamicin^RXNORM`
becomes an RxNorm coding, `IV^Intravenous^HL70162` the SNOMED CT route 47625008, `240^min` a timing
duration, `20261201100000` (UTC, the tests' zone) `2026-12-01T10:00:00+00:00`. The HL7 text itself is
never parsed: only these parameters are read, in the notation the builders use.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from tests.builders import GO_DRUG, GO_START, standard_observation_params, standard_premed_params
from validator import fhir

PATIENT_ID = "pat-1"
LOCAL_CODES = "http://genhosp.example.org/lab-codes"
SYSTEMS = {"RXNORM": fhir.RXNORM, "NDC": fhir.NDC, "LN": fhir.LOINC, "L": LOCAL_CODES, "UCUM": fhir.UCUM,
           "HL70162": fhir.V2_0162}
ROUTES_SNOMED = {code: snomed for snomed, (code, _text) in fhir.SNOMED_ROUTES.items()}
STATUS = {"F": "final", "C": "corrected", "P": "preliminary"}
CONTROL_STATUS = {"NW": "draft", "CA": "cancelled", "DC": "stopped"}
_ids = itertools.count(1)


def reset_ids() -> None:
    """Observation ids from 1 again (examples/cds/ is regenerated the same every time)."""
    global _ids
    _ids = itertools.count(1)


def instant(hl7_time: str) -> str:
    """`YYYYMMDDHHMMSS` (UTC in the tests) as a FHIR dateTime."""
    t = hl7_time
    return f"{t[0:4]}-{t[4:6]}-{t[6:8]}T{t[8:10] or '00'}:{t[10:12] or '00'}:{t[12:14] or '00'}+00:00"


def _parts(value: str) -> list[str]:
    return (value.split("^") + ["", "", ""])[:3]


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def coding(value: str) -> dict[str, Any]:
    code, text, system = _parts(value)
    out = {"code": code}
    if system:
        out["system"] = SYSTEMS.get(system, system)
    if text:
        out["display"] = text
    return out


def concept(value: str) -> dict[str, Any]:
    _code, text, _system = _parts(value)
    return {"coding": [coding(value)], **({"text": text} if text else {})}


def quantity(amount: str, units: str) -> dict[str, Any]:
    code, text, system = _parts(units)
    out: dict[str, Any] = {"value": _number(amount), "unit": code or text}
    if system == "UCUM" or not system:
        out.update(system=fhir.UCUM, code=code)
    return out


def route(value: str) -> dict[str, Any]:
    code, text, system = _parts(value)
    if system == "HL70162" and code in ROUTES_SNOMED:
        return {"coding": [{"system": fhir.SNOMED, "code": ROUTES_SNOMED[code], "display": f"{text} route"}]}
    return {"coding": [{"system": fhir.V2_0162, "code": code, **({"display": text} if text else {})}]}


def medication_request(placer: str, drug: str, dose: str, units: str, *, start: str | None, end: str = "",
                       duration: str = "", route_: str | None = None, control: str = "NW", amount_max: str = "",
                       rate: str = "", rate_units: str = "", priority: str = "", condition: str = "",
                       patient_id: str = PATIENT_ID) -> dict[str, Any]:
    dose_and_rate: dict[str, Any] = {}
    if amount_max:
        dose_and_rate["doseRange"] = {"low": quantity(dose, units), "high": quantity(amount_max, units)}
    else:
        dose_and_rate["doseQuantity"] = quantity(dose, units)
    if rate or rate_units:
        dose_and_rate["rateQuantity"] = quantity(rate, rate_units)
    dosage: dict[str, Any] = {"doseAndRate": [dose_and_rate]}
    if route_ is not None:
        dosage["route"] = route(route_)
    repeat: dict[str, Any] = {}
    if start:
        repeat["boundsPeriod"] = {"start": instant(start), **({"end": instant(end)} if end else {})}
    if duration:
        value, unit, _ = _parts(duration)
        repeat.update(duration=_number(value), durationUnit=unit)
    if repeat:
        dosage["timing"] = {"repeat": repeat}
    if priority == "PRN":
        dosage["asNeededBoolean"] = True
    if condition:
        dosage["asNeededCodeableConcept"] = {"text": condition}
    return {
        "resourceType": "MedicationRequest",
        "id": placer,
        "identifier": [{"type": {"coding": [{"system": fhir.V2_0203, "code": "PLAC"}]},
                        "system": "http://genhosp.example.org/orders", "value": placer}],
        "status": CONTROL_STATUS[control],
        "intent": "order",
        "groupIdentifier": {"value": "GRP501"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": concept(drug),
        "dosageInstruction": [dosage],
    }


def go_request(placer: str = "ORD1001", *, dose: str = "15.2", units: str = "mg^milligram^UCUM",
               start: str | None = GO_START, end: str = "20261201140000", duration: str = "240^min",
               route: str | None = "IV^Intravenous^HL70162", drug: str = GO_DRUG, control: str = "NW",
               amount_max: str = "", rate: str = "", rate_units: str = "", **_hl7_only: Any) -> dict[str, Any]:
    """`go_order`'s arguments (its `observations` are the patient's: see `observations`)."""
    return medication_request(placer, drug, dose, units, start=start, end=end if start else "",
                              duration=duration if start else "", route_=route, control=control,
                              amount_max=amount_max, rate=rate, rate_units=rate_units)


def premed_request(placer: str, drug: str, dose: str, *, route: str = "PO^Oral^HL70162",
                   start: str = "20261201090000", units: str = "mg^milligram^UCUM", priority: str = "",
                   condition: str = "", control: str = "NW") -> dict[str, Any]:
    return medication_request(placer, drug, dose, units, start=start, route_=route, control=control,
                              priority=priority, condition=condition)


def premed_requests(**params) -> list[dict[str, Any]]:
    """`standard_premeds(**params)` as MedicationRequests."""
    return [premed_request(**kw) for kw in standard_premed_params(**params)]


def observation(set_id: int, code: str, value: str, units: str = "", *, time: str = "20261130060000",
                status: str = "F", value_type: str = "NM", ref_range: str = "", flags: str = "",
                patient_id: str = PATIENT_ID) -> dict[str, Any]:
    """`obx`'s arguments as an Observation."""
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs-{next(_ids)}-{set_id}",
        "status": STATUS[status],
        "code": concept(code),
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": instant(time),
    }
    if value_type == "NM":
        out["valueQuantity"] = quantity(value, units)
    else:
        out["valueString"] = value
    if ref_range:
        low, _, high = ref_range.partition("-")
        out["referenceRange"] = [{"low": {"value": _number(low)}, "high": {"value": _number(high)}}]
    if flags:
        out["interpretation"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                              "code": flags}]}]
    return out


def observations(**params) -> list[dict[str, Any]]:
    """`standard_observations(**params)` as Observations."""
    return [observation(**kw) for kw in standard_observation_params(**params)]


def patient(mrn: str = "MRN55501", dob: str = "19660412", sex: str = "F", *, patient_id: str = PATIENT_ID,
            authority: str = "GENHOSP") -> dict[str, Any]:
    """`pid`'s arguments as a Patient: the MR identifier's assigner is PID-3.4 (so the history key matches)."""
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"type": {"coding": [{"system": fhir.V2_0203, "code": "MR"}]},
                        "system": "http://genhosp.example.org/mrn", "value": mrn, "assigner": {"display": authority}}],
        "birthDate": f"{dob[0:4]}-{dob[4:6]}-{dob[6:8]}",
        "gender": {"F": "female", "M": "male"}.get(sex, "unknown"),
    }


def bundle(resources: list[dict[str, Any]], kind: str = "searchset") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


def order_sign(drafts: list[dict[str, Any]], *, patient_resource: dict[str, Any] | None,
               observation_resources: list[dict[str, Any]] | None, medication_resources: list[dict[str, Any]] | None = (),
               patient_id: str = PATIENT_ID, hook_instance: str | None = None, omit: tuple[str, ...] = (),
               **extra: Any) -> dict[str, Any]:
    """An order-sign request: the drafts, and prefetch of the three keys (None: a null value; `omit`: not sent)."""
    prefetch: dict[str, Any] = {
        "patient": patient_resource,
        "observations": bundle(observation_resources) if observation_resources is not None else None,
        "medications": bundle(list(medication_resources)) if medication_resources is not None else None,
    }
    return {
        "hook": "order-sign",
        "hookInstance": hook_instance or str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": patient_id,
                    "draftOrders": bundle(drafts, kind="collection")},
        "prefetch": {k: v for k, v in prefetch.items() if k not in omit},
        **extra,
    }
