"""Build GO order-set messages for tests: the shared accepted example, with overrides.

`adult_order_set()` reproduces ../shared/samples/go/adult-day1-accept.hl7 (165 cm, 62 kg,
BSA 1.686 m2, GO 15.2 mg at 2026-12-01 10:00 over 240 min, acetaminophen 650 mg PO and
diphenhydramine 50 mg IV at 09:00, methylprednisolone 62 mg IV at 09:40, WBC 8.4, CD33 72 %).
Every segment helper returns one segment line; `message(...)` joins them with \\r.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from validator import InMemoryStore, load_protocol, process_text
from validator.er7 import split_messages
from validator.history import MessageKey, ProcessedMessage
from validator.reader import read_order_set
from validator.verdict import judge

UTC = ZoneInfo("UTC")
GO_START = "20261201100000"
# Mosteller BSA of the adult example: sqrt(165 * 62 / 3600) m2; 9 mg/m2 -> the expected GO dose in mg (unrounded)
EXPECTED_MG = Decimal(9) * (Decimal(165) * Decimal(62) / Decimal(3600)).sqrt()


def msh(control_id: str = "T0001", *, version: str = "2.5.1", message_type: str = "RDE^O11^RDE_O11",
        time: str = "20261201083000", sender: tuple[str, str] = ("PHARMSYS", "GENHOSP")) -> str:
    return f"MSH|^~\\&|{sender[0]}|{sender[1]}|RXGATE|GENHOSP|{time}||{message_type}|{control_id}|P|{version}"


def pid(mrn: str = "MRN55501", dob: str = "19660412", sex: str = "F") -> str:
    return f"PID|1||{mrn}^^^GENHOSP^MR||DOE^JANE^A||{dob}|{sex}"


def pv1() -> str:
    return "PV1|1|I|ONC^4B^12"


def orc(placer: str, *, control: str = "NW", group: str = "GRP501", namespace: str = "") -> str:
    placer_field = f"{placer}^{namespace}" if namespace else placer
    return f"ORC|{control}|{placer_field}||{group}|||||20261201083000"


def rxe(drug: str, amount: str, units: str = "mg^milligram^UCUM", *, amount_max: str = "",
        rate: str = "", rate_units: str = "") -> str:
    fields = ["RXE", "", drug, amount, amount_max, units]
    if rate or rate_units:
        fields += [""] * 17 + [rate, rate_units]
    return "|".join(fields)


def tq1(start: str, end: str = "", duration: str = "", *, priority: str = "", condition: str = "") -> str:
    return f"TQ1|1|||||{duration}|{start}|{end}|{priority}|{condition}"


def rxr(route: str = "IV^Intravenous^HL70162") -> str:
    return f"RXR|{route}"


def obx(set_id: int, code: str, value: str, units: str = "", *, time: str = "20261130060000",
        status: str = "F", value_type: str = "NM", ref_range: str = "", flags: str = "") -> str:
    return f"OBX|{set_id}|{value_type}|{code}||{value}|{units}|{ref_range}|{flags}|||{status}|||{time}"


HEIGHT = "8302-2^Body height^LN"
WEIGHT = "29463-7^Body weight^LN"
BSA = "8277-6^Body surface area^LN"
WBC = "6690-2^Leukocytes [#/volume] in Blood by Automated count^LN"
CD33 = "CD33BL^CD33 positive blasts (flow cytometry)^L"
BILI = "1975-2^Bilirubin.total [Mass/volume] in Serum or Plasma^LN"
AST = "1920-8^Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma^LN"
ALT = "1742-6^Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma^LN"
GO_DRUG = "1294580^gemtuzumab ozogamicin^RXNORM"
ACETAMINOPHEN = "161^acetaminophen^RXNORM"
DIPHENHYDRAMINE = "3498^diphenhydramine^RXNORM"
METHYLPRED = "6902^methylprednisolone^RXNORM"
HYDROXYUREA = "5552^hydroxyurea^RXNORM"


def standard_observation_params(*, height: str = "165", weight: str = "62", wbc: str = "8.4", cd33: str = "72",
                                body_time: str = "20261130090000", lab_time: str = "20261130060000",
                                cd33_time: str = "20261115120000") -> list[dict]:
    """The `obx(...)` arguments of `standard_observations` (tests/fhir_builders.py builds the same as FHIR)."""
    return [
        dict(set_id=1, code=HEIGHT, value=height, units="cm^centimeter^UCUM", time=body_time),
        dict(set_id=2, code=WEIGHT, value=weight, units="kg^kilogram^UCUM", time=body_time),
        dict(set_id=3, code=WBC, value=wbc, units="10*9/L^10*9/L^UCUM", time=lab_time, ref_range="4.0-11.0", flags="N"),
        dict(set_id=4, code=CD33, value=cd33, units="%^percent^UCUM", time=cd33_time),
        dict(set_id=5, code=BILI, value="0.8", units="mg/dL^mg/dL^UCUM", time=lab_time, ref_range="0.2-1.2", flags="N"),
        dict(set_id=6, code=AST, value="28", units="U/L^U/L^UCUM", time=lab_time, ref_range="10-40", flags="N"),
        dict(set_id=7, code=ALT, value="31", units="U/L^U/L^UCUM", time=lab_time, ref_range="7-56", flags="N"),
    ]


def standard_observations(**params: str) -> list[str]:
    return [obx(**kw) for kw in standard_observation_params(**params)]


def go_order(placer: str = "ORD1001", *, dose: str = "15.2", units: str = "mg^milligram^UCUM",
             start: str = GO_START, end: str = "20261201140000", duration: str = "240^min",
             route: str | None = "IV^Intravenous^HL70162", drug: str = GO_DRUG, control: str = "NW",
             observations: list[str] | None = None, amount_max: str = "", rate: str = "", rate_units: str = "",
             extra: list[str] | None = None) -> list[str]:
    segs = [orc(placer, control=control), rxe(drug, dose, units, amount_max=amount_max, rate=rate, rate_units=rate_units),
            tq1(start, end, duration)]
    if route is not None:
        segs.append(rxr(route))
    segs += extra or []
    segs += standard_observations() if observations is None else observations
    return segs


def premed_order(placer: str, drug: str, dose: str, *, route: str = "PO^Oral^HL70162",
                 start: str = "20261201090000", units: str = "mg^milligram^UCUM", priority: str = "",
                 condition: str = "", control: str = "NW") -> list[str]:
    return [orc(placer, control=control), rxe(drug, dose, units), tq1(start, priority=priority, condition=condition),
            rxr(route)]


def standard_premed_params(*, acetaminophen: str = "650", diphenhydramine: str = "50", methylprednisolone: str = "62",
                           first_start: str = "20261201090000", steroid_start: str = "20261201094000",
                           placers: tuple[str, str, str] = ("ORD1002", "ORD1003", "ORD1004")) -> list[dict]:
    """The `premed_order(...)` arguments of `standard_premeds` (tests/fhir_builders.py builds the same as FHIR)."""
    return [
        dict(placer=placers[0], drug=ACETAMINOPHEN, dose=acetaminophen, route="PO^Oral^HL70162", start=first_start),
        dict(placer=placers[1], drug=DIPHENHYDRAMINE, dose=diphenhydramine, route="IV^Intravenous^HL70162",
             start=first_start),
        dict(placer=placers[2], drug=METHYLPRED, dose=methylprednisolone, route="IV^Intravenous^HL70162",
             start=steroid_start),
    ]


def standard_premeds(**params) -> list[str]:
    return [seg for kw in standard_premed_params(**params) for seg in premed_order(**kw)]


def message(*segments: str | list[str]) -> str:
    lines: list[str] = []
    for s in segments:
        lines.extend([s] if isinstance(s, str) else s)
    return "\r".join(lines) + "\r"


def adult_order_set(control_id: str = "T0001", *, dob: str = "19660412", mrn: str = "MRN55501",
                    go: list[str] | None = None, premeds: list[str] | None = None,
                    extra_orders: list[str] | None = None, time: str = "20261201083000",
                    version: str = "2.5.1") -> str:
    """The shared accepted adult example; pass `go=go_order(...)` or `premeds=[...]` to vary it."""
    return message(
        msh(control_id, time=time, version=version), pid(mrn, dob), pv1(),
        go if go is not None else go_order(),
        premeds if premeds is not None else standard_premeds(),
        extra_orders or [],
    )


def judge_text(text: str, history=None, protocol=None, tz=UTC, received_at: datetime | None = None):
    """Read and judge one message without storing anything: returns the Judgement."""
    protocol = protocol or load_protocol()
    raw = split_messages(text).messages[0]
    order_set = read_order_set(raw, tz)
    return judge(order_set, history or [], protocol, tz=tz,
                 received_at=received_at or datetime(2026, 12, 1, 8, 30, tzinfo=tz))


def run(text: str, store: InMemoryStore | None = None, protocol=None, tz=UTC):
    """Process through the service (dedupe, history, response) and return the first outcome."""
    store = store if store is not None else InMemoryStore()
    return process_text(text, store, protocol or load_protocol(), tz=tz,
                        received_at=datetime(2026, 12, 1, 8, 30, tzinfo=tz))[0]


def rules_of(verdict_or_result, severity: str = "error") -> set[str]:
    """Rule ids of a verdict's (or a JSON order's) findings of one severity."""
    findings = verdict_or_result.findings if hasattr(verdict_or_result, "findings") else verdict_or_result["findings"]
    out = set()
    for f in findings:
        sev = f.severity if hasattr(f, "severity") else f["severity"]
        rule = f.rule if hasattr(f, "rule") else f["rule"]
        if sev == severity:
            out.add(rule)
    return out


def go_dose_message(control_id: str, day: str, *, placer: str = "ORD1001", control: str = "NW",
                    start_time: str = "100000", mrn: str = "MRN55501", dob: str = "19660412",
                    premed_placers: tuple[str, str, str] | None = None, message_time: str = "083000") -> str:
    """The accepted adult example moved to the date `day` (YYYYMMDD): GO at `start_time`, 240 min,
    premeds 60 and 20 minutes before, body measures and labs the day before (inside 72 h), CD33
    on 2026-11-15, MSH-7 that morning. For multi-message course tests (day 1, day 14, ...)."""
    start = datetime.strptime(day + start_time, "%Y%m%d%H%M%S")
    stamp = "%Y%m%d%H%M%S"
    from datetime import timedelta
    before = (start - timedelta(days=1)).strftime("%Y%m%d")
    observations = standard_observations(body_time=before + "090000", lab_time=before + "060000")
    premeds = standard_premeds(
        first_start=(start - timedelta(minutes=60)).strftime(stamp),
        steroid_start=(start - timedelta(minutes=20)).strftime(stamp),
        placers=premed_placers or (f"{placer}-A", f"{placer}-D", f"{placer}-M"),
    )
    go = go_order(placer, control=control, start=start.strftime(stamp),
                  end=(start + timedelta(minutes=240)).strftime(stamp), observations=observations)
    return adult_order_set(control_id, dob=dob, mrn=mrn, go=go, premeds=premeds, time=day + message_time)


def cancel_message(control_id: str, placer: str, *, control: str = "CA", time: str = "20261201083000",
                   mrn: str = "MRN55501", start: str = GO_START) -> str:
    """A CA/DC request for the GO order `placer` (ORC-1 `control`, same sender, ORC-2 `placer`)."""
    return message(
        msh(control_id, time=time), pid(mrn), pv1(),
        [orc(placer, control=control), rxe(GO_DRUG, "15.2"), tq1(start, duration="240^min"), rxr()],
    )


def observations_with(*, replace: dict[int, str] | None = None, drop: tuple[int, ...] = (),
                      add: list[str] | None = None, **standard: str) -> list[str]:
    """`standard_observations(**standard)` with OBX set ids replaced (set id -> segment) or dropped, plus `add`.

    Set ids of the standard list: 1 height, 2 weight, 3 WBC, 4 CD33, 5 bilirubin, 6 AST, 7 ALT.
    """
    replace = replace or {}
    out = []
    for set_id, segment in enumerate(standard_observations(**standard), start=1):
        if set_id in drop:
            continue
        out.append(replace.get(set_id, segment))
    return out + (add or [])


def judge_labs(observations: list[str], *, extra_orders: list[str] | None = None, history=None, protocol=None):
    """Judge the default adult message with the GO order's OBX replaced by `observations`."""
    return judge_text(adult_order_set(go=go_order(observations=observations), extra_orders=extra_orders),
                      history=history, protocol=protocol)


def dose_context(text: str, *, history=None, protocol=None, dose_index: int = 0, tz=UTC,
                 received_at: datetime | None = None):
    """The DoseContext a rule sees for order `dose_index` of `text` (to call one rule's `check` directly)."""
    from validator.observations import usable_observations
    from validator.rules.base import DoseContext
    from validator.rules.eligibility import age_in_years

    protocol = protocol or load_protocol()
    received_at = received_at or datetime(2026, 12, 1, 8, 30, tzinfo=tz)
    order_set = read_order_set(split_messages(text).messages[0], tz)
    observations, _ = usable_observations(order_set, protocol, received_at)
    dose = order_set.orders[dose_index]
    return DoseContext(order_set=order_set, dose=dose, protocol=protocol, history=list(history or []),
                       observations=observations, tz=tz, received_at=received_at,
                       age_years=age_in_years(order_set.patient.birth_date, dose.timing.start, tz))


def msa(response: str) -> list[str]:
    """The fields of a response's MSA segment (MSA-1 ack code at [1], MSA-2 control id at [2])."""
    line = next(seg for seg in response.split("\r") if seg.startswith("MSA|"))
    return line.split("|")


# --- audit records and the audit API's credentials (rxgate audit, the HTTP API, its security tests) ------

NY = ZoneInfo("America/New_York")


def finding(rule: str, severity: str = "error", location: str | None = "RXE-3") -> dict:
    return {"rule": rule, "severity": severity, "location": location, "message": f"{rule} says no"}


def audit_record(control_id: str, received_at: datetime, ack: str = "AA", findings=(), patient: str = "MRN1",
           authority: str = "GENHOSP") -> ProcessedMessage:
    result = {"control_id": control_id, "message_type": "RDE^O11^RDE_O11", "ack_code": ack,
              "patient_id": patient or None,
              "orders": [{"placer_order_number": "P1", "drug": "gemtuzumab ozogamicin", "protocol_order": True,
                          "order_control": "OK" if ack == "AA" else "UA", "findings": list(findings)}],
              "findings": list(findings), "response": f"MSH|^~\\&|RXGATE|GENHOSP|APP|FAC|||RRE^O12|R{control_id}"}
    return ProcessedMessage(
        key=MessageKey(sending_application="APP", sending_facility="FAC", control_id=control_id,
                       content_sha256=hashlib.sha256(control_id.encode()).hexdigest()),
        received_at=received_at, answered_at=received_at, sender="APP^FAC", control_id=control_id,
        patient_key=f"{patient}^{authority}" if patient else "", raw_message=f"MSH|^~\\&|APP|FAC|||||RDE^O11|{control_id}",
        ack_code=ack, result=result, response=result["response"], protocol_id="go-rr-9mg-d1-d14",
        protocol_version="v1",
    )


def fill_audit_store(url: str) -> None:
    """Five records: C1 late on Nov 30 (New York), C2 at local midnight Dec 1, C3 late Dec 1, C4 (AR) and C5 Dec 2."""
    from workers.store import open_sql_store  # here: the other builders need only the core

    store = open_sql_store(url, create=True)
    store.save(audit_record("C1", datetime(2026, 11, 30, 23, 59, 59, tzinfo=NY)))
    store.save(audit_record("C2", datetime(2026, 12, 1, 0, 0, 0, tzinfo=NY), "AE", [finding("go.dose")]))
    store.save(audit_record("C3", datetime(2026, 12, 1, 23, 59, 59, tzinfo=NY), "AE",
                      [finding("go.route", location="RXR-1"), finding("go.dose", "warning")], patient="MRN2"))
    store.save(audit_record("C4", datetime(2026, 12, 2, 0, 0, 0, tzinfo=NY), "AR",
                      [finding("hl7.structure", location=None)], patient=""))
    store.save(audit_record("C5", datetime(2026, 12, 2, 12, 0, tzinfo=NY), "AA", [finding("go.bsa", "info")]))
    store.dispose()


AUDIT_TOKEN = "s3cret-audit-token"
AUDIT_TOKEN_SHA = hashlib.sha256(AUDIT_TOKEN.encode()).hexdigest()
AUDIT_AUTH = {"Authorization": f"Bearer {AUDIT_TOKEN}"}


def login(client, token: str, **extra):
    """POST /login as a browser does: GET the form first (its CSRF token, in a cookie and a hidden field)."""
    import re

    form = client.get("/login")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found, "the login form has no CSRF token"
    extra.setdefault("follow_redirects", False)
    return client.post("/login", data={"token": token, "csrf": found.group(1)}, **extra)


def audit_cli(*argv: str) -> tuple[int, str]:
    """`rxgate audit ARGV…` in-process: its exit code and what it printed on standard output."""
    import argparse
    import io

    from workers.cli.audit import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", *argv])
    out = io.StringIO()
    return args.func(args, out=out), out.getvalue()
