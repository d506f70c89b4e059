"""validator/fhir.py: FHIR R4 resources onto the order set the rules read (pure, no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests import fhir_builders as fb
from tests.builders import standard_premed_params
from validator import fhir
from validator.history import HistoryEntry
from validator.model import Coded
from validator.protocol import load_protocol_set
from validator.verdict import judge

PROTOCOLS = load_protocol_set()
AT = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def mapped(drafts=None, *, patient=None, observations=None, medications=None):
    drafts = drafts if drafts is not None else [fb.go_request(), *fb.premed_requests()]
    read = fhir.read_bundle(fb.bundle(drafts, "collection"), "context.draftOrders")
    return fhir.order_set_from_fhir(
        hook_instance="h-1", sender="https://ehr.example.org", patient_id=fb.PATIENT_ID, drafts=read,
        patient=fhir.read_bundle(patient or fb.patient(), "prefetch.patient"),
        observations=fhir.read_bundle(fb.bundle(observations if observations is not None else fb.observations()),
                                      "prefetch.observations"),
        medications=medications or {}, protocols=PROTOCOLS, tz=UTC, received_at=AT)


def judged(drafts=None, history=(), **kw):
    m = mapped(drafts, **kw)
    j = judge(m.order_set, list(history), PROTOCOLS, tz=UTC, received_at=AT)
    return fhir.localise(fhir.add_problems(j, m.problems), m.patient_location)


def findings(judgement, severity="error"):
    return [f for f in judgement.findings if f.severity == severity]


def test_the_adult_example_reads_as_the_hl7_reader_reads_it():
    m = mapped()
    go = m.order_set.orders[0]
    assert (go.drug.code, go.drug.system, str(go.amount), go.amount_units.code) == ("1294580", "RXNORM", "15.2", "mg")
    assert go.route.code == "IV" and go.route.system == "HL70162"  # SNOMED 47625008
    assert go.timing.start == datetime(2026, 12, 1, 10, tzinfo=UTC) and go.timing.end.hour == 14
    assert str(go.timing.service_duration.value) == "240" and go.timing.service_duration.unit.code == "min"
    assert (go.placer_number, go.placer_group, go.control) == ("ORD1001", "GRP501", "NW")
    assert m.order_set.patient.key == "MRN55501^GENHOSP" and str(m.order_set.patient.birth_date) == "1966-04-12"
    assert {o.code.code for o in m.order_set.observations} >= {"8302-2", "29463-7", "6690-2", "CD33BL"}
    assert all(o.final for o in m.order_set.observations)
    assert judged().ack_code == "AA"


def test_locations_are_fhir_paths():
    body = fb.go_request(dose="18.5")
    j = judged([body, *fb.premed_requests()])
    (dose,) = [f for f in findings(j) if f.rule == "go.dose"]
    assert dose.location.short() == "MedicationRequest/ORD1001.dosageInstruction[0].doseAndRate[0].doseQuantity"
    assert dose.location.err2() == "RXE^1^3"  # the HL7 coordinates are kept
    old_wbc = fb.observations(lab_time="20261120060000")
    (wbc,) = [f for f in findings(judged(observations=old_wbc)) if f.rule == "go.wbc"]
    assert wbc.location.short().endswith(".effectiveDateTime") and wbc.location.short().startswith("Observation/")


def test_a_default_location_becomes_the_orders_element():
    body = fb.go_request()
    del body["dosageInstruction"][0]["timing"]["repeat"]["duration"]
    del body["dosageInstruction"][0]["timing"]["repeat"]["durationUnit"]
    del body["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"]["end"]
    (infusion,) = [f for f in findings(judged([body, *fb.premed_requests()])) if f.rule == "go.infusion"]
    assert infusion.location.short() == "MedicationRequest/ORD1001.dosageInstruction[0].timing.repeat.boundsPeriod.start"
    no_birth = fb.patient()
    del no_birth["birthDate"]
    (eligibility,) = [f for f in findings(judged(patient=no_birth)) if f.rule == "go.eligibility"]
    assert eligibility.location.short() == f"Patient/{fb.PATIENT_ID}.birthDate"


@pytest.mark.parametrize(("status", "intent", "control"), [
    ("draft", "order", "NW"), ("active", "order", "NW"), ("cancelled", "order", "CA"), ("stopped", "order", "DC"),
    ("on-hold", "order", "status on-hold"), ("draft", "plan", "intent plan"), ("draft", "proposal", "intent proposal"),
])
def test_status_and_intent_give_the_order_control(status, intent, control):
    body = fb.go_request()
    body.update(status=status, intent=intent)
    assert mapped([body]).order_set.orders[0].control == control


def test_a_status_that_is_not_an_order_to_sign_is_refused():
    body = fb.go_request()
    body["status"] = "on-hold"
    assert "hl7.order_control" in {f.rule for f in findings(judged([body, *fb.premed_requests()]))}


@pytest.mark.parametrize(("repeat", "several"), [
    ({}, False),
    ({"count": 1}, False),
    ({"count": 2}, True),
    ({"frequency": 2, "period": 1, "periodUnit": "d"}, True),
    ({"frequency": 1, "period": 1, "periodUnit": "d"}, False),  # the 4-hour bounds fit in one day
    ({"period": 1, "periodUnit": "h"}, True),  # every hour for 4 hours
    ({"timeOfDay": ["10:00:00", "22:00:00"]}, True),
    ({"period": 7, "periodUnit": "d", "countMax": 3}, True),
])
def test_more_than_one_start(repeat, several):
    body = fb.go_request()
    body["dosageInstruction"][0]["timing"]["repeat"].update(repeat)
    j = judged([body, *fb.premed_requests()])
    one_start = [f for f in findings(j) if f.message == fhir.ONE_START]
    assert bool(one_start) == several
    if several:
        assert one_start[0].rule == "go.schedule" and j.orders[0].control == "UA"


def test_two_events_or_a_timing_code_are_more_than_one_start():
    body = fb.go_request()
    body["dosageInstruction"][0]["timing"] = {"event": ["2026-12-01T10:00:00Z", "2026-12-02T10:00:00Z"]}
    assert fhir.ONE_START in {f.message for f in findings(judged([body]))}
    body["dosageInstruction"][0]["timing"] = {"code": {"text": "BID"}, "repeat": {"boundsPeriod": {
        "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T14:00:00Z"}, "duration": 240, "durationUnit": "min"}}
    assert fhir.ONE_START in {f.message for f in findings(judged([body]))}


def test_routes_by_snomed_table_0162_or_text():
    assert fhir._route(None) is None
    body = fb.go_request(route="PO^Oral^HL70162")
    assert mapped([body]).order_set.orders[0].route.code == "PO"
    body["dosageInstruction"][0]["route"] = {"text": "intravenous"}
    order = mapped([body]).order_set.orders[0]
    assert order.route.code == "" and order.route.text == "intravenous"


def test_dose_range_is_minimum_and_maximum():
    order = mapped([fb.go_request(dose="15.2", amount_max="18.5")]).order_set.orders[0]
    assert str(order.amount) == "15.2" and str(order.amount_max) == "18.5"
    j = judged([fb.go_request(dose="15.2", amount_max="18.5"), *fb.premed_requests()])
    assert any(f.rule == "go.dose" and "maximum dose" in f.message for f in findings(j))


def test_several_dose_and_rate_entries_are_not_a_dose():
    body = fb.go_request()
    body["dosageInstruction"][0]["doseAndRate"].append({"doseQuantity": {"value": 99, "unit": "mg"}})
    (dose,) = [f for f in findings(judged([body, *fb.premed_requests()])) if f.rule == "go.dose"]
    assert "2 doseAndRate entries" in dose.message


def test_a_rate_in_ml_per_hour():
    order = mapped([fb.go_request(rate="62.5", rate_units="mL/h^mL/h^UCUM")]).order_set.orders[0]
    assert str(order.rate_amount) == "62.5" and order.rate_units.code == "mL/h"
    assert order.rate_location.short().endswith(".rateQuantity")


def test_observation_values_read_like_hl7_text():
    obs = fb.observations()
    obs[3]["valueString"] = ">90%"  # CD33 as text
    del obs[3]["valueQuantity"]
    cd33 = mapped(observations=obs).order_set.observations[3]
    assert (str(cd33.quantity.value), cd33.quantity.comparator, cd33.quantity.unit.code) == ("90", ">", "%")
    obs[3]["valueString"] = "positive"
    assert "go.cd33" in {f.rule for f in findings(judged(observations=obs))}


def test_observation_range_and_comparator():
    obs = fb.observations()
    obs[2]["valueQuantity"]["comparator"] = ">"  # WBC > 25: may be >= 30 -> cytoreduction needed
    obs[2]["valueQuantity"]["value"] = 25
    assert "go.wbc" in {f.rule for f in findings(judged(observations=obs))}
    obs[2].pop("valueQuantity")
    obs[2]["valueRange"] = {"low": {"value": 8, "unit": "10*9/L", "code": "10*9/L"},
                            "high": {"value": 9, "unit": "10*9/L", "code": "10*9/L"}}
    wbc = mapped(observations=obs).order_set.observations[2]
    assert wbc.raw_value == "8-9" and str(wbc.quantity.value) == "8"
    assert mapped().order_set.observations[2].reference_range == "4.0-11.0"


@pytest.mark.parametrize(("status", "final"), [("final", True), ("amended", True), ("corrected", True),
                                                ("preliminary", False), ("registered", False), ("cancelled", False)])
def test_only_final_amended_corrected_results_count(status, final):
    obs = fb.observations()
    obs[2]["status"] = status
    assert mapped(observations=obs).order_set.observations[2].final is final


def test_a_partial_birth_date_cannot_show_eligibility():
    p = fb.patient()
    p["birthDate"] = "1966-04"
    (found,) = [f for f in findings(judged(patient=p)) if f.rule == "go.eligibility"]
    assert "'1966-04' is partial" in found.message


def test_the_mr_identifier_and_its_assigner_make_the_history_key():
    p = fb.patient()
    p["identifier"].insert(0, {"system": "http://genhosp.example.org/ssn", "value": "123-45"})
    patient = mapped(patient=p).order_set.patient
    assert (patient.id, patient.id_authority) == ("MRN55501", "GENHOSP")
    del p["identifier"][1]["assigner"]
    assert mapped(patient=p).order_set.patient.id_authority == "http://genhosp.example.org/mrn"


def test_a_prefetched_patient_that_is_not_the_context_patient_is_not_used():
    p = fb.patient(patient_id="other")
    m = mapped(patient=p)
    assert m.order_set.patient.key == "" and any("not the patient in context" in f.message for f in m.problems)


def test_a_contained_medication_is_the_give_code():
    body = fb.go_request()
    body.pop("medicationCodeableConcept")
    body["medicationReference"] = {"reference": "#go"}
    body["contained"] = [{"resourceType": "Medication", "id": "go", "code": fb.concept("1294580^gemtuzumab ozogamicin^RXNORM")}]
    assert mapped([body]).order_set.orders[0].drug.code == "1294580"
    body["medicationReference"] = {"reference": "Medication/go-vial"}
    body.pop("contained")
    assert fhir.medication_reference(fhir.read_bundle(body, "x").resources[0][1]) == "Medication/go-vial"
    m = mapped([body])
    assert any(f.rule == "rxgate.fhir" and "cannot be read" in f.message for f in m.problems)


def test_a_coding_that_names_the_protocol_drug_wins():
    body = fb.go_request()
    body["medicationCodeableConcept"]["coding"].insert(0, {"system": "urn:local", "code": "X1", "display": "GO 4.5mg"})
    assert mapped([body]).order_set.orders[0].drug.code == "1294580"


def test_course_history_counts_each_order_once():
    def entry(placer, day):
        return HistoryEntry(patient_key="K", sender="S", placer_number=placer, control_id="C", drug=Coded(code="1"),
                            protocol_order=True, start=datetime(2026, 12, day, 10, tzinfo=UTC))

    stored, record = [entry("ORD1", 1)], [entry("ORD1", 1), entry("EHR-2", 3)]
    order_set = mapped([fb.go_request("EHR-2")]).order_set
    assert [h.placer_number for h in fhir.course_history(stored, record, order_set)] == ["ORD1"]


def test_history_from_the_record_keeps_counted_statuses_and_recent_starts():
    def request(placer, status, start):
        r = fb.go_request(placer, start=start, end="")
        r["status"] = status
        return r

    requests = [request("A", "completed", "20261120100000"), request("B", "entered-in-error", "20261120100000"),
                request("C", "draft", "20261120100000"), request("D", "stopped", "20250101100000"),
                {**fb.premed_request("E", standard_premed_params()[0]["drug"], "650"), "status": "active"}]
    read = fhir.read_bundle(fb.bundle(requests), "prefetch.medications")
    entries = fhir.history_from_fhir(read, patient_id=fb.PATIENT_ID, patient_key="K", sender="S", medications={},
                                     protocols=PROTOCOLS, tz=UTC, since=datetime(2026, 9, 1, tzinfo=UTC),
                                     draft_ids=set())
    assert [(e.placer_number, e.protocol_order) for e in entries] == [("A", True), ("E", False)]
    assert entries[0].protocol_id == PROTOCOLS.default.id


def test_an_invalid_entry_is_reported_and_the_rest_is_read():
    obs = fb.observations()
    obs[0]["valueQuantity"]["value"] = "tall"
    read = fhir.read_bundle(fb.bundle(obs), "prefetch.observations")
    assert len(read.resources) == 6
    (problem,) = read.problems
    assert problem.rule == "rxgate.fhir" and "prefetch.observations.entry[0]" in problem.message
    assert "valueQuantity" in problem.message


def test_an_unknown_resource_type_is_reported():
    read = fhir.read_bundle(fb.bundle([{"resourceType": "NoSuchThing"}]), "prefetch.observations")
    assert read.resources == [] and "unknown resource type" in read.problems[0].message
