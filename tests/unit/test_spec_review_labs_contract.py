"""Spec review (labs, response, service, check): each test is named after the spec sentence it checks."""

from __future__ import annotations

import re

from tests.builders import (
    BILI,
    WBC,
    adult_order_set,
    go_order,
    judge_labs,
    observations_with,
    obx,
    rules_of,
    run,
)
from tests.hl7check import check_response
from validator.response import _msa


def _rules(judgement, severity: str = "error") -> set[str]:
    return rules_of(judgement.orders[0], severity)


# docs/protocol.md, go.wbc: "the most recent blood WBC ... If it is >= 30 x 10^9/L, cytoreduction must be
# documented". Two WBC results with the same, latest OBX-14 are both "the most recent".
def test_wbc_most_recent_two_results_at_the_same_time_the_higher_one_is_judged():
    """Ambiguous (which of two equally recent counts is "the" most recent): the refusing reading judges
    the higher count, so a 45 x 10^9/L sent next to an 8.4 at the same time is not ignored."""
    both = judge_labs(observations_with(add=[obx(9, WBC, "45", "10*9/L^10*9/L^UCUM")]))
    assert "go.wbc" in _rules(both)
    assert both.orders[0].control == "UA"
    # boundary on the other side: two low counts at the same time stay accepted
    low = judge_labs(observations_with(add=[obx(9, WBC, "9.1", "10*9/L^10*9/L^UCUM")]))
    assert "go.wbc" not in _rules(low)
    assert low.orders[0].control == "OK"


def test_wbc_most_recent_two_results_at_the_same_time_one_not_a_number_is_refused():
    """Refusing reading: an unreadable count at the latest time cannot be set aside for a readable one."""
    judged = judge_labs(observations_with(add=[obx(9, WBC, "see note", "10*9/L^10*9/L^UCUM", value_type="ST")]))
    assert "go.wbc" in _rules(judged)


def test_wbc_negative_count_is_not_a_valid_count():
    """go.wbc needs a count to compare with 30 x 10^9/L; a negative count is invalid data (the core brief:
    bad values give findings). Refusing reading: error, not "below the threshold"."""
    judged = judge_labs(observations_with(replace={3: obx(3, WBC, "-5", "10*9/L^10*9/L^UCUM")}))
    assert "go.wbc" in _rules(judged)
    zero = judge_labs(observations_with(replace={3: obx(3, WBC, "0", "10*9/L^10*9/L^UCUM")}))
    assert "go.wbc" not in _rules(zero)


def test_liver_two_results_at_the_same_time_the_worse_one_is_flagged():
    """go.liver: "total bilirubin > 2 x ULN" on the most recent result; with two at the same time the
    refusing reading flags the one above the limit."""
    judged = judge_labs(observations_with(add=[obx(9, BILI, "5", "mg/dL^mg/dL^UCUM", ref_range="0.2-1.2")]))
    assert "go.liver" in _rules(judged, "warning")
    fine = judge_labs(observations_with(add=[obx(9, BILI, "1.0", "mg/dL^mg/dL^UCUM", ref_range="0.2-1.2")]))
    assert "go.liver" not in _rules(fine, "warning")


# docs/interfaces.md §2: "Responses always use |^~\&, ASCII text ..., HL7 escapes where needed" and MSA-3
# "a one-line reason". Shortening the reason must not cut an escape sequence in half.
def test_responses_hl7_escapes_where_needed_msa3_never_ends_inside_an_escape():
    for n in range(70, 82):
        line = _msa("AE", "C1", "x" * n + "^&|~\\" * 4, (2, 5, 1))
        reason = line.split("|", 3)[3]
        # every backslash belongs to a complete escape sequence \X\
        assert "\\" not in re.sub(r"\\[FSTRE]\\", "", reason), (n, reason)


def test_responses_hl7_escapes_a_reason_with_delimiters_parses_with_both_libraries():
    text = adult_order_set(go=go_order(observations=observations_with(
        replace={3: obx(3, WBC, "8.4", "k\\T\\x\\S\\y\\F\\z^zz^L")})))
    result = run(text).result
    assert result["ack_code"] == "AE"
    check_response(result["response"], "AE", "T0001")


# docs/interfaces.md §2: "ERR-3 `207^Application internal error^HL70357` for protocol rules (structure codes for
# `hl7.*`)" — also for the hl7.* findings of a processed message (an order's ORC-1 code, an ORC without RXE).
def _err_codes(response: str) -> dict[str, str]:
    fields = [seg.split("|") for seg in response.split("\r") if seg.startswith("ERR|")]
    return {f[5]: f[3].split("^")[0] for f in fields}


def test_err3_structure_codes_for_hl7_rules_order_control_in_a_processed_message():
    """ORC-1 `ZZ` is a value not in table 0119: code 103 (table value not found), not 207."""
    text = adult_order_set(extra_orders=["ORC|ZZ|ORD2001||GRP501", "RXE||161^acetaminophen^RXNORM|650||mg",
                                         "RXR|PO"])
    result = run(text).result
    codes = _err_codes(result["response"])
    assert codes["hl7.order_control"] == "103"
    check_response(result["response"], "AE", "T0001")


def test_err3_structure_codes_for_hl7_rules_order_group_without_rxe():
    """An ORC without RXE/RXO lacks a required segment: structure code 101 (required field missing)."""
    text = adult_order_set(extra_orders=["ORC|NW|ORD2001||GRP501"])
    result = run(text).result
    codes = _err_codes(result["response"])
    assert codes["hl7.structure"] == "101"
    # protocol rules keep 207
    refused = run(adult_order_set(go=go_order(dose="30"))).result
    assert _err_codes(refused["response"])["go.dose"] == "207"
