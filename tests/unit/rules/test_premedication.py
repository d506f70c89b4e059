"""go.premedication and the go.orderset cascade (docs/protocol.md, "Premedication", "Premedication belongs
to a dose", "Message-level outcomes", "Arithmetic").

The default adult message (62 kg, GO 10:00) has acetaminophen 650 mg PO and diphenhydramine 50 mg IV at
09:00 and methylprednisolone 62 mg IV at 09:40. Order indexes: 0 GO, 1 acetaminophen, 2 diphenhydramine,
3 methylprednisolone, then any extra orders.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.builders import (
    ACETAMINOPHEN,
    DIPHENHYDRAMINE,
    METHYLPRED,
    UTC,
    adult_order_set,
    go_order,
    judge_text,
    orc,
    premed_order,
    rules_of,
    run,
    rxe,
    standard_observations,
    standard_premeds,
    tq1,
)
from validator import InMemoryStore, load_protocol
from validator.er7 import split_messages
from validator.history import HistoryEntry
from validator.model import Coded
from validator.protocol import BUNDLED_DIR, parse_protocol
from validator.reader import read_order_set
from validator.rules import premedication
from validator.rules.premedication import RULE_ID, belonging_premedications

ONDANSETRON = "26225^ondansetron^RXNORM"
DEXAMETHASONE = "3264^dexamethasone^RXNORM"
GO, APAP, DPH, MP = 0, 1, 2, 3


def premeds(**changes) -> list[str]:
    """The standard premeds with one of them replaced: changes name -> list of segments or None (left out)."""
    default = {
        "acetaminophen": premed_order("ORD1002", ACETAMINOPHEN, "650", route="PO^Oral^HL70162"),
        "diphenhydramine": premed_order("ORD1003", DIPHENHYDRAMINE, "50", route="IV^Intravenous^HL70162"),
        "methylprednisolone": premed_order("ORD1004", METHYLPRED, "62", route="IV^Intravenous^HL70162",
                                           start="20261201094000"),
    }
    default.update(changes)
    out: list[str] = []
    for segs in default.values():
        out += segs or []
    return out


def apap(dose: str = "650", *, start: str = "20261201090000", route: str = "PO^Oral^HL70162", **kw) -> list[str]:
    return premed_order("ORD1002", ACETAMINOPHEN, dose, start=start, route=route, **kw)


def dph(dose: str = "50", *, start: str = "20261201090000", route: str = "IV^Intravenous^HL70162", **kw) -> list[str]:
    return premed_order("ORD1003", DIPHENHYDRAMINE, dose, start=start, route=route, **kw)


def mp(dose: str = "62", *, start: str = "20261201094000", route: str = "IV^Intravenous^HL70162", **kw) -> list[str]:
    return premed_order("ORD1004", METHYLPRED, dose, start=start, route=route, **kw)


def judged(**changes):
    return judge_text(adult_order_set(premeds=premeds(**changes)))


def premed_findings(verdict) -> list:
    return [f for f in verdict.findings if f.rule == RULE_ID]


def child_message(weight: str, height: str, go_dose: str, *, dob: str = "20161201", **changes) -> str:
    """A 10-year-old at the 2026-12-01 GO start (dob 2016-12-01); GO dose matching 9 mg/m² of the BSA."""
    return adult_order_set(
        dob=dob,
        go=go_order(dose=go_dose, observations=standard_observations(weight=weight, height=height)),
        premeds=premeds(**changes),
    )


# --- the adult message -------------------------------------------------------------------------


def test_adult_message_is_accepted_with_offsets_computed():
    judgement = judge_text(adult_order_set())
    assert judgement.ack_code == "AA"
    assert [v.control for v in judgement.orders] == ["OK"] * 4
    assert premed_findings(judgement.orders[GO]) == []
    computed = judgement.orders[GO].computed["premedication"]
    assert computed["acetaminophen"][0]["minutes_before"] == "60"
    assert computed["diphenhydramine"][0]["minutes_before"] == "60"
    assert computed["methylprednisolone"][0]["minutes_before"] == "20"
    assert computed["methylprednisolone"][0]["expected_mg"] == "62"


def test_shared_sample_is_accepted(shared_dir):
    sample = shared_dir / "samples" / "go" / "adult-day1-accept.hl7"
    outcome = run(sample.read_bytes().decode())
    assert outcome.ack_code == "AA", outcome.result["findings"]


# --- missing premeds and the cascade -------------------------------------------------------------


@pytest.mark.parametrize("missing, index", [("acetaminophen", APAP), ("diphenhydramine", DPH),
                                            ("methylprednisolone", MP)])
def test_each_missing_premed_refuses_the_dose_and_its_other_premeds(missing, index):
    judgement = judged(**{missing: None})
    assert judgement.ack_code == "AE"
    go = judgement.orders[GO]
    assert go.control == "UA"
    found = premed_findings(go)
    assert len(found) == 1
    assert found[0].severity == "error"
    assert found[0].message.startswith(missing)
    assert "is not ordered" in found[0].message
    assert found[0].location.short() == "RXE-2"
    others = judgement.orders[1:]
    assert len(others) == 2
    for verdict in others:
        assert verdict.control == "UA"
        assert "go.orderset" in rules_of(verdict)


def test_missing_message_names_dose_route_and_window():
    judgement = judged(acetaminophen=None)
    assert premed_findings(judgement.orders[GO])[0].message == (
        "acetaminophen 650 mg PO 30–90 min before the GO start is not ordered")
    judgement = judged(methylprednisolone=None)
    assert premed_findings(judgement.orders[GO])[0].message == (
        "methylprednisolone 1 mg/kg (62 mg) IV/PO 0–30 min before the GO start is not ordered")


def test_unrelated_drug_keeps_its_outcome_when_the_dose_is_refused():
    extra = premed_order("ORD1009", ONDANSETRON, "8", route="IV^Intravenous^HL70162")
    judgement = judge_text(adult_order_set(premeds=premeds(acetaminophen=None), extra_orders=extra))
    assert judgement.orders[GO].control == "UA"
    ondansetron = judgement.orders[-1]
    assert ondansetron.order.drug.text == "ondansetron"
    assert ondansetron.control == "OK"
    assert "go.orderset" not in rules_of(ondansetron)


def test_accepted_dose_keeps_its_premeds_ok():
    judgement = judge_text(adult_order_set())
    assert all("go.orderset" not in rules_of(v) for v in judgement.orders)


def test_cascade_through_the_service_json():
    outcome = run(adult_order_set(premeds=premeds(diphenhydramine=None)))
    assert outcome.ack_code == "AE"
    orders = outcome.result["orders"]
    assert [o["order_control"] for o in orders] == ["UA", "UA", "UA"]
    assert "go.premedication" in rules_of(orders[0])
    assert "go.orderset" in rules_of(orders[1]) and "go.orderset" in rules_of(orders[2])


# --- dose ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dose, ok", [("585", True), ("584.9", False), ("715", True), ("715.1", False),
                                      ("650", True)])
def test_acetaminophen_adult_dose_tolerance(dose, ok):
    judgement = judged(acetaminophen=apap(dose))
    found = premed_findings(judgement.orders[GO])
    assert (found == []) is ok, found
    if not ok:
        assert found[0].location.short() == "RXE-3"
        assert "585–715 mg" in found[0].message
        assert judgement.orders[APAP].control == "UA"


@pytest.mark.parametrize("dose, ok", [("55.8", True), ("55.7", False), ("68.2", True), ("68.3", False)])
def test_methylprednisolone_adult_mg_per_kg_tolerance(dose, ok):
    found = premed_findings(judged(methylprednisolone=mp(dose)).orders[GO])
    assert (found == []) is ok, found
    if not ok:
        assert "1 mg/kg × 62 kg = 62 mg" in found[0].message


@pytest.mark.parametrize("dose, ok", [("45", True), ("44.9", False), ("55", True), ("55.1", False)])
def test_diphenhydramine_adult_dose_tolerance(dose, ok):
    assert (premed_findings(judged(diphenhydramine=dph(dose)).orders[GO]) == []) is ok


def test_dose_in_grams_is_converted():
    assert premed_findings(judged(acetaminophen=apap("0.65", units="g^gram^UCUM")).orders[GO]) == []
    found = premed_findings(judged(acetaminophen=apap("0.75", units="g^gram^UCUM")).orders[GO])
    assert len(found) == 1 and "750 mg" in found[0].message


def test_unknown_dose_unit_is_an_error():
    found = premed_findings(judged(acetaminophen=apap("1", units="TAB^tablet^L")).orders[GO])
    assert len(found) == 1
    assert "'TAB'" in found[0].message and "not a known mass unit" in found[0].message
    assert found[0].location.short() == "RXE-3"


def test_non_numeric_dose_is_an_error_not_a_traceback():
    found = premed_findings(judged(acetaminophen=apap("six fifty")).orders[GO])
    assert len(found) == 1 and "not a number" in found[0].message


def test_methylprednisolone_without_weight_cannot_be_verified():
    # Only a BSA observation: GO's dose can use it, the mg/kg steroid cannot.
    observations = [o for o in standard_observations() if "29463-7" not in o and "8302-2" not in o]
    observations.append("OBX|8|NM|8277-6^Body surface area^LN||1.69|m2^m2^UCUM|||||F|||20261130090000")
    judgement = judge_text(adult_order_set(go=go_order(observations=observations)))
    found = premed_findings(judgement.orders[GO])
    assert len(found) == 1
    assert "no weight observation" in found[0].message
    assert found[0].location.short() == "RXE-3"
    assert judgement.orders[GO].control == "UA"


def test_two_orders_of_one_premed_are_each_judged():
    extra = premed_order("ORD1005", ACETAMINOPHEN, "1000", start="20261201091000")
    judgement = judge_text(adult_order_set(extra_orders=extra))
    found = premed_findings(judgement.orders[GO])
    assert len(found) == 1 and "ORD1005" in found[0].message
    assert judgement.orders[GO].control == "UA"
    assert judgement.orders[-1].control == "UA" and "go.orderset" in rules_of(judgement.orders[-1])


# --- route --------------------------------------------------------------------------------------


def test_acetaminophen_iv_is_refused():
    found = premed_findings(judged(acetaminophen=apap(route="IV^Intravenous^HL70162")).orders[GO])
    assert len(found) == 1
    assert found[0].location.short() == "RXR-1"
    assert "'Intravenous'" in found[0].message and "expected PO" in found[0].message


def test_route_code_is_case_insensitive_and_text_counts():
    assert premed_findings(judged(acetaminophen=apap(route="po^oral^HL70162")).orders[GO]) == []
    assert premed_findings(judged(acetaminophen=apap(route="^Oral")).orders[GO]) == []
    assert premed_findings(judged(diphenhydramine=dph(route="^intravenous")).orders[GO]) == []
    assert premed_findings(judged(diphenhydramine=dph(route="PO^Oral^HL70162")).orders[GO]) == []
    found = premed_findings(judged(acetaminophen=apap(route="PR^Rectal^HL70162")).orders[GO])
    assert len(found) == 1 and "'Rectal'" in found[0].message


def test_premed_without_route_is_refused():
    segs = [orc("ORD1002"), rxe(ACETAMINOPHEN, "650"), tq1("20261201090000")]
    found = premed_findings(judged(acetaminophen=segs).orders[GO])
    assert len(found) == 1 and "no route" in found[0].message


# --- window -------------------------------------------------------------------------------------


@pytest.mark.parametrize("start, ok", [
    ("20261201093100", False),  # 29 min
    ("20261201093001", False),  # 29 min 59 s
    ("20261201093000", True),  # 30 min
    ("20261201083000", True),  # 90 min
    ("20261201082959", False),  # 90 min 1 s
    ("20261201082900", False),  # 91 min
])
def test_acetaminophen_window(start, ok):
    judgement = judged(acetaminophen=apap(start=start))
    found = premed_findings(judgement.orders[GO])
    assert (found == []) is ok, found
    if not ok:
        assert found[0].location.short() == "TQ1-7"
        assert "expected 30–90 min before the GO start" in found[0].message


@pytest.mark.parametrize("start, ok", [
    ("20261201100000", True),  # 0 min: at the GO start
    ("20261201093000", True),  # 30 min
    ("20261201092959", False),  # 30 min 1 s
    ("20261201092900", False),  # 31 min
])
def test_methylprednisolone_window(start, ok):
    found = premed_findings(judged(methylprednisolone=mp(start=start)).orders[GO])
    assert (found == []) is ok, found


def test_premed_after_the_go_start_belongs_to_it_and_is_refused():
    judgement = judged(methylprednisolone=mp(start="20261201100100"))
    found = premed_findings(judgement.orders[GO])
    assert len(found) == 1
    assert "1 min after the GO start" in found[0].message
    assert found[0].location.short() == "TQ1-7"
    assert judgement.orders[MP].control == "UA" and "go.orderset" in rules_of(judgement.orders[MP])


def test_premed_beyond_the_belonging_window_is_missing_and_keeps_its_outcome():
    # 14:00:01 is more than 4 h after the 10:00 start: it prepares nothing, so acetaminophen is missing.
    judgement = judged(acetaminophen=apap(start="20261201140001"))
    found = premed_findings(judgement.orders[GO])
    assert len(found) == 1 and "is not ordered" in found[0].message
    assert judgement.orders[APAP].control == "OK"
    # 14:00:00 exactly is inside the window (inclusive): it belongs, and starts after the GO start.
    judgement = judged(acetaminophen=apap(start="20261201140000"))
    found = premed_findings(judgement.orders[GO])
    assert len(found) == 1 and "after the GO start" in found[0].message
    assert judgement.orders[APAP].control == "UA"


def test_premed_without_start_does_not_count():
    segs = [orc("ORD1002"), rxe(ACETAMINOPHEN, "650"), "RXR|PO^Oral^HL70162"]
    judgement = judged(acetaminophen=segs)
    found = premed_findings(judgement.orders[GO])
    assert len(found) == 1
    assert "is not ordered" in found[0].message and "ORD1002 has no start time" in found[0].message
    assert judgement.orders[APAP].control == "OK"  # belongs to no dose


# --- pediatric ----------------------------------------------------------------------------------
# A 10-year-old, 150 cm, 50 kg: BSA 1.443 m², GO 13 mg. Acetaminophen 15 mg/kg = 750 → capped at 650.


def child50(**changes):
    return judge_text(child_message("50", "150", "13", **changes))


def test_pediatric_message_is_accepted():
    judgement = child50(methylprednisolone=mp("50"))
    assert judgement.orders[GO].computed["age_years"] == 10
    assert judgement.ack_code == "AA", [f.message for f in judgement.findings if f.severity == "error"]


@pytest.mark.parametrize("dose, ok", [("650", True), ("585", True), ("584", False), ("715", False),
                                      ("651", False)])
def test_pediatric_acetaminophen_capped(dose, ok):
    judgement = child50(acetaminophen=apap(dose), methylprednisolone=mp("50"))
    found = premed_findings(judgement.orders[GO])
    assert (found == []) is ok, found
    if not ok:
        assert "585–650 mg" in found[0].message
        assert "15 mg/kg × 50 kg = 750 mg, capped at 650 mg" in found[0].message


def test_pediatric_diphenhydramine_capped_at_50():
    # 60 kg child: 1 mg/kg = 60 mg, capped at 50 → 45–50 mg.
    def found(dose):
        message = child_message("60", "160", "14.6", diphenhydramine=dph(dose), methylprednisolone=mp("60"))
        return premed_findings(judge_text(message).orders[GO])

    assert found("50") == []
    assert found("45") == []
    refused = found("55")
    assert len(refused) == 1 and "45–50 mg" in refused[0].message and "never above 50 mg" in refused[0].message
    assert len(found("44.9")) == 1


def test_pediatric_acetaminophen_adult_dose_is_refused_for_a_small_child():
    # 20 kg: 15 mg/kg = 300 mg (270–330); the adult 650 mg is refused.
    message = child_message("20", "125", "7.5", acetaminophen=apap("650"), diphenhydramine=dph("20"),
                            methylprednisolone=mp("20"))
    found = premed_findings(judge_text(message).orders[GO])
    assert len(found) == 1 and "270–330 mg" in found[0].message


@pytest.mark.parametrize("dose, ok", [("22", True), ("22.1", False), ("18", True), ("17.9", False)])
def test_pediatric_methylprednisolone_decimal_boundary(dose, ok):
    # 20 kg at 1 mg/kg ± 10 %: 22 mg is exactly +10 % and must pass (binary floats would refuse it).
    message = child_message("20", "125", "7.5", acetaminophen=apap("300"), diphenhydramine=dph("20"),
                            methylprednisolone=mp(dose))
    judgement = judge_text(message)
    found = premed_findings(judgement.orders[GO])
    assert (found == []) is ok, found


def test_pediatric_weight_in_pounds():
    # 110.231 lb = 50.0000 kg (0.45359237 kg/lb): the pediatric rule uses the converted weight.
    observations = standard_observations(weight="110.231", height="150")
    observations = [o.replace("kg^kilogram^UCUM", "[lb_av]^pound^UCUM") for o in observations]
    message = adult_order_set(dob="20161201", go=go_order(dose="13", observations=observations),
                              premeds=premeds(methylprednisolone=mp("50")))
    assert premed_findings(judge_text(message).orders[GO]) == []


def test_seventeen_year_old_is_pediatric_and_eighteen_is_adult():
    # 17 y (born 2009-12-02) and 62 kg: 15 mg/kg = 930 → capped 650; 1 mg/kg = 62 → capped 50. Same
    # doses as the adult message, so both pass; a 40 kg 17-year-old gets 600 mg acetaminophen (540–650).
    message = adult_order_set(dob="20091202")
    assert premed_findings(judge_text(message).orders[GO]) == []
    observations = standard_observations(weight="40", height="150")
    go = go_order(dose="11.6", observations=observations)
    light = {"diphenhydramine": dph("40"), "methylprednisolone": mp("40")}
    teen = adult_order_set(dob="20091202", go=go, premeds=premeds(**light))
    assert premed_findings(judge_text(teen).orders[GO]) == []  # 650 within 540–650, 40 within 36–44
    teen = adult_order_set(dob="20091202", go=go, premeds=premeds(acetaminophen=apap("540"), **light))
    assert premed_findings(judge_text(teen).orders[GO]) == []
    # 18 on the day of the start: adult doses (acetaminophen 585–715, diphenhydramine 45–55).
    adult = adult_order_set(dob="20081201", go=go, premeds=premeds(acetaminophen=apap("540"), **light))
    found = premed_findings(judge_text(adult).orders[GO])
    assert len(found) == 2 and {"585–715 mg", "45–55 mg"} == {m for f in found for m in ("585–715 mg", "45–55 mg")
                                                                 if m in f.message}


# --- as needed (rescue) orders -------------------------------------------------------------------


def test_prn_steroid_is_ignored():
    rescue = premed_order("ORD1008", METHYLPRED, "125", route="IV^Intravenous^HL70162",
                          start="20261201120000", priority="PRN")
    judgement = judge_text(adult_order_set(extra_orders=rescue))
    assert judgement.ack_code == "AA"
    assert premed_findings(judgement.orders[GO]) == []
    assert len(judgement.orders[GO].computed["premedication"]["methylprednisolone"]) == 1


def test_conditional_steroid_does_not_satisfy_the_requirement():
    rescue = premed_order("ORD1008", METHYLPRED, "62", route="IV^Intravenous^HL70162",
                          start="20261201094000", condition="infusion reaction")
    judgement = judge_text(adult_order_set(premeds=premeds(methylprednisolone=None), extra_orders=rescue))
    found = premed_findings(judgement.orders[GO])
    assert len(found) == 1 and found[0].message.startswith("methylprednisolone") and "not ordered" in found[0].message
    assert judgement.orders[GO].control == "UA"
    assert judgement.orders[-1].control == "OK"  # a rescue order belongs to no dose


def test_prn_order_does_not_belong():
    text = adult_order_set(extra_orders=premed_order("ORD1008", METHYLPRED, "125", start="20261201110000",
                                                      priority="PRN"))
    order_set = read_order_set(split_messages(text).messages[0], UTC)
    mapping = belonging_premedications(order_set, [order_set.orders[GO]], load_protocol())
    assert mapping == {APAP: GO, DPH: GO, MP: GO}


# --- earlier accepted messages (course history) ------------------------------------------------


def test_premeds_from_an_earlier_accepted_message_count():
    store = InMemoryStore()
    first = run(adult_order_set("T0001", go=[]), store)
    assert first.ack_code == "AA"
    assert len(store.orders_for("MRN55501^GENHOSP")) == 3
    second = run(adult_order_set("T0002", premeds=[]), store)
    assert second.ack_code == "AA", second.result["findings"]
    go = second.result["orders"][0]
    assert "go.premedication" not in rules_of(go)


def test_without_the_earlier_message_the_go_order_alone_is_refused():
    outcome = run(adult_order_set("T0002", premeds=[]), InMemoryStore())
    assert outcome.ack_code == "AE"
    assert "go.premedication" in rules_of(outcome.result["orders"][0])
    assert len([f for f in outcome.result["orders"][0]["findings"] if f["rule"] == "go.premedication"]) == 3


def test_earlier_premeds_are_judged_against_the_new_start():
    # The GO start moved to 11:00: the earlier 09:00 acetaminophen / diphenhydramine are 120 min before.
    store = InMemoryStore()
    run(adult_order_set("T0001", go=[]), store)
    go = go_order(start="20261201110000", end="20261201150000")
    outcome = run(adult_order_set("T0002", go=go, premeds=[]), store)
    found = [f for f in outcome.result["orders"][0]["findings"] if f["rule"] == "go.premedication"]
    assert len(found) == 3  # acetaminophen and diphenhydramine 120 min, methylprednisolone 80 min before
    assert sum("120 min before" in f["message"] for f in found) == 2
    assert sum("80 min before" in f["message"] for f in found) == 1
    assert all(f["location"] == "TQ1-7" and "accepted earlier" in f["message"] for f in found)


def _history(drug: str, amount: str, start: datetime, route: str = "PO", as_needed: bool = False) -> HistoryEntry:
    code, text, system = drug.split("^")
    return HistoryEntry(patient_key="MRN55501^GENHOSP", sender="PHARMSYS^GENHOSP", placer_number="OLD1",
                        control_id="T0000", drug=Coded(code=code, text=text, system=system), protocol_order=False,
                        start=start, amount=Decimal(amount), amount_units="mg", route=route, as_needed=as_needed)


def test_history_entry_counts_and_prn_history_does_not():
    text = adult_order_set(premeds=premeds(acetaminophen=None))
    entry = _history(ACETAMINOPHEN, "650", datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    assert premed_findings(judge_text(text, history=[entry]).orders[GO]) == []
    prn = entry.model_copy(update={"as_needed": True})
    assert len(premed_findings(judge_text(text, history=[prn]).orders[GO])) == 1
    far = entry.model_copy(update={"start": datetime(2026, 12, 1, 5, 59, 59, tzinfo=UTC)})
    assert len(premed_findings(judge_text(text, history=[far]).orders[GO])) == 1
    wrong = entry.model_copy(update={"amount": Decimal("1000")})
    found = premed_findings(judge_text(text, history=[wrong]).orders[GO])
    assert len(found) == 1 and "accepted earlier" in found[0].message and "1000 mg" in found[0].message


# --- two GO doses in one message ----------------------------------------------------------------


def two_dose_message(day14_premeds: list[str] | None = None) -> str:
    day14 = go_order("ORD2001", start="20261214100000", end="20261214140000", observations=[])
    if day14_premeds is None:
        day14_premeds = standard_premeds(first_start="20261214090000", steroid_start="20261214094000",
                                         placers=("ORD2002", "ORD2003", "ORD2004"))
    return adult_order_set(go=go_order() + day14, premeds=standard_premeds() + day14_premeds)


def test_two_doses_each_take_their_own_premeds():
    text = two_dose_message()
    order_set = read_order_set(split_messages(text).messages[0], UTC)
    # Order indexes: 0 GO day 1, 1 GO day 14, 2-4 day-1 premeds, 5-7 day-14 premeds.
    mapping = belonging_premedications(order_set, [order_set.orders[0], order_set.orders[1]], load_protocol())
    assert mapping == {2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 1}
    judgement = judge_text(text)
    day1, day14 = judgement.orders[0], judgement.orders[1]
    assert premed_findings(day1) == []
    assert premed_findings(day14) == []
    assert day1.control == "OK", [f.message for f in day1.findings if f.severity == "error"]
    assert [v.control for v in judgement.orders[2:5]] == ["OK"] * 3
    # Day 14 has no WBC within 72 h (go.wbc): refused, and only its own premeds follow it.
    assert day14.control == "UA"
    assert all(v.control == "UA" and "go.orderset" in rules_of(v) for v in judgement.orders[5:8])


def test_two_doses_premed_missing_on_day_14_only():
    day14_premeds = (premed_order("ORD2003", DIPHENHYDRAMINE, "50", route="IV^Intravenous^HL70162",
                                  start="20261214090000")
                     + premed_order("ORD2004", METHYLPRED, "62", route="IV^Intravenous^HL70162",
                                    start="20261214094000"))
    judgement = judge_text(two_dose_message(day14_premeds))
    assert premed_findings(judgement.orders[0]) == []
    found = premed_findings(judgement.orders[1])
    assert len(found) == 1 and found[0].message.startswith("acetaminophen")
    assert judgement.orders[1].control == "UA"
    assert judgement.orders[0].control == "OK"
    assert [v.control for v in judgement.orders[2:5]] == ["OK"] * 3  # day 1's premeds
    assert [v.control for v in judgement.orders[5:7]] == ["UA"] * 2


def _order_set_with(go_starts: list[str], premed_starts: list[str]):
    segs: list[str] = []
    for i, start in enumerate(go_starts):
        segs += go_order(f"GO{i}", start=start, end="", observations=[])
    extra: list[str] = []
    for i, start in enumerate(premed_starts):
        extra += premed_order(f"PM{i}", ACETAMINOPHEN, "650", start=start)
    text = adult_order_set(go=segs, premeds=extra)
    order_set = read_order_set(split_messages(text).messages[0], UTC)
    return order_set, [o for o in order_set.orders if o.placer_number.startswith("GO")]


def test_nearest_go_start_wins_and_a_tie_goes_to_the_later_dose():
    order_set, gos = _order_set_with(["20261201100000", "20261201160000"],
                                     ["20261201120000", "20261201130000", "20261201125959", "20261201200001"])
    mapping = belonging_premedications(order_set, gos, load_protocol())
    assert mapping == {2: 0, 3: 1, 4: 0}  # 20:00:01 is beyond 4 h of 16:00


def test_belonging_ignores_doses_and_premeds_without_start():
    order_set, gos = _order_set_with(["20261201100000"], ["20261201090000"])
    no_start = gos[0].model_copy(update={"timing": gos[0].timing.model_copy(update={"start": None})})
    assert belonging_premedications(order_set, [no_start], load_protocol()) == {}
    assert belonging_premedications(order_set, [], load_protocol()) == {}


# --- equivalents and protocol parameters --------------------------------------------------------


def _protocol_with_dexamethasone():
    path = Path(BUNDLED_DIR / "go-rr-9mg-d1-d14.yaml")
    text = path.read_text()
    old = "      equivalents: []   # the seed names methylprednisolone only"
    assert old in text
    new = ("      equivalents:\n"
           "        - {name: dexamethasone, rxnorm: [\"3264\"], text_contains: [dexamethasone], potency_ratio: 0.1875}")
    return parse_protocol(text.replace(old, new).encode())


@pytest.mark.parametrize("dose, ok", [("11.625", True), ("10.4625", True), ("10.46", False), ("12.8", False)])
def test_equivalent_steroid_counts_with_its_potency_ratio(dose, ok):
    protocol = _protocol_with_dexamethasone()
    steroid = premed_order("ORD1004", DEXAMETHASONE, dose, route="IV^Intravenous^HL70162", start="20261201094000")
    judgement = judge_text(adult_order_set(premeds=premeds(methylprednisolone=steroid)), protocol=protocol)
    found = premed_findings(judgement.orders[GO])
    assert (found == []) is ok, found
    # Without the equivalent in the protocol, dexamethasone is not a premedication at all.
    default = judge_text(adult_order_set(premeds=premeds(methylprednisolone=steroid)))
    assert "is not ordered" in premed_findings(default.orders[GO])[0].message


def test_tolerance_and_window_come_from_the_protocol():
    text = (BUNDLED_DIR / "go-rr-9mg-d1-d14.yaml").read_text()
    old = "  dose_tolerance_percent: 10 "
    assert old in text
    protocol = parse_protocol(text.replace(old, "  dose_tolerance_percent: 20 ").encode())
    judgement = judge_text(adult_order_set(premeds=premeds(acetaminophen=apap("770"))), protocol=protocol)
    assert premed_findings(judgement.orders[GO]) == []


def test_rule_declares_its_parameters():
    assert premedication.RULE.id == "go.premedication"
    assert "premedication.required" in premedication.RULE.parameters
    assert "Refused" in premedication.RULE.doc and "Accepted" in premedication.RULE.doc
