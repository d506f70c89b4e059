"""go.hsct: a planned HSCT/conditioning date < 60 days after the last GO dose → warning (hsct.severity).
The default GO dose starts 2026-12-01 10:00 UTC; 60 days later is 2027-01-30."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from tests.builders import (
    UTC,
    adult_order_set,
    dose_context,
    go_order,
    judge_labs,
    observations_with,
    obx,
    premed_order,
    run,
)
from validator import load_protocol
from validator.history import HistoryEntry
from validator.model import Coded
from validator.rules import hsct

HSCT_DATE = "HSCTDATE^Planned HSCT date^L"


def hsct_obx(value: str, *, code: str = HSCT_DATE, value_type: str = "DT", status: str = "F") -> str:
    return obx(8, code, value, "", time="20261130060000", value_type=value_type, status=status)


def judge_hsct(*segments: str, extra_orders: list[str] | None = None, protocol=None):
    return judge_labs(observations_with(add=list(segments)), extra_orders=extra_orders, protocol=protocol)


def hsct_findings(judgement, severity: str | None = None) -> list:
    return [f for f in judgement.orders[0].findings
            if f.rule == hsct.RULE_ID and (severity is None or f.severity == severity)]


def the_warning(judgement):
    found = hsct_findings(judgement)
    assert [f.severity for f in found] == ["warning"], [f.message for f in found]
    assert judgement.orders[0].control == "OK", [f.message for f in judgement.orders[0].findings]
    return found[0]


def test_no_hsct_record_gives_no_finding():
    judgement = judge_hsct()
    assert hsct_findings(judgement) == []
    assert judgement.orders[0].control == "OK"


def test_hsct_date_is_judged_from_its_midnight_as_an_exact_duration():
    # 2027-01-30 is 60 calendar days after 2026-12-01, but its 00:00 is 59 days 14 h after the 10:00 dose
    assert "59 days 14 h after" in the_warning(judge_hsct(hsct_obx("20270130"))).message
    assert hsct_findings(judge_hsct(hsct_obx("20270131"))) == []


def test_hsct_59_days_after_is_a_warning_naming_dates():
    warning = the_warning(judge_hsct(hsct_obx("20270129")))
    assert "2027-01-29" in warning.message and "58 days 14 h" in warning.message and "2026-12-01" in warning.message
    assert "at least 60 days" in warning.message
    assert warning.location.short() == "OBX-5"


def test_hsct_timestamp_value_counts_as_an_exact_duration():
    # 2027-01-30 00:30 is 60 calendar days after 2026-12-01 10:00 but less than 60 × 24 h after it.
    the_warning(judge_hsct(hsct_obx("202701300030", value_type="TS")))
    assert hsct_findings(judge_hsct(hsct_obx("202701301000", value_type="TS"))) == []


def test_text_matched_conditioning_observation_counts():
    segment = hsct_obx("20270110", code="COND1^Conditioning start date^L")
    the_warning(judge_hsct(segment))


def test_hsct_order_in_the_message_counts():
    order = premed_order("ORD9100", "HSCT^Allogeneic stem cell transplant^L", "1", units="1^each^UCUM",
                         start="20270110080000", route="IV^Intravenous^HL70162")
    warning = the_warning(judge_hsct(extra_orders=order))
    assert "ORD9100" in warning.message and "2027-01-10" in warning.message


def test_hsct_order_60_days_after_to_the_minute_is_silent():
    order = premed_order("ORD9100", "HSCT^Allogeneic stem cell transplant^L", "1", units="1^each^UCUM",
                         start="20270130100000", route="IV^Intravenous^HL70162")
    assert hsct_findings(judge_hsct(extra_orders=order)) == []


def test_hsct_planned_before_this_dose_is_a_warning():
    text = adult_order_set(go=go_order(start="20261214100000", end="20261214140000",
                                       observations=observations_with(add=[hsct_obx("20261210")])))
    found = hsct.check(dose_context(text))
    assert [f.severity for f in found] == ["warning"] and "before this GO dose" in found[0].message


def test_past_transplant_is_info_only():
    found = hsct_findings(judge_hsct(hsct_obx("20250301")))
    assert [f.severity for f in found] == ["info"] and "past transplant" in found[0].message


def test_non_date_value_is_info():
    found = hsct_findings(judge_hsct(hsct_obx("planned in spring", value_type="ST")))
    assert [f.severity for f in found] == ["info"] and "not a date" in found[0].message


def test_non_final_hsct_record_is_ignored():
    assert hsct_findings(judge_hsct(hsct_obx("20270110", status="P"))) == []


def test_later_go_dose_in_history_is_the_last_dose():
    later = HistoryEntry(patient_key="MRN55501^GENHOSP", sender="PHARMSYS^GENHOSP", placer_number="ORD2001",
                         control_id="T0002", drug=Coded(code="1294580", text="gemtuzumab ozogamicin", system="RXNORM"),
                         protocol_order=True, protocol_id="go-rr-9mg-d1-d14",
                         start=datetime(2026, 12, 14, 10, 0, tzinfo=UTC))
    text = adult_order_set(go=go_order(observations=observations_with(add=[hsct_obx("20270205")])))
    assert hsct.check(dose_context(text)) == []  # 66 days after this dose
    found = hsct.check(dose_context(text, history=[later]))
    assert [f.severity for f in found] == ["warning"]
    assert "52 days 14 h after the start of the last accepted GO dose (2026-12-14 10:00)" in found[0].message


def test_severity_comes_from_the_protocol():
    protocol = load_protocol()
    strict = protocol.model_copy(update={"hsct": protocol.hsct.model_copy(update={"severity": "error"})})
    judgement = judge_hsct(hsct_obx("20270129"), protocol=strict)
    assert [f.severity for f in hsct_findings(judgement)] == ["error"]
    assert judgement.orders[0].control == "UA"


def test_minimum_days_come_from_the_protocol():
    protocol = load_protocol()
    shorter = protocol.model_copy(update={"hsct": protocol.hsct.model_copy(update={"min_days_after_last_dose": Decimal(30)})})
    assert hsct_findings(judge_hsct(hsct_obx("20270101"), protocol=shorter)) == []
    assert len(hsct_findings(judge_hsct(hsct_obx("20261231"), protocol=shorter))) == 1


def test_warning_keeps_the_message_accepted_through_the_service():
    outcome = run(adult_order_set(go=go_order(observations=observations_with(add=[hsct_obx("20270115")]))))
    assert outcome.ack_code == "AA"
    assert any(f["rule"] == "go.hsct" and f["severity"] == "warning" for f in outcome.result["findings"])
