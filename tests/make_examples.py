"""Regenerate examples/*.hl7 and examples/expected.json: `python -m tests.make_examples`.

Each example has its own patient (MRN) and control id, so `rxgate check examples/*.hl7`
judges them all in one history; adult-day14 follows adult-day1 (same patient).
"""

from __future__ import annotations

import json

from tests.builders import (
    ALT,
    AST,
    BILI,
    CD33,
    HEIGHT,
    METHYLPRED,
    WEIGHT,
    go_order,
    message,
    msh,
    orc,
    pid,
    premed_order,
    pv1,
    standard_observations,
    standard_premed_params,
    standard_premeds,
)
from tests.paths import ROOT

OUT = ROOT / "examples"


def adult(control: str, mrn: str, *, go=None, premeds=None, extra=None, dob="19600315", version="2.5.1",
          time="20261201083000") -> str:
    return message(msh(control, time=time, version=version), pid(mrn, dob), pv1(),
                   go if go is not None else go_order(**ADULT_GO), premeds if premeds is not None else ADULT_PREMEDS,
                   extra or [])


# 170 cm, 70 kg: Mosteller sqrt(170*70/3600) = 1.818 m2; 9 mg/m2 = 16.36 mg -> ordered 16.4 mg.
ADULT_OBS = standard_observations(height="170", weight="70", wbc="12", cd33="85")
ADULT_GO = {"dose": "16.4", "observations": ADULT_OBS}
ADULT_PREMEDS = standard_premeds(methylprednisolone="70")


def day14() -> str:
    obs = standard_observations(height="170", weight="69", wbc="3.1", cd33="85", body_time="20261213090000",
                                lab_time="20261213060000", cd33_time="20261115120000")
    go = go_order("ORD2001", dose="16.3", start="20261214100000", end="20261214140000", observations=obs)
    premeds = standard_premeds(methylprednisolone="69", first_start="20261214090000", steroid_start="20261214094000",
                               placers=("ORD2002", "ORD2003", "ORD2004"))
    return adult("EX-ADULT-D14", "EXMRN001", go=go, premeds=premeds, time="20261214083000")


def child() -> str:
    # 10 years old, 140 cm, 32 kg: BSA 1.116 m2 -> 10.04 mg; premeds 15 mg/kg = 480 mg, 1 mg/kg = 32 mg.
    obs = standard_observations(height="140", weight="32", wbc="5.2", cd33="64")
    go = go_order("ORD3001", dose="10", observations=obs)
    premeds = standard_premeds(acetaminophen="480", diphenhydramine="32", methylprednisolone="32",
                               placers=("ORD3002", "ORD3003", "ORD3004"))
    return message(msh("EX-CHILD-D1"), pid("EXMRN003", "20160520", "M"), pv1(), go, premeds)


def refused(rule: str, n: int) -> str:
    mrn, control = f"EXMRN1{n:02d}", f"EX-REFUSED-{n:02d}"
    go = dict(ADULT_GO)
    premeds = ADULT_PREMEDS
    dob = "19600315"
    extra: list[str] = []
    if rule == "go.dose":
        go["dose"] = "18.5"
    elif rule == "go.route":
        go["route"] = "SC^Subcutaneous^HL70162"
    elif rule == "go.infusion":
        go.update(duration="120^min", end="20261201120000")
    elif rule == "go.premedication":
        premeds = standard_premeds(methylprednisolone="70")[:8]  # no methylprednisolone
    elif rule == "go.cd33":
        go["observations"] = standard_observations(height="170", weight="70", wbc="12", cd33="22")
    elif rule == "go.wbc":
        go["observations"] = standard_observations(height="170", weight="70", wbc="45", cd33="85")
    elif rule == "go.eligibility":
        dob = "20250101"
    elif rule == "go.schedule":
        # Sent on day 8 with both doses: day 1 (already given) fits, the day-8 dose does not (day 14 expected).
        day8_obs = standard_observations(height="170", weight="70", wbc="6.0", cd33="85", body_time="20261207090000",
                                         lab_time="20261207060000")
        extra = go_order("ORD1901", dose="16.4", start="20261208100000", end="20261208140000", observations=day8_obs)
        extra += standard_premeds(methylprednisolone="70", first_start="20261208090000",
                                  steroid_start="20261208094000", placers=("ORD1902", "ORD1903", "ORD1904"))
        return adult(control, mrn, go=go_order(**go), premeds=premeds, extra=extra, time="20261208083000")
    return adult(control, mrn, go=go_order(**go), premeds=premeds, extra=extra, dob=dob)


def cancel_unknown() -> str:
    return message(msh("EX-REFUSED-CANCEL"), pid("EXMRN199"), orc("NOSUCH1", control="CA"),
                   "RXE||1294580^gemtuzumab ozogamicin^RXNORM|16.4||mg", "RXR|IV")


def unsupported_version() -> str:
    return adult("EX-REJECTED-V22", "EXMRN198", version="2.2")


EXAMPLES = {
    "adult-day1-accept.hl7": (adult("EX-ADULT-D1", "EXMRN001"), "AA", None),
    "adult-day14-accept.hl7": (day14(), "AA", None),
    "child-day1-accept.hl7": (child(), "AA", None),
}
for i, rule in enumerate(["go.dose", "go.route", "go.infusion", "go.schedule", "go.premedication", "go.cd33",
                          "go.wbc", "go.eligibility"], start=1):
    EXAMPLES[f"refused-{rule.split('.')[1]}.hl7"] = (refused(rule, i), "AE", rule)
EXAMPLES["refused-cancel-unknown.hl7"] = (cancel_unknown(), "AE", "go.cancel")
EXAMPLES["rejected-version-2.2.hl7"] = (unsupported_version(), "AR", "hl7.version")

_unused = (CD33, HEIGHT, METHYLPRED, WEIGHT, BILI, AST, ALT, premed_order)


def cds_refused_dose() -> dict:
    """examples/cds/order-sign-refused-dose.json: refused-dose.hl7 as a CDS Hooks order-sign request."""
    from tests import fhir_builders as fb

    fb.reset_ids()
    drafts = [fb.go_request(dose="18.5"), *(fb.premed_request(**kw) for kw in standard_premed_params(methylprednisolone="70"))]
    return fb.order_sign(drafts, patient_resource=fb.patient("EXMRN101", "19600315"),
                         observation_resources=fb.observations(height="170", weight="70", wbc="12", cd33="85"),
                         medication_resources=[], hook_instance="6f1c2a0e-0d3b-4c55-9a53-2f0f7b8e5d01")


def main() -> None:
    expected = {}
    for name, (text, ack, rule) in EXAMPLES.items():
        (OUT / name).write_bytes(text.encode())
        expected[name] = {"ack_code": ack, "rule": rule}
    (OUT / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    (OUT / "cds").mkdir(exist_ok=True)
    (OUT / "cds" / "order-sign-refused-dose.json").write_text(json.dumps(cds_refused_dose(), indent=2) + "\n")


if __name__ == "__main__":
    main()
