"""go.cd33: CD33 on ≥ 30 % of blasts, observed ≤ 60 days (exact) before the GO start (2026-12-01 10:00 UTC)."""

from __future__ import annotations

import pytest

from tests.builders import (
    CD33,
    adult_order_set,
    dose_context,
    go_order,
    judge_labs,
    observations_with,
    obx,
    rules_of,
)
from validator.rules import cd33


def cd33_obx(value: str, units: str = "%^percent^UCUM", *, time: str = "20261115120000", value_type: str = "NM",
             code: str = CD33, status: str = "F") -> str:
    return obx(4, code, value, units, time=time, value_type=value_type, status=status)


def judge_cd33(*segments: str, drop_standard: bool = True):
    """The default message with its CD33 OBX replaced by `segments` (none: no CD33 at all)."""
    return judge_labs(observations_with(drop=(4,) if drop_standard else (), add=list(segments)))


def cd33_findings(judgement) -> list:
    return [f for f in judgement.orders[0].findings if f.rule == cd33.RULE_ID]


def assert_accepted(judgement):
    go = judgement.orders[0]
    assert cd33_findings(judgement) == [], [f.message for f in cd33_findings(judgement)]
    assert go.control == "OK", [f.message for f in go.findings]


def the_error(judgement):
    found = cd33_findings(judgement)
    assert [f.severity for f in found] == ["error"], [f.message for f in found]
    assert judgement.orders[0].control == "UA"
    return found[0]


def test_standard_cd33_passes_and_is_recorded():
    judgement = judge_cd33(cd33_obx("72"))
    assert_accepted(judgement)
    assert judgement.orders[0].computed["cd33_percent"] == "72"
    assert judgement.orders[0].computed["cd33_observed_at"].startswith("2026-11-15T12:00")


def test_exactly_30_percent_passes():
    assert_accepted(judge_cd33(cd33_obx("30")))


def test_29_9_percent_is_refused_naming_value_date_and_threshold():
    error = the_error(judge_cd33(cd33_obx("29.9")))
    assert "29.9 %" in error.message and "30 %" in error.message and "2026-11-15 12:00" in error.message
    assert error.location.short() == "OBX-5"


def test_exactly_60_days_before_the_start_passes():
    assert_accepted(judge_cd33(cd33_obx("72", time="20261002100000")))


def test_60_days_and_one_second_before_the_start_is_refused():
    error = the_error(judge_cd33(cd33_obx("72", time="20261002095959")))
    assert "60 days 1 s" in error.message and "2026-10-02 09:59:59" in error.message
    assert error.location.short() == "OBX-14"


def test_most_recent_result_is_judged_not_the_best():
    older_good = cd33_obx("72", time="20261101120000")
    newer_low = cd33_obx("20", time="20261120120000")
    error = the_error(judge_cd33(older_good, newer_low))
    assert "20 %" in error.message


def test_newer_good_result_wins_over_older_low_one():
    assert_accepted(judge_cd33(cd33_obx("20", time="20261101120000"), cd33_obx("72", time="20261120120000")))


def test_no_cd33_is_refused():
    error = the_error(judge_cd33())
    assert "no CD33 result" in error.message


def test_cd33_without_observation_time_is_treated_as_missing():
    error = the_error(judge_cd33(cd33_obx("72", time="")))
    assert "observation time" in error.message and "OBX-14" in error.message


def test_undated_cd33_does_not_rescue_a_too_old_one():
    error = the_error(judge_cd33(cd33_obx("72", time=""), cd33_obx("72", time="20260901120000")))
    assert "2026-09-01" in error.message and "without an observation time" in error.message


def test_no_unit_numeric_counts_as_percent():
    assert_accepted(judge_cd33(cd33_obx("72", "")))


@pytest.mark.parametrize("unit", ["%", "percent^percent", "pct"])
def test_percent_unit_aliases_count(unit):
    assert_accepted(judge_cd33(cd33_obx("72", unit)))


def test_unit_that_is_not_a_percent_is_refused_naming_it():
    error = the_error(judge_cd33(cd33_obx("72", "cells/uL^cells per microliter^UCUM")))
    assert "'cells/uL'" in error.message
    assert error.location.short() == "OBX-6"


@pytest.mark.parametrize("text", ["85 %", ">90%", "30%", ">=30 %"])
def test_text_value_with_a_percent_counts(text):
    assert_accepted(judge_cd33(cd33_obx(text, "", value_type="ST")))


@pytest.mark.parametrize(("text", "shown"), [("29 %", "29 %"), ("<40%", "<40 %"), ("<95 %", "<95 %")])
def test_text_value_below_or_upper_bound_is_refused(text, shown):
    error = the_error(judge_cd33(cd33_obx(text, "", value_type="ST")))
    assert shown in error.message


@pytest.mark.parametrize("text", ["positive", "POSITIVE (bright)", "85"])
def test_text_without_a_percentage_is_refused(text):
    error = the_error(judge_cd33(cd33_obx(text, "", value_type="ST")))
    assert repr(text) in error.message


def test_qualitative_coded_positive_is_refused():
    error = the_error(judge_cd33(cd33_obx("POS^Positive^L", "", value_type="CWE")))
    assert "not a percentage" in error.message


def test_qualitative_next_to_a_percentage_at_the_same_time_is_set_aside():
    assert_accepted(judge_cd33(cd33_obx("positive", "", value_type="ST"), cd33_obx("72")))


def test_conflicting_percentages_at_the_same_time_are_refused():
    error = the_error(judge_cd33(cd33_obx("72"), cd33_obx("25")))
    assert "25 %" in error.message


def test_sn_lower_bound_satisfies():
    assert_accepted(judge_cd33(cd33_obx(">^90", value_type="SN")))


def test_sn_lower_bound_below_minimum_cannot_show_it():
    error = the_error(judge_cd33(cd33_obx(">^29.9", value_type="SN")))
    assert ">29.9 %" in error.message


def test_sn_upper_bound_cannot_prove_30_percent():
    error = the_error(judge_cd33(cd33_obx("<^40", value_type="SN")))
    assert "upper bound" in error.message and "<40 %" in error.message


@pytest.mark.parametrize("value", ["101", "-1"])
def test_impossible_percentage_is_refused(value):
    error = the_error(judge_cd33(cd33_obx(value)))
    assert "not a valid percentage" in error.message


def test_text_match_on_cd33_in_obx3():
    assert_accepted(judge_cd33(cd33_obx("72", code="FLOW77^CD33 expression on myeloblasts^L")))


def test_unrelated_observation_is_not_cd33():
    error = the_error(judge_cd33(cd33_obx("72", code="FLOW12^CD34 expression on myeloblasts^L")))
    assert "no CD33 result" in error.message


def test_non_final_cd33_does_not_count():
    error = the_error(judge_cd33(cd33_obx("72", status="P")))
    assert "no CD33 result" in error.message


def test_corrected_cd33_counts():
    assert_accepted(judge_cd33(cd33_obx("72", status="C")))


def test_result_on_the_start_day_before_the_start_counts():
    assert_accepted(judge_cd33(cd33_obx("72", time="20261201093000")))


def test_result_dated_after_the_start_is_not_the_pre_dose_value():
    # MSH-7 at 12:00 so an 11:00 result is not future data; the 10:00 dose cannot use it.
    text = adult_order_set(go=go_order(observations=observations_with(drop=(4,), add=[cd33_obx("72", time="20261201110000")])),
                           time="20261201120000")
    found = cd33.check(dose_context(text))
    assert [f.severity for f in found] == ["error"]
    assert "no CD33 result at or before the GO start 2026-12-01 10:00" in found[0].message
    assert "2026-12-01 11:00" in found[0].message


def test_only_failing_rule_is_cd33():
    judgement = judge_cd33(cd33_obx("10"))
    assert rules_of(judgement.orders[0], "error") == {"go.cd33"}


def test_an_obx_about_cd33_negative_blasts_is_not_cd33_positive_evidence():
    """Safe reading: "CD33 negative blasts 72 %" means 28 % positive at best; it never satisfies go.cd33."""
    from tests.builders import adult_order_set, go_order, obx, rules_of, run, standard_observations

    obs = standard_observations()
    obs[3] = obx(4, "CD33NEG^CD33 negative blasts (flow cytometry)^L", "72", "%^percent^UCUM", time="20261115120000")
    go = run(adult_order_set(go=go_order(observations=obs))).result["orders"][0]
    assert go["order_control"] == "UA" and "go.cd33" in rules_of(go)
