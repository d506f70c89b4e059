"""go.wbc: a blood WBC ≤ 72 h (exact) before the GO start (2026-12-01 10:00 UTC); ≥ 30 × 10⁹/L needs
documented cytoreduction (hydroxyurea or leukapheresis, before the start, within 14 days)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from tests.builders import (
    HYDROXYUREA,
    UTC,
    WBC,
    adult_order_set,
    dose_context,
    go_dose_message,
    go_order,
    judge_labs,
    judge_text,
    observations_with,
    obx,
    premed_order,
    rules_of,
    standard_premeds,
)
from validator.history import HistoryEntry
from validator.model import Coded
from validator.rules import wbc

WBC_UNIT = "10*9/L^10*9/L^UCUM"
LEUKAPHERESIS_ORDER = "LEUKAPH^Therapeutic leukapheresis^L"
URINE_WBC = "5821-4^Leukocytes [#/area] in Urine sediment by Microscopy high power field^LN"


def wbc_obx(value: str, units: str = WBC_UNIT, *, time: str = "20261130060000", code: str = WBC,
            value_type: str = "NM", status: str = "F", set_id: int = 3) -> str:
    return obx(set_id, code, value, units, time=time, value_type=value_type, status=status)


def judge_wbc(*segments: str, extra_orders: list[str] | None = None, history=None):
    """The default message with its WBC OBX replaced by `segments` (none: no WBC at all)."""
    return judge_labs(observations_with(drop=(3,), add=list(segments)), extra_orders=extra_orders, history=history)


def wbc_findings(judgement, severity: str | None = None, index: int = 0) -> list:
    return [f for f in judgement.orders[index].findings
            if f.rule == wbc.RULE_ID and (severity is None or f.severity == severity)]


def assert_accepted_silently(judgement):
    go = judgement.orders[0]
    assert wbc_findings(judgement) == [], [f.message for f in wbc_findings(judgement)]
    assert go.control == "OK", [f.message for f in go.findings]


def the_error(judgement, index: int = 0):
    found = [f for f in wbc_findings(judgement, index=index) if f.severity != "info"]
    assert [f.severity for f in found] == ["error"], [f.message for f in found]
    assert judgement.orders[index].control == "UA"
    return found[0]


def the_warning(judgement):
    found = [f for f in wbc_findings(judgement) if f.severity != "info"]
    assert [f.severity for f in found] == ["warning"], [f.message for f in found]
    assert judgement.orders[0].control == "OK", [f.message for f in judgement.orders[0].findings]
    return found[0]


def hydroxyurea(start: str = "20261128080000", placer: str = "ORD9001", control: str = "NW") -> list[str]:
    return premed_order(placer, HYDROXYUREA, "1000", start=start, control=control)


def leukapheresis(start: str = "20261130080000") -> list[str]:
    return premed_order("ORD9002", LEUKAPHERESIS_ORDER, "1", units="1^each^UCUM", start=start,
                        route="IV^Intravenous^HL70162")


# --- recency (72 h, exact, inclusive) -------------------------------------------------------------

def test_standard_wbc_passes_and_is_recorded():
    judgement = judge_wbc(wbc_obx("8.4"))
    assert_accepted_silently(judgement)
    assert judgement.orders[0].computed["wbc_10e9_per_l"] == "8.4"
    assert judgement.orders[0].computed["wbc_observed_at"].startswith("2026-11-30T06:00")


def test_wbc_exactly_72_hours_before_the_start_passes():
    assert_accepted_silently(judge_wbc(wbc_obx("8.4", time="20261128100000")))


def test_wbc_72_hours_and_one_second_before_the_start_is_refused():
    error = the_error(judge_wbc(wbc_obx("8.4", time="20261128095959")))
    assert "72 h 1 s" in error.message and "2026-11-28 09:59:59" in error.message
    assert error.location.short() == "OBX-14"


def test_no_wbc_is_refused():
    error = the_error(judge_wbc())
    assert "no WBC result" in error.message


def test_undated_wbc_is_treated_as_missing():
    error = the_error(judge_wbc(wbc_obx("8.4", time="")))
    assert "no observation time (OBX-14)" in error.message


def test_most_recent_wbc_is_used():
    judgement = judge_wbc(wbc_obx("45", time="20261129060000"), wbc_obx("8.4", time="20261130060000"))
    assert_accepted_silently(judgement)
    judgement = judge_wbc(wbc_obx("8.4", time="20261129060000"), wbc_obx("45", time="20261130060000"))
    assert "45" in the_error(judgement).message


def test_non_numeric_wbc_is_refused():
    error = the_error(judge_wbc(wbc_obx("clumped", value_type="ST")))
    assert "'clumped'" in error.message and "not a number" in error.message


# --- threshold and cytoreduction ------------------------------------------------------------------

def test_29_9_without_cytoreduction_passes():
    assert_accepted_silently(judge_wbc(wbc_obx("29.9")))


def test_30_without_cytoreduction_is_refused():
    error = the_error(judge_wbc(wbc_obx("30")))
    assert "WBC 30" in error.message and "≥ 30 × 10⁹/L" in error.message and "2026-11-30 06:00" in error.message
    assert "hydroxyurea or leukapheresis" in error.message
    assert error.location.short() == "OBX-5"


def test_29_9_with_hydroxyurea_passes_without_warning():
    assert_accepted_silently(judge_wbc(wbc_obx("29.9"), extra_orders=hydroxyurea()))


def test_30_with_hydroxyurea_in_the_message_is_a_warning_to_confirm_the_count():
    warning = the_warning(judge_wbc(wbc_obx("30"), extra_orders=hydroxyurea()))
    assert "hydroxyurea order ORD9001" in warning.message and "2026-11-28 08:00" in warning.message
    assert "confirm" in warning.message.lower() and "below 30 × 10⁹/L" in warning.message


def test_hydroxyurea_by_name_counts():
    order = premed_order("ORD9001", "HU500^Hydroxyurea 500 mg capsule^L", "1000", start="20261128080000")
    the_warning(judge_wbc(wbc_obx("30"), extra_orders=order))


def test_hydroxyurea_starting_at_or_after_the_go_start_does_not_count():
    error = the_error(judge_wbc(wbc_obx("30"), extra_orders=hydroxyurea(start="20261201100000")))
    assert "not before the GO start" in error.message


def test_hydroxyurea_exactly_14_days_before_counts():
    the_warning(judge_wbc(wbc_obx("30"), extra_orders=hydroxyurea(start="20261117100000")))


def test_hydroxyurea_more_than_14_days_before_does_not_count():
    error = the_error(judge_wbc(wbc_obx("30"), extra_orders=hydroxyurea(start="20261117095959")))
    assert "more than 14 days before" in error.message


def test_cancelled_hydroxyurea_order_does_not_count():
    the_error(judge_wbc(wbc_obx("30"), extra_orders=hydroxyurea(control="CA")))


def test_hydroxyurea_from_the_course_history_counts():
    entry = HistoryEntry(patient_key="MRN55501^GENHOSP", sender="PHARMSYS^GENHOSP", placer_number="ORD0900",
                         control_id="EARLIER", drug=Coded(code="5552", text="hydroxyurea", system="RXNORM"),
                         protocol_order=False, start=datetime(2026, 11, 27, 8, 0, tzinfo=UTC))
    warning = the_warning(judge_wbc(wbc_obx("45"), history=[entry]))
    assert "ORD0900" in warning.message and "accepted" in warning.message


def test_30_with_leukapheresis_order_is_a_warning():
    warning = the_warning(judge_wbc(wbc_obx("30"), extra_orders=leukapheresis()))
    assert "leukapheresis order ORD9002" in warning.message


def test_30_with_leukapheresis_observation_is_a_warning():
    record = obx(9, "LPH1^Leukapheresis performed^L", "Y", value_type="ST", time="20261129080000")
    warning = the_warning(judge_wbc(wbc_obx("30"), record))
    assert "leukapheresis record" in warning.message


def test_leukapheresis_observation_after_the_start_does_not_count():
    # MSH-7 at 12:00, so an 11:00 record is not future data; it is after the 10:00 GO start.
    record = obx(9, "LPH1^Leukapheresis performed^L", "Y", value_type="ST", time="20261201110000")
    text = adult_order_set(go=go_order(observations=observations_with(replace={3: wbc_obx("30")}, add=[record])),
                           time="20261201120000")
    found = wbc.check(dose_context(text))
    assert [f.severity for f in found] == ["error"]
    assert "leukapheresis record 'Leukapheresis performed' starts 2026-12-01 11:00, not before" in found[0].message


def test_29_9_with_leukapheresis_passes_silently():
    assert_accepted_silently(judge_wbc(wbc_obx("29.9"), extra_orders=leukapheresis()))


@pytest.mark.parametrize(("value", "value_type"), [("<^5", "SN"), ("<30", "ST")])
def test_upper_bound_at_or_below_threshold_passes(value, value_type):
    assert_accepted_silently(judge_wbc(wbc_obx(value, value_type=value_type)))


@pytest.mark.parametrize(("value", "value_type"), [(">^30", "SN"), (">^20", "SN"), ("<^31", "SN")])
def test_bound_that_cannot_be_shown_below_threshold_needs_cytoreduction(value, value_type):
    the_error(judge_wbc(wbc_obx(value, value_type=value_type)))


# --- units ----------------------------------------------------------------------------------------

SAME_SCALE = ["10*9/L", "10^9/L", "G/L", "Gi/L", "10*3/uL", "10^3/uL", "K/uL", "x10E3/uL", "10^3/mm3", "10*3/mm3",
              "k/ul", " K / uL "]
PER_MICROLITRE = ["/uL", "/mm3", "cells/uL"]


def hl7_unit(unit: str) -> str:
    """OBX-6 with the unit as identifier and text; `^` in a unit is sent escaped (\\S\\)."""
    sent = unit.replace("^", "\\S\\")
    return f"{sent}^{sent}^UCUM"


@pytest.mark.parametrize("unit", SAME_SCALE)
def test_same_scale_units_at_threshold(unit):
    high = judge_wbc(wbc_obx("30", hl7_unit(unit)))
    the_error(high)
    assert Decimal(high.orders[0].computed["wbc_10e9_per_l"]) == Decimal(30)
    assert_accepted_silently(judge_wbc(wbc_obx("29.9", hl7_unit(unit))))


@pytest.mark.parametrize("unit", PER_MICROLITRE)
def test_per_microlitre_units_are_divided_by_1000(unit):
    high = judge_wbc(wbc_obx("30000", hl7_unit(unit)))
    error = the_error(high)
    assert Decimal(high.orders[0].computed["wbc_10e9_per_l"]) == Decimal(30)
    assert f"30000 {unit} = 30 × 10⁹/L" in error.message
    assert_accepted_silently(judge_wbc(wbc_obx("29900", hl7_unit(unit))))


def test_unit_identifier_wins_over_its_text():
    # units by code first (docs/protocol.md, "Units"): an unknown identifier is never read by its text
    assert "'XX'" in the_error(judge_wbc(wbc_obx("8.4", "XX^K/uL^L"))).message
    assert_accepted_silently(judge_wbc(wbc_obx("8.4", "^K/uL")))


@pytest.mark.parametrize(("unit", "named"), [("mmol/L^mmol/L^UCUM", "'mmol/L'"), ("", "'(no unit)'")])
def test_unknown_or_missing_unit_is_refused_naming_it(unit, named):
    error = the_error(judge_wbc(wbc_obx("8.4", unit)))
    assert named in error.message
    assert error.location.short() == "OBX-6"


# --- which OBX is a blood WBC ---------------------------------------------------------------------

def test_alternative_preferred_code_counts():
    assert_accepted_silently(judge_wbc(wbc_obx("8.4", code="26464-8^Leukocytes [#/volume] in Blood^LN")))


def test_urine_wbc_text_match_is_ignored_with_info():
    judgement = judge_wbc(wbc_obx("8.4"), wbc_obx("45", "/[HPF]^per high power field^UCUM", code=URINE_WBC, set_id=9))
    go = judgement.orders[0]
    assert go.control == "OK"
    notes = wbc_findings(judgement, "info")
    assert len(notes) == 1 and "'urine'" in notes[0].message and notes[0].location.short() == "OBX-3"
    assert wbc_findings(judgement, "error") == [] and wbc_findings(judgement, "warning") == []


def test_urine_wbc_alone_is_not_a_blood_wbc():
    judgement = judge_wbc(wbc_obx("3", "/[HPF]^per high power field^UCUM", code=URINE_WBC))
    assert "no WBC result" in the_error(judgement).message
    assert len(wbc_findings(judgement, "info")) == 1


def test_specimen_word_in_obx6_only_excludes_a_text_match():
    judgement = judge_wbc(wbc_obx("3", "/[HPF]^cells per HPF^L", code="UAWBC^WBC^L"))
    notes = wbc_findings(judgement, "info")
    assert len(notes) == 1 and "'/hpf'" in notes[0].message
    the_error(judgement)


@pytest.mark.parametrize("text", ["WBC in CSF", "Leukocytes, body fluid", "WBC stool smear"])
def test_other_non_blood_specimens_are_ignored(text):
    judgement = judge_wbc(wbc_obx("8.4", code=f"LOC1^{text}^L"))
    assert len(wbc_findings(judgement, "info")) == 1
    the_error(judgement)


def test_differential_percentage_mentioning_leukocytes_is_not_a_count():
    differential = wbc_obx("62", "%^percent^UCUM", code="770-8^Neutrophils/100 leukocytes in Blood^LN", set_id=9)
    judgement = judge_wbc(wbc_obx("8.4", code="LWBC^WBC count^L", time="20261129060000"), differential)
    notes = wbc_findings(judgement, "info")
    assert len(notes) == 1 and "percentage" in notes[0].message
    assert judgement.orders[0].control == "OK"
    assert judgement.orders[0].computed["wbc_10e9_per_l"] == "8.4"


def test_undated_leukapheresis_record_does_not_count():
    record = obx(9, "LPH1^Leukapheresis performed^L", "Y", value_type="ST", time="")
    error = the_error(judge_wbc(wbc_obx("30"), record))
    assert "has no observation time (OBX-14)" in error.message


def test_blood_text_match_counts_when_no_preferred_code_exists():
    assert_accepted_silently(judge_wbc(wbc_obx("8.4", code="LWBC^WBC count^L")))
    the_error(judge_wbc(wbc_obx("31", code="LWBC^WBC count^L")))


def test_a_newer_text_matched_count_is_not_hidden_behind_an_older_coded_one():
    """Safe reading of "LOINC first": the most recent blood WBC is judged; an older coded 8.4 must not
    hide a newer 45 (which needs cytoreduction)."""
    judgement = judge_wbc(wbc_obx("8.4", time="20261130060000"),
                          wbc_obx("45", code="LWBC^WBC count^L", time="20261201060000", set_id=9))
    assert judgement.orders[0].control == "UA"
    assert judgement.orders[0].computed["wbc_10e9_per_l"] == "45"


def test_preferred_code_wins_over_a_text_match_of_an_older_time():
    judgement = judge_wbc(wbc_obx("8.4", time="20261201060000"),
                          wbc_obx("9.1", code="LWBC^WBC count^L", time="20261130060000", set_id=9))
    assert_accepted_silently(judgement)
    assert judgement.orders[0].computed["wbc_10e9_per_l"] == "8.4"


def test_text_match_is_used_when_the_preferred_result_is_too_old():
    judgement = judge_wbc(wbc_obx("8.4", time="20261120060000"),
                          wbc_obx("9.1", code="LWBC^WBC count^L", time="20261130060000", set_id=9))
    assert_accepted_silently(judgement)
    assert judgement.orders[0].computed["wbc_10e9_per_l"] == "9.1"


def test_preferred_code_does_not_need_a_text_match_and_is_never_excluded():
    # A preferred LOINC is blood by definition, whatever its text says.
    assert_accepted_silently(judge_wbc(wbc_obx("8.4", code="6690-2^Fluid panel^LN")))


# --- future doses: each dose judged against its own start -----------------------------------------

def test_day_14_dose_ordered_with_day_1_has_no_wbc_within_72_hours():
    day14 = go_order("ORD2001", start="20261214100000", end="20261214140000", observations=[])
    premeds14 = standard_premeds(first_start="20261214090000", steroid_start="20261214094000",
                                 placers=("ORD2002", "ORD2003", "ORD2004"))
    judgement = judge_text(adult_order_set(go=go_order() + day14, premeds=standard_premeds() + premeds14))
    day1, day14_verdict = judgement.orders[0], judgement.orders[1]
    assert day14_verdict.order.placer_number == "ORD2001"
    assert day1.control == "OK", [f.message for f in day1.findings]
    assert day14_verdict.control == "UA"
    assert "go.wbc" in rules_of(day14_verdict, "error")
    error = next(f for f in day14_verdict.findings if f.rule == "go.wbc" and f.severity == "error")
    assert "2026-11-30 06:00" in error.message and "2026-12-14 10:00" in error.message


def test_day_14_dose_resubmitted_with_its_pre_dose_wbc_passes():
    day1 = HistoryEntry(patient_key="MRN55501^GENHOSP", sender="PHARMSYS^GENHOSP", placer_number="ORD1001",
                        control_id="T0001", drug=Coded(code="1294580", text="gemtuzumab ozogamicin", system="RXNORM"),
                        protocol_order=True, protocol_id="go-rr-9mg-d1-d14",
                        start=datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    judgement = judge_text(go_dose_message("T0002", "20261214", placer="ORD2001"), history=[day1],
                           received_at=datetime(2026, 12, 14, 8, 30, tzinfo=UTC))
    go = judgement.orders[0]
    assert [f.message for f in go.findings if f.rule == "go.wbc"] == []
    assert go.control == "OK", [f.message for f in go.findings]
    assert go.computed["wbc_observed_at"].startswith("2026-12-13T06:00")
