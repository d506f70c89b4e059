"""go.liver: bilirubin > 2 × ULN or AST/ALT > 2.5 × ULN (ULN from OBX-7) within 72 h before the GO start
→ `liver.severity` (warning in the seed); a missing test → info. A warning does not refuse the order."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.builders import ALT, AST, BILI, adult_order_set, go_order, judge_labs, observations_with, obx, run
from validator import load_protocol
from validator.rules import liver
from validator.rules.liver import upper_limit_of_normal

MG_DL = "mg/dL^mg/dL^UCUM"
U_L = "U/L^U/L^UCUM"


def bili(value: str, ref_range: str = "0.2-1.2", *, time: str = "20261130060000", units: str = MG_DL,
         value_type: str = "NM") -> str:
    return obx(5, BILI, value, units, time=time, ref_range=ref_range, value_type=value_type)


def ast(value: str, ref_range: str = "10-40", *, time: str = "20261130060000") -> str:
    return obx(6, AST, value, U_L, time=time, ref_range=ref_range)


def alt(value: str, ref_range: str = "7-56", *, time: str = "20261130060000") -> str:
    return obx(7, ALT, value, U_L, time=time, ref_range=ref_range)


def judge_liver(replace: dict[int, str] | None = None, drop: tuple[int, ...] = (), protocol=None):
    return judge_labs(observations_with(replace=replace, drop=drop), protocol=protocol)


def liver_findings(judgement, severity: str | None = None) -> list:
    return [f for f in judgement.orders[0].findings
            if f.rule == liver.RULE_ID and (severity is None or f.severity == severity)]


def assert_silent_and_accepted(judgement):
    assert liver_findings(judgement) == [], [f.message for f in liver_findings(judgement)]
    assert judgement.orders[0].control == "OK"


def the_warning(judgement):
    found = liver_findings(judgement)
    assert [f.severity for f in found] == ["warning"], [f.message for f in found]
    go = judgement.orders[0]
    assert go.control == "OK", [f.message for f in go.findings]  # a warning does not refuse the order
    assert judgement.ack_code == "AA"
    return found[0]


def test_standard_panel_is_silent():
    assert_silent_and_accepted(judge_liver())


def test_bilirubin_exactly_2_x_uln_is_not_flagged():
    assert_silent_and_accepted(judge_liver({5: bili("2.4")}))


def test_bilirubin_above_2_x_uln_is_a_warning_naming_values():
    warning = the_warning(judge_liver({5: bili("2.41")}))
    assert "total bilirubin 2.41 mg/dL" in warning.message
    assert "2 × ULN 1.2 = 2.4 mg/dL" in warning.message and "2026-11-30 06:00" in warning.message
    assert warning.location.short() == "OBX-5"


def test_ast_exactly_2_5_x_uln_is_not_flagged():
    assert_silent_and_accepted(judge_liver({6: ast("100")}))


def test_ast_above_2_5_x_uln_is_a_warning():
    warning = the_warning(judge_liver({6: ast("100.1")}))
    assert "AST 100.1 U/L" in warning.message and "2.5 × ULN 40 = 100 U/L" in warning.message


def test_alt_exactly_2_5_x_uln_is_not_flagged():
    assert_silent_and_accepted(judge_liver({7: alt("140")}))


def test_alt_above_2_5_x_uln_is_a_warning():
    warning = the_warning(judge_liver({7: alt("140.1")}))
    assert "ALT 140.1 U/L" in warning.message and "2.5 × ULN 56 = 140 U/L" in warning.message


def test_each_abnormal_test_gets_its_own_finding():
    found = liver_findings(judge_liver({5: bili("3"), 6: ast("150"), 7: alt("200")}), "warning")
    assert sorted(f.message.split(" ")[0] for f in found) == ["ALT", "AST", "total"]


def test_warning_does_not_refuse_through_the_service():
    text = adult_order_set(go=go_order(observations=observations_with(replace={5: bili("5")})))
    outcome = run(text)
    assert outcome.ack_code == "AA"
    assert outcome.result["orders"][0]["order_control"] == "OK"
    assert any(f["rule"] == "go.liver" and f["severity"] == "warning" for f in outcome.result["findings"])


def test_severity_comes_from_the_protocol():
    protocol = load_protocol()
    strict = protocol.model_copy(update={"liver": protocol.liver.model_copy(update={"severity": "error"})})
    judgement = judge_liver({5: bili("2.41")}, protocol=strict)
    assert [f.severity for f in liver_findings(judgement)] == ["error"]
    assert judgement.orders[0].control == "UA"
    assert_silent_and_accepted(judge_liver({5: bili("2.4")}, protocol=strict))


def test_uln_upper_bound_only():
    assert_silent_and_accepted(judge_liver({6: ast("100", "<40")}))
    the_warning(judge_liver({6: ast("100.1", "<40")}))


def test_exactly_72_hours_before_is_judged():
    the_warning(judge_liver({5: bili("3", time="20261128100000")}))


def test_72_hours_and_one_second_before_is_missing_info():
    found = liver_findings(judge_liver({5: bili("3", time="20261128095959")}))
    assert [f.severity for f in found] == ["info"]
    assert "72 h 1 s" in found[0].message


def test_missing_panel_is_info_for_each_test_and_accepted():
    judgement = judge_liver(drop=(5, 6, 7))
    found = liver_findings(judgement)
    assert [f.severity for f in found] == ["info", "info", "info"]
    assert "no total bilirubin result" in found[0].message
    assert judgement.orders[0].control == "OK"


def test_blasts_in_the_cd33_text_are_not_ast():
    # "CD33 positive blasts" contains the letters "ast"; the AST text match is a whole word.
    found = liver_findings(judge_liver(drop=(6,)))
    assert len(found) == 1 and "no AST result" in found[0].message


def test_text_match_counts_when_no_code_matches():
    segment = obx(6, "LAST^AST (SGOT)^L", "150", U_L, ref_range="10-40")
    the_warning(judge_liver({6: segment}))


def test_undated_liver_test_is_missing_info():
    found = liver_findings(judge_liver({5: bili("5", time="")}))
    assert [f.severity for f in found] == ["info"] and "OBX-14" in found[0].message


@pytest.mark.parametrize("ref_range", ["", "normal", ">0.2"])
def test_no_uln_is_info(ref_range):
    found = liver_findings(judge_liver({5: bili("5", ref_range)}))
    assert [f.severity for f in found] == ["info"]
    assert "upper limit of normal" in found[0].message and found[0].location.short() == "OBX-7"


def test_non_numeric_value_is_info():
    found = liver_findings(judge_liver({5: bili("hemolysed", value_type="ST")}))
    assert [f.severity for f in found] == ["info"] and "'hemolysed'" in found[0].message


def test_lower_bound_value_cannot_be_shown_within():
    found = liver_findings(judge_liver({5: bili(">^1.0", value_type="SN")}))
    assert [f.severity for f in found] == ["warning"] and "cannot be shown to be within" in found[0].message


def test_upper_bound_value_within_is_silent():
    assert_silent_and_accepted(judge_liver({5: bili("<^0.2", value_type="SN")}))


def test_computed_values_are_recorded():
    computed = judge_liver().orders[0].computed
    assert computed["liver_total_bilirubin"]["uln"] == "1.2"
    assert computed["liver_ast"]["max"] == "100.0"


@pytest.mark.parametrize(("ref_range", "uln"), [
    ("0.2-1.2", "1.2"), ("<40", "40"), ("<= 40", "40"), ("10 - 40", "40"), ("7-56 U/L", "56"), (".1-.9", ".9"),
])
def test_upper_limit_of_normal_parsing(ref_range, uln):
    assert upper_limit_of_normal(ref_range) == Decimal(uln)


@pytest.mark.parametrize("ref_range", ["", "negative", ">10", "0-0", "abc-def"])
def test_upper_limit_of_normal_absent(ref_range):
    assert upper_limit_of_normal(ref_range) is None
